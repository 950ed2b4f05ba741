"""Layer-wise lr decay against MAE's rule (``util/lr_decay.py``, which AudioMAE uses) and timm's
``param_groups_layer_decay``, and the optimizer applying it as a per-layer learning rate."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from dwm_jax.evaluate.encoder import random_encoder
from dwm_jax.evaluate.finetuning import config as ft_config
from dwm_jax.evaluate.finetuning import model, optim
from dwm_jax.evaluate.torch_checkpoint import encoder_to_state
from dwm_jax.evaluate.finetuning.optim import decay_mask

from tests.evaluate.conftest import tiny_model_cfg

timm = pytest.importorskip("timm")


def _params(depth: int, classes: int = 3):
  cfg = tiny_model_cfg()
  cfg.depth = depth
  enc = random_encoder(cfg, seed=0)
  head = model.init_head(jax.random.key(0), enc.embedding_size, classes, 0.01)
  return enc, {"encoder": enc.params, "head": head}


def _timm_groups(depth: int, decay: float, classes: int = 3) -> dict[str, tuple[float, bool]]:
  """timm param name -> (lr_scale, weight decayed) for a timm ViT of the same depth."""
  import torch
  from timm.models.vision_transformer import VisionTransformer
  from timm.optim import param_groups_layer_decay
  torch.manual_seed(0)
  vit = VisionTransformer(img_size=(80, 64), patch_size=16, in_chans=1, embed_dim=32, depth=depth,
                          num_heads=2, mlp_ratio=2, num_classes=classes)
  groups = param_groups_layer_decay(vit, weight_decay=0.05, layer_decay=decay,
                                    no_weight_decay_list=vit.no_weight_decay())
  name_of = {id(p): n for n, p in vit.named_parameters()}
  return {name_of[id(p)]: (g["lr_scale"], g["weight_decay"] > 0)
          for g in groups for p in g["params"]}


def mae_layer_id(name: str, num_layers: int) -> int:
  """MAE's ``get_layer_id_for_vit`` (num_layers = depth + 1): cls_token, pos_embed and the patch
  embedding 0, ``blocks.i`` i + 1, everything else (final norm, head) num_layers."""
  if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
    return 0
  if name.startswith("blocks"):
    return int(name.split(".")[1]) + 1
  return num_layers


@pytest.mark.parametrize("depth, decay", [(1, 0.75), (4, 0.65)])
def test_layer_scales_match_mae_and_timm(depth, decay):
  enc, params = _params(depth)
  scales = model.layer_scales(params, depth, decay)
  decayed = decay_mask(params)
  # Leaves filled with their scale (or decay flag), mapped to timm names by the export mapping.
  fill = lambda tree: jax.tree.map(lambda p, s: np.full(p.shape, s, np.float32),
                                   params["encoder"], tree["encoder"])
  ours_scale = encoder_to_state(type(enc)(enc.model_cfg, fill(scales), 0.0, 1.0))
  ours_decay = encoder_to_state(type(enc)(enc.model_cfg, fill(jax.tree.map(float, decayed)),
                                          0.0, 1.0))
  ref = _timm_groups(depth, decay)
  for name, (lr_scale, wd) in ref.items():
    if name.startswith("head."):
      key = name.split(".")[1].replace("weight", "kernel")
      assert scales["head"][key] == pytest.approx(lr_scale), name
      assert decayed["head"][key] == wd, name
      continue
    if name == "pos_embed":  # a constant here, a parameter in timm
      continue
    mae = decay ** (depth + 1 - mae_layer_id(name, depth + 1))  # lr_scale = decay ** (L - id)
    np.testing.assert_allclose(ours_scale[name], mae, rtol=1e-6, err_msg=name)
    if not name.startswith("norm."):  # timm groups the final norm with the last block, MAE
      np.testing.assert_allclose(ours_scale[name], lr_scale, rtol=1e-6, err_msg=name)  # not
    else:
      assert lr_scale == pytest.approx(decay) and mae == 1.0
    assert bool(ours_decay[name].all()) == wd, name
  assert ref["blocks.0.attn.qkv.weight"][0] == pytest.approx(decay ** depth)


def _config(**optim_fields) -> ml_collections.ConfigDict:
  c = ft_config.base_config()
  c.optim.update(optim_fields)
  return c


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_layer_decay_is_a_per_layer_learning_rate(name):
  """The decayed optimizer's first updates equal the plain one's times each layer's factor (and
  the head's its own)."""
  depth = 2
  _, params = _params(depth)
  grads = jax.tree.map(lambda p: jnp.sin(jnp.arange(p.size, dtype=jnp.float32)).reshape(p.shape)
                       * 0.1 + 0.01, params)
  schedule = optax.constant_schedule(1e-3)
  plain = optim.make_optimizer(_config(name=name, layer_decay=1.0, head_lr_scale=1.0), schedule,
                               params, depth)
  decayed = optim.make_optimizer(_config(name=name, layer_decay=0.6, head_lr_scale=10.0),
                                 schedule, params, depth)
  scales = model.layer_scales(params, depth, 0.6, 10.0)
  assert scales["head"]["kernel"] == 10.0 and scales["encoder"]["norm"]["scale"] == 1.0
  sp, sd = plain.init(params), decayed.init(params)
  for _ in range(2):
    up, sp = plain.update(grads, sp, params)
    ud, sd = decayed.update(grads, sd, params)
    jax.tree.map(lambda a, b, s: np.testing.assert_allclose(b, a * s, rtol=1e-5, atol=1e-12),
                 up, ud, scales)


def test_layer_ids():
  _, params = _params(3)
  ids = model.layer_ids(params, 3)
  assert ids["encoder"]["patch_embed"]["kernel"] == 0 and ids["encoder"]["cls_token"] == 0
  assert ids["encoder"]["block_2"]["fc1"]["kernel"] == 3
  assert ids["encoder"]["norm"]["scale"] == 4 and ids["head"]["kernel"] == 4

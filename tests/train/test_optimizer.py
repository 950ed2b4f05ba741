"""AdamW schedule, lr scaling, weight-decay mask, accumulation."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dwm_jax.config import base_config
from dwm_jax.train import ema, optimizer


def make_tx(c, total_steps=10, steps_per_epoch=10):
  return optimizer.make_optimizer(c, optimizer.make_schedule(c, total_steps=total_steps,
                                                             steps_per_epoch=steps_per_epoch))


def config(**optim):
  c = base_config()
  c.batch_size = 512
  for k, v in optim.items():
    setattr(c.optim, k, v)
  return c


def test_lr_scales_with_effective_batch_and_follows_warmup_cosine():
  c = config(base_lr=1e-3, warmup_epochs=2.0, min_lr=1e-5)
  assert optimizer.peak_lr(c) == pytest.approx(2e-3)
  sched = optimizer.make_schedule(c, total_steps=100, steps_per_epoch=10)
  assert float(sched(0)) == 0.0
  assert float(sched(10)) == pytest.approx(1e-3, rel=1e-5)  # halfway through warmup
  assert float(sched(20)) == pytest.approx(2e-3, rel=1e-5)  # peak
  assert float(sched(60)) == pytest.approx(1e-5 + (2e-3 - 1e-5) * 0.5, rel=1e-4)
  assert float(sched(100)) == pytest.approx(1e-5, rel=1e-4)
  c4 = config(base_lr=1e-3, warmup_epochs=2.0, accum_steps=4)
  assert optimizer.peak_lr(c4) == pytest.approx(8e-3)
  # The schedule counts optimizer updates: 100 calls with accum 4 are 25 updates, warmup 5.
  s4 = optimizer.make_schedule(c4, total_steps=100, steps_per_epoch=10)
  assert float(s4(5)) == pytest.approx(8e-3, rel=1e-5)


def test_bad_schedule_arguments_raise():
  with pytest.raises(ValueError, match="accum_steps"):
    optimizer.make_schedule(config(accum_steps=0), total_steps=10, steps_per_epoch=1)
  with pytest.raises(ValueError, match="total_steps"):
    optimizer.make_schedule(config(), total_steps=0, steps_per_epoch=1)


TOY = {"encoder": {"patch_embed": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)},
                  "cls_token": jnp.ones((1, 1, 3)), "norm": {"scale": jnp.ones(3)}},
       "predictor": {"mask_token": jnp.ones((1, 1, 3)), "out": {"kernel": jnp.ones((3, 2))}}}


@pytest.mark.parametrize("groups,tokens", [("timm", True), ("kernels", False)])
def test_weight_decay_groups(groups, tokens):
  mask = optimizer.decay_mask(TOY, groups)
  assert mask["encoder"]["patch_embed"] == {"kernel": True, "bias": False}
  assert mask["encoder"]["norm"]["scale"] is False and mask["predictor"]["out"]["kernel"] is True
  assert mask["encoder"]["cls_token"] is tokens and mask["predictor"]["mask_token"] is tokens
  # With zero gradients only decayed leaves move (AdamW's decoupled decay).
  tx = make_tx(config(base_lr=0.1, warmup_epochs=0.0, weight_decay=0.5, decay_groups=groups))
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, TOY), tx.init(TOY), TOY)
  moved = jax.tree.map(lambda u: bool(jnp.any(u != 0)), updates)
  assert moved == mask
  with pytest.raises(ValueError, match="unknown optim.decay_groups 'all'"):
    optimizer.decay_mask(TOY, "all")


def _torch_name(path) -> str:
  """Our parameter path -> the authors' M2D module name (timm ViT + MAE-style decoder)."""
  keys = [k.key for k in path]
  part, rest, leaf = keys[0], keys[1:-1], keys[-1]
  rename = {"encoder": {"patch_embed": "patch_embed.proj", "norm": "norm"},
            "predictor": {"embed": "decoder_embed", "norm": "decoder_norm",
                          "out": "decoder_pred"}}[part]
  if not rest:  # cls_token, mask_token
    return leaf
  blocks = "blocks" if part == "encoder" else "decoder_blocks"
  head = (f"{blocks}.{rest[0].split('_')[1]}" if rest[0].startswith("block_")
          else rename[rest[0]])
  inner = {"fc1": "mlp.fc1", "fc2": "mlp.fc2"}
  mid = ".".join(inner.get(r, r) for r in rest[1:])
  tail = {"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]
  return ".".join(x for x in (head, mid, tail) if x)


def test_timm_groups_are_timms_param_groups_weight_decay():
  """The authors' optimizer groups (timm's param_groups_weight_decay on their M2D module, whose
  pos_embed is frozen and whose target encoder takes no gradient) == our mask, name by name."""
  torch = pytest.importorskip("torch")
  pytest.importorskip("timm")
  from timm.models.vision_transformer import Block
  from timm.optim import param_groups_weight_decay

  from dwm_jax.train import setup as setup_lib, state as state_lib
  from tests.m2d_reference import timm_m2d_vit

  c = base_config()
  c.model.name, c.model.input_shape = "tiny", (32, 64)
  c.model.width, c.model.depth, c.model.heads, c.model.mlp_dim = 32, 2, 2, 128
  c.objective.predictor_depth, c.objective.predictor_dim, c.objective.predictor_heads = 2, 16, 2
  c.batch_size, c.total_steps = 8, 10
  params = state_lib.abstract_train_state(setup_lib.build(c, 80)).params

  model = torch.nn.Module()  # the authors' M2DViT parameter layout
  model.vit = timm_m2d_vit(32, 2, 2, img=(32, 64))
  model.vit.pos_embed.requires_grad_(False)
  ln = lambda d: torch.nn.LayerNorm(d, eps=1e-6)  # noqa: E731
  model.mask_token = torch.nn.Parameter(torch.zeros(1, 1, 16))
  model.decoder_embed = torch.nn.Linear(32, 16)
  model.decoder_blocks = torch.nn.ModuleList([Block(16, 2, 4.0, qkv_bias=True) for _ in range(2)])
  model.decoder_norm, model.decoder_pred = ln(16), torch.nn.Linear(16, 32)
  model.target_blocks = torch.nn.ModuleList([Block(32, 2, 4.0, qkv_bias=True) for _ in range(2)])
  model.target_blocks.requires_grad_(False)
  names = {id(p): n.removeprefix("vit.") for n, p in model.named_parameters()}
  decayed = set()
  for group in param_groups_weight_decay(model, 0.05):
    if group["weight_decay"] > 0:
      decayed |= {names[id(p)] for p in group["params"]}
  trained = {n for n, p in model.named_parameters() if p.requires_grad} - {"vit.head.weight",
                                                                             "vit.head.bias"}
  trained = {n.removeprefix("vit.") for n in trained}

  ours = {_torch_name(path): bool(v) for path, v in
          jax.tree_util.tree_leaves_with_path(optimizer.decay_mask(params, "timm"))}
  assert set(ours) == trained
  assert {n for n, v in ours.items() if v} == decayed
  assert {"cls_token", "mask_token"} <= decayed and "blocks.0.norm1.weight" not in decayed


def test_clipping_bounds_the_update_direction():
  p = {"w": jnp.ones((2, 2))}
  tx = make_tx(config(clip_norm=1.0, weight_decay=0.0, warmup_epochs=0.0))
  g = {"w": jnp.full((2, 2), 100.0)}
  tx_noclip = make_tx(config(clip_norm=0.0, weight_decay=0.0, warmup_epochs=0.0))
  # Adam normalises the first step, so compare the clipped gradient inside the chain state.
  state = tx.init(p)
  _, new_state = tx.update(g, state, p)
  mu = new_state[1][0].mu["w"]  # (clip, adamw) -> adamw's adam state
  np.testing.assert_allclose(optax.global_norm(mu) / (1 - 0.9), 1.0, rtol=1e-5)
  _, s2 = tx_noclip.update(g, tx_noclip.init(p), p)
  np.testing.assert_allclose(optax.global_norm(s2[0][0].mu["w"]) / (1 - 0.9), 200.0, rtol=1e-5)


def test_default_config_clips_the_gradient_at_global_norm_3():
  p = {"w": jnp.ones((2, 2)), "b": jnp.ones(3)}
  c = base_config()  # the authors' clip_grad 3.0
  c.optim.weight_decay = 0.0
  tx = make_tx(c)

  def first_moment(g):  # Adam's first moment after one update = (1 - b1) * the clipped gradient
    _, state = tx.update(g, tx.init(p), p)
    mu = state[1][0].mu
    return jax.tree.map(lambda m: m / (1 - c.optim.b1), mu)

  big = {"w": jnp.full((2, 2), 30.0), "b": jnp.array([40.0, 0.0, 0.0])}  # global norm 72.1
  clipped = first_moment(big)
  np.testing.assert_allclose(optax.global_norm(clipped), 3.0, rtol=1e-5)
  scale = 3.0 / float(optax.global_norm(big))
  for got, g in zip(jax.tree.leaves(clipped), jax.tree.leaves(big)):
    np.testing.assert_allclose(got, g * scale, rtol=1e-5)  # one scale for the whole tree
  small = jax.tree.map(lambda g: g / 100.0, big)  # norm 0.72 < 3: untouched
  for got, g in zip(jax.tree.leaves(first_moment(small)), jax.tree.leaves(small)):
    np.testing.assert_allclose(got, g, rtol=1e-5)


def test_accumulation_updates_every_k_calls():
  c = config(accum_steps=3, weight_decay=0.0, warmup_epochs=0.0)
  tx = make_tx(c, total_steps=30, steps_per_epoch=3)
  p = {"w": jnp.ones(3)}
  state = tx.init(p)
  flags = []
  for _ in range(6):
    upd, state = tx.update({"w": jnp.ones(3)}, state, p)
    flags.append((bool(optimizer.is_update_step(state)), bool(jnp.any(upd["w"] != 0))))
  assert flags == [(False, False), (False, False), (True, True)] * 2


def authors_ema(step, total_steps, init, end):
  """The authors' ``ema_decay_sched`` (train_audio.py), in float64."""
  return init + (end - init) * step / (total_steps - 1)


@pytest.mark.parametrize("total", [11, 1000])
def test_linear_ema_ramp_is_the_authors(total):
  for start, end in ((0.9, 0.99), (0.99995, 0.99999)):
    for step in (0, (total - 1) // 2, total // 3, total - 2, total - 1):
      got = float(ema.ema_decay(jnp.int32(step), total, start, end, "linear"))
      assert got == pytest.approx(authors_ema(step, total, start, end), abs=1e-7), step
    assert float(ema.ema_decay(0, total, start, end, "linear")) == np.float32(start)
    assert float(ema.ema_decay(total - 1, total, start, end, "linear")) == np.float32(end)
    assert float(ema.ema_decay(total + 5, total, start, end, "linear")) == np.float32(end)
  # The mid step of an 11-step run is exactly halfway (step / (T - 1), not step / T).
  assert float(ema.ema_decay(5, 11, 0.9, 0.99)) == pytest.approx(0.945, abs=1e-7)


def test_cosine_ema_ramp_and_update():
  assert float(ema.ema_decay(0, 100, 0.9, 1.0, "cosine")) == pytest.approx(0.9)
  assert float(ema.ema_decay(50, 100, 0.9, 1.0, "cosine")) == pytest.approx(0.95, abs=1e-6)
  assert float(ema.ema_decay(25, 100, 0.9, 1.0, "cosine")) < 0.925  # slow start
  assert float(ema.ema_decay(100, 100, 0.9, 1.0, "cosine")) == pytest.approx(1.0)
  assert float(ema.ema_decay(500, 100, 0.9, 1.0, "cosine")) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="unknown EMA schedule"):
    ema.ema_decay(0, 10, 0.9, 0.99, "step")
  new = ema.ema_update({"a": jnp.zeros(2)}, {"a": jnp.ones(2)}, jnp.float32(0.75))
  np.testing.assert_allclose(new["a"], 0.25)


def test_run_setup_uses_the_linear_ramp_over_the_run():
  from dwm_jax.train import setup as setup_lib
  c = base_config()
  c.batch_size, c.total_steps = 8, 21
  setup = setup_lib.build(c, 80)
  assert c.objective.ema_schedule == "linear"
  for step in (0, 10, 20):
    assert float(setup.ema_decay(jnp.int32(step))) == pytest.approx(
        authors_ema(step, 21, 0.99995, 0.99999), abs=1e-7)

"""The fine-tuned classifier: its clip embedding is the probe's, its head is EVAR's
``BatchNorm1d(affine=False)`` + ``Linear`` (checked against torch)."""
import jax.numpy as jnp
import numpy as np
import pytest

from dwm_jax import patching
from dwm_jax.evaluate.embed import embed_logmels
from dwm_jax.evaluate.finetuning import model
from dwm_jax.evaluate.finetuning import step as ft_step
from dwm_jax.evaluate.finetuning.config import base_config

torch = pytest.importorskip("torch")


def _patches(enc, x):
  return patching.patchify((x - enc.norm_mean) / enc.norm_std, enc.patch_size)


def test_clip_embedding_is_the_probes(tiny_encoder):
  enc = tiny_encoder
  f, w = enc.input_shape
  x = np.random.default_rng(0).normal(-6.0, 3.0, (3, f, w)).astype(np.float32)
  # A whole window: embed's clip embedding is the mean over its Tp frames.
  want = np.stack([c for _, c in embed_logmels(enc, list(x))])
  got = model.clip_embedding(enc.module, enc.params, _patches(enc, jnp.asarray(x)), enc.grid,
                             jnp.asarray(enc.position_table), None, train=False)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  every = jnp.broadcast_to(jnp.arange(enc.grid.time), (3, enc.grid.time))
  np.testing.assert_allclose(
      model.clip_embedding(enc.module, enc.params, _patches(enc, jnp.asarray(x)), enc.grid,
                           jnp.asarray(enc.position_table), every, train=False), want,
      rtol=1e-5, atol=1e-5)


def test_a_short_clips_window_is_its_own_columns_as_the_probe_embeds_it(tiny_encoder):
  # A 2-column clip (32 frames) fine-tunes in a 32-frame window with the table cut to those
  # columns: the clip embedding is embed's (which encodes a short clip's real columns only),
  # not that of a 64-frame window half padding.
  enc = tiny_encoder
  assert ft_step.task_window(base_config(), enc, [20, 32, 9]) == 32
  assert ft_step.task_window(base_config(), enc, [20, 101]) == 64  # at most the encoder's input
  c = base_config()
  c.window_frames = 48
  assert ft_step.task_window(c, enc, [20]) == 48
  setup = ft_step.build(base_config(), enc, num_train=10, num_classes=3, multilabel=False,
                        window=32)
  assert setup.input_shape == (80, 32) and tuple(setup.grid) == (5, 2)
  x = np.random.default_rng(2).normal(-6.0, 3.0, (3, 80, 32)).astype(np.float32)
  want = np.stack([c for _, c in embed_logmels(enc, list(x))])
  got = model.clip_embedding(setup.module, enc.params, _patches(enc, jnp.asarray(x)), setup.grid,
                             jnp.asarray(setup.pos_embed), None, train=False)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  padded = np.pad(x, ((0, 0), (0, 0), (0, 32)), constant_values=enc.norm_mean)
  full = model.clip_embedding(enc.module, enc.params, _patches(enc, jnp.asarray(padded)),
                              enc.grid, jnp.asarray(enc.position_table), None, train=False)
  assert not np.allclose(full, want, atol=1e-2)
  with pytest.raises(ValueError, match="multiple of the patch width 16"):
    ft_step.build(base_config(), enc, num_train=10, num_classes=3, multilabel=False, window=40)


def test_dropped_columns_do_not_reach_the_embedding(tiny_encoder):
  enc = tiny_encoder
  f, w = enc.input_shape
  pw = enc.patch_size[1]
  x = np.random.default_rng(1).normal(-6.0, 3.0, (2, f, w)).astype(np.float32)
  cols = jnp.asarray([[0, 2], [1, 3]])
  y = x.copy()
  for b, kept in enumerate(np.asarray(cols)):
    for c in set(range(enc.grid.time)) - set(kept.tolist()):
      y[b, :, c * pw:(c + 1) * pw] = 100.0  # changes only dropped columns
  pos = jnp.asarray(enc.position_table)
  a = model.clip_embedding(enc.module, enc.params, _patches(enc, jnp.asarray(x)), enc.grid, pos,
                           cols, train=False)
  b = model.clip_embedding(enc.module, enc.params, _patches(enc, jnp.asarray(y)), enc.grid, pos,
                           cols, train=False)
  np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  full = model.clip_embedding(enc.module, enc.params, _patches(enc, jnp.asarray(y)), enc.grid,
                              pos, None, train=False)
  assert not np.allclose(full, b, atol=1e-3)


def test_head_matches_torch_batchnorm_and_linear():
  rng = np.random.default_rng(0)
  dim, classes, momentum = 6, 3, 0.1
  params = {"kernel": rng.normal(size=(dim, classes)).astype(np.float32),
            "bias": rng.normal(size=classes).astype(np.float32)}
  bn = torch.nn.BatchNorm1d(dim, affine=False, momentum=momentum)
  lin = torch.nn.Linear(dim, classes)
  with torch.no_grad():
    lin.weight.copy_(torch.from_numpy(params["kernel"].T))
    lin.bias.copy_(torch.from_numpy(params["bias"]))
  stats = model.init_stats(dim)
  for step in range(3):
    z = rng.normal(2.0, 3.0, (8, dim)).astype(np.float32)
    bn.train()
    want = lin(bn(torch.from_numpy(z))).detach().numpy()
    got, stats = model.head(params, stats, jnp.asarray(z), norm="batchnorm", train=True,
                            momentum=momentum)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stats["mean"], bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], bn.running_var.numpy(), rtol=1e-5, atol=1e-6)
  bn.eval()
  z = rng.normal(size=(5, dim)).astype(np.float32)
  got, _ = model.head(params, stats, jnp.asarray(z), norm="batchnorm", train=False, momentum=0.0)
  np.testing.assert_allclose(got, lin(bn(torch.from_numpy(z))).detach().numpy(), rtol=1e-4,
                             atol=1e-4)


def test_head_without_norm_is_linear():
  z = jnp.ones((2, 4))
  p = {"kernel": jnp.full((4, 3), 0.5), "bias": jnp.arange(3.0)}
  logits, stats = model.head(p, model.init_stats(4), z, norm="none", train=True, momentum=0.1)
  np.testing.assert_allclose(logits, [[2.0, 3.0, 4.0]] * 2)
  np.testing.assert_array_equal(stats["var"], 1.0)

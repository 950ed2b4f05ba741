"""The fine-tuned classifier: its clip embedding is the probe's, its head is EVAR's
``BatchNorm1d(affine=False)`` + ``Linear`` (checked against torch)."""
import jax.numpy as jnp
import numpy as np
import pytest

from dwm_jax import patching
from dwm_jax.evaluate.embed import embed_logmels
from dwm_jax.evaluate.finetuning import model

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

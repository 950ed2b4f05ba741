"""Exact-count building blocks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dwm_jax import masking
from dwm_jax.masking import ops


def test_ranks_are_permutations_with_ties_by_index():
  x = jnp.array([[0.5, 0.1, 0.5, 0.0], [3.0, 2.0, 1.0, 0.0]])
  np.testing.assert_array_equal(ops.ranks(x), [[2, 1, 3, 0], [3, 2, 1, 0]])


def test_top_k_mask_marks_the_largest():
  x = jnp.array([[0.3, 0.9, 0.1, 0.5]])
  np.testing.assert_array_equal(ops.top_k_mask(x, 2), [[False, True, False, True]])


def test_fill_to_count_keeps_what_fits_and_is_uniform():
  rows = 4000
  base = np.zeros((rows, 10), bool)
  base[:, :3] = True            # 3 set: filling to 5 keeps them and adds 2 of the other 7
  filled = np.asarray(ops.fill_to_count(jax.random.key(0), jnp.asarray(base), 5))
  assert (filled.sum(-1) == 5).all() and filled[:, :3].all()
  np.testing.assert_allclose(filled[:, 3:].mean(0), 2 / 7, atol=0.035)
  base[:, :8] = True            # 8 set: trimming to 5 keeps 5 of those 8, nothing else
  trimmed = np.asarray(ops.fill_to_count(jax.random.key(1), jnp.asarray(base), 5))
  assert (trimmed.sum(-1) == 5).all() and not trimmed[:, 8:].any()
  np.testing.assert_allclose(trimmed[:, :8].mean(0), 5 / 8, atol=0.035)


def split_reference(bits, group, k_in, k_out):
  """numpy: the k_in largest ``bits >> 1`` inside the group and k_out largest outside, ties to
  the lower index."""
  keys = np.asarray(bits).astype(np.int64) >> 1
  out = np.zeros(keys.shape, bool)
  for r, (s, g) in enumerate(zip(keys, group)):
    for side, k in ((g, k_in[r]), (~g, k_out[r])):
      idx = np.flatnonzero(side)
      order = idx[np.lexsort((idx, -s[idx]))]
      out[r, order[:k]] = True
  return out


# A few shapes (each one compiles the loop), many contents.
@settings(max_examples=25, deadline=None)
@given(rows=st.sampled_from([1, 4]), n=st.sampled_from([1, 9, 40]), seed=st.integers(0, 2**16),
       levels=st.sampled_from([3, 1000, 2**31]))
def test_split_top_k_keys_matches_reference(rows, n, seed, levels):
  rng = np.random.default_rng(seed)
  # The top 31 bits order (3 levels: ties); the lowest bit is noise the selection ignores.
  bits = (rng.integers(0, levels, (rows, n), dtype=np.uint64) << 1
          | rng.integers(0, 2, (rows, n), dtype=np.uint64)).astype(np.uint32)
  group = rng.random((rows, n)) < 0.5
  k_in = np.array([rng.integers(0, g.sum() + 1) for g in group])
  k_out = np.array([rng.integers(0, (~g).sum() + 1) for g in group])
  got = ops.split_top_k_keys(jnp.asarray(bits), jnp.asarray(group), jnp.asarray(k_in),
                             jnp.asarray(k_out))
  np.testing.assert_array_equal(got, split_reference(bits, group, k_in, k_out))


@settings(max_examples=25, deadline=None)
@given(rows=st.sampled_from([1, 4]), n=st.sampled_from([1, 9, 40]), seed=st.integers(0, 2**16))
def test_top_k_mask_matches_lax_top_k(rows, n, seed):
  rng = np.random.default_rng(seed)
  scores = (rng.integers(0, 4, (rows, n)) / 4).astype(np.float32)
  k = int(rng.integers(0, n + 1))
  ref = np.zeros((rows, n), bool)
  if k:
    np.put_along_axis(ref, np.asarray(jax.lax.top_k(jnp.asarray(scores), k)[1]), True, axis=1)
  np.testing.assert_array_equal(ops.top_k_mask(jnp.asarray(scores), k), ref)


def test_uniforms_are_jax_uniforms_of_the_same_draw():
  # The float noise the strategies order by is jax.random.uniform's, bit for bit.
  key = jax.random.key(3)
  u, v = ops.uniforms(key, 6, 5, 7)
  ref = jax.random.uniform(key, (6, 12), dtype=jnp.float32)
  np.testing.assert_array_equal(np.concatenate([u, v], axis=1), ref)


@pytest.mark.parametrize("rows,n", [(64, 190), (300, 512)])
def test_top_k_keys_on_random_bits_matches_a_sort(rows, n):
  # Sizes where the radix loop stops well before 32 passes, with a few planted ties.
  bits = np.array(ops.random_bits(jax.random.key(rows), (rows, n)))
  bits[:, 1::7] = bits[:, ::7][:, :bits[:, 1::7].shape[1]]   # equal keys at neighbours
  for k in (0, 1, n // 3, n - 1, n):
    order = np.lexsort((np.broadcast_to(np.arange(n), bits.shape), -bits.astype(np.int64)))
    ref = np.zeros(bits.shape, bool)
    np.put_along_axis(ref, order[:, :k], True, axis=1)
    np.testing.assert_array_equal(ops.top_k_keys(jnp.asarray(bits), k), ref)


def test_fill_with_bits_keeps_what_fits_and_fills_the_rest():
  rows, n = 4000, 10
  base = np.zeros((rows, n), bool)
  base[:, 2:5] = True
  bits = ops.random_bits(jax.random.key(4), (rows, n))
  filled = np.asarray(ops.fill_with_bits(bits, jnp.asarray(base), 6))
  assert (filled.sum(-1) == 6).all() and filled[:, 2:5].all()
  np.testing.assert_allclose(filled[:, ~base[0]].mean(0), 3 / 7, atol=0.035)


@pytest.mark.parametrize("levels", [4, 2**32])
def test_the_gpu_variant_selects_the_same_sets(gpu_variant, levels):
  module = jax.export.export(jax.jit(lambda b: ops.top_k_keys(b, 5)), platforms=["cpu"])(
      jax.ShapeDtypeStruct((8, 40), jnp.uint32)).mlir_module()
  assert not any("stablehlo.reduce" in c for c in _while_conditions(module))  # it is in use
  rng = np.random.default_rng(levels % 97)
  keys = rng.integers(0, levels, (64, 190), dtype=np.uint64).astype(np.uint32)
  group = rng.random(keys.shape) < 0.7
  order = np.lexsort((np.broadcast_to(np.arange(190), keys.shape), -keys.astype(np.int64)))
  for k in (0, 1, 63, 190):
    ref = np.zeros(keys.shape, bool)
    np.put_along_axis(ref, order[:, :k], True, axis=1)
    np.testing.assert_array_equal(ops.top_k_keys(jnp.asarray(keys), k), ref)
    np.testing.assert_array_equal(ops.top_k_keys(jnp.asarray(keys.reshape(64, 10, 19)), k),
                                  ref.reshape(64, 10, 19))
  k_in = np.array([rng.integers(0, g.sum() + 1) for g in group])
  k_out = np.array([rng.integers(0, (~g).sum() + 1) for g in group])
  np.testing.assert_array_equal(
      ops.split_top_k_keys(jnp.asarray(keys), jnp.asarray(group), k_in, k_out),
      split_reference(keys, group, k_in, k_out))


def _while_conditions(mlir: str) -> list[str]:
  """The text of every ``stablehlo.while`` condition region in a printed module."""
  out = []
  for part in mlir.split("stablehlo.while")[1:]:
    cond = part.split(" cond {", 1)[1].split("} do {", 1)[0]
    out.append(cond)
  return out


def test_gpu_selections_have_known_trip_counts():
  # XLA:GPU copies a while predicate to the host and waits on every pass unless the trip count
  # is static: compiled for CUDA, no loop condition may depend on data (no reduction in it).
  x = jax.ShapeDtypeStruct((8, 40), jnp.uint32)
  g = jax.ShapeDtypeStruct((8, 40), jnp.bool_)
  for fn, args in ((lambda b: ops.top_k_keys(b, 5), (x,)),
                   (lambda b, m: ops.split_top_k_keys(b, m, 3, 2), (x, g))):
    cpu = _while_conditions(jax.export.export(jax.jit(fn), platforms=["cpu"])(*args)
                            .mlir_module())
    cuda = _while_conditions(jax.export.export(jax.jit(fn), platforms=["cuda"])(*args)
                             .mlir_module())
    assert cpu and cuda
    assert any("stablehlo.reduce" in c for c in cpu)      # the early stop, on CPU
    assert not any("stablehlo.reduce" in c for c in cuda)


@pytest.mark.usefixtures("gpu_variant")
def test_compiled_for_gpus_no_strategy_waits_on_the_host():
  # As compiled for GPUs (the branch forced here): with the hint traced, no strategy keeps a
  # cond (XLA:GPU copies its predicate to the host and waits) and every loop has a trip count
  # XLA knows, except block's stop, checked once per chunk of attempts (one stage at B = 8).
  x = jnp.zeros((8, 190, 4))
  for name in masking.names():
    opts = {"features": jnp.zeros((8, 190, 16))} if name == "informed" else {}
    fn = jax.jit(lambda key, h, name=name, opts=opts: masking.sample(
        name, key, x, grid=(5, 38), ratio=0.7, hint=h, **opts))
    hlo = fn.lower(jax.random.key(0), jnp.float32(0.5)).compile().as_text()
    whiles = [line for line in hlo.splitlines() if " while(" in line]
    unknown = [line for line in whiles if "known_trip_count" not in line]
    assert " conditional(" not in hlo, name
    assert len(unknown) == (1 if name == "block" else 0), (name, unknown)
    if name == "dwm":
      assert whiles   # the check can see the loops


def test_top_k_keys_counts_over_all_trailing_axes():
  # Keys on the patch grid [B, Fp, Tp] select as their row-major flattening does, ties included.
  rng = np.random.default_rng(5)
  keys = rng.integers(0, 6, (32, 5, 38), dtype=np.uint64).astype(np.uint32)
  for k in (0, 7, 133, 190):
    flat = ops.top_k_keys(jnp.asarray(keys.reshape(32, 190)), k)
    grid = ops.top_k_keys(jnp.asarray(keys), k)
    assert grid.shape == keys.shape
    np.testing.assert_array_equal(np.asarray(grid).reshape(32, 190), flat)


def test_split_top_k_keys_counts_over_all_trailing_axes():
  # The stripes' case: bits and group on the grid [B, Fp, Tp] select as their flattening does.
  rng = np.random.default_rng(6)
  bits = rng.integers(0, 12, (32, 5, 38), dtype=np.uint64).astype(np.uint32)   # ties
  group = rng.random(bits.shape) < 0.6
  sizes = group.reshape(32, -1).sum(-1)
  k_in = rng.integers(0, sizes + 1)
  k_out = rng.integers(0, 190 - sizes + 1)
  grid = ops.split_top_k_keys(jnp.asarray(bits), jnp.asarray(group), k_in, k_out)
  assert grid.shape == bits.shape
  np.testing.assert_array_equal(np.asarray(grid).reshape(32, 190),
                                split_reference(bits.reshape(32, 190), group.reshape(32, 190),
                                                k_in, k_out))


@pytest.mark.parametrize("n,k", [(512, 358), (190, 133), (40, 17)])
def test_split_with_a_known_group_size_selects_the_same_sets(n, k):
  # The swap's case: every row's group (its mask) holds exactly K entries, so the packed
  # counts use base K + 1 (16 bits up to 8x64). Same sets as the generic packing.
  rng = np.random.default_rng(n)
  keys = rng.integers(0, 2**32, (48, n), dtype=np.uint64).astype(np.uint32)
  keys[:, 1::5] = keys[:, ::5][:, :keys[:, 1::5].shape[1]]          # ties
  group = np.asarray(ops.top_k_keys(jnp.asarray(rng.integers(0, 2**32, (48, n), dtype=np.uint64)
                                               .astype(np.uint32)), k))
  k_in = rng.integers(0, k + 1, 48)
  k_out = np.minimum(rng.integers(0, n - k + 1, 48), n - k)
  ref = split_reference(keys, group, k_in, k_out)
  got = ops.split_top_k_keys(jnp.asarray(keys), jnp.asarray(group), k_in, k_out, group_size=k)
  np.testing.assert_array_equal(got, ref)
  np.testing.assert_array_equal(got, ops.split_top_k_keys(jnp.asarray(keys), jnp.asarray(group),
                                                          k_in, k_out))

"""The fused threefry: the same bits as jax.random, without JAX's rolled CPU loop."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dwm_jax.masking import ops, threefry


# Known-answer vectors of Threefry-2x32-20 from Random123 (kat_vectors), an independent reference.
@pytest.mark.parametrize("key,count,expected", [
    ((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
])
def test_hash_matches_random123_known_answers(key, count, expected):
  out = threefry.hash_2x32(*(jnp.uint32(v) for v in key + count))
  assert tuple(int(x) for x in out) == expected


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=3), seed=st.integers(0, 2**31 - 1))
def test_random_bits_equal_jax_random_bits(shape, seed):
  key = jax.random.key(seed)
  np.testing.assert_array_equal(threefry.random_bits(key, tuple(shape)),
                                jax.random.bits(key, tuple(shape), jnp.uint32))


def test_random_bits_equal_jax_for_raw_batched_and_other_keys():
  raw = jax.random.PRNGKey(7)
  np.testing.assert_array_equal(jax.jit(lambda k: threefry.random_bits(k, (256, 191)))(raw),
                                jax.random.bits(raw, (256, 191), jnp.uint32))
  keys = jax.random.split(jax.random.key(1), 4)
  np.testing.assert_array_equal(jax.vmap(lambda k: threefry.random_bits(k, (3, 5)))(keys),
                                jax.vmap(lambda k: jax.random.bits(k, (3, 5), jnp.uint32))(keys))
  rbg = jax.random.key(2, impl="rbg")   # not threefry: jax.random itself
  np.testing.assert_array_equal(threefry.random_bits(rbg, (4, 4)),
                                jax.random.bits(rbg, (4, 4), jnp.uint32))


def test_on_cpu_the_hash_compiles_without_a_loop():
  # JAX's CPU lowering of the hash is a rolled loop; the fused branch must be the one compiled.
  key = jax.random.key(0)
  ours = jax.jit(lambda k: threefry.random_bits(k, (16, 16))).lower(key).compile().as_text()
  theirs = jax.jit(lambda k: jax.random.bits(k, (16, 16))).lower(key).compile().as_text()
  if jax.default_backend() != "cpu":
    pytest.skip("the fused branch is the CPU one")
  assert " while(" in theirs        # the check itself can see JAX's loop
  assert " while(" not in ours


def test_uniform_noise_is_jax_uniform():
  key = jax.random.key(11)
  np.testing.assert_array_equal(ops.uniform_noise(key, (5, 190)),
                                jax.random.uniform(key, (5, 190), dtype=jnp.float32))

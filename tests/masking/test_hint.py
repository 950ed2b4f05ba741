"""Hint swap: exact K at any hint, the expected blend toward uniform, traced hints, schedule."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dwm_jax import masking

from .helpers import swap_reference

N, K, ROWS = 20, 12, 20000


def base_mask(rows=ROWS):
  """Every row masks the first K patches: the most non-uniform starting point."""
  return jnp.broadcast_to(jnp.arange(N) < K, (rows, N))


def expected_frequencies(hint):
  """Masked frequency of a patch in / out of the base mask after the swap.

  n = int(K * h) masked patches are revealed; n are re-masked uniformly from the N - K + n
  visible + revealed patches.
  """
  n = int(K * hint)
  pool = N - K + n
  return 1 - n / K + (n / K) * (n / pool), n / pool


@pytest.mark.parametrize("hint", [0.0, 0.25, 0.5, 1.0])
def test_hint_swap_matches_the_expected_frequencies(hint):
  swapped = np.asarray(masking.hint_swap(jax.random.key(0), base_mask(), K, jnp.float32(hint)))
  np.testing.assert_array_equal(swapped.sum(-1), K)
  freq = swapped.mean(0)
  f_in, f_out = expected_frequencies(hint)
  sigma = np.sqrt(0.25 / ROWS)
  assert np.abs(freq[:K] - f_in).max() < 5 * sigma, (freq[:K], f_in)
  assert np.abs(freq[K:] - f_out).max() < 5 * sigma, (freq[K:], f_out)
  if hint == 0.5:
    # Strictly between the strategy's mask and uniform masking (K / N everywhere).
    assert K / N < f_in < 1 and 0 < f_out < K / N
  if hint == 1.0:
    np.testing.assert_allclose(freq, K / N, atol=5 * sigma)


def test_hint_zero_is_identity_and_large_hint_is_random():
  m = base_mask(8)
  np.testing.assert_array_equal(masking.hint_swap(jax.random.key(1), m, K, 0.0), m)
  a = masking.hint_swap(jax.random.key(1), m, K, 1.0)
  b = masking.hint_swap(jax.random.key(1), m, K, 3.0)   # clipped to K swaps
  np.testing.assert_array_equal(a, b)


def test_traced_hint_compiles_once():
  swap = jax.jit(lambda key, h: masking.hint_swap(key, base_mask(4), K, h))
  counts = [np.asarray(swap(jax.random.key(0), jnp.float32(h))).sum(-1) for h in (0, .3, .7, 1.2)]
  assert all((c == K).all() for c in counts)
  assert swap._cache_size() == 1


def test_hint_schedule():
  sched = lambda e: float(masking.hint_schedule(e, 300.0))
  assert sched(0) == 1.0 and sched(49.9) == 1.0
  assert sched(150) == pytest.approx(1 - 0.5**2)
  assert sched(300) == pytest.approx(0.0)
  assert float(masking.hint_schedule(10, 300.0, fixed=0.3)) == pytest.approx(0.3)
  traced = jax.jit(lambda e: masking.hint_schedule(e, 300.0))
  assert float(traced(jnp.float32(240.0))) == pytest.approx(1 - 0.8**2)


# --------------------------------------------------------------------------- the one-selection swap

def overlap_pmf(num_patches, num_masked, n):
  """P(j): j of the n re-masked patches were revealed ones (hypergeometric), by counting."""
  from math import comb
  visible = num_patches - num_masked
  total = comb(visible + n, n)
  return np.array([comb(n, j) * comb(visible, n - j) / total for j in range(n + 1)])


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_hint_zero_is_the_unswapped_mask_exactly(variant, request):
  """Also as compiled for GPUs, where no cond skips the swap: it runs and gives the mask back."""
  if variant == "gpu":
    request.getfixturevalue("gpu_variant")
  x = jax.random.normal(jax.random.key(5), (8, 190, 16))
  swap = jax.jit(lambda key, m, h: masking.hint_swap(key, m, 133, h))
  m = masking.sample("random", jax.random.key(1), x, grid=(5, 38), ratio=0.7)
  # 0 and every hint below 1 / K swap nothing: the traced path returns the mask itself.
  for h in (0.0, 0.5 / 133, 0.99 / 133):
    np.testing.assert_array_equal(swap(jax.random.key(2), m, jnp.float32(h)), m)
  assert swap._cache_size() == 1
  # Every strategy with a swap or a fill-and-swap end to end: a traced hint of 0 gives exactly
  # the mask of a static 0 (where the swap is not even traced), and a positive hint changes it.
  # Both in one program: one compile per strategy instead of two.
  for name in ("dwm", "time", "time_frequency", "block", "inverse_block"):
    draw = functools.partial(masking.sample, name, grid=(5, 38), ratio=0.7)
    traced_and_static = jax.jit(lambda key, h, draw=draw: (draw(key, x, hint=h),
                                                           draw(key, x, hint=0.0)))
    zero, static = traced_and_static(jax.random.key(3), jnp.float32(0.0))
    np.testing.assert_array_equal(zero, static, err_msg=name)
    changed = 1.0 if name == "inverse_block" else 0.5   # its hint acts at 1 only
    assert not np.array_equal(zero, traced_and_static(jax.random.key(3),
                                                      jnp.float32(changed))[0]), name
    assert traced_and_static._cache_size() == 1


@pytest.mark.parametrize("n_patches,k,rows", [(20, 12, 6), (190, 133, 4), (7, 6, 5), (9, 1, 3)])
def test_swap_keeps_k_and_keeps_at_least_k_minus_n(n_patches, k, rows):
  m = jnp.asarray(np.random.default_rng(0).permuted(
      np.broadcast_to(np.arange(n_patches) < k, (rows, n_patches)), axis=1))
  swap = jax.jit(lambda key, h: masking.hint_swap(key, m, k, h))
  for h in np.linspace(0.0, 1.2, 13):
    out = np.asarray(swap(jax.random.key(int(h * 100)), jnp.float32(h)))
    np.testing.assert_array_equal(out.sum(-1), k)
    n = min(int(np.float32(k) * np.float32(h)), k)
    assert ((out & np.asarray(m)).sum(-1) >= k - n).all()
  assert swap._cache_size() == 1


@pytest.mark.parametrize("hint", [0.25, 0.5, 0.75])
def test_overlap_count_is_hypergeometric_as_in_the_two_step_swap(hint):
  """The law of |swapped & mask| (the one count the one-selection swap samples first) matches the
  exact hypergeometric pmf and a numpy run of the two-step swap."""
  swapped = np.asarray(masking.hint_swap(jax.random.key(7), base_mask(), K, jnp.float32(hint)))
  n = int(K * hint)
  j = (swapped[:, :K].sum(-1) - (K - n))
  assert j.min() >= 0 and j.max() <= n
  pmf = overlap_pmf(N, K, n)
  observed = np.bincount(j, minlength=n + 1) / ROWS
  sigma = np.sqrt(pmf * (1 - pmf) / ROWS) + 1e-12
  assert (np.abs(observed - pmf) < 5 * sigma + 1e-4).all(), (observed, pmf)
  ref = swap_reference(np.random.default_rng(0), np.asarray(base_mask(4000)), K, hint)
  ref_j = ref[:, :K].sum(-1) - (K - n)
  ref_obs = np.bincount(ref_j, minlength=n + 1) / len(ref_j)
  assert np.abs(ref_obs - pmf).max() < 5 * np.sqrt(0.25 / 4000)


def test_swap_is_uniform_within_the_masked_and_the_visible_patches():
  """Given the count, every masked (visible) patch is as likely to stay (be masked) as any other:
  pair frequencies inside each side are flat, as for the two-step swap."""
  swapped = np.asarray(masking.hint_swap(jax.random.key(8), base_mask(), K, jnp.float32(0.5)))
  inside, outside = swapped[:, :K].astype(float), swapped[:, K:].astype(float)
  for side in (inside, outside):
    pairs = side.T @ side / ROWS
    off = pairs[~np.eye(len(pairs), dtype=bool)]
    sigma = np.sqrt(off.mean() * (1 - off.mean()) / ROWS)
    assert off.max() - off.min() < 10 * sigma, (off.min(), off.max())


def test_kept_table_of_the_plain_swap_is_the_overlap_law():
  from dwm_jax.masking import hint as hint_mod
  table = hint_mod.kept_cdf(20, 12, 12)
  assert table.shape == (13, 13) and table.dtype == np.float32
  for n in range(13):
    # m = |swapped & mask| = K - n + j.
    cdf = np.cumsum(overlap_pmf(20, 12, n))
    np.testing.assert_allclose(table[n, 12 - n:], cdf, atol=1e-7)
    assert (table[n, :12 - n] == 0.0).all()


def enumerated_kept_pmf(num_patches, num_masked, union_size, n):
  """Exact P(|R & U| = m) by listing every outcome: U the first u patches, trimmed or filled to K
  uniformly, then n revealed uniformly and n re-masked uniformly from the rest."""
  from fractions import Fraction
  from itertools import combinations
  patches, union = range(num_patches), set(range(union_size))
  if union_size >= num_masked:
    fills = [set(c) for c in combinations(sorted(union), num_masked)]
  else:
    fills = [union | set(c) for c in combinations(sorted(set(patches) - union),
                                                   num_masked - union_size)]
  pmf = [Fraction(0)] * (num_masked + 1)
  for filled in fills:
    reveals = list(combinations(sorted(filled), n))
    for revealed in reveals:
      kept = filled - set(revealed)
      remasks = list(combinations(sorted(set(patches) - kept), n))
      for remasked in remasks:
        weight = Fraction(1, len(fills) * len(reveals) * len(remasks))
        pmf[len((kept | set(remasked)) & union)] += weight
  return np.array([float(p) for p in pmf])


@pytest.mark.parametrize("union_size", [0, 2, 4, 6, 7])
def test_kept_table_matches_every_outcome_of_fill_then_swap(union_size):
  from dwm_jax.masking import hint as hint_mod
  table = hint_mod.kept_cdf(7, 4, union_size)
  for n in range(5):
    ref = np.cumsum(enumerated_kept_pmf(7, 4, union_size, n))
    np.testing.assert_allclose(table[n], np.minimum(ref, 1.0), atol=1e-6)

"""Fine-tuning augmentations against their references: torchaudio's SpecAugment formula, mixup in
the power domain, structured patch dropout in the project's token order."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dwm_jax import patching
from dwm_jax.evaluate.finetuning import augment


def torchaudio_band(u_width: float, u_start: float, size: int, param: int) -> np.ndarray:
  """torchaudio ``mask_along_axis_iid`` for one clip, from its two uniforms, in float32:
  ``value = rand * mask_param``, ``min_value = rand * (size - value)``, masked
  ``[min_value.long(), min_value.long() + value.long())``."""
  value = np.float32(u_width) * np.float32(param)
  min_value = np.float32(u_start) * (np.float32(size) - value)
  start = int(min_value)  # .long() truncates toward zero
  end = start + int(value)
  i = np.arange(size)
  return (i >= start) & (i < end)


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 120), param=st.integers(1, 120), batch=st.integers(1, 6),
       seed=st.integers(0, 2**31 - 1))
def test_band_mask_is_torchaudios_formula(size, param, batch, seed):
  u = np.asarray(jax.random.uniform(jax.random.key(seed), (batch, 2)))
  got = np.asarray(augment.band_mask(jnp.asarray(u), size, param))
  want = np.stack([torchaudio_band(a, b, size, param) for a, b in u])
  np.testing.assert_array_equal(got, want)
  for row in got:  # one contiguous band, narrower than param
    idx = np.nonzero(row)[0]
    assert len(idx) < param and (len(idx) == 0 or idx[-1] - idx[0] == len(idx) - 1)


def test_spec_augment_sets_exactly_the_bands():
  key = jax.random.key(3)
  x = jax.random.normal(jax.random.key(0), (5, 80, 64)) + 10.0  # no value is 0 by chance
  out = np.asarray(augment.spec_augment(key, x, freq_mask=30, time_mask=20, num_freq_masks=2,
                                        num_time_masks=1))
  k_f, k_t = jax.random.split(key)
  uf = np.asarray(jax.random.uniform(k_f, (2, 5, 2)))
  ut = np.asarray(jax.random.uniform(k_t, (1, 5, 2)))
  for b in range(5):
    rows = torchaudio_band(*uf[0, b], 80, 30) | torchaudio_band(*uf[1, b], 80, 30)
    cols = torchaudio_band(*ut[0, b], 64, 20)
    masked = rows[:, None] | cols[None, :]
    np.testing.assert_array_equal(out[b] == 0.0, masked)
    np.testing.assert_array_equal(out[b][~masked], np.asarray(x[b])[~masked])
  # Same key, same masks; masks differ across clips.
  np.testing.assert_array_equal(out, augment.spec_augment(key, x, freq_mask=30, time_mask=20,
                                                          num_freq_masks=2, num_time_masks=1))
  assert len({(out[b] == 0).tobytes() for b in range(5)}) > 1


def test_spec_augment_off_is_identity():
  x = jax.random.normal(jax.random.key(0), (2, 8, 16))
  np.testing.assert_array_equal(augment.spec_augment(jax.random.key(1), x, freq_mask=0,
                                                     time_mask=0), x)


def test_band_widths_are_uniform_below_param():
  u = jax.random.uniform(jax.random.key(0), (20000, 2))
  widths = np.asarray(augment.band_mask(u, 200, 10).sum(axis=1))
  counts = np.bincount(widths, minlength=10)
  assert widths.max() == 9 and len(counts) == 10
  np.testing.assert_allclose(counts / len(widths), 0.1, atol=0.01)


def test_mixup_mixes_power_and_targets():
  b, c = 6, 6
  key = jax.random.key(7)
  x = jax.random.normal(jax.random.key(1), (b, 4, 5)) * 3.0 - 5.0
  y = jnp.eye(c)[:b]  # distinct one-hot rows: the mixed targets name the partner
  xm, ym, lam = augment.mixup(key, x, y, 0.4)
  xm, ym, lam, x = (np.asarray(a, np.float64) for a in (xm, ym, lam, x))
  assert np.all((lam >= 0) & (lam <= 1))
  np.testing.assert_allclose(ym.sum(axis=1), 1.0, atol=1e-6)
  for i in range(b):
    if ym[i, i] > 1 - 1e-6:  # its own partner (or lambda = 1): the clip is unchanged
      np.testing.assert_allclose(xm[i], x[i], atol=1e-5)
      continue
    j = int(np.argmax(np.where(np.arange(c) == i, -1.0, ym[i])))
    np.testing.assert_allclose([ym[i, i], ym[i, j]], [lam[i], 1 - lam[i]], atol=1e-6)
    want = np.log(lam[i] * np.exp(x[i]) + (1 - lam[i]) * np.exp(x[j]))
    np.testing.assert_allclose(xm[i], want, rtol=1e-5, atol=1e-5)


def test_mixup_lambda_is_beta():
  alpha = 0.3
  _, _, lam = augment.mixup(jax.random.key(0), jnp.zeros((20000, 1, 1)), jnp.zeros((20000, 2)),
                            alpha)
  lam = np.asarray(lam)
  assert abs(lam.mean() - 0.5) < 0.01
  assert abs(lam.var() - 1 / (4 * (2 * alpha + 1))) < 0.01  # Beta(a, a) variance


def test_mixup_of_equal_clips_is_the_clip():
  x = jax.random.normal(jax.random.key(1), (1, 3, 4))
  x = jnp.broadcast_to(x, (8, 3, 4))
  xm, _, _ = augment.mixup(jax.random.key(2), x, jnp.eye(8), 0.5)
  np.testing.assert_allclose(xm, x, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(columns=st.integers(1, 40), keep_frac=st.floats(0.01, 1.0), seed=st.integers(0, 1000))
def test_keep_columns_distinct_sorted(columns, keep_frac, seed):
  keep = max(1, int(columns * keep_frac))
  cols = np.asarray(augment.keep_columns(jax.random.key(seed), 4, columns, keep))
  assert cols.shape == (4, keep)
  assert np.all(np.diff(cols, axis=1) > 0) and cols.min() >= 0 and cols.max() < columns


def test_keep_columns_uniform_inclusion():
  cols = np.asarray(augment.keep_columns(jax.random.key(0), 20000, 13, 6))
  freq = np.bincount(cols.ravel(), minlength=13) / 20000
  np.testing.assert_allclose(freq, 6 / 13, atol=0.015)


def test_column_token_ids_follow_the_patch_order():
  grid = patching.Grid(5, 13)
  cols = jnp.asarray([[0, 3, 12], [1, 2, 5]])
  ids = np.asarray(augment.column_token_ids(cols, grid.freq, grid.time))
  rows, tcols = patching.patch_coords(grid)
  for b in range(2):
    assert list(rows[ids[b]]) == [f for f in range(5) for _ in range(3)]
    assert list(tcols[ids[b]]) == list(np.asarray(cols[b])) * 5


@pytest.mark.parametrize("alpha", [0.1, 1.0])
def test_mixup_same_key_same_result(alpha):
  x = jax.random.normal(jax.random.key(1), (4, 2, 3))
  a = augment.mixup(jax.random.key(5), x, jnp.eye(4), alpha)
  b = augment.mixup(jax.random.key(5), x, jnp.eye(4), alpha)
  for u, v in zip(a, b):
    np.testing.assert_array_equal(u, v)

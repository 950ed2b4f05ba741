"""Shared test helpers (not a test module)."""
import jax
import jax.numpy as jnp
import numpy as np

from dwm_jax import masking


def jit_sample(name, key, patches, *, grid, ratio, hint=0.0, **options):
  """``masking.sample`` under ``jax.jit`` (array options traced, the rest static).

  One compile of the whole strategy costs a fraction of the many small eager compiles a new shape
  triggers, and it is how the train step calls it.
  """
  arrays = {k: v for k, v in options.items() if isinstance(v, jax.Array)}
  static = {k: v for k, v in options.items() if k not in arrays}
  fn = jax.jit(lambda key, patches, hint, arrays: masking.sample(
      name, key, patches, grid=grid, ratio=ratio, hint=hint, **static, **arrays))
  return fn(key, patches, jnp.float32(hint), arrays)


def neighbour_pairs(cells: np.ndarray, grid) -> np.ndarray:
  """Number of 4-neighbour pairs with both cells set, per row: ``bool [B, N] -> [B]``."""
  g = cells.reshape(-1, *grid)
  return (g[:, 1:, :] & g[:, :-1, :]).sum((1, 2)) + (g[:, :, 1:] & g[:, :, :-1]).sum((1, 2))


def swap_reference(rng, mask: np.ndarray, num_masked: int, hint: float) -> np.ndarray:
  """The authors' swap written out in numpy, one row at a time: reveal ``int(K * hint)`` masked
  patches uniformly, then re-mask as many uniformly from the visible + revealed ones."""
  n = int(num_masked * hint)
  out = mask.copy()
  for row in out:
    row[rng.choice(np.flatnonzero(row), n, replace=False)] = False
    row[rng.choice(np.flatnonzero(~row), n, replace=False)] = True
  return out


def fill_then_swap_reference(rng, union: np.ndarray, num_masked: int, hint: float) -> np.ndarray:
  """The two steps in numpy: trim or fill ``union: bool [B, N]`` uniformly to K, one row at a
  time, then :func:`swap_reference`."""
  filled = np.zeros_like(union)
  for r, row in enumerate(union):
    inside, outside = np.flatnonzero(row), np.flatnonzero(~row)
    filled[r, (rng.choice(inside, num_masked, replace=False) if len(inside) >= num_masked else
               np.concatenate([inside, rng.choice(outside, num_masked - len(inside),
                                                  replace=False)]))] = True
  return swap_reference(rng, filled, num_masked, hint)


def assert_same_law_given_union(got: np.ndarray, ref: np.ndarray, union: np.ndarray) -> None:
  """Two mask samples ``bool [B, N]`` drawn on the same unions: the same law of the count inside
  the union, and every patch as often masked on each side of it (5 sigma)."""
  rows, n = union.shape
  p_got, p_ref = (np.bincount((m & union).sum(-1), minlength=n + 1) / rows for m in (got, ref))
  sigma = np.sqrt((p_got + p_ref) / rows) + 1e-12
  assert (np.abs(p_got - p_ref) < 5 * sigma + 2e-3).all(), (p_got, p_ref)
  for side in (union, ~union):
    seen = np.maximum(side.sum(0), 1)                   # rows where patch i is on this side
    f_got, f_ref = ((m & side).sum(0) / seen for m in (got, ref))
    assert (np.abs(f_got - f_ref) < 5 * np.sqrt(0.5 / seen)).all(), (f_got, f_ref)

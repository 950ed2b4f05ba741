"""Time-column masking: K // Fp whole columns plus one partial column, uniform over time."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest


from .helpers import jit_sample


@pytest.mark.parametrize("grid,ratio", [((5, 38), 0.7), ((8, 64), 0.8), ((7, 1), 0.5)])
def test_whole_columns_and_one_partial(grid, ratio):
  rows = 2000
  fp, tp = grid
  mask = np.asarray(jit_sample("time", jax.random.key(0), jnp.zeros((rows, fp * tp, 1)),
                               grid=grid, ratio=ratio))
  k = int(mask.sum(-1)[0])
  per_col = mask.reshape(rows, fp, tp).sum(1)          # masked patches in each column
  full, rest = divmod(k, fp)
  assert ((per_col == fp).sum(-1) == full).all()
  partial = (per_col > 0) & (per_col < fp)
  assert (partial.sum(-1) == (rest > 0)).all()
  if rest:
    assert (per_col[partial] == rest).all()
  # Uniform over time positions.
  col_freq = (per_col == fp).mean(0)
  if tp > 1:
    sigma = np.sqrt(0.25 / rows)
    assert np.abs(col_freq - full / tp).max() < 5 * sigma + 1 / tp


def test_hint_blends_toward_random():
  x = jnp.zeros((500, 190, 1))
  whole = lambda m: (m.reshape(-1, 5, 38).sum(1) == 5).sum(-1).mean()
  m0 = np.asarray(jit_sample("time", jax.random.key(1), x, grid=(5, 38), ratio=0.7))
  m5 = np.asarray(jit_sample("time", jax.random.key(1), x, grid=(5, 38), ratio=0.7,
                             hint=0.5))
  assert (m5.sum(-1) == 133).all()
  assert whole(m0) == 26 and whole(m5) < 26

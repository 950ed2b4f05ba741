"""Dataset statistics: streaming mean/std equal the concatenated values'; JSON round trip."""
import numpy as np
import pytest

from dwm_jax.data.stats import RunningStats, compute_stats, load_stats, save_stats


def test_compute_stats_matches_numpy(tmp_path):
  rng = np.random.default_rng(0)
  xs = [rng.normal(-7.0, 4.0, (80, t)).astype(np.float32) for t in (10, 333, 1)]
  st = compute_stats(xs)
  allv = np.concatenate([x.ravel() for x in xs]).astype(np.float64)
  assert st.mean == pytest.approx(allv.mean(), rel=1e-9)
  assert st.std == pytest.approx(allv.std(), rel=1e-9)
  assert (st.num_clips, st.num_values) == (3, allv.size)
  a, b = RunningStats(), RunningStats()
  a.add(xs[0])
  b.add(xs[1])
  b.add(xs[2])
  a.merge(b)
  assert a.result() == st
  save_stats(tmp_path / "s.json", st)
  assert load_stats(tmp_path / "s.json") == st


def test_bad_stats():
  with pytest.raises(ValueError, match="no log-mel values"):
    compute_stats([])
  with pytest.raises(ValueError, match="NaN"):
    compute_stats([np.array([[0.0, np.nan]])])

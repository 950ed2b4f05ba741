"""SyntheticSource's per-process log-mel cache: exact, shared across epochs, bounded, read-only."""
import numpy as np
import pytest

from dwm_jax.data.log_mel import log_mel
from dwm_jax.data.sources import SyntheticSource
from dwm_jax.data.synthetic import synthesize_clip

SECONDS = 0.5  # 51 frames x 80 mels x 4 bytes = 16320 bytes per clip


def test_cached_clip_equals_fresh_synthesis_and_is_reused():
  src = SyntheticSource(4, SECONDS, seed=2)
  first = src[1]
  np.testing.assert_array_equal(first, log_mel(synthesize_clip(1, seed=2, seconds=SECONDS)[0]))
  assert src[1] is first  # the second epoch reads the cache
  assert not first.flags.writeable  # a crop that wrote in place would corrupt later epochs
  with pytest.raises(ValueError):
    first[0, 0] = 0.0


def test_cache_is_bounded_by_cache_mb():
  clip_mb = 80 * 51 * 4 / 2**20
  src = SyntheticSource(6, SECONDS, seed=0, cache_mb=2.5 * clip_mb)
  assert src.max_cached == 2
  xs = [src[i] for i in range(6)]
  assert sorted(src._cache) == [0, 1]  # pylint: disable=protected-access
  again = src[4]
  assert again is not xs[4]  # beyond the bound: synthesised again, identically
  np.testing.assert_array_equal(again, xs[4])
  assert SyntheticSource(6, SECONDS, cache_mb=0).max_cached == 0


def test_negative_cache_mb_is_an_error():
  with pytest.raises(ValueError, match="cache_mb"):
    SyntheticSource(2, SECONDS, cache_mb=-1)

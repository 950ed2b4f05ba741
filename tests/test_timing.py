import itertools

import pytest

from dwm_jax import timing


def test_median_seconds_times_each_call_after_the_warm_up(monkeypatch):
  clock = itertools.count()
  now = [0.0]
  monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
  durations = iter([100.0, 3.0, 1.0, 2.0])   # the first call is the untimed warm-up

  def fn():
    next(clock)
    now[0] += next(durations)

  assert timing.median_seconds(fn, steps=3) == 2.0
  assert next(clock) == 4


def test_matmul_flops_per_s_is_a_rate():
  rate = timing.matmul_flops_per_s(64, steps=3, chain=2)
  assert 1e6 < rate < 1e15


@pytest.mark.parametrize("warmup", [0, 2])
def test_median_seconds_counts_its_calls(warmup):
  calls = []
  timing.median_seconds(lambda: calls.append(1), steps=5, warmup=warmup)
  assert len(calls) == 5 + warmup

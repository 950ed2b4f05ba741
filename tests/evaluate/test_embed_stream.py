"""The streaming loop: cutting, packing, and that neither changes a window's embedding."""
import dataclasses
import threading

import numpy as np
import pytest

from dwm_jax.evaluate import embed_stream
from dwm_jax.evaluate.embed import embed_logmel
from dwm_jax.evaluate.hear import core as hear_core
from dwm_jax.evaluate.windows import Cutter, Packer, Window

PW, W = 16, 64  # the tiny encoder: 16-frame columns, 64-frame windows (4 columns)


def logmel(t, seed=0):
  return np.random.default_rng(seed).normal(-7.0, 4.0, (80, t)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Chunked:
  """A raw log-mel given to the loop in chunks of ``chunk`` frames."""
  key: int
  x: np.ndarray
  chunk: int = 37

  def logmel_chunks(self):
    for a in range(0, self.x.shape[1], self.chunk):
      yield self.x[:, a:a + self.chunk]
    return 160 * (self.x.shape[1] - 1)


class Collect:
  def __init__(self):
    self.got, self.layers, self.results, self.failures = {}, {}, {}, {}

  def frames(self, key, start, frames, layers):
    got = self.got.setdefault(key, [])
    assert start == sum(len(f) for f in got)  # blocks in order, no gap
    got.append(frames)
    if layers is not None:
      self.layers.setdefault(key, []).append(layers)

  def done(self, result):
    self.results[result.key] = result

  def failed(self, key, error):
    self.failures[key] = error

  def abandoned(self, key):
    raise AssertionError(key)


def run(encoder, xs, **kw):
  sink = Collect()
  stats = embed_stream.run(encoder, [Chunked(i, x) for i, x in enumerate(xs)], sink, **kw)
  frames = {k: np.concatenate(v) for k, v in sink.got.items()}
  layers = {k: np.concatenate(v) for k, v in sink.layers.items()}
  return frames, layers, sink, stats


@pytest.mark.parametrize("start", [-4, 0, 4, 8])
def test_cutter_chunked_is_the_whole_stream_cut(start):
  x = logmel(150)
  cutter, got = Cutter(W, PW, start), []
  for a in range(0, 150, 23):
    got += cutter.feed(x[:, a:a + 23])
  got += cutter.finish()
  shifted = x[:, start:] if start >= 0 else np.concatenate([np.zeros((80, -start)), x], 1)
  t = shifted.shape[1]
  padded = np.pad(shifted, ((0, 0), (0, -(-t // PW) * PW - t)))
  assert [c for c, _ in got] == list(range(0, -(-t // PW), W // PW))
  np.testing.assert_array_equal(np.concatenate([d for _, d in got], 1), padded)


def test_packer_places_every_window_once_within_rows():
  rng = np.random.default_rng(0)
  packer, rows, windows = Packer(cols=38, patch_width=PW, segments=4, open_rows=3), [], []
  for i in range(200):
    tp = int(rng.choice([38, 38, 1, 3, 7, 12, 20, 37]))
    w = Window(i, 0, 0, np.zeros((2, tp * PW), np.float32))
    windows.append(w)
    rows += packer.add(w)
  rows += packer.flush()
  placed = [w for row in rows for w, _ in row]
  assert sorted(w.file for w in placed) == list(range(200))
  for row in rows:
    assert len(row) <= 4
    ends = [c0 + w.columns(PW) for w, c0 in row]
    assert [c0 for _, c0 in row] == [0] + ends[:-1] and ends[-1] <= 38  # left to right
  # Short windows share rows: far fewer rows than windows.
  assert len(rows) < 0.75 * len(windows)


def test_packing_does_not_change_the_embeddings(tiny_encoder):
  """Windows of 13 clips (1 to 300 frames) packed 4 to a row, in batches of 3 rows, are the
  same embeddings as each clip alone with one window per row; the clip is the mean."""
  xs = [logmel(t, t) for t in (1, 15, 16, 17, 30, 47, 64, 65, 100, 130, 150, 200, 300)]
  packed, _, sink, stats = run(tiny_encoder, xs, batch_size=3, segments=4, workers=2)
  alone = [run(tiny_encoder, [x], batch_size=1, segments=1)[0][0] for x in xs]
  assert stats.packing > 0.8 and stats.files_done == len(xs) and not sink.failures
  for i, x in enumerate(xs):
    np.testing.assert_allclose(packed[i], alone[i], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(sink.results[i].clip, packed[i].mean(axis=0))
    assert sink.results[i].positions == -(-x.shape[1] // PW) == len(packed[i])
  one_per_row = run(tiny_encoder, xs, batch_size=3, segments=1)[3]
  assert one_per_row.batches > stats.batches  # what packing saves


def test_one_window_per_row_is_bit_identical_whatever_the_batch(tiny_encoder):
  xs = [logmel(t, t) for t in (30, 64, 200, 7, 150)]
  a = run(tiny_encoder, xs, batch_size=4, segments=1)[0]
  b = run(tiny_encoder, xs[::-1], batch_size=4, segments=1)[0]
  for i in range(len(xs)):
    np.testing.assert_array_equal(a[i], b[len(xs) - 1 - i])


def test_layers_end_with_the_frames(tiny_encoder):
  xs = [logmel(t, t) for t in (40, 150)]
  frames, layers, _, _ = run(tiny_encoder, xs, layers=True)
  for i in range(2):
    assert layers[i].shape == (len(frames[i]), 1, 160)  # one block
    np.testing.assert_array_equal(layers[i][:, -1], frames[i])


def test_fine_hop_is_the_hear_module(tiny_encoder):
  """Streams at s_0 + j h interleaved: the HEAR module's timestamp embeddings (its positions
  are the ones centred within the clip: a prefix of ours, every position that starts in it)."""
  audio = (np.random.default_rng(1).normal(size=(1, int(1.98 * 16000))) * 0.1).astype(np.float32)
  x = hear_core._logmels(audio)[0]  # pylint: disable=protected-access
  h = 4
  s0 = hear_core.first_start(PW, h)
  frames = run(tiny_encoder, [x], starts=tuple(s0 + j * h for j in range(PW // h)))[0][0]
  ref, _ = hear_core.timestamp_embeddings(hear_core.HearCore(tiny_encoder, h), audio)
  assert len(frames) == -(-(x.shape[1] - s0) // h) >= ref.shape[1]
  np.testing.assert_allclose(frames[:ref.shape[1]], ref[0], rtol=1e-5, atol=1e-5)
  # The stream at 0 gives the clip: the default frames' mean.
  np.testing.assert_allclose(frames[-s0 // h::PW // h], embed_logmel(tiny_encoder, x)[0],
                             rtol=1e-5, atol=1e-5)


def test_a_bad_chunk_fails_its_file_only(tiny_encoder):
  bad = logmel(300)
  bad[5, 250] = np.nan  # in the 7th chunk: windows of the file are already on their way
  frames, _, sink, stats = run(tiny_encoder, [logmel(100), bad, logmel(70)], batch_size=2,
                               workers=2)
  assert set(sink.results) == {0, 2} and sink.failures[1].reason == "nan"
  assert stats.files_failed == stats.files_done - 1 == 1
  assert len(frames.get(1, [])) < 19  # blocks before the bad chunk may have come: sinks drop them


def test_host_windows_stay_bounded_whatever_the_length(tiny_encoder):
  """A 3-minute log-mel in 10 s chunks: the host never holds more windows than the bound, the
  same as for 30 s (the file has 282 windows)."""
  peak = {}
  for seconds in (30, 180):
    x = logmel(100 * seconds + 1, 3)
    sink = Collect()
    stats = embed_stream.run(tiny_encoder, [Chunked(0, x, chunk=1000)], sink, batch_size=4,
                             segments=4, workers=2)
    peak[seconds] = stats.max_host_windows
  bound = embed_stream.host_windows_bound(4, 4, 2, streams=1, chunk_windows=-(-1000 // W))
  assert peak[180] <= bound < 282 and peak[180] <= peak[30] + 2, (peak, bound)


def test_stop_abandons_the_files_in_reading_and_finishes_the_rest(tiny_encoder):
  """``stop`` set when the first file is done (as SIGTERM does): the loop returns, every file is
  done or abandoned, none half-reported."""
  stop = threading.Event()

  class Stopping(Collect):
    abandoned_keys = []

    def done(self, result):
      super().done(result)
      stop.set()

    def abandoned(self, key):
      self.abandoned_keys.append(key)

  sink = Stopping()
  xs = [logmel(64, 0)] + [logmel(3000, i) for i in range(1, 6)]
  embed_stream.run(tiny_encoder, [Chunked(i, x, chunk=200) for i, x in enumerate(xs)], sink,
                   batch_size=2, workers=2, stop=stop)
  assert 0 in sink.results and not sink.failures
  assert sink.abandoned_keys and set(sink.results) | set(sink.abandoned_keys) <= set(range(6))
  assert not set(sink.results) & set(sink.abandoned_keys)
  assert len(sink.results) + len(sink.abandoned_keys) < 6  # files never started are not touched

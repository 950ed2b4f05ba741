"""Synthetic set: determinism, label coverage, acoustic sanity of the labels, the synth CLI."""
import csv

import numpy as np
import pytest
import soundfile as sf

from dwm_jax.data import synthetic


def test_deterministic_and_seeded():
  a, la = synthetic.synthesize_clip(5, seed=2)
  b, lb = synthetic.synthesize_clip(5, seed=2)
  c, _ = synthetic.synthesize_clip(5, seed=3)
  d, _ = synthetic.synthesize_clip(6, seed=2)
  np.testing.assert_array_equal(a, b)
  assert la == lb
  assert not np.array_equal(a, c) and not np.array_equal(a, d)
  assert a.shape == (97280,) and a.dtype == np.float32  # 6.08 s: 609 frames
  assert 0.05 < np.abs(a).max() < 1.0 and np.all(np.isfinite(a))


def test_labels_cover_all_classes():
  labels = [synthetic.synthesize_clip(i, seconds=3.0)[1] for i in range(120)]
  for key, names in synthetic.LABEL_NAMES.items():
    values = np.array([lab[key] for lab in labels])
    assert values.dtype.kind == "i" and set(values) == set(range(len(names))), key
  durations = {round(lab["duration"], 1) for lab in labels}
  assert len(durations) > 3
  assert any(np.isinf(lab["snr_db"]) for lab in labels)
  assert any(np.isfinite(lab["snr_db"]) for lab in labels)


@pytest.mark.parametrize("event", [0, 4])  # harmonic and AM tones: energy peaks near f0
def test_pitch_label_sets_the_fundamental(event):
  for i in range(event, 6 * 8, 6):
    wave, lab = synthetic.synthesize_clip(i, seed=4, seconds=1.0)
    seg = wave[int(lab["onset"] * 16000):int((lab["onset"] + lab["duration"]) * 16000)]
    spec = np.abs(np.fft.rfft(seg * np.hanning(seg.size)))
    freqs = np.fft.rfftfreq(seg.size, 1 / 16000)
    lo = synthetic.PITCH_BASE_HZ * 2 ** ((lab["pitch"] - 0.5) / 2)
    hi = synthetic.PITCH_BASE_HZ * 2 ** ((lab["pitch"] + 0.5) / 2)
    assert lo <= lab["f0"] <= hi
    # The strongest component below 1.5 f0 lies at the fundamental.
    band = (freqs > 0.5 * lab["f0"]) & (freqs < 1.5 * lab["f0"])
    peak = freqs[band][np.argmax(spec[band])]
    assert abs(peak - lab["f0"]) / lab["f0"] < 0.06


def test_timbre_sets_the_partials():
  """Harmonic tones: bright ones keep energy in upper partials, dark ones barely any; odd
  ones lack the 2nd partial."""
  upper = {0: [], 1: []}
  second = {2: [], 0: []}
  for i in range(0, 6 * 150, 6):  # harmonic tones
    wave, lab = synthetic.synthesize_clip(i, seed=5, seconds=0.6)
    if not np.isinf(lab["snr_db"]) or lab["pitch"] > 5:
      continue  # clean tones whose 3rd+ partials stay below Nyquist
    seg = wave[int(lab["onset"] * 16000):int((lab["onset"] + lab["duration"]) * 16000)]
    power = np.abs(np.fft.rfft(seg * np.hanning(seg.size))) ** 2
    freqs = np.fft.rfftfreq(seg.size, 1 / 16000)
    f0 = lab["f0"]
    if lab["timbre"] in upper:
      upper[lab["timbre"]].append(power[freqs > 2.5 * f0].sum() / power.sum())
    if lab["timbre"] in second:
      near = lambda k: power[np.abs(freqs - k * f0) < 0.2 * f0].sum()
      second[lab["timbre"]].append(near(2) / near(1))
  assert min(map(len, upper.values())) >= 2 and min(map(len, second.values())) >= 2
  assert min(upper[0]) > 10 * max(upper[1])
  assert max(second[2]) < 0.05 < min(second[0])


def test_splits_partition():
  s = synthetic.splits(100, seed=0)
  assert (s.count("train"), s.count("valid"), s.count("test")) == (70, 15, 15)
  assert s == synthetic.splits(100, seed=0) and s != synthetic.splits(100, seed=1)


def test_synth_cli(synth_dir):
  with open(synth_dir / "files.csv") as f:
    files = [r["file_name"] for r in csv.DictReader(f)]
  assert files == [f"audio/{i:06d}.wav" for i in range(12)]
  info = sf.info(str(synth_dir / files[0]))
  assert info.samplerate == 16000 and info.channels == 1 and info.frames == 19200
  for task, names in synthetic.LABEL_NAMES.items():
    with open(synth_dir / f"{task}.csv") as f:
      rows = list(csv.DictReader(f))
    assert [r["file_name"] for r in rows] == files
    assert [r["split"] for r in rows] == synthetic.splits(12, seed=3)
    expect = [names[synthetic.synthesize_clip(i, seed=3, seconds=1.2)[1][task]]
              for i in range(12)]
    assert [r["label"] for r in rows] == expect

"""The built-in synthetic audio set: seeded procedural clips with event, pitch and timbre labels.

Each clip holds one sound event (with onset, duration and loudness drawn per clip) over optional
coloured background noise. Three labels make three probe tasks of different nature:

- ``event`` (6): harmonic tone with vibrato, chirp (glide over 0.5-2 octaves), band-shaped noise
  burst, click/impulse train, amplitude-modulated tone, two-note chord. Temporal structure.
- ``pitch`` (8): half-octave bins of the fundamental from 110 Hz (chirps: the glide's centre;
  noise bursts: the lower spectral edge / comb spacing; clicks: the ringing frequency).
- ``timbre`` (4): spectral shape of the partials or noise: bright (1/sqrt(k)), dark (1/k^2),
  odd partials only, formant (a resonance at 0.7-3 kHz). Spectral-envelope structure.

Synthesis is vectorised numpy (wavetable oscillators, FFT-shaped noise and background):
a few milliseconds per 6 s clip. ``synthesize_clip(i, seed=s)`` depends only on ``(i, s)``.

CLI: ``dwm-jax synth OUT_DIR --num-clips N --seed S`` writes ``audio/*.wav``, ``files.csv``
(``file_name``, for pretraining) and ``event.csv``, ``pitch.csv``, ``timbre.csv`` in the EVAR
convention (``file_name,label,split``).
"""
from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import numpy as np
import scipy.fft

EVENT_NAMES = ("harmonic", "chirp", "noise_burst", "click_train", "am_tone", "chord")
PITCH_BASE_HZ = 110.0
PITCH_NAMES = tuple(f"{PITCH_BASE_HZ * 2 ** (k / 2):.0f}Hz" for k in range(8))
TIMBRE_NAMES = ("bright", "dark", "odd", "formant")
LABEL_NAMES = {"event": EVENT_NAMES, "pitch": PITCH_NAMES, "timbre": TIMBRE_NAMES}
SPLIT_FRACTIONS = (("train", 0.7), ("valid", 0.15), ("test", 0.15))

_TABLE = 2048  # wavetable length (one period)


def _spectral_envelope(freqs: np.ndarray, f0: float, timbre: int, formant: float,
                       nyquist: float) -> np.ndarray:
  """Amplitude at ``freqs`` (Hz) of a source with fundamental ``f0`` and timbre class."""
  k = np.maximum(freqs / f0, 1e-6)
  if timbre == 0:    # bright
    amp = k ** -0.5
  elif timbre == 1:  # dark
    amp = k ** -2.0
  elif timbre == 2:  # odd partials / odd-comb noise
    amp = k ** -1.0 * np.sin(0.5 * np.pi * k) ** 2
  else:              # formant: resonance on a log-frequency Gaussian
    amp = k ** -1.5 * (1.0 + 12.0 * np.exp(-0.5 * (np.log2(np.maximum(freqs, 1.0) / formant)
                                                   / 0.3) ** 2))
  amp = np.where(k < 1.0, k ** 4, amp)  # steep roll-off below the fundamental
  return np.where(freqs < 0.92 * nyquist, amp, 0.0)


def _wavetable(rng: np.random.Generator, f0: float, f0_max: float, timbre: int,
               formant: float, sample_rate: int) -> np.ndarray:
  """One period ``[_TABLE]`` of the partials, band-limited for fundamentals up to ``f0_max``."""
  n_harm = int(min(_TABLE // 2 - 1, 0.92 * (sample_rate / 2) / f0_max))
  k = np.arange(1, n_harm + 1)
  amp = _spectral_envelope(k * f0, f0, timbre, formant, sample_rate / 2)
  spectrum = np.zeros(_TABLE // 2 + 1, np.complex128)
  spectrum[1:n_harm + 1] = amp * np.exp(2j * np.pi * rng.random(n_harm))
  table = np.fft.irfft(spectrum, _TABLE)
  return (table / (np.abs(table).max() + 1e-12)).astype(np.float32)


def _oscillator(table: np.ndarray, freq: np.ndarray, sample_rate: int,
                phase0: float = 0.0) -> np.ndarray:
  """Wavetable oscillator: ``freq [S]`` instantaneous Hz -> ``[S]`` samples (linear interp)."""
  cycles = phase0 + np.cumsum(freq, dtype=np.float64) / sample_rate
  pos = (cycles - np.floor(cycles)) * _TABLE
  i0 = pos.astype(np.int64)
  frac = (pos - i0).astype(np.float32)
  return table[i0 % _TABLE] * (1 - frac) + table[(i0 + 1) % _TABLE] * frac


def _envelope(n: int, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
  """Attack / decay-ish release envelope ``[n]`` in [0, 1]."""
  t = np.arange(n, dtype=np.float32) / sample_rate
  attack = rng.uniform(0.003, 0.08)
  release = rng.uniform(0.02, 0.3)
  dur = n / sample_rate
  env = np.minimum(1.0, t / attack) * np.clip((dur - t) / release, 0.0, 1.0)
  return env.astype(np.float32)


def _vibrato(n: int, rng: np.random.Generator, sample_rate: int, f0: float) -> np.ndarray:
  t = np.arange(n, dtype=np.float32) / sample_rate
  depth = rng.uniform(0.0, 0.03)
  rate = rng.uniform(4.0, 7.0)
  return (f0 * (1.0 + depth * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi)))
          ).astype(np.float32)


def _event(kind: int, n: int, f0: float, timbre: int, formant: float,
           rng: np.random.Generator, sample_rate: int) -> np.ndarray:
  """One event of ``n`` samples, RMS-normalised to 1 (before the envelope)."""
  nyq = sample_rate / 2
  if kind in (0, 4, 5):  # harmonic / AM tone / chord: vibrato tones
    freq = _vibrato(n, rng, sample_rate, f0)
    out = _oscillator(_wavetable(rng, f0, f0 * 1.04, timbre, formant, sample_rate), freq,
                      sample_rate)
    if kind == 5:
      ratio = (5 / 4, 4 / 3, 3 / 2)[rng.integers(3)]
      table2 = _wavetable(rng, f0 * ratio, f0 * ratio * 1.04, timbre, formant, sample_rate)
      out = out + _oscillator(table2, freq * ratio, sample_rate, rng.random())
    if kind == 4:
      t = np.arange(n, dtype=np.float32) / sample_rate
      fm, depth = rng.uniform(3.0, 20.0), rng.uniform(0.6, 1.0)
      out = out * (1.0 - depth * (0.5 + 0.5 * np.sin(2 * np.pi * fm * t))).astype(np.float32)
  elif kind == 1:  # chirp: exponential glide centred on f0
    octaves = rng.uniform(0.5, 2.0) * (1 if rng.random() < 0.5 else -1)
    u = np.linspace(-0.5, 0.5, n, dtype=np.float32)
    freq = (f0 * 2.0 ** (octaves * u)).astype(np.float32)
    table = _wavetable(rng, f0, f0 * 2 ** (abs(octaves) / 2), timbre, formant, sample_rate)
    out = _oscillator(table, freq, sample_rate)
  elif kind == 2:  # noise burst shaped by the timbre envelope anchored at f0
    nfft = scipy.fft.next_fast_len(n, real=True)  # odd lengths make the FFT 10x slower
    spec = scipy.fft.rfft(rng.standard_normal(nfft).astype(np.float32))
    freqs = np.fft.rfftfreq(nfft, 1.0 / sample_rate)
    out = scipy.fft.irfft(spec * _spectral_envelope(freqs, f0, timbre, formant, nyq), nfft)[:n]
  else:  # click train: decaying partials (ringing at f0) repeated at 3-30 Hz
    rate = rng.uniform(3.0, 30.0)
    klen = int(0.03 * sample_rate)
    kt = np.arange(klen, dtype=np.float32) / sample_rate
    table = _wavetable(rng, f0, f0, timbre, formant, sample_rate)
    kernel = _oscillator(table, np.full(klen, f0, np.float32), sample_rate)
    kernel = kernel * np.exp(-kt / rng.uniform(0.002, 0.008)).astype(np.float32)
    onsets = (np.arange(0.0, n / sample_rate, 1.0 / rate) * sample_rate).astype(np.int64)
    onsets = onsets + rng.integers(0, max(1, int(0.1 * sample_rate / rate)), onsets.shape)
    idx = onsets[:, None] + np.arange(klen)[None, :]
    keep = idx < n
    out = np.zeros(n, np.float32)
    np.add.at(out, idx[keep], np.broadcast_to(kernel, idx.shape)[keep])
  out = out.astype(np.float32)
  return out / (np.sqrt(np.mean(out ** 2)) + 1e-8)


def _background(n: int, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
  """Coloured noise ``[n]`` of unit RMS: 1/f^alpha (white to brown) or high-passed hiss."""
  nfft = scipy.fft.next_fast_len(n, real=True)
  spec = scipy.fft.rfft(rng.standard_normal(nfft).astype(np.float32))
  f = np.maximum(np.fft.rfftfreq(nfft, 1.0 / sample_rate), 20.0)
  if rng.random() < 0.7:
    shape = f ** (-0.5 * rng.uniform(0.0, 2.0))
  else:
    cutoff = rng.uniform(1000.0, 5000.0)
    shape = (f / cutoff) ** 2 / (1.0 + (f / cutoff) ** 2)
  noise = scipy.fft.irfft(spec * shape.astype(np.float32), nfft)[:n].astype(np.float32)
  return noise / (np.sqrt(np.mean(noise ** 2)) + 1e-8)


def synthesize_clip(index: int, *, seed: int = 0, seconds: float = 6.08,
                    sample_rate: int = 16000) -> tuple[np.ndarray, dict]:
  """Clip ``index`` of the synthetic set ``seed``.

  Returns:
    wave: ``[round(seconds * sample_rate)]`` float32 in (-1, 1).
    labels: ``{'event': int, 'pitch': int, 'timbre': int}`` indexing ``EVENT_NAMES``,
      ``PITCH_NAMES``, ``TIMBRE_NAMES``, plus descriptive floats (``f0``, ``onset``,
      ``duration`` seconds, ``snr_db``; ``snr_db`` is inf without background).
  """
  if index < 0 or seed < 0:
    raise ValueError(f"index and seed must be non-negative, got {index}, {seed}")
  rng = np.random.default_rng((seed, index))
  n = int(round(seconds * sample_rate))
  event = index % len(EVENT_NAMES)  # balanced event classes
  pitch = int(rng.integers(len(PITCH_NAMES)))
  timbre = int(rng.integers(len(TIMBRE_NAMES)))
  f0 = PITCH_BASE_HZ * 2 ** ((pitch + rng.uniform(-0.35, 0.35)) / 2)
  formant = float(2 ** rng.uniform(np.log2(700.0), np.log2(3000.0)))
  # Durations from short blips to the whole clip.
  dur = min(seconds, float(rng.choice([0.4, 0.8, 1.5, 3.0, seconds])) * rng.uniform(0.8, 1.2))
  m = max(int(dur * sample_rate), 64)
  onset = int(rng.integers(0, n - m + 1))
  ev = _event(event, m, f0, timbre, formant, rng, sample_rate) * _envelope(m, rng, sample_rate)
  wave = np.zeros(n, np.float32)
  wave[onset:onset + m] = ev
  snr_db = float("inf")
  if rng.random() < 0.7:
    snr_db = float(rng.uniform(5.0, 30.0))
    ev_rms = np.sqrt(np.mean(ev ** 2)) * np.sqrt(m / n)  # event energy spread over the clip
    wave += _background(n, rng, sample_rate) * np.float32(ev_rms * 10 ** (-snr_db / 20))
  gain = rng.uniform(0.1, 0.9)
  wave *= np.float32(gain / (np.abs(wave).max() + 1e-8))
  labels = {"event": event, "pitch": pitch, "timbre": timbre, "f0": float(f0),
            "onset": onset / sample_rate, "duration": m / sample_rate, "snr_db": snr_db}
  return wave.astype(np.float32), labels


def splits(num_clips: int, seed: int = 0) -> list[str]:
  """Split name per clip index: a seeded 70/15/15 train/valid/test partition."""
  order = np.random.default_rng((seed, 1 << 30)).permutation(num_clips)
  n_train = int(round(num_clips * SPLIT_FRACTIONS[0][1]))
  n_valid = int(round(num_clips * SPLIT_FRACTIONS[1][1]))
  out = ["test"] * num_clips
  for rank, i in enumerate(order):
    out[i] = "train" if rank < n_train else "valid" if rank < n_train + n_valid else "test"
  return out


def write_dataset(out_dir: str | os.PathLike, num_clips: int, seed: int = 0,
                  seconds: float = 6.08, sample_rate: int = 16000) -> Path:
  """Writes the WAVs and CSVs described in the module docstring; returns ``out_dir``."""
  # Imported here so the synthesizer itself needs no audio I/O.
  from dwm_jax.data.audio_io import write_wav
  out = Path(out_dir)
  (out / "audio").mkdir(parents=True, exist_ok=True)
  split = splits(num_clips, seed)
  rows = []
  for i in range(num_clips):
    wave, labels = synthesize_clip(i, seed=seed, seconds=seconds, sample_rate=sample_rate)
    name = f"audio/{i:06d}.wav"
    write_wav(out / name, wave, sample_rate)
    rows.append((name, labels))
  with open(out / "files.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["file_name"])
    w.writerows([name] for name, _ in rows)
  for task, names in LABEL_NAMES.items():
    with open(out / f"{task}.csv", "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["file_name", "label", "split"])
      w.writerows((name, names[lab[task]], split[i]) for i, (name, lab) in enumerate(rows))
  return out


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="dwm-jax synth", description=__doc__.split("\n")[0])
  p.add_argument("out_dir")
  p.add_argument("--num-clips", type=int, default=2048)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--seconds", type=float, default=6.08)
  p.add_argument("--sample-rate", type=int, default=16000)
  args = p.parse_args(argv)
  if args.num_clips <= 0:
    p.error("--num-clips must be positive")
  t0 = time.perf_counter()
  out = write_dataset(args.out_dir, args.num_clips, args.seed, args.seconds, args.sample_rate)
  print(f"wrote {args.num_clips} clips ({args.num_clips * args.seconds / 3600:.2f} h) to {out} "
        f"in {time.perf_counter() - t0:.1f} s: files.csv, "
        + ", ".join(f"{t}.csv" for t in LABEL_NAMES))
  return 0

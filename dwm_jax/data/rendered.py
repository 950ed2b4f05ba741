"""Real-audio evaluation tasks rendered at run time by Debian packages (no audio is committed).

  dwm-jax render OUT_DIR                          # words + instruments, seed 0
  dwm-jax render OUT_DIR --task words --seed 1 --per-class 40,10,20

Tasks (EVAR layout: ``OUT/<task>.csv`` with ``file_name,label,split``, the WAVs in ``OUT/<task>/``,
16 kHz mono 16-bit; ``OUT/<task>.json`` records what was rendered and with which tools):

- ``words`` (``espeak-ng``): the 10 Speech Commands V2 words (yes, no, up, down, left, right,
  on, off, stop, go), 1.0 s clips. A *speaker* is an accent (one of 8 English voices), a voice
  variant (one of 32: the voice's formants, pitch range, breathiness), a pitch and a speed; each
  speaker says every word once. The variants are split between train, valid and test, so test
  speakers have voices training never heard (as SPCV2 holds out speakers).
- ``instruments`` (``fluidsynth`` + the ``fluid-soundfont-gm`` General MIDI soundfont): one note
  per clip, 2.0 s, labelled with its instrument (10: piano, harpsichord, vibraphone, marimba,
  organ, guitar, violin, trumpet, sax, flute). The keys (MIDI 48-84) are split by ``key % 4``
  between train (0, 1), valid (2) and test (3), so test notes are at pitches training never
  heard for any instrument (timbre must be told apart from pitch); loudness, onset and length
  are drawn per note.

Every clip gets a random level and white background noise at a random SNR. A task is a pure
function of its seed, sizes and the tools' versions: rendering twice gives the same files, and a
folder already holding the same task (same ``OUT/<task>.json``) is reused, not rendered again.
:func:`missing` says why a task cannot be rendered on this machine (a tool or the soundfont not
installed); ``.ci/run`` installs the packages (``apt-get install espeak-ng fluidsynth
fluid-soundfont-gm``).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import io
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from typing import Callable, Sequence

import numpy as np
import soundfile as sf

from dwm_jax import faults, paths
from dwm_jax.data.audio_io import resample, to_mono

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
SPLITS = ("train", "valid", "test")
PER_CLASS = (40, 10, 20)  # default clips per class in train / valid / test

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
           "en-029", "en-us-nyc")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt",
            "klatt2", "klatt3", "klatt4", "whisper", "whisperf", "Andy", "Annie", "adam", "anika",
            "belinda", "benjamin", "david", "ed", "grandma", "grandpa", "linda", "paul", "robert",
            "steph")
VARIANT_SPLIT = (18, 5, 9)  # variants heard only in train / valid / test

# General MIDI programs (0-based) of the instruments, two pairs of close timbres among them
# (vibraphone / marimba, piano / harpsichord).
INSTRUMENTS = {"piano": 0, "harpsichord": 6, "vibraphone": 11, "marimba": 12, "organ": 19,
               "guitar": 24, "violin": 40, "trumpet": 56, "sax": 65, "flute": 73}
NOTES = (48, 84)  # MIDI keys played (C3-C6; every instrument above has samples there)
KEY_SPLIT = {"train": (0, 1), "valid": (2,), "test": (3,)}  # by key % 4: test pitches unheard
SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf2/default-GM.sf2")


class RenderError(faults.Fault):
  """A rendering tool failed or produced no audio."""


class ToolsMissing(faults.UsageFault):
  """The packages a task needs are not installed."""


@dataclasses.dataclass(frozen=True)
class Clip:
  """One clip to render: its label, split and every drawn parameter (``params``)."""
  label: str
  split: str
  params: dict


def _which(tool: str) -> str | None:
  return shutil.which(tool)


def soundfont() -> str | None:
  """The General MIDI soundfont's path, or None."""
  return next((p for p in SOUNDFONTS if os.path.isfile(p)), None)


def missing(task: str) -> str | None:
  """Why ``task`` cannot be rendered here (one line with the install command), or None."""
  if task not in TASKS:
    raise ValueError(f"unknown rendered task {task!r}; valid: {', '.join(TASKS)}")
  need = {"words": ("espeak-ng",), "instruments": ("fluidsynth",)}[task]
  absent = [t for t in need if _which(t) is None]
  if task == "instruments" and soundfont() is None:
    absent.append("fluid-soundfont-gm")
  if absent:
    return (f"task {task} needs {' and '.join(absent)} (not installed): "
            f"apt-get install {' '.join(absent)}")
  return None


def _version(tool: str) -> str:
  out = subprocess.run([tool, "--version"], capture_output=True, text=True, check=False)
  return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def _split_items(items: Sequence, counts: tuple[int, int, int], rng: np.random.Generator
                 ) -> dict[str, list]:
  """``items`` shuffled by ``rng`` and cut into train / valid / test groups of ``counts``."""
  order = [items[i] for i in rng.permutation(len(items))]
  a, b = counts[0], counts[0] + counts[1]
  return {"train": order[:a], "valid": order[a:b], "test": order[b:b + counts[2]]}


def _finish(rng: np.random.Generator, wave: np.ndarray, n: int, offset: int, snr_db: float,
            peak_db: float, what: str = "") -> np.ndarray:
  """``wave`` placed at ``offset`` in ``n`` samples, scaled to ``peak_db`` dBFS, with white
  noise ``snr_db`` below the sound's RMS."""
  out = np.zeros(n, np.float32)
  part = wave[:max(0, n - offset)]
  out[offset:offset + len(part)] = part
  peak = np.abs(out).max()
  if peak <= 0:
    raise RenderError(f"a rendered clip is silent: {what}")
  out *= 10 ** (peak_db / 20) / peak
  active = out[offset:offset + len(part)]
  rms = np.sqrt(np.mean(active ** 2))
  out += rng.standard_normal(n).astype(np.float32) * rms * 10 ** (-snr_db / 20)
  return np.clip(out, -1.0, 1.0)


def _trim(wave: np.ndarray, rate: int, threshold_db: float = -40.0) -> np.ndarray:
  """Leading and trailing silence (10 ms frames below ``threshold_db`` of the peak) cut."""
  hop = rate // 100
  frames = np.abs(wave[:len(wave) // hop * hop]).reshape(-1, hop).max(axis=1)
  loud = np.nonzero(frames > np.abs(wave).max() * 10 ** (threshold_db / 20))[0]
  if not len(loud):
    return wave[:0]
  return wave[loud[0] * hop:(loud[-1] + 1) * hop]


# --- words: espeak-ng ---------------------------------------------------------------------------

def words_plan(seed: int, per_class: tuple[int, int, int]) -> list[Clip]:
  """Speakers (``per_class[s]`` in split ``s``), each saying every word once."""
  rng = np.random.default_rng([seed, 1])
  variants = _split_items(VARIANTS, VARIANT_SPLIT, rng)
  clips = []
  for split, n_speakers in zip(SPLITS, per_class):
    for k in range(n_speakers):
      speaker = {"speaker": f"{split}{k:03d}",
                 "accent": ACCENTS[int(rng.integers(len(ACCENTS)))],
                 "variant": variants[split][k % len(variants[split])],
                 "pitch": int(rng.integers(25, 76)), "speed": int(rng.integers(130, 211))}
      for word in WORDS:
        clips.append(Clip(word, split, {**speaker, "word": word,
                                        "offset": float(rng.uniform(0.0, 1.0)),
                                        "snr_db": float(rng.uniform(15.0, 35.0)),
                                        "peak_db": float(rng.uniform(-12.0, -1.0))}))
  return clips


def render_words(clips: list[Clip], seed: int, seconds: float = 1.0,
                 threads: int = 4) -> list[np.ndarray]:
  """One espeak-ng call per clip (about 40 ms each, run ``threads`` at a time)."""

  def speak(c: Clip) -> np.ndarray:
    p = c.params
    cmd = ["espeak-ng", "-v", f"{p['accent']}+{p['variant']}", "-p", str(p["pitch"]), "-s",
           str(p["speed"]), "--stdout", p["word"]]
    out = subprocess.run(cmd, capture_output=True, check=False)
    if out.returncode or not out.stdout:
      raise RenderError(f"espeak-ng failed on {' '.join(cmd)}: "
                        f"{out.stderr.decode(errors='replace').strip() or 'no audio'}")
    wave, rate = sf.read(io.BytesIO(out.stdout), dtype="float32")
    return _trim(resample(to_mono(wave), rate, SAMPLE_RATE), SAMPLE_RATE)

  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    spoken = list(pool.map(speak, clips))
  n = int(round(seconds * SAMPLE_RATE))
  out = []
  for i, (c, w) in enumerate(zip(clips, spoken)):
    if not len(w):
      raise RenderError(f"espeak-ng gave silence for {c.params}")
    w = w[:n]  # the slowest speakers' longest words still fit; never more than the clip
    rng = np.random.default_rng([seed, 2, i])
    offset = int(c.params["offset"] * (n - len(w)))
    out.append(_finish(rng, w, n, offset, c.params["snr_db"], c.params["peak_db"],
                       f"words clip {i} {c.params}"))
  return out


# --- instruments: fluidsynth + a General MIDI soundfont -----------------------------------------

def instruments_plan(seed: int, per_class: tuple[int, int, int]) -> list[Clip]:
  """``per_class[s]`` notes per instrument in split ``s``, at that split's keys."""
  rng = np.random.default_rng([seed, 3])
  clips = []
  for name, program in INSTRUMENTS.items():
    for split, n in zip(SPLITS, per_class):
      keys = [k for k in range(NOTES[0], NOTES[1] + 1) if k % 4 in KEY_SPLIT[split]]
      for _ in range(n):
        clips.append(Clip(name, split, {
            "program": program, "note": int(keys[int(rng.integers(len(keys)))]),
            "velocity": int(rng.integers(50, 121)),
            "onset": float(rng.uniform(0.0, 0.25)), "hold": float(rng.uniform(0.4, 1.2)),
            "snr_db": float(rng.uniform(20.0, 40.0)),
            "peak_db": float(rng.uniform(-12.0, -1.0))}))
  return clips


def _vlq(n: int) -> bytes:
  """A MIDI variable-length quantity."""
  out = [n & 0x7F]
  n >>= 7
  while n:
    out.append((n & 0x7F) | 0x80)
    n >>= 7
  return bytes(reversed(out))


def midi_file(notes: list[tuple[float, float, int, int, int]], ticks_per_second: int = 960
              ) -> bytes:
  """A format-0 Standard MIDI File on channel 0: ``notes = [(start s, hold s, program, key,
  velocity)]``, each preceded by its program change (120 bpm, 480 ticks per quarter)."""
  events = []
  for start, hold, program, key, velocity in notes:
    t0 = int(round(start * ticks_per_second))
    t1 = t0 + max(1, int(round(hold * ticks_per_second)))
    events += [(t0, 0, bytes([0xC0, program])), (t0, 1, bytes([0x90, key, velocity])),
               (t1, 2, bytes([0x80, key, 0]))]
  track, last = b"", 0
  for t, _, data in sorted(events, key=lambda e: (e[0], e[1])):
    track += _vlq(t - last) + data
    last = t
  track += _vlq(0) + b"\xff\x2f\x00"
  return (b"MThd" + struct.pack(">IHHH", 6, 0, 1, ticks_per_second // 2)
          + b"MTrk" + struct.pack(">I", len(track)) + track)


def render_instruments(clips: list[Clip], seed: int, seconds: float = 2.0, gap: float = 1.5,
                       parts: int = 2) -> list[np.ndarray]:
  """All notes one after another (``seconds + gap`` apart, reverb and chorus off, so no note
  reaches the next clip) in ``parts`` MIDI files rendered in parallel, then cut into clips."""
  font = soundfont()
  stride = seconds + gap
  n = int(round(seconds * SAMPLE_RATE))
  chunks = [list(range(len(clips)))[p::parts] for p in range(parts)]

  def render(idx: list[int], folder: str, p: int) -> np.ndarray:
    notes = [(j * stride + clips[i].params["onset"], clips[i].params["hold"],
              clips[i].params["program"], clips[i].params["note"], clips[i].params["velocity"])
             for j, i in enumerate(idx)]
    mid, wav = os.path.join(folder, f"{p}.mid"), os.path.join(folder, f"{p}.wav")
    with open(mid, "wb") as f:  # a scratch file for the tool, not project storage
      f.write(midi_file(notes))
    cmd = ["fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.5", "-r",
           str(SAMPLE_RATE), "-F", wav, font, mid]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode or not os.path.isfile(wav):
      raise RenderError(f"fluidsynth failed ({' '.join(cmd)}): "
                        f"{(out.stderr or out.stdout).strip()[-300:] or 'no audio'}")
    wave, rate = sf.read(wav, dtype="float32")
    if rate != SAMPLE_RATE:
      raise RenderError(f"fluidsynth wrote {rate} Hz, asked for {SAMPLE_RATE}")
    return to_mono(wave)

  with tempfile.TemporaryDirectory(prefix="dwm_render_") as folder:
    with concurrent.futures.ThreadPoolExecutor(parts) as pool:
      waves = list(pool.map(render, chunks, [folder] * parts, range(parts)))
  out: list[np.ndarray | None] = [None] * len(clips)
  for idx, wave in zip(chunks, waves):
    for j, i in enumerate(idx):
      a = int(round(j * stride * SAMPLE_RATE))
      w = wave[a:a + n]
      rng = np.random.default_rng([seed, 4, i])
      out[i] = _finish(rng, np.pad(w, (0, n - len(w))), n, 0, clips[i].params["snr_db"],
                       clips[i].params["peak_db"], f"instruments clip {i} {clips[i].params}")
  return out


@dataclasses.dataclass(frozen=True)
class Renderer:
  plan: Callable[[int, tuple[int, int, int]], list[Clip]]
  render: Callable[[list[Clip], int], list[np.ndarray]]
  tools: tuple[str, ...]
  seconds: float


TASKS = {
    "words": Renderer(words_plan, render_words, ("espeak-ng",), 1.0),
    "instruments": Renderer(instruments_plan, render_instruments, ("fluidsynth",), 2.0),
}


def _wav_bytes(wave: np.ndarray) -> bytes:
  buf = io.BytesIO()
  sf.write(buf, wave, SAMPLE_RATE, subtype="PCM_16", format="WAV")
  return buf.getvalue()


def manifest(task: str, seed: int, per_class: tuple[int, int, int]) -> dict:
  """What ``render(task, ...)`` writes into ``OUT/<task>.json``: the request and the tools."""
  r = TASKS[task]
  tools = {t: _version(t) for t in r.tools}
  if task == "instruments":
    tools["soundfont"] = os.path.basename(os.path.realpath(soundfont() or "?"))
  return {"task": task, "seed": int(seed), "per_class": list(per_class), "seconds": r.seconds,
          "sample_rate": SAMPLE_RATE, "tools": tools, "format": 1}


def render(task: str, out_dir: str, *, seed: int = 0,
           per_class: tuple[int, int, int] = PER_CLASS) -> str:
  """Renders ``task`` into ``out_dir`` (or reuses it there); returns the CSV's path.

  Raises :class:`ToolsMissing` (exit 2) when its packages are not installed and
  :class:`RenderError` when a tool fails.
  """
  reason = missing(task)
  if reason:
    raise ToolsMissing(reason)
  per_class = tuple(int(v) for v in per_class)
  if len(per_class) != 3 or min(per_class) < 1:
    raise ValueError(f"per_class must be 3 positive counts (train, valid, test), got {per_class}")
  csv_path = paths.join(out_dir, f"{task}.csv")
  meta_path = paths.join(out_dir, f"{task}.json")
  want = manifest(task, seed, per_class)
  if paths.isfile(csv_path) and paths.isfile(meta_path):
    try:
      have = json.loads(paths.read_text(meta_path))
    except ValueError:
      have = None
    if have == want:
      log.info("task %s: reusing %s (rendered before with the same seed, sizes and tools)",
               task, csv_path)
      return csv_path
  t0 = time.perf_counter()
  r = TASKS[task]
  clips = r.plan(int(seed), per_class)
  waves = r.render(clips, int(seed))
  paths.makedirs(paths.join(out_dir, task))
  rows = []
  for i, (c, w) in enumerate(zip(clips, waves)):
    name = f"{task}/{i:05d}.wav"
    paths.write_bytes(paths.join(out_dir, name), _wav_bytes(w))
    rows.append((name, c.label, c.split))
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(["file_name", "label", "split"])
  writer.writerows(rows)
  paths.write_text(csv_path, buf.getvalue())
  paths.write_text(meta_path, json.dumps(want, indent=2))  # last: it marks the folder complete
  log.info("task %s: rendered %d clips of %.1f s into %s in %.1f s", task, len(clips), r.seconds,
           out_dir, time.perf_counter() - t0)
  return csv_path


def available(tasks: Sequence[str] = tuple(TASKS)) -> tuple[list[str], list[str]]:
  """``(tasks that can be rendered here, one reason line per task that cannot)``."""
  ok, reasons = [], []
  for t in tasks:
    why = missing(t)
    (reasons.append(why) if why else ok.append(t))
  return ok, reasons


def main(argv: list[str] | None = None) -> int:
  from dwm_jax import console
  p = argparse.ArgumentParser(prog="dwm-jax render", description=__doc__.split("\n")[0])
  p.add_argument("out_dir")
  p.add_argument("--task", action="append", choices=list(TASKS),
                 help="repeatable; default: every task")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--per-class", default=",".join(map(str, PER_CLASS)),
                 help="clips per class in train,valid,test (words: speakers per split)")
  args = p.parse_args(argv)
  try:
    per_class = tuple(int(v) for v in args.per_class.split(","))
    if len(per_class) != 3 or min(per_class) < 1:
      raise ValueError
  except ValueError:
    p.error(f"--per-class takes 3 positive counts (train,valid,test), got {args.per_class!r}")
  console.setup_logging("info")
  try:
    paths.check_writable(args.out_dir)
    for task in args.task or list(TASKS):
      path = render(task, args.out_dir, seed=args.seed, per_class=per_class)
      print(f"{task}: {path}")
  except faults.Fault as e:
    return console.report_fault("dwm-jax render", e)
  return 0


if __name__ == "__main__":
  sys.exit(main())

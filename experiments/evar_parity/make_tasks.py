"""Task CSVs for the parity runs, rendered at run time (no audio is committed).

  python experiments/evar_parity/make_tasks.py OUT_DIR [--clips 600]

- ``words.csv`` / ``words_folds.csv``: ten spoken command words (Speech Commands' yes, no, up,
  down, left, right, on, off, stop, go) rendered with ``espeak-ng`` (Debian package
  ``espeak-ng``) in 8 English voices x 6 voice variants, at 3 speeds: 1440 clips of 16 kHz
  speech, about 0.3-0.9 s. ``words.csv`` splits by voice variant (train: 4 variants, valid: 1,
  test: 1), so test speakers are unseen; ``words_folds.csv`` has EVAR's ``fold`` column instead
  (5 folds of the 8 voices: the ESC-50 / UrbanSound8K layout).
- ``event_timbre.csv``: a multi-label task on ``--clips`` synthetic clips (``dwm-jax synth``,
  2.08 s): each clip's event and timbre names, joined by ``,``.
- ``synthetic_folds.csv``: the synthetic event labels in 5 folds.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
VOICES = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbcwmd",
          "en-gb-x-gbclan", "en-us-nyc")
VARIANTS = ("m1", "m3", "m5", "f1", "f2", "f4")
SPEEDS = (130, 165, 200)  # words per minute


def _write(path: str, header: list[str], rows: list) -> None:
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


def render_words(out: str) -> None:
  """``out/words/*.wav`` (16 kHz mono) and the two CSVs (see the module docstring)."""
  import soundfile as sf
  from dwm_jax.data.audio_io import load_audio
  if shutil.which("espeak-ng") is None:
    raise SystemExit("espeak-ng is not installed (apt-get install espeak-ng)")
  os.makedirs(os.path.join(out, "words"), exist_ok=True)
  split_of = {v: "train" for v in VARIANTS[:4]} | {VARIANTS[4]: "valid", VARIANTS[5]: "test"}
  rows, fold_rows = [], []
  with tempfile.TemporaryDirectory() as tmp:
    for vi, voice in enumerate(VOICES):
      for variant in VARIANTS:
        for speed in SPEEDS:
          for word in WORDS:
            name = f"words/{voice}_{variant}_{speed}_{word}.wav"
            raw = os.path.join(tmp, "x.wav")
            subprocess.run(["espeak-ng", "-v", f"{voice}+{variant}", "-s", str(speed), "-w",
                            raw, word], check=True, capture_output=True)
            sf.write(os.path.join(out, name), load_audio(raw, 16000), 16000, subtype="PCM_16")
            rows.append((name, word, split_of[variant]))
            fold_rows.append((name, word, vi % 5 + 1))
  _write(os.path.join(out, "words.csv"), ["file_name", "label", "split"], rows)
  _write(os.path.join(out, "words_folds.csv"), ["file_name", "label", "fold"], fold_rows)


def synthetic_csvs(out: str, clips: int) -> None:
  from dwm_jax.data import synthetic
  synthetic.write_dataset(os.path.join(out, "synth"), clips, seed=7, seconds=2.08)
  read = lambda n: list(csv.DictReader(open(os.path.join(out, "synth", f"{n}.csv"))))
  event, timbre = read("event"), read("timbre")
  _write(os.path.join(out, "event_timbre.csv"), ["file_name", "label", "split"],
         [(f"synth/{e['file_name']}", f"{e['label']},{t['label']}", e["split"])
          for e, t in zip(event, timbre)])
  _write(os.path.join(out, "synthetic_folds.csv"), ["file_name", "label", "fold"],
         [(f"synth/{e['file_name']}", e["label"], i % 5 + 1) for i, e in enumerate(event)])


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("out")
  p.add_argument("--clips", type=int, default=600, help="synthetic clips")
  args = p.parse_args(argv)
  render_words(args.out)
  synthetic_csvs(args.out, args.clips)
  print(f"wrote {args.out}/words.csv, words_folds.csv, event_timbre.csv, synthetic_folds.csv")
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""Task CSVs for the parity runs, rendered at run time (no audio is committed).

  python experiments/evar_parity/make_tasks.py OUT_DIR [--clips 600]

- ``words.csv``, ``instruments.csv``: the project's real-audio tasks (``dwm_jax.data.rendered``,
  seed 0: spoken command words by ``espeak-ng``, 1.0 s; General MIDI notes by ``fluidsynth``,
  2.0 s; test speakers / pitches unheard in train).
- ``words_folds.csv``: the same words in EVAR's fold layout (``file_name,label,fold``; 5 folds
  of the speakers, every speaker's ten words in one fold), as ESC-50 and UrbanSound8K.
- ``words_crop.csv``: the same words again, under another name, for a run with a unit shorter
  than the clips (``--unit-sec words_crop=0.8``): train and valid crops then change per seed.
- ``event_timbre.csv``: a multi-label task on ``--clips`` synthetic clips (``dwm-jax synth``,
  2.08 s): each clip's event and timbre names, joined by ``,``.
- ``synthetic_folds.csv``: the synthetic event labels in 5 folds.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def _read(path: str) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _write(path: str, header: list[str], rows: list) -> None:
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


def real_audio_csvs(out: str) -> None:
  from dwm_jax.data import rendered
  words = rendered.render("words", out)
  rendered.render("instruments", out)
  rows = _read(words)  # speaker after speaker, each saying the ten words in turn
  n_words = len(rendered.WORDS)
  _write(os.path.join(out, "words_folds.csv"), ["file_name", "label", "fold"],
         [(r["file_name"], r["label"], (i // n_words) % 5 + 1) for i, r in enumerate(rows)])
  shutil.copyfile(words, os.path.join(out, "words_crop.csv"))


def synthetic_csvs(out: str, clips: int) -> None:
  from dwm_jax.data import synthetic
  synthetic.write_dataset(os.path.join(out, "synth"), clips, seed=7, seconds=2.08)
  event, timbre = (_read(os.path.join(out, "synth", f"{n}.csv")) for n in ("event", "timbre"))
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
  real_audio_csvs(args.out)
  synthetic_csvs(args.out, args.clips)
  print(f"wrote {args.out}: words, instruments, words_folds, words_crop, event_timbre, "
        f"synthetic_folds (.csv)")
  return 0


if __name__ == "__main__":
  sys.exit(main())

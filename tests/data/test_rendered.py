"""The rendered real-audio tasks: layout, held-out speakers / instruments, determinism, reuse,
the MIDI that fluidsynth plays, and the one-line refusal where the packages are missing."""
import csv
import json

import numpy as np
import pytest
import soundfile as sf

from dwm_jax.data import labeled, rendered

SMALL = (2, 1, 1)
NO_WORDS = rendered.missing("words")
NO_INSTRUMENTS = rendered.missing("instruments")


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


@pytest.mark.skipif(bool(NO_WORDS), reason=NO_WORDS or "")
def test_words_layout_speakers_and_determinism(tmp_path):
  path = rendered.render("words", str(tmp_path / "a"), seed=3, per_class=SMALL)
  rows = _rows(path)
  assert list(rows[0]) == ["file_name", "label", "split"]
  counts = {s: sum(r["split"] == s for r in rows) for s in rendered.SPLITS}
  assert counts == {"train": 20, "valid": 10, "test": 10}  # speakers x 10 words
  for s in rendered.SPLITS:
    labels = sorted(r["label"] for r in rows if r["split"] == s)
    assert labels == sorted(rendered.WORDS * (counts[s] // 10))
  wave, rate = sf.read(tmp_path / "a" / rows[0]["file_name"])
  assert rate == 16000 and wave.shape == (16000,)
  # Speech, not noise: the loudest 100 ms is far above the quietest (the noise floor).
  frames = np.sqrt((wave.reshape(10, -1) ** 2).mean(axis=1))
  assert frames.max() > 5 * frames.min()
  again = rendered.render("words", str(tmp_path / "b"), seed=3, per_class=SMALL)
  assert open(again, "rb").read() == open(path, "rb").read()
  for r in rows:
    assert (tmp_path / "a" / r["file_name"]).read_bytes() == (
        tmp_path / "b" / r["file_name"]).read_bytes()
  task = labeled.load_csv_task(path)
  assert task.num_classes == 10 and len(task.train[0]) == 20
  assert task.train[0][0].shape == (80, 101)


def test_words_plan_holds_out_voices():
  clips = rendered.words_plan(0, rendered.PER_CLASS)
  variants = {s: {c.params["variant"] for c in clips if c.split == s} for s in rendered.SPLITS}
  assert not variants["train"] & variants["test"]
  assert not variants["train"] & variants["valid"]
  assert not variants["valid"] & variants["test"]
  assert [len(variants[s]) for s in rendered.SPLITS] == list(rendered.VARIANT_SPLIT)
  assert rendered.words_plan(1, SMALL) != rendered.words_plan(2, SMALL)
  assert rendered.words_plan(1, SMALL) == rendered.words_plan(1, SMALL)


def test_instruments_plan_holds_out_pitches():
  clips = rendered.instruments_plan(0, rendered.PER_CLASS)
  keys = {s: {c.params["note"] for c in clips if c.split == s} for s in rendered.SPLITS}
  assert not keys["train"] & keys["test"] and not keys["valid"] & keys["test"]
  assert not keys["train"] & keys["valid"]
  assert all(rendered.NOTES[0] <= k <= rendered.NOTES[1] for k in set().union(*keys.values()))
  for name, program in rendered.INSTRUMENTS.items():
    mine = [c for c in clips if c.label == name]
    assert {c.params["program"] for c in mine} == {program}
    assert [sum(c.split == s for c in mine) for s in rendered.SPLITS] == list(rendered.PER_CLASS)


@pytest.mark.skipif(bool(NO_INSTRUMENTS), reason=NO_INSTRUMENTS or "")
def test_fluidsynth_plays_the_midi_notes_at_their_pitch_and_onset():
  # A flute (GM 73) has a strong fundamental: A4 (key 69) must come out at 440 Hz, A5 at 880,
  # each at its onset.
  clips = [rendered.Clip("pipe", "train", {"program": 73, "note": key, "velocity": 100,
                                           "onset": onset, "hold": 0.6, "snr_db": 60.0,
                                           "peak_db": -3.0})
           for key, onset in ((69, 0.1), (81, 0.2))]
  waves = rendered.render_instruments(clips, seed=0, parts=1)
  for wave, hz, onset in zip(waves, (440.0, 880.0), (0.1, 0.2)):
    assert wave.shape == (32000,)
    spectrum = np.abs(np.fft.rfft(wave[int(onset * 16000):int(onset * 16000) + 8000]))
    freqs = np.fft.rfftfreq(8000, 1 / 16000)
    band = (freqs > 200) & (freqs < 2000)
    assert abs(freqs[band][np.argmax(spectrum[band])] - hz) < 6.0
    first = np.nonzero(np.abs(wave) > 0.1 * np.abs(wave).max())[0][0] / 16000
    assert onset - 0.005 < first < onset + 0.05


@pytest.mark.skipif(bool(NO_INSTRUMENTS), reason=NO_INSTRUMENTS or "")
def test_instruments_task_renders_and_is_reused(tmp_path, monkeypatch):
  path = rendered.render("instruments", str(tmp_path), seed=0, per_class=(1, 1, 1))
  rows = _rows(path)
  assert len(rows) == 3 * len(rendered.INSTRUMENTS)
  assert {r["label"] for r in rows} == set(rendered.INSTRUMENTS)
  meta = json.loads((tmp_path / "instruments.json").read_text())
  assert meta["per_class"] == [1, 1, 1] and "fluidsynth" in meta["tools"]
  for r in rows:
    wave, rate = sf.read(tmp_path / r["file_name"])
    assert rate == 16000 and wave.shape == (32000,) and np.abs(wave).max() > 0.2

  def fail(*_):
    raise AssertionError("rendered again")

  monkeypatch.setitem(rendered.TASKS, "instruments",
                      rendered.Renderer(rendered.instruments_plan, fail, ("fluidsynth",), 2.0))
  assert rendered.render("instruments", str(tmp_path), seed=0, per_class=(1, 1, 1)) == path
  with pytest.raises(AssertionError, match="rendered again"):  # another seed is another task
    rendered.render("instruments", str(tmp_path), seed=1, per_class=(1, 1, 1))


def test_midi_file_bytes():
  data = rendered.midi_file([(0.5, 0.25, 73, 69, 100)])
  assert data[:4] == b"MThd" and data[8:14] == b"\x00\x00\x00\x01\x01\xe0"  # format 0, 480 tpq
  track = data[22:]
  # Delta 480 ticks (0.5 s at 960/s) = VLQ 83 60, program change, note on, then 240 ticks later
  # (VLQ 81 70) note off, end of track.
  assert track == (b"\x83\x60\xc0\x49" b"\x00\x90\x45\x64" b"\x81\x70\x80\x45\x00"
                   b"\x00\xff\x2f\x00")


def test_missing_packages_are_one_line_with_the_install(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(rendered, "_which", lambda tool: None)
  monkeypatch.setattr(rendered, "soundfont", lambda: None)
  why = rendered.missing("instruments")
  assert why == ("task instruments needs fluidsynth and fluid-soundfont-gm (not installed): "
                 "apt-get install fluidsynth fluid-soundfont-gm")
  assert rendered.available() == ([], [rendered.missing("words"), why])
  with pytest.raises(rendered.ToolsMissing, match="apt-get install espeak-ng"):
    rendered.render("words", str(tmp_path))
  assert rendered.main([str(tmp_path), "--task", "words"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["dwm-jax render: task words needs espeak-ng (not installed): "
                 "apt-get install espeak-ng"]

"""The end-of-pretraining probe's tasks: the rendered real-audio ones where this machine can
render them, one line naming the package where it cannot."""
import logging

import pytest

from configs import quickstart
from dwm_jax.data import rendered
from dwm_jax.evaluate import run


def small_config():
  c = quickstart.get_config()
  c.probe.synthetic_clips = 20
  c.probe.rendered_per_class = (1, 1, 1)
  return c


def test_missing_packages_leave_the_synthetic_tasks_with_one_line(tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(rendered, "_which", lambda tool: None)
  monkeypatch.setattr(rendered, "soundfont", lambda: None)
  with caplog.at_level(logging.WARNING, logger="dwm_jax.evaluate.run"):
    tasks = run.config_tasks(small_config(), str(tmp_path))
  assert [t.name for t in tasks] == ["synthetic_event", "synthetic_pitch", "synthetic_timbre"]
  assert [r.getMessage() for r in caplog.records] == [
      "probe: task words needs espeak-ng (not installed): apt-get install espeak-ng; probing "
      "the other tasks without it",
      "probe: task instruments needs fluidsynth and fluid-soundfont-gm (not installed): "
      "apt-get install fluidsynth fluid-soundfont-gm; probing the other tasks without it"]
  assert not (tmp_path / "rendered").exists()


@pytest.mark.skipif(bool(rendered.available()[1]), reason="; ".join(rendered.available()[1]))
def test_rendered_tasks_join_the_probe(tmp_path):
  tasks = run.config_tasks(small_config(), str(tmp_path))
  assert [t.name for t in tasks][3:] == ["words", "instruments"]
  words, instruments = tasks[3:]
  assert (words.num_classes, len(words.test[0])) == (10, 10)
  assert (instruments.num_classes, len(instruments.train[0])) == (10, 10)
  assert (tmp_path / "rendered" / "words.csv").is_file()
  assert run.config_tasks(small_config())[3:] == []  # no workdir: nothing rendered

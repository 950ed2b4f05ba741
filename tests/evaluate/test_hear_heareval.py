"""heareval's embedding runner on dwm-jax: toy scene and event tasks in the HEAR task layout."""
import json
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from dwm_jax.evaluate.encoder import save_encoder

pytest.importorskip("heareval", reason="hear-eval-kit: pip install --no-deps heareval==2021.1.3 "
                    "python-slugify text-unidecode intervaltree sortedcontainers")

ROOT = str(pathlib.Path(__file__).resolve().parents[2])
SECONDS = 2.0


def _task(root: pathlib.Path, name: str, kind: str) -> None:
  """A HEAR task folder: metadata, vocabulary, split JSONs, 16 kHz WAVs of ``SECONDS``."""
  task = root / name
  rng = np.random.default_rng(0)
  meta = {"task_name": name, "version": "toy", "embedding_type": kind,
          "prediction_type": "multilabel" if kind == "event" else "multiclass",
          "split_mode": "trainvaltest", "sample_duration": SECONDS,
          "evaluation": ["top1_acc"], "splits": ["train", "valid", "test"]}
  task.mkdir(parents=True)
  (task / "task_metadata.json").write_text(json.dumps(meta))
  (task / "labelvocabulary.csv").write_text("idx,label\n0,a\n1,b\n")
  for split in meta["splits"]:
    (task / "16000" / split).mkdir(parents=True)
    labels = {}
    for i in range(3):
      name_i = f"{split}{i}.wav"
      wave = np.zeros(int(SECONDS * 16000), np.float32)  # shorter clips, zero-padded (as HEAR's)
      wave[:int((1.0 + 0.4 * i) * 16000)] = rng.normal(size=int((1.0 + 0.4 * i) * 16000)) * 0.1
      sf.write(task / "16000" / split / name_i, wave, 16000, subtype="FLOAT")
      labels[name_i] = ([{"label": "a", "start": 100.0, "end": 600.0}] if kind == "event"
                        else ["ab"[i % 2]])
    (task / f"{split}.json").write_text(json.dumps(labels))


@pytest.mark.slow
def test_heareval_embedding_runner(tmp_path, tiny_encoder):
  path = save_encoder(str(tmp_path / "enc.msgpack"), model_cfg=tiny_encoder.model_cfg,
                      params=tiny_encoder.params, norm_mean=tiny_encoder.norm_mean,
                      norm_std=tiny_encoder.norm_std)
  for name, kind in (("toy-scene", "scene"), ("toy-events", "event")):
    _task(tmp_path / "tasks", name, kind)
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
  out = subprocess.run(
      [sys.executable, "-m", "heareval.embeddings.runner", "dwm_jax.evaluate.hear", "--model",
       path, "--tasks-dir", str(tmp_path / "tasks"), "--embeddings-dir", str(tmp_path / "emb"),
       "--model-options", '{"hop_ms": 40}'],
      capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  emb = tmp_path / "emb" / "dwm_jax.evaluate.hear-hop-ms=40"  # module + slugified options

  def dims(task):
    return json.loads((emb / task / "test.embedding-dimensions.json").read_text())

  assert (emb / "toy-scene" / ".done.embeddings").exists() and dims("toy-scene") == [3, 160]
  # Event task: 2 s at a 40 ms hop -> timestamps 35, 75, ..., 1995 ms: 50 per clip.
  assert (emb / "toy-events" / ".done.embeddings").exists() and dims("toy-events") == [150, 160]
  stamps = json.loads((emb / "toy-events" / "test.filename-timestamps.json").read_text())
  np.testing.assert_allclose(sorted({t for _, t in stamps}), 35.0 + 40.0 * np.arange(50))
  # heareval labels each timestamp (ms) by the events spanning it: "a" from 100 to 600 ms.
  labels = pickle.loads((emb / "toy-events" / "test.target-labels.pkl").read_bytes())
  assert labels == [["a"] if 100 <= t <= 600 else [] for _, t in stamps] and len(labels) == 150
  memmap = np.memmap(emb / "toy-events" / "test.embeddings.npy", np.float32, "r", shape=(150, 160))
  assert np.isfinite(memmap).all() and np.abs(memmap).sum(axis=1).min() > 0

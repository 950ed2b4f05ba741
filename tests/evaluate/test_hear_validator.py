"""The official HEAR 2021 validator on a tiny exported encoder, both frameworks."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from dwm_jax.evaluate.encoder import save_encoder

pytest.importorskip("hearvalidator", reason="the HEAR validator: pip install --no-deps "
                    "--ignore-requires-python hearvalidator==2021.0.6 (as .ci/run does)")

ROOT = str(pathlib.Path(__file__).resolve().parents[2])


@pytest.mark.slow
@pytest.mark.parametrize("options,module_line,first", [
    ({}, "Received torch Module", "Min timestamp 75.0ms"),
    ({"framework": "tf", "hop_ms": 40}, "Received tensorflow Module", "Min timestamp 35.0ms"),
])
def test_official_validator(tmp_path, tiny_encoder, options, module_line, first):
  path = save_encoder(str(tmp_path / "enc.msgpack"), model_cfg=tiny_encoder.model_cfg,
                      params=tiny_encoder.params, norm_mean=tiny_encoder.norm_mean,
                      norm_std=tiny_encoder.norm_std)
  # The validator calls load_model(path) without options: they go through the environment.
  env = {**os.environ, "PYTHONPATH": ROOT, "DWM_JAX_HEAR_OPTIONS": json.dumps(options)}
  out = subprocess.run([sys.executable, "-m", "hearvalidator.validate", "dwm_jax.evaluate.hear",
                        "--model", path, "--device", "cpu"],
                       capture_output=True, text=True, env=env, timeout=300)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert module_line in out.stdout and first in out.stdout
  assert out.stdout.rstrip().endswith("Looks good!")

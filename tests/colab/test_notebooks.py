"""colab/*.ipynb: each runs top to bottom (smoke sizes) and is committed with its outputs cleared."""
import json
import os
import subprocess
import sys

import nbformat
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLAB = os.path.join(REPO, "colab")
NOTEBOOKS = ("quickstart.ipynb", "mask_cost.ipynb", "dwm_explorer.ipynb")
KERNEL = "dwm-jax-test-python"
CELL_TIMEOUT_S = 300


def read(name: str) -> nbformat.NotebookNode:
  return nbformat.read(os.path.join(COLAB, name), as_version=4)


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
  """A kernel spec that launches *this* interpreter (the venv's), whatever else is installed."""
  from ipykernel.kernelspec import write_kernel_spec
  root = tmp_path_factory.mktemp("kernels")
  write_kernel_spec(str(root / KERNEL))
  spec = json.load(open(root / KERNEL / "kernel.json"))
  assert spec["argv"][0] == sys.executable
  return str(root)


def execute(name: str, kernel_dir: str, out_dir: str) -> nbformat.NotebookNode:
  from jupyter_client.kernelspec import KernelSpecManager
  from jupyter_client.manager import KernelManager
  from nbclient import NotebookClient

  km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(
      kernel_dirs=[kernel_dir]))
  nb = read(name)
  # Inline figures whatever MPLBACKEND the test process has (e.g. agg), as in Jupyter/Colab.
  # Smoke sizes make XLA compilation nearly all of the run time: compile without LLVM's
  # optimisations (-O0 machine code; same programs, same results) to halve it.
  xla_flags = os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
  env = {"DWM_COLAB_SMOKE": "1", "DWM_COLAB_OUT": out_dir, "XLA_FLAGS": xla_flags.strip(),
         "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)  # the kernel inherits this environment (and conftest's XLA_FLAGS)
  try:
    # cwd = colab/, as Jupyter would start it: the setup cell finds the repository above it.
    NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, allow_errors=False,
                   resources={"metadata": {"path": COLAB}}).execute()
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  return nb


def outputs_text(nb: nbformat.NotebookNode) -> str:
  parts = []
  for cell in nb.cells:
    for out in cell.get("outputs", []):
      parts.append(out.get("text", ""))
      parts.append(str(out.get("data", {}).get("text/plain", "")))
  return "\n".join(parts)


def images(nb: nbformat.NotebookNode) -> int:
  return sum("image/png" in out.get("data", {}) for cell in nb.cells
             for out in cell.get("outputs", []))


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, kernel_dir, tmp_path):
  nb = execute(name, kernel_dir, str(tmp_path))  # raises CellExecutionError naming the cell
  text = outputs_text(nb)
  assert "Colab: False" in text and "devices: [" in text
  if name == "quickstart.ipynb":
    summary = json.load(open(tmp_path / "quickstart" / "summary.json"))
    assert summary["step"] == 8 and not summary["preempted"]
    assert set(summary["probe"]) == {"pretrained", "random_init", "logmel_stats"}
    rows = [json.loads(line) for line in open(tmp_path / "quickstart" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, 9))
    # spectrogram, gallery, loss curve, run mask PNG, probe bars
    assert images(nb) >= 5
  elif name == "mask_cost.ipynb":
    for f in ("results.csv", "results.md", "mask_cost.png"):
      assert (tmp_path / "mask_cost" / f).is_file()
    assert "targets on " in text and ("PASS: dwm" in text or "FAIL: dwm" in text)
    assert images(nb) >= 1
  else:
    assert "64 draws per heatmap" in text
    assert images(nb) >= 6


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_no_outputs(name):
  nb = read(name)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code
  for cell in code:
    assert cell.outputs == [] and cell.execution_count is None, f"{name}: cell {cell.id} has output"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_setup_then_tagged_parameters_cell(name):
  code = [c for c in read(name).cells if c.cell_type == "code"]
  setup, params = code[0], code[1]
  assert '"google.colab" in sys.modules' in setup.source and "pip" in setup.source
  assert "parameters" in params.metadata.get("tags", [])
  assert 'os.environ.get("DWM_COLAB_SMOKE"' in params.source
  assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1


def test_notebooks_match_their_generator():
  res = subprocess.run([sys.executable, os.path.join(COLAB, "build_notebooks.py"), "--check"],
                       capture_output=True, text=True)
  assert res.returncode == 0, res.stderr

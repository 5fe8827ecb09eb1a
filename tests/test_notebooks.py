"""Every notebook in notebooks/ runs top to bottom, headless, with tiny step counts."""
import json
import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from conftest import ROOT, cli_env

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TINY = {"GEN_NOTEBOOK_STEPS": "3", "GEN_NOTEBOOK_EVAL_SAMPLES": "100"}


def _kernel_manager(directory):
  """A manager of the notebooks' `python3` kernel run by this interpreter: a `python3`
  kernelspec found elsewhere (the user's, another environment's) could lack gen's dependencies."""
  spec = directory / "python3"
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "Python 3", "language": "python"}))
  specs = KernelSpecManager(kernel_dirs=[str(directory)], ensure_native_kernel=False)
  return KernelManager(kernel_name="python3", kernel_spec_manager=specs)


def test_there_are_notebooks():
  assert {p.stem for p in NOTEBOOKS} >= {"quickstart", "vae_latent_space", "custom_experiment",
                                         "text_generation", "style_transfer"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
  notebook = nbformat.read(path, as_version=4)
  assert notebook.metadata.kernelspec.name == "python3"
  for cell in notebook.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, cell.source[:80]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path):
  notebook = nbformat.read(path, as_version=4)
  client = NotebookClient(notebook, km=_kernel_manager(tmp_path / "kernels"), timeout=180,
                          resources={"metadata": {"path": str(path.parent)}})
  env = {**cli_env(), **TINY, "GEN_NOTEBOOK_WORKDIR": str(tmp_path / "runs")}
  client.execute(env=env)  # Raises CellExecutionError, naming the cell, if any cell fails.

  outputs = [output for cell in notebook.cells if cell.cell_type == "code"
             for output in cell.outputs]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) >= 2, "the notebook shows its samples and curves inline"
  assert (tmp_path / "runs").is_dir()  # Its runs went where it was told.

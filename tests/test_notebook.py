"""notebooks/cqd_colab.ipynb: committed without outputs, its real-data section names configs and data sets that
exist, and it runs top to bottom in a local kernel of this Python in its tiny mode (CQD_NOTEBOOK_TINY=1), without
its Colab install cell (tagged INSTALL_TAG) and without network."""

import os
import re
import sys

import nbclient
import nbformat

import helpers
from cqd_jax.data import registry

NOTEBOOK = os.path.join(helpers.REPO, "notebooks", "cqd_colab.ipynb")
INSTALL_TAG = "colab-install"  # the cell that clones and installs the package on Colab
CELL_TIMEOUT = 300  # seconds per cell


def _read() -> nbformat.NotebookNode:
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  return nb


def _tags(cell: nbformat.NotebookNode) -> list[str]:
  return cell.metadata.get("tags", [])


def _text(cell: nbformat.NotebookNode) -> str:
  """What a code cell printed and displayed as text (stdout, stderr, text/plain and text/markdown)."""
  parts = []
  for out in cell.outputs:
    parts.append(out.get("text", ""))
    parts += [out.get("data", {}).get(kind, "") for kind in ("text/plain", "text/markdown")]
  return "".join(parts)


def _images(cell: nbformat.NotebookNode) -> int:
  return sum("image/png" in out.get("data", {}) for out in cell.outputs)


def test_notebook_is_committed_clean_with_one_install_cell():
  nb = _read()
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(not c.outputs and c.execution_count is None for c in code), "clear the notebook's outputs"
  install = [c for c in code if INSTALL_TAG in _tags(c)]
  assert len(install) == 1 and "pip install" in install[0].source
  assert nb.metadata.kernelspec.name == "python3"


def test_real_data_section_names_what_exists():
  text = "\n".join(c.source for c in _read().cells if c.cell_type == "markdown")
  configs = set(re.findall(r"configs/(\w+)\.py", text)) | set(re.findall(r"`((?:cub|cars)_\w+)`", text))
  configs -= set(registry.DATASETS)
  assert {"demo", "cub_lowres", "cars_lowres"} <= configs
  missing = sorted(c for c in configs if not os.path.exists(os.path.join(helpers.REPO, "configs", f"{c}.py")))
  assert not missing, f"the notebook names configs that do not exist: {missing}"
  datasets = set(re.findall(r"--dataset=(\w+)", text))
  assert datasets == {"cub_paired", "cars_paired"} and datasets <= set(registry.DATASETS)


def test_notebook_runs_in_tiny_mode(tmp_path, monkeypatch):
  nb = _read()
  nb.cells = [c for c in nb.cells if INSTALL_TAG not in _tags(c)]
  nb.cells.insert(0, nbformat.v4.new_code_cell("import sys\nprint(sys.executable)"))
  # The kernel inherits the environment: conftest.py's compilation cache and settings, CPU, tiny mode.
  monkeypatch.setenv("CQD_NOTEBOOK_TINY", "1")
  monkeypatch.setenv("CQD_NOTEBOOK_WORKDIR", str(tmp_path / "work"))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT,
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError, with the cell and its traceback, if a cell fails

  code = [c for c in nb.cells if c.cell_type == "code"]
  assert _text(code[0]).strip() == sys.executable  # the kernel runs this Python (the venv's)
  workdir = tmp_path / "work_tiny"
  by_source = lambda needle: next(c for c in code if needle in c.source)
  assert "4 steps per stage" in _text(by_source("config_lib.validate(config)"))  # TINY took effect
  assert _images(by_source("view_figure")) == 1
  training = _text(by_source("experiment.run("))
  for stage in ("train_a@crop", "lowres/train_b", "lowres/cqd"):
    assert re.search(re.escape(stage) + r".*4/4", training), f"no finished progress bar of {stage}:\n{training}"
  table = _text(by_source("results.markdown("))
  for row in ("| train_a | A |", "| train_a | B |", "| train_b | B |", "| cqd | B |"):
    assert row in table, table
  assert _images(by_source("results.markdown(")) == 1
  assert _images(by_source("analyze.analyze(")) == 2
  for name in ("views.png", "results.png", "results.md", "config.json", "analysis/lowres_gradients.png",
               "analysis/lowres_tau.png", "analysis/report.md"):
    assert (workdir / name).is_file(), name

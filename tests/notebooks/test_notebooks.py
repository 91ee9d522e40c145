"""The example notebooks: committed without outputs, in sync with their generator, and runnable.

Execution uses nbclient with a ``python3`` kernel that runs this interpreter
(``sys.executable``), written to a temporary kernelspec folder, so the notebooks see the
same environment as the tests whatever kernels are installed elsewhere.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = ["01_exploring_mass.ipynb", "02_segmentation_equivariance.ipynb"]
CELL_TIMEOUT_S = 300  # generous: the machines running the tests are small and shared


def _generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", NOTEBOOK_DIR / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs(name: str) -> None:
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: clear the outputs before committing"


def test_in_sync_with_generator() -> None:
    generator = _generator()
    for cells, name in ((generator.NOTEBOOK_1, NOTEBOOKS[0]), (generator.NOTEBOOK_2, NOTEBOOKS[1])):
        committed = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
        assert [c.source for c in committed.cells] == [c.source for c in cells], (
            f"{name} differs from notebooks/make_notebooks.py; run `.venv/bin/python notebooks/make_notebooks.py`"
        )


@pytest.fixture(scope="module")
def kernel_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A kernelspec folder whose ``python3`` kernel is this interpreter."""
    pytest.importorskip("ipykernel")
    root = tmp_path_factory.mktemp("kernels")
    (root / "python3").mkdir()
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (test interpreter)", "language": "python"}  # fmt: skip
    (root / "python3" / "kernel.json").write_text(json.dumps(spec))
    return [str(root)]


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name: str, kernel_dirs: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    monkeypatch.setenv("NO_ALBUMENTATIONS_UPDATE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    manager = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=kernel_dirs))
    client = nbclient.NotebookClient(
        notebook, km=manager, timeout=CELL_TIMEOUT_S, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )  # fmt: skip
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    assert manager.kernel_spec.argv[0] == sys.executable
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors

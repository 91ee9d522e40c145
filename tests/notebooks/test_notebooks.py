"""The example notebooks: stored with outputs, in sync with their generator, and their exactness lines reproducible.

``notebooks/make_notebooks.py`` builds, runs and stores the notebooks; its ``check`` runs a
fresh copy (a kernel on this interpreter) and compares the ``exact: ...`` lines with the
stored outputs, so the stored text cannot drift from what the code measures.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def _generator():
    spec = importlib.util.spec_from_file_location("make_notebooks", NOTEBOOK_DIR / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


GENERATOR = _generator()
NAMES = [spec.name for spec in GENERATOR.NOTEBOOKS]


@pytest.mark.parametrize("name", NAMES)
def test_stored_with_outputs(name: str) -> None:
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code), f"{name}: run notebooks/make_notebooks.py"
    assert not [output for cell in code for output in cell.outputs if output.output_type == "error"]
    assert GENERATOR.exact_lines(notebook), f"{name}: no 'exact:' line in the stored outputs"


def test_in_sync_with_generator() -> None:
    for spec in GENERATOR.NOTEBOOKS:
        committed = nbformat.read(NOTEBOOK_DIR / spec.name, as_version=4)
        assert [c.source for c in committed.cells] == [c.source for c in GENERATOR.build(spec).cells], (
            f"{spec.name} differs from notebooks/make_notebooks.py; run `.venv/bin/python notebooks/make_notebooks.py`"
        )


def test_sections_are_numbered_and_listed() -> None:
    spec = GENERATOR.NOTEBOOK_1
    cells = GENERATOR.build(spec).cells
    headings = [cell.source.splitlines()[0] for cell in cells if cell.source.startswith("## ")]
    assert headings == [f"## {n}. {section.title}" for n, section in enumerate(spec.sections, 1)]
    assert all(f"{n}. {section.summary}" in cells[0].source for n, section in enumerate(spec.sections, 1))


def test_compare_flags_a_changed_exactness_line() -> None:
    stored = nbformat.read(NOTEBOOK_DIR / NAMES[0], as_version=4)
    fresh = nbformat.from_dict(copy.deepcopy(dict(stored)))
    assert GENERATOR.compare(NAMES[0], stored, fresh) == []
    output = next(o for c in fresh.cells if c.cell_type == "code" for o in c.outputs
                  if o.output_type == "stream" and GENERATOR.EXACT_PREFIX in o.text)  # fmt: skip
    line = next(line for line in output.text.splitlines() if line.startswith(GENERATOR.EXACT_PREFIX))
    output.text = output.text.replace(line, line.rsplit("=", 1)[0] + "= 1e-05")
    problems = GENERATOR.compare(NAMES[0], stored, fresh)
    assert len(problems) == 1 and "1e-05" in problems[0] and line in problems[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_fresh_run_matches_stored_exactness_lines(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("NO_ALBUMENTATIONS_UPDATE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    spec = next(spec for spec in GENERATOR.NOTEBOOKS if spec.name == name)
    assert GENERATOR.check(spec) == []

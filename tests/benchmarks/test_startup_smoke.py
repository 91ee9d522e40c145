"""Smoke run of ``benchmarks/startup.py``, and what each entry point imports (laziness, not timing).

No timing assertions: start-up times on a shared machine are measured by the benchmark, not tested.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "startup.py"
HEAVY_OPTIONAL = {"lightning", "segmentation_models_pytorch", "timm", "albumentations"}


@pytest.fixture(scope="module")
def startup():
    spec = importlib.util.spec_from_file_location("benchmark_startup", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_json_and_markdown(startup, tmp_path, capsys):
    rows = startup.main(["--rounds", "1", "--warmup", "0", "--output-dir", str(tmp_path),
                         "--cases", "from mass_lightning import convert", "mass-lightning --help"])  # fmt: skip
    by_case = {row["case"]: row for row in rows}
    assert list(by_case) == ["import torch", "from mass_lightning import convert", "mass-lightning --help"]
    assert by_case["import torch"]["heavy_imports"] == ["torch"]
    assert not HEAVY_OPTIONAL & set(by_case["from mass_lightning import convert"]["heavy_imports"])
    assert by_case["mass-lightning --help"]["heavy_imports"] == []  # neither torch nor Lightning
    assert by_case["mass-lightning --help"]["target_added_s"] == 1.5
    payload = json.loads((tmp_path / "startup.json").read_text())
    assert payload["machine"]["logical_cores"] >= 1 and len(payload["rows"]) == 3
    assert "| `from mass_lightning import convert` |" in (tmp_path / "startup.md").read_text()
    assert "added to `import torch`" in capsys.readouterr().out


def test_tasks_and_data_load_smp_timm_and_albumentations_only_on_first_use(startup):
    heavy = set(startup.heavy_imports("import mass_lightning.tasks, .data"))
    assert "lightning" in heavy
    assert not {"segmentation_models_pytorch", "timm", "albumentations"} & heavy

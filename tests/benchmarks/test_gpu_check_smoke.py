"""Smoke run of ``benchmarks/gpu_check.py`` on the CPU: it runs end to end and writes its tables.

The real run needs a CUDA machine (``bash benchmarks/gpu_check.sh``); this checks the script
itself, so that it is ready when one is available.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_cpu_smoke_run(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("gpu_check", BENCHMARKS / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        module.main(["--device", "cpu", "--quick", "--output-dir", str(tmp_path)])
    finally:
        sys.modules.pop("speed", None)
    rows = json.loads((tmp_path / "exactness.json").read_text())["rows"]
    assert {row["model"] for row in rows} == {"resnet18", "deeplabv3plus_resnet18"}
    assert all(row["exact"] == 1.0 for row in rows if row["dtype"] == "float32")  # CPU kernels are exact
    assert "| resnet18 | deterministic, no TF32 | float32 | 100% |" in (tmp_path / "exactness.md").read_text()
    for name in ("speed-eager-fp32", "speed-eager-bf16"):
        assert (tmp_path / f"{name}.md").is_file() and (tmp_path / f"{name}.json").is_file()

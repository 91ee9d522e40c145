"""Smoke run of ``benchmarks/speed.py`` on tiny sizes: it runs and writes its outputs.

No timing assertions: the numbers of a run this small mean nothing.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "speed.py"


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("benchmark_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_json_and_markdown(speed, tmp_path, capsys):
    speed.main([
        "--quick", "--models", "resnet18", "--methods", "original", "mass", "aps", "--threads", "1",
        "--batch-size", "2", "--image-size", "64", "--rounds", "1", "--warmup", "0",
        "--device", "cpu", "--output-dir", str(tmp_path),
    ])
    payload = json.loads((tmp_path / "all-cores.json").read_text())
    assert payload["machine"]["torch"] == torch.__version__
    assert payload["machine"]["torch_threads"] == 1 and payload["settings"]["clock"] == "wall"
    methods = payload["results"]["resnet18"]["methods"]
    assert set(methods) == {"original", "mass", "aps"}
    for row in methods.values():
        assert row["inference"]["min_s"] > 0 and row["train"]["min_s"] > 0
        assert row["peak_train_bytes"] > 0
    assert methods["original"]["inference"]["ratio_of_min"] == 1.0
    table = (tmp_path / "all-cores.md").read_text()
    assert "| resnet18 | mass |" in table and "regime `all-cores`" in table
    assert "mass" in capsys.readouterr().out


def test_segmentation_and_periodic_regimes(speed, tmp_path):
    common = ["--quick", "--rounds", "1", "--warmup", "0", "--threads", "1", "--no-memory", "--device", "cpu",
              "--output-dir", str(tmp_path)]
    speed.main(["--regime", "segmentation", "--methods", "original", "mass", *common])
    rows = json.loads((tmp_path / "segmentation.json").read_text())["results"]["unet_resnet34"]["methods"]
    assert set(rows) == {"original", "mass"} and rows["mass"]["train"]["min_s"] > 0
    speed.main(["--regime", "periodic", "--no-compile", *common])
    payload = json.loads((tmp_path / "periodic.json").read_text())
    assert payload["settings"]["input"] == "periodic" and set(payload["results"]["resnet18"]["methods"]) == {
        "original", "mass"}


def test_rejects_sizes_the_models_cannot_divide(speed):
    with pytest.raises(SystemExit):
        speed.parse_args(["--image-size", "100"])


def test_retained_memory_regime_runs_in_a_child_with_the_allocator_settings(speed, tmp_path):
    speed.main(["--regime", "retained-memory", "--quick", "--methods", "original", "mass", "--rounds", "1",
                "--warmup", "0", "--threads", "1", "--no-memory", "--no-train", "--device", "cpu",
                "--output-dir", str(tmp_path)])
    payload = json.loads((tmp_path / "retained-memory.json").read_text())
    assert payload["machine"]["allocator_env"] == speed.RETAIN_MALLOC
    assert payload["settings"]["malloc"] == "retain"
    table = (tmp_path / "retained-memory.md").read_text()
    assert "MALLOC_TRIM_THRESHOLD_=" in table and "| resnet18 | mass |" in table


def test_default_allocator_is_recorded(speed):
    assert "allocator_env" in speed.machine_info(torch.device("cpu"), 1)

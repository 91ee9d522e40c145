"""Smoke tests of the reproduction scripts: tiny real-data runs write every output, and resume.

The scripts are run in-process through their ``main(argv)`` with a few dozen images, one
epoch or step, and a temporary output folder (``docs/`` is never touched). They need the
shared data folder (``$MASS_LIGHTNING_DATA``); without it they are skipped.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from mass_lightning.data import data_root

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO_ROOT / "benchmarks"


def load_script(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` as a module (it is a script, not a package member)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def needs(folder: str) -> Path:
    path = data_root() / folder
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set MASS_LIGHTNING_DATA)")
    return path


@pytest.fixture
def results_md(tmp_path: Path) -> Path:
    """A copy of ``docs/results.md`` for the scripts to fill."""
    copy = tmp_path / "results.md"
    shutil.copy(REPO_ROOT / "docs" / "results.md", copy)
    return copy


def block(text: str, key: str) -> str:
    return text.split(f"<!-- BEGIN {key} -->")[1].split(f"<!-- END {key} -->")[0]


@pytest.mark.slow
def test_cifar10_smoke(tmp_path: Path, results_md: Path, capsys: pytest.CaptureFixture[str]) -> None:
    needs("cifar10-jpeg")
    script = load_script("reproduce_cifar10")
    out, work = tmp_path / "out", tmp_path / "work"
    argv = [
        "--rows", "baseline,mass", "--epochs", "1", "--batch-size", "16", "--max-train-samples", "32",
        "--max-test-samples", "40", "--eval-batch-size", "20", "--transfer", "mass", "--heatmap-rows",
        "baseline,mass", "--heatmap-images", "1", "--threads", "1", "--num-workers", "0",
        "--output-dir", str(out), "--work-dir", str(work), "--results-md", str(results_md),
    ]  # fmt: skip
    results = script.main(argv)

    for name in ("cifar10.json", "cifar10.md", "cifar10_accuracy_vs_consistency.png", "cifar10_shift_heatmap.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    stored = json.loads((out / "cifar10.json").read_text())
    assert set(stored["rows"]) == {"baseline", "mass"}
    assert stored["rows"]["mass"]["test_images"] == 40
    assert stored["rows"]["mass"]["consistency"] == 1.0  # exact, whatever the training
    assert stored["rows"]["mass"]["inconsistent_images"] == 0
    transfer = stored["transfer"]["mass"]
    assert transfer["converted"]["consistency"] == 1.0 and transfer["finetuned"]["consistency"] == 1.0
    assert len(stored["heatmap"]["grids"]["mass"]) == 32
    assert all(value == 1.0 for line in stored["heatmap"]["grids"]["mass"] for value in line)
    assert stored["rows"]["baseline"]["settings"]["max_train_samples"] == 32
    assert results["rows"].keys() == stored["rows"].keys()

    text = results_md.read_text()
    table = block(text, "cifar10-table")
    assert "Subset run" in table and "| MASS | " in table
    assert "| APS | not yet run" in table  # rows not run stay marked
    assert "not yet run" not in block(text, "cifar10-transfer")
    assert "cifar10_shift_heatmap.png" in block(text, "cifar10-figures")
    assert "reproduce_cifar10.py" in block(text, "cifar10-settings")

    # A second run finds every stage done and trains nothing; the recorded command and
    # machine stay those of the run that computed the results.
    capsys.readouterr()
    threads = torch.get_num_threads()
    try:
        script.main([*argv[:-2], "--threads", "2", *argv[-2:]])
    finally:
        torch.set_num_threads(threads)
    log = capsys.readouterr().out
    assert "[baseline] done already" in log and "[mass] done already" in log
    assert "[transfer mass] done already" in log and "epoch 1" not in log
    again = json.loads((out / "cifar10.json").read_text())
    assert again["command"] == stored["command"] and again["machine"] == stored["machine"]
    assert again["last_run_seconds"] == stored["last_run_seconds"]


@pytest.mark.slow
def test_camvid_smoke(tmp_path: Path, results_md: Path) -> None:
    needs("camvid")
    script = load_script("reproduce_camvid")
    out, work = tmp_path / "out", tmp_path / "work"
    script.main([
        "--steps", "1", "--batch-size", "2", "--crop-size", "64", "64", "--eval-size", "64", "96",
        "--max-train-samples", "2", "--max-test-samples", "2", "--eval-batch-size", "2", "--threads", "1",
        "--num-workers", "0", "--output-dir", str(out), "--work-dir", str(work), "--results-md", str(results_md),
    ])  # fmt: skip

    for name in ("camvid.json", "camvid.md", "camvid_shift_predictions.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    stored = json.loads((out / "camvid.json").read_text())
    assert set(stored["rows"]) == {"baseline", "mass"}
    for row in stored["rows"].values():
        assert 0.0 <= row["miou"] <= 1.0 and row["test_images"] == 2
    # Logits are equal up to float rounding, so only a near-tie pixel could flip.
    assert stored["rows"]["mass"]["mascc"] > 0.999
    assert stored["figure"]["disagreement"]["mass"]["labelled_pixels"] < 1e-3
    assert (work / "mass" / "final.ckpt").is_file()
    text = results_md.read_text()
    assert "not yet run" not in block(text, "camvid-table")
    assert "camvid_shift_predictions.png" in block(text, "camvid-figure")


def test_results_markdown_only_for_docs(tmp_path: Path) -> None:
    common = load_script("_common")
    assert common.results_markdown(None, tmp_path / "out") is None  # smoke/GPU runs leave docs/ alone
    assert common.results_markdown(None, REPO_ROOT / "docs" / "results") == REPO_ROOT / "docs" / "results.md"
    with pytest.raises(FileNotFoundError, match="--results-md"):
        common.results_markdown(tmp_path / "missing.md", tmp_path)


def test_fill_markers_replaces_only_marked_blocks(tmp_path: Path) -> None:
    common = load_script("_common")
    page = tmp_path / "page.md"
    page.write_text("intro\n<!-- BEGIN a -->\nold\n<!-- END a -->\nkeep\n<!-- BEGIN b -->\nx\n<!-- END b -->\n")
    assert common.fill_markers(page, {"a": "new table", "missing": "ignored"}) == ["a"]
    assert page.read_text() == "intro\n<!-- BEGIN a -->\nnew table\n<!-- END a -->\nkeep\n<!-- BEGIN b -->\nx\n<!-- END b -->\n"


def test_shift_agreement_grid_of_an_invariant_model() -> None:
    import torch

    common = load_script("_common")
    invariant = torch.nn.Sequential(torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten())  # max over pixels
    grid = common.shift_agreement_grid(invariant, torch.rand(3, 2, 4, 6))
    assert grid.shape == (4, 6) and bool((grid == 1).all())
    corner = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 6, 5))  # not invariant
    torch.manual_seed(0)
    assert common.shift_agreement_grid(corner, torch.rand(8, 2, 4, 6))[0, 0] == 1.0
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        common.shift_agreement_grid(invariant, torch.rand(2, 4, 6))

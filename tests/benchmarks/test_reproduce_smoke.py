"""Smoke tests of the reproduction scripts: tiny real-data runs write every output, and resume.

The scripts are run in-process through their ``main(argv)`` with a few dozen images, one
epoch or step, and a temporary output folder (``docs/`` is never touched). They need the
shared data folder (``$MASS_LIGHTNING_DATA``); without it they are skipped.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import statistics
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
    assert set(stored["runs"]) == {"resnet20/baseline/seed0", "resnet20/mass/seed0"}
    assert set(stored["rows"]) == {"resnet20/baseline", "resnet20/mass"}
    mass = stored["runs"]["resnet20/mass/seed0"]
    assert mass["test_images"] == 40
    assert mass["consistency"] == 1.0 and mass["inconsistent_images"] == 0  # exact, whatever the training
    assert mass["library"]["source_sha256"] and stored["library"] == mass["library"]
    transfer = stored["transfer"]["mass"]
    assert transfer["converted"]["consistency"] == 1.0 and transfer["finetuned"]["consistency"] == 1.0
    assert len(stored["heatmap"]["grids"]["mass"]) == 32
    assert all(value == 1.0 for line in stored["heatmap"]["grids"]["mass"] for value in line)
    assert stored["runs"]["resnet20/baseline/seed0"]["settings"]["max_train_samples"] == 32
    assert results["runs"].keys() == stored["runs"].keys()

    text = results_md.read_text()
    table = block(text, "cifar10-table")
    assert "Subset run" in table and "| MASS | 1 | " in table
    assert "| APS |  | not yet run" in table and "| MASS-DDAC-3 |  | not yet run" in table  # rows not run stay marked
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
    assert "[resnet20/baseline/seed0] done already" in log and "[resnet20/mass/seed0] done already" in log
    assert "[transfer mass] done already" in log and "epoch 1" not in log
    again = json.loads((out / "cifar10.json").read_text())
    assert again["command"] == stored["command"] and again["machine"] == stored["machine"]
    assert again["last_run_seconds"] == stored["last_run_seconds"]


@pytest.mark.slow
def test_cifar10_every_method_two_seeds_aggregates_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """All 9 rows (+ the official-APS variant) x 2 seeds; interrupted in the third run, then resumed."""
    needs("cifar10-jpeg")
    script = load_script("reproduce_cifar10")
    out, work = tmp_path / "out", tmp_path / "work"
    argv = [
        "--methods", "all", "--seeds", "2", "--epochs", "1", "--batch-size", "8", "--max-train-samples", "8",
        "--max-test-samples", "16", "--eval-batch-size", "16", "--transfer", "", "--heatmap-rows", "",
        "--threads", "1", "--num-workers", "0", "--output-dir", str(out), "--work-dir", str(work),
    ]  # fmt: skip
    evaluate, calls = script.evaluate, []

    def killed_in_third_evaluation(task, args):
        calls.append(task)
        if len(calls) == 3:
            raise KeyboardInterrupt  # after resnet20/mass/seed0 trained, before its numbers were stored
        return evaluate(task, args)

    monkeypatch.setattr(script, "evaluate", killed_in_third_evaluation)
    with pytest.raises(KeyboardInterrupt):
        script.main(argv)
    partial = json.loads((out / "cifar10.json").read_text())
    assert set(partial["runs"]) == {"resnet20/baseline/seed0", "resnet20/aps/seed0"}

    monkeypatch.setattr(script, "evaluate", evaluate)
    capsys.readouterr()
    results = script.main(argv)
    log = capsys.readouterr().out
    assert "[resnet20/baseline/seed0] done already" in log and "[resnet20/aps/seed0] done already" in log
    assert "[resnet20/mass/seed0] resuming from" in log  # its finished epoch is not trained again
    assert json.loads((out / "cifar10.json").read_text())["runs"] == results["runs"]

    official = script.unsupported("resnet20", "aps_official")
    rows = list(script.TABLE2) + (["aps_official"] if official is None else [])
    assert set(results["skipped"]) == ({"resnet20/aps_official"} if official else set())
    if official:
        assert f"[resnet20/aps_official/seed0] skipped: {official}" in log
    assert set(results["runs"]) == {f"resnet20/{row}/seed{seed}" for row in rows for seed in (0, 1)}
    assert set(results["rows"]) == {f"resnet20/{row}" for row in rows}
    for key, row in results["rows"].items():
        runs = [results["runs"][f"{key}/seed{seed}"] for seed in (0, 1)]
        assert row["n"] == 2 and row["seeds"] == [0, 1] and row["test_images"] == 16
        for name in ("acc", "consistency", "inconsistent_images"):
            values = [run[name] for run in runs]
            assert row[name]["values"] == values
            assert row[name]["mean"] == pytest.approx(statistics.mean(values))
            assert row[name]["std"] == pytest.approx(statistics.stdev(values))
    for row in rows:
        if row.startswith(("aps", "mass")):  # exact, whatever the training
            assert results["rows"][f"resnet20/{row}"]["consistency"]["values"] == [1.0, 1.0]
    # The seeds are independent runs: the same row trained with seeds 0 and 1 ends elsewhere.
    losses = {seed: results["runs"][f"resnet20/baseline/seed{seed}"]["train"]["epochs"][-1]["train_loss"]
              for seed in (0, 1)}  # fmt: skip
    assert losses[0] != losses[1]

    table = (out / "cifar10.md").read_text()
    assert "| MASS | 2 | " in table and "| 100.00 ± 0.00 | 0.0 ± 0.0 / 16 |" in table
    mass = results["rows"]["resnet20/mass"]["acc"]
    assert f"| MASS | 2 | {100 * mass['mean']:.2f} ± {100 * mass['std']:.2f} |" in table
    assert "- `seeds`: 0, 1" in table


def test_cifar10_scales_and_method_lists() -> None:
    script = load_script("reproduce_cifar10")
    cpu = script.parse_args([])
    assert (cpu.epochs, cpu.batch_size, cpu.lr, cpu.seed_list, cpu.model_keys) == (1, 128, 0.1, [0], ["resnet20"])
    assert cpu.row_keys == list(script.TABLE2) and len(cpu.row_keys) == 9 and "aps_official" not in cpu.row_keys
    paper = script.parse_args(["--scale", "paper"])
    assert (paper.epochs, paper.batch_size, paper.lr, paper.seed_list) == (250, 256, 0.2, [0, 1, 2, 3, 4])
    assert paper.model_keys == ["resnet20", "resnet18"] and paper.accelerator == "auto" and paper.finetune_epochs == 3
    assert paper.output_dir.name == "results_paper"  # docs/results.md and the README are left alone
    assert script.parse_args(["--scale", "paper", "--epochs", "3", "--seeds", "2"]).seed_list == [0, 1]
    assert script.parse_args(["--methods", "all"]).row_keys == list(script.ROWS)
    assert script.parse_args(["--methods", "MASS-DDAC-3, aps_official"]).row_keys == ["mass_ddac3", "aps_official"]
    with pytest.raises(SystemExit, match="--methods: unknown entry 'aps2'"):
        script.parse_args(["--methods", "aps2"])
    with pytest.raises(SystemExit, match="--seeds must be >= 1"):
        script.parse_args(["--seeds", "0"])


def test_cifar10_report_of_the_recorded_one_seed_run(tmp_path: Path, results_md: Path) -> None:
    """The JSON of the earlier one-seed script is read as runs, reported with n = 1 and no ± ."""
    script = load_script("reproduce_cifar10")
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(REPO_ROOT / "docs" / "results" / "cifar10.json", out / "cifar10.json")
    before = json.loads((out / "cifar10.json").read_text())
    results = script.main(["--report-only", "--output-dir", str(out), "--results-md", str(results_md)])

    baseline = before["runs"]["resnet20/baseline/seed0"] if "runs" in before else before["rows"]["baseline"]
    row = results["rows"]["resnet20/baseline"]
    assert row["n"] == 1 and row["acc"]["mean"] == baseline["acc"] and row["acc"]["std"] is None
    table = block(results_md.read_text(), "cifar10-table")
    changed = f"{baseline['inconsistent_images']} / {baseline['test_images']}"
    assert (f"| Baseline | 1 | {100 * baseline['acc']:.2f} | {100 * baseline['consistency']:.2f} | {changed} | "
            "90.47 ± 0.30 | 90.94 ± 0.45 |") in table  # one value, no ±, next to the paper's mean ± std
    assert "| MASS-DDAC-3 |" in table


def test_mean_std_and_its_format() -> None:
    common = load_script("_common")
    one = common.mean_std([0.9203])
    assert one == {"mean": 0.9203, "std": None, "n": 1, "values": [0.9203]}
    assert common.fmt_mean_std(one) == "92.03"
    several = common.mean_std([0.90, 0.91, 0.95])
    assert several["std"] == pytest.approx(statistics.stdev([0.90, 0.91, 0.95]))
    assert common.fmt_mean_std(several) == "92.00 ± 2.65"
    assert common.fmt_mean_std(None) == "not yet run"
    with pytest.raises(ValueError, match="no values"):
        common.mean_std([])


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

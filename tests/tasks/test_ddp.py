"""Validation under DDP (2 CPU processes, gloo) gives the same accuracy and consistency as one process."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mass_lightning.cli import run_cli

REPO_ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = REPO_ROOT / "configs" / "quickstart.yaml"


def last_metrics(csv_path: Path) -> dict[str, float]:
    rows = list(csv.DictReader(csv_path.open()))
    return {key: float(value) for row in rows for key, value in row.items() if value and "/" in key}


@pytest.mark.slow
def test_ddp_validation_matches_single_process(tmp_path, monkeypatch, single_thread):
    monkeypatch.chdir(tmp_path)
    # 16 validation images: 2 ranks x 2 batches of 4, so DistributedSampler adds no duplicates.
    config = {
        "trainer": {"accelerator": "cpu", "devices": 1, "default_root_dir": str(tmp_path), "max_steps": 3,
                    "limit_val_batches": 0, "enable_progress_bar": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path), "name": "runs"}}},
        "model": {"init_args": {"num_classes": 6, "warmup_steps": 0}},
        "data": {"class_path": "mass_lightning.data.PeriodicDefectsDataModule",
                 "init_args": {"num_train": 12, "num_val": 16, "num_test": 16, "image_size": 16,
                               "batch_size": 4, "num_workers": 0}},
    }  # fmt: skip
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(yaml.safe_dump(config))
    base = ["--config", str(QUICKSTART), "--config", str(tiny)]

    fitted = run_cli(["fit", *base])
    checkpoint = tmp_path / "trained.ckpt"
    fitted.trainer.save_checkpoint(checkpoint)
    single = run_cli(["validate", *base, "--ckpt_path", str(checkpoint), "--trainer.limit_val_batches", "1.0"])
    expected = {key: value.item() for key, value in single.trainer.callback_metrics.items()}

    command = [sys.executable, "-m", "mass_lightning", "validate", *base, "--ckpt_path", str(checkpoint),
               "--trainer.limit_val_batches", "1.0", "--trainer.devices", "2", "--trainer.strategy", "ddp",
               "--trainer.logger.init_args.name", "ddp"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    env.pop("MASTER_PORT", None)
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MEMBER: 2/2" in result.stdout + result.stderr  # the second process joined
    ddp = last_metrics(next((tmp_path / "ddp").rglob("metrics.csv")))

    assert ddp["val/consistency"] == expected["val/consistency"] == 1.0
    assert ddp["val/acc"] == expected["val/acc"]  # integer counts summed over ranks: exact
    assert ddp["val/loss"] == pytest.approx(expected["val/loss"], rel=1e-5)

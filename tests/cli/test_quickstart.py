"""The quickstart: a baseline and a MASS run with one recipe, a two-row table, the run folders."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from mass_lightning.cli import quickstart
from mass_lightning.errors import ConfigError

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = ["--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--data.init_args.num_train", "8",
        "--data.init_args.num_val", "8", "--data.init_args.batch_size", "4"]  # fmt: skip


def test_quickstart_trains_both_and_prints_the_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config is found in the repository
    console = Console(record=True, width=200)
    runs = quickstart.main(["--root", str(tmp_path / "runs"), "--threads", "1", "--", *TINY], console=console)
    assert [run.method for run in runs] == ["baseline", "mass"]
    mass = runs[1]
    assert mass.consistency == 1.0 and mass.changed == 0 and mass.num_images == 8
    text = console.export_text()
    rows = [line for line in text.splitlines() if line.startswith(("│ baseline", "│ mass"))]
    assert len(rows) == 2 and "100.00%" in rows[1] and "0 of 8" in rows[1]
    for run in runs:
        assert run.run_dir == tmp_path / "runs" / run.method / "version_0"
        assert (run.run_dir / "checkpoints" / "last.ckpt").is_file() and (run.run_dir / "config.yaml").is_file()
        assert f"{run.method:<9}{run.run_dir}" in text
    assert "Both trainings took" in text


def test_table_counts_the_images_that_change_class():
    runs = [quickstart.QuickstartRun("baseline", 0.9023, 0.92578125, 256, Path("b"), 1.0),
            quickstart.QuickstartRun("mass", 1.0, 1.0, 256, Path("m"), 1.0)]  # fmt: skip
    console = Console(record=True, width=120)
    console.print(quickstart.quickstart_table(runs))
    text = console.export_text()
    assert "90.23%" in text and "92.58%" in text and "19 of 256" in text and "0 of 256" in text


def test_missing_config_says_where_it_looked(tmp_path):
    with pytest.raises(ConfigError, match="Quickstart config not found.*--config"):
        quickstart.find_config(str(tmp_path / "nope.yaml"))

"""Run folders: one version folder per run, shared by the loggers; back to a run from its checkpoint."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from jsonargparse import Namespace

from mass_lightning.cli import main, run_cli
from mass_lightning.cli.runs import next_version, run_folder, run_of_checkpoint, with_run_config

REPO_ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO_ROOT / "configs" / "quickstart.yaml")

pytestmark = pytest.mark.usefixtures("single_thread")


def files_under(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


def write_images(folder: Path, count: int, size: int) -> list[Path]:
    """JPEGs of the built-in generator's test images, without labels."""
    import numpy as np
    from PIL import Image

    from mass_lightning.data import PeriodicDefects

    folder.mkdir(parents=True)
    data = PeriodicDefects(num_samples=count, image_size=size, split="test", normalize=False)
    paths = []
    for index in range(count):
        array = (data[index][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        paths.append(folder / f"part_{index}.jpg")
        Image.fromarray(array).save(paths[-1], quality=95)
    return paths


def test_short_fit_then_validate_and_predict_from_the_run(tmp_path, monkeypatch, tiny_config, capsys):
    """Acceptance: an empty working directory, a run root, max_steps shorter than an epoch."""
    workdir, root = tmp_path / "work", tmp_path / "runs"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    repo_before = {path.name for path in REPO_ROOT.iterdir()}
    tiny = tiny_config("classification", trainer={"default_root_dir": None, "max_epochs": 1})  # 2 steps per epoch
    main(["fit", "--config", QUICKSTART, "--config", str(tiny), "--trainer.default_root_dir", str(root),
          "--trainer.max_steps", "1", "--trainer.enable_progress_bar", "false"])  # fmt: skip
    out = capsys.readouterr().out
    runs = [path for path in root.rglob("version_*") if path.is_dir()]
    assert len(runs) == 1, files_under(root)
    run = runs[0]
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert {path.name for path in (run / "checkpoints").iterdir()} == {"last.ckpt"}  # validation never ran
    assert (run / "metrics.csv").is_file() and any(path.name.startswith("events.out") for path in run.iterdir())
    assert f"Run folder: {run}" in out and "back to this run: mass-lightning validate --ckpt_path" in out
    assert "no best checkpoint: val/acc was never logged" in out

    checkpoint = str(run / "checkpoints" / "last.ckpt")
    cli = run_cli(["validate", "--ckpt_path", checkpoint, "--trainer.enable_progress_bar", "false"])
    assert cli.trainer.callback_metrics["val/consistency"].item() == 1.0
    assert cli.run_dir == run / "validate" and (run / "validate" / "metrics.csv").is_file()

    images = write_images(tmp_path / "new_images", 3, 32)
    cli = run_cli(["predict", "--config", str(run / "config.yaml"), "--ckpt_path", checkpoint,
                   "--data.init_args.predict_dir", str(images[0].parent), "--trainer.enable_progress_bar", "false"])
    with (run / "predict" / "predictions.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [row["path"] for row in rows] == [str(path) for path in images]
    assert "Wrote 3 predictions to" in capsys.readouterr().out

    assert not any(workdir.iterdir()), "nothing may be written to the working directory"
    assert {path.name for path in REPO_ROOT.iterdir()} == repo_before
    assert len([path for path in root.rglob("version_*") if path.is_dir()]) == 1  # evaluations add no version


def test_configured_loggers_share_one_version(tmp_path, monkeypatch, tiny_config):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "logs" / "exp" / "version_4").mkdir(parents=True)  # an older run of another logger
    loggers = [{"class_path": f"lightning.pytorch.loggers.{name}", "init_args": {"save_dir": "logs", "name": "exp"}}
               for name in ("CSVLogger", "TensorBoardLogger")]  # fmt: skip
    tiny = tiny_config("classification", trainer={"logger": loggers, "max_steps": 1, "limit_val_batches": 1})
    cli = run_cli(["fit", "--config", QUICKSTART, "--config", str(tiny), "--trainer.enable_progress_bar", "false"])
    assert {logger.version for logger in cli.trainer.loggers} == {5}
    assert cli.run_dir == Path("logs/exp/version_5")
    assert (cli.run_dir / "checkpoints" / "last.ckpt").is_file() and (cli.run_dir / "config.yaml").is_file()
    saved = yaml.safe_load((cli.run_dir / "config.yaml").read_text())
    assert saved["trainer"]["logger"][0]["init_args"]["version"] is None  # the config as given, rerunnable


def test_without_default_root_dir_runs_go_to_lightning_logs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = Namespace(fit=Namespace(trainer=Namespace(default_root_dir=None, logger=None), ckpt_path=None))
    with run_folder(config, "fit") as run:
        assert run.path == Path("lightning_logs/version_0") and run.default_loggers
        assert config.fit.trainer.default_root_dir == "lightning_logs"
        assert {logger.log_dir for logger in run.loggers()} == {str(Path("lightning_logs/version_0"))}
    assert config.fit.trainer.default_root_dir is None  # restored


def test_validate_without_config_or_run_says_what_to_pass(tmp_path, capsys):
    stray = tmp_path / "model.ckpt"
    stray.write_bytes(b"")
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--ckpt_path", str(stray)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--config <run folder>/config.yaml" in err and len(err.strip().splitlines()) <= 3


def test_with_run_config(tmp_path):
    run = tmp_path / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("{}")
    checkpoint = str(run / "checkpoints" / "last.ckpt")
    assert run_of_checkpoint(checkpoint) == run and run_of_checkpoint(tmp_path / "x.ckpt") is None
    assert with_run_config(["test", "--ckpt_path", checkpoint]) == [
        "test", "--config", str(run / "config.yaml"), "--ckpt_path", checkpoint]  # fmt: skip
    assert with_run_config(["predict", f"--ckpt_path={checkpoint}"])[1:3] == ["--config", str(run / "config.yaml")]
    given = ["validate", "--config", "other.yaml", "--ckpt_path", checkpoint]
    assert with_run_config(given) == given
    assert with_run_config(["fit", "--ckpt_path", checkpoint]) == ["fit", "--ckpt_path", checkpoint]


def test_next_version(tmp_path):
    assert next_version([tmp_path / "missing"]) == 0
    for name in ("version_0", "version_7", "version_x", "other"):
        (tmp_path / "a" / name).mkdir(parents=True)
    (tmp_path / "b" / "version_9").mkdir(parents=True)
    assert next_version([tmp_path / "a"]) == 8 and next_version([tmp_path / "a", tmp_path / "b"]) == 10

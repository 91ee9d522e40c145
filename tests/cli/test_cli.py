"""The mass-lightning and lightning commands: runs, real data, checkpoints, errors, forwarding."""

from __future__ import annotations

import re
import runpy
import sys
import warnings
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

import mass_lightning.cli.lightning as lightning_cli
from mass_lightning import console
from mass_lightning.checkpoints import safe_load
from mass_lightning.cli import DEBUG_ENV_VAR, FinalMetricsSummary, format_summary, lightning_main, main, run_cli
from mass_lightning.data import data_root
from mass_lightning.tasks import ClassificationTask

REPO_ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO_ROOT / "configs" / "quickstart.yaml")
CIFAR = [
    str(REPO_ROOT / "configs" / "classification" / name)
    for name in ("cifar10.yaml", "models/resnet20.yaml", "methods/mass.yaml")
]

pytestmark = pytest.mark.usefixtures("single_thread")


def config_args(*paths: str | Path) -> list[str]:
    return [arg for path in paths for arg in ("--config", str(path))]


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch) -> Path:
    """Run in a temporary folder, so that loggers and checkpoints write there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_python_m_runs_the_cli(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["mass_lightning", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("mass_lightning", run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "{fit,validate,test,predict}" in out and "shift-equivariant" in out


def test_fit_prints_final_summary(in_tmp, tiny_config, capsys):
    main(["fit", *config_args(QUICKSTART, tiny_config("classification")), "--trainer.max_steps", "2",
          "--trainer.limit_val_batches", "1"])  # fmt: skip
    out = capsys.readouterr().out
    assert "Final validation metrics" in out
    assert "resnet20 (mass) | val: acc " in out and "consistency 1.0000" in out


def test_callbacks_added_once(in_tmp, tiny_config):
    cli = run_cli(["fit", *config_args(QUICKSTART, tiny_config("classification")), "--trainer.fast_dev_run", "1"])
    names = [type(callback).__name__ for callback in cli.trainer.callbacks]
    assert names.count("RichProgressBar") == 1 and names.count("FinalMetricsSummary") == 1
    cli = run_cli(["fit", *config_args(QUICKSTART, tiny_config("classification")), "--trainer.fast_dev_run", "1",
                   "--trainer.enable_progress_bar", "false"])  # fmt: skip
    assert not any(type(callback).__name__ == "RichProgressBar" for callback in cli.trainer.callbacks)


def test_checkpoint_then_validate_test_predict(in_tmp, tiny_config):
    tiny = tiny_config("classification", trainer={"logger": False, "max_epochs": 1, "limit_train_batches": 2,
                                                  "limit_val_batches": 1})  # fmt: skip
    cli = run_cli(["fit", *config_args(QUICKSTART, tiny)])
    checkpoint = cli.trainer.checkpoint_callback.best_model_path
    assert Path(checkpoint).is_file()
    assert torch.serialization.get_unsafe_globals_in_checkpoint(checkpoint) == []  # loads with weights_only=True
    assert safe_load(checkpoint)["hyper_parameters"]["backbone"] == "resnet20"
    fitted = cli.model.eval()

    images = torch.cat([images for images, _ in cli.datamodule.predict_dataloader()])
    with torch.no_grad():
        expected = fitted(images)
        assert torch.equal(ClassificationTask.load_from_checkpoint(checkpoint).eval()(images), expected)

    cli = run_cli(["validate", *config_args(QUICKSTART, tiny), "--ckpt_path", checkpoint])
    assert cli.trainer.callback_metrics["val/consistency"].item() == 1.0
    assert cli.config_init["validate"]["weights_only"] is True  # Lightning loads it without unpickling objects
    cli = run_cli(["test", *config_args(QUICKSTART, tiny), "--ckpt_path", checkpoint])
    assert {"test/acc", "test/consistency", "test/loss"} <= set(cli.trainer.callback_metrics)

    cli = run_cli(["predict", *config_args(QUICKSTART, tiny), "--ckpt_path", checkpoint])
    predictions = torch.cat([batch["label"] for batch in cli.trainer.predict_loop.predictions])
    assert predictions.shape == (4,) and predictions.dtype == torch.int64
    assert torch.equal(predictions, expected.argmax(dim=1))


def test_validate_real_cifar10_mass_consistency_is_one(in_tmp):
    root = data_root() / "cifar10-jpeg"
    if not (root / "test").is_dir():
        pytest.skip(f"CIFAR-10 JPEG folder not found at {root}; set MASS_LIGHTNING_DATA")
    cli = run_cli(["validate", *config_args(*CIFAR), "--trainer.accelerator", "cpu", "--trainer.logger", "false",
                   "--trainer.limit_val_batches", "2", "--data.init_args.batch_size", "16",
                   "--data.init_args.num_workers", "0"])  # fmt: skip
    metrics = cli.trainer.callback_metrics
    assert metrics["val/consistency"].item() == 1.0
    assert 0.0 <= metrics["val/acc"].item() <= 1.0


@pytest.mark.slow
def test_fit_real_camvid_mass_a_few_iterations(in_tmp):
    root = data_root() / "camvid"
    if not (root / "train.txt").is_file():
        pytest.skip(f"CamVid not found at {root}; set MASS_LIGHTNING_DATA")
    segmentation = REPO_ROOT / "configs" / "segmentation"
    cli = run_cli(["fit", *config_args(segmentation / "camvid.yaml", segmentation / "methods" / "mass.yaml"),
                   "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.max_steps", "2",
                   "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
                   "--trainer.num_sanity_val_steps", "0",
                   "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0"])  # fmt: skip
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 2 and torch.isfinite(metrics["train/loss"])
    assert metrics["val/mascc"].item() == 1.0 and 0.0 <= metrics["val/miou"].item() <= 1.0


# ---------------------------------------------------------------- errors
def test_unknown_key_is_reported(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", QUICKSTART, "--model.init_args.methd", "mass", "--print_config"])
    assert exit_info.value.code == 2
    assert "'methd' is not accepted" in capsys.readouterr().err


def test_bad_method_is_reported(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", QUICKSTART, "--model.init_args.method", "masss", "--print_config"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "masss" in err and "'baseline', 'mass', 'aps'" in err


def test_unknown_backbone_is_one_clear_line(in_tmp, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", QUICKSTART, "--model.init_args.backbone", "resnet21"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "mass-lightning: error: ConfigError: Unknown backbone 'resnet21'. Use one of" in err
    assert "Subtypes" not in err


def test_missing_dataset_folder(in_tmp, capsys, monkeypatch):
    missing = in_tmp / "no-cifar-here"
    args = ["validate", *config_args(*CIFAR), "--trainer.accelerator", "cpu", "--trainer.logger", "false",
            "--data.init_args.root", str(missing)]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"no CIFAR-10 at '{missing}'" in err and "MASS_LIGHTNING_DATA" in err and DEBUG_ENV_VAR in err
    monkeypatch.setenv(DEBUG_ENV_VAR, "1")
    with pytest.raises(FileNotFoundError):
        main(args)


def test_internal_error_keeps_its_traceback_while_a_bad_path_gets_one_line(in_tmp, tiny_config, monkeypatch,
                                                                          capsys):
    tiny = config_args(QUICKSTART, tiny_config("classification"))
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", *tiny, "--ckpt_path", str(in_tmp / "no-such.ckpt")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "mass-lightning: error: CheckpointNotFoundError: Checkpoint" in err and "no-such.ckpt" in err

    def shape_bug(self, batch, batch_idx):  # a genuine bug inside torch: batch sizes that do not match
        images, labels = batch
        return F.cross_entropy(self(images), labels[:1])

    monkeypatch.setattr(ClassificationTask, "training_step", shape_bug)
    with pytest.raises(ValueError, match="batch_size") as error_info:
        main(["fit", *tiny, "--trainer.fast_dev_run", "1"])
    assert not isinstance(error_info.value, SystemExit)
    assert any(entry.name == "shape_bug" for entry in error_info.traceback)
    assert "error:" not in capsys.readouterr().err


def test_num_classes_mismatch(in_tmp, tiny_config, capsys):
    with pytest.raises(SystemExit):
        main(["fit", *config_args(QUICKSTART, tiny_config("classification", model={"num_classes": 10})),
              "--trainer.fast_dev_run", "1"])  # fmt: skip
    assert "model num_classes=10 but the datamodule PeriodicDefectsDataModule has num_classes=6" in (
        capsys.readouterr().err
    )


def test_shipped_configs_are_found_from_any_folder(in_tmp, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/quickstart.yaml", "--config=configs/classification/methods/aps.yaml",
              "--print_config"])  # fmt: skip
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "class_path: mass_lightning.tasks.ClassificationTask" in out and "method: aps" in out


# ---------------------------------------------------------------- quick help
def help_parts(text: str) -> tuple[str, list[str], dict[str, str]]:
    """Usage line, option flags and ``{subcommand: description}`` of a top-level help text."""
    usage = text.splitlines()[0]
    flags = re.findall(r"^  (-\S+)", text, flags=re.M)
    subcommands = dict(re.findall(r"^    (fit|validate|test|predict) +(.+)$", text, flags=re.M))
    return usage, flags, subcommands


@pytest.mark.parametrize("command", ["mass-lightning", "lightning"])
def test_quick_help_matches_the_full_parser(command, capsys):
    quick = console.main if command == "mass-lightning" else console.lightning_main
    full = main if command == "mass-lightning" else lightning_main
    with pytest.raises(SystemExit) as exit_info:
        quick(["--help"])
    assert exit_info.value.code == 0
    quick_help = capsys.readouterr().out
    with pytest.raises(SystemExit):
        full(["--help"])  # mass_lightning.cli builds the full LightningCLI
    usage, flags, subcommands = help_parts(capsys.readouterr().out)
    quick_usage, quick_flags, quick_subcommands = help_parts(quick_help)
    assert (quick_usage, quick_flags) == (usage, flags) and usage.startswith(f"usage: {command} [-c CONFIG]")
    assert list(quick_subcommands) == list(subcommands) == list(console.SUBCOMMANDS)
    assert all(subcommands[name].startswith(text) for name, text in quick_subcommands.items())


def test_lightning_help_warns_about_nothing(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["lightning", "fit", "--help"])
    with warnings.catch_warnings(record=True) as caught, pytest.raises(SystemExit):
        warnings.simplefilter("always")
        lightning_main()
    assert not [w for w in caught if "args" in str(w.message)]
    assert "usage: lightning [options] fit" in capsys.readouterr().out


# ---------------------------------------------------------------- summary
def test_format_summary_orders_loss_last():
    line = format_summary({"val/loss": 0.5, "val/consistency": 1.0, "val/acc": 0.25, "train/acc": 0.1}, "val")
    assert line == "val: acc 0.2500, consistency 1.0000, loss 0.5000"


def test_summary_console_is_configurable(in_tmp, tiny_config):
    console = Console(record=True, width=120)
    summary = FinalMetricsSummary(console=console)
    cli = run_cli(["validate", *config_args(QUICKSTART, tiny_config("classification")), "--trainer.logger", "false"],
                  )  # fmt: skip
    summary.on_validation_end(cli.trainer, cli.model)
    summary.teardown(cli.trainer, cli.model, "validate")
    text = console.export_text()
    assert "val/consistency" in text and summary.last_summary.startswith("resnet20 (mass) | val: acc ")


# ---------------------------------------------------------------- lightning wrapper
def test_lightning_fit_dispatches_to_the_cli(in_tmp, tiny_config, capsys):
    lightning_main(["fit", *config_args(QUICKSTART, tiny_config("classification")), "--trainer.fast_dev_run", "1"])
    assert "consistency 1.0000" in capsys.readouterr().out


def test_lightning_help_names_both_roles(capsys):
    with pytest.raises(SystemExit) as exit_info:
        lightning_main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: lightning" in out and "lightning-sdk" in out


def test_lightning_other_subcommand_without_sdk(monkeypatch, capsys):
    monkeypatch.setattr(lightning_cli, "find_sdk_entry_point", lambda: None)
    with pytest.raises(SystemExit) as exit_info:
        lightning_main(["login"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "'login'" in err and "pip install lightning-sdk" in err and "mass-lightning fit" in err


def test_lightning_other_subcommand_is_forwarded(monkeypatch):
    seen = {}

    def fake_sdk() -> int:
        seen["argv"] = list(sys.argv)
        return 0

    monkeypatch.setattr(lightning_cli, "find_sdk_entry_point", lambda: fake_sdk)
    assert lightning_main(["studio", "ls", "--all"]) == 0
    assert seen["argv"] == ["lightning", "studio", "ls", "--all"]


def test_find_sdk_entry_point_skips_our_own_script(monkeypatch):
    own = EntryPoint("lightning", "mass_lightning.cli:lightning_main", "console_scripts")
    sdk = EntryPoint("lightning", "json:dumps", "console_scripts")  # any importable callable
    monkeypatch.setattr(lightning_cli, "entry_points", lambda **_: [own, sdk])
    assert lightning_cli.find_sdk_entry_point().__name__ == "dumps"
    monkeypatch.setattr(lightning_cli, "entry_points", lambda **_: [own])
    monkeypatch.setattr(lightning_cli, "SDK_MODULE", "no_such_module_for_sure")
    assert lightning_cli.find_sdk_entry_point() is None

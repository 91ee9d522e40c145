"""Safe checkpoint loading: a pickled payload never runs, through every path the library offers."""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning
import pytest
import torch
from torch import nn

from mass_lightning import get_backbone
from mass_lightning.checkpoints import _main as convert_command
from mass_lightning.checkpoints import check_checkpoint, convert_checkpoint, safe_load
from mass_lightning.cli import main
from mass_lightning.errors import CheckpointError, CheckpointNotFoundError, UnsafeCheckpointError
from mass_lightning.tasks import ClassificationTask

REPO_ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO_ROOT / "configs" / "quickstart.yaml")
TASK_ARGS = {"backbone": "resnet20", "method": "mass", "num_classes": 6}


class CreatesFile:
    """Unpickling this object creates a file: the stand-in for arbitrary code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def lightning_checkpoint(path: Path, payload: object = None) -> Path:
    """A Lightning checkpoint of a ClassificationTask, with ``payload`` stored in it if given."""
    torch.manual_seed(0)
    task = ClassificationTask(**TASK_ARGS)
    checkpoint = {
        "state_dict": task.state_dict(),
        "hyper_parameters": dict(task.hparams),
        "pytorch-lightning_version": lightning.__version__,
        "epoch": 0,
        "global_step": 0,
    }
    if payload is not None:
        checkpoint["hyper_parameters"]["extra"] = payload
    torch.save(checkpoint, path)
    return path


def load_with_registry(path: Path) -> object:
    return get_backbone("resnet20", method="mass", num_classes=6, weights=str(path))


def load_with_task(path: Path) -> object:
    return ClassificationTask.load_from_checkpoint(path)


def load_with_cli(path: Path, tiny_config) -> object:
    return main(["validate", "--config", QUICKSTART, "--config", str(tiny_config("classification")),
                 "--trainer.logger", "false", "--ckpt_path", str(path)])  # fmt: skip


LOADERS = {"safe_load": safe_load, "registry weights=": load_with_registry, "load_from_checkpoint": load_with_task}


@pytest.mark.parametrize("loader", list(LOADERS))
def test_a_clean_checkpoint_loads(tmp_path, loader):
    LOADERS[loader](lightning_checkpoint(tmp_path / "clean.ckpt"))


@pytest.mark.parametrize("loader", list(LOADERS))
def test_a_pickled_payload_never_runs(tmp_path, loader):
    marker = tmp_path / "payload-ran"
    path = lightning_checkpoint(tmp_path / "evil.ckpt", CreatesFile(marker))
    with pytest.raises(UnsafeCheckpointError, match=r"io\.open.*python -m mass_lightning\.checkpoints") as info:
        LOADERS[loader](path)
    assert not marker.exists()
    assert info.value.unsafe_globals == ("io.open",) and info.value.path == str(path)


def test_a_pickled_payload_never_runs_through_the_cli_ckpt_path(tmp_path, monkeypatch, tiny_config, capsys):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "payload-ran"
    path = lightning_checkpoint(tmp_path / "evil.ckpt", CreatesFile(marker))
    with pytest.raises(SystemExit) as exit_info:
        load_with_cli(path, tiny_config)
    assert exit_info.value.code == 2 and not marker.exists()
    err = capsys.readouterr().err
    assert "mass-lightning: error: UnsafeCheckpointError:" in err and "io.open" in err
    assert "python -m mass_lightning.checkpoints" in err


def test_the_cli_refuses_weights_only_false(tmp_path, monkeypatch, tiny_config, capsys):
    monkeypatch.chdir(tmp_path)
    path = lightning_checkpoint(tmp_path / "clean.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--config", QUICKSTART, "--config", str(tiny_config("classification")),
              "--ckpt_path", str(path), "--weights_only", "false"])  # fmt: skip
    assert exit_info.value.code == 2
    assert "CheckpointError: mass-lightning loads checkpoints with weights_only=True only" in capsys.readouterr().err


def test_load_from_checkpoint_refuses_weights_only_false_and_missing_files(tmp_path):
    path = lightning_checkpoint(tmp_path / "clean.ckpt")
    with pytest.raises(CheckpointError, match="weights_only=True only"):
        ClassificationTask.load_from_checkpoint(path, weights_only=False)
    with pytest.raises(CheckpointNotFoundError, match="nope.ckpt"):
        ClassificationTask.load_from_checkpoint(tmp_path / "nope.ckpt")


def test_check_checkpoint_reads_no_tensors_and_agrees_with_safe_load(tmp_path):
    assert check_checkpoint(lightning_checkpoint(tmp_path / "clean.ckpt")) == tmp_path / "clean.ckpt"
    with pytest.raises(UnsafeCheckpointError):
        check_checkpoint(lightning_checkpoint(tmp_path / "evil.ckpt", CreatesFile(tmp_path / "ran")))
    assert not (tmp_path / "ran").exists()
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert check_checkpoint(legacy) == legacy
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="Could not read checkpoint"):
        check_checkpoint(junk)
    with pytest.raises(CheckpointNotFoundError):
        safe_load(tmp_path / "missing.pt")


def test_convert_checkpoint_keeps_weights_and_plain_values(tmp_path, capsys):
    source = tmp_path / "old.ckpt"
    state = nn.Linear(2, 3).state_dict()
    torch.save({
        "state_dict": state,
        "hyper_parameters": {"root": Path("/data/x"), "args": argparse.Namespace(lr=0.1), "loss": nn.MSELoss(),
                             "sizes": (1, 2)},
    }, source)  # fmt: skip
    with pytest.raises(UnsafeCheckpointError, match="pathlib"):
        safe_load(source)
    target = tmp_path / "new.ckpt"
    assert convert_checkpoint(source, target) == ["hyper_parameters.loss (MSELoss)"]
    converted = safe_load(target)
    assert converted["hyper_parameters"] == {"root": "/data/x", "args": {"lr": 0.1}, "sizes": (1, 2)}
    assert all(torch.equal(converted["state_dict"][k], v) for k, v in state.items())
    assert converted["state_dict"]._metadata == state._metadata  # module versions of the state_dict
    with pytest.raises(CheckpointError, match="other than the source"):
        convert_checkpoint(source, source)

    assert convert_command([str(source), str(tmp_path / "cli.ckpt")]) == 0
    assert "dropped hyper_parameters.loss (MSELoss)" in capsys.readouterr().out
    assert convert_command([str(tmp_path / "missing.ckpt"), str(tmp_path / "x.ckpt")]) == 2

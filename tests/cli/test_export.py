"""``mass-lightning export``: a run's checkpoint to a checked ONNX file or a torch.export program."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mass_lightning.checkpoints import safe_load
from mass_lightning.cli import main
from mass_lightning.cli.export import export_checkpoint

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

REPO_ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO_ROOT / "configs" / "quickstart.yaml")


@pytest.fixture
def run_checkpoint(tmp_path, tiny_config) -> Path:
    """``last.ckpt`` of a one-step quickstart run (tiny data), in its run folder."""
    tiny = tiny_config("classification", trainer={"max_steps": 1, "enable_progress_bar": False})
    main(["fit", "--config", QUICKSTART, "--config", str(tiny), "--trainer.default_root_dir", str(tmp_path / "runs")])
    (checkpoint,) = (tmp_path / "runs").rglob("last.ckpt")
    return checkpoint


def test_export_a_run_to_onnx_and_pt2(run_checkpoint, capsys, single_thread):
    main(["export", "--ckpt_path", str(run_checkpoint), "--input_size", "16", "24"])
    out = capsys.readouterr().out
    assert f"wrote {run_checkpoint.with_suffix('.onnx')}" in out
    assert "exactly shift-equivariant on input 0, constant, stripes, checkerboard" in out

    path, _ = export_checkpoint(run_checkpoint, fmt="pt2", input_size=(16, 16), output=run_checkpoint.parent / "model.pt2")
    program = torch.export.load(str(path)).module()
    x = torch.randn(1, 3, 16, 16)
    assert torch.equal(program(torch.roll(x, (3, 5), (2, 3))), program(x))


def test_export_errors_are_one_line(run_checkpoint, tmp_path, capsys):
    class_name = "mass_lightning.tasks.ClassificationTask"
    loose = tmp_path / "loose.ckpt"
    loose.write_bytes(run_checkpoint.read_bytes())
    cases = [
        (["--ckpt_path", str(tmp_path / "missing.ckpt"), "--task", "classification"], "CheckpointNotFoundError"),
        (["--ckpt_path", str(loose)], "not in a run folder with a config.yaml; say which task it is with --task"),
        (["--ckpt_path", str(loose), "--task", "detection"], "is not a task class"),
        (["--ckpt_path", str(run_checkpoint), "--input_size", "15", "16"], "not a multiple of"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as info:
            main(["export", *args])
        assert info.value.code == 2
        assert message in capsys.readouterr().err
    export_checkpoint(loose, task=class_name, output=tmp_path / "loose.onnx", check=False)
    assert (tmp_path / "loose.onnx").is_file()


class OpensFile:
    """Unpickling this object opens (creates) a file: the stand-in for arbitrary code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickled_payload_never_runs_through_export(run_checkpoint, tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    checkpoint = safe_load(run_checkpoint)
    checkpoint["hyper_parameters"]["extra"] = OpensFile(marker)
    path = tmp_path / "evil.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(SystemExit) as info:
        main(["export", "--ckpt_path", str(path), "--task", "classification"])
    assert info.value.code == 2 and "UnsafeCheckpointError" in capsys.readouterr().err
    assert not marker.exists()

"""Tasks take your own model: as an instance in Python, or through class_path/init_args in a config.

The models live in a module written to a temporary folder, as a user's package would be,
and do not follow torchvision's naming: a strided residual whose shortcut is ``proj``,
and a functional ``F.max_pool2d``.
"""

from __future__ import annotations

import itertools
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer

from mass_lightning.cli import run_cli
from mass_lightning.data import PeriodicDefectsDataModule
from mass_lightning.errors import ConfigError
from mass_lightning.tasks import ClassificationTask, SegmentationTask

REPO_ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO_ROOT / "configs" / "quickstart.yaml")
MODULE = "my_inspection_models"
SOURCE = '''
import torch
import torch.nn.functional as F
from torch import nn


class ProjBlock(nn.Module):
    """A strided residual block; its shortcut is called ``proj``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj = nn.Conv2d(cin, cout, 1, stride=2, bias=False)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.proj(x))


class InspectionNet(nn.Module):
    """Stem, a functional max-pool, a ``proj`` residual block, global average, linear."""

    def __init__(self, num_classes: int = 6, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.block = ProjBlock(width, 2 * width)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.stem(x)), 2)
        return self.head(self.block(x).mean(dim=(2, 3)))


class TinyNet(nn.Module):
    """One strided conv and a linear head: any conversion engine handles it."""

    def __init__(self, num_classes: int = 6, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.classify = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.classify(self.features(x).mean(dim=(2, 3)))


class TinySegNet(nn.Module):
    """Stride-1 convs only, so that its label maps are equivariant with any engine."""

    def __init__(self, num_classes: int = 7) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 3, padding=1))

    def forward(self, x):
        return self.body(x)
'''

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def models(tmp_path, monkeypatch):
    """The user's module, importable as ``my_inspection_models``."""
    (tmp_path / f"{MODULE}.py").write_text(textwrap.dedent(SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    module = __import__(MODULE)
    yield module
    sys.modules.pop(MODULE, None)


def every_shift_logits(task: ClassificationTask, size: int = 16) -> torch.Tensor:
    """Logits of one image under every circular shift; the unshifted image first, in the same batch."""
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    shifts = [(0, 0), *itertools.product(range(size), range(size))]
    with torch.no_grad():
        return task.eval()(torch.cat([torch.roll(x, s, dims=(2, 3)) for s in shifts]))


def assert_exact(logits: torch.Tensor) -> None:
    reference = logits[:1].expand_as(logits)
    assert torch.equal(logits.argmax(1), reference.argmax(1))
    torch.testing.assert_close(logits, reference, atol=1e-4 * float(logits.abs().max()), rtol=1e-4)


def test_own_model_instance_is_exact(models):
    """A shortcut named ``proj`` and a functional ``F.max_pool2d``: exact (the conversion follows the dataflow)."""
    torch.manual_seed(0)
    assert_exact(every_shift_logits(ClassificationTask(backbone=models.InspectionNet(), method="mass",
                                                       num_classes=6)))
    baseline = ClassificationTask(backbone=models.InspectionNet(), method="baseline", num_classes=6)
    logits = every_shift_logits(baseline)
    assert (logits - logits[:1]).abs().max() > 1e-3 * logits.abs().max(), "the baseline must not look invariant"


def test_own_model_class_path_is_exact(models, tmp_path, tiny_config):
    backbone = {"class_path": f"{MODULE}.InspectionNet", "init_args": {"num_classes": 6}}
    tiny = tiny_config("classification", model={"backbone": backbone})
    cli = run_cli(["fit", "--config", QUICKSTART, "--config", str(tiny), "--trainer.fast_dev_run", "1"])
    assert cli.trainer.callback_metrics["val/consistency"].item() == 1.0
    assert_exact(every_shift_logits(cli.model))


def test_own_model_is_converted_with_the_tasks_method(models):
    net = models.TinyNet()
    task = ClassificationTask(backbone=net, method="mass", num_classes=6)
    assert type(task.model.features[0]).__name__ == "MASSConv2d" and type(net.features[0]) is torch.nn.Conv2d
    assert task.model.state_dict().keys() == net.state_dict().keys()
    assert task.hparams["backbone"] == f"instance of {MODULE}.TinyNet"
    assert type(ClassificationTask(backbone=net, method="aps", num_classes=6).model.features[0]).__name__ == "APSConv2d"


def test_checkpoint_of_an_instance_loads_with_a_fresh_instance(models, tmp_path):
    task = ClassificationTask(backbone=models.TinyNet(), method="mass", num_classes=6)
    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)  # fmt: skip
    trainer.fit(task, datamodule=PeriodicDefectsDataModule(num_train=4, num_val=2, num_test=2, image_size=16,
                                                           batch_size=2))  # fmt: skip
    path = tmp_path / "own.ckpt"
    trainer.save_checkpoint(path)
    with pytest.raises(ConfigError, match=r"load_from_checkpoint\(path, backbone=TinyNet\(\.\.\.\)\)"):
        ClassificationTask.load_from_checkpoint(path)
    loaded = ClassificationTask.load_from_checkpoint(path, backbone=models.TinyNet()).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), task.eval()(x))


def test_class_path_model_round_trips_through_run_config(models, tmp_path, tiny_config):
    backbone = {"class_path": f"{MODULE}.TinyNet", "init_args": {"num_classes": 6, "width": 4}}
    tiny = tiny_config("classification", model={"backbone": backbone}, trainer={"max_steps": 1})
    cli = run_cli(["fit", "--config", QUICKSTART, "--config", str(tiny), "--trainer.enable_progress_bar", "false"])
    checkpoint = cli.run_dir / "checkpoints" / "last.ckpt"
    saved = yaml.safe_load((cli.run_dir / "config.yaml").read_text())
    assert saved["model"]["init_args"]["backbone"]["class_path"] == f"{MODULE}.TinyNet"
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = cli.model.eval()(x)
        assert torch.equal(ClassificationTask.load_from_checkpoint(checkpoint).eval()(x), expected)
    cli = run_cli(["validate", "--ckpt_path", str(checkpoint), "--trainer.enable_progress_bar", "false"])
    assert cli.model.model.features[0].out_channels == 4
    with torch.no_grad():
        assert torch.equal(cli.model.eval()(x), expected)


def test_segmentation_task_takes_an_own_model(models, tmp_path):
    net = models.TinySegNet(num_classes=7)
    task = SegmentationTask(arch=net, method="mass", num_classes=7, ignore_index=255)
    assert task.hparams["arch"] == f"instance of {MODULE}.TinySegNet"
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        shifted = task.eval()(torch.roll(x, (3, 5), dims=(2, 3)))
        torch.testing.assert_close(shifted, torch.roll(task(x), (3, 5), dims=(2, 3)))


def test_segmentation_own_model_through_class_path(models, tiny_config):
    segmentation = REPO_ROOT / "configs" / "segmentation" / "periodic_defects.yaml"
    arch = {"class_path": f"{MODULE}.TinySegNet", "init_args": {"num_classes": 7}}
    tiny = tiny_config("segmentation", model={"arch": arch})
    cli = run_cli(["fit", "--config", str(segmentation), "--config", str(tiny), "--trainer.fast_dev_run", "1"])
    assert cli.model.model.conversion.source_class.__name__ == "TinySegNet"
    assert cli.model.hparams["arch"]["class_path"] == f"{MODULE}.TinySegNet"
    assert cli.trainer.callback_metrics["val/mascc"].item() == 1.0

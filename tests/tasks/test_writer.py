"""predict on a folder of new JPEGs: a CSV for classification, PNG label maps for segmentation."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image
from torch import nn

from mass_lightning.data import (
    DEFECT_TYPES,
    PeriodicDefects,
    PeriodicDefectsDataModule,
    PeriodicDefectsSegmentationDataModule,
)
from mass_lightning.tasks import PREDICTIONS_FILE, ClassificationTask, PredictionWriter, SegmentationTask

pytestmark = pytest.mark.usefixtures("single_thread")


class ShiftSensitive(nn.Module):
    """A linear classifier with a random weight per pixel: its class changes under shifts."""

    def __init__(self, num_classes: int = 6, size: int = 16) -> None:
        super().__init__()
        weight = torch.randn(num_classes, 3, size, size, generator=torch.Generator().manual_seed(0))
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,kchw->bk", x, self.weight)


def new_images(folder: Path, count: int, size: int) -> list[Path]:
    """JPEGs of generated images, without labels, one of them in a sub-folder."""
    data = PeriodicDefects(num_samples=count, image_size=size, split="test", normalize=False)
    paths = []
    for index in range(count):
        path = folder / ("lot2" if index == count - 1 else "") / f"die_{index}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((data[index][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
        paths.append(path)
    return sorted(paths)


def predict(task, datamodule, folder: Path, capsys=None) -> list[dict[str, str]]:
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[PredictionWriter(folder)], default_root_dir=folder)  # fmt: skip
    trainer.predict(task, datamodule=datamodule)
    with (folder / PREDICTIONS_FILE).open() as file:
        return list(csv.DictReader(file))


def test_classification_csv(tmp_path, capsys):
    images = new_images(tmp_path / "new", 5, 16)
    data = PeriodicDefectsDataModule(image_size=16, batch_size=2, predict_dir=str(tmp_path / "new"))
    rows = predict(ClassificationTask(num_classes=6, method="mass"), data, tmp_path / "out")
    assert list(rows[0]) == ["path", "class", "class_id", "probability", "unchanged_under_shifts", "shift_a",
                             "shift_b"]  # fmt: skip
    assert [row["path"] for row in rows] == [str(path) for path in images]
    for row in rows:
        assert row["class"] == DEFECT_TYPES[int(row["class_id"])] and 0 < float(row["probability"]) <= 1
        assert row["unchanged_under_shifts"] == "True"
        shift_a = tuple(int(v) for v in row["shift_a"].strip("()").split(","))
        assert len(shift_a) == 2 and all(0 <= v < 16 for v in shift_a)
    assert len({row["shift_a"] for row in rows}) > 1  # each image gets its own shifts
    assert "Wrote 5 predictions to" in capsys.readouterr().out


def test_the_shift_column_shows_a_baselines_failures(tmp_path, capsys):
    new_images(tmp_path / "new", 8, 16)
    task = ClassificationTask(num_classes=6, method="baseline")
    task.model = ShiftSensitive()
    rows = predict(task, PeriodicDefectsDataModule(image_size=16, batch_size=8, predict_dir=str(tmp_path / "new")),
                   tmp_path / "out")  # fmt: skip
    assert {row["unchanged_under_shifts"] for row in rows} == {"True", "False"}
    kept = sum(row["unchanged_under_shifts"] == "True" for row in rows)
    assert f"{kept} of 8 images keep their class under both shifts" in capsys.readouterr().out


def test_segmentation_png_label_maps(tmp_path):
    images = new_images(tmp_path / "new", 3, 64)
    data = PeriodicDefectsSegmentationDataModule(batch_size=2, predict_dir=str(tmp_path / "new"))
    task = SegmentationTask(encoder="resnet18", method="mass", num_classes=7, ignore_index=255)
    rows = predict(task, data, tmp_path / "out")
    assert [row["path"] for row in rows] == [str(path) for path in images]
    assert [row["label_map"] for row in rows] == ["label_maps/die_0.png", "label_maps/die_1.png",
                                                  "label_maps/lot2/die_2.png"]  # fmt: skip
    for row in rows:
        label_map = Image.open(tmp_path / "out" / row["label_map"])
        assert label_map.mode == "P" and label_map.size == (64, 64)
        assert np.asarray(label_map).max() < 7
        assert float(row["pixels_unchanged_under_shifts"]) == 1.0


def test_test_split_and_no_shifts(tmp_path):
    data = PeriodicDefectsDataModule(num_test=3, image_size=16, batch_size=2)
    rows = predict(ClassificationTask(num_classes=6, eval_consistency=False), data, tmp_path)
    assert [row["path"] for row in rows] == ["test/0", "test/1", "test/2"]
    assert {row["unchanged_under_shifts"] for row in rows} == {""}

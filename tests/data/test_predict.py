"""Unlabelled images for predict: folder search, clear errors, each datamodule's evaluation transform."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mass_lightning.data import (
    BaseDataModule,
    CamVidDataModule,
    CIFAR10DataModule,
    ImageNetDataModule,
    PeriodicDefects,
    PeriodicDefectsDataModule,
    UnlabelledImages,
    find_images,
)
from mass_lightning.data.predict import collate_unlabelled, normalize_uint8
from mass_lightning.errors import DataError, DatasetNotFoundError


def save(path: Path, size: tuple[int, int] = (16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def test_find_images_recurses_and_sorts(tmp_path):
    expected = [save(tmp_path / "a.png"), save(tmp_path / "b.JPG"), save(tmp_path / "sub" / "c.jpg")]
    (tmp_path / "notes.txt").write_text("not an image")
    assert find_images(tmp_path) == sorted(expected)


def test_missing_empty_and_file_folders(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"predict_dir '.*nowhere' does not exist.*predict_dir"):
        find_images(tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError, match="is a file, not a folder"):
        find_images(save(tmp_path / "one.png"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no image file .*\.jpg"):
        find_images(tmp_path / "empty")


def test_corrupt_image_names_the_file(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    images = UnlabelledImages(tmp_path, normalize_uint8((0.5,) * 3, (0.5,) * 3))
    with pytest.raises(DataError, match=r"Cannot decode image '.*broken\.jpg'"):
        images[0]


def test_images_of_different_sizes_in_one_batch(tmp_path):
    save(tmp_path / "a.png", (16, 16))
    save(tmp_path / "b.png", (16, 24))
    loader = DataLoader(UnlabelledImages(tmp_path, normalize_uint8((0.5,) * 3, (0.5,) * 3)), batch_size=2,
                        collate_fn=collate_unlabelled)  # fmt: skip
    with pytest.raises(DataError, match=r"different sizes.*a\.png.*\(16, 16\).*b\.png.*\(16, 24\).*batch_size 1"):
        next(iter(loader))


def test_periodic_transform_matches_the_generated_images(tmp_path):
    raw = PeriodicDefects(num_samples=1, image_size=16, normalize=False)[0][0]
    normalized = PeriodicDefects(num_samples=1, image_size=16)[0][0]
    array = (raw.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    data = PeriodicDefectsDataModule(image_size=16, predict_dir=str(tmp_path))
    torch.testing.assert_close(data.predict_transform()(array), normalized, atol=0.02, rtol=0)  # 8-bit rounding


@pytest.mark.parametrize(
    ("datamodule", "size", "expected"),
    [
        (lambda root: CIFAR10DataModule(root=str(root)), (32, 32), (3, 32, 32)),
        (lambda root: ImageNetDataModule(root=str(root), crop_size=64, resize_size=72), (90, 80), (3, 64, 64)),
        (lambda root: CamVidDataModule(root=str(root), eval_size=(64, 96)), (72, 100), (3, 64, 96)),
    ],
    ids=["cifar10", "imagenet", "camvid"],
)
def test_each_datamodule_reads_new_images_like_its_evaluation_images(tmp_path, datamodule, size, expected):
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    tensor = datamodule(tmp_path).predict_transform()(image)
    assert type(tensor) is torch.Tensor and tuple(tensor.shape) == expected and tensor.dtype == torch.float32
    assert tensor.min() < 0 < tensor.max()  # normalised


def test_predict_dir_replaces_the_test_split(tmp_path):
    save(tmp_path / "a.png")
    data = PeriodicDefectsDataModule(image_size=16, predict_dir=str(tmp_path))
    data.setup("predict")
    assert "test" not in data.datasets
    batch = next(iter(data.predict_dataloader()))
    assert batch["image"].shape == (1, 3, 16, 16) and batch["path"] == [str(tmp_path / "a.png")]


def test_datamodule_without_predict_transform(tmp_path):
    class Plain(BaseDataModule):
        num_classes = 2

    save(tmp_path / "a.png")
    with pytest.raises(NotImplementedError, match="Plain cannot read new images yet"):
        Plain(predict_dir=str(tmp_path)).predict_dataloader()

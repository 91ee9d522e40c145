"""ImageNet: ImageFolder train/val with the torchvision recipe, on a tiny generated tree."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mass_lightning.data import DataError, ImageNetDataModule

CLASSES = ["n01440764", "n01443537", "n01484850"]


@pytest.fixture
def imagenet_root(tmp_path: Path, make_image_folder) -> Path:
    return make_image_folder(tmp_path / "imagenet", {"train": 2, "val": 1}, CLASSES, size=(40, 50))


def _dm(root: Path, **kwargs) -> ImageNetDataModule:
    args = dict(root=str(root), batch_size=3, num_workers=0, crop_size=32, resize_size=36)
    return ImageNetDataModule(**{**args, **kwargs})


def test_train_and_val_batches(imagenet_root: Path) -> None:
    dm = _dm(imagenet_root)
    assert dm.num_classes == 3 and dm.classes == CLASSES
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (3, 3, 32, 32) and labels.tolist() == [0, 1, 2]
    assert dm.dataset("test") is dm.dataset("val")


def test_eval_transform_is_resize_then_center_crop(imagenet_root: Path) -> None:
    names = [type(t).__name__ for t in _dm(imagenet_root).transform(train=False).transforms]
    assert names == ["ToImage", "Resize", "CenterCrop", "ToDtype", "Normalize"]
    names = [type(t).__name__ for t in _dm(imagenet_root).transform(train=True).transforms]
    assert names == ["ToImage", "RandomResizedCrop", "RandomHorizontalFlip", "ToDtype", "Normalize"]


def test_crop_not_divisible_by_total_stride_says_which_sizes_work() -> None:
    with pytest.raises(ValueError, match=r"crop_size=225.*total_stride=32.*224 or 256"):
        ImageNetDataModule(crop_size=225)
    ImageNetDataModule(crop_size=225, resize_size=256, total_stride=15)  # fine for a stride-15 network


def test_num_classes_defaults_to_1000_without_data(tmp_path: Path) -> None:
    assert ImageNetDataModule(root=str(tmp_path / "none")).num_classes == 1000


def test_missing_root_is_explained(tmp_path: Path) -> None:
    dm = _dm(tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="does not exist.*image-net.org"):
        dm.setup("fit")


def test_empty_train_folder_is_explained(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="one sub-folder of images per class"):
        _dm(tmp_path).setup("fit")


def test_val_with_other_classes_is_rejected(imagenet_root: Path) -> None:
    (imagenet_root / "val" / CLASSES[0]).rename(imagenet_root / "val" / "n99999999")
    with pytest.raises(DataError, match="same classes"):
        _dm(imagenet_root).setup("validate")

"""CIFAR-10: official pickled format, ImageFolder tree, the real JPEG copy, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.datasets import cifar

from mass_lightning.data import (
    CIFAR10DataModule,
    CIFAR10Pickled,
    DataError,
    RandomCircularShift,
    detect_cifar10_format,
)


def _batch(dm: CIFAR10DataModule, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    dm.setup(None)
    return next(iter(getattr(dm, f"{split}_dataloader")()))


def test_pickled_format_loads_without_md5_check(cifar_pickled: Path) -> None:
    dm = CIFAR10DataModule(root=str(cifar_pickled), verify=False, batch_size=8, num_workers=0)
    assert dm.format == "pickled" and dm.num_classes == 10
    images, labels = _batch(dm)
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.shape == (8,)
    assert len(dm.dataset("train")) == 20 and len(dm.dataset("test")) == 4
    assert dm.dataset("val") is dm.dataset("test")  # validation = test split (as in the paper)


def test_pickled_format_md5_mismatch_is_explained(cifar_pickled: Path) -> None:
    with pytest.raises(DataError, match="verify=False"):
        CIFAR10Pickled(cifar_pickled, train=True)


def test_pointing_at_the_batches_folder_itself_works(cifar_pickled: Path) -> None:
    dm = CIFAR10DataModule(root=str(cifar_pickled / "cifar-10-batches-py"), verify=False, num_workers=0)
    assert dm.root == cifar_pickled and dm.format == "pickled"


def test_download_uses_torchvision_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_cifar_batches
) -> None:
    calls = []

    def fake_download(url: str, download_root: str, filename: str, md5: str) -> None:
        calls.append(url)
        make_cifar_batches(Path(download_root))

    monkeypatch.setattr(cifar, "download_and_extract_archive", fake_download)
    dm = CIFAR10DataModule(root=str(tmp_path / "new"), download=True, verify=False, batch_size=4, num_workers=0)
    dm.prepare_data()
    assert calls == [cifar.CIFAR10.url]
    assert dm.format == "pickled"
    dm.prepare_data()  # already there: no second download
    assert len(calls) == 1


def test_image_folder_format(cifar_folder: Path) -> None:
    dm = CIFAR10DataModule(root=str(cifar_folder), batch_size=5, num_workers=0)
    assert dm.format == "folder" == detect_cifar10_format(cifar_folder)
    images, labels = _batch(dm, "val")
    assert images.shape == (5, 3, 32, 32) and labels.tolist() == [0, 1, 2, 3, 4]
    assert len(dm.dataset("train")) == 20 and len(dm.dataset("test")) == 10


def test_image_folder_with_wrong_classes_is_rejected(tmp_path: Path, make_image_folder) -> None:
    root = make_image_folder(tmp_path / "other", {"train": 1, "test": 1}, ["cats", "dogs"])
    dm = CIFAR10DataModule(root=str(root), num_workers=0)
    with pytest.raises(DataError, match="expected"):
        dm.setup("fit")


def test_real_jpeg_copy_reads_a_few_images(shared_data: Path) -> None:
    if not (shared_data / "cifar10-jpeg" / "test").is_dir():
        pytest.skip("cifar10-jpeg not present")
    dm = CIFAR10DataModule(max_samples=6, batch_size=6, num_workers=0)  # default root
    assert dm.root == shared_data / "cifar10-jpeg"
    images, labels = _batch(dm, "test")
    assert images.shape == (6, 3, 32, 32) and labels.max() < 10
    assert images.std() > 0.3  # normalised real pixels, not blank


def test_train_transform_is_flip_only_by_default(cifar_folder: Path) -> None:
    dm = CIFAR10DataModule(root=str(cifar_folder), num_workers=0)
    names = [type(t).__name__ for t in dm.transform(train=True).transforms]
    assert names == ["ToImage", "RandomHorizontalFlip", "ToDtype", "Normalize"]
    circular = CIFAR10DataModule(root=str(cifar_folder), random_crop=True, padding_mode="circular", num_workers=0)
    assert any(isinstance(t, RandomCircularShift) for t in circular.transform(train=True).transforms)


def test_random_circular_shift_is_a_roll() -> None:
    image = torch.arange(2 * 6 * 6.0).reshape(2, 6, 6)
    torch.manual_seed(0)
    shifted = RandomCircularShift(2)(image)
    assert any(torch.equal(shifted, image.roll((dy, dx), (-2, -1))) for dy in range(-2, 3) for dx in range(-2, 3))


def test_fractional_val_split_holds_out_disjoint_training_images(cifar_pickled: Path) -> None:
    dm = CIFAR10DataModule(root=str(cifar_pickled), verify=False, val_split="0.25", num_workers=0)  # CLI string
    dm.setup("fit")
    train, val = dm.dataset("train"), dm.dataset("val")
    assert len(train) == 15 and len(val) == 5
    assert not set(train.indices) & set(val.indices)


def test_max_samples_subset_is_deterministic(cifar_pickled: Path) -> None:
    def indices(seed: int) -> list[int]:
        dm = CIFAR10DataModule(root=str(cifar_pickled), verify=False, max_samples=5, seed=seed, num_workers=0)
        return dm.dataset("train").indices

    assert indices(0) == indices(0) and len(indices(0)) == 5
    assert indices(0) != indices(1)


def test_missing_root_is_explained(tmp_path: Path) -> None:
    dm = CIFAR10DataModule(root=str(tmp_path / "nowhere"), num_workers=0)
    with pytest.raises(FileNotFoundError, match="does not exist.*download: true"):
        dm.setup("fit")


def test_empty_root_is_explained(tmp_path: Path) -> None:
    assert detect_cifar10_format(tmp_path) == ""
    dm = CIFAR10DataModule(root=str(tmp_path), num_workers=0)
    with pytest.raises(FileNotFoundError, match="is empty"):
        dm.setup("fit")


def test_corrupt_jpeg_names_the_file(cifar_folder: Path) -> None:
    bad = cifar_folder / "test" / "bird" / "0000.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    dm = CIFAR10DataModule(root=str(cifar_folder), num_workers=0)
    dm.setup("test")
    with pytest.raises(DataError, match="0000.jpg"):
        dm.dataset("test")[2]


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="val_split"):
        CIFAR10DataModule(val_split="train")
    with pytest.raises(ValueError, match="padding_mode"):
        CIFAR10DataModule(padding_mode="wrap")

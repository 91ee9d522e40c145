"""Tiny on-disk datasets in the official layouts, generated per test."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from mass_lightning.data import CIFAR10_CLASSES, data_root  # noqa: E402

VOC_TRAIN = ["2007_000001", "2007_000002", "2007_000003"]
VOC_VAL = ["2007_000004", "2007_000005"]
SBD_TRAIN = ["2007_000002", "2007_000004", "2008_000006"]  # one dup of VOC train, one VOC val image
SBD_VAL = ["2008_000007"]
TRAIN_AUG = sorted(set(VOC_TRAIN) | {"2008_000006", "2008_000007"})


def write_jpeg(path: Path, height: int, width: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def label_map(height: int, width: int, seed: int, num_classes: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_classes, (height, width)).astype(np.uint8)


def write_palette_png(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels, mode="P")
    image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    image.save(path)


def write_cifar_batches(root: Path, per_batch: int = 4) -> Path:
    """``root/cifar-10-batches-py`` in the official pickled format (tiny, so md5 sums differ)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        entry = {
            "batch_label": name,
            "labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "filenames": [f"{name}_{i}.png" for i in range(per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": per_batch}, f)
    return root


def write_image_folder(root: Path, splits: dict[str, int], classes, size=(32, 32)) -> Path:
    """``root/<split>/<class>/<i>.jpg`` with ``splits[split]`` images per class."""
    for s, (split, count) in enumerate(splits.items()):
        for c, name in enumerate(classes):
            for i in range(count):
                write_jpeg(root / split / name / f"{i:04d}.jpg", *size, seed=1000 * s + 10 * c + i)
    return root


def write_voc(root: Path, size=(40, 48)) -> Path:
    """``root/VOCdevkit/VOC2012`` and ``root/SBD`` in the layouts torchvision reads."""
    from scipy.io import savemat

    voc = root / "VOCdevkit" / "VOC2012"
    for n, image_id in enumerate(VOC_TRAIN + VOC_VAL):
        write_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", *size, seed=n)
        labels = label_map(*size, seed=n, num_classes=21)
        labels[0, :] = 255  # VOC marks object borders 'void' = 255
        write_palette_png(voc / "SegmentationClass" / f"{image_id}.png", labels)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(VOC_TRAIN) + "\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(VOC_VAL) + "\n")

    sbd = root / "SBD"
    (sbd / "cls").mkdir(parents=True)
    for n, image_id in enumerate(SBD_TRAIN + SBD_VAL):
        write_jpeg(sbd / "img" / f"{image_id}.jpg", *size, seed=100 + n)
        labels = label_map(*size, seed=100 + n, num_classes=21)
        labels[:, 0] = 20  # marker: SBD labels never contain 255
        savemat(str(sbd / "cls" / f"{image_id}.mat"), {"GTcls": {"Segmentation": labels, "CategoriesPresent": [1]}})
    (sbd / "train.txt").write_text("\n".join(SBD_TRAIN) + "\n")
    (sbd / "val.txt").write_text("\n".join(SBD_VAL) + "\n")
    noval = [i for i in SBD_TRAIN if i not in VOC_VAL]
    (sbd / "train_noval.txt").write_text("\n".join(noval) + "\n")
    return root


@pytest.fixture
def cifar_pickled(tmp_path: Path) -> Path:
    return write_cifar_batches(tmp_path / "cifar")


@pytest.fixture
def cifar_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "cifar-jpeg", {"train": 2, "test": 1}, CIFAR10_CLASSES)


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    return write_voc(tmp_path / "voc")


@pytest.fixture
def shared_data() -> Path:
    """The real data folder ($MASS_LIGHTNING_DATA); tests using it skip where it is absent."""
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"real data folder '{root}' not present; set MASS_LIGHTNING_DATA")
    return root


@pytest.fixture
def make_cifar_batches():
    """The builder of the pickled CIFAR layout (for fake downloads)."""
    return write_cifar_batches


@pytest.fixture
def make_image_folder():
    """The builder of ``root/<split>/<class>/*.jpg`` trees."""
    return write_image_folder


@pytest.fixture
def make_voc():
    """The builder of the VOC + SBD layout."""
    return write_voc


@pytest.fixture
def voc_ids() -> dict[str, list[str]]:
    """Image ids of the tiny VOC/SBD splits and the expected train_aug set."""
    return {
        "voc_train": VOC_TRAIN, "voc_val": VOC_VAL, "sbd_train": SBD_TRAIN, "sbd_val": SBD_VAL, "train_aug": TRAIN_AUG,
    }

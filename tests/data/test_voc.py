"""PASCAL VOC 2012 + SBD: train_aug assembly, joint transforms, download wiring, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import sbd, voc

from mass_lightning.data import VOCSegmentationDataModule, read_label


def _dm(root: Path, **kwargs) -> VOCSegmentationDataModule:
    args = dict(root=str(root), crop_size=32, eval_size=64, batch_size=2, num_workers=0)
    return VOCSegmentationDataModule(**{**args, **kwargs})


def test_train_aug_is_voc_train_plus_sbd_minus_voc_val(voc_root: Path, voc_ids) -> None:
    dm = _dm(voc_root)
    train = dm.samples("train")
    assert [Path(image).stem for image, _ in train] == voc_ids["train_aug"]
    sources = {Path(image).stem: Path(mask).suffix for image, mask in train}
    assert sources["2007_000002"] == ".png"  # in VOC train and SBD: the VOC annotation wins
    assert sources["2008_000006"] == ".mat"
    assert not set(voc_ids["voc_val"]) & set(sources)
    assert [Path(image).stem for image, _ in dm.samples("val")] == voc_ids["voc_val"]
    assert len(_dm(voc_root, use_sbd=False).samples("train")) == len(voc_ids["voc_train"])


def test_sbd_mat_labels_are_read_like_torchvision(voc_root: Path) -> None:
    path = voc_root / "SBD" / "cls" / "2008_000006.mat"
    ours = read_label(path)
    theirs = np.asarray(sbd.SBDataset(str(voc_root / "SBD"), image_set="train", mode="segmentation")[2][1])
    assert ours.shape == (40, 48) and np.array_equal(ours, theirs)


def test_batches_have_crop_and_eval_sizes(voc_root: Path) -> None:
    dm = _dm(voc_root)
    assert (dm.num_classes, dm.ignore_index) == (21, 255)
    dm.setup("fit")
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert masks.shape == (2, 32, 32) and masks.dtype == torch.int64
    assert set(masks.unique().tolist()) <= set(range(21)) | {255}
    images, masks = next(iter(dm.val_dataloader()))
    assert images.shape == (2, 3, 64, 64) and masks.shape == (2, 64, 64)


def test_eval_padding_is_ignored_and_keeps_the_image_centred(voc_root: Path) -> None:
    dm = _dm(voc_root)
    dm.setup("validate")
    _, mask = dm.dataset("val")[0]
    original = torch.from_numpy(read_label(voc_root / "VOCdevkit/VOC2012/SegmentationClass/2007_000004.png"))
    top, left = (64 - 40) // 2, (64 - 48) // 2
    assert torch.equal(mask[top : top + 40, left : left + 48], original.long())
    border = torch.ones(64, 64, dtype=torch.bool)
    border[top : top + 40, left : left + 48] = False
    assert (mask[border] == 255).all()


def test_train_augmentation_is_seeded(voc_root: Path) -> None:
    def first_batch(seed: int) -> torch.Tensor:
        dm = _dm(voc_root, seed=seed)
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))[1]

    assert torch.equal(first_batch(0), first_batch(0))
    assert not torch.equal(first_batch(0), first_batch(1))


def test_odd_crop_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"crop_size=513.*512 or 544"):
        VOCSegmentationDataModule(crop_size=513)
    with pytest.raises(ValueError, match="eval_size"):
        VOCSegmentationDataModule(eval_size=(500, 512))


def test_missing_voc_explains_download(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"VOCdevkit.*download: true"):
        _dm(tmp_path).setup("fit")


def test_missing_sbd_explains_use_sbd(voc_root: Path) -> None:
    dm = _dm(voc_root, sbd_root=str(voc_root / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="use_sbd: false"):
        dm.setup("fit")


def test_split_file_listing_a_missing_image_names_it(voc_root: Path) -> None:
    split = voc_root / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"
    split.write_text(split.read_text() + "2099_000001\n")
    with pytest.raises(FileNotFoundError, match=r"val.txt(.|\n)*2099_000001.jpg"):
        _dm(voc_root).setup("validate")


def test_download_uses_torchvision_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_voc) -> None:
    fetched = []

    def fake_voc_download(url: str, root: str, filename: str, md5: str) -> None:
        fetched.append("voc")
        make_voc(Path(root))

    def fake_sbd_download(url: str, root: str, filename: str, md5: str) -> None:
        fetched.append("sbd")
        release = Path(root) / "benchmark_RELEASE" / "dataset"
        release.parent.mkdir(parents=True, exist_ok=True)
        (Path(root) / "_tmp").mkdir()
        make_voc(Path(root) / "_tmp")
        (Path(root) / "_tmp" / "SBD").rename(release)
        (release / "inst").mkdir()

    monkeypatch.setattr(voc, "download_and_extract_archive", fake_voc_download)
    monkeypatch.setattr(sbd, "download_and_extract_archive", fake_sbd_download)
    root = tmp_path / "fresh"
    dm = _dm(root, download=True, sbd_root=str(root / "SBD"))
    dm.prepare_data()
    assert fetched == ["voc"]  # the fake VOC archive already brought SBD along
    (root / "SBD").rename(root / "SBD_old")
    dm.prepare_data()
    assert fetched == ["voc", "sbd"] and (root / "SBD" / "cls").is_dir()
    assert len(dm.samples("train")) == 5

"""CamVid: the real SegNet copy, path resolution of split files, label mapping, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mass_lightning.data import CamVidDataModule, DataError, camvid_label_map


@pytest.fixture
def camvid_root(tmp_path: Path) -> Path:
    """A tiny CamVid tree whose split files use the original SegNet absolute '.png' paths."""
    root = tmp_path / "camvid"
    rng = np.random.default_rng(0)
    for split, count in (("train", 2), ("val", 1), ("test", 1)):
        lines = []
        for i in range(count):
            (root / split).mkdir(parents=True, exist_ok=True)
            (root / f"{split}annot").mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (36, 48, 3), dtype=np.uint8)).save(root / split / f"f{i}.jpg")
            labels = rng.integers(0, 12, (36, 48)).astype(np.uint8)
            Image.fromarray(labels, mode="L").save(root / f"{split}annot" / f"f{i}.png")
            lines.append(f"/SegNet/CamVid/{split}/f{i}.png /SegNet/CamVid/{split}annot/f{i}.png")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def _dm(root: Path, **kwargs) -> CamVidDataModule:
    args = dict(root=str(root), crop_size=32, eval_size=32, batch_size=2, num_workers=0)
    return CamVidDataModule(**{**args, **kwargs})


def test_real_camvid_reads_a_couple_of_images(shared_data: Path) -> None:
    if not (shared_data / "camvid" / "test.txt").is_file():
        pytest.skip("camvid not present")
    dm = CamVidDataModule(max_samples=2, batch_size=2, num_workers=0)  # default root and sizes
    assert dm.root == shared_data / "camvid"
    assert len(dm.samples("train")) == 367 and len(dm.samples("val")) == 101 and len(dm.samples("test")) == 233
    dm.setup("test")
    images, masks = next(iter(dm.test_dataloader()))
    assert images.shape == (2, 3, 352, 480) and masks.shape == (2, 352, 480) and masks.dtype == torch.int64
    assert set(masks.unique().tolist()) <= set(range(11)) | {255}
    assert (dm.num_classes, dm.ignore_index) == (11, 255)


def test_segnet_paths_and_re_encoded_images_are_resolved(camvid_root: Path) -> None:
    image, label = _dm(camvid_root).samples("train")[0]
    assert image == str(camvid_root / "train" / "f0.jpg")  # listed as /SegNet/CamVid/train/f0.png
    assert label == str(camvid_root / "trainannot" / "f0.png")


def test_unlabelled_goes_to_ignore_index(camvid_root: Path) -> None:
    table = camvid_label_map()
    assert table[:11].tolist() == list(range(11)) and table[11] == 255 and (table[12:] == 255).all()
    dm = _dm(camvid_root, eval_size=(64, 64))
    dm.setup("test")
    _, mask = dm.dataset("test")[0]
    raw = np.array(Image.open(camvid_root / "testannot" / "f0.png"))
    centre = mask[14:50, 8:56].numpy()  # 36x48 padded to 64x64
    assert np.array_equal(centre, np.where(raw >= 11, 255, raw))


def test_train_crops_and_eval_resize(camvid_root: Path) -> None:
    dm = _dm(camvid_root, scale_range=(0.75, 1.25))
    dm.setup("fit")
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 32, 32) and masks.shape == (2, 32, 32)
    resized = _dm(camvid_root, eval_size=(64, 96), eval_mode="resize")
    resized.setup("validate")
    image, mask = resized.dataset("val")[0]
    assert image.shape == (3, 64, 96) and mask.shape == (64, 96) and (mask != 255).any()


def test_default_crop_of_360_rows_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(360, 480\).*352 or 384"):
        CamVidDataModule(eval_size=(360, 480))


def test_missing_root_is_explained(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="CamVid root does not exist.*MASS_LIGHTNING_DATA"):
        _dm(tmp_path / "none").setup("fit")


def test_empty_split_file_is_explained(camvid_root: Path) -> None:
    (camvid_root / "val.txt").write_text("\n")
    with pytest.raises(DataError, match="val.txt' is empty"):
        _dm(camvid_root).setup("validate")


def test_split_file_pointing_to_a_missing_file_names_the_line(camvid_root: Path) -> None:
    (camvid_root / "test.txt").write_text("test/f0.jpg testannot/f0.png\ntest/gone.jpg testannot/f0.png\n")
    with pytest.raises(FileNotFoundError, match=r"test.txt:2.*gone.jpg"):
        _dm(camvid_root).setup("test")


def test_malformed_split_line_is_explained(camvid_root: Path) -> None:
    (camvid_root / "test.txt").write_text("test/f0.jpg\n")
    with pytest.raises(DataError, match=r"test.txt:1: expected 'image_path label_path'"):
        _dm(camvid_root).setup("test")


def test_corrupt_image_names_the_file(camvid_root: Path) -> None:
    (camvid_root / "test" / "f0.jpg").write_bytes(b"broken")
    dm = _dm(camvid_root)
    dm.setup("test")
    with pytest.raises(DataError, match=r"f0.jpg.*corrupt"):
        dm.dataset("test")[0]


def test_image_and_label_of_different_sizes_are_rejected(camvid_root: Path) -> None:
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="L").save(camvid_root / "testannot" / "f0.png")
    dm = _dm(camvid_root)
    dm.setup("test")
    with pytest.raises(DataError, match="must match"):
        dm.dataset("test")[0]

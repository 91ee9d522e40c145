"""Shared reading helpers and data-root resolution: clear errors for bad files and folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mass_lightning
from mass_lightning.data import (
    DATA_ENV_VAR,
    DataError,
    data_root,
    open_image,
    read_label,
    read_label_png,
    read_rgb,
    read_sbd_mat,
    resolve_listed_path,
    resolve_root,
)
from mass_lightning.data.io import check_files_exist, read_split_file, require_dir


def test_data_root_follows_the_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    assert data_root() == tmp_path.resolve()
    assert resolve_root(None, "camvid") == tmp_path.resolve() / "camvid"
    (tmp_path / "mine").mkdir()
    assert resolve_root("mine", "x") == tmp_path.resolve() / "mine"  # relative: found under the data root
    monkeypatch.setenv("SOME_DIR", str(tmp_path))
    assert resolve_root("$SOME_DIR/other", "x") == tmp_path / "other"


def test_data_root_default_is_a_user_cache_outside_the_source_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert data_root() == tmp_path.resolve() / "mass_lightning" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_root() == (tmp_path / "home" / ".cache" / "mass_lightning" / "data").resolve()
    package = Path(mass_lightning.__file__).resolve().parents[1]
    assert package not in data_root().parents


def test_read_rgb_and_labels(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 5, 3), 7, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((4, 5), 3, np.uint8), mode="L").save(tmp_path / "l.png")
    palette = Image.fromarray(np.full((4, 5), 255, np.uint8), mode="P")
    palette.putpalette([0, 0, 0] * 256)
    palette.save(tmp_path / "p.png")
    image = read_rgb(tmp_path / "a.png")
    assert image.shape == (4, 5, 3) and image.dtype == np.uint8 and image.flags.writeable
    assert (read_label(tmp_path / "l.png") == 3).all()
    assert (read_label_png(tmp_path / "p.png") == 255).all()  # palette indices, not colours


def test_rgb_label_map_is_rejected(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match=r"rgb.png.*mode 'RGB'.*class-id"):
        read_label_png(tmp_path / "rgb.png")


def test_missing_image_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        open_image(tmp_path / "gone.jpg")


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\xff\xd8\xff\xe0 truncated jpeg"])
def test_corrupt_image_names_the_path_and_the_fix(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "bad.jpg").write_bytes(content)
    with pytest.raises(DataError, match=r"bad.jpg.*corrupt.*re-download"):
        read_rgb(tmp_path / "bad.jpg")


def test_truncated_real_jpeg_is_caught(tmp_path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(tmp_path / "x.jpg")
    data = (tmp_path / "x.jpg").read_bytes()
    (tmp_path / "x.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="x.jpg"):
        read_rgb(tmp_path / "x.jpg")


def test_bad_sbd_mat_is_explained(tmp_path: Path) -> None:
    (tmp_path / "x.mat").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"x.mat.*GTcls"):
        read_sbd_mat(tmp_path / "x.mat")
    with pytest.raises(FileNotFoundError, match="y.mat"):
        read_sbd_mat(tmp_path / "y.mat")


def test_folder_and_split_checks(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"My root does not exist: '.*nope'. Do this."):
        require_dir(tmp_path / "nope", "My root", "Do this.")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError, match="is a file"):
        require_dir(tmp_path / "file", "My root", "")
    (tmp_path / "split.txt").write_text("# comment\n\n")
    with pytest.raises(DataError, match="empty"):
        read_split_file(tmp_path / "split.txt", "split", "")
    with pytest.raises(FileNotFoundError, match=r"2 file\(s\) listed in '.*list.txt'(.|\n)*a.jpg(.|\n)*Hint"):
        check_files_exist([tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "file"], tmp_path / "list.txt", "Hint")


def test_resolve_listed_path_variants(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "x.jpg").write_bytes(b"")
    target = tmp_path / "train" / "x.jpg"
    assert resolve_listed_path("train/x.jpg", tmp_path) == target
    assert resolve_listed_path("/SegNet/CamVid/train/x.jpg", tmp_path) == target
    assert resolve_listed_path("/SegNet/CamVid/train/x.png", tmp_path, (".jpg",)) == target
    assert resolve_listed_path(str(target), tmp_path / "elsewhere") == target
    assert resolve_listed_path("train\\x.jpg", tmp_path) == target
    assert resolve_listed_path("train/y.jpg", tmp_path) is None

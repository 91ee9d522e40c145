"""Unlabelled images for ``predict``: a folder of image files, read with the datamodule's evaluation transform."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError, DatasetNotFoundError
from . import io

__all__ = [
    "ImageTransform",
    "UnlabelledImages",
    "collate_unlabelled",
    "find_images",
    "normalize_uint8",
    "tensor_transform",
]

ImageTransform = Callable[[np.ndarray], torch.Tensor]
"""An ``(H, W, 3)`` ``uint8`` RGB array -> a normalised ``(3, H', W')`` ``float32`` model input."""


def find_images(folder: Union[str, Path]) -> list[Path]:
    """Image files under ``folder`` (sub-folders included), sorted by path.

    Raises:
        DatasetNotFoundError: ``folder`` does not exist or is a file.
        DataError: it holds no file with an image extension.

    Example:
        >>> find_images("new_images/")  # doctest: +SKIP
        [PosixPath('new_images/a.jpg'), PosixPath('new_images/lot7/b.png')]
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        state = "is a file, not a folder" if folder.exists() else "does not exist"
        raise DatasetNotFoundError(
            f"predict_dir '{folder}' {state}. Point --data.init_args.predict_dir at a folder of images "
            f"({', '.join(io.IMAGE_EXTENSIONS)})."
        )
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in io.IMAGE_EXTENSIONS)
    if not files:
        raise DataError(
            f"predict_dir '{folder}' holds no image file (searched sub-folders too; accepted extensions: "
            f"{', '.join(io.IMAGE_EXTENSIONS)})."
        )
    return files


class UnlabelledImages(Dataset):
    """The images of a folder, as ``{"image": tensor, "path": str}`` items, for ``predict``.

    Args:
        folder: Folder of images; sub-folders are searched too (see :func:`find_images`).
        transform: The datamodule's evaluation transform for one RGB image (see
            :data:`ImageTransform`), so predictions see the inputs the model was evaluated on.

    Raises:
        DatasetNotFoundError: the folder is missing.
        DataError: the folder holds no image, or an image cannot be decoded (raised when
            that item is read, naming the file).

    Example:
        >>> images = UnlabelledImages("new_images/", transform)  # doctest: +SKIP
        >>> images[0]["image"].shape, images[0]["path"]  # doctest: +SKIP
        (torch.Size([3, 32, 32]), 'new_images/a.jpg')
    """

    def __init__(self, folder: Union[str, Path], transform: ImageTransform) -> None:
        self.folder = Path(folder).expanduser()
        self.paths: list[Path] = find_images(self.folder)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        try:
            image = io.read_rgb(path)
        except io.DataError as error:  # the reader's own type; re-raised as the library's
            raise DataError(str(error)) from error
        return {"image": self.transform(image), "path": str(path)}


def collate_unlabelled(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack ``{"image", "path"}`` items; images of different sizes give an error naming two of them.

    Raises:
        DataError: the images of one batch have different sizes after the transform.
    """
    first = items[0]["image"]
    for item in items[1:]:
        if item["image"].shape != first.shape:
            raise DataError(
                f"Images of different sizes in one predict batch: '{items[0]['path']}' is "
                f"{tuple(first.shape[-2:])} and '{item['path']}' is {tuple(item['image'].shape[-2:])} (HxW) after "
                "the datamodule's evaluation transform. Resize the images to one size (the size the model was "
                "trained on), or predict with --data.init_args.batch_size 1."
            )
    return {"image": torch.stack([item["image"] for item in items]), "path": [item["path"] for item in items]}


def normalize_uint8(mean: Sequence[float], std: Sequence[float]) -> ImageTransform:
    """:data:`ImageTransform` that scales to [0, 1] and normalises each channel (no resizing)."""
    mean_t = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)

    def transform(image: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0
        return (tensor - mean_t) / std_t

    return transform


def tensor_transform(pipeline: Callable[[Any], Any]) -> ImageTransform:
    """:data:`ImageTransform` from a torchvision ``v2`` pipeline (which returns a ``tv_tensors.Image``)."""

    def transform(image: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(pipeline(image)).as_subclass(torch.Tensor)

    return transform

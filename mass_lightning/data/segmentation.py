"""Shared pieces of the file-based segmentation datamodules (albumentations joint transforms).

albumentations (and OpenCV) are imported when the first transform is built, not with the module.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .base import BaseDataModule, check_divisible, deterministic_subset
from .io import read_label, read_rgb
from .transforms import IMAGENET_MEAN, IMAGENET_STD

from .predict import ImageTransform

if TYPE_CHECKING:
    import albumentations as A

Size = Union[int, tuple[int, int]]
EVAL_MODES = ("crop", "resize")


def _albumentations() -> tuple[ModuleType, ModuleType]:
    """``(albumentations, cv2)``, imported on first use without albumentations' network version check."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations
    import cv2

    return albumentations, cv2


def _pair(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def segmentation_train_transform(
    crop_size: Size,
    scale_range: tuple[float, float] = (0.5, 2.0),
    ignore_index: int = 255,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    seed: Optional[int] = None,
) -> A.Compose:
    """Random scale, pad (image 0, mask ``ignore_index``), random crop, horizontal flip, normalise.

    The recipe of VainF/DeepLabV3Plus-Pytorch, with an even crop size.

    Args:
        crop_size: Output ``(height, width)`` (or an int for square crops).
        scale_range: Range of the random rescale factor; ``(1, 1)`` disables it.
        ignore_index: Mask value of padded pixels.
        mean: Normalisation mean (images in [0, 1]).
        std: Normalisation standard deviation.
        seed: Seed of the albumentations RNG (``None``: random).

    Returns:
        An albumentations pipeline taking ``image`` (``uint8`` HWC) and ``mask`` (``uint8`` HW).
    """
    height, width = _pair(crop_size)
    low, high = scale_range
    if not 0 < low <= high:
        raise ConfigError(f"scale_range must satisfy 0 < low <= high, got {scale_range}.")
    A, cv2 = _albumentations()  # noqa: N806
    steps: list[A.BasicTransform] = []
    if (low, high) != (1.0, 1.0):
        steps.append(A.RandomScale(scale_limit=(low - 1.0, high - 1.0), p=1.0))
    steps += [
        A.PadIfNeeded(height, width, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index),
        A.RandomCrop(height, width),
        A.HorizontalFlip(p=0.5),
        A.Normalize(mean=tuple(mean), std=tuple(std)),
    ]
    return A.Compose(steps, seed=seed)


def segmentation_eval_transform(
    size: Size,
    mode: str = "crop",
    ignore_index: int = 255,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> A.Compose:
    """Deterministic resizing of evaluation images to ``size``.

    Args:
        size: Output ``(height, width)`` (or an int).
        mode: ``"crop"``: pad (mask ``ignore_index``) where smaller, then centre-crop
            where larger; ``"resize"``: rescale (nearest neighbour for the mask).
        ignore_index: Mask value of padded pixels.
        mean: Normalisation mean.
        std: Normalisation standard deviation.
    """
    height, width = _pair(size)
    A, cv2 = _albumentations()  # noqa: N806
    if mode == "crop":
        steps: list[A.BasicTransform] = [
            A.PadIfNeeded(height, width, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index),
            A.CenterCrop(height, width),
        ]
    elif mode == "resize":
        steps = [A.Resize(height, width)]
    else:
        raise ConfigError(f"eval_mode must be one of {EVAL_MODES}, got '{mode}'.")
    return A.Compose([*steps, A.Normalize(mean=tuple(mean), std=tuple(std))], seed=0)


class SegmentationDataset(Dataset):
    """Image/label-map pairs from disk through an albumentations pipeline.

    Args:
        samples: ``(image_path, label_path)`` pairs; labels are PNG class-id maps
            or SBD ``.mat`` files (see :func:`~mass_lightning.data.io.read_label`).
        transform: Joint albumentations pipeline (must normalise the image).
        label_map: Optional lookup table of 256 entries applied to raw label
            values (e.g. to send "unlabelled" to the ignore index).

    Shape:
        - Image: ``(3, H, W)`` ``float32``.
        - Mask: ``(H, W)`` ``int64``.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, str]],
        transform: A.Compose,
        label_map: Optional[np.ndarray] = None,
    ) -> None:
        if label_map is not None and label_map.shape != (256,):
            raise ConfigError(f"SegmentationDataset: label_map must have 256 entries, got shape {label_map.shape}.")
        self.samples = list(samples)
        self.transform = transform
        self.label_map = label_map

    def __len__(self) -> int:
        return len(self.samples)

    def reseed(self, seed: int) -> None:
        """Reseed the augmentation RNG (called in each loader worker)."""
        self.transform.set_random_seed(seed)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, label_path = self.samples[index]
        image, mask = read_rgb(image_path), read_label(label_path)
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"Image '{image_path}' is {image.shape[1]}x{image.shape[0]} but its label map '{label_path}' is "
                f"{mask.shape[1]}x{mask.shape[0]} (WxH); they must match. The pair is mislisted or a file is wrong."
            )
        if self.label_map is not None:
            mask = self.label_map[mask]
        out = self.transform(image=image, mask=mask)
        image_tensor = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1)))
        return image_tensor, torch.from_numpy(out["mask"].astype(np.int64))


class SegmentationDataModule(BaseDataModule):
    """Base of the file-based segmentation datamodules; subclasses list the samples of each split.

    Train: random scale, pad, random crop of ``crop_size``, flip. Val/test:
    deterministic ``eval_mode`` to ``eval_size``. Both sizes must be multiples of
    ``total_stride`` so that MASS networks are exactly shift equivariant on them.
    Images are normalised with ImageNet statistics (for pretrained backbones).

    Args:
        crop_size: Training crop ``(height, width)`` or int.
        eval_size: Evaluation size ``(height, width)`` or int.
        eval_mode: ``"crop"`` (pad with ``ignore_index``, then centre-crop) or ``"resize"``.
        scale_range: Random rescale range for training; ``(1.0, 1.0)`` disables it.
        total_stride: Product of the network's downsampling strides.
        max_samples: Use at most this many (seeded random) samples per split.
        batch_size: Images per batch.
        num_workers: Loader worker processes.
        seed: Seeds shuffling, augmentation and subsets.
        pin_memory: Pin host memory; ``None`` = when CUDA is available.
        drop_last: Drop the last incomplete training batch.
        predict_dir: Folder of new, unlabelled images for ``predict`` (read like the
            evaluation images); ``None`` predicts on the test split.
    """

    ignore_index = 255
    classes: Sequence[str] = ()
    label_map: Optional[np.ndarray] = None

    def __init__(
        self,
        crop_size: Size,
        eval_size: Size,
        eval_mode: str = "crop",
        scale_range: tuple[float, float] = (0.5, 2.0),
        total_stride: int = 32,
        max_samples: Optional[int] = None,
        batch_size: int = 16,
        num_workers: int = 2,
        seed: int = 0,
        pin_memory: Optional[bool] = None,
        drop_last: bool = True,
        predict_dir: Optional[str] = None,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory, drop_last, predict_dir)
        owner = type(self).__name__
        self.crop_size = check_divisible(owner, "crop_size", crop_size, total_stride)
        self.eval_size = check_divisible(owner, "eval_size", eval_size, total_stride)
        if eval_mode not in EVAL_MODES:
            raise ConfigError(f"{owner}: eval_mode must be one of {EVAL_MODES}, got '{eval_mode}'.")
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ConfigError(f"{owner}: scale_range must satisfy 0 < low <= high, got {scale_range}.")
        self.eval_mode = eval_mode
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.total_stride = total_stride
        self.max_samples = max_samples

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        """Number of classes (the ignore index is not one of them)."""
        return len(self.classes)

    def samples(self, split: str) -> list[tuple[str, str]]:
        """``(image_path, label_path)`` pairs of ``split``; checked to exist."""
        raise NotImplementedError(f"{type(self).__name__} must implement samples(split).")

    def transform(self, split: str) -> A.Compose:
        """The albumentations pipeline of ``split``."""
        if split == "train":
            return segmentation_train_transform(
                self.crop_size, self.scale_range, self.ignore_index, seed=self.seed
            )
        return segmentation_eval_transform(self.eval_size, self.eval_mode, self.ignore_index)

    def predict_transform(self) -> ImageTransform:
        """The evaluation transform (``eval_mode`` to ``eval_size``, normalise) of one image without label map."""
        pipeline = segmentation_eval_transform(self.eval_size, self.eval_mode, self.ignore_index)

        def transform(image: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(pipeline(image=image)["image"].transpose(2, 0, 1)))

        return transform

    def build_dataset(self, split: str) -> Dataset:
        dataset = SegmentationDataset(self.samples(split), self.transform(split), self.label_map)
        return deterministic_subset(dataset, self.max_samples, self.seed)

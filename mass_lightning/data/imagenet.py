"""ImageNet (ILSVRC-2012) classification from ``ImageFolder`` trees."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ..errors import ConfigError, DataError, DatasetNotFoundError
from .base import BaseDataModule, check_divisible, deterministic_subset
from .io import image_folder
from .predict import ImageTransform, tensor_transform
from .paths import DATA_ENV_VAR, resolve_root
from .transforms import IMAGENET_MEAN, IMAGENET_STD


class ImageNetDataModule(BaseDataModule):
    """ImageNet classification with the standard torchvision recipe.

    Layout: ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG``. The
    official validation archive is flat; sort it into class folders first (e.g.
    with the ``valprep.sh`` script of the PyTorch ImageNet example). There are no
    public test labels, so the test and predict splits are the validation split.

    Train: ``RandomResizedCrop(crop_size)`` + horizontal flip. Val:
    ``Resize(resize_size)`` + ``CenterCrop(crop_size)``. ``crop_size`` must be a
    multiple of ``total_stride`` for exact shift-consistency tests.

    Args:
        root: Dataset folder; ``None`` = ``$MASS_LIGHTNING_DATA/imagenet``.
        batch_size: Images per batch.
        num_workers: Loader worker processes.
        crop_size: Side of the training and evaluation crops.
        resize_size: Shorter side after resizing, before the evaluation centre crop.
        total_stride: Product of the network's downsampling strides (32 for ResNets).
        train_dir: Name of the training folder under ``root``.
        val_dir: Name of the validation folder under ``root``.
        max_samples: Use at most this many (seeded random) images per split.
        seed: Seeds shuffling and subsets.
        pin_memory: Pin host memory; ``None`` = when CUDA is available.
        drop_last: Drop the last incomplete training batch.
        predict_dir: Folder of new, unlabelled images for ``predict`` (read like the
            evaluation images); ``None`` predicts on the test split.

    Example:
        >>> dm = ImageNetDataModule(root="/data/imagenet", crop_size=224)  # doctest: +SKIP
        >>> ImageNetDataModule(crop_size=225)  # doctest: +SKIP
        ValueError: ImageNetDataModule: crop_size=225 is not divisible by total_stride=32; ...
    """

    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(
        self,
        root: Optional[str] = None,
        batch_size: int = 256,
        num_workers: int = 8,
        crop_size: int = 224,
        resize_size: int = 256,
        total_stride: int = 32,
        train_dir: str = "train",
        val_dir: str = "val",
        max_samples: Optional[int] = None,
        seed: int = 0,
        pin_memory: Optional[bool] = None,
        drop_last: bool = False,
        predict_dir: Optional[str] = None,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory, drop_last, predict_dir)
        check_divisible("ImageNetDataModule", "crop_size", crop_size, total_stride)
        if resize_size < crop_size:
            raise ConfigError(
                f"ImageNetDataModule: resize_size={resize_size} must be >= crop_size={crop_size} "
                "(the evaluation centre crop is taken from the resized image)."
            )
        self.root = resolve_root(root, "imagenet")
        self.crop_size = crop_size
        self.resize_size = resize_size
        self.total_stride = total_stride
        self.train_dir = train_dir
        self.val_dir = val_dir
        self.max_samples = max_samples
        self._classes: Optional[list[str]] = None

    @property
    def classes(self) -> list[str]:
        """Class folder names (sorted), read from the training (else validation) folder."""
        if self._classes is None:
            for name in (self.train_dir, self.val_dir):
                folder = self.root / name
                if folder.is_dir():
                    self._classes = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
                    break
            else:
                raise DatasetNotFoundError(
                    f"ImageNetDataModule: no '{self.train_dir}/' or '{self.val_dir}/' folder under '{self.root}'. "
                    "Download ILSVRC-2012 from image-net.org, extract it to root/train/<wnid>/ and "
                    f"root/val/<wnid>/, and set data.init_args.root or ${DATA_ENV_VAR}."
                )
        return self._classes

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        """Number of class folders; 1000 (ImageNet-1k) while the dataset is not on disk."""
        try:
            return len(self.classes)
        except FileNotFoundError:
            return 1000

    def transform(self, train: bool) -> v2.Compose:
        """Training (random resized crop, flip) or evaluation (resize, centre crop) transform."""
        if train:
            steps: list[Callable] = [v2.RandomResizedCrop(self.crop_size, antialias=True), v2.RandomHorizontalFlip()]
        else:
            steps = [v2.Resize(self.resize_size, antialias=True), v2.CenterCrop(self.crop_size)]
        return v2.Compose(
            [v2.ToImage(), *steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(self.mean), list(self.std))]
        )

    def predict_transform(self) -> ImageTransform:
        """The evaluation transform: resize to ``resize_size``, centre crop ``crop_size``, normalise."""
        return tensor_transform(self.transform(train=False))

    def build_dataset(self, split: str) -> Dataset:
        if split == "test":
            return self.dataset("val")
        folder = self.root / (self.train_dir if split == "train" else self.val_dir)
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                f"ImageNetDataModule: root '{self.root}' does not exist. Download ILSVRC-2012 from image-net.org "
                f"(train/val archives), extract to <root>/train/<wnid>/ and <root>/val/<wnid>/, and set "
                f"data.init_args.root or ${DATA_ENV_VAR}."
            )
        dataset = image_folder(folder, self.transform(split == "train"), owner="ImageNetDataModule")
        if dataset.classes != self.classes:
            raise DataError(
                f"ImageNetDataModule: '{folder}' has {len(dataset.classes)} class folders but "
                f"'{self.root / self.train_dir}' has {len(self.classes)}; train and val must have the same classes "
                "(is the validation set sorted into class folders?)."
            )
        return deterministic_subset(dataset, self.max_samples, self.seed)

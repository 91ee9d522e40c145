"""Loader plumbing shared by every datamodule: splits, seeded shuffling, worker seeding."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Optional, Sequence, Union

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import ConfigError, InputSizeError
from .predict import ImageTransform, UnlabelledImages, collate_unlabelled

SPLITS = ("train", "val", "test")


def check_divisible(owner: str, name: str, size: Union[int, Sequence[int]], total_stride: int) -> tuple[int, int]:
    """Check that an input size is divisible by the network's total stride.

    MASS is exactly shift equivariant only when every downsampling stage divides
    its input, i.e. when height and width are multiples of the product of all
    strides (``total_stride``, 32 for ResNets).

    Args:
        owner: Class that asks, named in the message.
        name: Argument name, named in the message.
        size: ``int`` (square) or ``(height, width)``.
        total_stride: Product of all downsampling strides; must be positive.

    Returns:
        ``(height, width)``.

    Raises:
        ValueError: Naming the size, the stride and the nearest sizes that work.

    Example:
        >>> check_divisible("MyDataModule", "crop_size", 224, 32)
        (224, 224)
    """
    if total_stride < 1:
        raise ConfigError(f"{owner}: total_stride must be >= 1, got {total_stride}.")
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    for value in (height, width):
        if int(value) != value or value < 1:
            raise ConfigError(f"{owner}: {name}={size} must hold positive integers.")
        if value % total_stride:
            lower = value // total_stride * total_stride
            upper = lower + total_stride
            suggestion = f"{lower} or {upper}" if lower else f"{upper}"
            raise InputSizeError(
                f"{owner}: {name}={size} is not divisible by total_stride={total_stride}; every downsampling "
                f"stage must divide the input exactly for shift equivariance. Use a multiple of {total_stride}, "
                f"e.g. {suggestion} instead of {value}."
            )
    return int(height), int(width)


def deterministic_subset(dataset: Dataset, max_samples: Optional[int], seed: int) -> Dataset:
    """A seeded random subset of at most ``max_samples`` items (kept in index order).

    ``None`` or a size >= ``len(dataset)`` returns ``dataset`` itself.
    """
    if max_samples is None or max_samples >= len(dataset):  # type: ignore[arg-type]
        return dataset
    if max_samples < 1:
        raise ConfigError(f"max_samples must be >= 1 or None, got {max_samples}.")
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=generator)[:max_samples].sort().values  # type: ignore[arg-type]
    return Subset(dataset, indices.tolist())


def _innermost_datasets(dataset: Dataset) -> list[Dataset]:
    """Unwrap ``Subset``/``ConcatDataset`` wrappers."""
    if hasattr(dataset, "datasets"):
        return [inner for child in dataset.datasets for inner in _innermost_datasets(child)]
    if isinstance(dataset, Subset):
        return _innermost_datasets(dataset.dataset)
    return [dataset]


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed numpy, ``random`` and albumentations from the worker's torch seed.

    The torch seed of a worker is derived from the loader's generator, so a seeded
    loader gives the same augmentations on every run. Datasets with a
    ``reseed(seed)`` method (albumentations pipelines) are reseeded too.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        for dataset in _innermost_datasets(info.dataset):
            if hasattr(dataset, "reseed"):
                dataset.reseed(seed)


class BaseDataModule(pl.LightningDataModule):
    """Shared loader plumbing; subclasses only say how to build each split.

    Subclasses implement :meth:`build_dataset` for ``"train"``, ``"val"`` and
    ``"test"`` and set ``num_classes`` (and ``ignore_index`` for segmentation).
    Batches are ``(image, target)``.

    :meth:`predict_dataloader` serves the images of ``predict_dir`` when it is set (a
    folder of unlabelled images, read with :meth:`predict_transform`, as
    ``{"image": tensor, "path": list}`` batches), else the test split.

    Args:
        batch_size: Images per batch.
        num_workers: Loader worker processes (0 = load in the main process).
        seed: Seeds shuffling, worker RNGs and any random subset.
        pin_memory: Pin host memory; ``None`` = only when CUDA is available.
        drop_last: Drop the last incomplete training batch.
        predict_dir: Folder of new, unlabelled images for ``predict`` (sub-folders are
            searched too); ``None`` predicts on the test split.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> class Noise(BaseDataModule):
        ...     num_classes = 2
        ...     def build_dataset(self, split):
        ...         return TensorDataset(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]))
        >>> images, labels = next(iter(Noise(batch_size=2).train_dataloader()))
        >>> images.shape
        torch.Size([2, 3, 8, 8])
    """

    num_classes: int

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: Optional[bool] = None,
        drop_last: bool = False,
        predict_dir: Optional[str] = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"{type(self).__name__}: batch_size must be >= 1, got {batch_size}.")
        if num_workers < 0:
            raise ConfigError(f"{type(self).__name__}: num_workers must be >= 0, got {num_workers}.")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.pin_memory = pin_memory
        self.drop_last = drop_last
        self.predict_dir = Path(predict_dir).expanduser() if predict_dir else None
        self.datasets: dict[str, Dataset] = {}
        self._train_generator = torch.Generator().manual_seed(seed)

    def build_dataset(self, split: str) -> Dataset:
        """Build the dataset of ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_dataset(split).")

    def setup(self, stage: Optional[str] = None) -> None:
        """Build the splits a Lightning stage needs (all of them for ``None``)."""
        needed = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": () if self.predict_dir else ("test",),
        }.get(stage or "", SPLITS)
        for split in needed:
            self.dataset(split)

    def dataset(self, split: str) -> Dataset:
        """The dataset of ``split``, built on first use."""
        if split not in SPLITS:
            raise ConfigError(f"{type(self).__name__}: unknown split '{split}'; use one of {SPLITS}.")
        if split not in self.datasets:
            self.datasets[split] = self.build_dataset(split)
        return self.datasets[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.dataset(split)
        # eval loaders get a fixed generator so their worker seeds never depend on training
        generator = self._train_generator if shuffle else torch.Generator().manual_seed(self.seed + 1)
        pin_memory = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=pin_memory,
            drop_last=self.drop_last and shuffle,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=seed_worker,
            generator=generator,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (seeded by ``seed``)."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches, in order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches, in order."""
        return self._loader("test", shuffle=False)

    def predict_transform(self) -> ImageTransform:
        """How one new ``(H, W, 3)`` ``uint8`` RGB image becomes a model input: the evaluation transform.

        Subclasses that support ``predict_dir`` implement it (resize or crop as in
        evaluation, then normalise).
        """
        raise NotImplementedError(
            f"{type(self).__name__} cannot read new images yet (predict_dir): it does not implement "
            "predict_transform()."
        )

    def predict_dataloader(self) -> DataLoader:
        """Images of ``predict_dir`` as ``{"image", "path"}`` batches, else the test split as ``(image, target)``."""
        if self.predict_dir is None:
            return self._loader("test", shuffle=False)
        pin_memory = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        return DataLoader(
            UnlabelledImages(self.predict_dir, self.predict_transform()),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=pin_memory,
            collate_fn=collate_unlabelled,
            worker_init_fn=seed_worker,
        )

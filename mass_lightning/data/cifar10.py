"""CIFAR-10 from the official pickled batches or from a JPEG ``ImageFolder`` tree."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch.utils.data import Dataset, Subset
from torchvision import datasets
from torchvision.transforms import v2

from ..errors import ConfigError, DataError, DatasetNotFoundError
from .base import BaseDataModule, deterministic_subset
from .io import image_folder
from .predict import ImageTransform, tensor_transform
from .paths import DATA_ENV_VAR, resolve_root
from .transforms import CIFAR10_MEAN, CIFAR10_STD, PADDING_MODES, random_crop

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PICKLED_FOLDER = "cifar-10-batches-py"


class CIFAR10Pickled(datasets.CIFAR10):
    """:class:`torchvision.datasets.CIFAR10` with an optional md5 check.

    Args:
        root: Folder holding ``cifar-10-batches-py/`` (or where to download it).
        train: Training batches (``True``) or the test batch.
        transform: Image transform.
        target_transform: Label transform.
        download: Download the official archive if missing.
        verify: Check the md5 sums of the batch files (as torchvision does).
            ``False`` only checks that the files exist: for regenerated or
            repacked batches in the official format.
    """

    def __init__(
        self,
        root: Union[str, Path],
        train: bool = True,
        transform: Optional[Callable] = None,
        target_transform: Optional[Callable] = None,
        download: bool = False,
        verify: bool = True,
    ) -> None:
        if not verify:  # torchvision's check_integrity(path, md5=None) only checks existence
            self.train_list = [[name, None] for name, _ in datasets.CIFAR10.train_list]
            self.test_list = [[name, None] for name, _ in datasets.CIFAR10.test_list]
            self.meta = {**datasets.CIFAR10.meta, "md5": None}
        try:
            super().__init__(root, train, transform, target_transform, download)
        except RuntimeError as error:
            folder = Path(root) / PICKLED_FOLDER
            raise DataError(
                f"CIFAR-10 batches in '{folder}' are missing or fail their md5 check ({error}). Delete the folder "
                "and use download=True, or pass verify=False for batches you generated yourself."
            ) from error


def detect_cifar10_format(root: Path) -> str:
    """``"pickled"`` if ``root`` holds ``cifar-10-batches-py/``, ``"folder"`` if it holds ``train/``, else ``""``."""
    if (root / PICKLED_FOLDER).is_dir():
        return "pickled"
    if (root / "train").is_dir():
        return "folder"
    return ""


class CIFAR10DataModule(BaseDataModule):
    """CIFAR-10 classification, as trained in the MASS paper.

    ``root`` may hold either format, detected automatically:

    * the official torchvision format ``root/cifar-10-batches-py/`` (fetched by
      ``download=True`` where online), read with :class:`CIFAR10Pickled`;
    * an ``ImageFolder`` tree ``root/train/<class>/*.jpg`` and
      ``root/test/<class>/*.jpg`` (the offline copy in ``$MASS_LIGHTNING_DATA/cifar10-jpeg``;
      those JPEGs are not bit-identical to the official pixels, so accuracies
      can differ slightly from published numbers).

    Validation uses the test split by default, as the paper reports test accuracy
    as its validation metric. Training augmentation is the paper's random
    horizontal flip; ``random_crop`` adds the common pad-and-crop (``"circular"``
    padding is an exact random circular shift). Images are normalised with
    CIFAR-10 mean/std.

    Args:
        root: Dataset folder; ``None`` = ``$MASS_LIGHTNING_DATA/cifar10-jpeg``. A
            relative path is looked up in the working directory, then in the data root.
        download: Download the official batches into ``root`` if no dataset is there.
        batch_size: Images per batch (paper: 256).
        num_workers: Loader worker processes.
        val_split: ``"test"`` (validate on the test split) or a fraction in (0, 1)
            of the training set held out (seeded) for validation.
        random_crop: Add random crops after padding by ``crop_padding`` pixels.
        crop_padding: Padding of the random crop in pixels.
        padding_mode: ``"circular"``, ``"reflect"``, ``"constant"``, ``"edge"`` or ``"symmetric"``.
        max_samples: Use at most this many (seeded random) images per split, for quick runs.
        verify: Check md5 sums of pickled batches.
        seed: Seeds shuffling, the held-out split and subsets.
        pin_memory: Pin host memory; ``None`` = when CUDA is available.
        drop_last: Drop the last incomplete training batch.
        predict_dir: Folder of new, unlabelled images for ``predict`` (read like the
            evaluation images); ``None`` predicts on the test split.

    Example:
        >>> dm = CIFAR10DataModule(max_samples=64, batch_size=16, num_workers=0)  # doctest: +SKIP
        >>> dm.setup("fit")  # doctest: +SKIP
        >>> images, labels = next(iter(dm.train_dataloader()))  # doctest: +SKIP
        >>> images.shape  # doctest: +SKIP
        torch.Size([16, 3, 32, 32])
    """

    classes = list(CIFAR10_CLASSES)
    num_classes = len(CIFAR10_CLASSES)
    mean = CIFAR10_MEAN
    std = CIFAR10_STD

    def __init__(
        self,
        root: Optional[str] = None,
        download: bool = False,
        batch_size: int = 256,
        num_workers: int = 2,
        val_split: Union[float, str] = "test",
        random_crop: bool = False,
        crop_padding: int = 4,
        padding_mode: str = "reflect",
        max_samples: Optional[int] = None,
        verify: bool = True,
        seed: int = 0,
        pin_memory: Optional[bool] = None,
        drop_last: bool = False,
        predict_dir: Optional[str] = None,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory, drop_last, predict_dir)
        if isinstance(val_split, str) and val_split != "test":
            try:
                val_split = float(val_split)
            except ValueError:
                pass
        if not (val_split == "test" or (isinstance(val_split, float) and 0 < val_split < 1)):
            raise ConfigError(
                f"CIFAR10DataModule: val_split must be 'test' or a fraction in (0, 1), got {val_split!r}."
            )
        if padding_mode not in PADDING_MODES:
            raise ConfigError(f"CIFAR10DataModule: padding_mode must be one of {PADDING_MODES}, got '{padding_mode}'.")
        root_path = resolve_root(root, "cifar10-jpeg")
        if root_path.name == PICKLED_FOLDER:  # pointed at the batches folder itself
            root_path = root_path.parent
        self.root = root_path
        self.download = download
        self.val_split = val_split
        self.random_crop = random_crop
        self.crop_padding = crop_padding
        self.padding_mode = padding_mode
        self.max_samples = max_samples
        self.verify = verify

    def prepare_data(self) -> None:
        """Download the official batches if ``download`` and no dataset is at ``root``."""
        if self.download and not detect_cifar10_format(self.root):
            CIFAR10Pickled(self.root, train=True, download=True, verify=self.verify)

    @property
    def format(self) -> str:
        """``"pickled"`` or ``"folder"``; raises a clear error if ``root`` holds neither."""
        found = detect_cifar10_format(self.root)
        if found:
            return found
        state = "is empty or holds neither layout" if self.root.is_dir() else "does not exist"
        raise DatasetNotFoundError(
            f"CIFAR10DataModule: no CIFAR-10 at '{self.root}' ({state}). Expected '{PICKLED_FOLDER}/' (official "
            "format; set download: true to fetch it where online) or 'train/<class>/*.jpg' and "
            f"'test/<class>/*.jpg'. Set data.init_args.root or ${DATA_ENV_VAR}."
        )

    def transform(self, train: bool) -> v2.Compose:
        """Training (flip, optional crop) or evaluation transform; both normalise."""
        steps: list[Callable] = [v2.ToImage()]
        if train:
            if self.random_crop:
                steps.append(random_crop(32, self.crop_padding, self.padding_mode))
            steps.append(v2.RandomHorizontalFlip())
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(self.mean), list(self.std))]
        return v2.Compose(steps)

    def predict_transform(self) -> ImageTransform:
        """The evaluation transform (normalise; no resizing: new images should be 32x32 like CIFAR-10)."""
        return tensor_transform(self.transform(train=False))

    def _split_dataset(self, train: bool, transform: Callable) -> Dataset:
        """The official train or test split with ``transform``."""
        if self.format == "pickled":
            self.prepare_data()
            return CIFAR10Pickled(self.root, train=train, transform=transform, verify=self.verify)
        folder = self.root / "train" if train else next(
            (self.root / name for name in ("test", "val") if (self.root / name).is_dir()), self.root / "test"
        )
        return image_folder(folder, transform, expected_classes=CIFAR10_CLASSES, owner="CIFAR10DataModule")

    def _holdout_indices(self, size: int) -> tuple[list[int], list[int]]:
        """Seeded (train, val) index split of the training set for a fractional ``val_split``."""
        order = torch.randperm(size, generator=torch.Generator().manual_seed(self.seed)).tolist()
        num_val = max(1, round(size * float(self.val_split)))
        return sorted(order[num_val:]), sorted(order[:num_val])

    def build_dataset(self, split: str) -> Dataset:
        if split == "test":
            dataset = self._split_dataset(train=False, transform=self.transform(train=False))
        elif split == "val" and self.val_split == "test":
            return self.dataset("test")
        else:
            dataset = self._split_dataset(train=True, transform=self.transform(train=split == "train"))
            if self.val_split != "test":
                train_indices, val_indices = self._holdout_indices(len(dataset))
                dataset = Subset(dataset, train_indices if split == "train" else val_indices)
        return deterministic_subset(dataset, self.max_samples, self.seed)


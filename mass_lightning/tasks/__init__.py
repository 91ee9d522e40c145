"""LightningModules: :class:`ClassificationTask` and :class:`SegmentationTask` on a shared :class:`BaseTask`.

Example (LightningCLI YAML)::

    model:
      class_path: mass_lightning.tasks.ClassificationTask
      init_args: {backbone: resnet20, method: mass, num_classes: 10}
"""

from .base import BaseTask, lr_factor
from .classification import ClassificationTask
from .segmentation import SegmentationTask

__all__ = ["BaseTask", "ClassificationTask", "SegmentationTask", "lr_factor"]

"""LightningModules: :class:`ClassificationTask` and :class:`SegmentationTask` on a shared :class:`BaseTask`.

Example (LightningCLI YAML)::

    model:
      class_path: mass_lightning.tasks.ClassificationTask
      init_args: {backbone: resnet20, method: mass, num_classes: 10}

Your own model instead of a registry name::

      init_args:
        backbone: {class_path: my_package.MyNet, init_args: {num_classes: 10}}
        method: mass
        num_classes: 10
"""

from .base import BaseTask, Network, lr_factor
from .classification import ClassificationTask
from .segmentation import SegmentationTask
from .writer import PREDICTIONS_FILE, PredictionWriter

__all__ = [
    "PREDICTIONS_FILE",
    "BaseTask",
    "ClassificationTask",
    "Network",
    "PredictionWriter",
    "SegmentationTask",
    "lr_factor",
]

"""mass_lightning: exactly shift-equivariant CNNs with MASS (Model-Agnostic Shift-equivariant downSampling).

Quick use::

    from mass_lightning import convert, get_backbone
    model = convert(torchvision.models.resnet18(weights="DEFAULT"), method="mass").eval()
"""

from .backbones import get_backbone, get_segmentation_model, list_backbones, register_backbone
from .conversion import check_equivariance, convert

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "check_equivariance",
    "convert",
    "get_backbone",
    "get_segmentation_model",
    "list_backbones",
    "register_backbone",
]

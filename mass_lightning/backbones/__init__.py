"""Backbone registry (CIFAR and torchvision backbones, any torchvision or timm model) and segmentation models.

Names load on first use (PEP 562): torchvision is imported with the first backbone, and
segmentation-models-pytorch (with timm) only for the segmentation names.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

#: Public name -> submodule that defines it, imported on first access.
_LAZY_NAMES: dict[str, str] = {
    "CifarResNet": ".cifar_resnet",
    "PadChannelsShortcut": ".cifar_resnet",
    "cifar_resnet18": ".cifar_resnet",
    "resnet20": ".cifar_resnet",
    "resnet56": ".cifar_resnet",
    "get_backbone": ".registry",
    "list_backbones": ".registry",
    "load_checkpoint": ".registry",
    "register_backbone": ".registry",
    "EXACT_ARCHS": ".segmentation",
    "SEGMENTATION_ARCHS": ".segmentation",
    "get_segmentation_model": ".segmentation",
    "input_multiple": ".segmentation",
    "register_smp_encoders": ".segmentation",
    "TORCHVISION_BACKBONES": ".zoo",
    "resolve_weights": ".zoo",
}

__all__ = sorted(_LAZY_NAMES)

if TYPE_CHECKING:
    from .cifar_resnet import CifarResNet, PadChannelsShortcut, cifar_resnet18, resnet20, resnet56
    from .registry import get_backbone, list_backbones, load_checkpoint, register_backbone
    from .segmentation import (EXACT_ARCHS, SEGMENTATION_ARCHS, get_segmentation_model, input_multiple,
                               register_smp_encoders)
    from .zoo import TORCHVISION_BACKBONES, resolve_weights


def __getattr__(name: str) -> Any:
    if name not in _LAZY_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_LAZY_NAMES[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_NAMES})

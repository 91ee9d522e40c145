"""mass_lightning: exactly shift-equivariant CNNs with MASS (Model-Agnostic Shift-equivariant downSampling).

Quick use::

    from mass_lightning import convert, get_backbone
    model = convert(torchvision.models.resnet18(weights="DEFAULT"), method="mass").eval()

Names and subpackages load on first use (PEP 562), so ``import mass_lightning`` is quick and
``from mass_lightning import convert`` imports neither Lightning, torchvision, smp, timm nor
albumentations.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> module that defines it, imported on first access.
_LAZY_NAMES: dict[str, str] = {
    "check_equivariance": ".conversion",
    "convert": ".conversion",
    "get_backbone": ".backbones",
    "get_segmentation_model": ".backbones",
    "list_backbones": ".backbones",
    "register_backbone": ".backbones",
}
_SUBPACKAGES: tuple[str, ...] = (
    "backbones", "checkpoints", "cli", "conversion", "data", "errors", "export", "layers", "metrics", "tasks",
    "testing",
)  # fmt: skip

__all__ = ["__version__", *_LAZY_NAMES]

if TYPE_CHECKING:
    from .backbones import get_backbone, get_segmentation_model, list_backbones, register_backbone
    from .conversion import check_equivariance, convert


def __getattr__(name: str) -> Any:
    if name in _LAZY_NAMES:
        value = getattr(import_module(_LAZY_NAMES[name], __name__), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_NAMES, *_SUBPACKAGES})

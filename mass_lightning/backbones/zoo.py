"""The registered backbones: CIFAR ResNets and torchvision ImageNet models."""

from __future__ import annotations

import urllib.error
from collections.abc import Callable
from typing import Any

import torchvision
from torch import nn

from ..errors import ConfigError, WeightsDownloadError
from .cifar_resnet import cifar_resnet18, resnet20, resnet56
from .registry import register_backbone

__all__ = ["TORCHVISION_BACKBONES", "model_zoo_builder", "resolve_weights"]

TORCHVISION_BACKBONES: tuple[str, ...] = (
    "resnet18",
    "resnet34",
    "resnet50",
    "densenet121",
    "mobilenet_v2",
    "convnext_tiny",
    "convnext_large",
)


def _cifar(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def build(*, num_classes: int = 10, weights: Any = None, **kwargs: Any) -> nn.Module:
        if weights is not None:
            raise ConfigError(
                f"{builder.__name__} has no published pretrained weights; pass weights=<path to a checkpoint> "
                "or None."
            )
        return builder(num_classes=num_classes, **kwargs)

    build.__doc__ = builder.__doc__
    return build


register_backbone("resnet20")(_cifar(resnet20))
register_backbone("resnet56")(_cifar(resnet56))
register_backbone("cifar_resnet18")(_cifar(cifar_resnet18))


def resolve_weights(model_name: str, weights: Any) -> torchvision.models.WeightsEnum | None:
    """A torchvision weights enum from an enum, ``"DEFAULT"``, ``"IMAGENET1K_V1"`` or ``"Enum.MEMBER"``."""
    if weights is None or isinstance(weights, torchvision.models.WeightsEnum):
        return weights
    enum = torchvision.models.get_model_weights(model_name)
    member = str(weights).split(".")[-1]
    try:
        return enum[member] if member != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise ConfigError(
            f"Unknown weights {weights!r} for {model_name}. Available: "
            f"{', '.join(['DEFAULT'] + [w.name for w in enum])}, or a checkpoint path."
        ) from None


def _replace_classifier(model: nn.Module, num_classes: int) -> None:
    parent_name, _, attr = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1].rpartition(".")
    parent = model.get_submodule(parent_name)
    old = getattr(parent, attr)
    setattr(parent, attr, nn.Linear(old.in_features, num_classes))


def _torchvision(model_name: str) -> Callable[..., nn.Module]:
    def build(*, num_classes: int = 1000, weights: Any = None, **kwargs: Any) -> nn.Module:
        enum = resolve_weights(model_name, weights)
        if enum is None:
            return torchvision.models.get_model(model_name, num_classes=num_classes, **kwargs)
        try:
            model = torchvision.models.get_model(model_name, weights=enum, **kwargs)
        except (urllib.error.URLError, OSError, RuntimeError) as error:
            raise WeightsDownloadError(
                f"Could not download {enum} for {model_name} ({error}). Without internet access, download the "
                f"file from {enum.url} elsewhere and pass its local path as weights."
            ) from error
        if num_classes != len(enum.meta.get("categories", [])):
            _replace_classifier(model, num_classes)
        return model

    build.__doc__ = f"torchvision ``{model_name}`` (optionally with pretrained weights)."
    return build


for _name in TORCHVISION_BACKBONES:
    register_backbone(_name)(_torchvision(_name))

TIMM_PREFIX = "timm/"


def _timm(model_name: str) -> Callable[..., nn.Module]:
    def build(*, num_classes: int = 1000, weights: Any = None, **kwargs: Any) -> nn.Module:
        import timm

        if weights not in (None, "timm", True, "pretrained"):
            raise ConfigError(f"timm/{model_name}: weights must be None, 'timm' (timm's pretrained weights, "
                              f"downloaded when online) or a checkpoint path, got {weights!r}.")
        try:
            return timm.create_model(model_name, pretrained=weights is not None, num_classes=num_classes, **kwargs)
        except (OSError, RuntimeError) as error:
            if weights is None:
                raise
            raise WeightsDownloadError(f"Could not download timm's weights for {model_name} ({error}). Without internet "
                               "access, save the weights elsewhere (timm.create_model(..., pretrained=True) and "
                               "torch.save(model.state_dict(), path)) and pass the local path as weights.") from error

    build.__doc__ = f"timm ``{model_name}`` (optionally with timm's pretrained weights)."
    return build


def model_zoo_builder(name: str) -> Callable[..., nn.Module] | None:
    """A builder for any torchvision classification model or ``"timm/<name>"``; ``None`` if unknown."""
    if name.startswith(TIMM_PREFIX):
        import timm

        model_name = name[len(TIMM_PREFIX):]
        return _timm(model_name) if timm.is_model(model_name) else None
    if name in torchvision.models.list_models(module=torchvision.models):
        return _torchvision(name)
    return None

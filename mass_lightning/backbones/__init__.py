"""Backbone registry and the CIFAR / torchvision backbones registered in it."""

from .cifar_resnet import CifarResNet, PadChannelsShortcut, cifar_resnet18, resnet20, resnet56
from .registry import get_backbone, list_backbones, load_checkpoint, register_backbone
from .zoo import TORCHVISION_BACKBONES, resolve_weights

__all__ = [
    "TORCHVISION_BACKBONES",
    "CifarResNet",
    "PadChannelsShortcut",
    "cifar_resnet18",
    "get_backbone",
    "list_backbones",
    "load_checkpoint",
    "register_backbone",
    "resnet20",
    "resnet56",
    "resolve_weights",
]

"""Backbone registry (CIFAR and torchvision backbones, any torchvision or timm model) and segmentation models."""

from .cifar_resnet import CifarResNet, PadChannelsShortcut, cifar_resnet18, resnet20, resnet56
from .registry import get_backbone, list_backbones, load_checkpoint, register_backbone
from .segmentation import EXACT_ARCHS, SEGMENTATION_ARCHS, get_segmentation_model, input_multiple, register_smp_encoders
from .zoo import TORCHVISION_BACKBONES, resolve_weights

__all__ = [
    "EXACT_ARCHS",
    "SEGMENTATION_ARCHS",
    "TORCHVISION_BACKBONES",
    "CifarResNet",
    "PadChannelsShortcut",
    "cifar_resnet18",
    "get_backbone",
    "get_segmentation_model",
    "input_multiple",
    "list_backbones",
    "load_checkpoint",
    "register_backbone",
    "register_smp_encoders",
    "resnet20",
    "resnet56",
    "resolve_weights",
]

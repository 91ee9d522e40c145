"""Backbone registry and the CIFAR / torchvision backbones registered in it."""

from .cifar_resnet import CifarResNet, PadChannelsShortcut, cifar_resnet18, resnet20, resnet56
from .registry import get_backbone, list_backbones, load_checkpoint, register_backbone
from .segmentation import SEGMENTATION_ARCHS, convert_deeplabv3plus, get_segmentation_model, load_encoder_weights
from .smp_encoders import EquivariantResNetEncoder, register_smp_encoders, smp_encoder_name
from .zoo import TORCHVISION_BACKBONES, resolve_weights

__all__ = [
    "SEGMENTATION_ARCHS",
    "TORCHVISION_BACKBONES",
    "EquivariantResNetEncoder",
    "convert_deeplabv3plus",
    "get_segmentation_model",
    "load_encoder_weights",
    "register_smp_encoders",
    "smp_encoder_name",
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

"""ResNets for 32x32 inputs (CIFAR): ResNet-20/56 of He et al. and the common CIFAR ResNet-18.

All blocks are torchvision :class:`~torchvision.models.resnet.BasicBlock` s, so every residual
block has ``conv1, bn1, relu, conv2, bn2`` and an optional shortcut named ``downsample``,
whatever the model. Convolutions use zero padding; the MASS conversion switches them to
circular padding and replaces the subsampling layers.

* ``resnet20`` / ``resnet56``: He et al., "Deep Residual Learning for Image Recognition"
  (CVPR 2016), Sec. 4.2: a 3x3 stem with 16 channels, three stages of ``n`` blocks with
  16/32/64 channels (``6n + 2`` layers), global average pooling and a linear classifier.
  The shortcuts are *option A*: identity, subsampled by 2 and zero-padded in channels
  (:class:`PadChannelsShortcut`). Initialization follows the widely used reference
  implementation (Kaiming-normal convolutions and linear layer).
* ``cifar_resnet18``: torchvision's ResNet-18 (64..512 channels, 1x1-conv + BN shortcuts)
  with a 3x3 stride-1 stem and no max-pool, as in ``kuangliu/pytorch-cifar``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

from ..errors import ConfigError

__all__ = ["CifarResNet", "PadChannelsShortcut", "cifar_resnet18", "resnet20", "resnet56"]


class PadChannelsShortcut(nn.Module):
    """Option-A shortcut: subsample with stride ``stride``, then zero-pad the channels.

    The subsampling is a real module, ``pool = nn.MaxPool2d(kernel_size=1, stride=stride)``
    (a kernel-1 max-pool keeps pixel ``(s*i, s*j)``: plain subsampling), so a conversion can
    find and replace it. The new channels are split evenly before and after the old ones
    (``(out - in) // 2`` before), as in the reference CIFAR ResNet.

    Args:
        in_channels: Number of input channels.
        out_channels: Number of output channels, ``>= in_channels``.
        stride: Subsampling factor.

    Shape:
        - Input: :math:`(N, C_{in}, H, W)`.
        - Output: :math:`(N, C_{out}, \\lceil H / s \\rceil, \\lceil W / s \\rceil)`.

    Example:
        >>> import torch
        >>> PadChannelsShortcut(16, 32, stride=2)(torch.randn(2, 16, 32, 32)).shape
        torch.Size([2, 32, 16, 16])
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        if not 1 <= in_channels <= out_channels:
            raise ConfigError(
                f"PadChannelsShortcut needs 1 <= in_channels <= out_channels, got {in_channels} -> {out_channels}."
            )
        if stride < 1:
            raise ConfigError(f"PadChannelsShortcut: stride must be a positive int, got {stride}.")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.pool = nn.MaxPool2d(kernel_size=1, stride=stride)
        extra = out_channels - in_channels
        self.pad_before = extra // 2
        self.pad_after = extra - extra // 2

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"PadChannelsShortcut expects (N, {self.in_channels}, H, W) inputs, got {tuple(x.shape)}."
            )
        x = self.pool(x)
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels}"


def _check_builder_args(num_classes: int, in_channels: int, model: str) -> None:
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{model}: {name} must be a positive int, got {value!r}.")


class CifarResNet(nn.Module):
    """CIFAR ResNet of He et al. (2016) with option-A shortcuts.

    Module names follow torchvision: ``conv1, bn1, relu, layer1..layer3, avgpool, fc``.

    Args:
        layers: Number of basic blocks per stage, e.g. ``(3, 3, 3)`` for ResNet-20.
        num_classes: Number of output classes.
        in_channels: Number of input image channels.
        widths: Channels of the three stages.

    Shape:
        - Input: :math:`(N, C_{in}, H, W)`, typically ``32 x 32``.
        - Output: :math:`(N, \\text{num\\_classes})`.

    Example:
        >>> import torch
        >>> CifarResNet((3, 3, 3))(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        layers: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
        widths: Sequence[int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        _check_builder_args(num_classes, in_channels, type(self).__name__)
        if len(layers) != 3 or len(widths) != 3 or min(layers) < 1 or min(widths) < 1:
            raise ConfigError(
                f"CifarResNet needs three stages with >= 1 block and >= 1 channel each, "
                f"got layers={tuple(layers)}, widths={tuple(widths)}."
            )
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(widths[0], layers[0], stride=1)
        self.layer2 = self._make_layer(widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(widths[2], layers[2], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[2], num_classes)

        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = PadChannelsShortcut(self.inplanes, planes, stride)
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.avgpool(x).flatten(1)
        return self.fc(x)


def resnet20(*, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-20 for CIFAR (He et al. 2016; about 0.27M parameters for 10 classes).

    Example:
        >>> import torch
        >>> resnet20(num_classes=100)(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 100])
    """
    return CifarResNet((3, 3, 3), num_classes=num_classes, in_channels=in_channels)


def resnet56(*, num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-56 for CIFAR (He et al. 2016; about 0.85M parameters for 10 classes)."""
    return CifarResNet((9, 9, 9), num_classes=num_classes, in_channels=in_channels)


def cifar_resnet18(*, num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """ResNet-18 for CIFAR: torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool.

    About 11.2M parameters for 10 classes. The returned model is a torchvision
    :class:`~torchvision.models.resnet.ResNet`; its ``maxpool`` is ``nn.Identity()``.

    Example:
        >>> import torch
        >>> cifar_resnet18()(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """
    _check_builder_args(num_classes, in_channels, "cifar_resnet18")
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision
    model.maxpool = nn.Identity()
    return model

"""Image transforms for classification datamodules (torchvision ``transforms.v2``)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchvision.transforms import v2

from ..errors import ConfigError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PADDING_MODES = ("circular", "reflect", "constant", "edge", "symmetric")


class RandomCircularShift(nn.Module):
    """Randomly roll an image tensor by up to ``max_shift`` pixels along height and width.

    Equal to a random crop after circular padding by ``max_shift``: no pixel is
    lost or invented, which matches the circular shifts MASS is equivariant to.

    Args:
        max_shift: Largest shift in pixels (each axis, either direction).

    Shape:
        - Input: ``(..., H, W)`` tensor.
        - Output: same shape.

    Example:
        >>> shift = RandomCircularShift(4)
        >>> shift(torch.zeros(3, 32, 32)).shape
        torch.Size([3, 32, 32])
    """

    def __init__(self, max_shift: int) -> None:
        super().__init__()
        if max_shift < 0:
            raise ConfigError(f"RandomCircularShift: max_shift must be >= 0, got {max_shift}.")
        self.max_shift = max_shift

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"RandomCircularShift expects a tensor (put it after ToImage), got {type(image)}.")
        dy, dx = torch.randint(-self.max_shift, self.max_shift + 1, (2,)).tolist()
        return torch.roll(image, shifts=(dy, dx), dims=(-2, -1))

    def extra_repr(self) -> str:
        return f"max_shift={self.max_shift}"


def to_normalized_tensor(mean: Sequence[float], std: Sequence[float]) -> list[nn.Module]:
    """PIL/uint8 image -> normalised ``float32`` tensor ``(C, H, W)``."""
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def random_crop(size: int, padding: int, padding_mode: str) -> nn.Module:
    """Pad-and-random-crop; ``"circular"`` padding is an exact :class:`RandomCircularShift`.

    Must come after :class:`~torchvision.transforms.v2.ToImage`.
    """
    if padding_mode not in PADDING_MODES:
        raise ConfigError(f"Unknown crop padding_mode '{padding_mode}'; use one of {PADDING_MODES}.")
    if padding_mode == "circular":
        return RandomCircularShift(padding)
    return v2.RandomCrop(size, padding=padding, padding_mode=padding_mode)

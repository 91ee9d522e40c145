"""MASS around any downsampling module: shift each sample to its origin, run the module."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .circular import shift_and_pad
from .downsample import EquivariantDownsample, sample
from .polyphase import as_pair, check_divisible, select_origin

__all__ = ["MASSDownsample", "mass_downsample"]


def mass_downsample(x: Tensor, op: nn.Module | Any, stride: int | tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Functional MASS: ``op(roll(x, -origin))`` with ``origin = select_origin(x, stride)``.

    ``op`` must be a downsampling operation of stride ``stride`` that is itself equivariant
    to shifts by multiples of the stride (circular padding, or no padding with a size the
    stride divides). It runs unchanged.

    Returns:
        ``(op output, origin)``; ``origin`` has shape ``(B, 2)``.

    Shape:
        - Input: :math:`(B, C, H, W)`, ``H`` and ``W`` divisible by the stride.
        - Output: whatever ``op`` returns for an input of that shape, and :math:`(B, 2)`.
    """
    pair = as_pair(stride)
    check_divisible(x, pair, f"mass_downsample({type(op).__name__})")
    origin = select_origin(x, pair)
    return op(shift_and_pad(x, origin)), origin


class MASSDownsample(EquivariantDownsample, nn.Module):
    """Wrap any downsampling module with MASS origin selection.

    Use it for layers that :func:`mass_lightning.convert` does not know (a custom pooling,
    a SoftPool, a space-to-depth, ...). The wrapped module keeps its own state-dict keys:
    the wrapper adds no prefix, so checkpoints of the unwrapped model load into the
    wrapped one.

    Args:
        module: the downsampling op, run unchanged on the shifted input. It must use
            circular padding (or none) to be equivariant.
        stride: its stride.

    Shape:
        - Input: :math:`(B, C, H, W)` with ``H, W`` divisible by the stride.
        - Output: the module's output (and the origin with ``return_origin=True``).

    Example:
        >>> down = MASSDownsample(nn.AvgPool2d(2), stride=2)
        >>> down(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 3, 4, 4])
    """

    sampling = "mass"

    def __init__(self, module: nn.Module, stride: int | tuple[int, int]) -> None:
        nn.Module.__init__(self)
        self.module = module
        self.stride = as_pair(stride)
        self._setup_equivariance(None)
        self._register_state_dict_hook(_strip_prefix)
        self._register_load_state_dict_pre_hook(_add_prefix)

    def forward(self, x: Tensor, origin: Tensor | None = None, return_origin: bool = False) -> Any:
        y, origin = sample(self.module, None, x, self.stride, (0, 0, 0, 0), sampling="mass", origin=origin,
                           name=self._describe())
        return (y, origin) if return_origin else y

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


def _strip_prefix(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> dict:
    inner = prefix + "module."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner):]] = state_dict.pop(key)
    return state_dict


def _add_prefix(state_dict: dict, prefix: str, *args: Any) -> None:
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + "module.")]:
        state_dict[prefix + "module." + key[len(prefix):]] = state_dict.pop(key)

"""Convolution that computes every output pixel alike, whatever the shapes.

``F.conv2d`` on CPU picks its kernel by shape: oneDNN for most, but for a batch of one
with small maps (or 1x1 kernels on one thread) PyTorch's own im2col + matrix product,
whose rounding depends on a pixel's row in the product. A circular shift moves pixels
between rows, so their values change in the last bit. :func:`conv2d` always uses oneDNN
(``torch.mkldnn_convolution``) on CPU for float32 and bfloat16, where every output pixel
is computed with the same arithmetic; elsewhere (other dtypes, devices, or under the
compiler) it is ``F.conv2d``. The circular layers, DDAC and the position-free linear map
use it; :class:`OneDNNConvolutions` routes the ``F.conv2d`` calls of a conv subclass's own
``forward`` through it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["OneDNNConvolutions", "conv2d"]

_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


def _pair(value: int | Sequence[int]) -> list[int]:
    return [int(value), int(value)] if isinstance(value, int) else [int(v) for v in value]


def _canonical(t: Tensor) -> Tensor:
    """``t`` with the strides of a freshly allocated NCHW tensor (a copy only if they differ)."""
    expected, step = [], 1
    for size in reversed(t.shape):
        expected.append(step)
        step *= size
    if tuple(reversed(expected)) == t.stride():
        return t
    return t.clone(memory_format=torch.contiguous_format)


@functools.cache
def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available()


def _use_onednn(x: Tensor, weight: Tensor) -> bool:
    # The compiler check comes first: under torch.compile it is a constant, so nothing after it
    # is traced (torch.backends.mkldnn.is_available would break the graph).
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    return x.device.type == "cpu" and x.dim() == 4 and _onednn_available()


def conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> Tensor:
    """``F.conv2d(x, weight, bias, stride, 0, dilation, groups)`` (no padding), alike at every pixel.

    Shape:
        - Input: :math:`(B, C_{in}, H, W)`.
        - Output: :math:`(B, C_{out}, H_{out}, W_{out})`.
    """
    if not _use_onednn(x, weight):
        return F.conv2d(x, weight, bias, stride, 0, dilation, groups)
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    elif weight.dtype != x.dtype:
        return F.conv2d(x, weight, bias, stride, 0, dilation, groups)
    if x.dtype not in _ONEDNN_DTYPES:
        return F.conv2d(x, weight, bias, stride, 0, dilation, groups)
    # One layout, with exactly NCHW strides: oneDNN picks its kernel (and so its rounding) from
    # the strides, and a map with size-1 axes can be "contiguous" with channels-last strides.
    x = _canonical(x)
    weight = _canonical(weight)
    with torch.autocast("cpu", enabled=False):
        return torch.mkldnn_convolution(x, weight, bias, [0, 0], _pair(stride), _pair(dilation), groups)


class OneDNNConvolutions(TorchFunctionMode):
    """Within this mode, unpadded ``F.conv2d`` calls go through :func:`conv2d`.

    For the ``forward`` of a conv subclass (weight standardisation, LoRA, ...) run on a
    circularly padded copy. A mode is per thread and per call: it keeps no state.
    """

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in (F.conv2d, torch.conv2d):
            params = dict(zip(("input", "weight", "bias", "stride", "padding", "dilation", "groups"), args))
            params.update(kwargs)
            padding = params.get("padding", 0)
            if padding in (0, (0, 0), [0, 0], "valid"):
                return conv2d(params["input"], params["weight"], params.get("bias"), params.get("stride", 1),
                              params.get("dilation", 1), params.get("groups", 1))
        return func(*args, **kwargs)

"""Upsampling that undoes the origins of downsampling: the up half of a MASS encoder-decoder.

A MASS (or APS) downsampling layer keeps the phase ``o`` of its input at output pixel
(0, 0) and can return ``o`` (``return_origin=True``). The matching upsampling layer takes
that origin as an argument: it upsamples in the shifted frame and then rolls the result by
``+o`` per sample, so the decoder works in the input's frame and an encoder-decoder stays
exactly equivariant. Origins (and max-pool indices) flow as values from the down to the up
call, never through module state, so a layer can be shared and called many times::

    (y, indices), origin = pool(x, return_origin=True)    # MASSMaxPool2d(2, return_indices=True)
    x_up = unpool(y, indices, origin)                      # MASSMaxUnpool2d(2)

:func:`mass_lightning.convert` wires this through a whole model, including upsampling
that skips several levels (the origins of every skipped level are undone).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .circular import circular_interpolate, circular_pad, unshift
from .kernels import conv2d
from .polyphase import as_pair

__all__ = [
    "APSUpsample2d",
    "MASSConvTranspose2d",
    "MASSMaxUnpool2d",
    "MASSUpsample",
    "aps_upsample",
    "circular_conv_transpose2d",
    "max_unpool2d_at",
]


def _zero_origin(y: Tensor) -> Tensor:
    return torch.zeros(y.shape[0], 2, dtype=torch.int64, device=y.device)


def _check_origin(origin: Tensor, y: Tensor, layer: str) -> Tensor:
    if origin.dim() != 2 or origin.shape != (y.shape[0], 2):
        raise ValueError(f"{layer}: origin must have shape ({y.shape[0]}, 2) for a batch of {y.shape[0]}, "
                         f"got {tuple(origin.shape)}. Pass the origin returned by the downsampling call.")
    return origin


def aps_upsample(y: Tensor, origin: Tensor, stride: int | tuple[int, int]) -> Tensor:
    """Zero-insertion upsampling that puts ``y`` back on phase ``origin`` (Chaman & Dokmanic 2021).

    ``out[b, :, oy + sy*i, ox + sx*j] = y[b, :, i, j]``, zero elsewhere.

    Shape:
        - Input: :math:`(B, C, h, w)`, origin :math:`(B, 2)`.
        - Output: :math:`(B, C, h s_y, w s_x)`.
    """
    sy, sx = as_pair(stride)
    batch, channels, height, width = y.shape
    out = y.new_zeros(batch, channels, height * sy, width * sx)
    out[..., ::sy, ::sx] = y
    return unshift(out, origin)


class APSUpsample2d(nn.Module):
    """Adaptive polyphase upsampling: zero insertion at the downsampling layer's phase.

    Args:
        stride: upsampling factor (the downsampling layer's stride).
        antialias: optional stride-1 filter applied after zero insertion (the
            interpolation filter of Chaman & Dokmanic; a binomial blur scaled by ``s^2``
            is the usual choice).

    Shape:
        - Input: :math:`(B, C, h, w)` and the origin :math:`(B, 2)`.
        - Output: :math:`(B, C, h s, w s)`.
    """

    def __init__(self, stride: int | tuple[int, int], antialias: nn.Module | None = None) -> None:
        super().__init__()
        self.stride = as_pair(stride)
        self.antialias = antialias

    def forward(self, y: Tensor, origin: Tensor | None = None) -> Tensor:
        origin = _zero_origin(y) if origin is None else _check_origin(origin, y, type(self).__name__)
        out = aps_upsample(y, origin, self.stride)
        return out if self.antialias is None else self.antialias(out)


def max_unpool2d_at(y: Tensor, indices: Tensor, stride: int | tuple[int, int], origin: Tensor | None = None) -> Tensor:
    """``F.max_unpool2d`` into the shifted frame of a MASS max-pool, then undo the shift.

    ``indices`` address the ``(h s) x (w s)`` input of the pool after its shift (what
    :class:`~mass_lightning.layers.MASSMaxPool2d` returns); ``origin`` is the pool's origin.

    Shape:
        - Input: :math:`(B, C, h, w)`, indices of the same shape, origin :math:`(B, 2)`.
        - Output: :math:`(B, C, h s_y, w s_x)`.
    """
    sy, sx = as_pair(stride)
    size = (y.shape[-2] * sy, y.shape[-1] * sx)
    out = F.max_unpool2d(y, indices, kernel_size=(sy, sx), stride=(sy, sx), output_size=size)
    return out if origin is None else unshift(out, origin)


class MASSMaxUnpool2d(nn.MaxUnpool2d):
    """Max-unpooling with the indices and the origin of a MASS max-pool call.

    The values go back to their argmax positions in the shifted frame, then the map is
    rolled by ``+origin``, so ``unpool(*pool(x, return_origin=True))`` is in the frame of ``x``.

    Args:
        kernel_size: the max-pool's stride (the unpooled map is ``stride`` times larger).
        stride: defaults to ``kernel_size``.

    Shape:
        - Input: :math:`(B, C, h, w)`, indices of the same shape, origin :math:`(B, 2)`.
        - Output: :math:`(B, C, h s, w s)`.

    Example:
        >>> pool, unpool = MASSMaxPool2d(2, return_indices=True), MASSMaxUnpool2d(2)
        >>> (y, indices), origin = pool(torch.randn(1, 3, 8, 8), return_origin=True)
        >>> unpool(y, indices, origin).shape
        torch.Size([1, 3, 8, 8])
    """

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None) -> None:
        super().__init__(kernel_size, stride if stride is not None else kernel_size, 0)

    def forward(self, y: Tensor, indices: Tensor, origin: Tensor | None = None,  # type: ignore[override]
                output_size: list[int] | None = None) -> Tensor:
        if origin is not None:
            _check_origin(origin, y, type(self).__name__)
        return max_unpool2d_at(y, indices, self.stride, origin)


class MASSUpsample(nn.Module):
    """Circular nearest/bilinear upsampling that undoes a downsampling layer's origin.

    Args:
        scale_factor: integer upsampling factor.
        mode: ``"nearest"`` or ``"bilinear"`` (``align_corners=False``, wrap-around borders).

    Shape:
        - Input: :math:`(B, C, h, w)` and optionally the origin :math:`(B, 2)` (in pixels of
          the output, that is of the downsampling layer's input).
        - Output: :math:`(B, C, h s, w s)`.
    """

    def __init__(self, scale_factor: int | tuple[int, int],
                 mode: Literal["nearest", "bilinear"] = "bilinear") -> None:
        super().__init__()
        self.scale_factor = as_pair(scale_factor, "scale_factor")
        self.mode = mode

    def forward(self, y: Tensor, origin: Tensor | None = None) -> Tensor:
        up = circular_interpolate(y, self.scale_factor, self.mode)
        return up if origin is None else unshift(up, _check_origin(origin, y, type(self).__name__))

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}, mode={self.mode!r}"


def circular_conv_transpose2d(y: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int],
                              padding: tuple[int, int], dilation: tuple[int, int], groups: int) -> Tensor:
    """Transposed convolution on the torus: output size exactly ``(h * sy, w * sx)``.

    Contributions that a zero-padded transposed conv would crop at the borders wrap
    around instead: ``out[(i * s - p + k * d) mod H] += y[i] * w[k]``. Computed as a
    circular convolution of the zero-inserted input with the flipped kernel, so every output
    pixel is computed alike (bit-identical under circular shifts).

    Shape:
        - Input: :math:`(B, C_{in}, h, w)`.
        - Output: :math:`(B, C_{out}, h s_y, w s_x)`.
    """
    batch, channels, height, width = y.shape
    sy, sx = stride
    spread = y.new_zeros(batch, channels, height * sy, width * sx)
    spread[..., ::sy, ::sx] = y
    in_per_group, out_per_group = weight.shape[0] // groups, weight.shape[1]
    kernel = weight.view(groups, in_per_group, out_per_group, *weight.shape[2:]).transpose(1, 2)
    kernel = kernel.reshape(groups * out_per_group, in_per_group, *weight.shape[2:]).flip(-2, -1)
    reach = [dilation[i] * (weight.shape[2 + i] - 1) for i in range(2)]
    lead = [reach[i] - padding[i] for i in range(2)]  # out[o] reads spread[o - lead + k * d]
    if any(v < 0 for v in lead):
        spread = torch.roll(spread, [min(v, 0) for v in lead], (2, 3))
        lead = [max(v, 0) for v in lead]
    padded = circular_pad(spread, (lead[1], reach[1] - lead[1], lead[0], reach[0] - lead[0]))
    return conv2d(padded, kernel, bias, 1, dilation, groups)


class MASSConvTranspose2d(nn.ConvTranspose2d):
    """Circular transposed convolution that undoes a downsampling layer's origin.

    Same parameters as :class:`torch.nn.ConvTranspose2d` (state dicts load unchanged);
    ``output_padding`` is ignored because the output size is always ``h * s``.

    Shape:
        - Input: :math:`(B, C_{in}, h, w)` and optionally the origin :math:`(B, 2)`.
        - Output: :math:`(B, C_{out}, h s, w s)`.
    """

    @classmethod
    def from_module(cls, conv: nn.ConvTranspose2d) -> MASSConvTranspose2d:
        """Same parameters (shared) and hyper-parameters as ``conv``."""
        new = cls.__new__(cls)
        new.__dict__.update(conv.__dict__)
        new.__dict__["_source_class"] = type(conv)
        return new

    def forward(self, y: Tensor, origin: Tensor | None = None,  # type: ignore[override]
                output_size: list[int] | None = None) -> Tensor:
        stride = as_pair(self.stride)
        out = circular_conv_transpose2d(y, self.weight, self.bias, stride, as_pair(self.padding, "padding", 0),
                                        as_pair(self.dilation, "dilation"), self.groups)
        return out if origin is None else unshift(out, _check_origin(origin, y, type(self).__name__))

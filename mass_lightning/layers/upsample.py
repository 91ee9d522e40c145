"""Upsampling layers paired with a downsampling layer: they undo its stored origins.

A MASS (or APS) downsampling layer keeps the phase ``o`` of its input at output pixel
(0, 0). Its paired upsampling layer upsamples in that shifted frame and then rolls the
result by ``+o`` per sample, so the decoder works in the input's frame and an
encoder-decoder stays exactly equivariant. States are kept per call on a stack, so a
downsampling module that is called several times (a shared pool in a U-Net, or the model
run on two shifted batches) is undone in reverse order.

Pairing is explicit: ``up = MASSMaxUnpool2d(paired=pool)``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .circular import circular_interpolate, unshift
from .downsample import CircularMaxPool2d, DownsampleState, EquivariantDownsample
from .polyphase import as_pair

__all__ = [
    "APSUpsample2d",
    "MASSConvTranspose2d",
    "MASSMaxUnpool2d",
    "MASSUpsample",
    "aps_upsample",
    "circular_conv_transpose2d",
]


class _Paired:
    """Holds a non-owning reference to the paired downsampling layer."""

    def _pair_with(self, paired: EquivariantDownsample | None) -> None:
        if paired is not None and not isinstance(paired, EquivariantDownsample):
            raise TypeError(
                f"{type(self).__name__}: paired must be a MASS/APS/circular downsampling layer from "
                f"mass_lightning.layers, got {type(paired).__name__}."
            )
        # Not registered as a submodule: the down layer already belongs to the model.
        self.__dict__["_paired"] = paired
        if paired is not None:
            paired.enable_recording()

    @property
    def paired(self) -> EquivariantDownsample | None:
        return self.__dict__["_paired"]

    def _state(self, y: Tensor, scale: tuple[int, int]) -> DownsampleState:
        if self.paired is None:
            height, width = y.shape[-2] * scale[0], y.shape[-1] * scale[1]
            return DownsampleState(torch.zeros(y.shape[0], 2, dtype=torch.int64, device=y.device), (height, width))
        state = self.paired.pop_state()
        if state.origin.shape[0] != y.shape[0]:
            raise ValueError(
                f"{type(self).__name__}: batch size {y.shape[0]} does not match the paired "
                f"downsampling call ({state.origin.shape[0]})."
            )
        return state


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


class APSUpsample2d(_Paired, nn.Module):
    """Adaptive polyphase upsampling: zero insertion at the paired layer's phase.

    Args:
        stride: upsampling factor (the paired layer's stride).
        paired: the APS/MASS downsampling layer whose phases to restore.
        antialias: optional stride-1 filter applied after zero insertion (the
            interpolation filter of Chaman & Dokmanic; a binomial blur scaled by ``s^2``
            is the usual choice).

    Shape:
        - Input: :math:`(B, C, h, w)`.
        - Output: :math:`(B, C, h s, w s)`.
    """

    def __init__(self, stride: int | tuple[int, int], paired: EquivariantDownsample | None = None,
                 antialias: nn.Module | None = None) -> None:
        super().__init__()
        self.stride = as_pair(stride)
        self.antialias = antialias
        self._pair_with(paired)

    def forward(self, y: Tensor) -> Tensor:
        state = self._state(y, self.stride)
        out = aps_upsample(y, state.origin, self.stride)
        return out if self.antialias is None else self.antialias(out)


class MASSMaxUnpool2d(_Paired, nn.MaxUnpool2d):
    """Max-unpooling with the stored indices and origins of its paired max-pool.

    The values go back to their argmax positions in the shifted frame, then the map is
    rolled by ``+origin``, so ``unpool(pool(x))`` is in the frame of ``x``.

    Args:
        paired: the :class:`~mass_lightning.layers.MASSMaxPool2d` (or circular
            max-pool) whose indices and origins are used.

    Shape:
        - Input: :math:`(B, C, h, w)`.
        - Output: :math:`(B, C, H, W)`, the paired pool's input size.

    Example:
        >>> pool = MASSMaxPool2d(2); unpool = MASSMaxUnpool2d(pool)
        >>> unpool(pool(torch.randn(1, 3, 8, 8))).shape
        torch.Size([1, 3, 8, 8])
    """

    def __init__(self, paired: CircularMaxPool2d) -> None:
        if not isinstance(paired, CircularMaxPool2d):
            raise TypeError(f"MASSMaxUnpool2d pairs with a circular/MASS max-pool, got {type(paired).__name__}.")
        super().__init__(paired.kernel_size, paired.stride, paired.padding)
        self._pair_with(paired)

    def forward(self, y: Tensor, indices: Tensor | None = None) -> Tensor:  # type: ignore[override]
        stride = as_pair(self.stride)
        state = self._state(y, stride)
        if state.indices is None:
            raise RuntimeError("MASSMaxUnpool2d: the paired max-pool stored no indices.")
        out = F.max_unpool2d(y, state.indices, kernel_size=stride, stride=stride, output_size=state.input_size)
        return unshift(out, state.origin)


class MASSUpsample(_Paired, nn.Module):
    """Circular nearest/bilinear upsampling that undoes the paired layer's origin.

    Args:
        scale_factor: integer upsampling factor.
        mode: ``"nearest"`` or ``"bilinear"`` (``align_corners=False``, wrap-around borders).
        paired: the downsampling layer to undo; ``None`` for plain circular upsampling.

    Shape:
        - Input: :math:`(B, C, h, w)`.
        - Output: :math:`(B, C, h s, w s)`.
    """

    def __init__(self, scale_factor: int | tuple[int, int], mode: Literal["nearest", "bilinear"] = "bilinear",
                 paired: EquivariantDownsample | None = None) -> None:
        super().__init__()
        self.scale_factor = as_pair(scale_factor, "scale_factor")
        self.mode = mode
        self._pair_with(paired)

    def forward(self, y: Tensor) -> Tensor:
        state = self._state(y, self.scale_factor)
        return unshift(circular_interpolate(y, self.scale_factor, self.mode), state.origin)

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}, mode={self.mode!r}"


def circular_conv_transpose2d(y: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int],
                              padding: tuple[int, int], dilation: tuple[int, int], groups: int) -> Tensor:
    """Transposed convolution on the torus: output size exactly ``(h * sy, w * sx)``.

    Contributions that a zero-padded transposed conv would crop at the borders wrap
    around instead: ``out[(i * s - p + k * d) mod H] += y[i] * w[k]``.

    Shape:
        - Input: :math:`(B, C_{in}, h, w)`.
        - Output: :math:`(B, C_{out}, h s_y, w s_x)`.
    """
    full = F.conv_transpose2d(y, weight, None, stride, 0, 0, groups, dilation)
    height, width = y.shape[-2] * stride[0], y.shape[-1] * stride[1]
    out = _fold(_fold(full, height, dim=2), width, dim=3)
    if any(padding):
        out = torch.roll(out, shifts=(-padding[0], -padding[1]), dims=(2, 3))
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def _fold(x: Tensor, size: int, dim: int) -> Tensor:
    """Wrap-add ``x`` along ``dim`` onto ``size`` entries (index ``i`` goes to ``i mod size``)."""
    length = x.shape[dim]
    chunks = -(-length // size)
    if chunks * size != length:
        pad = [0, 0] * (x.dim() - 1 - dim) + [0, chunks * size - length]
        x = F.pad(x, pad)
    shape = list(x.shape)
    shape[dim : dim + 1] = [chunks, size]
    return x.reshape(shape).sum(dim=dim)


class MASSConvTranspose2d(_Paired, nn.ConvTranspose2d):
    """Circular transposed convolution that undoes the paired layer's origin.

    Same parameters as :class:`torch.nn.ConvTranspose2d` (state dicts load unchanged);
    ``output_padding`` is ignored because the output size is always ``h * s``.

    Shape:
        - Input: :math:`(B, C_{in}, h, w)`.
        - Output: :math:`(B, C_{out}, h s, w s)`.
    """

    def __init__(self, *args, paired: EquivariantDownsample | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._pair_with(paired)

    def forward(self, y: Tensor, output_size: list[int] | None = None) -> Tensor:  # type: ignore[override]
        stride = as_pair(self.stride)
        state = self._state(y, stride)
        out = circular_conv_transpose2d(y, self.weight, self.bias, stride, as_pair(self.padding, "padding", 0),
                                        as_pair(self.dilation, "dilation"), self.groups)
        return unshift(out, state.origin)

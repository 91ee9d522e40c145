"""Functions that converted graphs call for what has no layer of its own.

Each is an ordinary function of tensors (no state), so converted models stay safe to share
between threads, compile and export.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputSizeError
from ..layers.circular import unshift
from ..layers.polyphase import as_pair

__all__ = ["broadcast_upsample", "circular_resize", "circular_upsample", "phase_shift", "shift_to_frame"]


def phase_shift(origins: Sequence[Tensor], coefficients: Sequence[tuple[int, int]]) -> Tensor:
    """``sum_l coefficients[l] * origins[l]`` per sample: the roll (in pixels of an upsampled map)
    that undoes the origins of the downsampling levels it skipped.

    Shape:
        - Input: origins of shape :math:`(B, 2)`.
        - Output: :math:`(B, 2)` int64.
    """
    total = None
    for origin, (cy, cx) in zip(origins, coefficients):
        term = origin * torch.tensor([cy, cx], dtype=origin.dtype, device=origin.device)
        total = term if total is None else total + term
    assert total is not None
    return total


def shift_to_frame(x: Tensor, shift: Tensor) -> Tensor:
    """Roll every sample by ``+shift`` (see :func:`~mass_lightning.layers.unshift`)."""
    return unshift(x, shift)


def circular_upsample(
    x: Tensor,
    scale: tuple[int, int],
    mode: Literal["nearest", "bilinear", "bicubic"] = "nearest",
) -> Tensor:
    """Integer-factor upsampling with wrap-around borders, bit-identical under circular shifts.

    Output pixel ``r * i + a`` of each axis is a fixed combination (weights depending on the
    phase ``a`` only) of input pixels ``i - 1 .. i + 2`` (modulo the size), computed with the
    same arithmetic at every position; ``F.interpolate`` instead derives the weights from a
    float scale per pixel, which rounds differently along the axis. Each output is written
    as its heaviest tap plus weighted differences, so a map that is constant along an axis
    stays exactly constant (a constant input gives a constant output, as equivariance
    requires). Values match
    ``F.interpolate(..., align_corners=False)`` away from the borders up to float rounding.
    ``align_corners`` is not an option: the corners of a torus are not special, so
    ``align_corners=True`` upsampling becomes this one (documented in ``docs/exactness.md``).

    Shape:
        - Input: :math:`(B, C, H, W)`.
        - Output: :math:`(B, C, H r_y, W r_x)`.
    """
    sy, sx = as_pair(scale, "scale")
    if mode in ("nearest", "nearest-exact"):
        mode = "nearest"
    elif mode not in ("bilinear", "bicubic"):
        raise ValueError(f"circular_upsample supports nearest, bilinear and bicubic, got {mode!r}.")
    return _upsample_axis(_upsample_axis(x, sy, x.dim() - 2, mode), sx, x.dim() - 1, mode)


def _cubic_weights(t: float, a: float = -0.75) -> list[float]:
    """PyTorch's cubic convolution weights for taps -1, 0, 1, 2 at fraction ``t``."""

    def near(d: float) -> float:
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d: float) -> float:
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _upsample_axis(x: Tensor, factor: int, dim: int, mode: str) -> Tensor:
    if factor == 1:
        return x
    if mode == "nearest":
        return torch.repeat_interleave(x, factor, dim=dim)
    phases = []
    for phase in range(factor):
        centre = (phase + 0.5) / factor - 0.5
        low = math.floor(centre)
        t = centre - low
        if mode == "bilinear":
            taps = {low: 1.0 - t, low + 1: t}
        else:
            taps = dict(zip(range(low - 1, low + 3), _cubic_weights(t)))
        # x_c + sum_k w_k (x_k - x_c), around the heaviest tap c: the weights sum to 1, and
        # in this form a map that is constant along the axis stays exactly constant.
        centre_offset = max(taps, key=lambda k: taps[k])
        base = torch.roll(x, -centre_offset, dim) if centre_offset else x
        out = base
        for offset, weight in taps.items():
            if weight == 0.0 or offset == centre_offset:
                continue
            out = out + (torch.roll(x, -offset, dim) - base) * weight
        phases.append(out)
    stacked = torch.stack(phases, dim=dim + 1)
    shape = list(x.shape)
    shape[dim] *= factor
    return stacked.reshape(shape)


def circular_resize(x: Tensor, size: Sequence[int] | int, mode: str = "nearest") -> Tensor:
    """:func:`circular_upsample` to ``size``, an integer multiple of ``x``'s size (checked at run time).

    Shape:
        - Input: :math:`(B, C, h, w)`.
        - Output: :math:`(B, C, H, W)` with ``H % h == 0`` and ``W % w == 0``.
    """
    height, width = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if height % x.shape[-2] or width % x.shape[-1]:
        raise InputSizeError(f"circular_resize: {height}x{width} is not an integer multiple of "
                             f"{x.shape[-2]}x{x.shape[-1]}; exact upsampling needs integer factors.")
    return circular_upsample(x, (height // x.shape[-2], width // x.shape[-1]), mode)  # type: ignore[arg-type]


def broadcast_upsample(x: Tensor, size: Sequence[int] | None = None, scale: tuple[int, int] | None = None) -> Tensor:
    """Upsampling of a ``1 x 1`` map: an exact broadcast (interpolation rounds per pixel).

    Shape:
        - Input: :math:`(B, C, 1, 1)`.
        - Output: :math:`(B, C, H, W)`.
    """
    if size is None:
        assert scale is not None
        size = (x.shape[-2] * scale[0], x.shape[-1] * scale[1])
    height, width = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return x.expand(*x.shape[:-2], height, width)

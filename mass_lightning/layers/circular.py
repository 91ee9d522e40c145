"""Circular (wrap-around) padding, per-sample circular shifts and circular interpolation."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "circular_interpolate",
    "circular_pad",
    "conv_padding",
    "shift_and_pad",
    "unshift",
]

Pad4 = tuple[int, int, int, int]


def conv_padding(
    kernel_size: tuple[int, int],
    dilation: tuple[int, int],
    padding: str | tuple[int, int],
) -> Pad4:
    """Circular padding ``(left, right, top, bottom)`` that keeps a stride-1 op size-preserving.

    The leading side keeps the op's own padding (so strided outputs stay aligned with the
    original zero-padded op and pretrained weights mean the same thing); the trailing side
    gets the rest of ``dilation * (kernel - 1)``.
    """
    total = tuple(d * (k - 1) for k, d in zip(kernel_size, dilation))
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same', 'valid' or ints, got {padding!r}.")
        lead = tuple(t // 2 for t in total) if padding == "same" else (0, 0)
    else:
        lead = tuple(int(p) for p in padding)
    top, left = lead
    return (left, total[1] - left, top, total[0] - top)


def _wrap_index(size: int, before: int, after: int, device: torch.device) -> Tensor:
    return torch.arange(-before, size + after, device=device).remainder_(size)


def circular_pad(x: Tensor, pad: Pad4) -> Tensor:
    """Circular padding of the last two dims by ``(left, right, top, bottom)``.

    Unlike ``F.pad(mode="circular")`` any amount works, also more than the input size
    (dilated convolutions on small maps), by wrapping indices.

    Shape:
        - Input: :math:`(B, C, H, W)`.
        - Output: :math:`(B, C, H + top + bottom, W + left + right)`.
    """
    left, right, top, bottom = pad
    if min(pad) < 0:
        raise ValueError(f"circular_pad needs non-negative padding, got {pad}.")
    if not any(pad):
        return x
    height, width = x.shape[-2:]
    if max(top, bottom) <= height and max(left, right) <= width:
        return F.pad(x, pad, mode="circular")
    rows = _wrap_index(height, top, bottom, x.device)
    cols = _wrap_index(width, left, right, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def shift_and_pad(x: Tensor, origin: Tensor, pad: Pad4 = (0, 0, 0, 0)) -> Tensor:
    """Circularly shift each sample so that ``origin`` moves to (0, 0), then pad circularly.

    ``out[b, c, i, j] == x[b, c, (i - top + oy_b) % H, (j - left + ox_b) % W]``. The shift
    and the circular padding are one indexing pass (no intermediate copy). When all
    samples share one origin (always so for batch size 1) it reduces to a roll and a pad.

    Args:
        x: feature map.
        origin: ``(B, 2)`` integer offsets ``(oy, ox)``.
        pad: circular padding ``(left, right, top, bottom)`` applied after the shift.

    Shape:
        - Input: :math:`(B, C, H, W)`, origin :math:`(B, 2)`.
        - Output: :math:`(B, C, H + top + bottom, W + left + right)`.
    """
    if origin.dim() != 2 or origin.shape != (x.shape[0], 2):
        raise ValueError(
            f"shift_and_pad: origin must have shape ({x.shape[0]}, 2), got {tuple(origin.shape)}."
        )
    left, right, top, bottom = pad
    batch, _, height, width = x.shape
    rows = torch.arange(-top, height + bottom, device=x.device)
    cols = torch.arange(-left, width + right, device=x.device)
    rows = (rows.unsqueeze(0) + origin[:, :1]).remainder_(height)  # (B, Hp)
    cols = (cols.unsqueeze(0) + origin[:, 1:]).remainder_(width)  # (B, Wp)
    sample = torch.arange(batch, device=x.device).view(batch, 1, 1)
    # Advanced indices around a slice: result is (B, Hp, Wp, C), a channels-last view.
    out = x[sample, :, rows.unsqueeze(2), cols.unsqueeze(1)]
    return out.permute(0, 3, 1, 2)


def unshift(x: Tensor, origin: Tensor, scale: int | tuple[int, int] = 1) -> Tensor:
    """Undo :func:`shift_and_pad` (without padding) on a map ``scale`` times finer.

    ``out[b, :, i, j] == x[b, :, (i - oy_b * sy) % H, (j - ox_b * sx) % W]``, i.e. a
    per-sample ``torch.roll`` by ``+origin * scale``.

    Shape:
        - Input: :math:`(B, C, H, W)`, origin :math:`(B, 2)`.
        - Output: :math:`(B, C, H, W)`.
    """
    sy, sx = (scale, scale) if isinstance(scale, int) else scale
    offset = origin * torch.tensor([sy, sx], device=origin.device, dtype=origin.dtype)
    return shift_and_pad(x, -offset).contiguous(memory_format=_memory_format(x))


def _memory_format(x: Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def circular_interpolate(
    x: Tensor,
    scale_factor: int | tuple[int, int],
    mode: Literal["nearest", "bilinear"] = "bilinear",
) -> Tensor:
    """Upsample by an integer factor with wrap-around borders.

    ``F.interpolate`` clamps at the image border, which breaks circular equivariance.
    Bilinear (``align_corners=False``) interpolation is made circular by padding one pixel
    of wrap-around on every side, interpolating, and cropping the extra ``scale`` pixels.
    Nearest needs no padding.

    Shape:
        - Input: :math:`(B, C, H, W)`.
        - Output: :math:`(B, C, H s_y, W s_x)`.
    """
    sy, sx = (scale_factor, scale_factor) if isinstance(scale_factor, int) else scale_factor
    if mode == "nearest":
        return F.interpolate(x, scale_factor=(sy, sx), mode="nearest")
    if mode != "bilinear":
        raise ValueError(f"circular_interpolate supports 'nearest' and 'bilinear', got {mode!r}.")
    height, width = x.shape[-2:]
    padded = circular_pad(x, (1, 1, 1, 1))
    up = F.interpolate(padded, size=((height + 2) * sy, (width + 2) * sx), mode="bilinear", align_corners=False)
    return up[..., sy : sy + height * sy, sx : sx + width * sx]

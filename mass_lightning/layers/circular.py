"""Circular (wrap-around) padding, per-sample circular shifts and circular interpolation.

Performance notes. On CPU the per-sample shift of :func:`shift_and_pad` groups the samples
by origin (MASS has at most ``s * s`` distinct origins) and copies each group's shifted,
padded window with a few slice copies, instead of one advanced-indexing gather (about ten
times slower per element, and its output is a permuted channels-last view). The copies
are exact, so the result is bit-identical either way. The gather is kept where grouping
would need a host sync or data-dependent shapes: on accelerators and under
``torch.compile``, where the compiler fuses it into one kernel.
"""

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
_MAX_GROUPS = 16  # more distinct origins than this: one gather is cheaper than many groups


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
    if min(pad) < 0:
        raise ValueError(f"circular_pad needs non-negative padding, got {pad}.")
    if not any(pad):
        return x
    return _pad_windows(x, None, pad)


def shift_and_pad(x: Tensor, origin: Tensor, pad: Pad4 = (0, 0, 0, 0)) -> Tensor:
    """Circularly shift each sample so that ``origin`` moves to (0, 0), then pad circularly.

    ``out[b, c, i, j] == x[b, c, (i - top + oy_b) % H, (j - left + ox_b) % W]``. The shift
    and the circular padding are one copy (no intermediate tensor). When all samples share
    one origin (always so for batch size 1) it is a single shifted window.

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
    return _pad_windows(x, origin, pad)


def _pad_windows(
    x: Tensor, origin: Tensor | None, pad: Pad4, memory_format: torch.memory_format | None = None
) -> Tensor:
    """:func:`shift_and_pad` (``origin=None``: no shift); ``memory_format`` of the copy, on CPU."""
    out, restore = _sorted_pad_windows(x, origin, pad, memory_format)
    return out if restore is None else out.index_select(0, restore)


def _sorted_pad_windows(
    x: Tensor, origin: Tensor | None, pad: Pad4, memory_format: torch.memory_format | None = None
) -> tuple[Tensor, Tensor | None]:
    """:func:`shift_and_pad` with the samples possibly reordered so that origins are grouped.

    Returns ``(out, restore)``: ``out.index_select(0, restore)`` (when ``restore`` is not
    ``None``) is the shift_and_pad result. A per-sample op can run on ``out`` first and
    restore the order of its (usually smaller) output instead.
    """
    left, right, top, bottom = pad
    batch, _, height, width = x.shape
    out_height, out_width = height + top + bottom, width + left + right
    fits = max(top, bottom) <= height and max(left, right) <= width
    if not _use_gather(x):
        plan = _origin_plan(origin, batch, height, width)
        if plan is not None:
            restore, groups = plan
            if memory_format is None and origin is None and fits and not _needs_grad(x) and x.is_contiguous():
                # F.pad is a little faster, but returns NCHW for any input and its backward
                # is three times slower than ours.
                return F.pad(x, pad, mode="circular"), None
            windows = [(index, start, stop, oy - top, ox - left) for index, start, stop, oy, ox in groups]
            # One fixed layout for the copy, whatever the input's: convolution kernels round
            # differently per layout, so a layout that followed the input (or the origin)
            # would break bitwise equivariance.
            fmt = memory_format or torch.contiguous_format
            return _GroupedWindows.apply(x, windows, out_height, out_width, fmt), restore
    if origin is None:
        if fits:
            return F.pad(x, pad, mode="circular"), None
        rows = _wrap_index(height, top, bottom, x.device)
        cols = _wrap_index(width, left, right, x.device)
        return x.index_select(-2, rows).index_select(-1, cols), None
    rows = torch.arange(-top, height + bottom, device=x.device)
    cols = torch.arange(-left, width + right, device=x.device)
    rows = (rows.unsqueeze(0) + origin[:, :1]).remainder_(height)  # (B, Hp)
    cols = (cols.unsqueeze(0) + origin[:, 1:]).remainder_(width)  # (B, Wp)
    sample = torch.arange(batch, device=x.device).view(batch, 1, 1)
    # Advanced indices around a slice: result is (B, Hp, Wp, C), a channels-last view.
    out = x[sample, :, rows.unsqueeze(2), cols.unsqueeze(1)].permute(0, 3, 1, 2)
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        out = out.contiguous(memory_format=memory_format or torch.contiguous_format)  # the fixed CPU layout
    return out, None


def _needs_grad(x: Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


def _use_gather(x: Tensor) -> bool:
    return x.device.type != "cpu" or torch.compiler.is_compiling()


Group = tuple[Tensor | None, int, int, int, int]  # (sample indices or None for all, start, stop, top, left)


def _origin_plan(origin: Tensor | None, batch: int, height: int, width: int) -> tuple[Tensor | None, list] | None:
    """Group the samples by origin (mod size): ``(restore, [(index, start, stop, oy, ox)])``.

    Group ``g`` holds the samples ``index`` (``None``: all of them) and fills the range
    ``start:stop`` of a batch ordered by group; ``restore`` is the permutation that puts
    that batch back into the input order (``None`` when there is one group).
    """
    if origin is None:
        return None, [(None, 0, batch, 0, 0)]
    key = origin[:, 0].remainder(height) * width + origin[:, 1].remainder(width)
    values, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    values = values.tolist()
    if len(values) == 1:
        return None, [(None, 0, batch, values[0] // width, values[0] % width)]
    if len(values) > _MAX_GROUPS:
        return None
    order = torch.argsort(inverse, stable=True)
    restore = torch.empty_like(order).index_copy_(0, order, torch.arange(batch, device=order.device))
    sizes = counts.tolist()
    stops = torch.cumsum(counts, 0).tolist()
    groups = [
        (index, stop - size, stop, v // width, v % width)
        for index, size, stop, v in zip(order.split(sizes), sizes, stops, values)
    ]
    return restore, groups


def _runs(start: int, length: int, size: int) -> list[tuple[int, int, int]]:
    """``(destination, source, count)`` runs covering ``[start, start + length) mod size``."""
    runs, done, source = [], 0, start % size
    while done < length:
        count = min(length - done, size - source)
        runs.append((done, source, count))
        done, source = done + count, 0
    return runs


def _pieces(top: int, left: int, window: tuple[int, int], size: tuple[int, int]):
    """``(window slices, source slices)`` of the rectangles a circular window is made of."""
    for dst_r, src_r, n_r in _runs(top, window[0], size[0]):
        for dst_c, src_c, n_c in _runs(left, window[1], size[1]):
            yield (
                (..., slice(dst_r, dst_r + n_r), slice(dst_c, dst_c + n_c)),
                (..., slice(src_r, src_r + n_r), slice(src_c, src_c + n_c)),
            )


def _empty(x: Tensor, height: int, width: int, memory_format: torch.memory_format) -> Tensor:
    return torch.empty((*x.shape[:-2], height, width), dtype=x.dtype, device=x.device, memory_format=memory_format)


class _GroupedWindows(torch.autograd.Function):
    """``out[start_g:stop_g] = window(x[index_g], top_g, left_g)`` for every group ``g``.

    Each rectangle of a window is one slice copy, or one ``index_select`` straight into
    the output for a group of samples; the backward pass is the adjoint (sums where the
    window wraps onto the same pixel).
    """

    @staticmethod
    def forward(ctx, x, groups, height, width, memory_format):  # type: ignore[override]
        ctx.groups, ctx.input_size, ctx.input_format = groups, x.shape[-2:], _memory_format(x)
        out = _empty(x, height, width, memory_format)
        for index, start, stop, top, left in groups:
            for dst, src in _pieces(top, left, (height, width), x.shape[-2:]):
                target = out[start:stop][dst]
                if index is None:
                    target.copy_(x[src])
                else:
                    torch.index_select(x[src], 0, index, out=target)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        height, width = ctx.input_size
        grad_x = _empty(grad, height, width, ctx.input_format)
        for index, start, stop, top, left in ctx.groups:
            pieces = list(_pieces(top, left, grad.shape[-2:], (height, width)))
            # Write first a piece that covers the whole map (no zero fill), then add the rest.
            whole = [p for p in pieces if p[1][1] == slice(0, height) and p[1][2] == slice(0, width)]
            if whole:
                pieces.remove(whole[0])
                _write(grad_x, grad[start:stop][whole[0][0]], index, accumulate=False)
            elif index is None:
                grad_x.zero_()
            else:
                grad_x.index_fill_(0, index, 0)
            for dst, src in pieces:
                _write(grad_x[src], grad[start:stop][dst], index, accumulate=True)
        return grad_x, None, None, None, None


def _write(target: Tensor, piece: Tensor, index: Tensor | None, accumulate: bool) -> None:
    """``target[index] (+)= piece`` (all of ``target`` when ``index`` is ``None``)."""
    if index is None:
        target.add_(piece) if accumulate else target.copy_(piece)
    else:
        target.index_add_(0, index, piece) if accumulate else target.index_copy_(0, index, piece)


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

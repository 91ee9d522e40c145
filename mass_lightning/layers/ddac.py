"""DDAC: content-aware (learned, adaptive) low-pass filter, stride 1, circular padding.

Zou, Xiao, Yu and Lee, "Delving Deeper into Anti-aliasing in ConvNets" (BMVC 2020);
reference code ``MaureenZOU/Adaptive-anti-Aliasing`` (``Downsample_PASA_group_softmax``).

Two branches predict ``k x k`` filters from the input and apply them to it:

* **spatial branch**: a ``k x k`` convolution, BatchNorm and a softmax give, at every pixel,
  one filter per *group* of channels (``C // group`` consecutive channels share it);
* **channel branch**: a global average pool, a ``1 x 1`` convolution, BatchNorm and a softmax
  give one filter per channel (or per channel group), the same at every pixel.

The two filtered maps are averaged. The softmax makes every filter non-negative with sum 1,
so both branches (and their average) are low-pass filters with unit DC gain.

Differences from the reference code:

* circular padding instead of reflect padding, which is what makes the layer exactly
  equivariant to circular shifts (in eval mode, where BatchNorm is a fixed affine map);
* stride 1: the subsampling is done by the wrapping layer (plain, APS or MASS);
* the softmax is taken per group by default; the reference takes one softmax over all
  ``group * k * k`` logits (``joint_softmax=True`` reproduces that);
* the reference code releases only the spatial branch; ``channel_adaptive=False`` gives it.

The global average pool of the channel branch is order-independent
(:func:`~mass_lightning.layers.exact_global_avg_pool2d`), so a shifted input gives the
bit-identical pooled vector (a plain ``mean`` would differ in the last bits).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .exact import exact_global_avg_pool2d
from .kernels import conv2d
from .pointwise import position_free_sum, softmax

__all__ = ["DDAC", "ddac2d"]


def _kernel_size_from_taps(taps: int, layer: str) -> int:
    k = math.isqrt(taps)
    if k * k != taps or k % 2 == 0:
        raise ValueError(
            f"{layer}: filters must have k*k taps for an odd k (dim 2 of size 1, 9, 25, ...), got {taps}."
        )
    return k


def _apply_group_filters(columns: Tensor, filters: Tensor) -> Tensor:
    """Weighted sum of unfolded neighbourhoods.

    ``columns`` is ``(N, C, k*k, H, W)``; ``filters`` is ``(N, G, k*k, Hf, Wf)`` with ``Hf, Wf``
    equal to ``H, W`` or 1. Channel ``c`` uses the filter of group ``c // (C // G)``.
    """
    n, c, taps, h, w = columns.shape
    groups = filters.shape[1]
    grouped = columns.reshape(n, groups, c // groups, taps, h, w)
    # Elementwise product, then the taps added one by one: the same arithmetic at every pixel
    # (a vectorised sum over the taps rounds differently at some positions).
    out = position_free_sum(grouped * filters.unsqueeze(2), 3)
    return out.reshape(n, c, h, w)


def _unfold_circular(x: Tensor, kernel_size: int) -> Tensor:
    """``(N, C, H, W)`` -> ``(N, C, k*k, H, W)`` neighbourhoods with circular padding."""
    n, c, h, w = x.shape
    pad = kernel_size // 2
    padded = F.pad(x, (pad, pad, pad, pad), mode="circular") if pad else x
    return F.unfold(padded, kernel_size).reshape(n, c, kernel_size * kernel_size, h, w)


def ddac2d(x: Tensor, spatial_filters: Tensor, channel_filters: Tensor | None = None) -> Tensor:
    """Apply DDAC filters to ``x`` (circular padding, stride 1).

    ``spatial_filters[n, g, :, i, j]`` is the ``k x k`` filter (flattened row-major) applied at
    pixel ``(i, j)`` to the channels of group ``g``: channels ``g * C // G`` to
    ``(g + 1) * C // G - 1``. ``channel_filters[n, g]`` is one filter for group ``g`` of a
    possibly different grouping, used at every pixel. With both, the two outputs are averaged.

    Exactly shift-equivariant: shifting ``x`` and ``spatial_filters`` by the same circular
    shift shifts the output by it, bit for bit.

    Args:
        x: Input feature map.
        spatial_filters: Per-pixel filters, e.g. from the spatial branch of :class:`DDAC`.
        channel_filters: Optional per-group filters, e.g. from the channel branch.

    Returns:
        The filtered feature map, same shape as ``x``.

    Shape:
        - Input: :math:`(N, C, H, W)`.
        - Spatial filters: :math:`(N, G, k^2, H, W)` with ``C % G == 0`` and odd ``k``.
        - Channel filters: :math:`(N, G_c, k^2)` with ``C % G_c == 0``.
        - Output: :math:`(N, C, H, W)`.

    Example:
        >>> x = torch.randn(2, 4, 8, 8)
        >>> identity = torch.zeros(2, 2, 9, 8, 8)
        >>> identity[:, :, 4] = 1.0  # all weight on the centre tap
        >>> torch.equal(ddac2d(x, identity), x)
        True
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"ddac2d expects a 4-D input (N, C, H, W), got {shape}.")
    n, c, h, w = x.shape
    if spatial_filters.dim() != 5 or spatial_filters.shape[0] != n or spatial_filters.shape[-2:] != (h, w):
        raise ValueError(
            f"ddac2d: spatial_filters must have shape (N, G, k*k, H, W) = ({n}, G, k*k, {h}, {w}) "
            f"for an input of shape {tuple(x.shape)}, got {tuple(spatial_filters.shape)}."
        )
    groups, taps = spatial_filters.shape[1], spatial_filters.shape[2]
    kernel_size = _kernel_size_from_taps(taps, "ddac2d")
    if c % groups:
        raise ValueError(f"ddac2d: {c} input channels cannot be split into {groups} filter groups.")
    if channel_filters is not None:
        if channel_filters.dim() != 3 or channel_filters.shape[0] != n or channel_filters.shape[2] != taps:
            raise ValueError(
                f"ddac2d: channel_filters must have shape (N, G_c, k*k) = ({n}, G_c, {taps}), "
                f"got {tuple(channel_filters.shape)}."
            )
        if c % channel_filters.shape[1]:
            raise ValueError(
                f"ddac2d: {c} input channels cannot be split into {channel_filters.shape[1]} channel-filter groups."
            )
    pad = kernel_size // 2
    if pad and min(h, w) < pad:
        raise ValueError(
            f"ddac2d(kernel_size={kernel_size}) needs H and W >= {pad} for circular padding, got {h}x{w}."
        )
    columns = _unfold_circular(x, kernel_size)
    out = _apply_group_filters(columns, spatial_filters)
    if channel_filters is not None:
        out_channel = _apply_group_filters(columns, channel_filters[..., None, None])
        out = (out + out_channel) / 2
    return out


class DDAC(nn.Module):
    """DDAC-k content-aware low-pass filter (stride 1, circular padding).

    Spatial branch (as the reference ``Downsample_PASA_group_softmax``): circular pad,
    ``Conv2d(channels, group * k * k, k, bias=False)``, ``BatchNorm2d``, softmax over the
    ``k * k`` taps of each group. Channel branch: order-independent global average pool,
    ``Conv2d(channels, channel_groups * k * k, 1, bias=False)``, ``BatchNorm2d``, softmax over the
    taps. The output is the average of the two filtered maps (see :func:`ddac2d`).
    Convolutions use Kaiming-normal init (``fan_out``, ReLU), as in the reference.

    In eval mode the layer is exactly equivariant to every circular shift. In training mode
    BatchNorm uses batch statistics, which are only equal up to rounding for shifted inputs.
    The channel branch's BatchNorm sees one value per sample, so training with it needs a
    batch of at least 2 samples.

    Args:
        channels: Number of input channels.
        kernel_size: Filter size ``k`` (odd). ``3`` gives DDAC-3.
        group: Number of channel groups of the spatial branch (reference default 2; the paper
            uses 8 on ImageNet). Must divide ``channels``.
        channel_adaptive: Add the channel branch. ``False`` gives the spatial-only layer of the
            public reference code.
        channel_groups: Number of channel groups of the channel branch; ``None`` (default) gives
            every channel its own filter. Must divide ``channels``. The branch has
            ``channels * channel_groups * k * k`` weights.
        joint_softmax: Take one softmax over all ``group * k * k`` spatial logits, as the
            reference code does, instead of one per group. Each group's filter then sums to
            less than 1.

    Shape:
        - Input: :math:`(N, C, H, W)` with ``C == channels`` and ``H, W >= kernel_size // 2``.
        - Output: :math:`(N, C, H, W)`.

    Example:
        >>> layer = DDAC(8, kernel_size=3, group=2).eval()
        >>> x = torch.randn(2, 8, 8, 12)
        >>> y = layer(x)
        >>> y.shape
        torch.Size([2, 8, 8, 12])
        >>> torch.equal(layer(torch.roll(x, (1, 5), (2, 3))), torch.roll(y, (1, 5), (2, 3)))
        True
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        group: int = 2,
        *,
        channel_adaptive: bool = True,
        channel_groups: int | None = None,
        joint_softmax: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        for arg, value in (("channels", channels), ("kernel_size", kernel_size), ("group", group)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {arg} must be a positive int, got {value!r}.")
        if kernel_size % 2 == 0:
            raise ValueError(f"{name}: kernel_size must be odd (the filter is centred), got {kernel_size}.")
        if channels % group:
            raise ValueError(f"{name}: group={group} must divide channels={channels}.")
        if channel_groups is None:
            channel_groups = channels
        if isinstance(channel_groups, bool) or not isinstance(channel_groups, int) or channel_groups < 1:
            raise ValueError(f"{name}: channel_groups must be a positive int or None, got {channel_groups!r}.")
        if channels % channel_groups:
            raise ValueError(f"{name}: channel_groups={channel_groups} must divide channels={channels}.")

        self.channels = channels
        self.kernel_size = kernel_size
        self.group = group
        self.channel_adaptive = channel_adaptive
        self.channel_groups = channel_groups
        self.joint_softmax = joint_softmax
        taps = kernel_size * kernel_size

        # Spatial branch: names match the reference (conv, bn) so its weights load directly.
        self.conv = nn.Conv2d(channels, group * taps, kernel_size, bias=False)
        self.bn = nn.BatchNorm2d(group * taps)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if channel_adaptive:
            self.channel_conv = nn.Conv2d(channels, channel_groups * taps, 1, bias=False)
            self.channel_bn = nn.BatchNorm2d(channel_groups * taps)
            nn.init.kaiming_normal_(self.channel_conv.weight, mode="fan_out", nonlinearity="relu")
        else:
            self.channel_conv = None
            self.channel_bn = None

    def _check_input(self, x: Tensor) -> None:
        name = type(self).__name__
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} expects a 4-D input (N, C, H, W), got {shape}.")
        if x.shape[1] != self.channels:
            raise ValueError(
                f"{name} was built for channels={self.channels} but got an input with {x.shape[1]} "
                f"channels (shape {tuple(x.shape)}). Build it with channels={x.shape[1]}."
            )
        pad = self.kernel_size // 2
        if pad and min(x.shape[-2:]) < pad:
            raise ValueError(
                f"{name}(kernel_size={self.kernel_size}) needs H and W >= {pad} for circular padding, "
                f"got {x.shape[-2]}x{x.shape[-1]}. Use a smaller kernel_size or a larger input."
            )
        if self.training and self.channel_adaptive and x.shape[0] < 2:
            raise ValueError(
                f"{name}: the channel branch's BatchNorm needs a batch of at least 2 samples in training "
                f"mode, got {x.shape[0]}. Use a larger batch (or drop_last=True), eval mode, or "
                "channel_adaptive=False."
            )

    def spatial_filters(self, x: Tensor) -> Tensor:
        """Per-pixel filters ``(N, group, k*k, H, W)`` of the spatial branch."""
        n, _, h, w = x.shape
        pad = self.kernel_size // 2
        padded = F.pad(x, (pad, pad, pad, pad), mode="circular") if pad else x
        logits = self.bn(conv2d(padded, self.conv.weight, self.conv.bias))
        if self.joint_softmax:
            return softmax(logits, 1).reshape(n, self.group, -1, h, w)
        return softmax(logits.reshape(n, self.group, -1, h, w), 2)

    def channel_filters(self, x: Tensor) -> Tensor | None:
        """Per-group filters ``(N, channel_groups, k*k)`` of the channel branch, or ``None``."""
        if self.channel_conv is None or self.channel_bn is None:
            return None
        pooled = exact_global_avg_pool2d(x)
        logits = self.channel_bn(conv2d(pooled, self.channel_conv.weight, self.channel_conv.bias))
        return softmax(logits.reshape(x.shape[0], self.channel_groups, -1), 2)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        spatial = self.spatial_filters(x)
        channel = self.channel_filters(x)
        # Filters may come out in a lower precision under autocast; filter in x's dtype.
        channel = None if channel is None else channel.to(x.dtype)
        return ddac2d(x, spatial.to(x.dtype), channel)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, kernel_size={self.kernel_size}, group={self.group}, "
            f"channel_adaptive={self.channel_adaptive}, channel_groups={self.channel_groups}, "
            f"joint_softmax={self.joint_softmax}, padding_mode='circular'"
        )

"""Spatial reductions whose result does not depend on the order of the pixels.

A float sum over a circularly shifted map adds the same terms in another order and can
differ in the last bit, which can flip the argmax of nearly tied logits or, inside a
network (squeeze-excitation, GroupNorm), spread into every later value. The reductions
here are functions of the *multiset* of values only:

* every value is scaled by an exact power of two derived from the largest magnitude
  (a max is order-independent), truncated to a fixed-point ``int64`` and summed: integer
  sums are associative, so the total is the same in every order;
* the total is converted back once, so the result is the exact sum rounded to about
  ``62 - log2(n)`` bits relative to the largest value (far below float32 rounding unless
  the terms cancel almost completely).

:func:`mass_lightning.convert` swaps spatial means, sums, global average pools,
GroupNorm, InstanceNorm and spatial LayerNorm statistics for these. Non-finite inputs give
NaN. Everything is ordinary tensor arithmetic (no sorting, no host sync), so it compiles
and exports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ExactGlobalAvgPool2d",
    "ExactGroupNorm",
    "ExactInstanceNorm2d",
    "exact_global_avg_pool2d",
    "exact_group_norm",
    "exact_mean",
    "exact_sum",
]

_INT64_BITS = 62


def _dims(x: Tensor, dim: int | Sequence[int] | None) -> tuple[int, ...]:
    if dim is None:
        return tuple(range(x.dim()))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return tuple(sorted({d % x.dim() for d in dims}))


def exact_sum(x: Tensor, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Tensor:
    """Sum over ``dim`` that is bit-identical for any permutation of the summed elements.

    Args:
        x: floating-point tensor.
        dim: dimension(s) to reduce; ``None`` for all.
        keepdim: keep the reduced dimensions with size 1.

    Returns:
        The sum, in ``x``'s dtype (NaN where a reduced element is NaN or infinite).

    Example:
        >>> x = torch.randn(2, 3, 8, 12)
        >>> torch.equal(exact_sum(torch.roll(x, (3, 5), (2, 3)), (2, 3)), exact_sum(x, (2, 3)))
        True
    """
    dims = _dims(x, dim)
    count = math.prod([x.shape[d] for d in dims]) if dims else 1
    if count == 0:
        return x.sum(dims, keepdim=keepdim)
    # Each term below 2^bits, so that a sum of `count` terms stays below 2^62.
    bits = _INT64_BITS - max(1, math.ceil(math.log2(count))) - 1
    wide = x.detach().double() if not x.requires_grad else x.double()
    peak = wide.abs().amax(dim=dims, keepdim=True)
    # An exact power of two above the peak: log2 and exp2 are exact on powers of two, and
    # the +2 covers a log2 rounded either way. Tiny peaks are clamped (their terms are 0).
    exponent = torch.floor(torch.log2(peak.clamp(min=2.0**-900))) + 2
    scale = torch.exp2(bits - exponent)
    if x.requires_grad:
        # Gradient of a sum: the straight-through identity (exact values need no grad path).
        fixed = _fixed_point_sum(wide.detach(), scale, dims)
        total = fixed.double() / scale
        total = total + (wide - wide.detach()).sum(dims, keepdim=True)
    else:
        total = _fixed_point_sum(wide, scale, dims).double() / scale
    total = total + (peak - peak)  # NaN where the peak is NaN or infinite
    total = total.to(x.dtype)
    return total if keepdim else total.squeeze(dims) if dims else total


def _fixed_point_sum(wide: Tensor, scale: Tensor, dims: tuple[int, ...]) -> Tensor:
    finite = torch.nan_to_num(wide * scale, nan=0.0, posinf=0.0, neginf=0.0)
    return finite.to(torch.int64).sum(dims, keepdim=True)


def exact_mean(x: Tensor, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Tensor:
    """Mean over ``dim``, bit-identical for any permutation of the averaged elements.

    See :func:`exact_sum`. The mean is the exact sum divided by the count, rounded once
    more to ``x``'s dtype.

    Example:
        >>> x = torch.randn(2, 3, 8, 12)
        >>> torch.equal(exact_mean(torch.roll(x, 7, 3), (2, 3)), exact_mean(x, (2, 3)))
        True
    """
    dims = _dims(x, dim)
    count = math.prod([x.shape[d] for d in dims]) if dims else 1
    total = exact_sum(x.double() if x.dtype != torch.float64 else x, dims, keepdim=keepdim)
    return (total / max(count, 1)).to(x.dtype)


def exact_global_avg_pool2d(x: Tensor) -> Tensor:
    """Global average pool whose result is independent of the order of the pixels.

    Shape:
        - Input: :math:`(N, C, H, W)`.
        - Output: :math:`(N, C, 1, 1)`.

    Example:
        >>> x = torch.randn(2, 3, 8, 12)
        >>> torch.equal(exact_global_avg_pool2d(torch.roll(x, (3, 5), (2, 3))), exact_global_avg_pool2d(x))
        True
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"exact_global_avg_pool2d expects a 4-D input (N, C, H, W), got {shape}.")
    return exact_mean(x, (2, 3), keepdim=True)


def exact_group_norm(
    x: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5
) -> Tensor:
    """``F.group_norm`` with order-independent statistics (bit-identical under circular shifts).

    Shape:
        - Input: :math:`(N, C, *)` with ``C % num_groups == 0``.
        - Output: same as the input.
    """
    if x.dim() < 2 or x.shape[1] % num_groups:
        raise ValueError(f"exact_group_norm: {x.shape[1] if x.dim() > 1 else '?'} channels cannot be split into "
                         f"{num_groups} groups (input shape {tuple(x.shape)}).")
    grouped = x.reshape(x.shape[0], num_groups, -1)
    compute = grouped.float() if grouped.dtype in (torch.float16, torch.bfloat16) else grouped
    mean = exact_mean(compute, 2, keepdim=True)
    centred = compute - mean
    var = exact_mean(centred * centred, 2, keepdim=True)
    out = (centred * torch.rsqrt(var + eps)).reshape(x.shape).to(x.dtype)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if weight is not None:
        out = out * weight.view(shape)
    if bias is not None:
        out = out + bias.view(shape)
    return out


class ExactGlobalAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d(1)`` that is bit-identical for circularly shifted inputs.

    Shape:
        - Input: :math:`(B, C, H, W)`.
        - Output: :math:`(B, C, 1, 1)`.

    Example:
        >>> pool = ExactGlobalAvgPool2d()
        >>> x = torch.randn(2, 3, 8, 12)
        >>> torch.equal(pool(torch.roll(x, (3, 5), (2, 3))), pool(x))
        True
    """

    def __init__(self) -> None:
        super().__init__(1)

    def forward(self, x: Tensor) -> Tensor:
        return exact_global_avg_pool2d(x)


class ExactGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` with order-independent statistics (same parameters and state-dict keys).

    Shape:
        - Input: :math:`(B, C, *)`.
        - Output: same as the input.
    """

    @classmethod
    def from_module(cls, norm: nn.GroupNorm) -> ExactGroupNorm:
        """Same parameters (shared, not copied) as ``norm``."""
        new = cls.__new__(cls)
        new.__dict__.update(norm.__dict__)
        return new

    def forward(self, x: Tensor) -> Tensor:
        return exact_group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class ExactInstanceNorm2d(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` (without running statistics) with order-independent statistics.

    Shape:
        - Input: :math:`(B, C, H, W)`.
        - Output: same as the input.
    """

    @classmethod
    def from_module(cls, norm: nn.InstanceNorm2d) -> ExactInstanceNorm2d:
        new = cls.__new__(cls)
        new.__dict__.update(norm.__dict__)
        return new

    def forward(self, x: Tensor) -> Tensor:
        if self.track_running_stats and not self.training:
            return F.instance_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0,
                                   self.eps)
        return exact_group_norm(x, x.shape[1], self.weight, self.bias, self.eps)

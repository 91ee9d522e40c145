"""Exact, shift-covariant origin selection over polyphase components.

For a stride ``(sy, sx)`` a feature map ``x`` of shape ``(B, C, H, W)`` has ``sy * sx``
polyphase components ``x[:, :, a::sy, b::sx]``. MASS picks, per sample, the component
with the largest l2 energy and calls its offset ``(a, b)`` the *origin*. A circular shift
of ``x`` by ``(dy, dx)`` permutes the components, so a rule that only looks at
shift-invariant statistics of each component moves the origin along with the input:
``origin(roll(x, d)) == (origin(x) + d) mod s``. That is what makes MASS exact.

Two things break this in a naive implementation, and both are handled here:

* **Summation order.** ``x[a::s, b::s].pow(2).sum()`` is a float reduction whose result
  depends on the order of its terms, and shifting ``x`` reorders them. Components whose
  energies are equal in exact arithmetic (mirror-symmetric lattices) then differ by an ulp
  in one direction for ``x`` and in the other for ``roll(x, d)``. We therefore quantise
  every term to an integer *independently of its position* and sum in ``int64``, which is
  associative: the statistics are exact functions of the component's multiset of values.
* **Ties.** Constant maps, stripes and checkerboards tie outright. Ties are broken with
  further shift-invariant statistics, compared lexicographically: the polyphase
  cross-correlations ``sum_p x[p] * x[p + delta]`` for the four nearest neighbour offsets
  (they see how a component sits among its neighbours) and the third-order terms
  ``sum_p x[p]^2 * x[p + delta]`` (second-order statistics cannot tell a pattern from its
  point reflection; third-order ones can). All are computed exactly, as above. Only if
  every statistic ties is the lowest index taken.

The selection rule, in order:

1. ``E(o) = sum_{p in o + sZ^2} q(x_p^2)``, largest wins;
2. ``C_delta(o) = sum q(x_p x_{p+delta})`` for ``delta`` in ``(0,1), (1,0), (1,1), (1,-1)``;
3. ``T_delta(o) = sum q(x_p^2 x_{p+delta})`` for ``delta`` in ``(0,1), (1,0)``;
4. the smallest flat index ``a * sx + b``.

Here ``q(v) = trunc(v * 2^K)`` on ``v`` computed from ``x / 2^e`` where ``2^e`` is the
smallest power of two above the sample's max ``|x|`` (an exact, shift-invariant scale)
and ``K`` is as large as ``int64`` allows for the component size. Tie-breaking statistics
are computed only when some sample of the batch has a tie after step 1.

**Fast path, same result.** Most samples have one component whose energy is ahead of the
others by far more than any rounding error. :func:`select_origin` therefore first sums
the float32 squares per component in two stages (float32 partial sums along one
dimension, then float64), and bounds the distance of that sum to the exact integer energy
``E(o)`` by the worst-case error of a float sum of non-negative terms (valid for any
summation order) plus the truncation of ``q``. A sample whose winner is ahead by more than
that bound has the same argmax as the exact rule, provably; only the other samples
(near-ties, exact ties, tiny or non-finite values) go through the exact integer
computation. The result is the same function of the input, computed in two passes over
the map instead of eight. Under ``torch.compile`` the fallback is a ``torch.cond`` over the
whole batch instead of a Python branch, so selection causes no graph break.

What no rule can do (see ``docs/exactness.md``): if two candidate origins give inputs that
are *different* but agree in every statistic, the choice is arbitrary; and if ``x`` is
periodic with a period that is not a multiple of the stride, no covariant origin exists at
all. Invariant outputs (classification) are still exact in the second case, because the
candidates are then identical up to a stride-multiple shift; dense outputs may not be.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import Tensor

from ..errors import InputSizeError, NonFiniteInputError

__all__ = [
    "as_pair",
    "check_divisible",
    "exponent_above",
    "polyphase_energy",
    "polyphase_statistics",
    "select_origin",
    "select_origin_and_finiteness",
]

_INT64_BUDGET_BITS = 62
# Eager statistics run over batch chunks of about this many input bytes: their float and
# int64 temporaries then stay in cache instead of being fresh, page-faulting allocations
# several times the size of the map. Per-sample results, so chunking changes no bit.
_CHUNK_BYTES = 1 << 21
_TIE_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))
_THIRD_ORDER_OFFSETS = ((0, 1), (1, 0))


def as_pair(
    value: int | tuple[int, ...] | list[int], name: str = "stride", minimum: int = 1
) -> tuple[int, int]:
    """Return ``value`` as a ``(y, x)`` pair of ints ``>= minimum``."""
    if isinstance(value, int):
        pair = (value, value)
    else:
        pair = tuple(int(v) for v in value)
        if len(pair) == 1:
            pair = (pair[0], pair[0])
    if len(pair) != 2 or min(pair) < minimum:
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {value!r}.")
    return pair  # type: ignore[return-value]


def check_divisible(x: Tensor, stride: tuple[int, int], layer: str) -> None:
    """Raise a clear error unless ``x`` is 4-D and ``stride`` divides its spatial size.

    Exact equivariance needs ``H % sy == 0`` and ``W % sx == 0``; padding silently would
    break it, so we refuse instead.
    """
    if x.dim() != 4:
        raise InputSizeError(
            f"{layer} expects a 4-D input (B, C, H, W), got shape {tuple(x.shape)}. "
            "Add a batch dimension with x.unsqueeze(0) for a single image."
        )
    height, width = x.shape[-2:]
    sy, sx = stride
    if height % sy or width % sx:
        raise InputSizeError(
            f"{layer}: input spatial size {height}x{width} is not divisible by the stride "
            f"{sy}x{sx}. Exact shift equivariance needs every downsampling stride to divide "
            f"the size it sees; for the whole network use sizes that are multiples of its "
            f"total stride (e.g. {_next_multiple(height, sy)}x{_next_multiple(width, sx)} here), "
            "by resizing or cropping the input."
        )


def _next_multiple(value: int, base: int) -> int:
    return max(base, base * round(value / base))


def exponent_above(peak: Tensor) -> Tensor:
    """The smallest integer ``e`` with ``peak < 2 ** e`` (``torch.frexp``'s exponent), as float.

    Computed with ``log2``, ``floor`` and exact comparisons against ``exp2`` (exact on
    integers), so that exported graphs need no bit casts; ``peak`` is clamped to the float32
    normal range (a smaller peak only scales the statistics differently, never wrongly).
    """
    peak = peak.float().clamp(min=2.0**-126, max=2.0**126)
    exponent = torch.floor(torch.log2(peak)) + 1
    exponent = torch.where(torch.exp2(exponent - 1) > peak, exponent - 1, exponent)
    return torch.where(torch.exp2(exponent) <= peak, exponent + 1, exponent)


def _normalised(x: Tensor, num_terms: int, order: int) -> tuple[Tensor, float]:
    """Scale each sample by an exact power of two so that terms of ``order`` fit in int64.

    Returns ``y`` with ``|y| < 2^(K/order)`` and the float multiplier ``2^(K - order*K/order)``
    left to apply after the product (so that every product is formed from exactly scaled
    operands). Scaling by a power of two is exact, and the max of ``|x|`` is shift-invariant.
    """
    budget = _INT64_BUDGET_BITS - max(1, math.ceil(math.log2(max(num_terms, 2))))
    per_factor = min(budget // order, 40)
    xf = x.detach().float()
    peak = xf.abs().amax(dim=(1, 2, 3))
    exponent = exponent_above(peak)  # peak < 2 ** exponent
    scale = torch.exp2((per_factor - exponent).clamp(-126, 127)).view(-1, 1, 1, 1)
    return xf * scale, float(2 ** (budget - order * per_factor))


def _component_view(x: Tensor, stride: tuple[int, int]) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, C, H / sy, sy, W / sx, sx)``; a view for any memory format."""
    sy, sx = stride
    batch, channels, height, width = x.shape
    return x.view(batch, channels, height // sy, sy, width // sx, sx)


def _reduce_components(terms: Tensor, stride: tuple[int, int]) -> Tensor:
    """Sum int64 ``terms`` (B, C, H, W) per polyphase component -> (B, sy * sx).

    One reduction over a strided view; integer sums do not depend on the order.
    """
    return _component_view(terms, stride).sum(dim=(1, 2, 4)).reshape(terms.shape[0], -1)


def _quantise(values: Tensor, multiplier: float) -> Tensor:
    if multiplier != 1.0:
        values = values * multiplier
    return values.to(torch.int64)


def polyphase_energy(x: Tensor, stride: int | tuple[int, int]) -> Tensor:
    """Exact integer l2 energy of every polyphase component.

    Args:
        x: feature map.
        stride: subsampling factor ``s`` or ``(sy, sx)``.

    Returns:
        ``int64`` tensor of shape ``(B, sy * sx)``; entry ``a * sx + b`` is the quantised
        energy of ``x[:, :, a::sy, b::sx]``. It depends only on the multiset of values of
        the component, never on their order.

    Shape:
        - Input: :math:`(B, C, H, W)` with ``H % sy == 0`` and ``W % sx == 0``.
        - Output: :math:`(B, s_y s_x)`.
    """
    pair = as_pair(stride)
    check_divisible(x, pair, "polyphase_energy")
    num_terms = x.shape[1] * (x.shape[2] // pair[0]) * (x.shape[3] // pair[1])
    y, multiplier = _normalised(x, num_terms, order=2)
    return _reduce_components(_quantise(y * y, multiplier), pair)


def polyphase_statistics(x: Tensor, stride: int | tuple[int, int]) -> Tensor:
    """All selection statistics, ``(B, 7, sy * sx)`` int64, in lexicographic priority order.

    Row 0 is :func:`polyphase_energy`; rows 1-4 the neighbour cross-correlations and rows
    5-6 the third-order terms described in the module docstring.
    """
    pair = as_pair(stride)
    check_divisible(x, pair, "polyphase_statistics")
    num_terms = x.shape[1] * (x.shape[2] // pair[0]) * (x.shape[3] // pair[1])
    rows = [polyphase_energy(x, pair)]
    y, multiplier = _normalised(x, num_terms, order=2)
    for dy, dx in _TIE_OFFSETS:
        neighbour = torch.roll(y, shifts=(-dy, -dx), dims=(2, 3))
        rows.append(_reduce_components(_quantise(y * neighbour, multiplier), pair))
    y, multiplier = _normalised(x, num_terms, order=3)
    for dy, dx in _THIRD_ORDER_OFFSETS:
        neighbour = torch.roll(y, shifts=(-dy, -dx), dims=(2, 3))
        rows.append(_reduce_components(_quantise((y * y) * neighbour, multiplier), pair))
    return torch.stack(rows, dim=1)


def _lexicographic_argmax(stats: Tensor, candidates: Tensor) -> Tensor:
    """First index of the lexicographic max of ``stats`` (B, R, N) among ``candidates``."""
    lowest = torch.iinfo(torch.int64).min
    for row in stats.unbind(dim=1):
        masked = row.masked_fill(~candidates, lowest)
        candidates = masked == masked.amax(dim=1, keepdim=True)
    return candidates.to(torch.uint8).argmax(dim=1)


def _gamma(terms: int, unit_roundoff: float) -> float:
    """Worst-case relative error of a float sum of ``terms`` non-negative numbers."""
    return terms * unit_roundoff / (1.0 - terms * unit_roundoff)


def _fast_energy_argmax(x: Tensor, stride: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Argmax of :func:`polyphase_energy` for the samples where a float sum proves it.

    Returns ``(index, decided, finite)``: ``index[b]`` equals the exact rule's choice
    wherever ``decided[b]``; ``finite[b]`` is whether the float sum of squares is finite. With ``t_p = fl32(x_p^2)``, ``T(o) = sum t_p`` (exact real sum) and
    ``c = 2^(budget - 2e)``, every quantised term is ``q_p = trunc(c * t_p)`` (scaling by
    powers of two commutes with float32 rounding; terms that under- or overflow differently
    are below ``1 / c`` once ``max |x| >= 2^-32``), so ``c T(o) - n < E(o) <= c T(o)``. The
    float sum ``S(o)`` has ``|S(o) - T(o)| <= delta T(o)``, and ``n / c <= 4 n max(x^2) /
    2^budget <= slack``. A winner ahead of every other component by
    ``2 delta (S_1 + S_2) + 2 slack`` therefore wins the exact comparison strictly.
    """
    sy, sx = stride
    batch, channels, height, width = x.shape
    rows, cols = height // sy, width // sx
    num_terms = channels * rows * cols
    squares = x.detach().float().square()
    # Float32 partial sums along a dimension that is cheap to reduce for the layout, then
    # float64: ``short`` terms each in float32, ``long`` float64 terms per component.
    if squares.is_contiguous() or not squares.is_contiguous(memory_format=torch.channels_last):
        partial = squares.view(batch, channels, rows, sy, width).sum(dim=2)  # (B, C, sy, W)
        sums = partial.double().view(batch, channels, sy, cols, sx).sum(dim=(1, 3))
        short, long = rows, channels * cols
    else:
        partial = squares.sum(dim=1)  # (B, H, W), channels-last: reduce the contiguous dim
        sums = partial.double().view(batch, rows, sy, cols, sx).sum(dim=(1, 3))
        short, long = channels, rows * cols
    sums = sums.reshape(batch, sy * sx)
    # The extra (1 + 2^-24) covers a compiler that contracts square-and-add into an FMA.
    delta = (1.0 + 2.0**-24) * (1.0 + _gamma(short, 2.0**-24)) * (1.0 + _gamma(long, 2.0**-53)) - 1.0
    budget = _INT64_BUDGET_BITS - max(1, math.ceil(math.log2(max(num_terms, 2))))
    total = sums.sum(dim=1)
    peak_sq = total / ((1.0 - delta) * (1.0 - 2.0**-24))  # >= max x^2
    slack = 4.0 * num_terms * peak_sq * 2.0**-budget
    top = sums.topk(2, dim=1).values
    gap = top[:, 0] - top[:, 1]
    finite = torch.isfinite(total)
    decided = (
        finite
        & (total >= 2.0 * (1.0 + delta) * channels * height * width * 2.0**-64)  # max |x| >= 2^-32
        & (gap > 2.0 * delta * (top[:, 0] + top[:, 1]) + 2.0 * slack)
    )
    return sums.argmax(dim=1), decided, finite


def _by_batch_chunks(fn: Any, x: Tensor, stride: tuple[int, int]) -> Any:
    """``fn(x, stride)`` for a per-sample ``fn``, run on batch chunks of about
    ``_CHUNK_BYTES`` in eager mode (outputs concatenated along dim 0, tuples element-wise)."""
    per_sample = max(1, math.prod(x.shape[1:]) * 4)  # the float32 temporaries' size (any batch size, 0 too)
    size = max(1, _CHUNK_BYTES // per_sample)
    if size >= x.shape[0] or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return fn(x, stride)
    parts = [fn(chunk, stride) for chunk in x.split(size)]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(p) for p in zip(*parts))
    return torch.cat(parts)


def _exact_energy_argmax(x: Tensor, stride: tuple[int, int]) -> Tensor:
    """Flat index of the origin by the exact integer rule (steps 1-4 of the module docs)."""
    return _by_batch_chunks(_exact_energy_argmax_unchunked, x, stride)


def _exact_energy_argmax_unchunked(x: Tensor, stride: tuple[int, int]) -> Tensor:
    # Spatially constant maps (a periodic input whose period the strides so far divide) tie
    # in every statistic, so the rule gives index 0: known without computing any.
    low, high = torch.aminmax(x.detach().flatten(2), dim=2)
    if bool((low == high).all()):
        return torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    energy = polyphase_energy(x, stride)
    best = energy == energy.amax(dim=1, keepdim=True)
    if bool((best.sum(dim=1) > 1).any()):
        return _lexicographic_argmax(polyphase_statistics(x, stride), best)
    return best.to(torch.uint8).argmax(dim=1)


def _exact_index_branch_free(x: Tensor, stride: tuple[int, int]) -> Tensor:
    """The exact rule without a data-dependent branch: every statistic of every sample."""
    stats = polyphase_statistics(x, stride)
    return _lexicographic_argmax(stats, torch.ones_like(stats[:, 0], dtype=torch.bool))


def _exact_index_compiled(flat: Tensor, shape: tuple[int, ...], stride: tuple[int, int]) -> Tensor:
    """:func:`_exact_energy_argmax` under the compiler: a batch of spatially constant maps is
    index 0 (as in eager mode), anything else takes :func:`_exact_index_branch_free`."""
    x = flat.view(shape)
    low, high = torch.aminmax(x.flatten(2), dim=2)
    return torch.cond(
        (low == high).all(),
        lambda f: torch.zeros(shape[0], dtype=torch.int64, device=f.device),
        lambda f: _exact_index_branch_free(f.view(shape), stride),
        (flat,),
    )


def select_origin(x: Tensor, stride: int | tuple[int, int]) -> Tensor:
    """Per-sample MASS origin: the polyphase component chosen by the exact rule above.

    The result is covariant: for integer shifts ``d``,
    ``select_origin(roll(x, d)) == (select_origin(x) + d) % stride`` whenever the chosen
    component is unique under the rule (see the module docstring for the exceptions).
    Runs under autocast (statistics are computed in float32 from the exact upcast of
    bf16/fp16 inputs), on any device, with no Python loop over the batch.

    Args:
        x: feature map.
        stride: subsampling factor ``s`` or ``(sy, sx)``.

    Returns:
        ``int64`` tensor ``(B, 2)`` of ``(oy, ox)`` with ``0 <= oy < sy``, ``0 <= ox < sx``.

    Raises:
        NonFiniteInputError: in eager mode, if a sample holds NaN or Inf (no origin exists).

    Shape:
        - Input: :math:`(B, C, H, W)`, ``H % sy == 0`` and ``W % sx == 0``.
        - Output: :math:`(B, 2)`.

    Example:
        >>> x = torch.zeros(1, 1, 4, 4); x[0, 0, 1, 3] = 1.0
        >>> select_origin(x, 2).tolist()
        [[1, 1]]
    """
    origin, finite = select_origin_and_finiteness(x, stride)
    if not (torch.compiler.is_compiling() or torch.jit.is_tracing()) and not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise NonFiniteInputError(f"select_origin: sample(s) {bad[:8]} hold NaN or Inf; no origin can be chosen.")
    return origin


def _without_autocast(device_type: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast off, entered only when it is on (an exported graph then holds no autocast region)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def select_origin_and_finiteness(x: Tensor, stride: int | tuple[int, int]) -> tuple[Tensor, Tensor]:
    """:func:`select_origin` and a ``(B,)`` bool tensor, ``False`` for samples with NaN or Inf.

    For such samples the origin is arbitrary. In eager mode finiteness is exact; under
    ``torch.compile`` (no host synchronisation) a sample whose squares overflow float32
    (``|x| > 1.8e19``) is also reported as non-finite.
    """
    sy, sx = as_pair(stride)
    batch = x.shape[0]
    check_divisible(x, (sy, sx), "select_origin")
    if sy == 1 and sx == 1:
        origin = torch.zeros(batch, 2, dtype=torch.int64, device=x.device)
        return origin, torch.ones(batch, dtype=torch.bool, device=x.device)
    with _without_autocast(x.device.type):
        index, decided, finite = _by_batch_chunks(_fast_energy_argmax, x, (sy, sx))
        if torch.compiler.is_compiling():
            # torch.cond instead of a Python branch: no graph break. The exact rule then runs
            # on the whole batch, with every statistic for every sample (the lexicographic
            # argmax ignores the tie-breakers of untied samples, so the result is the same).
            shape = tuple(x.shape)
            index = torch.cond(
                decided.all(),
                lambda fast, _: fast.clone(),
                lambda _, flat: _exact_index_compiled(flat, shape, (sy, sx)),
                # Flattened: a 1-D operand has one layout, whatever layout the compiler chose
                # for the map (a channels-last map would not match the branch's traced strides).
                (index, x.detach().reshape(-1)),
            )
        elif not bool(decided.all()):
            rest = (~decided).nonzero().flatten()
            undecided = x.detach().index_select(0, rest)
            finite_rest = torch.isfinite(undecided).flatten(1).all(dim=1)
            finite = finite.index_copy(0, rest, finite_rest)
            if bool(finite_rest.all()):
                exact = _exact_energy_argmax(undecided, (sy, sx))
                index = index.index_copy(0, rest, exact)
    return torch.stack((index // sx, index % sx), dim=1), finite

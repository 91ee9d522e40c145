"""Circularly padded downsampling: fixed phase, MASS and APS, as functions and as layers.

Every downsampling op ``D`` of stride ``s`` (strided conv, max-pool, avg-pool, plain
subsampling) is the subsampling at phase 0 of its stride-1 counterpart ``D1``:
``D(x) = D1(x)[::s, ::s]``. The three *samplings* differ only in which phase is kept:

* ``"fixed"`` (baseline): phase 0, i.e. the original op with circular padding.
* ``"mass"``: choose the origin ``o`` of the **input** (:func:`select_origin`), shift the
  input so that ``o`` sits at (0, 0) and run the original op unchanged:
  ``D(roll(x, -o))``. Computed at stride ``s``, so it costs the same as ``D``.
* ``"aps"`` (adaptive polyphase sampling, Chaman & Dokmanic 2021): compute ``z = D1(x)``
  at full resolution and keep its polyphase component of largest norm.

**Origins are values, never module state.** Every function and layer here takes an optional
``origin`` (a ``(B, 2)`` int64 tensor) and can return the origin it used
(``return_origin=True``). A layer given no origin chooses one from its input (MASS) or
output (APS). Layers that must agree (the main branch and the shortcut of a residual
block) pass one layer's returned origin to the others; :func:`mass_lightning.convert`
wires that from the model's dataflow. So one model can serve many threads, be
re-entered, recomputed by activation checkpointing, compiled and exported.

Anti-aliasing (LPF blur or DDAC) is a stride-1 filter ``A`` applied just before the
subsampling, as in Zhang (2019) and Zou et al. (2020): ``D(x) = A(D1(x))[::s, ::s]``. For a
linear op and a fixed blur ``A`` commutes with ``D1``, so it is computed as ``D(A(x))`` at
stride ``s`` (identical up to float rounding, and ``s^2`` times cheaper); max-pool and DDAC
need ``D1`` at full resolution.

The layers are subclasses of the ``torch.nn`` layers they replace, with the same parameters
and buffers, so state dicts load both ways. A subclass with a ``forward`` of its own
(weight standardisation, parametrizations, LoRA) keeps it: the layer runs that forward on
the circularly padded copy. With circular padding the output size is exactly ``H / s``.

Implementation (CPU). The circular padding is one copy that MASS also uses for the shift:
the samples are grouped by origin (at most ``s * s`` groups), each group's shifted, padded
window is copied into one batch ordered by origin, the op runs once on it, and only the
(smaller) output is put back into the input order. Max-pooling runs on a channels-last
copy, because PyTorch's NCHW max-pool kernel on CPU is an order of magnitude slower than
its channels-last one; the output is NCHW, whatever the input's layout, and its gradient
flows back channels-last. Large batches max-pool in batch chunks, whose padded copies the
C library's allocator reuses instead of mapping fresh pages. None of this changes a value:
copies and maxima are exact. See ``docs/benchmarks/README.md`` for measurements.

**Non-finite inputs.** No origin can be chosen for a sample with NaN or Inf. In eager mode
the layer raises :class:`~mass_lightning.errors.NonFiniteInputError` naming itself. Under
``torch.compile`` or export, where a check would need a host synchronisation, the output
of such a sample is made NaN instead, so a non-finite input never gives a finite output.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..errors import InputSizeError, NonFiniteInputError
from .blur import Blur2d, blur2d
from .circular import _sorted_pad_windows, conv_padding, shift_and_pad
from .kernels import OneDNNConvolutions, conv2d
from .polyphase import as_pair, check_divisible, select_origin_and_finiteness

__all__ = [
    "APSAvgPool2d",
    "APSConv2d",
    "APSMaxPool2d",
    "CircularAvgPool2d",
    "CircularConv2d",
    "CircularMaxPool2d",
    "EquivariantDownsample",
    "MASSAvgPool2d",
    "MASSConv2d",
    "MASSMaxPool2d",
    "SAMPLINGS",
    "Sampling",
    "equivariant_adaptive_pool2d",
    "equivariant_avg_pool2d",
    "equivariant_conv2d",
    "equivariant_max_pool2d",
    "equivariant_subsample",
    "polyphase_select",
    "sample",
    "subsample",
]

Sampling = Literal["fixed", "mass", "aps"]
SAMPLINGS: tuple[str, ...] = ("fixed", "mass", "aps")
Pad4 = tuple[int, int, int, int]


def subsample(z: Tensor, origin: Tensor | None, stride: tuple[int, int]) -> Tensor:
    """Keep the polyphase component ``z[b, :, oy::sy, ox::sx]`` of every sample.

    Shape:
        - Input: :math:`(B, C, H, W)`, origin :math:`(B, 2)` or ``None`` (phase 0).
        - Output: :math:`(B, C, H / s_y, W / s_x)`.
    """
    sy, sx = stride
    if origin is None:
        return z[..., ::sy, ::sx]
    # A select per component (at most s * s of them) instead of a per-sample gather: no
    # index tensors, no host sync, and it keeps the memory format of ``z``.
    flat = (origin[:, 0] * sx + origin[:, 1]).view(-1, 1, 1, 1)
    out = z[..., ::sy, ::sx]
    for oy in range(sy):
        for ox in range(sx):
            if oy or ox:
                out = torch.where(flat == oy * sx + ox, z[..., oy::sy, ox::sx], out)
    return out


def _choose(x: Tensor, stride: tuple[int, int], name: str) -> tuple[Tensor, Tensor | None]:
    """MASS/APS origin of ``x``; raises on non-finite samples in eager mode.

    Returns ``(origin, poison)``: ``poison`` is ``None`` in eager mode, and under the
    compiler a ``(B, 1, 1, 1)`` tensor, NaN for non-finite samples and 0 otherwise, to add
    to the output.
    """
    origin, finite = select_origin_and_finiteness(x, stride)
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return origin, torch.where(finite, 0.0, float("nan")).to(x.dtype).view(-1, 1, 1, 1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise NonFiniteInputError(
            f"{name}: the input of sample(s) {bad[:8]}{'...' if len(bad) > 8 else ''} holds NaN or Inf, so no "
            "shift-equivariant origin can be chosen. Check the input data; in training, a lower learning rate "
            "or gradient clipping usually helps."
        )
    return origin, None


def sample(
    strided: Callable[[Tensor], Any],
    dense: Callable[[Tensor], Tensor] | None,
    x: Tensor,
    stride: tuple[int, int],
    pad: Pad4,
    *,
    sampling: Sampling = "mass",
    origin: Tensor | None = None,
    name: str = "downsampling layer",
    memory_format: torch.memory_format | None = None,
    prefilter: Callable[[Tensor], Tensor] | None = None,
    keep_order: bool = False,
    exact_per_sample: bool = False,
    pointwise: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Any, Tensor]:
    """Run a downsampling op with the given sampling; the core of every layer here.

    Args:
        strided: the op at its stride on a circularly padded (and shifted) input with no
            padding of its own; may return a tuple (values, indices).
        dense: the op at stride 1 (for APS); ``None`` if the op has no stride-1
            counterpart (plain subsampling, space-to-depth), where APS selects on the input
            like MASS.
        x: input feature map.
        stride: ``(sy, sx)``.
        pad: circular padding ``(left, right, top, bottom)`` of the op.
        sampling: ``"fixed"``, ``"mass"`` or ``"aps"``.
        origin: ``(B, 2)`` origin to use instead of choosing one (a shared origin).
        name: the layer, for error messages.
        memory_format: layout of the padded copy on CPU (``None``: NCHW).
        prefilter: a stride-1, shift-equivariant filter that commutes with ``strided``
            (a linear blur before a linear op): applied to the input of the fixed and MASS
            samplings after the origin was chosen from the unfiltered input. APS ignores it
            (``dense`` filters its own output).
        keep_order: run the op on the samples in input order (see :func:`_on_shifted`).
        exact_per_sample: ``strided`` and ``dense`` give each sample the same bits whatever
            the rest of the batch (max-pooling: maxima are exact), so large batches may run
            in chunks (see :func:`_on_shifted_in_chunks`).
        pointwise: for an op that reads one input pixel per output pixel (a 1x1 conv with
            no padding), the op at stride 1: MASS then runs it on the input's polyphase
            component at the origin instead of on a shifted copy of the whole input (the
            same values; a copy ``s * s`` times smaller).

    Returns:
        ``(output of strided, origin)``; the origin is zeros for ``"fixed"``.

    Shape:
        - Input: :math:`(B, C, H, W)` with ``H % sy == 0`` and ``W % sx == 0``.
        - Output: the op's output at :math:`(H / s_y, W / s_x)` and :math:`(B, 2)`.
    """
    check_divisible(x, stride, name)
    if sampling not in SAMPLINGS:
        raise ValueError(f"{name}: sampling must be one of {SAMPLINGS}, got {sampling!r}.")
    poison = None
    shifted = _on_shifted_in_chunks if exact_per_sample and _may_chunk(x) else _on_shifted
    if sampling == "fixed" or stride == (1, 1):
        source = x if prefilter is None else prefilter(x)
        y = shifted(strided, source, None, pad, memory_format)
        return y, torch.zeros(x.shape[0], 2, dtype=torch.int64, device=x.device)
    if sampling == "aps" and dense is not None:
        z = shifted(dense, x, None, pad, memory_format)
        if origin is None:
            origin, poison = _choose(z, stride, name)
        y = subsample(z, origin, stride)
    else:
        if origin is None:
            origin, poison = _choose(x, stride, name)
        source = x if prefilter is None else prefilter(x)
        if pointwise is not None and not any(pad):
            y = pointwise(subsample(source, origin, stride))
        else:
            y = shifted(strided, source, origin, pad, memory_format, keep_order)
    if poison is not None:
        y = tuple(v + poison if v.is_floating_point() else v for v in y) if isinstance(y, tuple) else y + poison
    return y, origin


def _check_origin(origin: Tensor | None, x: Tensor, name: str) -> None:
    if origin is not None and (origin.dim() != 2 or origin.shape != (x.shape[0], 2)):
        raise ValueError(f"{name}: origin must have shape ({x.shape[0]}, 2) for an input of batch size "
                         f"{x.shape[0]}, got {tuple(origin.shape)}.")


def _with_origin(out: Any, origin: Tensor, return_origin: bool) -> Any:
    return (out, origin) if return_origin else out


def _on_shifted(
    op: Callable[[Tensor], Any],
    x: Tensor,
    origin: Tensor | None,
    pad: tuple[int, int, int, int],
    memory_format: torch.memory_format | None = None,
    keep_order: bool = False,
) -> Any:
    """``op(shift_and_pad(x, origin, pad))`` for a per-sample ``op`` (a tensor or a tuple out).

    The samples are shifted group by group (one group per distinct origin) into a batch
    ordered by origin; ``op`` runs once on that batch and only its output is put back into
    the input order, which is cheaper than restoring the (larger) padded input. For
    backward, ``op`` keeps ``x`` instead of the padded copy (see :func:`_saving_unpadded`).

    ``keep_order`` runs ``op`` on the samples in their input order instead: for ops whose
    rounding depends on a sample's position in the batch (matrix products on pooled
    vectors, as in DDAC's channel branch), so that a sample gets the same bits whatever
    the origins of the others.
    """
    if origin is None and not any(pad) and memory_format is None:
        return op(x)
    if keep_order:
        def windows() -> Tensor:
            padded, restore = _sorted_pad_windows(x, origin, pad, memory_format)
            return padded if restore is None else padded.index_select(0, restore)

        padded = windows()
        return _saving_unpadded(op, padded, x, windows) if _can_swap_saved(x) else op(padded)
    padded, restore = _sorted_pad_windows(x, origin, pad, memory_format)
    if _can_swap_saved(x):
        out = _saving_unpadded(op, padded, x, lambda: _sorted_pad_windows(x, origin, pad, memory_format)[0])
    else:
        out = op(padded)
    if restore is None:
        return out
    if isinstance(out, tuple):
        return tuple(o.index_select(0, restore) for o in out)
    return out.index_select(0, restore)


_CHUNK_BYTES = 1 << 24


def _may_chunk(x: Tensor) -> bool:
    """Eager on CPU: where :func:`_on_shifted_in_chunks` helps (accelerators cache memory)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    return x.device.type == "cpu"


def _on_shifted_in_chunks(
    op: Callable[[Tensor], Any],
    x: Tensor,
    origin: Tensor | None,
    pad: tuple[int, int, int, int],
    memory_format: torch.memory_format | None = None,
    keep_order: bool = False,
) -> Any:
    """:func:`_on_shifted` on batch chunks whose padded copy holds about ``_CHUNK_BYTES``.

    The C library's allocator maps a large buffer fresh on every call (each page faults and
    is zeroed on first write) but reuses smaller freed blocks: a 53 MB padded copy for the
    stem max-pool of a ResNet at batch 16 costs more than the pooling itself. Only for ops
    that give each sample the same bits whatever the batch, so the result is unchanged.
    """
    height = x.shape[-2] + pad[2] + pad[3]
    width = x.shape[-1] + pad[0] + pad[1]
    per_sample = max(1, math.prod(x.shape[1:-2]) * height * width * x.element_size())
    size = max(1, _CHUNK_BYTES // per_sample)
    if size >= x.shape[0]:
        return _on_shifted(op, x, origin, pad, memory_format, keep_order)
    origins = [None] * math.ceil(x.shape[0] / size) if origin is None else origin.split(size)
    parts = [_on_shifted(op, part, o, pad, memory_format, keep_order) for part, o in zip(x.split(size), origins)]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(p) for p in zip(*parts))
    return torch.cat(parts)


def _can_swap_saved(x: Tensor) -> bool:
    """Swap saved tensors only where no one else manages them (checkpointing, offloading,
    functorch transforms, the compiler)."""
    if not (torch.is_grad_enabled() and x.requires_grad) or torch.compiler.is_compiling():
        return False
    autograd = torch._C._autograd
    try:
        return autograd._saved_tensors_hooks_is_enabled() and autograd._top_saved_tensors_default_hooks(False) is None
    except AttributeError:  # private API moved: keep the default behaviour
        return False


class _Rebuild:
    """Stands in a graph for a padded copy: rebuilt from the unpadded input in backward."""

    __slots__ = ("rebuild", "source", "version")

    def __init__(self, rebuild: Callable[[], Tensor], source: Tensor) -> None:
        self.rebuild, self.source, self.version = rebuild, source, source._version


def _saving_unpadded(op: Callable[[Tensor], Any], padded: Tensor, x: Tensor, rebuild: Callable[[], Tensor]) -> Any:
    """Run ``op(padded)`` but let autograd keep ``x`` (usually saved anyway, by the ReLU
    before) instead of ``padded``, which is rebuilt in backward: one copy of time against
    one activation of memory per layer. Values and gradients are unchanged."""

    target = weakref.ref(padded)  # autograd keeps the hooks: a strong reference would keep padded

    def pack(tensor: Tensor) -> Any:
        return _Rebuild(rebuild, x) if tensor is target() else tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, _unpack):
        return op(padded)


def _unpack(saved: Any) -> Tensor:
    if not isinstance(saved, _Rebuild):
        return saved
    if saved.source._version != saved.version:
        raise RuntimeError(
            "mass_lightning: the input of a circular conv/pool layer was modified in place after the "
            "layer used it, so its gradient cannot be computed. Use an out-of-place op instead."
        )
    return saved.rebuild()


def _conv_ops(weight: Tensor, bias: Tensor | None, stride: tuple[int, int], dilation: tuple[int, int],
              groups: int) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    def strided(p: Tensor) -> Tensor:
        return conv2d(p, weight, bias, stride, dilation, groups)

    def dense(p: Tensor) -> Tensor:
        return conv2d(p, weight, bias, 1, dilation, groups)

    return strided, dense


def equivariant_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    *,
    sampling: Sampling = "mass",
    origin: Tensor | None = None,
    return_origin: bool = False,
    name: str = "conv2d",
) -> Tensor | tuple[Tensor, Tensor]:
    """``F.conv2d`` with circular padding and the given sampling (see the module docs).

    ``padding`` is the original op's: its leading side is kept, so the weights mean the
    same thing; the output size is always ``H / s``.

    Returns:
        The output, and the origin used if ``return_origin``.

    Shape:
        - Input: :math:`(B, C_{in}, H, W)` with ``H, W`` divisible by the stride.
        - Output: :math:`(B, C_{out}, H / s, W / s)`, origin :math:`(B, 2)`.

    Example:
        >>> w = torch.randn(8, 3, 3, 3)
        >>> y, o = equivariant_conv2d(torch.randn(2, 3, 8, 12), w, stride=2, padding=1, return_origin=True)
        >>> y.shape, o.shape
        (torch.Size([2, 8, 4, 6]), torch.Size([2, 2]))
    """
    stride, dilation = as_pair(stride), as_pair(dilation, "dilation")
    pad = conv_padding(tuple(weight.shape[-2:]), dilation, padding if isinstance(padding, str)
                       else as_pair(padding, "padding", 0))
    _check_origin(origin, x, name)
    strided, dense = _conv_ops(weight, bias, stride, dilation, groups)
    y, origin = sample(strided, dense, x, stride, pad, sampling=sampling, origin=origin, name=name)
    return _with_origin(y, origin, return_origin)


def _max_pool_ops(kernel_size: Any, stride: tuple[int, int], dilation: Any, with_indices: bool,
                  antialias: nn.Module | None) -> tuple[Callable[[Tensor], Any], Callable[[Tensor], Tensor]]:
    # Outputs are NCHW (a channels-last padded copy gives channels-last outputs), converted
    # before the batch order is restored, so that gradients reach the kernel channels-last.
    def dense(p: Tensor) -> Tensor:
        z = _to_nchw(F.max_pool2d(p, kernel_size, 1, 0, dilation))
        return z if antialias is None else antialias(z)

    def strided(p: Tensor) -> Any:
        if antialias is not None:
            return dense(p)[..., :: stride[0], :: stride[1]]
        if with_indices:
            values, flat = F.max_pool2d(p, kernel_size, stride, 0, dilation, return_indices=True)
            return _to_nchw(values), flat.contiguous()
        return _to_nchw(F.max_pool2d(p, kernel_size, stride, 0, dilation))

    return strided, dense


def _pool_pad(kernel_size: Any, dilation: Any, padding: Any) -> Pad4:
    return conv_padding(as_pair(kernel_size, "kernel_size"), as_pair(dilation, "dilation"),
                        padding if isinstance(padding, str) else as_pair(padding, "padding", 0))


def equivariant_max_pool2d(
    x: Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
    *,
    sampling: Sampling = "mass",
    origin: Tensor | None = None,
    return_origin: bool = False,
    antialias: nn.Module | None = None,
    name: str = "max_pool2d",
) -> Any:
    """``F.max_pool2d`` with circular padding (wrapped-around values, not ``-inf``) and a sampling.

    ``ceil_mode`` has no effect: the output size is always ``H / s``. With
    ``return_indices`` the indices address the ``H x W`` input after the MASS shift, as
    :func:`torch.nn.functional.max_unpool2d` expects; undo the shift with the origin
    (:class:`~mass_lightning.layers.MASSMaxUnpool2d`).

    Returns:
        The output (``(values, indices)`` with ``return_indices``), and the origin if
        ``return_origin``.

    Shape:
        - Input: :math:`(B, C, H, W)` with ``H, W`` divisible by the stride.
        - Output: :math:`(B, C, H / s, W / s)`.
    """
    stride = as_pair(stride if stride is not None else kernel_size)
    _check_origin(origin, x, name)
    if return_indices and (antialias is not None or sampling == "aps"):
        raise ValueError(f"{name}: max-unpooling indices are not defined with anti-aliasing or APS; use MASS "
                         "without anti-aliasing.")
    pad = _pool_pad(kernel_size, dilation, padding)
    strided, dense = _max_pool_ops(kernel_size, stride, dilation, return_indices, antialias)
    # Channels-last on CPU: the same maxima, an order of magnitude faster kernel.
    fmt = torch.channels_last if _prefer_nhwc(x) else None
    out, origin = sample(strided, dense, x, stride, pad, sampling=sampling, origin=origin, name=name,
                         memory_format=fmt, keep_order=antialias is not None and not isinstance(antialias, Blur2d),
                         exact_per_sample=antialias is None)
    if return_indices:
        values, flat = out
        out = (values, _unpad_indices(flat, x.shape[-1] + pad[0] + pad[1], x.shape[-2:], pad))
    return _with_origin(out, origin, return_origin)


def _to_nchw(x: Tensor) -> Tensor:
    """``x.contiguous()``; the gradient of a channels-last ``x`` flows back channels-last (the
    channels-last max-pool backward kernel is three times slower on an NCHW gradient)."""
    if x.is_contiguous() or not (torch.is_grad_enabled() and x.requires_grad) or torch.compiler.is_compiling():
        return x.contiguous()
    return _ChannelsLastToNCHW.apply(x)


class _ChannelsLastToNCHW(torch.autograd.Function):
    """``x.contiguous()`` whose backward returns the gradient channels-last."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad.contiguous(memory_format=torch.channels_last)


def equivariant_avg_pool2d(
    x: Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] | str = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
    *,
    sampling: Sampling = "mass",
    origin: Tensor | None = None,
    return_origin: bool = False,
    antialias: nn.Module | None = None,
    name: str = "avg_pool2d",
) -> Tensor | tuple[Tensor, Tensor]:
    """``F.avg_pool2d`` with circular padding (every window averages real values) and a sampling.

    ``ceil_mode`` and ``count_include_pad`` have no effect: windows are always full.

    Shape:
        - Input: :math:`(B, C, H, W)` with ``H, W`` divisible by the stride.
        - Output: :math:`(B, C, H / s, W / s)`.
    """
    stride = as_pair(stride if stride is not None else kernel_size)
    _check_origin(origin, x, name)
    pad = _pool_pad(kernel_size, 1, padding)
    strided, dense, prefilter = _avg_pool_ops(kernel_size, stride, divisor_override, antialias)
    y, origin = sample(strided, dense, x, stride, pad, sampling=sampling, origin=origin, name=name,
                       prefilter=prefilter, keep_order=antialias is not None and not isinstance(antialias, Blur2d))
    return _with_origin(y, origin, return_origin)


def _avg_pool_ops(kernel_size: Any, stride: tuple[int, int], divisor_override: int | None,
                  antialias: nn.Module | None) -> tuple[Callable, Callable, Callable | None]:
    linear = antialias is None or isinstance(antialias, Blur2d)

    def pool(p: Tensor, s: tuple[int, int]) -> Tensor:
        return F.avg_pool2d(p, kernel_size, s, 0, False, True, divisor_override)

    def dense(p: Tensor) -> Tensor:
        z = pool(p, (1, 1))
        return z if antialias is None else antialias(z)

    if linear:
        return (lambda p: pool(p, stride)), dense, antialias
    return (lambda p: dense(p)[..., :: stride[0], :: stride[1]]), dense, None


def equivariant_adaptive_pool2d(
    x: Tensor,
    output_size: int | tuple[int, int],
    *,
    average: bool = True,
    sampling: Sampling = "mass",
    origin: Tensor | None = None,
    return_origin: bool = False,
    name: str = "adaptive_pool2d",
) -> Tensor | tuple[Tensor, Tensor]:
    """Adaptive pooling into ``output_size`` bins as a non-overlapping pooling that MASS/APS can
    sample: exact when the bins tile the map (``H % bins == 0``), refused otherwise.

    ``F.adaptive_avg_pool2d`` into fixed bins sees the absolute position; with bins that tile
    the map it is an average (or max) pool with kernel = stride = ``H / bins``, whose
    sampling phase MASS chooses. Pyramid pooling (PSPNet, UPerNet) upsamples the result
    back, undoing the origin.

    Shape:
        - Input: :math:`(B, C, H, W)` with ``H % b_y == 0`` and ``W % b_x == 0``.
        - Output: :math:`(B, C, b_y, b_x)`.
    """
    bins = as_pair(output_size, "output_size")
    height, width = x.shape[-2:]
    if height % bins[0] or width % bins[1]:
        raise InputSizeError(
            f"{name}: pools a {height}x{width} map into {bins[0]}x{bins[1]} bins, which is shift-equivariant only "
            f"when the bins tile the map. Use inputs whose size makes this map a multiple of {bins[0]}x{bins[1]}."
        )
    stride = (height // bins[0], width // bins[1])
    if average:
        return equivariant_avg_pool2d(x, stride, stride, 0, sampling=sampling, origin=origin,
                                      return_origin=return_origin, name=name)
    return equivariant_max_pool2d(x, stride, stride, 0, sampling=sampling, origin=origin,
                                  return_origin=return_origin, name=name)


def polyphase_select(
    x: Tensor,
    stride: int | tuple[int, int],
    blur: int = 1,
    *,
    origin: Tensor | None = None,
    return_origin: bool = False,
    name: str = "polyphase_select",
) -> Tensor | tuple[Tensor, Tensor]:
    """Adaptive polyphase sampling of a map itself: blur it (binomial, ``blur`` taps; 1 = none),
    then keep the component of largest norm (or ``origin``'s). The selection of the official
    APS code (``ApsPool``), placed after a stride-1 conv, its BatchNorm and activation.

    Shape:
        - Input: :math:`(B, C, H, W)` with ``H, W`` divisible by the stride.
        - Output: :math:`(B, C, H / s_y, W / s_x)`.
    """
    stride = as_pair(stride)
    check_divisible(x, stride, name)
    _check_origin(origin, x, name)
    z = x if blur == 1 else blur2d(x, blur)
    poison = None
    if origin is None:
        origin, poison = _choose(z, stride, name)
    y = subsample(z, origin, stride)
    if poison is not None:
        y = y + poison
    return _with_origin(y, origin, return_origin)


def equivariant_subsample(
    x: Tensor,
    stride: int | tuple[int, int],
    offset: tuple[int, int] = (0, 0),
    *,
    sampling: Sampling = "mass",
    origin: Tensor | None = None,
    return_origin: bool = False,
    name: str = "subsample",
) -> Tensor | tuple[Tensor, Tensor]:
    """``x[..., a::sy, b::sx]`` (``offset = (a, b)``) taken at the origin: pixel ``i`` is
    ``x[sy * i + oy + a]`` (indices modulo the size). APS and MASS coincide here.

    Shape:
        - Input: :math:`(B, C, H, W)` with ``H, W`` divisible by the stride.
        - Output: :math:`(B, C, H / s_y, W / s_x)`.
    """
    stride = as_pair(stride)
    check_divisible(x, stride, name)
    _check_origin(origin, x, name)
    poison = None
    if sampling == "fixed":
        origin = torch.zeros(x.shape[0], 2, dtype=torch.int64, device=x.device)
    elif origin is None:
        origin, poison = _choose(x, stride, name)
    start = origin + torch.tensor(offset, dtype=origin.dtype, device=origin.device)
    y = shift_and_pad(x, start)[..., :: stride[0], :: stride[1]]
    if poison is not None:
        y = y + poison
    return _with_origin(y, origin, return_origin)


class EquivariantDownsample:
    """Mixin of the circular conv and pooling layers: sampling, anti-aliasing, naming.

    Subclasses set :attr:`sampling` and implement :meth:`_ops`, which returns the
    ``(strided, dense, prefilter, memory_format)`` arguments of :func:`sample`.

    Attributes:
        antialias: optional stride-1 low-pass filter applied before subsampling.
        name: how errors refer to this layer (:func:`mass_lightning.convert` sets the
            module's path in the model); the class and its arguments otherwise.
    """

    sampling: ClassVar[Sampling] = "fixed"
    antialias: nn.Module | None
    name: str | None

    def _setup_equivariance(self, antialias: nn.Module | None) -> None:
        self.antialias = antialias
        self.name = None

    def _stride_pair(self) -> tuple[int, int]:
        return as_pair(self.stride)  # type: ignore[attr-defined]

    def _pad(self) -> Pad4:
        raise NotImplementedError

    def _ops(self) -> tuple[Callable[[Tensor], Any], Callable[[Tensor], Tensor] | None,
                            Callable[[Tensor], Tensor] | None, torch.memory_format | None]:
        raise NotImplementedError

    def _widens(self, x: Tensor) -> bool:
        """Whether the output is larger than the padded input; the input is then put back in
        the batch order instead of the output (see :func:`_on_shifted`). Same bits either way."""
        return False

    def _describe(self) -> str:
        return self.name or f"{type(self).__name__}({self.extra_repr()})"  # type: ignore[attr-defined]

    def _sample(self, x: Tensor, origin: Tensor | None) -> tuple[Any, Tensor]:
        name = self._describe()
        _check_origin(origin, x, name)
        strided, dense, prefilter, fmt = self._ops()
        keep_order = (self.antialias is not None and not isinstance(self.antialias, Blur2d)) or self._widens(x)
        return sample(strided, dense, x, self._stride_pair(), self._pad(), sampling=self.sampling,
                      origin=origin, name=name, memory_format=fmt, prefilter=prefilter, keep_order=keep_order,
                      pointwise=self._pointwise())

    def _pointwise(self) -> Callable[[Tensor], Tensor] | None:
        """The op at stride 1 if it reads one input pixel per output pixel (see :func:`sample`)."""
        return None


def _share_state(new: nn.Module, module: nn.Module) -> None:
    """``new`` takes ``module``'s attributes; parameters and buffers are the same dicts, so
    both see every later change (``.to()``, ``load_state_dict(assign=True)``)."""
    new.__dict__.update(module.__dict__)
    new._modules = dict(module._modules)  # own dict: an anti-aliasing filter may be added


def _runs_own_forward(module: nn.Module, base: type[nn.Module]) -> bool:
    """Whether ``module`` computes something else than ``base.forward`` (subclass or parametrization)."""
    return parametrize.is_parametrized(module) or type(module).forward is not base.forward


class CircularConv2d(EquivariantDownsample, nn.Conv2d):
    """``nn.Conv2d`` with circular padding; the baseline (phase-0) sampling when strided.

    The padding is recomputed from ``padding``, ``kernel_size`` and ``dilation`` on every
    call, so patching them in place (as smp's ``make_dilated`` does) stays correct.
    Padding larger than the input wraps around more than once.

    Args:
        *args: as for :class:`torch.nn.Conv2d` (``padding_mode`` is forced to ``"circular"``).
        antialias: optional stride-1 filter (:class:`Blur2d` or :class:`DDAC`) applied
            before subsampling.

    Shape:
        - Input: :math:`(B, C_{in}, H, W)` with ``H, W`` divisible by the stride.
        - Output: :math:`(B, C_{out}, H / s, W / s)`; with ``return_origin=True`` also the
          origin :math:`(B, 2)`.

    Example:
        >>> conv = MASSConv2d(3, 8, 3, stride=2, padding=1)
        >>> conv(torch.randn(2, 3, 8, 12)).shape
        torch.Size([2, 8, 4, 6])
        >>> y, origin = conv(torch.randn(2, 3, 8, 12), return_origin=True)  # share `origin` with a shortcut
    """

    def __init__(self, *args, antialias: nn.Module | None = None, **kwargs) -> None:
        kwargs["padding_mode"] = "circular"
        super().__init__(*args, **kwargs)
        self._setup_equivariance(antialias)
        self.__dict__["_own_forward"] = None

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        antialias: nn.Module | None = None,
        *,
        padding: tuple[int, int] | str | None = None,
        own_forward: bool | None = None,
    ) -> CircularConv2d:
        """Same parameters (shared, not copied) and hyper-parameters as ``conv``.

        Args:
            conv: the conv to make circular (any ``nn.Conv2d``, subclasses included).
            antialias: optional stride-1 filter before subsampling.
            padding: the leading padding to use instead of ``conv.padding`` (for convs that
                compute theirs at run time, like TF "same" padding).
            own_forward: run ``conv``'s own ``forward`` on the padded copy (weight
                standardisation, parametrizations, LoRA). ``None``: when ``conv`` overrides
                ``forward`` or is parametrized.
        """
        new = cls.__new__(cls)
        _share_state(new, conv)
        new.__dict__["_source_class"] = type(conv)
        if padding is not None:
            new.padding = padding
        new.padding_mode = "circular"
        new._setup_equivariance(antialias)
        if own_forward is None:
            own_forward = _runs_own_forward(conv, nn.Conv2d)
        new.__dict__["_own_forward"] = _inner_convs(conv, new.training) if own_forward else None
        return new

    def train(self, mode: bool = True) -> CircularConv2d:
        super().train(mode)
        for inner in self.__dict__.get("_own_forward") or ():
            inner.train(mode)
        return self

    def _pad(self) -> Pad4:
        return conv_padding(self.kernel_size, self.dilation, self.padding)

    def _widens(self, x: Tensor) -> bool:
        if x.dim() != 4:
            return False
        left, right, top, bottom = self._pad()
        sy, sx = self._stride_pair()
        height, width = x.shape[-2:]
        padded = self.in_channels * (height + top + bottom) * (width + left + right)
        return self.out_channels * (height // sy) * (width // sx) > padded

    def _check_channels(self, x: Tensor) -> None:
        if x.dim() == 4 and x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self._describe()}: expected {self.in_channels} input channels, got input of "
                f"shape {tuple(x.shape)}."
            )

    def _ops(self):
        inner = self.__dict__.get("_own_forward")
        if inner is not None:
            strided, dense = (_with_onednn(m) for m in inner)
        else:
            strided, dense = _conv_ops(self.weight, self.bias, self._stride_pair(), self.dilation, self.groups)
        if self.antialias is None or isinstance(self.antialias, Blur2d):
            post = dense if self.antialias is None else (lambda p: self.antialias(dense(p)))
            return strided, post, self.antialias, None
        # A non-linear filter (DDAC) runs on the full-resolution output.
        filtered = lambda p: self.antialias(dense(p))  # noqa: E731
        stride = self._stride_pair()
        return (lambda p: filtered(p)[..., :: stride[0], :: stride[1]]), filtered, None, None

    def _pointwise(self) -> Callable[[Tensor], Tensor] | None:
        if self.kernel_size != (1, 1) or self.__dict__.get("_own_forward") is not None or not (
                self.antialias is None or isinstance(self.antialias, Blur2d)):
            return None
        return _conv_ops(self.weight, self.bias, (1, 1), self.dilation, self.groups)[0]

    def forward(self, x: Tensor, origin: Tensor | None = None, return_origin: bool = False) -> Any:
        self._check_channels(x)
        y, origin = self._sample(x, origin)
        return _with_origin(y, origin, return_origin)


def _with_onednn(module: nn.Module) -> Callable[[Tensor], Tensor]:
    """``module``'s own forward with its unpadded convolutions computed alike at every pixel."""

    def run(p: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            return module(p)
        with OneDNNConvolutions():
            return module(p)

    return run


def _shallow_copy(module: nn.Module) -> nn.Module:
    """A new module object with the same attributes (parametrized modules refuse ``copy.copy``)."""
    new = object.__new__(type(module))
    new.__dict__.update(module.__dict__)
    return new


def _inner_convs(conv: nn.Conv2d, training: bool) -> tuple[nn.Conv2d, nn.Conv2d]:
    """Two views of ``conv`` (its class and forward, the same parameter dicts) that run on a
    padded copy: at the conv's stride and at stride 1. Not submodules: no state-dict keys."""
    strided = _shallow_copy(conv)
    strided.__dict__["padding"] = (0, 0)
    strided.__dict__["padding_mode"] = "zeros"
    if getattr(strided, "same_pad", False):  # timm's *Same convs pad at run time
        strided.__dict__["same_pad"] = False
    dense = _shallow_copy(strided)
    dense.__dict__["stride"] = (1, 1)
    strided.train(training)
    dense.train(training)
    return strided, dense


class CircularMaxPool2d(EquivariantDownsample, nn.MaxPool2d):
    """``nn.MaxPool2d`` with circular padding (the wrapped-around values, not ``-inf``).

    With ``return_indices=True`` the indices address the ``H x W`` input after the MASS
    shift, as :func:`torch.nn.functional.max_unpool2d` expects; pass the origin to
    :class:`~mass_lightning.layers.MASSMaxUnpool2d` to undo the shift.

    Shape:
        - Input: :math:`(B, C, H, W)` with ``H, W`` divisible by the stride.
        - Output: :math:`(B, C, H / s, W / s)`.

    Example:
        >>> pool = MASSMaxPool2d(3, stride=2, padding=1)
        >>> pool(torch.randn(1, 4, 8, 8)).shape
        torch.Size([1, 4, 4, 4])
    """

    def __init__(self, *args, antialias: nn.Module | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.stride is None:
            self.stride = self.kernel_size
        self._setup_equivariance(antialias)

    @classmethod
    def from_pool(cls, pool: nn.MaxPool2d, antialias: nn.Module | None = None, *,
                  padding: tuple[int, int] | None = None) -> CircularMaxPool2d:
        """Same hyper-parameters as ``pool`` (``padding`` overrides its leading padding)."""
        new = cls(pool.kernel_size, pool.stride or pool.kernel_size, pool.padding if padding is None else padding,
                  pool.dilation, return_indices=pool.return_indices, antialias=antialias)
        new.__dict__["_source_class"] = type(pool)
        return new

    def _pad(self) -> Pad4:
        return _pool_pad(self.kernel_size, self.dilation, self.padding)

    def forward(self, x: Tensor, origin: Tensor | None = None, return_origin: bool = False) -> Any:
        out = equivariant_max_pool2d(
            x, self.kernel_size, self.stride, self.padding, self.dilation, return_indices=self.return_indices,
            sampling=self.sampling, origin=origin, return_origin=True, antialias=self.antialias,
            name=self._describe(),
        )
        return out if return_origin else out[0]


def _prefer_nhwc(x: Tensor) -> bool:
    """Max-pool on CPU in channels-last layout (same maxima, much faster kernel), output NCHW."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def _unpad_indices(flat: Tensor, padded_width: int, size: torch.Size, pad: Pad4) -> Tensor:
    """Map flat indices into the padded map to flat indices into the unpadded ``H x W`` map."""
    left, _, top, _ = pad
    height, width = size
    rows = (torch.div(flat, padded_width, rounding_mode="floor") - top).remainder(height)
    cols = (flat.remainder(padded_width) - left).remainder(width)
    return rows * width + cols


class CircularAvgPool2d(EquivariantDownsample, nn.AvgPool2d):
    """``nn.AvgPool2d`` with circular padding (every window averages real values).

    Shape:
        - Input: :math:`(B, C, H, W)` with ``H, W`` divisible by the stride.
        - Output: :math:`(B, C, H / s, W / s)`.
    """

    def __init__(self, *args, antialias: nn.Module | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.stride is None:
            self.stride = self.kernel_size
        self._setup_equivariance(antialias)

    @classmethod
    def from_pool(cls, pool: nn.AvgPool2d, antialias: nn.Module | None = None, *,
                  padding: tuple[int, int] | None = None) -> CircularAvgPool2d:
        """Same hyper-parameters as ``pool`` (``padding`` overrides its leading padding)."""
        new = cls(pool.kernel_size, pool.stride or pool.kernel_size, pool.padding if padding is None else padding,
                  divisor_override=pool.divisor_override, antialias=antialias)
        new.__dict__["_source_class"] = type(pool)
        return new

    def _pad(self) -> Pad4:
        return _pool_pad(self.kernel_size, 1, self.padding)

    def forward(self, x: Tensor, origin: Tensor | None = None, return_origin: bool = False) -> Any:
        return equivariant_avg_pool2d(
            x, self.kernel_size, self.stride, self.padding, divisor_override=self.divisor_override,
            sampling=self.sampling, origin=origin, return_origin=return_origin, antialias=self.antialias,
            name=self._describe(),
        )


class MASSConv2d(CircularConv2d):
    """Strided conv whose input is first shifted to its MASS origin (see module docs)."""

    sampling = "mass"


class APSConv2d(CircularConv2d):
    """Conv at stride 1, then the polyphase component of largest norm (APS)."""

    sampling = "aps"


class MASSMaxPool2d(CircularMaxPool2d):
    """Max-pool whose input is first shifted to its MASS origin."""

    sampling = "mass"


class APSMaxPool2d(CircularMaxPool2d):
    """Max-pool at stride 1, then the polyphase component of largest norm (APS)."""

    sampling = "aps"


class MASSAvgPool2d(CircularAvgPool2d):
    """Avg-pool whose input is first shifted to its MASS origin."""

    sampling = "mass"


class APSAvgPool2d(CircularAvgPool2d):
    """Avg-pool at stride 1, then the polyphase component of largest norm (APS)."""

    sampling = "aps"

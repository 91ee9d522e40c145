"""Circularly padded downsampling layers: fixed phase, MASS and APS.

Every downsampling op ``D`` of stride ``s`` (strided conv, max-pool, avg-pool) is the
subsampling at phase 0 of its stride-1 counterpart ``D1``: ``D(x) = D1(x)[::s, ::s]``.
The three *samplings* differ only in which phase is kept:

* ``"fixed"`` (baseline): phase 0, i.e. the original op with circular padding.
* ``"mass"``: choose the origin ``o`` of the **input** (:func:`select_origin`), shift the
  input so that ``o`` sits at (0, 0) and run the original op unchanged:
  ``D(roll(x, -o))``. Computed at stride ``s``, so it costs the same as ``D``.
* ``"aps"`` (adaptive polyphase sampling, Chaman & Dokmanic 2021): compute ``z = D1(x)``
  at full resolution and keep its polyphase component of largest norm.

Anti-aliasing (LPF blur or DDAC) is a stride-1 filter ``A`` applied just before the
subsampling, as in Zhang (2019) and Zou et al. (2020): ``D(x) = A(D1(x))[::s, ::s]``. For a
linear op and a fixed blur ``A`` commutes with ``D1``, so it is computed as ``D(A(x))`` at
stride ``s`` (identical up to float rounding, and ``s^2`` times cheaper); max-pool and DDAC
need ``D1`` at full resolution.

All layers here are subclasses of the ``torch.nn`` layers they replace, with the same
parameters and buffers, so state dicts load both ways. With circular padding the output
size is exactly ``H / s`` (``ceil_mode`` and ``count_include_pad`` have no effect).

Implementation (CPU). The circular padding is one copy that MASS also uses for the shift:
the samples are grouped by origin (at most ``s * s`` groups), each group's shifted, padded
window is copied into one batch ordered by origin, the op runs once on it, and only the
(smaller) output is put back into the input order. Max-pooling runs on a channels-last
copy, because PyTorch's NCHW max-pool kernel on CPU is an order of magnitude slower than
its channels-last one; the output is NCHW, whatever the input's layout. None of this changes a
value: copies and maxima are exact. See ``docs/benchmarks/README.md`` for measurements.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from typing import Any, ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blur import Blur2d
from .circular import _sorted_pad_windows, conv_padding
from .polyphase import as_pair, check_divisible, select_origin
from .scope import OriginScope

__all__ = [
    "APSAvgPool2d",
    "APSConv2d",
    "APSMaxPool2d",
    "CircularAvgPool2d",
    "CircularConv2d",
    "CircularMaxPool2d",
    "DownsampleState",
    "EquivariantDownsample",
    "MASSAvgPool2d",
    "MASSConv2d",
    "MASSMaxPool2d",
    "Sampling",
    "subsample",
]

Sampling = Literal["fixed", "mass", "aps"]
_HISTORY_LIMIT = 64


class DownsampleState(NamedTuple):
    """What a downsampling call leaves for its paired upsampling layer.

    Attributes:
        origin: ``(B, 2)`` offsets in input pixels of the kept phase.
        input_size: ``(H, W)`` of the input.
        indices: max-pool argmax indices into the shifted ``H x W`` input, or ``None``.
    """

    origin: Tensor
    input_size: tuple[int, int]
    indices: Tensor | None = None


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


class EquivariantDownsample:
    """Mixin with the sampling logic shared by the conv and pooling layers.

    Subclasses set :attr:`sampling` and implement :meth:`_full` (the stride-1 output,
    anti-aliasing included) and :meth:`_strided` (phase-0 output of an input already
    shifted to its origin, computed at stride ``s``).

    Attributes:
        antialias: optional stride-1 low-pass filter applied before subsampling.
        scope: an :class:`OriginScope` shared with the other downsamplers of a block.
        last_origin: ``(B, 2)`` origin of the latest call (``None`` before the first).
    """

    sampling: ClassVar[Sampling] = "fixed"
    antialias: nn.Module | None

    def _setup_equivariance(self, antialias: nn.Module | None) -> None:
        self.antialias = antialias
        self.scope: OriginScope | None = None
        self.last_origin: Tensor | None = None
        self._record = False
        self._history: list[DownsampleState] = []

    # -- subclass API -------------------------------------------------------------------
    def _stride_pair(self) -> tuple[int, int]:
        return as_pair(self.stride)  # type: ignore[attr-defined]

    def _full(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _strided(self, x: Tensor, origin: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Phase-0 output of ``roll(x, -origin)``; returns ``(y, indices_or_None)``."""
        raise NotImplementedError

    @property
    def _linear_antialias(self) -> bool:
        return self.antialias is None or isinstance(self.antialias, Blur2d)

    # -- pairing --------------------------------------------------------------------------
    def enable_recording(self) -> None:
        """Keep a :class:`DownsampleState` per call for a paired upsampling layer."""
        self._record = True

    def pop_state(self) -> DownsampleState:
        """Latest unconsumed call's state (last in, first out), for paired upsampling."""
        if not self._history:
            raise RuntimeError(
                f"{type(self).__name__}: no stored origin to undo. A paired upsampling layer "
                "must run after its downsampling layer, once per downsampling call."
            )
        return self._history.pop()

    def clear_states(self) -> None:
        self._history.clear()

    def _remember(self, state: DownsampleState) -> None:
        self.last_origin = state.origin
        if not self._record:
            return
        if len(self._history) >= _HISTORY_LIMIT:
            warnings.warn(
                f"{type(self).__name__}: {_HISTORY_LIMIT} downsampling states were never consumed "
                "by a paired upsampling layer; dropping the oldest. Call clear_states() between "
                "forward passes that do not upsample.",
                stacklevel=3,
            )
            self._history.pop(0)
        self._history.append(state)

    # -- forward ----------------------------------------------------------------------------
    def _select(self, x: Tensor, stride: tuple[int, int]) -> Tensor:
        if self.scope is not None:
            shared = self.scope.lookup(stride, x.shape[0])
            if shared is not None:
                return shared
        origin = select_origin(x, stride)
        if self.scope is not None:
            self.scope.store(origin, stride)
        return origin

    def _equivariant_forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        stride = self._stride_pair()
        check_divisible(x, stride, self._describe())
        if stride == (1, 1):
            return self._strided(x, None)
        if self.sampling == "aps":
            z = self._full(x)
            origin = self._select(z, stride)
            y, indices = subsample(z, origin, stride), None
        elif self.sampling == "mass":
            origin = self._select(x, stride)
            y, indices = self._strided(x, origin)
        else:
            origin = torch.zeros(x.shape[0], 2, dtype=torch.int64, device=x.device)
            y, indices = self._strided(x, None)
        self._remember(DownsampleState(origin, (x.shape[-2], x.shape[-1]), indices))
        return y, indices

    def _describe(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"  # type: ignore[attr-defined]

    def _antialiased_strided(self, x: Tensor, origin: Tensor | None) -> tuple[Tensor, None]:
        """Fallback for non-commuting filters: full-resolution op, then subsample."""
        stride = self._stride_pair()
        return subsample(self._full(x), origin, stride), None


def _on_shifted(
    op: Callable[[Tensor], Any],
    x: Tensor,
    origin: Tensor | None,
    pad: tuple[int, int, int, int],
    memory_format: torch.memory_format | None = None,
) -> Any:
    """``op(shift_and_pad(x, origin, pad))`` for a per-sample ``op`` (a tensor or a tuple out).

    The samples are shifted group by group (one group per distinct origin) into a batch
    ordered by origin; ``op`` runs once on that batch and only its output is put back into
    the input order, which is cheaper than restoring the (larger) padded input. For
    backward, ``op`` keeps ``x`` instead of the padded copy (see :func:`_saving_unpadded`).
    """
    if origin is None and not any(pad) and memory_format is None:
        return op(x)
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
        - Output: :math:`(B, C_{out}, H / s, W / s)`.

    Example:
        >>> conv = MASSConv2d(3, 8, 3, stride=2, padding=1)
        >>> conv(torch.randn(2, 3, 8, 12)).shape
        torch.Size([2, 8, 4, 6])
    """

    def __init__(self, *args, antialias: nn.Module | None = None, **kwargs) -> None:
        kwargs["padding_mode"] = "circular"
        super().__init__(*args, **kwargs)
        self._setup_equivariance(antialias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, antialias: nn.Module | None = None) -> CircularConv2d:
        """Same parameters (shared, not copied) and hyper-parameters as ``conv``."""
        new = cls.__new__(cls)
        new.__dict__.update(conv.__dict__)
        new._parameters = dict(conv._parameters)
        new._buffers = dict(conv._buffers)
        new._modules = dict(conv._modules)
        new.padding_mode = "circular"
        new._setup_equivariance(antialias)
        return new

    def _pad(self) -> tuple[int, int, int, int]:
        return conv_padding(self.kernel_size, self.dilation, self.padding)

    def _check_channels(self, x: Tensor) -> None:
        if x.dim() == 4 and x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self._describe()}: expected {self.in_channels} input channels, got input of "
                f"shape {tuple(x.shape)}."
            )

    def _conv(self, x: Tensor, stride: tuple[int, int]) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, stride, 0, self.dilation, self.groups)

    def _full(self, x: Tensor) -> Tensor:
        z = _on_shifted(lambda padded: self._conv(padded, (1, 1)), x, None, self._pad())
        return z if self.antialias is None else self.antialias(z)

    def _strided(self, x: Tensor, origin: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if not self._linear_antialias:
            return self._antialiased_strided(x, origin)
        if self.antialias is not None:
            x = self.antialias(x)
        stride = self._stride_pair()
        return _on_shifted(lambda padded: self._conv(padded, stride), x, origin, self._pad()), None

    def forward(self, x: Tensor) -> Tensor:
        self._check_channels(x)
        return self._equivariant_forward(x)[0]


class CircularMaxPool2d(EquivariantDownsample, nn.MaxPool2d):
    """``nn.MaxPool2d`` with circular padding (the wrapped-around values, not ``-inf``).

    With ``return_indices=True`` the indices address the ``H x W`` input (after the MASS
    shift, if any), as :func:`torch.nn.functional.max_unpool2d` expects.

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
    def from_pool(cls, pool: nn.MaxPool2d, antialias: nn.Module | None = None) -> CircularMaxPool2d:
        return cls(
            pool.kernel_size,
            pool.stride,
            pool.padding,
            pool.dilation,
            return_indices=pool.return_indices,
            antialias=antialias,
        )

    def _pad(self) -> tuple[int, int, int, int]:
        return conv_padding(as_pair(self.kernel_size, "kernel_size"), as_pair(self.dilation, "dilation"),
                            as_pair(self.padding, "padding", 0))

    def _full(self, x: Tensor) -> Tensor:
        to_nhwc = _prefer_nhwc(x)
        fmt = torch.channels_last if to_nhwc else None
        z = _on_shifted(lambda p: F.max_pool2d(p, self.kernel_size, 1, 0, self.dilation), x, None, self._pad(), fmt)
        z = z.contiguous() if to_nhwc else z
        return z if self.antialias is None else self.antialias(z)

    def _strided(self, x: Tensor, origin: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if self.antialias is not None:
            if self.return_indices or self._record:
                raise ValueError(f"{self._describe()}: max-unpooling indices are not defined with anti-aliasing.")
            return self._antialiased_strided(x, origin)
        pad, stride = self._pad(), self._stride_pair()
        # The padded copy is made anyway; on CPU make it channels-last, where max-pooling
        # is vectorised over channels (the NCHW kernel is an order of magnitude slower).
        # The maxima are the same values; the output is NCHW (one fixed layout, see circular.py).
        to_nhwc = _prefer_nhwc(x)
        fmt = torch.channels_last if to_nhwc else None
        padded_width = x.shape[-1] + pad[0] + pad[1]
        if not (self.return_indices or self._record):
            y = _on_shifted(lambda p: F.max_pool2d(p, self.kernel_size, stride, 0, self.dilation), x, origin, pad, fmt)
            return (y.contiguous() if to_nhwc else y), None
        y, flat = _on_shifted(
            lambda p: F.max_pool2d(p, self.kernel_size, stride, 0, self.dilation, return_indices=True),
            x, origin, pad, fmt,
        )
        if to_nhwc:
            y, flat = y.contiguous(), flat.contiguous()
        return y, _unpad_indices(flat, padded_width, x.shape[-2:], pad)

    def _equivariant_forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.sampling == "aps" and (self.return_indices or self._record):
            raise ValueError(f"{self._describe()}: APS max-pooling keeps no unpooling indices; use MASS.")
        return super()._equivariant_forward(x)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        y, indices = self._equivariant_forward(x)
        return (y, indices) if self.return_indices else y


def _prefer_nhwc(x: Tensor) -> bool:
    """Max-pool on CPU in channels-last layout (same maxima, much faster kernel), output NCHW."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def _unpad_indices(flat: Tensor, padded_width: int, size: torch.Size, pad: tuple[int, int, int, int]) -> Tensor:
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
    def from_pool(cls, pool: nn.AvgPool2d, antialias: nn.Module | None = None) -> CircularAvgPool2d:
        return cls(pool.kernel_size, pool.stride, pool.padding, divisor_override=pool.divisor_override,
                   antialias=antialias)

    def _pad(self) -> tuple[int, int, int, int]:
        return conv_padding(as_pair(self.kernel_size, "kernel_size"), (1, 1), as_pair(self.padding, "padding", 0))

    def _pool(self, x: Tensor, stride: tuple[int, int]) -> Tensor:
        return F.avg_pool2d(x, self.kernel_size, stride, 0, False, True, self.divisor_override)

    def _full(self, x: Tensor) -> Tensor:
        z = _on_shifted(lambda padded: self._pool(padded, (1, 1)), x, None, self._pad())
        return z if self.antialias is None else self.antialias(z)

    def _strided(self, x: Tensor, origin: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if not self._linear_antialias:
            return self._antialiased_strided(x, origin)
        if self.antialias is not None:
            x = self.antialias(x)
        stride = self._stride_pair()
        return _on_shifted(lambda padded: self._pool(padded, stride), x, origin, self._pad()), None

    def forward(self, x: Tensor) -> Tensor:
        return self._equivariant_forward(x)[0]


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

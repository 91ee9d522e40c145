"""Model-agnostic conversion of a CNN into an exactly shift-equivariant one."""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..layers.blur import Blur2d
from ..layers.ddac import DDAC
from ..layers.downsample import (
    APSAvgPool2d,
    APSConv2d,
    APSMaxPool2d,
    CircularAvgPool2d,
    CircularConv2d,
    CircularMaxPool2d,
    EquivariantDownsample,
    MASSAvgPool2d,
    MASSConv2d,
    MASSMaxPool2d,
)
from ..layers.polyphase import as_pair
from ..layers.pooling import ExactGlobalAvgPool2d
from ..layers.scope import OriginScope

__all__ = ["METHODS", "Antialias", "convert", "parse_antialias"]

Method = Literal["baseline", "mass", "aps"]
METHODS: tuple[str, ...] = ("baseline", "mass", "aps")
SHORTCUT_NAMES: tuple[str, ...] = ("downsample", "shortcut")

_CONV = {"baseline": CircularConv2d, "mass": MASSConv2d, "aps": APSConv2d}
_MAX = {"baseline": CircularMaxPool2d, "mass": MASSMaxPool2d, "aps": APSMaxPool2d}
_AVG = {"baseline": CircularAvgPool2d, "mass": MASSAvgPool2d, "aps": APSAvgPool2d}
_ANTIALIAS = re.compile(r"^(lpf|ddac)([1-7])$")


@dataclass(frozen=True)
class Antialias:
    """A parsed anti-aliasing spec such as ``"lpf3"`` or ``"ddac3"``."""

    kind: Literal["lpf", "ddac"]
    kernel_size: int

    def build(self, channels: int) -> nn.Module:
        """A stride-1 filter for a map with ``channels`` channels."""
        if self.kind == "lpf":
            return Blur2d(self.kernel_size)
        group = 2 if channels % 2 == 0 else 1
        return DDAC(channels, kernel_size=self.kernel_size, group=group)


def parse_antialias(antialias: str | None) -> Antialias | None:
    """``None``, ``"lpf1"``..``"lpf7"`` or ``"ddac3"``/``"ddac5"``/``"ddac7"`` -> :class:`Antialias`."""
    if antialias is None or antialias in ("", "none", "None"):
        return None
    match = _ANTIALIAS.match(str(antialias).lower())
    if not match or (match.group(1) == "ddac" and int(match.group(2)) % 2 == 0):
        raise ValueError(
            f"Unknown antialias {antialias!r}. Use None, 'lpf1'..'lpf7' (binomial blur of that size) "
            "or 'ddac3', 'ddac5', 'ddac7' (content-aware filter, odd sizes)."
        )
    return Antialias(match.group(1), int(match.group(2)))  # type: ignore[arg-type]


def convert(
    model: nn.Module,
    *,
    method: Method = "mass",
    antialias: str | None = None,
    padding: Literal["circular", "zeros"] = "circular",
    shortcut_names: Iterable[str] = SHORTCUT_NAMES,
    example_input: Tensor | None = None,
) -> nn.Module:
    """Return a shift-equivariant copy of ``model``; ``model`` itself is left untouched.

    Every ``nn.Conv2d``, ``nn.MaxPool2d`` and ``nn.AvgPool2d`` is swapped for its circular
    counterpart from :mod:`mass_lightning.layers` (same parameters and buffers), and every
    global ``nn.AdaptiveAvgPool2d`` for an order-independent one (bit-identical logits
    for shifted inputs). Strided ones get the chosen sampling:

    * ``"baseline"``: circular padding only (the original phase-0 subsampling);
    * ``"mass"``: MASS, the original op run on the input shifted to its origin;
    * ``"aps"``: the op at stride 1, then adaptive polyphase sampling.

    Residual blocks (modules with a child named ``downsample`` or ``shortcut`` that
    downsamples) get an :class:`~mass_lightning.layers.OriginScope`, so the strided main
    branch and the shortcut use the same origin.

    For ``method="mass"`` (and every method without DDAC) the converted model's
    ``state_dict`` has exactly the original keys and tensors, so pretrained weights
    transfer both ways; DDAC adds its filter-prediction parameters.

    Args:
        model: any CNN built from ``torch.nn`` layers.
        method: ``"baseline"``, ``"mass"`` or ``"aps"``.
        antialias: ``None``, ``"lpf3"`` (binomial blur; ``lpf1``..``lpf7``) or ``"ddac3"``.
        padding: ``"circular"`` (required for exact equivariance) or ``"zeros"``, which
            is only valid with ``method="baseline"`` and no antialias and returns an
            unchanged copy (the original network).
        shortcut_names: child names that mark a residual block's shortcut branch.
        example_input: an input for one dry run that finds the channels of pooling layers;
            only used with DDAC (default: zeros of size 64x64).

    Returns:
        The converted deep copy.

    Example:
        >>> import torchvision
        >>> model = convert(torchvision.models.resnet18(), method="mass").eval()
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    spec = parse_antialias(antialias)
    if padding not in ("circular", "zeros"):
        raise ValueError(f"padding must be 'circular' or 'zeros', got {padding!r}.")
    if padding == "zeros":
        if method != "baseline" or spec is not None:
            raise ValueError(
                "padding='zeros' keeps the original network and is only valid with method='baseline' "
                "and antialias=None: MASS, APS and the anti-aliasing filters need circular padding to be "
                "exactly shift-equivariant."
            )
        return copy.deepcopy(model)

    converted = copy.deepcopy(model)
    pool_channels = _pool_channels(model, example_input) if spec is not None and spec.kind == "ddac" else {}
    if isinstance(converted, (*_SWAPPABLE, nn.AdaptiveAvgPool2d)):
        return _swap(converted, method, spec, pool_channels.get("")) or converted
    for qualname, parent in list(converted.named_modules()):
        for name, child in list(parent.named_children()):
            child_name = f"{qualname}.{name}" if qualname else name
            replacement = _swap(child, method, spec, pool_channels.get(child_name))
            if replacement is not None:
                setattr(parent, name, replacement)
            else:
                _warn_if_unsupported(child_name, child)
    if method != "baseline":
        _attach_scopes(converted, tuple(shortcut_names))
    return converted


_SWAPPABLE = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def _swap(module: nn.Module, method: str, spec: Antialias | None, pool_channels: int | None) -> nn.Module | None:
    """The circular replacement of one layer, or ``None`` to keep it."""
    if type(module) is nn.AdaptiveAvgPool2d and _is_global(module.output_size):
        return ExactGlobalAvgPool2d()
    if isinstance(module, EquivariantDownsample) or not isinstance(module, _SWAPPABLE):
        return None
    strided = as_pair(module.stride if module.stride is not None else module.kernel_size) != (1, 1)
    sampling = method if strided else "baseline"
    filt = None
    if isinstance(module, nn.Conv2d):
        if not strided and _no_padding(module.padding):
            return None
        if module.padding_mode not in ("zeros", "circular"):
            warnings.warn(f"convert: {module} uses padding_mode={module.padding_mode!r}; replacing it with circular.",
                          stacklevel=3)
        if spec is not None and strided:
            # A linear blur commutes with the conv and runs before it; DDAC runs on its output.
            filt = spec.build(module.out_channels if spec.kind == "ddac" else module.in_channels)
        return _CONV[sampling].from_conv(module, antialias=filt)
    if not strided and _no_padding(module.padding):
        return None
    if spec is not None and strided:
        filt = spec.build(pool_channels or 0)
    table = _MAX if isinstance(module, nn.MaxPool2d) else _AVG
    return table[sampling].from_pool(module, antialias=filt)


def _pool_channels(model: nn.Module, example_input: Tensor | None) -> dict[str, int]:
    """Input channels of every pooling layer, found with one dry run (DDAC needs them)."""
    pools = {name: m for name, m in model.named_modules() if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))}
    if not pools:
        return {}
    if example_input is None:
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        example_input = torch.zeros(1, first.in_channels if first else 3, 64, 64)
    found: dict[str, int] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            found.setdefault(name, args[0].shape[1])

        return hook

    handles = [m.register_forward_pre_hook(record(name)) for name, m in pools.items()]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example_input.to(next(model.parameters()).device))
    except Exception as error:  # noqa: BLE001 - re-raised with advice
        raise ValueError(
            "convert(antialias='ddac...'): could not infer the channels of the pooling layers with a dry run "
            f"on an input of shape {tuple(example_input.shape)} ({error}). Pass example_input=<a valid input>."
        ) from error
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return found


def _is_global(output_size: int | tuple[int | None, ...] | None) -> bool:
    sizes = output_size if isinstance(output_size, tuple) else (output_size, output_size)
    return all(size == 1 for size in sizes)


def _no_padding(padding: int | tuple[int, ...] | str) -> bool:
    if isinstance(padding, str):
        return padding == "valid"
    return not any(as_pair(padding, "padding", 0))


def _warn_if_unsupported(name: str, module: nn.Module) -> None:
    if isinstance(module, (nn.ZeroPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ConstantPad2d)):
        warnings.warn(f"convert: {name} ({type(module).__name__}) pads non-circularly and breaks exact "
                      "equivariance; replace it with circular padding.", stacklevel=3)
    elif isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        size = module.output_size
        if any(s not in (1, None) for s in ((size, size) if isinstance(size, int) else size)):
            warnings.warn(f"convert: {name} ({module}) pools to a grid larger than 1x1, which is not "
                          "shift-invariant; use a global pool.", stacklevel=3)
    elif isinstance(module, nn.ConvTranspose2d):
        warnings.warn(f"convert: {name} is a ConvTranspose2d; pair it with its downsampling layer via "
                      "mass_lightning.layers.MASSConvTranspose2d to keep equivariance.", stacklevel=3)


def _strided_downsamplers(module: nn.Module) -> Iterator[EquivariantDownsample]:
    for sub in module.modules():
        if isinstance(sub, EquivariantDownsample) and sub._stride_pair() != (1, 1):
            yield sub


def _attach_scopes(model: nn.Module, shortcut_names: tuple[str, ...]) -> None:
    """Share one origin between the branches of every residual block."""
    for block in model.modules():
        children = dict(block.named_children())
        shortcut = [children[n] for n in shortcut_names if n in children and children[n] is not None]
        if not shortcut:
            continue
        inside = list(_strided_downsamplers(block))
        in_shortcut = {id(m) for branch in shortcut for m in _strided_downsamplers(branch)}
        if not in_shortcut or len(inside) == len(in_shortcut):
            continue
        scope = OriginScope()
        scope.attach(block)
        for layer in inside:
            layer.scope = scope

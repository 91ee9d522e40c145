"""Model-agnostic conversion of a CNN into an exactly shift-equivariant one."""

from __future__ import annotations

import copy
import gc
import math
import re
import traceback
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, fx, nn

from ..errors import ConfigError, ConversionError, EquivarianceError, MassLightningError, ShiftEquivarianceWarning
from ..layers.blur import Blur2d
from ..layers.ddac import DDAC
from .analysis import Analysis, ProbeTooSmall
from .check import check_equivariance, default_shifts, outputs_equivariant
from .model import ConversionRecord, ShiftEquivariantModel
from .rewrite import rewrite
from .spatial import Spatial
from .tracing import MODES, run_graph, trace

__all__ = ["METHODS", "Antialias", "convert", "parse_antialias"]

Method = Literal["baseline", "mass", "aps", "aps_official"]
METHODS: tuple[str, ...] = ("baseline", "mass", "aps", "aps_official")
_ANTIALIAS = re.compile(r"^(lpf|ddac)([1-7])$")
_PROBE_SIZES: tuple[tuple[int, int], ...] = ((96, 160), (128, 192), (224, 224), (256, 384))


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
        raise ConfigError(
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
    example_input: Tensor | None = None,
    strict: bool = True,
    verify: bool = True,
) -> nn.Module:
    """Return an exactly shift-equivariant copy of ``model``, or say loudly why it cannot be one.

    The model's ``forward`` is traced into a graph (once per mode) and analysed value by
    value on a probe input (see ``docs/exactness.md``):

    * every convolution and pooling pads circularly; strided ones (convs, max/avg pools,
      subsampling slices, space-to-depth, functional ``F.conv2d``...) get the chosen sampling:
      ``"baseline"`` (phase 0: circular padding only), ``"mass"`` (the original op on the
      input shifted to its origin), ``"aps"`` (the op at stride 1, then adaptive polyphase
      sampling) or ``"aps_official"`` (APS placed as the official APS code does: a strided
      conv followed by BatchNorm and an activation runs at stride 1 and the selection follows
      the activation; ``docs/aps_official.md``);
    * downsamplers whose outputs are merged (residual shortcuts, Inception branches, HRNet
      fusions, channel groups of a mixed conv) share one origin, chosen by the first of
      them in execution order from its own input; origins flow through the new graph as
      values, never as module state;
    * upsampling (``nn.Upsample``, ``F.interpolate``, transposed convs, max-unpooling,
      pixel shuffle) is circular and undoes the origins of the levels it skips;
    * order-dependent spatial reductions (means, sums, global average pools, GroupNorm and
      InstanceNorm statistics) become order-independent, so outputs are bit-identical.

    Anything that cannot be made exact (a flattening classifier after a fixed-grid pool,
    valid padding that shrinks maps, absolute position embeddings, attention over
    positions, ...) raises a :class:`~mass_lightning.errors.ConversionError` that names the
    module, the reason and what to do. After converting, the model is run on the probe and
    a few circular shifts of it; a mismatch raises an
    :class:`~mass_lightning.errors.EquivarianceError` naming the first module that breaks.

    Parameters and buffers are shared with no one: the result is a deep copy, and its
    ``state_dict`` has exactly the original keys and tensors (DDAC adds its filter
    parameters). Converting a converted model to another method gives the same model as
    converting the original.

    Args:
        model: a CNN, from torchvision, timm, segmentation-models-pytorch or your own code.
        method: ``"baseline"``, ``"mass"``, ``"aps"`` or ``"aps_official"``.
        antialias: ``None``, ``"lpf3"`` (binomial blur; ``lpf1``..``lpf7``) or ``"ddac3"``
            (``ddac5``, ``ddac7``), applied at the strided convs and pools.
        padding: ``"circular"`` (required for exact equivariance) or ``"zeros"``, which only
            copies an unconverted model (the original network, as a baseline).
        example_input: an input to analyse and verify with (default: random, 64x96 or larger
            until the strides divide it).
        strict: raise on anything that cannot be made exact; with ``False``, warn
            (:class:`~mass_lightning.errors.ShiftEquivarianceWarning`) and keep those parts.
        verify: check the converted model on the probe and a few circular shifts.

    Returns:
        A :class:`~mass_lightning.conversion.ShiftEquivariantModel`, in ``model``'s mode.

    Raises:
        ConversionError: the model cannot be made exactly equivariant (``strict=True``).
        EquivarianceError: the converted model failed verification.

    Example:
        >>> import torchvision
        >>> model = convert(torchvision.models.resnet18(), method="mass").eval()
    """
    if method not in METHODS:
        raise ConversionError("", f"unknown method {method!r}.", f"Choose one of {', '.join(METHODS)}.")
    spec = parse_antialias(antialias)
    if padding not in ("circular", "zeros"):
        raise ConversionError("", f"padding must be 'circular' or 'zeros', got {padding!r}.")
    converted = isinstance(model, ShiftEquivariantModel)
    if padding == "zeros":
        if converted:
            raise ConversionError("", "padding='zeros' asks for the original zero-padded network, but this model "
                                      "is already converted.", "Convert the original model instead, or use "
                                      "model.source_model() to get it back.")
        if method != "baseline" or spec is not None:
            raise ConversionError("", "padding='zeros' keeps the original network and is only valid with "
                                      "method='baseline' and antialias=None.",
                                  "MASS, APS and the anti-aliasing filters need circular padding.")
        return copy.deepcopy(model)
    source = model.source_model() if converted else copy.deepcopy(model)
    try:
        return _convert(source, method, spec, example_input, strict, verify)
    except MassLightningError as error:
        # a refusal's traceback would keep the copy of the model alive in its frames' locals
        del source
        traceback.clear_frames(error.__traceback__)
        raise
    finally:
        # torch.fx's tracing leaves reference cycles through frames (Proxy.__iter__) that hold
        # the copy; collect them now rather than let many conversions pile up parameters.
        gc.collect()


def _convert(source: nn.Module, method: str, spec: Antialias | None, example_input: Tensor | None, strict: bool,
             verify: bool) -> ShiftEquivariantModel:
    if example_input is not None:
        probes = [example_input]
    else:
        probes = [_probe(source, size) for size in _PROBE_SIZES]
    first = probes[0]
    second = torch.randn(first.shape[0] + 1, first.shape[1], 2 * first.shape[2], 2 * first.shape[3],
                         generator=torch.Generator().manual_seed(1)).to(first)
    graphs = trace(source, probes=(first, second))
    plans = None
    failure: BaseException | None = None
    for probe in probes:
        try:
            plans, problems, replacements = _analyse(source, graphs, probe, method, spec, strict)
            break
        except ProbeTooSmall as too_small:
            failure = too_small
        except _ProbeFailed as failed:
            failure = failed.__cause__
    if plans is None:
        if isinstance(failure, ProbeTooSmall):
            raise ConversionError("", f"{failure} No probe size up to {_PROBE_SIZES[-1]} is divisible by the model's "
                                      "total stride.", "Pass example_input= of a size the strides divide.") from failure
        raise ConversionError("", f"the model failed on a probe input of shape {tuple(probe.shape)} "
                                  f"({type(failure).__name__}: {failure}).",
                              "Pass example_input= with a shape the model accepts.") from failure
    sources = {}
    for path, module in replacements.items():
        sources[path] = source.get_submodule(path)
        parent, _, attr = path.rpartition(".")
        setattr(source.get_submodule(parent) if parent else source, attr, module)
    new_graphs = {mode: rewrite(graphs[mode], plans[mode]) for mode in MODES}
    record = ConversionRecord(method, _spec_name(spec), type(source) if not hasattr(source, "source_class")
                              else source.source_class, new_graphs, graphs, sources, tuple(probe.shape),
                              _input_multiple(new_graphs["eval"]))
    model = ShiftEquivariantModel(source, new_graphs, record)
    eval_problems = [p for p in problems if not p.endswith("(only in training mode)")]
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        scope = "NOT exactly shift-equivariant" if eval_problems else "exactly shift-equivariant in eval mode, but not in training mode"
        warnings.warn(f"convert: the converted model is {scope}:\n{listed}", ShiftEquivarianceWarning, stacklevel=3)
    if verify and not eval_problems:
        _verify(model, probe, method, plans["eval"], strict)
    return model


def _analyse(source: nn.Module, graphs: dict[str, fx.Graph], probe: Tensor, method: str, spec: Antialias | None,
             strict: bool) -> tuple[dict, list[str], dict[str, nn.Module]]:
    """Analyse the eval graph (strictly, unless ``strict=False``) and the training graph.

    Parts that run only in training mode and cannot be made exact (GoogLeNet's auxiliary
    classifiers) do not make the model refused: exactness is a property of inference. They
    are kept as they are and reported in a warning.
    """
    replacements: dict[str, nn.Module] = {}
    plans, problems = {}, []
    for mode in ("eval", "train"):
        try:
            values = run_graph(source, graphs[mode], (probe,), training=mode == "train")
        except Exception as error:  # noqa: BLE001 - the caller tries another probe size
            raise _ProbeFailed() from error
        analysis = Analysis(source, graphs[mode], values, method=method, antialias=spec,
                            strict=strict and mode == "eval", replacements=replacements)
        plans[mode] = analysis.run()
        for problem in analysis.problems:
            text = str(problem) if mode == "eval" else f"{problem} (only in training mode)"
            if text not in problems and str(problem) not in problems:
                problems.append(text)
        del values
    return plans, problems, replacements


def _input_channels(model: nn.Module) -> int:
    """What the model declares (timm's ``pretrained_cfg``, smp's encoder, ``in_chans``), else its first conv's."""
    config = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(config, dict) and isinstance(config.get("input_size"), (tuple, list)):
        channels = getattr(model, "in_chans", None) or config["input_size"][0]
        return int(channels)
    encoder = getattr(model, "encoder", None)
    if isinstance(getattr(encoder, "_in_channels", None), int):
        return int(encoder._in_channels)
    for name in ("in_chans", "in_channels"):
        if isinstance(getattr(model, name, None), int):
            return int(getattr(model, name))
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else 3


class _ProbeFailed(Exception):
    """The original model failed on a probe input (its cause says why)."""


def _probe(model: nn.Module, size: tuple[int, int]) -> Tensor:
    """A random batch of 2 with the model's input channels, dtype and device."""
    channels = _input_channels(model)
    parameter = next(iter(model.parameters()), None)
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    device = parameter.device if parameter is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, channels, *size, generator=generator).to(device=device, dtype=dtype)


def _verify(model: ShiftEquivariantModel, probe: Tensor, method: str, plan: Any, strict: bool) -> None:
    """Run the converted model on the probe and shifts of it; raise naming the first failure."""
    if method == "baseline":
        strides = [info.stride for node in model.conversion.graphs["eval"].nodes
                   if isinstance(info := node.meta.get("mass_info"), Spatial)]
        step = (max(s[0] for s in strides), max(s[1] for s in strides)) if strides else (1, 1)
        shifts = [(step[0], 0), (0, step[1])]
    else:
        shifts = default_shifts((probe.shape[-2], probe.shape[-1]), 4)
    if outputs_equivariant(model, probe, shifts):
        return
    report = check_equivariance(model, probe, shifts)
    failure = report.first_failure
    message = (f"the converted model is not exactly shift-equivariant on the probe input "
               f"{tuple(probe.shape)} (shifts {shifts}): the first value that differs is at "
               f"{failure.path if failure else '?'} (max error {failure.max_error if failure else '?'}).")
    hint = ("Please report this as a bug with the model; mass_lightning.check_equivariance(model, x) prints the "
            "full per-layer report.")
    if strict:
        raise EquivarianceError(f"{message} {hint}")
    warnings.warn(f"{message} {hint}", ShiftEquivarianceWarning, stacklevel=3)


def _input_multiple(graph: fx.Graph) -> tuple[int, int]:
    """The least common multiple of the strides of the model's feature maps, per axis."""
    my, mx = 1, 1
    for node in graph.nodes:
        info = node.meta.get("mass_info")
        if isinstance(info, Spatial):
            for term in info.phase:
                need = term.requirement()
                my, mx = math.lcm(my, need[0]), math.lcm(mx, need[1])
    return my, mx


def _spec_name(spec: Antialias | None) -> str | None:
    return None if spec is None else f"{spec.kind}{spec.kernel_size}"

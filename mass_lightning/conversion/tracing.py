"""Tracing a model into FX graphs, one per mode, and running them on a probe input.

The conversion works on the model's dataflow, recorded by :mod:`torch.fx` symbolic
tracing (as FX graph-mode quantization does). Convolutions, poolings and a few layers
whose ``forward`` pads at run time are kept as leaves (one node each); everything else is
traced through, so functional ops inside a module's ``forward`` (a spatial mean in a
squeeze-excitation block, ``F.interpolate`` in a fusion layer, a strided ``F.conv2d`` in a
blur-pool) are visible. Code that reads ``self.training`` is traced once per mode (as
torchvision's feature extraction does), so stochastic depth, dropout and auxiliary heads
keep their behaviour in each mode.
"""

from __future__ import annotations

import contextlib
import math
import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

from ..errors import ConversionError
from ..layers.downsample import EquivariantDownsample
from ..layers.exact import ExactGlobalAvgPool2d, ExactGroupNorm, ExactInstanceNorm2d

__all__ = ["MODES", "GraphRun", "leaf_types", "module_path", "run_graph", "trace"]

MODES: tuple[str, ...] = ("train", "eval")


def _timm_loaded(model: nn.Module) -> bool:
    return any(type(m).__module__.startswith("timm.") for m in model.modules())


_TIMM_MODULES = ("timm.layers", "timm.layers.pool2d_same", "timm.layers.conv2d_same", "timm.layers.space_to_depth",
                 "timm.layers.std_conv")


def timm_types(*names: str) -> tuple[type, ...]:
    """timm layer classes by name (empty if timm is not imported: then no model holds them)."""
    import importlib
    import sys

    if "timm" not in sys.modules:
        return ()
    found: list[type] = []
    for name in names:
        for module_name in _TIMM_MODULES:
            try:
                module = importlib.import_module(module_name)
            except ImportError:  # pragma: no cover - timm comes with segmentation-models-pytorch
                return ()
            if hasattr(module, name):
                found.append(getattr(module, name))
                break
    return tuple(found)


def leaf_types() -> tuple[type, ...]:
    """Module types traced as one node: convs and pools (and their subclasses), norms that
    the conversion replaces, this library's layers, and timm's run-time padded layers."""
    return (
        nn.Conv2d,
        nn.MaxPool2d,
        nn.AvgPool2d,
        nn.ConvTranspose2d,
        nn.GroupNorm,
        nn.InstanceNorm2d,
        EquivariantDownsample,
        ExactGlobalAvgPool2d,
        ExactGroupNorm,
        ExactInstanceNorm2d,
        *timm_types("SpaceToDepth", "MaxPool2dSame", "AvgPool2dSame"),
    )


def _autowrap_functions(model: nn.Module) -> tuple[Callable[..., Any], ...]:
    if not _timm_loaded(model):
        return ()
    try:
        from timm.layers._fx import get_notrace_functions
    except ImportError:  # pragma: no cover - older timm
        return ()
    return tuple(get_notrace_functions())


_REPLACED_BASES = (nn.MaxPool2d, nn.AvgPool2d, nn.ConvTranspose2d, nn.GroupNorm, nn.InstanceNorm2d)


def _ours() -> tuple[type, ...]:
    return (ExactGlobalAvgPool2d, ExactGroupNorm, ExactInstanceNorm2d)


class _Tracer(fx.Tracer):
    def __init__(self, leaves: tuple[type, ...], autowrap: tuple[Callable[..., Any], ...]) -> None:
        super().__init__(autowrap_modules=(math,), autowrap_functions=autowrap)
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, self.leaves):
            # A subclass with a forward of its own (timm's GroupNormAct) is traced through, so
            # that what it adds is analysed; convs keep theirs (checked against the original).
            for base in _REPLACED_BASES:
                if isinstance(m, base) and not isinstance(m, (EquivariantDownsample, *_ours())):
                    return type(m).forward is base.forward or isinstance(m, timm_types("MaxPool2dSame", "AvgPool2dSame"))
            return True
        return super().is_leaf_module(m, module_qualified_name)


class _ConcreteTracer(_Tracer):
    """A tracer that also computes every value on a probe, so that Python control flow on
    sizes (``if skip.shape[1] != 0``) takes the probe's branch. Sizes stay symbolic in the
    graph; only the branches are fixed, and :func:`trace` checks that a second probe of
    another size and batch takes the same ones."""

    def __init__(self, leaves: tuple[type, ...], autowrap: tuple[Callable[..., Any], ...], probe: torch.Tensor) -> None:
        super().__init__(leaves, autowrap)
        self.probe = probe
        self.decisions: list[tuple[str, bool]] = []

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):  # type: ignore[override]
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)

        def concrete(value: Any) -> Any:
            return value.node.meta["concrete"] if isinstance(value, fx.Proxy) else value

        cargs = fx.node.map_aggregate(args, concrete)
        ckwargs = fx.node.map_aggregate(kwargs, concrete)
        with torch.no_grad(), _unpatched():
            if kind == "placeholder":
                value = self.probe
            elif kind == "call_function":
                value = target(*cargs, **ckwargs)
            elif kind == "call_method":
                value = getattr(cargs[0], target)(*cargs[1:], **ckwargs)
            elif kind == "call_module":
                value = self.root.get_submodule(target)(*cargs, **ckwargs)
            elif kind == "get_attr":
                value = self.root
                for atom in str(target).split("."):
                    value = getattr(value, atom)
            else:
                value = None
        proxy.node.meta["concrete"] = value
        return proxy

    def to_bool(self, obj: fx.Proxy) -> bool:
        value = bool(obj.node.meta["concrete"])
        stack = list(self.module_stack.values())
        self.decisions.append((stack[-1][0] if stack else "", value))
        return value

    def iter(self, obj: fx.Proxy):  # type: ignore[override]
        return iter(obj.node.meta["concrete"])


@contextlib.contextmanager
def _unpatched() -> Any:
    """Run real modules while FX has ``nn.Module.__call__`` and ``__getattr__`` patched."""
    from torch.fx import _symbolic_trace as symbolic

    call, getattr_ = nn.Module.__call__, nn.Module.__getattr__
    nn.Module.__call__ = symbolic._orig_module_call  # type: ignore[method-assign]
    nn.Module.__getattr__ = symbolic._orig_module_getattr  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.__call__ = call  # type: ignore[method-assign]
        nn.Module.__getattr__ = getattr_  # type: ignore[method-assign]


def _signature(graph: fx.Graph) -> list[tuple[Any, ...]]:
    """The structure of a graph: ops, targets and arguments (nodes by position)."""
    index = {node: i for i, node in enumerate(graph.nodes)}

    def arg(value: Any) -> Any:
        return fx.node.map_arg(value, lambda n: ("node", index[n]))

    return [(n.op, str(n.target), repr(arg(n.args)), repr(arg(n.kwargs))) for n in graph.nodes]


def trace(model: nn.Module, extra_leaves: tuple[type, ...] = (),
          probes: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, fx.Graph]:
    """FX graphs of ``model.forward`` in training and in eval mode (the mode is restored).

    If symbolic tracing meets Python control flow on a value (usually a size), and two probe
    inputs of different sizes and batch sizes are given, the model is traced again with
    each probe's values at hand: the branches the probes take are fixed in the graph, and the
    graph is accepted only if both probes give the same one.

    Raises:
        ConversionError: the model cannot be traced, naming the module where tracing stopped.
    """
    was_training = model.training
    graphs: dict[str, fx.Graph] = {}
    leaves = leaf_types() + tuple(extra_leaves)
    autowrap = _autowrap_functions(model)
    # segmentation-models-pytorch checks input sizes with Python control flow; the converted
    # layers check divisibility themselves, with the layer's name and stride in the message.
    smp_check = "requires_divisible_input_shape" in vars(type(model)) or hasattr(model, "check_input_shape")
    if smp_check:
        model.__dict__["requires_divisible_input_shape"] = False
    try:
        for mode in MODES:
            model.train(mode == "train")
            tracer = _Tracer(leaves, autowrap)
            try:
                graphs[mode] = tracer.trace(model)
            except Exception as error:  # noqa: BLE001 - re-raised with the module path
                stack = list(tracer.module_stack.values())
                path = stack[-1][0] if stack else ""
                if probes is None or "control flow" not in str(error):
                    raise _untraceable(path, error) from error
                graphs[mode] = _trace_specialised(model, leaves, autowrap, probes, path, error)
                # the handled error's frames hold the model, in a cycle with the error itself
                traceback.clear_frames(error.__traceback__)
            finally:
                _release(tracer)
    finally:
        model.train(was_training)
        if smp_check:
            model.__dict__.pop("requires_divisible_input_shape", None)
    return graphs


def _release(tracer: fx.Tracer) -> None:
    """Drop a finished tracer's state. ``fx.Tracer`` refers to itself through closures (a cycle
    that only the garbage collector frees) and holds the traced model: without this, every
    conversion would keep its model's parameters alive until the next full collection."""
    tracer.__dict__.clear()


def _untraceable(path: str, error: BaseException) -> ConversionError:
    return ConversionError(
        path,
        f"cannot be traced ({type(error).__name__}: {error}), so its dataflow cannot be analysed.",
        "Usually this is Python control flow that depends on tensor values or sizes. Rewrite that part "
        "without it, or convert the parts around it separately.",
    )


def _trace_specialised(model: nn.Module, leaves: tuple[type, ...], autowrap: tuple[Callable[..., Any], ...],
                       probes: tuple[torch.Tensor, torch.Tensor], path: str, error: BaseException) -> fx.Graph:
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    rng = torch.get_rng_state()
    results = []
    try:
        for probe in probes:
            tracer = _ConcreteTracer(leaves, autowrap, probe)
            try:
                graph = tracer.trace(model)
            except Exception as failure:  # noqa: BLE001 - the original error is the one to report
                raise _untraceable(path, error) from failure
            finally:
                decisions = tracer.decisions
                _release(tracer)
            results.append((graph, decisions))
    finally:
        torch.set_rng_state(rng)
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                if name in buffers:
                    buffer.copy_(buffers[name])
    (first, decisions), (second, _) = results
    if _signature(first) != _signature(second):
        where = decisions[0][0] if decisions else path
        raise ConversionError(where, "has Python control flow that takes different branches for inputs of "
                                     "different sizes, so no single converted graph serves every size.",
                              "Remove the size-dependent branch, or convert the model for one input size.")
    for node in first.nodes:
        node.meta.pop("concrete", None)
    return first


def module_path(node: fx.Node) -> str:
    """The qualified name of the module a node belongs to (``""`` for the top level)."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if stack:
        return str(list(stack.values())[-1][0])
    return ""


def op_name(node: fx.Node) -> str:
    """A short name of what a node does, for messages (``F.conv2d``, ``.mean``, ``Conv2d``)."""
    if node.op == "call_module":
        return "module"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    target = node.target
    module = getattr(target, "__module__", "") or ""
    name = getattr(target, "__name__", str(target))
    if module.startswith("torch.nn.functional"):
        return f"F.{name}"
    if module == "_operator":
        return f"operator.{name}"
    if module.startswith("torch"):
        return f"torch.{name}"
    return f"{module}.{name}" if module else name


class GraphRun(fx.Interpreter):
    """Runs a graph and keeps every node's value."""

    def __init__(self, root: nn.Module, graph: fx.Graph) -> None:
        super().__init__(fx.GraphModule(root, graph), garbage_collect_values=False)
        graph.owning_module = None  # the graph outlives this run; keeps a converted model picklable

    def values(self, *args: Any) -> dict[fx.Node, Any]:
        self.run(*args)
        return dict(self.env)


def run_graph(root: nn.Module, graph: fx.Graph, args: tuple[Any, ...], training: bool) -> dict[fx.Node, Any]:
    """Every node's value for ``args``, in the given mode; buffers (running statistics) and
    the RNG state are restored afterwards."""
    buffers = {name: b.detach().clone() for name, b in root.named_buffers()}
    was_training = root.training
    rng = torch.get_rng_state()
    try:
        root.train(training)
        with torch.no_grad():
            return GraphRun(root, graph).values(*args)
    finally:
        root.train(was_training)
        torch.set_rng_state(rng)
        with torch.no_grad():
            for name, buffer in root.named_buffers():
                if name in buffers:
                    buffer.copy_(buffers[name])

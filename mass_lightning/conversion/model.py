"""The converted model: the original modules, run by the rewritten graph."""

from __future__ import annotations

import copy
import itertools
import linecache
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, fx, nn

from ..errors import InputSizeError

__all__ = ["ConversionRecord", "ShiftEquivariantModel"]

_counter = itertools.count()
_SIMPLE = (int, float, str, bool, tuple, list, dict, type(None))


@dataclass
class ConversionRecord:
    """What :func:`~mass_lightning.convert` did, kept to inspect, check and re-convert.

    Attributes:
        method: ``"baseline"``, ``"mass"`` or ``"aps"``.
        antialias: the anti-aliasing spec (``None``, ``"lpf3"``, ...).
        source_class: the class of the model that was converted.
        graphs: the converted graphs, ``{"train": ..., "eval": ...}``; every node carries its
            spatial description in ``node.meta["mass_info"]``.
        source_graphs: the traced graphs of the original model.
        sources: the original module of every replaced one (sharing its parameters).
        probe_shape: the shape of the probe input the conversion analysed and verified.
        input_multiple: ``(my, mx)``: input heights and widths must be multiples of these (the
            least common multiple of the strides every downsampling layer needs).
    """

    method: str
    antialias: str | None
    source_class: type
    graphs: dict[str, fx.Graph]
    source_graphs: dict[str, fx.Graph]
    sources: dict[str, nn.Module]
    probe_shape: tuple[int, ...]
    input_multiple: tuple[int, int] = (1, 1)


def _compile(graph: fx.Graph, label: str) -> Callable[..., Any]:
    code = graph.python_code(root_module="self")
    key = f"<mass_lightning {label} #{next(_counter)}>"
    linecache.cache[key] = (len(code.src), None, code.src.splitlines(True), key)
    namespace = dict(code.globals)
    exec(compile(code.src, key, "exec", dont_inherit=True), namespace)  # noqa: S102 - FX-generated code
    return namespace["forward"]


_DISPATCH = """\
def forward(self, *args, **kwargs):
    if check and args and isinstance(args[0], Tensor):
        self._check_input(args[0])
    return self._forwards["train" if self.training else "eval"](self, *args, **kwargs)
"""


def _bind_forward(module: nn.Module, forwards: dict[str, Callable[..., Any]], label: str, check: bool) -> None:
    """Give ``module`` a ``forward`` with a code object of its own, dispatching to the train or
    eval graph, through a per-instance subclass (as ``torch.fx.GraphModule`` does).

    ``torch.compile`` keeps its cache per code object; a ``forward`` shared by every converted
    model would use up the recompile limit after a few models and silently fall back to eager.
    The subclass holds no reference to the instance or its graphs (a class is freed only by the
    garbage collector), so a dropped model and its modules are freed at once.
    """
    key = f"<mass_lightning {label} dispatch #{next(_counter)}>"
    linecache.cache[key] = (len(_DISPATCH), None, _DISPATCH.splitlines(True), key)
    namespace = {"Tensor": Tensor, "check": check}
    exec(compile(_DISPATCH, key, "exec", dont_inherit=True), namespace)  # noqa: S102 - fixed source
    base = _base_class(module)
    module.__class__ = type(base.__name__, (base,), {"forward": namespace["forward"], "_per_instance": True,
                                                     "__module__": base.__module__, "__qualname__": base.__qualname__})
    module.__dict__["_forwards"] = {"train": forwards.get("train", forwards["eval"]), **forwards}


def _base_class(module: nn.Module) -> type:
    cls = type(module)
    return cls.__bases__[0] if cls.__dict__.get("_per_instance") else cls


def _restore(cls: type, state: dict[str, Any]) -> nn.Module:
    module = cls.__new__(cls)
    module.__setstate__(state)
    return module


class ShiftEquivariantModel(nn.Module):
    """A model converted by :func:`~mass_lightning.convert`.

    It holds the original model's modules under the same names (so ``state_dict`` keys,
    ``named_parameters`` and submodule access such as ``model.fc`` are unchanged; only the
    layers the conversion replaced have new classes), and its ``forward`` runs the
    rewritten graph of the original ``forward``, in which origins flow as values. Only
    ``forward`` is converted: other methods of the original class (``forward_features``,
    ``reset_classifier``, ...) are not available.

    Attributes:
        conversion: the :class:`ConversionRecord`.

    Shape:
        - Input and output: those of the original model.
    """

    def __init__(self, root: nn.Module, graphs: dict[str, fx.Graph], record: ConversionRecord) -> None:
        super().__init__()
        for name, child in root.named_children():
            self.add_module(name, child)
        for name, param in root._parameters.items():
            self.register_parameter(name, param)
        for name, buffer in root._buffers.items():
            self.register_buffer(name, buffer, persistent=name not in root._non_persistent_buffers_set)
        for name, value in vars(root).items():
            if not name.startswith("_") and name not in ("training",) and isinstance(value, _SIMPLE) \
                    and name not in self.__dict__:
                self.__dict__[name] = copy.copy(value)
        self.training = root.training
        self.conversion = record
        self._build()

    def _build(self) -> None:
        label = self.conversion.source_class.__name__
        forwards = {mode: _compile(graph, f"{label} {mode}") for mode, graph in self.conversion.graphs.items()}
        _bind_forward(self, forwards, label, check=True)

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # replaced per instance by _bind_forward
        if args and isinstance(args[0], Tensor):
            self._check_input(args[0])
        return self._forwards["train" if self.training else "eval"](self, *args, **kwargs)

    def _check_input(self, x: Tensor) -> None:
        record = self.conversion
        probe = record.probe_shape
        name = record.source_class.__name__
        if x.dim() != len(probe):
            raise InputSizeError(f"{name} (converted) expects a {len(probe)}-D input like {tuple(probe)}, got shape "
                                 f"{tuple(x.shape)}." + (" Add a batch dimension with x.unsqueeze(0)."
                                                         if x.dim() == len(probe) - 1 else ""))
        if x.dim() == 4 and x.shape[1] != probe[1]:
            raise InputSizeError(f"{name} (converted) expects {probe[1]} input channels, got input of shape "
                                 f"{tuple(x.shape)}.")
        (my, mx), (height, width) = record.input_multiple, (x.shape[-2], x.shape[-1])
        if x.dim() == 4 and (height % my or width % mx):
            def near(size: int, base: int) -> str:
                below, above = max(base, size // base * base), -(-size // base) * base
                return f"{below}" if below == above else f"{below} or {above}"

            raise InputSizeError(
                f"{name} (converted): input size {height}x{width} is not a multiple of {my}x{mx}, the total stride "
                f"of its downsampling layers. Exact shift equivariance needs every stride to divide the size it "
                f"sees: crop, pad or resize the input to a height of {near(height, my)} and a width of "
                f"{near(width, mx)}."
            )

    @property
    def code(self) -> str:
        """The Python code of the converted forward (eval mode)."""
        return self.conversion.graphs["eval"].python_code(root_module="self").src

    def extra_repr(self) -> str:
        record = self.conversion
        return f"method={record.method!r}, antialias={record.antialias!r}, source={record.source_class.__name__}"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_forwards", None)
        return state

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        # pickled and copied as the public class; the per-instance subclass is rebuilt
        return _restore, (_base_class(self), self.__getstate__())

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._build()

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            record = self.__dict__.get("conversion")
            if record is not None and hasattr(record.source_class, name) and not name.startswith("_"):
                raise AttributeError(
                    f"{name!r} of {record.source_class.__name__} is not part of the converted model: only forward() "
                    f"is converted. Use the model as a whole, or convert the submodule you need separately."
                ) from None
            raise

    def __getitem__(self, index: int | slice) -> Any:
        """Children by position, for a converted ``nn.Sequential`` or ``nn.ModuleList``
        (``converted[1]`` is the original's second layer)."""
        source = self.conversion.source_class
        if not issubclass(source, (nn.Sequential, nn.ModuleList)):
            raise TypeError(f"the converted {source.__name__} is not indexable (it was not an nn.Sequential or "
                            "nn.ModuleList); reach its layers by name, e.g. model.layer1.")
        children = list(self._modules.values())
        return children[index]

    def source_model(self) -> nn.Module:
        """A copy of the original model (original layers and forward, current parameters)."""
        clone = copy.deepcopy(self)  # one copy: the sources still share their parameters with the clone
        record = clone.conversion
        for path, original in record.sources.items():
            original.train(self.training)
            parent, _, attr = path.rpartition(".")
            setattr(clone.get_submodule(parent) if parent else clone, attr, original)
        return _SourceModel(clone, record)


class _SourceModel(nn.Module):
    """The original model rebuilt from a converted one: original modules and traced graphs."""

    def __init__(self, converted: ShiftEquivariantModel, record: ConversionRecord) -> None:
        super().__init__()
        for name, child in converted.named_children():
            self.add_module(name, child)
        for name, param in converted._parameters.items():
            self.register_parameter(name, param)
        for name, buffer in converted._buffers.items():
            self.register_buffer(name, buffer, persistent=name not in converted._non_persistent_buffers_set)
        for name, value in vars(converted).items():
            if not name.startswith("_") and name not in ("training", "conversion") and isinstance(value, _SIMPLE):
                self.__dict__[name] = value
        self.training = converted.training
        self.source_class = record.source_class
        label = f"{record.source_class.__name__} source"
        forwards = {mode: _compile(graph, f"{label} {mode}") for mode, graph in record.source_graphs.items()}
        _bind_forward(self, forwards, label, check=False)

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # replaced per instance by _bind_forward
        return self._forwards["train" if self.training else "eval"](self, *args, **kwargs)

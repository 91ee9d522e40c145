"""Rewriting a traced graph into its shift-equivariant counterpart.

The analysis (:mod:`.analysis`) decides, per node, an :class:`Action`; the rewriter emits
the new graph. Origins become nodes of the graph: the first downsampling layer of each
origin group (in execution order) is called with ``return_origin=True`` and the others
get that origin as an argument, so every value one forward call computes flows as a value.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import fx

from .ops import phase_shift, shift_to_frame
from .spatial import Term, UnionFind

__all__ = ["Action", "Alias", "Attr", "Call", "Copy", "CopyThenSelect", "Downsample", "Plan", "Upsample", "rewrite"]


@dataclass(frozen=True)
class Attr:
    """A parameter or buffer of the model, by path, as an argument of a :class:`Call`."""

    path: str


@dataclass
class Plan:
    """What the analysis decided for one graph."""

    actions: dict[fx.Node, Action] = field(default_factory=dict)
    groups: UnionFind = field(default_factory=UnionFind)
    tracks_origins: bool = True
    chooser: dict[int, fx.Node] = field(default_factory=dict)

    def finish(self) -> None:
        """Pick each group's chooser: its first downsampling node in graph order."""
        self.chooser = {}
        for node, action in self.actions.items():
            if isinstance(action, (Downsample, CopyThenSelect)):
                self.chooser.setdefault(self.groups.find(action.group), node)


class Action:
    """How a node is emitted into the new graph."""

    def emit(self, rw: Rewriter, node: fx.Node) -> Any:
        raise NotImplementedError


class Copy(Action):
    def emit(self, rw: Rewriter, node: fx.Node) -> Any:
        return rw.graph.node_copy(node, rw.lookup)


@dataclass
class Alias(Action):
    """The node disappears; its users read ``source`` (a padding fused into a convolution)."""

    source: fx.Node

    def emit(self, rw: Rewriter, node: fx.Node) -> Any:
        return rw.env[self.source]


@dataclass
class Call(Action):
    """``fn(*args, **kwargs)`` (``fn`` a function, or a module path with ``module=True``)."""

    fn: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    module: bool = False

    def call(self, rw: Rewriter, extra: dict[str, Any] | None = None) -> fx.Node:
        args, kwargs = rw.map(self.args), {**rw.map(self.kwargs), **(extra or {})}
        if self.module:
            return rw.graph.call_module(self.fn, args, kwargs)
        return rw.graph.call_function(self.fn, args, kwargs)

    def emit(self, rw: Rewriter, node: fx.Node) -> Any:
        return rw.named(self.call(rw), node)


@dataclass
class Downsample(Action):
    """A downsampling call that uses the origin of its group (chooses it if it is the chooser)."""

    call: Call
    group: int

    def emit(self, rw: Rewriter, node: fx.Node) -> Any:
        if not rw.plan.tracks_origins:
            return rw.named(self.call.call(rw), node)
        root = rw.plan.groups.find(self.group)
        if rw.plan.chooser[root] is node:
            both = self.call.call(rw, {"return_origin": True})
            rw.origins[root] = rw.graph.call_function(operator.getitem, (both, 1))
            return rw.named(rw.graph.call_function(operator.getitem, (both, 0)), node)
        return rw.named(self.call.call(rw, {"origin": rw.origins[root]}), node)


@dataclass
class CopyThenSelect(Action):
    """The node as it was, then a polyphase selection of its output (official-APS placement)."""

    select: Call
    group: int
    before: Any = None

    def emit(self, rw: Rewriter, node: fx.Node) -> Any:
        value = rw.graph.node_copy(node, rw.lookup)
        value.meta["mass_info"] = self.before
        rw.env[node] = value  # the selection's argument is this node's value
        return Downsample(self.select, self.group).emit(rw, node)


@dataclass
class Upsample(Action):
    """An upsampling call, then the roll that undoes the origins of the levels it skips.

    ``undo`` lists ``(term, coefficient)``: the skipped level and its input stride divided by
    the output stride. With ``origin_kwarg`` the roll is passed to the call instead (layers
    that undo it themselves, such as max-unpooling).
    """

    call: Call
    undo: list[tuple[Term, tuple[int, int]]]
    origin_kwarg: str | None = None

    def emit(self, rw: Rewriter, node: fx.Node) -> Any:
        if not rw.plan.tracks_origins or not self.undo:
            return rw.named(self.call.call(rw), node)
        origins = tuple(rw.origins[rw.plan.groups.find(term.group)] for term, _ in self.undo)
        coefficients = tuple(c for _, c in self.undo)
        shift = origins[0] if coefficients == ((1, 1),) else rw.graph.call_function(
            phase_shift, (origins, coefficients))
        if self.origin_kwarg is not None:
            return rw.named(self.call.call(rw, {self.origin_kwarg: shift}), node)
        up = self.call.call(rw)
        return rw.named(rw.graph.call_function(shift_to_frame, (up, shift)), node)


COPY = Copy()


class Rewriter:
    """Emits the new graph from an old graph and a :class:`Plan`."""

    def __init__(self, graph: fx.Graph, plan: Plan) -> None:
        self.old, self.plan = graph, plan
        self.graph = fx.Graph()
        self.env: dict[fx.Node, Any] = {}
        self.origins: dict[int, fx.Node] = {}

    def lookup(self, node: fx.Node) -> Any:
        return self.env[node]

    def map(self, value: Any) -> Any:
        if isinstance(value, Attr):
            return self.graph.get_attr(value.path)
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            return tuple(self.map(v) for v in value)
        if isinstance(value, list):
            return [self.map(v) for v in value]
        if isinstance(value, dict):
            return {k: self.map(v) for k, v in value.items()}
        return fx.map_arg(value, self.lookup)

    def named(self, new: Any, old: fx.Node) -> Any:
        """Keep the old node's meta (module stack, spatial info) on its replacement."""
        if isinstance(new, fx.Node):
            new.meta.update({k: v for k, v in old.meta.items() if k not in new.meta})
        return new

    def run(self) -> fx.Graph:
        for node in self.old.nodes:
            self.env[node] = self.plan.actions.get(node, COPY).emit(self, node)
        self.graph.lint()
        return self.graph


def rewrite(graph: fx.Graph, plan: Plan) -> fx.Graph:
    """The shift-equivariant graph for ``graph`` under ``plan``."""
    return Rewriter(graph, plan).run()


Emitter = Callable[[Rewriter, fx.Node], Any]

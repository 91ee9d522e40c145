"""What the conversion knows about each value of a traced model: its spatial layout and phase.

Every feature map has a *phase* relative to the input grid. Pixel ``i`` of a map of total
stride ``S`` was computed around input position ``S * i + phi`` (per sample, per axis,
modulo the input size), where ``phi`` is a sum over the downsampling layers before it::

    phi = sum_l in_stride_l * origin_l        (origin_l chosen by layer l, 0 <= origin_l < step_l)

A phase is therefore a sequence of :class:`Term` s, one per downsampling level, each naming
an *origin group*: the downsamplers whose outputs are merged (added, concatenated,
multiplied) must use one origin, so they share a group. Groups are merged by a union-find
when the analysis meets a merge of two branches; a merge of maps whose phases differ in a
way no shared origin can fix is refused.

Values are classified as:

* :class:`Spatial`: moves with the input; knows which axes are H and W (or the one axis
  holding ``H * W`` flattened row-major), its total stride and phase;
* :class:`Invariant`: does not depend on where the input is (parameters, pooled vectors).
  ``uniform`` ones are also constant along their spatial-sized axes (a pooled vector
  broadcast to a map), so they merge with any map; others (a learned position embedding)
  may only broadcast along size-1 axes;
* :class:`PoolIndices`: max-pool argmax indices, valid only for the matching unpooling;
* :class:`Broken`: a value already reported as not equivariant (``strict=False``).

Non-tensor values (sizes, ints, dtypes) are kept as their concrete values from the probe.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

__all__ = ["Broken", "Invariant", "PoolIndices", "Spatial", "Term", "UnionFind", "map_reshape"]

Pair = tuple[int, int]


@dataclass(frozen=True)
class Term:
    """One downsampling level of a phase: origin group, stride of its input, its step.

    ``bins`` is set for adaptive pooling into fixed bins, whose step depends on the input
    size (``step`` is then the probe's).
    """

    group: int
    in_stride: Pair
    step: Pair
    bins: Pair | None = None

    def requirement(self) -> Pair:
        """What the input size must be a multiple of for this level."""
        factor = self.bins if self.bins is not None else self.step
        return (self.in_stride[0] * factor[0], self.in_stride[1] * factor[1])


Phase = tuple[Term, ...]


@dataclass(frozen=True)
class Spatial:
    """A tensor whose spatial axes move with the input.

    Attributes:
        h, w: axis indices of height and width (``None`` once reduced away).
        flat: axis holding ``H * W`` flattened row-major (then ``h`` and ``w`` are ``None``).
        size: ``(H, W)`` of the map at the probe.
        stride: total stride ``(Sy, Sx)`` relative to the input.
        phase: the :class:`Term` s of the downsampling levels before it.
    """

    h: int | None
    w: int | None
    size: Pair
    stride: Pair = (1, 1)
    phase: Phase = ()
    flat: int | None = None

    def axes(self) -> tuple[int, ...]:
        """The axes that carry spatial positions."""
        if self.flat is not None:
            return (self.flat,)
        return tuple(a for a in (self.h, self.w) if a is not None)

    def moved(self, **changes) -> Spatial:
        return replace(self, **changes)


@dataclass(frozen=True)
class Invariant:
    """A tensor that does not change when the input is shifted."""

    uniform: bool = False


@dataclass(frozen=True)
class PoolIndices:
    """Argmax indices of a max-pool: the pool's input and its origin group."""

    source: Spatial
    term: Term


@dataclass(frozen=True)
class Broken:
    """A value already reported as not shift-equivariant."""

    reason: str = ""


@dataclass
class UnionFind:
    """Origin groups; ``members[root]`` lists the downsampling nodes of a group in graph order."""

    parent: list[int] = field(default_factory=list)

    def new(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, group: int) -> int:
        while self.parent[group] != group:
            self.parent[group] = self.parent[self.parent[group]]
            group = self.parent[group]
        return group

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)

    def canonical(self, phase: Phase) -> Phase:
        return tuple(replace(t, group=self.find(t.group)) for t in phase)


def _groups(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    """Pair consecutive runs of input and output axes with equal products (size-1 axes skipped)."""
    ins = [i for i, s in enumerate(in_shape) if s != 1]
    outs = [i for i, s in enumerate(out_shape) if s != 1]
    groups, i, j = [], 0, 0
    while i < len(ins) or j < len(outs):
        if i >= len(ins) or j >= len(outs):
            return None
        gi, gj = [ins[i]], [outs[j]]
        pi, pj = in_shape[ins[i]], out_shape[outs[j]]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                if i >= len(ins):
                    return None
                gi.append(ins[i])
                pi *= in_shape[ins[i]]
                i += 1
            else:
                if j >= len(outs):
                    return None
                gj.append(outs[j])
                pj *= out_shape[outs[j]]
                j += 1
        groups.append((gi, gj))
    return groups


def map_reshape(info: Spatial, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Spatial | None:
    """Where the spatial axes of ``info`` go through a reshape, or ``None`` if it mixes them
    with other axes (positions into channels) or splits them."""
    groups = _groups(tuple(in_shape), tuple(out_shape))
    if groups is None:
        return None
    where = {tuple(gi): gj for gi, gj in groups}
    if info.flat is not None:
        target = where.get((info.flat,))
        if target is None:
            return None
        if len(target) == 1:
            return info.moved(flat=target[0])
        if len(target) == 2 and (out_shape[target[0]], out_shape[target[1]]) == info.size:
            return info.moved(h=target[0], w=target[1], flat=None)
        return None
    h, w = info.h, info.w
    if h is not None and w is not None and (h, w) in where and len(where[(h, w)]) == 1 and w == h + 1:
        return info.moved(h=None, w=None, flat=where[(h, w)][0])
    new = {}
    for name, axis in (("h", h), ("w", w)):
        if axis is None:
            new[name] = None
            continue
        if in_shape[axis] == 1:
            return None  # a size-1 spatial axis cannot be followed through a reshape
        target = where.get((axis,))
        if target is None or len(target) != 1:
            return None
        new[name] = target[0]
    return info.moved(**new)

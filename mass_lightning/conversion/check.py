"""``check_equivariance``: run a model on an input and its circular shifts, layer by layer.

In the spirit of escnn's ``EquivariantModule.check_equivariance``: every intermediate value
of the shifted inputs is compared with the matching circular shift of the unshifted one,
and the report names the first module that breaks equivariance. The reference and each
shifted copy run as separate calls of the same batch shape, so every sample is computed by
the same kernels at the same batch position (CPU matrix products round differently by
row position within a batch; see ``docs/exactness.md``, batch composition).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn

from ..errors import ConversionError
from .spatial import Invariant, Spatial
from .tracing import GraphRun, module_path, op_name

__all__ = ["EquivarianceReport", "LayerCheck", "check_equivariance", "default_shifts", "outputs_equivariant"]


@dataclass(frozen=True)
class LayerCheck:
    """One value of the model: where it comes from and how far it is from equivariant.

    Attributes:
        path: module path (and the op, for functional ops), e.g. ``"layer2.0.conv1"``.
        kind: ``"invariant"`` or ``"map at stride (Sy, Sx)"``.
        max_error: largest absolute difference from the expected (shifted) value.
        phase_tracked: whether the shift each shifted input should produce here is known
            (a converted model tracks it; otherwise only shifts by multiples of the stride are).
        equivariant: ``max_error`` within the tolerance.
    """

    path: str
    kind: str
    max_error: float
    phase_tracked: bool
    equivariant: bool


@dataclass
class EquivarianceReport:
    """The per-value results of :func:`check_equivariance`, in execution order."""

    shifts: list[tuple[int, int]]
    layers: list[LayerCheck] = field(default_factory=list)
    outputs_equivariant: bool = True

    @property
    def ok(self) -> bool:
        """Whether the outputs (and every checked value) are equivariant."""
        return self.outputs_equivariant and all(layer.equivariant for layer in self.layers)

    @property
    def first_failure(self) -> LayerCheck | None:
        """The first value, in execution order, that is not equivariant."""
        return next((layer for layer in self.layers if not layer.equivariant), None)

    def __str__(self) -> str:
        lines = [f"{'module':<48} {'value':<24} {'max error':>12}  phase tracked  equivariant"]
        for layer in self.layers:
            lines.append(f"{layer.path[:48]:<48} {layer.kind[:24]:<24} {layer.max_error:>12.3g}  "
                         f"{'yes' if layer.phase_tracked else 'no':<13}  {'yes' if layer.equivariant else 'NO'}")
        verdict = "equivariant" if self.ok else f"NOT equivariant (first failure: {self.first_failure.path})" \
            if self.first_failure else "NOT equivariant"
        lines.append(f"shifts {self.shifts}: {verdict}")
        return "\n".join(lines)


def default_shifts(size: tuple[int, int], count: int = 4, seed: int = 0) -> list[tuple[int, int]]:
    """``(1, 0)``, ``(0, 1)``, ``(1, 1)`` and random shifts within ``size``."""
    generator = torch.Generator().manual_seed(seed)
    shifts = [(1, 0), (0, 1), (1, 1)][:count]
    while len(shifts) < count:
        shifts.append((int(torch.randint(size[0], (), generator=generator)),
                       int(torch.randint(size[1], (), generator=generator))))
    return shifts


def _roll_candidates(shift: Sequence[int], stride: Sequence[int]) -> list[tuple[int, ...]]:
    """The rolls a map of ``stride`` can undergo when the input moves by ``shift``:
    ``(d + phi - phi') / S`` with ``0 <= phi, phi' < S`` is ``floor(d / S)`` or one more."""
    options = [sorted({d // s, -(-d // s)}) for d, s in zip(shift, stride)]
    if not options:
        return [()]
    return [tuple(c) for c in __import__("itertools").product(*options)]


def _compare(reference: Tensor, shifted: Tensor, info: Any, shift: tuple[int, int]) -> float:
    """Largest over samples of the smallest max-abs difference between a sample of
    ``shifted`` and a roll of its reference (the roll depends on the sample's origins)."""
    if reference.shape != shifted.shape:
        return math.inf
    reference, shifted = reference.detach(), shifted.detach()
    if not reference.is_floating_point():
        reference, shifted = reference.double(), shifted.double()
    if isinstance(info, Invariant):
        error = float((reference - shifted).abs().amax()) if reference.numel() else 0.0
        return math.inf if math.isnan(error) else error
    if info.flat is not None:
        reference = reference.movedim(info.flat, -1).unflatten(-1, info.size)
        shifted = shifted.movedim(info.flat, -1).unflatten(-1, info.size)
        axes = [reference.dim() - 2, reference.dim() - 1]
    else:
        axes = [a for a in (info.h, info.w) if a is not None]
    steps = [s for a, s in zip((info.h, info.w), info.stride) if a is not None] if info.flat is None \
        else list(info.stride)
    moves = [m for a, m in zip((info.h, info.w), shift) if a is not None] if info.flat is None else list(shift)
    worst = 0.0
    for sample in range(reference.shape[0]):
        best = math.inf
        for roll in _roll_candidates(moves, steps):
            rolled = torch.roll(reference[sample], list(roll), [a - 1 for a in axes]) if axes else reference[sample]
            diff = (rolled - shifted[sample]).abs()
            error = float(diff.amax()) if diff.numel() else 0.0
            best = min(best, math.inf if math.isnan(error) else error)
        worst = max(worst, best)
    return worst


def _graph_and_root(model: nn.Module, example_input: Tensor) -> tuple[fx.Graph, nn.Module, bool]:
    from .model import ShiftEquivariantModel

    if isinstance(model, ShiftEquivariantModel):
        return model.conversion.graphs["eval"], model, model.conversion.method != "baseline"
    from .analysis import Analysis
    from .tracing import run_graph, trace

    graph = trace(model)["eval"]
    values = run_graph(model, graph, (example_input,), training=False)
    Analysis(model, graph, values, method="baseline", antialias=None, strict=False, replacements={}).run()
    return graph, model, False


def check_equivariance(
    model: nn.Module,
    example_input: Tensor,
    shifts: Sequence[tuple[int, int]] | int | None = None,
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
) -> EquivarianceReport:
    """Check, value by value, that ``model`` is equivariant to circular shifts of ``example_input``.

    Works on converted models (which know how far each feature map must move) and on plain
    ones (then only shifts by multiples of a map's stride can be predicted; other values are
    reported with ``phase_tracked=False``). Runs in eval mode without gradients.

    Args:
        model: any model; it is traced with :mod:`torch.fx`.
        example_input: a batch ``(B, C, H, W)``.
        shifts: the circular shifts ``(dy, dx)`` to try, or how many (default 4: ``(1, 0)``,
            ``(0, 1)``, ``(1, 1)`` and a random one).
        atol: absolute tolerance (default 0: bit-identical).
        rtol: tolerance relative to the largest magnitude of each value.

    Returns:
        An :class:`EquivarianceReport`; ``print`` it for a table, use ``.ok`` and
        ``.first_failure``.

    Example:
        >>> report = check_equivariance(convert(torchvision.models.resnet18()), torch.randn(2, 3, 64, 96))
        >>> report.ok
        True
    """
    if not isinstance(example_input, Tensor) or example_input.dim() != 4:
        raise ConversionError("", f"check_equivariance needs a (B, C, H, W) example input, got "
                                  f"{tuple(example_input.shape) if isinstance(example_input, Tensor) else example_input}.")
    size = (example_input.shape[-2], example_input.shape[-1])
    if shifts is None or isinstance(shifts, int):
        shifts = default_shifts(size, 4 if shifts is None else shifts)
    shifts = [(int(dy) % size[0], int(dx) % size[1]) for dy, dx in shifts]
    was_training = model.training
    model.eval()
    try:
        graph, root, tracked = _graph_and_root(model, example_input)
        with torch.no_grad():
            reference = GraphRun(root, graph).values(example_input)
            runs = [GraphRun(root, graph).values(torch.roll(example_input, s, (2, 3))) for s in shifts]
    finally:
        model.train(was_training)
    report = EquivarianceReport(shifts=list(shifts))
    checks: dict[fx.Node, LayerCheck] = {}
    for node in graph.nodes:
        info = node.meta.get("mass_info")
        value = reference.get(node)
        if not isinstance(info, (Spatial, Invariant)) or not isinstance(value, Tensor) or value.dim() == 0:
            continue
        error, node_tracked = 0.0, True
        for shift, run in zip(shifts, runs):
            error = max(error, _compare(value, run[node], info, shift))
            if isinstance(info, Spatial) and not tracked and (shift[0] % info.stride[0] or shift[1] % info.stride[1]):
                node_tracked = False
        scale = float(value.abs().amax()) if value.numel() and value.is_floating_point() else 0.0
        kind = "invariant" if isinstance(info, Invariant) else f"map at stride {info.stride}"
        op = op_name(node)
        label = module_path(node) if op == "module" else f"{module_path(node) or '<top>'} ({op})"
        checks[node] = LayerCheck(label, kind, error, node_tracked, error <= atol + rtol * scale)
        report.layers.append(checks[node])
    outputs: list[fx.Node] = []
    output = next(n for n in graph.nodes if n.op == "output")
    fx.node.map_arg(output.args[0], outputs.append)
    report.outputs_equivariant = all(checks[n].equivariant for n in outputs if n in checks)
    return report


def outputs_equivariant(model: nn.Module, example_input: Tensor, shifts: Sequence[tuple[int, int]]) -> bool:
    """Whether a converted model's outputs are exactly equivariant for ``shifts`` (a fast
    check with ordinary forward calls; :func:`check_equivariance` says where it breaks)."""
    from .model import ShiftEquivariantModel

    assert isinstance(model, ShiftEquivariantModel)
    graph = model.conversion.graphs["eval"]
    output = next(n for n in graph.nodes if n.op == "output")
    infos = [n.meta.get("mass_info") for n in _output_leaves(output.args[0])]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = _output_leaves(model(example_input))
            for shift in shifts:
                shifted = _output_leaves(model(torch.roll(example_input, shift, (2, 3))))
                for info, ref, got in zip(infos, reference, shifted):
                    if isinstance(ref, Tensor) and isinstance(info, (Spatial, Invariant)) and \
                            _compare(ref, got, info, shift) != 0.0:
                        return False
    finally:
        model.train(was_training)
    return True


def _output_leaves(value: Any) -> list[Any]:
    leaves: list[Any] = []
    if isinstance(value, dict):
        for item in value.values():
            leaves.extend(_output_leaves(item))
    elif isinstance(value, (list, tuple)):
        for item in value:
            leaves.extend(_output_leaves(item))
    else:
        leaves.append(value)
    return leaves

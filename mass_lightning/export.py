"""Export converted models to ``torch.export`` programs and ONNX, and check them in onnxruntime.

A converted model exports like any other: origin selection is integer statistics, an
``argmax`` and gathers, and the exact path for near-ties is a ``torch.cond`` (an ONNX
``If``). In onnxruntime, shifted inputs give bit-identical classifier outputs (and exactly
shifted segmentation outputs), also on forced ties; outputs match PyTorch's to float
rounding. At an exact tie, onnxruntime and PyTorch may pick different but equivalent
origins (``docs/exactness.md``). Under export, no host synchronisation can check for
non-finite inputs: a sample with NaN or Inf gives a NaN output instead of an error.

The command line wraps this: ``mass-lightning export --ckpt_path <run>/checkpoints/last.ckpt
--format onnx --input_size 224 224`` (see :mod:`mass_lightning.cli.export`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .errors import ConfigError, InputSizeError, MassLightningError
from .testing import tie_images

__all__ = [
    "ExportCheckError",
    "OnnxCheck",
    "check_format",
    "check_onnx",
    "example_input",
    "export_onnx",
    "export_program",
]

Format = Literal["onnx", "pt2"]


class ExportCheckError(MassLightningError):
    """An exported model is not exactly shift-equivariant in its runtime."""


def example_input(model: nn.Module, size: Sequence[int] | None = None, batch: int = 1) -> Tensor:
    """A random input for ``model`` of ``size`` (default: its conversion probe's size).

    Raises:
        InputSizeError: ``size`` is not a multiple of the model's total stride.
    """
    record = getattr(model, "conversion", None)
    channels = record.probe_shape[1] if record is not None else 3
    if size is None:
        size = record.probe_shape[-2:] if record is not None else (224, 224)
    height, width = (int(size[0]), int(size[-1]))
    if record is not None:
        my, mx = record.input_multiple
        if height % my or width % mx:
            raise InputSizeError(f"input size {height}x{width} is not a multiple of {my}x{mx}, the model's total "
                                 "stride; export at a size the converted model accepts.")
    return torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(0))


def export_program(model: nn.Module, x: Tensor) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` in eval mode for inputs shaped like ``x``."""
    model = model.eval()
    with torch.no_grad():
        return torch.export.export(model, (x,))


def export_onnx(model: nn.Module, x: Tensor, path: str | Path, *, opset: int | None = None) -> Path:
    """Export ``model`` (eval mode) to ONNX with the dynamo exporter, for inputs shaped like ``x``.

    Args:
        model: a converted model (any model exports; only converted ones are equivariant).
        x: an example input; the file accepts inputs of exactly this shape.
        path: the ``.onnx`` file to write.
        opset: the ONNX opset; ``None`` takes the exporter's default.

    Returns:
        The path written.

    Raises:
        MassLightningError: ``onnx``/``onnxscript`` are not installed (``pip install
            "mass-lightning[export]"``).
    """
    _require("onnx", "onnxscript")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    kwargs: dict[str, Any] = {"dynamo": True}
    if opset is not None:
        kwargs["opset_version"] = opset
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), verbose=False, **kwargs)
        program.save(str(path))
    return path


@dataclass
class OnnxCheck:
    """What :func:`check_onnx` measured.

    Attributes:
        max_difference: largest absolute difference between onnxruntime and PyTorch on the
            inputs given (float rounding is expected).
        shifts: the circular shifts tried.
        equivariant: inputs (``"random"`` or a tie family) whose shifted outputs are exact in
            onnxruntime (bit-identical for invariant outputs, exactly shifted for maps).
        failures: the inputs for which that does not hold.
    """

    max_difference: float
    shifts: list[tuple[int, int]]
    equivariant: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def check_onnx(
    path: str | Path,
    model: nn.Module,
    inputs: Sequence[Tensor],
    *,
    shifts: Sequence[tuple[int, int]] = ((1, 0), (0, 1), (1, 1), (5, 7)),
    ties: bool = True,
) -> OnnxCheck:
    """Run an exported model in onnxruntime: agreement with PyTorch, equivariance within onnxruntime.

    Args:
        path: the ``.onnx`` file.
        model: the PyTorch model it was exported from (eval mode).
        inputs: inputs of the exported shape (for example natural images).
        shifts: circular shifts to try on every input (and on the tie images).
        ties: also try the tie families of :func:`mass_lightning.testing.tie_images` (for
            dense outputs without the odd-period lattice, on which no dense output can be exact).
    """
    _require("onnxruntime")
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: Tensor) -> np.ndarray:
        return session.run(None, {name: x.detach().numpy()})[0]

    model = model.eval()
    check = OnnxCheck(max_difference=0.0, shifts=list(shifts))
    with torch.no_grad():
        for x in inputs:
            check.max_difference = max(check.max_difference, float(np.abs(run(x) - model(x).numpy()).max()))
    candidates = {f"input {i}": x for i, x in enumerate(inputs)}
    if ties and inputs:
        shape = inputs[0].shape
        dense = run(inputs[0]).ndim == 4 and run(inputs[0]).shape[-2:] == tuple(shape[-2:])
        for kind, image in tie_images(shape[1], (shape[-2], shape[-1]), dense=dense).items():
            candidates[kind] = image.expand(shape[0], *image.shape[1:]).contiguous()
    for label, x in candidates.items():
        reference = run(x)
        dense = reference.ndim == 4 and reference.shape[-2:] == tuple(x.shape[-2:])
        exact = True
        for shift in shifts:
            out = run(torch.roll(x, shift, (2, 3)))
            expected = np.roll(reference, shift, axis=(2, 3)) if dense else reference
            exact &= bool(np.array_equal(out, expected))
        (check.equivariant if exact else check.failures).append(label)
    return check


def _require(*packages: str) -> None:
    import importlib.util

    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise MassLightningError(f"exporting needs {', '.join(missing)}: pip install \"mass-lightning[export]\".")


def check_format(fmt: str) -> Format:
    """``fmt`` if it is ``"onnx"`` or ``"pt2"``, else a :class:`ConfigError`."""
    if fmt not in ("onnx", "pt2"):
        raise ConfigError(f"--format must be 'onnx' or 'pt2' (a torch.export program), got {fmt!r}.")
    return fmt  # type: ignore[return-value]

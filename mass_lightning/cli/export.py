"""``mass-lightning export``: a trained checkpoint to an ONNX file or a ``torch.export`` program.

Example::

    mass-lightning export --ckpt_path lightning_logs/quickstart/version_0/checkpoints/last.ckpt
    mass-lightning export --ckpt_path best.ckpt --task segmentation --format pt2 --input_size 512 512

The task class comes from the run's ``config.yaml`` next to the checkpoint folder (or
``--task``); the network is rebuilt from the checkpoint's hyperparameters and its weights
are loaded with ``weights_only=True``. The ONNX file is checked in onnxruntime (agreement
with PyTorch, and exact shift equivariance on the example input and on tie images) unless
``--no-check`` is given.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError

__all__ = ["TASKS", "export_checkpoint", "export_main", "export_parser"]

TASKS: dict[str, str] = {
    "classification": "mass_lightning.tasks.ClassificationTask",
    "segmentation": "mass_lightning.tasks.SegmentationTask",
}
"""``--task`` names and the task classes they load."""


def export_parser(prog: str = "mass-lightning export") -> argparse.ArgumentParser:
    """The options of ``mass-lightning export``."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Export a trained checkpoint to ONNX (checked in onnxruntime) or a torch.export program."
    )
    parser.add_argument("--ckpt_path", required=True, help="Checkpoint of a run (<run>/checkpoints/last.ckpt).")
    parser.add_argument("--format", default="onnx", choices=("onnx", "pt2"), help="Output format (default: onnx).")
    parser.add_argument(
        "--input_size", type=int, nargs=2, metavar=("H", "W"),
        help="Input height and width of the exported graph (default: the size the model was converted at).",
    )  # fmt: skip
    parser.add_argument("--batch_size", type=int, default=1, help="Batch size of the exported graph (default: 1).")
    parser.add_argument("--output", help="File to write (default: next to the checkpoint, .onnx or .pt2).")
    parser.add_argument(
        "--task", help="Task class when the checkpoint has no run config.yaml: classification, segmentation, "
        "or an import path such as my_package.MyTask.",
    )  # fmt: skip
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's).")
    parser.add_argument("--no-check", dest="check", action="store_false", help="Skip the onnxruntime check.")
    return parser


def export_main(args: Sequence[str]) -> Path:
    """Run ``mass-lightning export`` with ``args`` (without ``export``); prints what was written and checked.

    Returns:
        The file written.

    Raises:
        CheckpointError: The checkpoint is missing, unsafe, or cannot rebuild its network.
        ConfigError: The task class cannot be found.
        ExportCheckError: The exported ONNX model is not exactly equivariant in onnxruntime.
    """
    options = export_parser().parse_args(list(args))
    path, check = export_checkpoint(
        options.ckpt_path, fmt=options.format, input_size=options.input_size, batch_size=options.batch_size,
        output=options.output, task=options.task, opset=options.opset, check=options.check,
    )  # fmt: skip
    print(f"wrote {path}")
    if check is not None:
        print(
            f"onnxruntime: max |onnx - torch| = {check.max_difference:.2e}; exactly shift-equivariant on "
            f"{', '.join(check.equivariant)} (shifts {check.shifts})"
        )
    return path


def export_checkpoint(
    ckpt_path: str | Path,
    *,
    fmt: str = "onnx",
    input_size: Sequence[int] | None = None,
    batch_size: int = 1,
    output: str | Path | None = None,
    task: str | None = None,
    opset: int | None = None,
    check: bool = True,
) -> tuple[Path, Any]:
    """Load a task checkpoint and export its network; see :func:`export_main`.

    Returns:
        The file written and the :class:`~mass_lightning.export.OnnxCheck` (``None`` for
        ``pt2`` or ``check=False``).
    """
    import torch

    from ..export import ExportCheckError, check_format, check_onnx, example_input, export_onnx, export_program
    from .runs import RUN_CONFIG, run_of_checkpoint

    fmt = check_format(fmt)
    ckpt_path = Path(ckpt_path)
    task_class = _task_class(task, run_of_checkpoint(ckpt_path), RUN_CONFIG)
    try:
        module = task_class.load_from_checkpoint(ckpt_path, map_location="cpu")
    except (CheckpointError, ConfigError):
        raise
    except (TypeError, KeyError, RuntimeError) as error:
        raise CheckpointError(
            f"Could not rebuild {task_class.__name__} from {str(ckpt_path)!r} ({type(error).__name__}: {error}). "
            "A task built from an nn.Module instance cannot be rebuilt from its checkpoint: export it from Python "
            "with mass_lightning.export.export_onnx(task.model, x, path)."
        ) from error
    network = module.model.eval()
    x = example_input(network, input_size, batch_size)
    output = Path(output) if output else ckpt_path.with_suffix(f".{fmt}")
    if fmt == "pt2":
        torch.export.save(export_program(network, x), str(output))
        return output, None
    export_onnx(network, x, output, opset=opset)
    if not check:
        return output, None
    result = check_onnx(output, network, [x])
    if not result.ok:
        raise ExportCheckError(
            f"{output}: the ONNX model is not exactly shift-equivariant in onnxruntime on {', '.join(result.failures)}. "
            "Please report this with the model's config."
        )
    return output, result


def _task_class(task: str | None, run: Path | None, run_config: str) -> type:
    from ..tasks import BaseTask

    if task is None and run is not None:
        import yaml

        config = yaml.safe_load((run / run_config).read_text()) or {}
        model = config.get("model") if isinstance(config, dict) else None
        task = model.get("class_path") if isinstance(model, dict) else None
    if task is None:
        raise ConfigError(
            "The checkpoint is not in a run folder with a config.yaml; say which task it is with "
            f"--task {{{', '.join(TASKS)}}} (or an import path)."
        )
    path = TASKS.get(task, task)
    module_name, _, name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name or "mass_lightning.tasks"), name)
    except (ImportError, AttributeError):
        found = None
    if not (isinstance(found, type) and issubclass(found, BaseTask)):
        raise ConfigError(f"--task {task!r} is not a task class; use one of {', '.join(TASKS)} or an import path.")
    return found

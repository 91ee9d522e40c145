"""Callbacks the CLI adds to every run."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from rich import get_console
from rich.console import Console
from rich.table import Table

from ..tasks.base import network_name

__all__ = ["FinalMetricsSummary", "describe_run", "format_summary"]

_SPLIT_TITLES = {"train": "training", "val": "validation", "test": "test"}


def _describe(module: LightningModule) -> str:
    """``"resnet20 (mass)"``, ``"deeplabv3plus/resnet18 (mass, lpf3)"`` or the class name."""
    hparams: Mapping[str, Any] = getattr(module, "hparams", {})
    arch = hparams.get("arch")
    if arch is not None and network_name(arch) != arch:  # your own segmentation model
        name = network_name(arch)
    elif hparams.get("backbone"):
        name = network_name(hparams["backbone"])
    else:
        name = "/".join(network_name(hparams[k]) for k in ("arch", "encoder") if hparams.get(k))
    details = [str(hparams[k]) for k in ("method", "antialias") if hparams.get(k)]
    if not name:
        return type(module).__name__
    return f"{name} ({', '.join(details)})" if details else str(name)


def format_summary(metrics: Mapping[str, Any], split: str) -> str:
    """One line with the ``split/...`` metrics, task metrics first and loss last.

    Example:
        >>> format_summary({"val/acc": 0.91, "val/consistency": 1.0, "val/loss": 0.3, "train/acc": 0.9}, "val")
        'val: acc 0.9100, consistency 1.0000, loss 0.3000'
    """
    prefix = f"{split}/"
    names = sorted((k for k in metrics if k.startswith(prefix)), key=lambda k: (k.endswith("/loss"), k))
    parts = [f"{name[len(prefix):]} {float(metrics[name]):.4f}" for name in names]
    return f"{split}: {', '.join(parts)}" if parts else f"{split}: no metrics logged"


def describe_run(trainer: Trainer) -> list[str]:
    """Lines that say where a finished ``fit`` saved its run: the folder, its checkpoints, the way back.

    Example:
        >>> describe_run(trainer)  # doctest: +SKIP
        ['Run folder: runs/version_0',
         '  checkpoints: best-epoch=2.ckpt (best val/acc), last.ckpt (last)',
         '  back to this run: mass-lightning validate --ckpt_path runs/version_0/checkpoints/last.ckpt']
    """
    lines = [f"Run folder: {trainer.log_dir}"] if trainer.log_dir else []
    saved, last, monitors = [], None, []
    for callback in trainer.checkpoint_callbacks:
        best = getattr(callback, "best_model_path", "")
        last = getattr(callback, "last_model_path", "") or last
        monitor = getattr(callback, "monitor", None)
        if best and best != last:
            saved.append(f"{Path(best).name} (best {monitor})" if monitor else Path(best).name)
        elif monitor:
            monitors.append(monitor)
    if last:
        saved.append(f"{Path(last).name} (last)")
    if saved:
        lines.append(f"  checkpoints: {', '.join(saved)}")
    if monitors and not any("(best" in entry for entry in saved):
        lines.append(f"  no best checkpoint: {', '.join(monitors)} was never logged (validation did not run)")
    checkpoint = last or next((callback.best_model_path for callback in trainer.checkpoint_callbacks
                               if getattr(callback, "best_model_path", "")), "")  # fmt: skip
    if checkpoint:
        lines.append(f"  back to this run: mass-lightning validate --ckpt_path {checkpoint}")
    return lines


class FinalMetricsSummary(Callback):
    """Print the final metrics of a run: a Rich table and a one-line summary.

    After ``fit`` it reports the last validation metrics (and the training ones of the
    last epoch) and the run folder with its checkpoints (:func:`describe_run`), after
    ``validate`` and ``test`` the metrics of that run. The report is
    printed at ``teardown``, after the progress bar has finished, and only by the
    global rank 0. The line is also kept in :attr:`last_summary`.

    Args:
        console: Rich console to print to (default: Rich's global console, the one the
            progress bar uses).

    Example:
        >>> trainer = Trainer(callbacks=[FinalMetricsSummary()])  # doctest: +SKIP
    """

    def __init__(self, console: Console | None = None) -> None:
        super().__init__()
        self.console = console
        self.last_summary: str | None = None
        self._pending: Table | None = None
        self._run_lines: list[str] = []

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._collect(trainer, pl_module, ("val", "train"))
        if trainer.is_global_zero:
            self._run_lines = describe_run(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING and not trainer.sanity_checking:
            self._collect(trainer, pl_module, ("val",))

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._collect(trainer, pl_module, ("test",))

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        console = self.console or get_console()
        if self._pending is not None:
            console.print(self._pending)
            console.print(self.last_summary, style="bold", markup=False, highlight=False)
            self._pending = None
        for line in self._run_lines:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        self._run_lines = []

    def _collect(self, trainer: Trainer, pl_module: LightningModule, splits: tuple[str, ...]) -> None:
        metrics = {}
        for key, value in trainer.callback_metrics.items():
            if "/" not in key or key.endswith("_step") or value.numel() != 1:
                continue
            metrics[key.removesuffix("_epoch")] = float(value)
        shown = [split for split in splits if any(k.startswith(f"{split}/") for k in metrics)]
        if not trainer.is_global_zero or not shown:
            return
        main_split = shown[0]
        table = Table(title=f"Final {_SPLIT_TITLES.get(main_split, main_split)} metrics: {_describe(pl_module)}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for split in shown:
            for name in sorted(k for k in metrics if k.startswith(f"{split}/")):
                table.add_row(name, f"{metrics[name]:.4f}")
        self.last_summary = f"{_describe(pl_module)} | {format_summary(metrics, main_split)}"
        self._pending = table

"""``make quickstart``: train a baseline and a MASS ResNet-20 the same way on the built-in data, then compare them.

Run it from the repository (it reads ``configs/quickstart.yaml``)::

    python -m mass_lightning.cli.quickstart                        # what `make quickstart` runs
    python -m mass_lightning.cli.quickstart --root runs -- --trainer.max_epochs 1

Both runs use the same config, seed and schedule; only ``model.init_args.method`` differs.
They use one torch thread unless ``--threads`` says otherwise: the images are 16x16 pixels,
too small to gain from more, and on a CPU shared with other jobs competing threads made a
run ten times slower on the project's machine.
The command ends with a two-row table (accuracy, consistency, images whose class changes
under a circular shift) and the two run folders.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from rich import get_console
from rich.console import Console
from rich.table import Table

from ..data.paths import REPO_ROOT
from ..errors import ConfigError, MassLightningError
from .main import run_cli

__all__ = ["METHODS", "QuickstartRun", "main", "quickstart", "quickstart_table"]

METHODS: tuple[str, ...] = ("baseline", "mass")
"""The two runs: circular padding only, and MASS."""
CONFIG = Path("configs") / "quickstart.yaml"
DEFAULT_ROOT = Path("lightning_logs") / "quickstart"


@dataclass(frozen=True)
class QuickstartRun:
    """The outcome of one quickstart training.

    Attributes:
        method: ``"baseline"`` or ``"mass"``.
        accuracy: Validation accuracy (unshifted images).
        consistency: Fraction of validation images whose class is the same under two
            random circular shifts (paper eq. 4).
        num_images: Validation images.
        run_dir: The run folder (checkpoints, ``config.yaml``, logs).
        seconds: Wall time of the run.
    """

    method: str
    accuracy: float
    consistency: float
    num_images: int
    run_dir: Optional[Path]
    seconds: float

    @property
    def changed(self) -> int:
        """Validation images whose class changed between the two shifts."""
        return round((1.0 - self.consistency) * self.num_images)


def find_config(config: Optional[str] = None) -> Path:
    """``config`` if given, else ``configs/quickstart.yaml`` in the working directory or the repository."""
    candidates = [Path(config)] if config else [CONFIG, REPO_ROOT / CONFIG]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"Quickstart config not found (looked for {', '.join(str(c) for c in candidates)}). Run from the "
        "repository, or pass --config <path to configs/quickstart.yaml>."
    )


def quickstart(
    config: Optional[str] = None, root: Path = DEFAULT_ROOT, overrides: Sequence[str] = ()
) -> list[QuickstartRun]:
    """Train one model per method of :data:`METHODS` with the quickstart config; return the outcomes.

    Args:
        config: The config (default: ``configs/quickstart.yaml``).
        root: Each run goes to ``<root>/<method>/version_<n>``.
        overrides: More ``mass-lightning fit`` arguments, applied to both runs
            (e.g. ``["--trainer.max_epochs", "1"]``).
    """
    path = find_config(config)
    runs = []
    for method in METHODS:
        start = time.perf_counter()
        cli = run_cli(["fit", "--config", str(path), "--model.init_args.method", method,
                       "--trainer.default_root_dir", str(Path(root) / method), *overrides])  # fmt: skip
        metrics = cli.trainer.callback_metrics
        for key in ("val/acc", "val/consistency"):
            if key not in metrics:
                raise ConfigError(
                    f"Quickstart: the {method} run logged no {key}; validation did not run. Keep "
                    "trainer.limit_val_batches above 0 and let the run finish an epoch."
                )
        num_images = len(cli.datamodule.dataset("val"))
        limit = cli.trainer.limit_val_batches
        if isinstance(limit, int):
            num_images = min(num_images, limit * cli.datamodule.batch_size)
        runs.append(QuickstartRun(method, float(metrics["val/acc"]), float(metrics["val/consistency"]), num_images,
                                  cli.run_dir, time.perf_counter() - start))  # fmt: skip
    return runs


def quickstart_table(runs: Sequence[QuickstartRun]) -> Table:
    """The comparison table: method, accuracy, consistency, images that change class."""
    table = Table(title="Quickstart: one ResNet-20 recipe, two ways to downsample")
    for column in ("method", "accuracy", "consistency", "images whose class changes"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for run in runs:
        table.add_row(run.method, f"{100 * run.accuracy:.2f}%", f"{100 * run.consistency:.2f}%",
                      f"{run.changed} of {run.num_images}")  # fmt: skip
    return table


def main(args: Optional[Sequence[str]] = None, console: Optional[Console] = None) -> list[QuickstartRun]:
    """Entry point of ``python -m mass_lightning.cli.quickstart``: train both, print the table and the run folders."""
    parser = argparse.ArgumentParser(
        prog="python -m mass_lightning.cli.quickstart",
        description="Train a baseline and a MASS ResNet-20 with the same schedule on synthetic periodic-defect "
        "images and compare their accuracy and shift consistency.",
    )
    parser.add_argument("--config", help="quickstart config (default: configs/quickstart.yaml)")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="runs go to <root>/<method>/version_<n>")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (default 1: 16x16 images gain nothing from more, and on a CPU that other jobs "
        "share, competing threads slow the run down many times)",
    )  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="more mass-lightning fit arguments, after --")
    options = parser.parse_args(args)
    torch.set_num_threads(options.threads)
    start = time.perf_counter()
    runs = quickstart(options.config, options.root, options.overrides)
    console = console or get_console()
    console.print(quickstart_table(runs))
    console.print("Consistency: the fraction of validation images whose class is the same for two random circular "
                  "shifts (paper eq. 4).", soft_wrap=True)  # fmt: skip
    console.print("Run folders (checkpoints, config.yaml, logs):", soft_wrap=True)
    for run in runs:
        console.print(f"  {run.method:<9}{run.run_dir}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"Both trainings took {time.perf_counter() - start:.0f} s.", soft_wrap=True)
    return runs


if __name__ == "__main__":
    try:
        main()
    except MassLightningError as error:  # a missing config, a run without validation: one line, as the CLI does
        print(f"quickstart: error: {type(error).__name__}: {error}", file=sys.stderr)
        raise SystemExit(2) from error

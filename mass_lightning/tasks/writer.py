"""Write the outputs of ``predict`` into the run folder: ``predictions.csv``, plus label maps for segmentation."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from rich import get_console
from rich.console import Console

__all__ = ["PREDICTIONS_FILE", "PredictionWriter"]

PREDICTIONS_FILE = "predictions.csv"
"""Name of the table that :class:`PredictionWriter` writes."""


class PredictionWriter(BasePredictionWriter):
    """Save what a task's ``predict_step`` returns, one row per image, and say where.

    The table ``predictions.csv`` starts with the image's ``path`` (``test/<index>``
    for the test split), followed by the task's columns
    (:meth:`~mass_lightning.tasks.BaseTask.prediction_rows`): for classification
    ``class, class_id, probability, unchanged_under_shifts, shift_a, shift_b``; for
    segmentation ``label_map`` (a PNG under ``label_maps/``), ``pixels_unchanged_under_shifts``,
    ``shift_a``, ``shift_b``. A new ``predict`` into the same folder replaces the table.
    With several processes, each writes ``predictions_rank<r>.csv``.

    The ``mass-lightning`` command adds one to every run; its folder is then the run's
    (``<run>/predict/`` for a checkpoint of a saved run).

    Args:
        output_dir: Folder for the files; ``None`` uses ``trainer.log_dir`` (the run folder).
        console: Rich console for the closing line (default: Rich's global console).

    Example:
        >>> trainer = Trainer(callbacks=[PredictionWriter("predictions/")])  # doctest: +SKIP
        >>> trainer.predict(task, datamodule=PeriodicDefectsDataModule(predict_dir="new_images/"))  # doctest: +SKIP
        Wrote 12 predictions to predictions/predictions.csv: 12 of 12 images keep their class under both shifts.
    """

    def __init__(self, output_dir: Optional[Union[str, Path]] = None, console: Optional[Console] = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.console = console
        self.path: Optional[Path] = None
        self._rows: list[dict[str, Any]] = []
        self._names: dict[str, int] = {}
        self._folder = Path(".")
        self._classes: list[str] = []
        self._predict_dir: Optional[Path] = None

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Pick the folder, read the class names and the predict folder of the datamodule."""
        self._folder = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        self._rows, self._names = [], {}
        datamodule = getattr(trainer, "datamodule", None)
        try:
            self._classes = [str(name) for name in getattr(datamodule, "classes", None) or ()]
        except (OSError, ValueError):  # e.g. ImageNet reads its class names from disk
            self._classes = []
        predict_dir = getattr(datamodule, "predict_dir", None)
        self._predict_dir = Path(predict_dir) if predict_dir else None

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Optional[Sequence[int]],
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Turn one batch of predictions into rows (the task may write files, e.g. label maps)."""
        if not isinstance(prediction, Mapping) or not hasattr(pl_module, "prediction_rows"):
            return
        size = len(next(iter(prediction.values())))
        if isinstance(batch, Mapping) and "path" in batch:
            paths = [str(path) for path in batch["path"]]
        else:
            paths = [f"test/{len(self._rows) + i}" for i in range(size)]
        names = [self._unique_name(path) for path in paths]
        rows = pl_module.prediction_rows(prediction, names, self._folder, self._classes)
        self._rows += [{"path": path, **row} for path, row in zip(paths, rows)]

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the table and print where it is, with how many predictions survive the shifts."""
        if not self._rows:
            return
        rank = f"_rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        self.path = self._folder / PREDICTIONS_FILE.replace(".csv", f"{rank}.csv")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(self._rows[0]))
            writer.writeheader()
            writer.writerows(self._rows)
        (self.console or get_console()).print(self.summary(), markup=False, highlight=False, soft_wrap=True)

    def summary(self) -> str:
        """``Wrote N predictions to <path>``, and how many kept their prediction under the two shifts."""
        line = f"Wrote {len(self._rows)} predictions to {self.path}"
        column = next((name for name in self._rows[0] if name.endswith("unchanged_under_shifts")), None)
        values = [row[column] for row in self._rows if column and row[column] != ""]
        if not values:
            return line + "."
        if column == "unchanged_under_shifts":
            kept = sum(value == "True" for value in values)
            return f"{line}: {kept} of {len(values)} images keep their class under both shifts."
        mean = sum(float(value) for value in values) / len(values)
        return f"{line}: on average {100 * mean:.2f}% of the pixels keep their class under both shifts."

    def _unique_name(self, path: str) -> str:
        """The image's path relative to the predict folder, made unique (it names output files)."""
        name = Path(path)
        if self._predict_dir is not None:
            try:
                name = name.relative_to(self._predict_dir)
            except ValueError:
                name = Path(name.name)
        key = name.as_posix()
        count = self._names.get(key, 0)
        self._names[key] = count + 1
        return key if count == 0 else f"{name.with_suffix('').as_posix()}_{count}{name.suffix}"

"""The ``mass-lightning`` command: LightningCLI with the MASS tasks and datamodules."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, ProgressBar, RichProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from ..console import DESCRIPTION
from ..errors import MassLightningError
from ..tasks import BaseTask, PredictionWriter
from .callbacks import FinalMetricsSummary
from .config_errors import MassArgumentParser
from .preflight import check_checkpoint_arguments, with_shipped_configs
from .runs import RunFolder, ensure_last_checkpoint, run_folder, with_run_config

__all__ = ["DEBUG_ENV_VAR", "MassLightningCLI", "main", "run_cli"]

DEBUG_ENV_VAR = "MASS_LIGHTNING_DEBUG"
"""Set to 1 to get full tracebacks instead of one-line errors for bad configs and data."""

#: Errors that the CLI reports in one line (with exit code 2): the library's own, also when
#: jsonargparse wraps them. Any other exception keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (MassLightningError,)


class MassLightningCLI(LightningCLI):
    """:class:`~lightning.pytorch.cli.LightningCLI` with one folder per run and default callbacks.

    Every run gets one version folder shared by all loggers, with its checkpoints and
    ``config.yaml`` (see :mod:`mass_lightning.cli.runs`); it is :attr:`run_dir`. A config
    without loggers gets a CSV and a TensorBoard logger there. Every trainer gets:

    * a :class:`~lightning.pytorch.callbacks.RichProgressBar`, unless the config disables
      the progress bar or already lists a progress bar;
    * a :class:`~mass_lightning.cli.FinalMetricsSummary`, unless the config lists one;
    * a :class:`~mass_lightning.tasks.PredictionWriter`, unless the config lists a
      prediction writer (``predict`` then writes ``predictions.csv`` into the run folder);
    * ``save_last=True`` on monitored checkpoints (:func:`~mass_lightning.cli.runs.ensure_last_checkpoint`).

    Before anything is built, ``--config configs/...`` paths missing from the working
    directory are taken from the configs shipped with the package, an evaluation of a run's
    checkpoint reads the run's ``config.yaml``, and checkpoints are only loaded with
    ``weights_only=True`` (see :mod:`mass_lightning.cli.preflight`).
    """

    run: Optional[RunFolder] = None

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse as LightningCLI does, with shipped configs found, a run's config read for its
        checkpoint, and checkpoint loading made safe."""
        if args is None:  # the command line (LightningCLI warns when given args and sys.argv)
            self.config = parser.parse_args(with_run_config(with_shipped_configs(sys.argv[1:])))
        else:
            if isinstance(args, (list, tuple)):
                args = with_run_config(with_shipped_configs(args))
            super().parse_arguments(parser, args)
        check_checkpoint_arguments(self.config)

    def instantiate_classes(self) -> None:
        """Build model, data and trainer with the loggers pointed at the run folder."""
        with run_folder(self.config, self.subcommand) as self.run:
            super().instantiate_classes()

    @property
    def run_dir(self) -> Optional[Path]:
        """The folder of this run: logs, ``config.yaml``, checkpoints, predictions."""
        return self.run.path if self.run is not None else None

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Build the trainer with the default callbacks added."""
        config = self._get(self.config_init, "trainer", default={})
        callbacks = config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(RichProgressBar())
        if not any(isinstance(c, FinalMetricsSummary) for c in callbacks):
            callbacks.append(FinalMetricsSummary())
        if not any(isinstance(c, BasePredictionWriter) for c in callbacks):
            callbacks.append(PredictionWriter())
        ensure_last_checkpoint(callbacks)
        if self.run is not None and self.run.default_loggers and config.get("logger") in (None, True):
            kwargs = {"logger": self.run.loggers(), **kwargs}
        return super().instantiate_trainer(**{"callbacks": callbacks, **kwargs})


def run_cli(
    args: ArgsType = None, *, prog: str = "mass-lightning", description: str = DESCRIPTION
) -> MassLightningCLI:
    """Parse ``args``, build model, data and trainer, and run the subcommand.

    Same as :func:`main`, but errors propagate as exceptions and the CLI object is
    returned, with ``.model``, ``.datamodule`` and ``.trainer`` (and
    ``trainer.callback_metrics`` after a run).

    Args:
        args: Command-line arguments, e.g. ``["fit", "--config", "configs/quickstart.yaml"]``;
            ``None`` reads ``sys.argv[1:]``.
        prog: Program name shown in help and errors.
        description: Help text of the command.

    Example:
        >>> cli = run_cli(["validate", "--config", "configs/quickstart.yaml"])  # doctest: +SKIP
        >>> cli.trainer.callback_metrics["val/consistency"]  # doctest: +SKIP
        tensor(1.)
    """
    return MassLightningCLI(
        model_class=BaseTask,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        parser_kwargs={"prog": prog, "description": description},
        parser_class=MassArgumentParser,
        args=args,
    )


def main(args: ArgsType = None, *, prog: str = "mass-lightning", description: str = DESCRIPTION) -> None:
    """Entry point of ``mass-lightning {fit,validate,test,predict} --config ...`` and ``mass-lightning export``.

    The model is any :class:`~mass_lightning.tasks.BaseTask` subclass and the data any
    ``LightningDataModule`` (``class_path`` + ``init_args`` in the config); several
    ``--config`` files compose, the last one wins. jsonargparse reports unknown keys and
    values of the wrong type; the library's own errors (a
    :class:`~mass_lightning.errors.MassLightningError`: unknown backbone, missing dataset
    folder, unsafe checkpoint, ...) are printed as one ``error:`` line and exit with code 2
    (set ``MASS_LIGHTNING_DEBUG=1`` for the traceback). Any other exception, such as a bug
    inside torch, propagates with its traceback.

    Args:
        args: Command-line arguments; ``None`` reads ``sys.argv[1:]``.
        prog: Program name shown in help and errors.
        description: Help text of the command.

    Example:
        >>> main(["fit", "--config", "configs/quickstart.yaml"])  # doctest: +SKIP
    """
    argv = sys.argv[1:] if args is None else list(args)  # type: ignore[arg-type]
    try:
        if argv and argv[0] == "export":
            from .export import export_main

            export_main(argv[1:])
        else:
            run_cli(args, prog=prog, description=description)
    except Exception as error:
        cause = _user_error(error)
        if cause is None or os.environ.get(DEBUG_ENV_VAR, "").strip() not in ("", "0"):
            raise
        print(
            f"{prog}: error: {type(cause).__name__}: {cause}\n(Set {DEBUG_ENV_VAR}=1 to see the full traceback.)",
            file=sys.stderr,
        )
        raise SystemExit(2) from error


def _user_error(error: BaseException | None) -> BaseException | None:
    """The library error in ``error``'s chain of causes (jsonargparse wraps errors raised in ``__init__``)."""
    while error is not None and not isinstance(error, USER_ERRORS):
        error = error.__cause__
    return error

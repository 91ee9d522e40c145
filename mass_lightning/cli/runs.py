"""Where runs go: one version folder per run, shared by every logger, holding checkpoints and ``config.yaml``.

Layout (``<root>`` is ``--trainer.default_root_dir``, else ``lightning_logs`` in the working
directory; the shipped configs set it, e.g. ``lightning_logs/quickstart``)::

    <root>/version_<n>/               one fit run: the CSV and TensorBoard logs, hparams.yaml,
        config.yaml                   the composed config of the run
        checkpoints/last.ckpt         the last weights, and the best ones (best-....ckpt)
        validate/  test/  predict/    evaluations of this run's checkpoints (logs, their config,
                                      predictions.csv)

``validate``, ``test`` and ``predict`` with a ``--ckpt_path`` inside a run folder log into
that run's ``<subcommand>/`` folder, and read the run's ``config.yaml`` when no ``--config``
is given (:func:`with_run_config`).
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from jsonargparse import Namespace
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

__all__ = [
    "DEFAULT_ROOT",
    "EVAL_SUBCOMMANDS",
    "RUN_CONFIG",
    "RunFolder",
    "ensure_last_checkpoint",
    "next_version",
    "run_folder",
    "run_of_checkpoint",
    "with_run_config",
]

DEFAULT_ROOT = "lightning_logs"
"""Folder of the runs when ``trainer.default_root_dir`` is not given (relative to the working directory)."""
RUN_CONFIG = "config.yaml"
"""The composed config that ``fit`` saves in its run folder."""
EVAL_SUBCOMMANDS: tuple[str, ...] = ("validate", "test", "predict")

#: Loggers whose folder is ``save_dir/name/version``; they share one version per run.
_FOLDER_LOGGERS: tuple[type, ...] = (CSVLogger, TensorBoardLogger)
_VERSION = re.compile(r"^version_(\d+)$")


def run_of_checkpoint(ckpt_path: Any) -> Optional[Path]:
    """The run folder of a checkpoint ``<run>/checkpoints/*.ckpt`` next to ``<run>/config.yaml``, else ``None``.

    Example:
        >>> run_of_checkpoint("lightning_logs/quickstart/version_0/checkpoints/last.ckpt")  # doctest: +SKIP
        PosixPath('lightning_logs/quickstart/version_0')
    """
    if not ckpt_path or not isinstance(ckpt_path, (str, Path)):
        return None
    folder = Path(ckpt_path).expanduser().parent
    if folder.name == "checkpoints" and (folder.parent / RUN_CONFIG).is_file():
        return folder.parent
    return None


def with_run_config(args: Sequence[str]) -> list[str]:
    """``args`` with ``--config <run>/config.yaml`` added for an evaluation of a run's checkpoint.

    When ``validate``, ``test`` or ``predict`` gets a ``--ckpt_path`` inside a run folder
    and no ``--config``, the run's saved config is read first (later flags still
    override it), so ``mass-lightning validate --ckpt_path <run>/checkpoints/last.ckpt``
    rebuilds the model and data of the run. Other arguments are returned unchanged.

    Example:
        >>> with_run_config(["validate", "--ckpt_path", "runs/version_0/checkpoints/last.ckpt"])  # doctest: +SKIP
        ['validate', '--config', 'runs/version_0/config.yaml', '--ckpt_path', 'runs/version_0/checkpoints/last.ckpt']
    """
    args = list(args)
    position = next((i for i, arg in enumerate(args) if arg in EVAL_SUBCOMMANDS), None)
    if position is None:
        return args
    rest = args[position + 1 :]
    if any(arg in ("--config", "-c") or arg.startswith(("--config=", "-c=")) for arg in rest):
        return args
    ckpt_path = None
    for i, arg in enumerate(rest):
        if arg == "--ckpt_path" and i + 1 < len(rest):
            ckpt_path = rest[i + 1]
        elif arg.startswith("--ckpt_path="):
            ckpt_path = arg.split("=", 1)[1]
    run = run_of_checkpoint(ckpt_path)
    if run is None:
        return args
    return [*args[: position + 1], "--config", str(run / RUN_CONFIG), *rest]


def next_version(folders: Sequence[Path]) -> int:
    """One more than the largest ``version_<n>`` in any of ``folders`` (0 if there is none)."""
    found = [
        int(match.group(1))
        for folder in folders
        if folder.is_dir()
        for entry in folder.iterdir()
        if entry.is_dir() and (match := _VERSION.match(entry.name))
    ]
    return max(found, default=-1) + 1


@dataclass(frozen=True)
class RunFolder:
    """Where one run writes: the folder, and the default loggers to add if the config lists none.

    Attributes:
        path: The run folder (``None`` when the configured loggers write no local folder).
        save_dir: ``save_dir`` of the default loggers.
        version: ``version`` of the default loggers (``version_<n>``, or the subcommand).
        default_loggers: Whether the config lists no logger (``logger: null``/``true``), so
            the CLI adds a CSV and a TensorBoard logger (:meth:`loggers`).
    """

    path: Optional[Path]
    save_dir: Path
    version: Union[int, str]
    default_loggers: bool

    def loggers(self) -> list[Logger]:
        """A CSV and (when installed) a TensorBoard logger that both write to :attr:`path`."""
        loggers: list[Logger] = [CSVLogger(self.save_dir, name="", version=self.version)]
        if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
            loggers.append(TensorBoardLogger(self.save_dir, name="", version=self.version))
        return loggers


@contextmanager
def run_folder(config: Namespace, subcommand: Optional[str]) -> Iterator[Optional[RunFolder]]:
    """Point the run's loggers at one folder while the classes are built; yields the :class:`RunFolder`.

    Sets, in ``config[subcommand].trainer`` (restored on exit, so that the saved
    ``config.yaml`` holds the values as given):

    * ``default_root_dir``: as given, or :data:`DEFAULT_ROOT`;
    * for the CSV/TensorBoard loggers of the config: one ``version``, shared by all of them,
      the next free one;
    * for ``validate``/``test``/``predict`` of a checkpoint in a run folder: everything to
      ``<run>/<subcommand>/``.

    Without a configured logger the run folder is ``<default_root_dir>/version_<n>`` and
    :meth:`RunFolder.loggers` gives the loggers to add.

    Args:
        config: The parsed CLI config (with the subcommand level).
        subcommand: ``fit``, ``validate``, ``test`` or ``predict`` (``None``: nothing to do).

    Yields:
        The run folder, or ``None`` when there is no trainer config (no subcommand).
    """
    section = config.get(subcommand) if subcommand else None
    trainer = section.get("trainer") if isinstance(section, Namespace) else None
    if not isinstance(trainer, Namespace):
        yield None
        return
    given = copy.deepcopy(trainer)
    try:
        yield _configure(section, trainer, subcommand or "")
    finally:
        section["trainer"] = given


def _configure(section: Namespace, trainer: Namespace, subcommand: str) -> RunFolder:
    root = Path(trainer.get("default_root_dir") or DEFAULT_ROOT)
    run = run_of_checkpoint(section.get("ckpt_path")) if subcommand in EVAL_SUBCOMMANDS else None
    logger = trainer.get("logger")
    default_loggers = logger is None or logger is True
    specs = [spec for spec in (logger if isinstance(logger, list) else [logger]) if _is_folder_logger(spec)]
    for spec in specs:
        if not isinstance(spec.get("init_args"), Namespace):
            spec["init_args"] = Namespace()
    if run is not None:
        trainer["default_root_dir"] = str(run / subcommand)
        for spec in specs:
            spec.init_args["save_dir"], spec.init_args["name"], spec.init_args["version"] = str(run), "", subcommand
        return RunFolder(run / subcommand, run, subcommand, default_loggers)
    trainer["default_root_dir"] = str(root)
    if default_loggers:
        version = next_version([root])
        return RunFolder(root / f"version_{version}", root, version, True)
    pending = [spec for spec in specs if spec.init_args.get("version") is None]
    version = next_version([Path(spec.init_args.save_dir) / (spec.init_args.get("name") or "") for spec in pending])
    for spec in pending:
        spec.init_args["version"] = version
    if not specs:  # no logger (the trainer's folder is then the root) or loggers without a folder
        return RunFolder(root if logger is False else None, root, version, False)
    first = specs[0].init_args
    name_version = first.version if isinstance(first.version, str) else f"version_{first.version}"
    return RunFolder(Path(first.save_dir) / (first.get("name") or "") / name_version, root, version, False)


def _is_folder_logger(spec: Any) -> bool:
    """Whether a logger entry of the config is a CSV or TensorBoard logger (folder ``save_dir/name/version``)."""
    if not isinstance(spec, Namespace) or not isinstance(spec.get("class_path"), str):
        return False
    module_name, _, name = spec.class_path.rpartition(".")
    try:
        logger_class = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return False
    return isinstance(logger_class, type) and issubclass(logger_class, _FOLDER_LOGGERS)


def ensure_last_checkpoint(callbacks: Sequence[Callback]) -> None:
    """Make a run end with a checkpoint: ``save_last=True`` on monitored ``ModelCheckpoint`` callbacks.

    A checkpoint that monitors a validation metric saves nothing when validation never
    ran (``fit --trainer.max_steps 20`` shorter than an epoch); ``last.ckpt`` is then the
    run's only checkpoint. An explicit ``save_last: false`` is kept.
    """
    for callback in callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.monitor is not None and callback.save_last is None:
            callback.save_last = True

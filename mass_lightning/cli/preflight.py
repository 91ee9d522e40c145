"""Checks of the command line made before any model or data is built.

* :func:`with_shipped_configs`: ``--config configs/quickstart.yaml`` works from any folder,
  also with an installed (not editable) package, which ships the ``configs/`` folder.
* :func:`check_checkpoint_arguments`: ``--ckpt_path`` is checked for pickled code and
  ``weights_only`` is forced to ``True``, so Lightning never unpickles objects.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..checkpoints import CONVERT_COMMAND, check_checkpoint
from ..errors import CheckpointError

__all__ = ["SHIPPED_CONFIGS", "check_checkpoint_arguments", "find_shipped_config", "with_shipped_configs"]

SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
"""The configs shipped with the package (in a checkout, a link to the top-level ``configs/``)."""

CONFIG_FLAGS = ("-c", "--config")
#: ``ckpt_path`` values that Lightning resolves itself.
LIGHTNING_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")


def find_shipped_config(name: str | os.PathLike) -> Path | None:
    """The shipped config ``name`` refers to, e.g. ``"configs/quickstart.yaml"`` or ``"quickstart.yaml"``.

    Returns:
        The file, or ``None`` if no shipped config has that relative path.

    Example:
        >>> find_shipped_config("configs/quickstart.yaml").name
        'quickstart.yaml'
    """
    path = Path(name)
    if path.is_absolute():
        return None
    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    candidate = SHIPPED_CONFIGS.joinpath(*parts) if parts else None
    return candidate if candidate is not None and candidate.is_file() else None


def with_shipped_configs(args: Sequence[str]) -> list[str]:
    """``args`` with every ``--config``/``-c`` file that is not in the working directory taken from the shipped configs.

    A path that exists as given is kept, so a local ``configs/`` folder wins.

    Example:
        >>> with_shipped_configs(["fit", "--config", "configs/quickstart.yaml"])[2]  # doctest: +SKIP
        '/.../site-packages/mass_lightning/configs/quickstart.yaml'
    """
    resolved = list(args)
    for i, arg in enumerate(resolved):
        flag, equals, value = arg.partition("=")
        if equals and flag in CONFIG_FLAGS:
            resolved[i] = f"{flag}={_shipped_or_given(value)}"
        elif arg in CONFIG_FLAGS and i + 1 < len(resolved):
            resolved[i + 1] = _shipped_or_given(resolved[i + 1])
    return resolved


def _shipped_or_given(value: str) -> str:
    if Path(value).exists():
        return value
    shipped = find_shipped_config(value)
    return str(shipped) if shipped is not None else value


def check_checkpoint_arguments(config: Any) -> None:
    """Make the subcommand load its checkpoint without running pickled code.

    Sets ``weights_only`` to ``True`` and checks a local ``ckpt_path`` with
    :func:`~mass_lightning.checkpoints.check_checkpoint`.

    Args:
        config: The parsed LightningCLI config (a jsonargparse ``Namespace``).

    Raises:
        CheckpointError: If ``weights_only`` is ``false``.
        CheckpointNotFoundError: If ``ckpt_path`` is a local path that is not a file.
        UnsafeCheckpointError: If the checkpoint holds pickled Python objects.
    """
    subcommand = config.get("subcommand")
    arguments = config.get(subcommand) if subcommand else None
    if arguments is None or "weights_only" not in arguments:
        return
    if arguments.get("weights_only") is False:
        raise CheckpointError(
            "mass-lightning loads checkpoints with weights_only=True only, so that loading cannot run pickled code; "
            f"drop --weights_only false. Convert a trusted checkpoint that holds Python objects with: "
            f"{CONVERT_COMMAND} OLD NEW"
        )
    arguments["weights_only"] = True
    ckpt_path = arguments.get("ckpt_path")
    if ckpt_path and str(ckpt_path) not in LIGHTNING_CKPT_KEYWORDS and "://" not in str(ckpt_path):
        check_checkpoint(ckpt_path)

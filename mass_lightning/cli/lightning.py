"""The ``lightning`` command: ``lightning fit --config ...`` runs the MASS CLI, other subcommands go to lightning-sdk.

The ``lightning`` package no longer ships a ``lightning`` command; the optional
``lightning-sdk`` package (Lightning AI's cloud tools: ``lightning login``, ...)
installs one. This wrapper keeps both working.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from ..console import LIGHTNING_DESCRIPTION
from .main import main

__all__ = ["OWN_SUBCOMMANDS", "find_sdk_entry_point", "lightning_main"]

OWN_SUBCOMMANDS: tuple[str, ...] = ("fit", "validate", "test", "predict", "export")
"""Subcommands that this wrapper runs with :func:`~mass_lightning.cli.main`."""

SDK_MODULE = "lightning_sdk.cli.entrypoint"
SDK_FUNCTION = "main_cli"


def find_sdk_entry_point() -> Callable[[], Any] | None:
    """The ``lightning`` command of lightning-sdk, or ``None`` if it is not installed.

    Looks for a ``lightning`` console script that is not this package's, then for
    ``lightning_sdk.cli.entrypoint.main_cli``.
    """
    for entry_point in entry_points(group="console_scripts", name="lightning"):
        if not entry_point.value.startswith("mass_lightning"):
            try:
                return entry_point.load()
            except (ImportError, AttributeError):
                continue
    try:
        return getattr(importlib.import_module(SDK_MODULE), SDK_FUNCTION)
    except (ImportError, AttributeError):
        return None


def _not_installed_message(command: str) -> str:
    own = ", ".join(OWN_SUBCOMMANDS)
    return (
        f"lightning: '{command}' is not a training subcommand ({own}).\n"
        "This 'lightning' command is installed by mass-lightning: it runs fit/validate/test/predict like "
        "'mass-lightning' and forwards every other subcommand to the Lightning AI SDK, which is not installed.\n"
        f"  - To run 'lightning {command}', install the SDK: pip install lightning-sdk\n"
        "    (if its own 'lightning' script then replaces this one, train with 'mass-lightning fit ...').\n"
        "  - To train or evaluate, use e.g.: lightning fit --config configs/quickstart.yaml"
    )


def lightning_main(args: Sequence[str] | None = None) -> Any:
    """Entry point of the ``lightning`` console script.

    ``fit``, ``validate``, ``test``, ``predict``, no subcommand and top-level options
    (``--help``) run :func:`~mass_lightning.cli.main`. Any other subcommand is passed,
    with all its arguments, to lightning-sdk's command line if it is installed; else a
    message says what to install and the command exits with code 2.

    Args:
        args: Arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        ``None`` for the training subcommands, else what the SDK's command returned.

    Example:
        >>> lightning_main(["fit", "--config", "configs/quickstart.yaml"])  # doctest: +SKIP
    """
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0].startswith("-") or argv[0] in OWN_SUBCOMMANDS:
        # None: LightningCLI reads sys.argv itself (it warns when given both)
        return main(None if args is None else argv, prog="lightning", description=LIGHTNING_DESCRIPTION)
    sdk_main = find_sdk_entry_point()
    if sdk_main is None:
        print(_not_installed_message(argv[0]), file=sys.stderr)
        raise SystemExit(2)
    saved_argv = sys.argv
    sys.argv = ["lightning", *argv]  # the SDK's click app reads sys.argv
    try:
        return sdk_main()
    finally:
        sys.argv = saved_argv

"""Console scripts ``mass-lightning`` and ``lightning``: quick top-level help, everything else to the CLI.

Building the full command line imports Lightning (several seconds). ``mass-lightning --help``
and ``lightning --help`` only list the subcommands, so they are answered here with a parser
of the same shape that imports neither torch nor Lightning. Every other call, including
``mass-lightning fit --help``, goes to :func:`mass_lightning.cli.main`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["DESCRIPTION", "LIGHTNING_DESCRIPTION", "SUBCOMMANDS", "lightning_main", "main", "top_level_parser"]

DESCRIPTION = (
    "Train and evaluate exactly shift-equivariant CNNs (MASS) with PyTorch Lightning. "
    "Example: %(prog)s fit --config configs/quickstart.yaml. "
    "Export a trained run to ONNX: %(prog)s export --ckpt_path <run>/checkpoints/last.ckpt (see %(prog)s export --help)."
)
"""Help text of ``mass-lightning``."""

LIGHTNING_DESCRIPTION = (
    "Train and evaluate exactly shift-equivariant CNNs (MASS): 'lightning {fit,validate,test,predict}' is "
    "'mass-lightning' under the name the Lightning docs use. Any other subcommand (login, studio, ...) is "
    "forwarded to the lightning-sdk command line when lightning-sdk is installed. "
    "Example: %(prog)s fit --config configs/quickstart.yaml"
)
"""Help text of ``lightning``."""

SUBCOMMANDS: dict[str, str] = {
    "fit": "Runs the full optimization routine.",
    "validate": "Perform one evaluation epoch over the validation set.",
    "test": "Perform one evaluation epoch over the test set.",
    "predict": "Run inference on your data.",
}
"""The subcommands and the first sentence of their Lightning ``Trainer`` docstrings."""

HELP_FLAGS = ("-h", "--help")


def top_level_parser(prog: str, description: str) -> Any:
    """A jsonargparse parser with the top level of the full CLI: ``-c/--config``, ``--print_config``, subcommands.

    The subcommands take no options here; it only prints help.
    """
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog=prog, description=description, env_prefix="PL", default_env=False)
    parser.add_argument(
        "-c", "--config", action=ActionConfigFile, help="Path to a configuration file in json or yaml format."
    )
    subcommands = parser.add_subcommands()
    for name, help_text in SUBCOMMANDS.items():
        subcommands.add_subcommand(name, ArgumentParser(description=help_text), help=help_text)
    return parser


def _print_help_if_asked(argv: Sequence[str], prog: str, description: str) -> None:
    if len(argv) == 1 and argv[0] in HELP_FLAGS:
        top_level_parser(prog, description).parse_args(list(argv))  # prints the help and exits with 0


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``mass-lightning`` (and ``python -m mass_lightning``).

    Args:
        args: Arguments without the program name; ``None`` reads ``sys.argv[1:]``.

    Example:
        >>> main(["--help"])  # doctest: +SKIP
    """
    _print_help_if_asked(sys.argv[1:] if args is None else args, "mass-lightning", DESCRIPTION)
    from .cli import main as cli_main

    cli_main(None if args is None else list(args))


def lightning_main(args: Sequence[str] | None = None) -> Any:
    """Entry point of ``lightning``: see :func:`mass_lightning.cli.lightning_main`.

    Args:
        args: Arguments without the program name; ``None`` reads ``sys.argv[1:]``.
    """
    _print_help_if_asked(sys.argv[1:] if args is None else args, "lightning", LIGHTNING_DESCRIPTION)
    from .cli import lightning_main as cli_lightning_main

    return cli_lightning_main(None if args is None else list(args))

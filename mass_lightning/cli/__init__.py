"""Command line: ``mass-lightning`` (and ``lightning``) ``{fit,validate,test,predict} --config ...``.

Example::

    mass-lightning fit --config configs/quickstart.yaml
    python -m mass_lightning validate --config configs/classification/cifar10.yaml \\
        --config configs/classification/models/resnet20.yaml --config configs/classification/methods/mass.yaml
"""

from .callbacks import FinalMetricsSummary, format_summary
from .lightning import OWN_SUBCOMMANDS, find_sdk_entry_point, lightning_main
from .main import DEBUG_ENV_VAR, MassLightningCLI, main, run_cli

__all__ = [
    "DEBUG_ENV_VAR",
    "OWN_SUBCOMMANDS",
    "FinalMetricsSummary",
    "MassLightningCLI",
    "find_sdk_entry_point",
    "format_summary",
    "lightning_main",
    "main",
    "run_cli",
]

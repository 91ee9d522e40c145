"""Where datasets live on disk.

All datamodules resolve their ``root`` through :func:`resolve_root`, so one
environment variable moves every dataset at once::

    export MASS_LIGHTNING_DATA=/datasets      # CIFAR-10 at /datasets/cifar10-jpeg, ...

Without the variable the data root is ``../shared/data`` next to the
repository (the layout of the project's machines).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

DATA_ENV_VAR = "MASS_LIGHTNING_DATA"
"""Environment variable that overrides the data root."""

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository root (the folder that holds the ``mass_lightning`` package)."""


def data_root() -> Path:
    """Return the folder that holds all datasets.

    Order: ``$MASS_LIGHTNING_DATA`` if set; else the first existing of
    ``<repo>/../shared/data`` and ``<cwd>/../shared/data``; else
    ``<repo>/../shared/data`` (which may not exist: loaders then report it).

    Returns:
        An absolute path.

    Example:
        >>> data_root().is_absolute()
        True
    """
    env = os.environ.get(DATA_ENV_VAR, "").strip()
    if env:
        return Path(os.path.expandvars(env)).expanduser().resolve()
    candidates = [REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return candidates[0].resolve()


def resolve_root(root: Optional[Union[str, Path]], default_subdir: str) -> Path:
    """Resolve a dataset root given by a user or a config file.

    * ``None`` or ``""``: ``data_root() / default_subdir``.
    * ``$VARS`` and ``~`` are expanded.
    * An absolute path is returned as is.
    * A relative path is taken relative to the working directory if it exists
      there, else relative to :func:`data_root` if it exists there, else
      relative to the working directory (so that errors name that path).

    Args:
        root: The path from the config, or ``None`` for the default.
        default_subdir: Folder name under the data root used when ``root`` is ``None``.

    Returns:
        An absolute path (not necessarily existing).

    Example:
        >>> resolve_root(None, "camvid").name
        'camvid'
    """
    if root is None or str(root).strip() == "":
        return data_root() / default_subdir
    path = Path(os.path.expandvars(str(root))).expanduser()
    if path.is_absolute():
        return path
    if path.exists():
        return path.resolve()
    under_data = data_root() / path
    if under_data.exists():
        return under_data
    return path.resolve()

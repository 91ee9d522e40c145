"""Where datasets live on disk.

All datamodules resolve their ``root`` through :func:`resolve_root`, so one
environment variable moves every dataset at once::

    export MASS_LIGHTNING_DATA=/datasets      # CIFAR-10 at /datasets/cifar10-jpeg, ...

Without the variable the data root is a per-user folder outside any source tree or
installed package: ``$XDG_CACHE_HOME/mass_lightning/data``, by default
``~/.cache/mass_lightning/data`` (where ``--data.download true`` puts CIFAR-10 and VOC).
The test suite points the variable at ``../shared/data`` beside the checkout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

DATA_ENV_VAR = "MASS_LIGHTNING_DATA"
"""Environment variable that overrides the data root."""

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The folder that holds the ``mass_lightning`` package: the repository root in a source
checkout (notebooks and scripts find ``outputs/`` there); ``site-packages`` when installed."""


def default_data_root() -> Path:
    """The data root without ``$MASS_LIGHTNING_DATA``: ``$XDG_CACHE_HOME/mass_lightning/data``.

    ``XDG_CACHE_HOME`` defaults to ``~/.cache``.

    Example:
        >>> default_data_root().parts[-2:]
        ('mass_lightning', 'data')
    """
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return (base / "mass_lightning" / "data").resolve()


def data_root() -> Path:
    """Return the folder that holds all datasets.

    ``$MASS_LIGHTNING_DATA`` if set, else :func:`default_data_root`. The folder may not
    exist: loaders then say so and how to fix it.

    Returns:
        An absolute path.

    Example:
        >>> data_root().is_absolute()
        True
    """
    env = os.environ.get(DATA_ENV_VAR, "").strip()
    if env:
        return Path(os.path.expandvars(env)).expanduser().resolve()
    return default_data_root()


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

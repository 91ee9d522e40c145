"""Loading checkpoints without running pickled code.

A ``torch.save`` file is a pickle: a file that holds a pickled object can run that
object's code when it is loaded. Every checkpoint that ``mass_lightning`` loads (the
``weights=`` of :func:`~mass_lightning.get_backbone`, ``--ckpt_path`` of the command line,
``Task.load_from_checkpoint``) goes through :func:`safe_load`, which reads tensors, numbers,
strings and containers of them only (``torch.load(weights_only=True)``) and refuses
anything else with an :class:`~mass_lightning.errors.UnsafeCheckpointError`.

Checkpoints saved by ``mass-lightning fit`` hold only such values. An older or foreign
checkpoint that also holds Python objects can be rewritten once, by someone who trusts it::

    python -m mass_lightning.checkpoints old.ckpt new.ckpt

Example:
    >>> state = safe_load("best.ckpt")["state_dict"]  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import enum
import os
import pickle
import sys
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import Any, Union

import torch

from .errors import CheckpointError, CheckpointNotFoundError, UnsafeCheckpointError

__all__ = ["check_checkpoint", "convert_checkpoint", "refuse_pickled_code", "safe_load"]

PathLike = Union[str, os.PathLike]

CONVERT_COMMAND = "python -m mass_lightning.checkpoints"


def safe_load(path: PathLike, *, map_location: Any = "cpu") -> Any:
    """Read a ``torch.save`` file without running pickled code.

    Args:
        path: The checkpoint file (a ``state_dict``, a Lightning checkpoint, ...).
        map_location: Passed to :func:`torch.load` (default: everything on the CPU).

    Returns:
        The stored object: tensors, numbers, strings, ``None`` and containers of them.

    Raises:
        CheckpointNotFoundError: If ``path`` is not a file.
        UnsafeCheckpointError: If the file holds other Python objects; the message says
            how to convert it.
        CheckpointError: If the file is not a readable ``torch.save`` file.

    Example:
        >>> torch.save({"w": torch.ones(2)}, "w.pt")  # doctest: +SKIP
        >>> safe_load("w.pt")  # doctest: +SKIP
        {'w': tensor([1., 1.])}
    """
    path = _existing_file(path)
    with refuse_pickled_code(path):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:
            raise
        except Exception as error:  # torch raises many kinds for a file that is not a checkpoint
            raise CheckpointError(
                f"Could not read checkpoint {str(path)!r} ({type(error).__name__}: {error}). Is it a file written "
                "by torch.save or by a Lightning Trainer?"
            ) from error


def check_checkpoint(path: PathLike) -> Path:
    """Raise what :func:`safe_load` would raise for ``path``, reading only its pickle, not its tensors.

    For a check before a library that loads the file itself with ``weights_only=True``
    (the Lightning Trainer's ``ckpt_path``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        CheckpointNotFoundError: If ``path`` is not a file.
        UnsafeCheckpointError: If the file holds pickled Python objects.
        CheckpointError: If it is not a readable ``torch.save`` file.
    """
    path = _existing_file(path)
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint (legacy format or not a checkpoint): load it for the verdict
        safe_load(path)
        return path
    if found:
        raise _unsafe_checkpoint_error(str(path), pickle.UnpicklingError("Unsupported global"))
    return path


def _existing_file(path: PathLike) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointNotFoundError(f"Checkpoint {str(path)!r} does not exist or is not a file.")
    return path


@contextmanager
def refuse_pickled_code(path: PathLike) -> Iterator[None]:
    """Turn a ``weights_only`` refusal of ``torch.load`` for ``path`` into a clear error.

    For code that calls ``torch.load(..., weights_only=True)`` through another library
    (Lightning's ``load_from_checkpoint``, the Trainer's ``ckpt_path``).

    Raises:
        UnsafeCheckpointError: In place of the :class:`pickle.UnpicklingError` that
            ``torch.load`` raises for a file holding pickled Python objects.
    """
    try:
        yield
    except pickle.UnpicklingError as error:
        raise _unsafe_checkpoint_error(str(path), error) from error


def _unsafe_checkpoint_error(path: str, error: Exception) -> CheckpointError:
    try:
        found = tuple(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # legacy (non-zip) files cannot be inspected
        found = ()
    if not found and "Unsupported global" not in str(error):
        return CheckpointError(f"Could not read checkpoint {path!r}: {str(error).splitlines()[-1].strip()}")
    listed = f" ({', '.join(found[:5])}{', ...' if len(found) > 5 else ''})" if found else ""
    return UnsafeCheckpointError(
        path,
        found,
        f"Checkpoint {path!r} holds pickled Python objects{listed}. mass_lightning loads only tensors, numbers, "
        "strings and containers of them, because loading a pickled object can run arbitrary code. If you trust "
        f"the file, rewrite it once without the objects: {CONVERT_COMMAND} {path} <new file> "
        "(or mass_lightning.checkpoints.convert_checkpoint), then use the new file.",
    )


# ---------------------------------------------------------------------- conversion
def convert_checkpoint(source: PathLike, target: PathLike) -> list[str]:
    """Rewrite a *trusted* checkpoint that holds Python objects into one :func:`safe_load` reads.

    ``source`` is unpickled with ``weights_only=False``, which runs any code it holds:
    only use this on files you trust. Tensors, numbers, strings, ``None`` and containers
    are kept; paths become strings, namespaces dicts, enums their values and NumPy arrays
    tensors; every other object is dropped and named in the returned list.

    Args:
        source: The checkpoint to convert.
        target: Where to write the converted checkpoint (not ``source``).

    Returns:
        The dropped entries, as ``"hyper_parameters.model (MyNet)"``.

    Raises:
        CheckpointNotFoundError: If ``source`` is not a file.
        CheckpointError: If ``target`` is ``source``.

    Example:
        >>> convert_checkpoint("old.ckpt", "new.ckpt")  # doctest: +SKIP
        ['hyper_parameters.loss_fn (CrossEntropyLoss)']
    """
    source, target = _existing_file(source), Path(target).expanduser()
    if target.exists() and target.resolve() == source.resolve():
        raise CheckpointError("convert_checkpoint writes a new file: give a target other than the source.")
    dropped: list[str] = []
    plain = _to_plain(torch.load(source, map_location="cpu", weights_only=False), "", dropped)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(plain, target)
    safe_load(target)  # the result must load safely
    return dropped


_PLAIN_LEAVES = (bool, int, float, str, bytes, type(None), torch.dtype, torch.device, torch.Size)


def _to_plain(value: Any, where: str, dropped: list[str]) -> Any:
    """``value`` with every object that ``weights_only`` loading refuses converted or dropped."""
    if isinstance(value, torch.Tensor):
        return value.detach() if type(value) in (torch.Tensor, torch.nn.Parameter) else value.as_subclass(torch.Tensor)
    if isinstance(value, enum.Enum):
        return _to_plain(value.value, where, dropped)
    if isinstance(value, _PLAIN_LEAVES):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, argparse.Namespace):  # also jsonargparse's Namespace
        value = vars(value)
    if isinstance(value, Mapping):
        plain: dict[Any, Any] = OrderedDict() if isinstance(value, OrderedDict) else {}
        for key, item in value.items():
            name = f"{where}.{key}" if where else str(key)
            converted = _to_plain(item, name, dropped) if isinstance(key, _PLAIN_KEYS) else _drop(name, key, dropped)
            if converted is not _DROPPED:
                plain[key] = converted
        metadata = getattr(value, "_metadata", None)  # the module versions of a state_dict
        if metadata is not None and isinstance(plain, OrderedDict):
            plain._metadata = _to_plain(metadata, f"{where}._metadata", dropped)  # type: ignore[attr-defined]
        return plain
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_to_plain(item, f"{where}[{i}]", dropped) for i, item in enumerate(value)]
        kept = [item for item in items if item is not _DROPPED]
        return tuple(kept) if isinstance(value, tuple) else kept
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray) and value.dtype != object:
        return torch.from_numpy(value.copy())
    if numpy is not None and isinstance(value, numpy.generic):
        return value.item()
    return _drop(where, value, dropped)


_DROPPED = object()
_PLAIN_KEYS = (str, int, float, bool, type(None), tuple)


def _drop(where: str, value: Any, dropped: list[str]) -> Any:
    dropped.append(f"{where or '<root>'} ({type(value).__name__})")
    return _DROPPED


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=CONVERT_COMMAND,
        description="Rewrite a checkpoint that holds pickled Python objects into one that mass_lightning loads "
        "safely. This unpickles SOURCE, which runs any code it holds: only use it on files you trust.",
    )
    parser.add_argument("source", help="trusted checkpoint to convert")
    parser.add_argument("target", help="where to write the converted checkpoint")
    args = parser.parse_args(argv)
    try:
        dropped = convert_checkpoint(args.source, args.target)
    except CheckpointError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    for entry in dropped:
        print(f"dropped {entry}")
    print(f"wrote {args.target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())

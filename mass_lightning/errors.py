"""The library's exception and warning types.

Every error that ``mass_lightning`` raises on purpose (a model it will not convert, an input
size the strides do not divide, a non-finite input, a checkpoint it will not load, a
dataset that is missing or corrupt, a bad configuration) is a :class:`MassLightningError`.
It subclasses :class:`ValueError`, so code written against earlier versions that caught
``ValueError`` keeps working. The command line prints these as one short line; any other
exception keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "ConfigError",
    "ConversionError",
    "DataError",
    "DatasetNotFoundError",
    "EquivarianceError",
    "InputSizeError",
    "MassLightningError",
    "NonFiniteInputError",
    "ShiftEquivarianceWarning",
    "UnsafeCheckpointError",
    "WeightsDownloadError",
]


class MassLightningError(ValueError):
    """Base class of the errors ``mass_lightning`` raises on purpose."""


class ConversionError(MassLightningError):
    """:func:`mass_lightning.convert` cannot make a model exactly shift-equivariant.

    Attributes:
        path: qualified name of the module (or graph node) at fault, e.g. ``"classifier.0"``;
            ``""`` for the model as a whole.
        reason: why it cannot be made exact.
        hint: what to do about it.
    """

    def __init__(self, path: str, reason: str, hint: str = "") -> None:
        self.path, self.reason, self.hint = path, reason, hint
        where = f"{path}: " if path else ""
        super().__init__(f"{where}{reason}" + (f" {hint}" if hint else ""))

    def __reduce__(self):  # keep the three fields through pickling (DDP, multiprocessing)
        return type(self), (self.path, self.reason, self.hint)


class EquivarianceError(MassLightningError):
    """A converted model failed its equivariance check (see :func:`mass_lightning.check_equivariance`)."""


class InputSizeError(MassLightningError):
    """An input's height or width is not a multiple of the stride that must divide it."""


class NonFiniteInputError(MassLightningError):
    """A downsampling layer received NaN or Inf, so no origin can be chosen."""


class CheckpointError(MassLightningError):
    """A checkpoint cannot be read safely, or does not match the model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path does not name a file."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds pickled Python objects, so loading it could run code.

    Attributes:
        path: the checkpoint file.
        unsafe_globals: the pickled callables and classes found in it (``"module.name"``);
            empty when the file could not be inspected.
    """

    def __init__(self, path: str, unsafe_globals: tuple[str, ...] = (), message: str = "") -> None:
        self.path, self.unsafe_globals = path, tuple(unsafe_globals)
        super().__init__(message or f"Checkpoint {path!r} holds pickled Python objects {list(self.unsafe_globals)}.")

    def __reduce__(self):  # keep the fields through pickling
        return type(self), (self.path, self.unsafe_globals, str(self))


class WeightsDownloadError(MassLightningError, RuntimeError):
    """Pretrained weights could not be downloaded (offline machine, proxy, bad URL).

    Also a :class:`RuntimeError`, which is what earlier versions raised.
    """


class ConfigError(MassLightningError):
    """A configuration value is invalid."""


class DataError(MassLightningError):
    """A dataset file or folder exists but cannot be used (corrupt, empty, wrong layout)."""


class DatasetNotFoundError(MassLightningError, FileNotFoundError):
    """A dataset folder or file does not exist."""


class ShiftEquivarianceWarning(UserWarning):
    """A model was converted with ``strict=False`` and is not exactly shift-equivariant."""

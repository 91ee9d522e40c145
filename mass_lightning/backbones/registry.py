"""Backbone registry (torchvision style): ``register_backbone``, ``get_backbone``, ``list_backbones``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, overload

from torch import nn

from ..checkpoints import safe_load
from ..conversion import convert
from ..errors import CheckpointError, CheckpointNotFoundError, ConfigError
from ..layers import DDAC

__all__ = ["get_backbone", "list_backbones", "load_checkpoint", "register_backbone"]

BuilderFn = TypeVar("BuilderFn", bound=Callable[..., nn.Module])
_BACKBONES: dict[str, Callable[..., nn.Module]] = {}
_builtins_registered = False


def _register_builtin_backbones() -> None:
    """Register the CIFAR and torchvision backbones (imports torchvision) on first use of the registry."""
    global _builtins_registered
    if not _builtins_registered:
        _builtins_registered = True
        from . import zoo  # noqa: F401  (registers on import)


@overload
def register_backbone(name: BuilderFn, fn: None = None) -> BuilderFn: ...
@overload
def register_backbone(name: str | None = None, fn: None = None) -> Callable[[BuilderFn], BuilderFn]: ...
@overload
def register_backbone(name: str, fn: BuilderFn) -> BuilderFn: ...


def register_backbone(name: Any = None, fn: Any = None) -> Any:
    """Register a builder ``fn(*, num_classes, weights, **kwargs) -> nn.Module`` under ``name``.

    The builder returns the *original* (zero-padded) network; :func:`get_backbone`
    converts it. Three forms, all returning the builder unchanged::

        @register_backbone                   # registered under the function's name
        def tiny(*, num_classes=10, weights=None): ...

        @register_backbone("tiny_v2")        # under another name
        def build(*, num_classes=10, weights=None): ...

        register_backbone("tiny_v3", build)  # without a decorator

    Args:
        name: The registry name, or the builder itself (bare decorator).
        fn: The builder, to register without a decorator.

    Raises:
        ConfigError: on a duplicate name, a name that is not a non-empty string, or a
            builder that is not callable (for example a model *instance* instead of
            the function that builds it).
    """
    if callable(name) and not isinstance(name, str):
        if fn is not None:
            raise ConfigError("register_backbone(fn) takes no second argument; use register_backbone('name', fn).")
        return _register(getattr(name, "__name__", ""), name)
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ConfigError(
            f"register_backbone: the name must be a non-empty string, got {name!r}. Use @register_backbone, "
            "@register_backbone('name') or register_backbone('name', fn)."
        )
    if fn is not None:
        return _register(name or getattr(fn, "__name__", ""), fn)

    def decorator(builder: BuilderFn) -> BuilderFn:
        return _register(name or getattr(builder, "__name__", ""), builder)

    return decorator


def _register(name: str, fn: Any) -> Any:
    """Add ``fn`` under ``name``; the checks behind every form of :func:`register_backbone`."""
    _register_builtin_backbones()
    if isinstance(fn, nn.Module) or not callable(fn):
        raise ConfigError(
            f"register_backbone({name!r}): expected a function or class that builds a model, got "
            f"{type(fn).__name__}. Register the builder, not a model instance."
        )
    if not name or name == "<lambda>":
        raise ConfigError("register_backbone: a lambda has no usable name; pass one: register_backbone('name', fn).")
    if name in _BACKBONES:
        raise ConfigError(f"A backbone named {name!r} is already registered.")
    _BACKBONES[name] = fn
    return fn


def list_backbones() -> list[str]:
    """Names of all registered backbones, sorted."""
    _register_builtin_backbones()
    return sorted(_BACKBONES)


def get_backbone(
    name: str,
    *,
    method: str = "mass",
    antialias: str | None = None,
    num_classes: int = 1000,
    weights: Any = None,
    padding: str = "circular",
    **kwargs: Any,
) -> nn.Module:
    """Build a registered backbone and make it shift-equivariant with :func:`~mass_lightning.convert`.

    Args:
        name: a name from :func:`list_backbones`, any torchvision classification model
            (``torchvision.models.list_models(module=torchvision.models)``), or a timm model
            as ``"timm/<name>"`` (``timm.list_models()``). Models that cannot be made exactly
            shift-equivariant are refused with the reason.
        method: ``"baseline"``, ``"mass"`` or ``"aps"``.
        antialias: ``None``, ``"lpf3"``, ``"ddac3"``, ...
        num_classes: size of the classifier output. With pretrained torchvision weights
            and a different size, the classifier is re-initialised (for fine-tuning).
        weights: ``None``; a torchvision weights enum or its name (``"IMAGENET1K_V1"``,
            ``"DEFAULT"``, ``"ResNet18_Weights.IMAGENET1K_V1"``), downloaded by torchvision
            when online; ``"timm"`` for a timm model's pretrained weights; or the path of a local
            checkpoint (a ``state_dict``, a ``{"state_dict": ...}`` dict or a Lightning checkpoint),
            read with :func:`~mass_lightning.checkpoints.safe_load` (no pickled code runs).
        padding: ``"circular"`` or ``"zeros"`` (only for the original baseline).
        **kwargs: passed to the builder.

    Returns:
        The converted model.

    Example:
        >>> model = get_backbone("resnet20", method="mass", num_classes=10)
    """
    _register_builtin_backbones()
    builder = _BACKBONES.get(name)
    if builder is None:
        from .zoo import model_zoo_builder  # torchvision / timm names, resolved on demand

        builder = model_zoo_builder(name)
    if builder is None:
        raise ConfigError(f"Unknown backbone {name!r}. Use one of {', '.join(list_backbones())}, any torchvision "
                          "classification model name, or 'timm/<name>' for a timm model.")
    checkpoint = _checkpoint_path(weights)
    model = builder(num_classes=num_classes, weights=None if checkpoint else weights, **kwargs)
    model = convert(model, method=method, antialias=antialias, padding=padding)  # type: ignore[arg-type]
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


def _checkpoint_path(weights: Any) -> Path | None:
    if isinstance(weights, Path) or (isinstance(weights, str) and (weights.endswith((".pt", ".pth", ".ckpt", ".bin"))
                                                                    or "/" in weights or "\\" in weights)):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise CheckpointNotFoundError(
                f"Checkpoint {str(path)!r} does not exist. Pass a path to a saved state_dict or Lightning "
                "checkpoint, a torchvision weights name such as 'IMAGENET1K_V1', or None."
            )
        return path
    return None


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a ``state_dict`` (plain, ``{"state_dict": ...}`` or Lightning) into ``model``.

    The file is read with :func:`~mass_lightning.checkpoints.safe_load`: a checkpoint that
    holds pickled Python objects is refused, with a message that says how to convert it.
    A common ``model.`` / ``backbone.`` / ``module.`` prefix is stripped. Only the
    parameters of anti-aliasing filters that the checkpoint's network did not have
    (DDAC added by the conversion) may be missing; anything else must match.

    Raises:
        CheckpointNotFoundError: If ``path`` is not a file.
        UnsafeCheckpointError: If the file holds pickled Python objects.
        CheckpointError: If it cannot be read or does not match ``model``.
    """
    state = safe_load(path)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"Checkpoint {str(path)!r} holds a {type(state).__name__}, not a state_dict.")
    state = _strip_common_prefix(dict(state), set(model.state_dict()))
    result = model.load_state_dict(state, strict=False)
    ddac_prefixes = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, DDAC))
    missing = [k for k in result.missing_keys if not k.startswith(ddac_prefixes)]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} does not match the model: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {result.unexpected_keys[:5]}. "
            "Check that backbone, num_classes and antialias are those it was trained with."
        )
    return model


def _strip_common_prefix(state: dict[str, Any], expected: set[str]) -> dict[str, Any]:
    for prefix in ("model.", "backbone.", "module.", "net."):
        if expected.isdisjoint(state) and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state

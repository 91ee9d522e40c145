"""Short messages for configuration mistakes: a misspelt key is named with the closest valid key.

jsonargparse reports a wrong key inside ``model:`` or ``data:`` as a failed match against
every subtype of a Union, after the full usage of the subcommand (about 60 lines). When it
rejects a configuration, :class:`MassArgumentParser` looks at the given ``--config`` files
and ``--key value`` flags itself, finds the first key that the target class does not take,
and prints one line such as::

    mass-lightning: error: key 'nesterow' is not accepted in model.init_args (in my.yaml):
    ClassificationTask has no such parameter. Did you mean 'nesterov'?
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Optional

import yaml
from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser

__all__ = ["MassArgumentParser", "UnknownKey", "find_unknown_key", "run_config_hint"]

SUBCOMMANDS: tuple[str, ...] = ("fit", "validate", "test", "predict")
#: The arguments and working directory of the parse in progress (errors are raised by the subcommand's
#: parser, while jsonargparse has moved into the folder of a config file).
_GIVEN_ARGS: ContextVar[Optional[tuple[list[str], Path]]] = ContextVar("mass_lightning_given_args", default=None)
#: Keys of a ``class_path`` entry besides its init arguments.
SPEC_KEYS: frozenset[str] = frozenset({"class_path", "init_args", "dict_kwargs", "__path__"})
#: Top-level keys that LightningCLI adds to every subcommand.
TOP_LEVEL_KEYS: frozenset[str] = frozenset(
    {"config", "print_config", "help", "seed_everything", "trainer", "model", "data", "optimizer", "lr_scheduler"}
)
#: Arguments of ``Trainer.<subcommand>`` that LightningCLI fills itself (not config keys).
_FILLED_BY_CLI: frozenset[str] = frozenset(
    {"self", "model", "datamodule", "train_dataloaders", "val_dataloaders", "dataloaders"}
)


@dataclass(frozen=True)
class UnknownKey:
    """A key that the class at its place does not take.

    Attributes:
        key: The key, e.g. ``"nesterow"``.
        section: Where it sits, e.g. ``"model.init_args"``.
        owner: What rejects it, e.g. ``"ClassificationTask"`` or ``"the trainer"``.
        source: The config file, or ``"the command line"``.
        suggestion: The closest valid key, if one is close.
        valid: All valid keys at that place.
    """

    key: str
    section: str
    owner: str
    source: str
    suggestion: Optional[str]
    valid: tuple[str, ...]

    def message(self) -> str:
        """One line: the key, where it is, and the closest valid key (or the valid keys)."""
        place = f" in {self.section}" if self.section else ""
        text = f"key '{self.key}' is not accepted{place} ({self.source}): {self.owner} has no such parameter."
        if self.suggestion:
            return f"{text} Did you mean '{self.suggestion}'?"
        return f"{text} Valid keys: {', '.join(self.valid)}."


def find_unknown_key(args: Sequence[str], cwd: Optional[Path] = None) -> Optional[UnknownKey]:
    """The first key of the given configs and flags that its target does not take, else ``None``.

    Looks at the ``--config`` files (relative to ``cwd``, default the working directory)
    and ``--section.key value`` flags after the subcommand. The model and data classes are
    those of the last ``class_path`` given
    (as in jsonargparse, the last one wins); keys of classes that take ``**kwargs``, or
    whose ``class_path`` cannot be imported, are not checked.

    Example:
        >>> args = ["fit", "--config", "configs/quickstart.yaml", "--model.init_args.nesterow", "true"]
        >>> find_unknown_key(args).suggestion  # doctest: +SKIP
        'nesterov'
    """
    subcommand = next((arg for arg in args if arg in SUBCOMMANDS), None)
    if subcommand is None:
        return None
    sources = list(_sources(list(args[list(args).index(subcommand) + 1 :]), cwd or Path.cwd()))
    class_paths = {section: _last_class_path(sources, section) for section in ("model", "data")}
    top_level = TOP_LEVEL_KEYS | _parameters(getattr(Trainer, subcommand), skip=_FILLED_BY_CLI)
    for source, config, from_command_line in sources:
        for key in config:
            if key not in top_level and not (from_command_line and _is_prefix(key, top_level)):
                return _unknown(key, "", "the subcommand " + subcommand, source, top_level)
        found = _check_section(config.get("trainer"), "trainer", Trainer, "the trainer", source, from_command_line)
        for section in ("model", "data"):
            value = config.get(section)
            if isinstance(value, Mapping):
                found = found or _check_spec(value, section, source, from_command_line, class_paths[section])
        if found:
            return found
    return None


def run_config_hint(message: str) -> str:
    """A hint to append when a subcommand misses its model or data (``validate --ckpt_path X`` alone)."""
    if "arguments are required" in message and (".model" in message or ".data" in message):
        return (
            " validate, test and predict rebuild the model and data from a config: pass the run's saved config, "
            "--config <run folder>/config.yaml (fit saves it next to checkpoints/), or a --ckpt_path inside a "
            "run folder, whose config.yaml is then read."
        )
    return ""


class MassArgumentParser(LightningArgumentParser):
    """:class:`~lightning.pytorch.cli.LightningArgumentParser` whose errors are short.

    A misspelt key gets :meth:`UnknownKey.message`; a subcommand without model or data
    gets a hint to pass the run's saved config. The usage of the subcommand (dozens of
    lines) is not printed, only a pointer to ``--help``. With ``exit_on_error=False``
    the shortened message is raised as jsonargparse's ``ArgumentError``.
    """

    def parse_args(self, args: Optional[Sequence[str]] = None, *rest: Any, **kwargs: Any) -> Namespace:
        """Parse, keeping the arguments for :meth:`error` (which subcommand parsers report)."""
        if _GIVEN_ARGS.get() is not None:  # a subcommand's parse inside the command's: keep the full arguments
            return super().parse_args(args, *rest, **kwargs)
        token = _GIVEN_ARGS.set((list(sys.argv[1:] if args is None else args), Path.cwd()))
        try:
            return super().parse_args(args, *rest, **kwargs)
        finally:
            _GIVEN_ARGS.reset(token)

    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        """Report ``message`` in short; see the class docstring."""
        given, cwd = _GIVEN_ARGS.get() or (None, None)
        unknown = find_unknown_key(given, cwd) if given is not None else None
        message = unknown.message() if unknown else message + run_config_hint(message)
        if not self.exit_on_error:
            super().error(message, ex)
        words = self.prog.replace(" [options]", "").split()
        subcommand = next((arg for arg in given or [] if arg in SUBCOMMANDS), None)
        if subcommand and subcommand not in words:
            words.append(subcommand)
        sys.stderr.write(f"{words[0]}: error: {message}\n(Options and their types: {' '.join(words)} --help)\n")
        raise SystemExit(2)


# ---------------------------------------------------------------- helpers
def _sources(args: list[str], cwd: Path) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """``(source, nested dict, from command line)`` for each ``--config`` file and each ``--a.b value`` flag."""
    index = 0
    while index < len(args):
        arg = args[index]
        name, has_value, value = arg.partition("=")
        if name in ("--config", "-c"):
            path = value if has_value else (args[index + 1] if index + 1 < len(args) else "")
            index += 1 if has_value else 2
            loaded = _load_yaml(cwd / Path(path).expanduser())
            if isinstance(loaded, dict):
                yield path, loaded, False
            continue
        index += 1
        if name.startswith("--") and len(name) > 2:
            keys = name[2:].rstrip("+").split(".")
            if not has_value and index < len(args) and not args[index].startswith("--"):
                value, index = args[index], index + 1
            nested: dict[str, Any] = {keys[-1]: value}
            for key in reversed(keys[:-1]):
                nested = {key: nested}
            yield "the command line", nested, True


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None  # jsonargparse reports unreadable files itself


def _last_class_path(sources: list[tuple[str, dict[str, Any], bool]], section: str) -> Optional[str]:
    class_path = None
    for _, config, _ in sources:
        value = config.get(section)
        if isinstance(value, Mapping) and isinstance(value.get("class_path"), str):
            class_path = value["class_path"]
    return class_path


def _check_spec(
    spec: Mapping[str, Any], section: str, source: str, from_command_line: bool, class_path: Optional[str] = None
) -> Optional[UnknownKey]:
    """Check a ``{class_path, init_args}`` entry (init arguments may also sit next to ``class_path``)."""
    own = spec.get("class_path")
    target = _import(own if isinstance(own, str) else class_path)
    if target is None:
        return None
    init_args = dict(spec.get("init_args") or {}) if isinstance(spec.get("init_args"), Mapping) else {}
    direct = {k: v for k, v in spec.items() if k not in SPEC_KEYS}
    owner = target.__name__
    return _check_section(init_args, f"{section}.init_args", target, owner, source, from_command_line) or (
        _check_section(direct, section, target, owner, source, from_command_line)
    )


def _check_section(
    config: Any, section: str, target: Any, owner: str, source: str, from_command_line: bool
) -> Optional[UnknownKey]:
    """Check the keys of ``config`` against ``target``'s parameters, and nested ``class_path`` entries."""
    if not isinstance(config, Mapping):
        return None
    valid = _parameters(target)
    if valid is None:
        return None
    for key, value in config.items():
        if key not in valid and not (from_command_line and _is_prefix(key, valid)):
            return _unknown(key, section, owner, source, valid)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, Mapping) and "class_path" in item:
                found = _check_spec(item, f"{section}.{key}", source, from_command_line)
                if found:
                    return found
    return None


def _parameters(target: Any, skip: frozenset[str] = frozenset({"self"})) -> Optional[frozenset[str]]:
    """Names of ``target``'s parameters (its ``__init__``'s for a class); ``None`` if it takes ``**kwargs``."""
    try:
        signature = inspect.signature(target.__init__ if inspect.isclass(target) else target)
    except (TypeError, ValueError):
        return None
    parameters = signature.parameters.values()
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return None
    return frozenset(parameter.name for parameter in parameters if parameter.name not in skip)


def _import(class_path: Optional[str]) -> Any:
    if not class_path or "." not in class_path:
        return None
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return None


def _is_prefix(key: str, valid: frozenset[str]) -> bool:
    """argparse accepts an unambiguous prefix of an option on the command line."""
    return sum(name.startswith(key) for name in valid) == 1


def _unknown(key: str, section: str, owner: str, source: str, valid: frozenset[str]) -> UnknownKey:
    close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
    return UnknownKey(key, section, owner, source, close[0] if close else None, tuple(sorted(valid)))

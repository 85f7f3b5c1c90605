"""Config files for the daemons: ``~/.config/p2pshare/peerd.toml`` and ``indexd.toml``.

A config file is a flat TOML table whose keys are the command's long flags without the dashes
(``index-server-name = "192.168.1.10:7000"``; ``index_server_name`` works too). Its values
become the parser's defaults, so a flag given on the command line always wins, and a flag the
command requires may come from the file instead. Values are checked with the flag's own parser
when the file is read, and relative paths are taken from the file's folder, so a unit file or a
cron job may start the daemon from anywhere. ``--config FILE`` chooses the file; otherwise
``$XDG_CONFIG_HOME/p2pshare/<prog>.toml`` (``~/.config`` when the variable is unset) is read if
it exists.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.command import UsageError

APP_DIR = "p2pshare"
#: Flags that never come from a file: ``--help``, and ``--config`` itself.
_NOT_SETTINGS = frozenset({"help", "config"})


def config_home(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_CONFIG_HOME`` if set to an absolute path, else ``~/.config``."""
    value = environ.get("XDG_CONFIG_HOME", "")
    if value and os.path.isabs(value):
        return Path(value)
    return Path(environ.get("HOME") or Path.home()) / ".config"


def default_config_path(prog: str, environ: Mapping[str, str] = os.environ) -> Path:
    """Where ``prog`` looks for its config file when no ``--config`` is given."""
    return config_home(environ) / APP_DIR / f"{prog}.toml"


def setting_name(key: str) -> str:
    """The canonical spelling of a setting: dashes, lower case (``index_server_name`` →
    ``index-server-name``)."""
    return key.strip().lower().replace("_", "-")


@dataclass(frozen=True)
class ConfigFile:
    """A config file as read: where it is, and its settings by canonical name."""

    path: Path
    settings: dict[str, Any] = field(default_factory=dict)


def read_config(path: Path) -> ConfigFile:
    """Read and parse a TOML config file; any problem is a :class:`UsageError` naming it."""
    try:
        with path.open("rb") as f:
            document = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    settings: dict[str, Any] = {}
    for key, value in document.items():
        name = setting_name(key)
        if name in settings:
            raise UsageError(f"{path}: {key!r} is set twice (as {name!r})")
        settings[name] = value
    return ConfigFile(path, settings)


def add_config_flag(parser: argparse.ArgumentParser, prog: str) -> None:
    """Add ``--config FILE`` to ``parser`` (its help names the default file)."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"read settings from FILE (default: $XDG_CONFIG_HOME/{APP_DIR}/{prog}.toml, else"
        f" ~/.config/{APP_DIR}/{prog}.toml, if it exists); flags override it",
    )


def find_config(
    argv: Sequence[str], prog: str, environ: Mapping[str, str] = os.environ
) -> ConfigFile | None:
    """The config file this command line asks for: ``--config FILE``, else the default one if
    it exists, else None."""
    pre = argparse.ArgumentParser(prog=prog, add_help=False, allow_abbrev=False)
    pre.add_argument("--config", type=Path, default=None)
    known, _ = pre.parse_known_args(list(argv))
    if known.config is not None:
        return read_config(known.config.expanduser())
    path = default_config_path(prog, environ)
    return read_config(path) if path.is_file() else None


def _settings_of(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every action a file may set, by each canonical name it answers to."""
    names: dict[str, argparse.Action] = {}
    for action in parser._actions:  # argparse has no public list of its actions
        if not action.option_strings or action.dest in _NOT_SETTINGS:
            continue
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        names[setting_name(action.dest)] = action
        for option in action.option_strings:
            if option.startswith("--") or len(option) > 2:
                names[setting_name(option.lstrip("-"))] = action
    return names


def _convert(action: argparse.Action, value: Any, base: Path) -> Any:
    """A file's value as the flag would have given it; ValueError with a reason if not."""
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        if type(value) is not bool:
            raise ValueError("expected true or false")
        return value
    if isinstance(action, argparse._CountAction):
        if type(value) is not int or value < 0:
            raise ValueError("expected a count (0, 1, 2)")
        return value
    if type(value) not in (str, int, float):
        raise ValueError("expected a string or a number")
    text = str(value)
    if action.type is None:
        converted: Any = text
    elif action.type is Path:
        path = Path(text).expanduser()
        converted = path if path.is_absolute() else base / path
    else:
        assert callable(action.type)
        try:
            converted = action.type(text)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            raise ValueError(str(exc) or f"invalid value {text!r}") from None
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"expected one of {', '.join(map(str, action.choices))}")
    return converted


def apply_config(
    parser: argparse.ArgumentParser,
    config: ConfigFile,
    *,
    forbidden: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Make ``config``'s settings the defaults of ``parser`` (flags still override them).

    A required flag set in the file is no longer required. An unknown setting, a value of the
    wrong kind, or a setting in ``forbidden`` (name → why) is a :class:`UsageError`. Counted
    flags (``-v``) would add to a default, so they are returned instead (dest → value), to be
    used when the command line does not give the flag.
    """
    actions = _settings_of(parser)
    base = config.path.parent
    defaults: dict[str, Any] = {}
    counted: dict[str, Any] = {}
    for name, value in config.settings.items():
        if forbidden and name in forbidden:
            raise UsageError(f"{config.path}: {name!r} is not allowed here: {forbidden[name]}")
        action = actions.get(name)
        if action is None:
            raise UsageError(f"{config.path}: unknown setting {name!r}")
        try:
            converted = _convert(action, value, base)
        except ValueError as exc:
            raise UsageError(f"{config.path}: {name}: {exc}") from None
        target = counted if isinstance(action, argparse._CountAction) else defaults
        target[action.dest] = converted
        action.required = False
    parser.set_defaults(**defaults)
    return counted


def parse_with_config(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    prog: str,
    *,
    environ: Mapping[str, str] = os.environ,
    forbidden: Mapping[str, str] | None = None,
) -> argparse.Namespace:
    """Parse ``argv`` over the settings of the config file it names (or the default one).

    The namespace's ``config`` is the file that was read, or None.
    """
    args = list(argv) if argv is not None else sys.argv[1:]
    config = find_config(args, prog, environ)
    counted = apply_config(parser, config, forbidden=forbidden) if config is not None else {}
    namespace = parser.parse_args(args)
    for dest, value in counted.items():
        if not getattr(namespace, dest, None):
            setattr(namespace, dest, value)
    namespace.config = config.path if config is not None else None
    return namespace


__all__ = [
    "APP_DIR",
    "ConfigFile",
    "add_config_flag",
    "apply_config",
    "config_home",
    "default_config_path",
    "find_config",
    "parse_with_config",
    "read_config",
    "setting_name",
]

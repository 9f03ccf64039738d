"""Configuration: ``mer.toml``, environment variables and command-line overrides.

Precedence is command line > environment > ``mer.toml`` > defaults, and every resolved value
remembers where it came from (``mer config show``). The core's settings are declared once, as the
fields of the settings objects of :mod:`mercli.settings` (one per table: ``config.train``); a
plug-in's settings live in a table named after its stage and name (``[encoder.whisper]``,
``[loss.bdcl]``) and are declared by the plug-in's ``options``. An unknown
key, a value of the wrong type or one outside the option's declared range or choices is a
:class:`ConfigError` naming the key, the file and the line (or the variable, or the command-line
setting), raised as the configuration loads, before any stage starts work; so are core settings that
disagree with each other (``[train] heads`` must divide ``width``).
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from mercli.contracts import STAGES, Option
from mercli.errors import ConfigError
from mercli.settings import (CORE_SECTIONS, SETTINGS, DataSettings, EvalSettings, ExtractSettings, PseudolabelSettings,
                             ReasonSettings, ReportSettings, Settings, SettingsConflict, TrainSettings)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

CONFIG_NAME = "mer.toml"
ENV_PREFIX = "MER_"

#: Table prefixes whose sub-tables configure plug-ins, and the registry stage behind each.
PLUGIN_TABLES = {stage.table: stage.name for stage in STAGES.values()}


@dataclass(frozen=True)
class Setting:
    value: Any
    source: str


def declaration(dotted: str) -> Option | None:
    """The declaration of the core setting ``dotted`` (``extract.fps``); ``None`` for a plug-in's
    setting or an unknown one."""
    table, _, key = dotted.partition(".")
    return next((option for option in CORE_SECTIONS.get(table, ()) if option.name == key), None)


def coerce(option: Option, value: Any, where: str) -> Any:
    """Check ``value`` against ``option`` (its type, the items of lists and tables, its range or
    choices) and return it in the option's type; ``where`` says where the value was given."""
    problem = option.problem(value)
    if problem:
        raise ConfigError(f"{where}: {problem}")
    return float(value) if option.kind is float and value is not None else value


def parse_value(raw: str, kind: type | None = None) -> Any:
    """Read a value given as text (environment, ``--set``) as TOML, or as a bare string.

    For a string setting the text is taken as it is unless it is a quoted TOML string, so that
    ``-s data.dataset=2024`` means the name "2024", not a number.
    """
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
    return raw if kind is str and not isinstance(value, str) else value


class Text(str):
    """A setting given as text on the command line, parsed once its option's type is known."""


def line_of(text: str, table: str, key: str | None = None) -> int | None:
    """The line (1-based) where ``key`` is set inside ``[table]``, or where the table starts."""
    current = ""
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.match(r"^\[\s*([^\]]+?)\s*\]", stripped)
        if header:
            current = header.group(1).replace('"', "").replace(" ", "")
            if key is None and current == table:
                return number
            continue
        if key is not None and current == table and re.match(rf'^"?{re.escape(key)}"?\s*=', stripped):
            return number
    return None


class Config:
    """Resolved settings: one frozen, typed object per core table (``config.train.epochs``), built
    and checked once here, and every value by table with where it came from (``tables``: the
    plug-in tables such as ``encoder.whisper``, and ``mer config show``)."""

    data: DataSettings
    extract: ExtractSettings
    reason: ReasonSettings
    train: TrainSettings
    pseudolabel: PseudolabelSettings
    eval: EvalSettings
    report: ReportSettings

    def __init__(self, tables: dict[str, dict[str, Setting]], path: Path | None) -> None:
        self.tables = tables
        self.path = path
        for name, settings in SETTINGS.items():
            setattr(self, name, _built(settings, tables[name]))

    def with_overrides(self, overrides: Mapping[str, Any], source: str = "run") -> "Config":
        """A copy with ``overrides`` (``{"extract.fps": 4}``) applied and checked, e.g. the settings
        a trained run recorded, which must win over mer.toml when predicting with it."""
        tables = {name: dict(settings) for name, settings in self.tables.items()}
        _override(tables, overrides, source)
        return Config(tables, self.path)

    def table(self, name: str) -> dict[str, Any]:
        """The values of a plug-in's table (``encoder.whisper``), its constructor's keyword
        arguments; a plug-in table that was never configured is empty."""
        return {key: setting.value for key, setting in self.tables.get(name, {}).items()}

    def as_dict(self, with_sources: bool = False) -> dict[str, dict[str, Any]]:
        return {
            table: {
                key: ({"value": s.value, "source": s.source} if with_sources else s.value)
                for key, s in settings.items()
            }
            for table, settings in self.tables.items()
        }


def _built(settings: type[Settings], values: dict[str, Setting]) -> Any:
    """The settings object of one core table; values that disagree with each other are a
    ConfigError naming each key and where it came from."""
    try:
        return settings(**{key: setting.value for key, setting in values.items()})
    except SettingsConflict as conflict:
        where = ", ".join(f"{values[key].source} ({conflict.table}.{key})" for key in conflict.keys)
        raise ConfigError(f"{where}: {conflict}") from None


def _table_options(table: str, where: str) -> tuple[Option, ...]:
    """The options of a core table, or of the plug-in a table such as ``encoder.whisper``
    configures; an unknown table or plug-in is an error located at ``where``."""
    if table in CORE_SECTIONS:
        return CORE_SECTIONS[table]
    prefix, _, name = table.partition(".")
    if prefix not in PLUGIN_TABLES or not name:
        known = ", ".join([*CORE_SECTIONS, *(f"{p}.NAME" for p in PLUGIN_TABLES)])
        raise ConfigError(f"{where}: unknown table [{table}] (known: {known})")
    import mercli.plugins as plugins  # loads the plug-ins only when a plug-in table is present

    stage = PLUGIN_TABLES[prefix]
    registered = plugins.registry(stage).get(name)
    if registered is None:
        installed = ", ".join(plugins.registry(stage)) or "none"
        raise ConfigError(f"{where}: [{table}] configures unknown {prefix} '{name}' (installed: {installed})")
    return registered.component.options


def _checked_value(options: tuple[Option, ...], table: str, key: str, value: Any, where: str) -> Any:
    """``value`` for ``key`` of ``[table]``, checked against the table's options."""
    by_name = {option.name: option for option in options}
    if key not in by_name:
        valid = ", ".join(by_name) or "none"
        raise ConfigError(f"{where}: unknown key '{key}' in [{table}] (valid: {valid})")
    option = by_name[key]
    return coerce(option, parse_value(value, option.kind) if isinstance(value, Text) else value, where)


def _flatten_tables(document: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    """Yield (table name, content), unfolding ``[encoder.whisper]`` into ``encoder.whisper``."""
    for name, content in document.items():
        if name in PLUGIN_TABLES and isinstance(content, dict):
            for plugin, options in content.items():
                yield f"{name}.{plugin}", options
        else:
            yield name, content


def load(
    path: Path | None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    required: bool = False,
) -> Config:
    """Resolve the configuration from defaults, ``path`` (if it exists; it must when ``required``),
    the environment and ``overrides`` (``{"extract.fps": 4}``, from the command line; a
    :class:`Text` value is parsed according to its setting's type)."""
    environ = os.environ if environ is None else environ
    if path is not None and path.exists() and not path.is_file():  # a folder or a pipe is no mer.toml
        raise ConfigError(f"{path}: not a regular file")
    if required and (path is None or not path.is_file()):
        raise ConfigError(f"{path}: no such configuration file")
    tables: dict[str, dict[str, Setting]] = {
        table: {o.name: Setting(o.default, "default") for o in options}
        for table, options in CORE_SECTIONS.items()
    }
    if path is not None and path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
            document = tomllib.loads(text)
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: cannot be read: {error}") from error
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from error
        for table, content in _flatten_tables(document):
            at = f"{path}:{line_of(text, table) or line_of(text, '', table) or 1}"
            if not isinstance(content, dict):
                raise ConfigError(f"{at}: '{table}' must be a table ([{table}] followed by its keys)")
            options = _table_options(table, at)
            for key, value in content.items():
                at = f"{path}:{line_of(text, table, key) or line_of(text, table) or 1}"
                tables.setdefault(table, {})[key] = Setting(_checked_value(options, table, key, value, at), at)

    for table, options in CORE_SECTIONS.items():
        for option in options:
            variable = f"{ENV_PREFIX}{table}_{option.name}".upper()
            if variable in environ:
                value = coerce(option, parse_value(environ[variable], option.kind), f"environment {variable}")
                tables[table][option.name] = Setting(value, f"environment {variable}")

    _override(tables, overrides or {}, "command line")
    return Config(tables, path if path is not None and path.is_file() else None)


def _override(tables: dict[str, dict[str, Setting]], overrides: Mapping[str, Any], source: str) -> None:
    for dotted, value in overrides.items():
        table, _, key = dotted.rpartition(".")
        where = f"{source} ({dotted})"
        if not table:
            raise ConfigError(f"{where}: a setting is named TABLE.KEY, for example extract.fps")
        checked = _checked_value(_table_options(table, where), table, key, value, where)
        tables.setdefault(table, {})[key] = Setting(checked, source)


def toml_value(value: Any) -> str:
    """Write a value as TOML (the subset the settings use)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def _help_line(option: Option) -> str:
    """An option's help, with the values it admits when it declares them."""
    declared = option.range is not None or option.choices is not None
    return f"{option.help} Allowed: {option.allowed()}." if declared else option.help


def template() -> str:
    """A commented ``mer.toml`` listing every core setting at its default, ready to edit.

    Prose starts with ``##`` and settings with ``# ``, so that uncommenting settings (even all of them
    at once) leaves a valid file.
    """
    lines = [
        "## mer configuration. Every setting is shown at its default; uncomment a line to change it.",
        "## Precedence: command line (-s TABLE.KEY=VALUE) > environment (MER_<TABLE>_<KEY>) > this file > defaults.",
        "## Plug-ins are configured in tables named after them, e.g. [encoder.whisper] or [loss.bdcl];",
        "## `mer plugins` lists what is installed and the options each one takes.",
    ]
    for table, options in CORE_SECTIONS.items():
        lines += ["", f"[{table}]"]
        for option in options:
            lines += [f"## {_help_line(option)}", f"# {option.name} = {toml_value(option.default)}"]
    return "\n".join(lines) + "\n"

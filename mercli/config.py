"""Configuration: ``mer.toml``, environment variables and command-line overrides.

Precedence is command line > environment > ``mer.toml`` > defaults, and every resolved value
remembers where it came from (``mer config show``). The core's settings are declared in
``CORE_SECTIONS``; a plug-in's settings live in a table named after its stage and name
(``[encoder.whisper]``, ``[loss.bdcl]``) and are declared by the plug-in's ``options``. An unknown
key or a value of the wrong type is a :class:`ConfigError` naming the key, the file and the line.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from mercli.contracts import Option
from mercli.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

CONFIG_NAME = "mer.toml"
ENV_PREFIX = "MER_"

MER2024_CLASSES = ["neutral", "angry", "happy", "sad", "worried", "surprise"]

#: Spellings used by common datasets, folded into the MER2024 class names.
DEFAULT_LABEL_MAP = {
    "neu": "neutral",
    "anger": "angry",
    "ang": "angry",
    "happiness": "happy",
    "hap": "happy",
    "joy": "happy",
    "sadness": "sad",
    "surprised": "surprise",
    "worry": "worried",
}

CORE_SECTIONS: dict[str, tuple[Option, ...]] = {
    "data": (
        Option("classes", list, MER2024_CLASSES, "Class names, in the order the model outputs them."),
        Option("label_map", dict, DEFAULT_LABEL_MAP, "Dataset spellings folded into class names."),
        Option("dataset", str, "auto", "Labels reader: a dataset plug-in name, or auto to detect it."),
    ),
    "extract": (
        Option("fps", float, 2.0, "Video frames sampled per second."),
        Option("sample_rate", int, 16000, "Audio sample rate the encoders receive (Hz, mono)."),
        Option("encoders", list, [], "Encoders to run; empty means every installed default encoder."),
        Option("workers", int, 1, "Worker processes."),
    ),
}

#: Table prefixes whose sub-tables configure plug-ins, and the registry stage behind each.
PLUGIN_TABLES = {
    "encoder": "encoders",
    "transcriber": "transcribers",
    "reasoner": "reasoners",
    "loss": "losses",
    "dataset": "datasets",
}


@dataclass(frozen=True)
class Setting:
    value: Any
    source: str


def _type_name(kind: type) -> str:
    return {list: "a list", dict: "a table", bool: "true or false", int: "an integer",
            float: "a number", str: "a string"}.get(kind, kind.__name__)


def coerce(option: Option, value: Any, where: str) -> Any:
    """Check ``value`` against ``option`` and return it in the option's type."""
    if value is None and option.default is None:
        return None
    if option.kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (option.kind is not bool and isinstance(value, bool)) or not isinstance(value, option.kind):
        raise ConfigError(f"{where}: '{option.name}' must be {_type_name(option.kind)}, got {value!r}")
    return value


def parse_value(raw: str) -> Any:
    """Read a value given as text (environment, ``--set``) as TOML, or as a bare string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


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
    """Resolved settings, by table name (``data``, ``extract``, ``encoder.whisper``)."""

    def __init__(self, tables: dict[str, dict[str, Setting]], path: Path | None) -> None:
        self.tables = tables
        self.path = path

    def get(self, table: str, key: str) -> Any:
        return self.tables[table][key].value

    def table(self, name: str) -> dict[str, Any]:
        """The values of one table; a plug-in table that was never configured is empty."""
        return {key: setting.value for key, setting in self.tables.get(name, {}).items()}

    def as_dict(self, with_sources: bool = False) -> dict[str, dict[str, Any]]:
        return {
            table: {
                key: ({"value": s.value, "source": s.source} if with_sources else s.value)
                for key, s in settings.items()
            }
            for table, settings in self.tables.items()
        }


def _plugin_options(table: str) -> tuple[Option, ...] | None:
    """The options of the plug-in a table such as ``encoder.whisper`` configures."""
    prefix, _, name = table.partition(".")
    if prefix not in PLUGIN_TABLES or not name:
        return None
    from mercli import plugins  # loads the plug-ins only when a plug-in table is present

    registered = plugins.registry(PLUGIN_TABLES[prefix]).get(name)
    return None if registered is None else registered.component.options


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
) -> Config:
    """Resolve the configuration from defaults, ``path`` (if it exists), the environment and
    ``overrides`` (``{"extract.fps": 4}``, from the command line)."""
    environ = os.environ if environ is None else environ
    tables: dict[str, dict[str, Setting]] = {
        table: {o.name: Setting(o.default, "default") for o in options}
        for table, options in CORE_SECTIONS.items()
    }
    schemas: dict[str, tuple[Option, ...]] = dict(CORE_SECTIONS)

    if path is not None and path.is_file():
        text = path.read_text(encoding="utf-8")
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from error
        for table, content in _flatten_tables(document):
            at = f"{path}:{line_of(text, table) or 1}"
            options = schemas.get(table) or _plugin_options(table)
            if options is None or not isinstance(content, dict):
                raise ConfigError(f"{at}: unknown table [{table}]")
            schemas[table] = options
            by_name = {o.name: o for o in options}
            for key, value in content.items():
                at = f"{path}:{line_of(text, table, key) or line_of(text, table) or 1}"
                if key not in by_name:
                    raise ConfigError(f"{at}: unknown key '{key}' in [{table}]")
                tables.setdefault(table, {})[key] = Setting(coerce(by_name[key], value, at), at)

    for table, options in CORE_SECTIONS.items():
        for option in options:
            variable = f"{ENV_PREFIX}{table}_{option.name}".upper()
            if variable in environ:
                value = coerce(option, parse_value(environ[variable]), f"environment {variable}")
                tables[table][option.name] = Setting(value, f"environment {variable}")

    for dotted, value in (overrides or {}).items():
        table, _, key = dotted.rpartition(".")
        options = schemas.get(table) or _plugin_options(table)
        by_name = {o.name: o for o in options or ()}
        if key not in by_name:
            raise ConfigError(f"command line: unknown setting '{dotted}'")
        tables.setdefault(table, {})[key] = Setting(coerce(by_name[key], value, "command line"), "command line")
    return Config(tables, path if path is not None and path.is_file() else None)


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


def template() -> str:
    """A commented ``mer.toml`` listing every core setting at its default, ready to edit."""
    lines = [
        "# mer configuration. Every setting is shown at its default; uncomment to change it.",
        "# Precedence: command line > environment (MER_<TABLE>_<KEY>) > this file > defaults.",
        "# Plug-ins are configured in tables named after them, e.g. [encoder.whisper] or [loss.bdcl];",
        "# `mer plugins` lists what is installed.",
    ]
    for table, options in CORE_SECTIONS.items():
        lines += ["", f"[{table}]"]
        for option in options:
            lines += [f"# {option.help}", f"# {option.name} = {toml_value(option.default)}"]
    return "\n".join(lines) + "\n"

"""Configuration: ``mer.toml``, environment variables and command-line overrides.

Precedence is command line > environment > ``mer.toml`` > defaults, and every resolved value
remembers where it came from (``mer config show``). The core's settings are declared in
``CORE_SECTIONS``; a plug-in's settings live in a table named after its stage and name
(``[encoder.whisper]``, ``[loss.bdcl]``) and are declared by the plug-in's ``options``. An unknown
key, a value of the wrong type or one outside the option's declared range or choices is a
:class:`ConfigError` naming the key, the file and the line (or the variable, or the command-line
setting), raised as the configuration loads, before any stage starts work.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from mercli.contracts import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, OPEN_UNIT, POSITIVE, STAGES, Option, Range
from mercli.errors import ConfigError
from mercli.prompts import AUTO, PROMPT_VERSIONS

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

DEFAULT_ENCODERS = ["face-landmarks", "fer-expression", "whisper", "egemaps", "text-embedding"]

#: List prices in US dollars per million tokens (text, image and video input) as published in late
#: 2025. They change: put current ones in mer.toml under ``[reason.prices]``.
DEFAULT_PRICES = {
    "gemini-2.5-flash": {"input": 0.30, "output": 2.50},
    "gemini-2.5-flash-lite": {"input": 0.10, "output": 0.40},
    "gemini-2.5-pro": {"input": 1.25, "output": 10.00},
    "gpt-4o-mini": {"input": 0.15, "output": 0.60},
    "gpt-4o": {"input": 2.50, "output": 10.00},
}

CORE_SECTIONS: dict[str, tuple[Option, ...]] = {
    "data": (
        Option("classes", list, MER2024_CLASSES, "Class names, in the order the model outputs them."),
        Option("label_map", dict, DEFAULT_LABEL_MAP, "Dataset spellings folded into class names."),
        Option("dataset", str, "auto", "Labels reader: a dataset plug-in name, or auto to detect it."),
    ),
    "extract": (
        Option("fps", float, 2.0, "Video frames sampled per second.", Range(0, 120, low_open=True)),
        Option("sample_rate", int, 16000, "Audio sample rate the encoders receive (Hz, mono).", Range(8000, 192000)),
        Option("encoders", list, DEFAULT_ENCODERS, "Encoders to run (`mer plugins` lists them)."),
        Option("transcriber", str, "whisper", "Speech recogniser for clips whose labels carry no transcript."),
        Option("workers", int, 0, "Worker processes; 0: one per usable CPU, fewer when memory or the clips left to do are fewer.",
               NON_NEGATIVE),
        Option("batch_size", int, 1, "Clips per group: each encoder takes a group at once (encode_batch) while "
               "the next group is decoded; GPU encoders (hf-audio, hf-vision) want more, e.g. 16.", AT_LEAST_ONE),
    ),
    "reason": (
        Option("reasoner", str, "local", "Reasoner plug-in (`mer plugins`); its settings go in [reasoner.NAME]."),
        Option("concurrency", int, 4, "Calls in flight at once.", AT_LEAST_ONE),
        Option("requests_per_minute", float, 60.0, "Most calls started per minute (0: no limit).", NON_NEGATIVE),
        Option("max_retries", int, 5, "Retries of a call after a 429, a 5xx, a timeout or a refused connection.",
               NON_NEGATIVE),
        Option("backoff", float, 2.0, "Longest wait before the first retry, in seconds; doubles each retry.",
               NON_NEGATIVE),
        Option("max_backoff", float, 60.0, "Longest wait before any retry, even when the server asks for longer.",
               NON_NEGATIVE),
        Option("max_cost", float, 0.0, "Stop before the estimated spending would pass this many US dollars (0: no limit).",
               NON_NEGATIVE),
        Option("prices", dict, DEFAULT_PRICES, "US dollars per million input and output tokens, by model."),
        Option("embed_with", str, "text-embedding", "Text encoder that turns traces into prior feature sets."),
        Option("batch_poll", float, 60.0, "Seconds between checks of batch jobs (mer reason --batch --wait).", POSITIVE),
        Option("prompt_version", str, AUTO, "Prompt the reasoner answers: mer-trace-v2 (class scores too, which "
               "become numeric prior sets) or mer-trace-v1; auto: the newest one this reasoner and model already "
               "have traces of in the workspace (nothing is asked again unasked), else the newest.",
               choices=(AUTO, *PROMPT_VERSIONS)),
    ),
    "train": (
        Option("loss", str, "bdcl", "Training loss (`mer plugins` lists them); its settings go in [loss.NAME]."),
        Option("features", list, [], "Feature sets to train on (folder names under features/); empty: all."),
        Option("epochs", int, 60, "Most epochs per fold.", AT_LEAST_ONE),
        Option("patience", int, 10, "Stop after this many epochs without a better validation WAF (0: never).",
               NON_NEGATIVE),
        Option("batch_size", int, 0, "Clips per training batch (0: the largest of 32, 64 and 128 that still gives "
               "an epoch at least 50 batches: larger batches train faster, a small table needs the steps).",
               NON_NEGATIVE),
        Option("lr", float, 1e-3, "Peak learning rate (AdamW, cosine decay to zero).", POSITIVE),
        Option("weight_decay", float, 0.01, "AdamW weight decay.", NON_NEGATIVE),
        Option("seed", int, 0, "Seed of every random choice: initialisation, batches, holdout, folds.",
               Range(0, 2**32 - 1)),
        Option("deterministic", bool, False, "Deterministic kernels only (slower on GPU, identical reruns)."),
        Option("device", str, "auto", "auto (cuda, then mps, then cpu), or a torch device such as cuda:1."),
        Option("fold_workers", int, 0, "Folds trained side by side on a CPU, each in its own process (1: one "
               "after the other; 0: as many as the folds and CPUs allow, once the training is long enough to "
               "repay starting the processes).", NON_NEGATIVE),
        Option("val_fraction", float, 0.2, "Share of groups held out for validation with --group-column.", OPEN_UNIT),
        Option("width", int, 128, "Width d of every token of the fusion network.", AT_LEAST_ONE),
        Option("layers", int, 2, "Transformer layers of the fusion.", AT_LEAST_ONE),
        Option("heads", int, 4, "Attention heads (must divide width).", AT_LEAST_ONE),
        Option("dropout", float, 0.1, "Dropout inside the network.", FRACTION),
        Option("modality_dropout", float, 0.1, "Chance of dropping each feature set of a clip while training.", FRACTION),
        Option("projection_dim", int, 64, "Width of the projection head used by contrastive losses.", AT_LEAST_ONE),
        Option("priors", bool, True, "Inject prior feature sets (prior-*) into their modality."),
    ),
    "pseudolabel": (
        Option("selection", str, "quota", "Which pseudo-labels to keep: quota (per-class shares of the pool "
               "proportional to the labelled class prior) or threshold (per-class confidence thresholds).",
               choices=("quota", "threshold")),
        Option("fraction", float, 0.5, "quota: share of the pool kept, spread over the classes by the labelled prior.",
               Range(0, 1, low_open=True)),
        Option("min_confidence", float, 0.0, "quota: no clip below this confidence is kept, quota or not.",
               Range(0, 1)),
        Option("threshold", float, 0.9, "threshold: the confidence a clip needs, for classes not in thresholds.",
               Range(0, 1)),
        Option("thresholds", dict, {}, "threshold: per-class confidence thresholds, e.g. {sad = 0.6}."),
        Option("agree_with", str, "", "Reasoner[:model] whose traces must agree with the teacher (empty: no rule)."),
        Option("agreement", str, "require", "require: keep only clips whose trace's overall emotion agrees; "
               "weight: keep them all, confidence times disagree_weight where it does not agree.",
               choices=("require", "weight")),
        Option("disagree_weight", float, 0.5, "weight: factor on the confidence of a clip its trace disagrees with "
               "(or that has no trace).", Range(0, 1)),
        Option("weight", float, 1.0, "mer train --pseudo-labels: a pseudo-labelled clip weighs this times its "
               "confidence in the loss (a labelled clip weighs 1).", POSITIVE),
    ),
    "eval": (
        Option("seed", int, 0, "mer eval --corrupt: seed of every random choice of the corruptions (noise, dropped "
               "frames, babble talkers).", NON_NEGATIVE),
        Option("noise_dir", str, "", "mer eval --corrupt audio-noise: a folder of noise recordings (MUSAN, say) to mix "
               "in instead of white noise (empty: white noise)."),
        Option("corrupt_priors", str, "absent", "mer eval --corrupt: priors of a corrupted clip are absent (no reasoner "
               "saw it), reason (the run's reasoner asked about the corrupted copy) or clean (kept from the clean "
               "clip: optimistic).", choices=("absent", "reason", "clean")),
    ),
    "report": (
        Option("gallery", int, 24, "Clips shown per run in the gallery of `mer report`, worst mistakes first.",
               NON_NEGATIVE),
    ),
}

#: Table prefixes whose sub-tables configure plug-ins, and the registry stage behind each.
PLUGIN_TABLES = {stage.table: stage.name for stage in STAGES.values()}


@dataclass(frozen=True)
class Setting:
    value: Any
    source: str


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
    """Resolved settings, by table name (``data``, ``extract``, ``encoder.whisper``)."""

    def __init__(self, tables: dict[str, dict[str, Setting]], path: Path | None) -> None:
        self.tables = tables
        self.path = path

    def get(self, table: str, key: str) -> Any:
        return self.tables[table][key].value

    def with_overrides(self, overrides: Mapping[str, Any], source: str = "run") -> "Config":
        """A copy with ``overrides`` (``{"extract.fps": 4}``) applied and checked, e.g. the settings
        a trained run recorded, which must win over mer.toml when predicting with it."""
        tables = {name: dict(settings) for name, settings in self.tables.items()}
        _override(tables, overrides, source)
        return Config(tables, self.path)

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

"""Configuration: precedence and provenance of every value, every kind of configuration error (with
file and line), plug-in tables validated against the plug-in's own options, and the `mer init`
template."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from mercli import config, plugins, settings
from mercli.contracts import Encoder, Features, Option
from mercli.errors import ConfigError
from mercli.hookspecs import hookimpl


def write(folder: Path, text: str) -> Path:
    path = folder / "mer.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- precedence ---------------------------------------------------------------------------------


def test_defaults_when_nothing_is_configured():
    resolved = config.load(None, environ={})
    assert resolved.extract.fps == 2.0
    assert resolved.data.classes == settings.MER2024_CLASSES
    assert {s.source for table in resolved.tables.values() for s in table.values()} == {"default"}
    assert resolved.path is None


def test_a_missing_default_file_means_defaults(tmp_path):
    resolved = config.load(tmp_path / "mer.toml", environ={})
    assert resolved.path is None
    assert resolved.extract.workers == 0


def test_command_line_beats_environment_beats_file_beats_default(tmp_path):
    path = write(tmp_path, "[extract]\nfps = 3.0\nworkers = 3\nsample_rate = 8000\n")
    environ = {"MER_EXTRACT_FPS": "4", "MER_EXTRACT_WORKERS": "4"}
    resolved = config.load(path, environ=environ, overrides={"extract.fps": 5})

    def value_and_source(key):
        setting = resolved.tables["extract"][key]
        return setting.value, setting.source

    assert value_and_source("fps") == (5.0, "command line")
    assert value_and_source("workers") == (4, "environment MER_EXTRACT_WORKERS")
    assert value_and_source("sample_rate") == (8000, f"{path}:4")
    assert value_and_source("encoders") == (config.CORE_SECTIONS["extract"][2].default, "default")
    assert resolved.path == path


def test_sources_are_reported_by_as_dict(tmp_path):
    path = write(tmp_path, "[data]\ndataset = 'crema-d'\n")
    shown = config.load(path, environ={}).as_dict(with_sources=True)
    assert shown["data"]["dataset"] == {"value": "crema-d", "source": f"{path}:2"}
    assert config.load(path, environ={}).as_dict()["data"]["dataset"] == "crema-d"


def test_environment_values_are_read_as_toml_or_as_bare_strings():
    resolved = config.load(None, environ={
        "MER_DATA_CLASSES": '["calm", "tense"]',
        "MER_DATA_DATASET": "emodb",
        "MER_EXTRACT_FPS": "2",
    })
    assert resolved.data.classes == ["calm", "tense"]
    assert resolved.data.dataset == "emodb"
    assert resolved.extract.fps == 2.0 and isinstance(resolved.extract.fps, float)


# --- errors: every one names the place --------------------------------------------------------


def assert_file_error(folder: Path, text: str, line: int, message: str) -> None:
    """Loading ``text`` as mer.toml fails with ``message``, located at ``line`` of that file."""
    path = write(folder, text)
    with pytest.raises(ConfigError) as raised:
        config.load(path, environ={})
    assert str(raised.value).startswith(f"{path}:{line}: ")
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("[extract]\nfps = 2.0\n\n[extrct]\nworkers = 2\n", 4, "unknown table [extrct]"),
        ("# comment\n[extract]\nfps = 2.0\nfsp = 3.0\n", 4, "unknown key 'fsp' in [extract] (valid: fps, "),
        ("[extract]\n\n  fps = \"fast\"\n", 3, "'fps' must be a number, got 'fast'"),
        ("[ extract ]\nworkers = true\n", 2, "'workers' must be an integer, got True"),
        ("[data]\nclasses = \"happy\"\n", 2, "'classes' must be a list"),
        ("[data]\nclasses = [\"happy\", 3]\n", 2, "every item of 'classes' must be a string, got 3"),
        ("[data]\nlabel_map = { joy = 1 }\n", 2, "every item of 'label_map' must be a string, got 1"),
        ("\n\nfps = 3.0\n[extract]\n", 3, "'fps' must be a table"),
        ("[extract]\nfps = inf\n", 2, "'fps' must be a finite number in (0, 120], got inf"),
        ("[train]\nepochs = 0\n", 2, "'epochs' must be an integer >= 1, got 0"),
        ("[loss.focal]\ngamma = -1\n", 2, "'gamma' must be a finite number >= 0, got -1"),
    ],
    ids=["unknown-table", "unknown-key", "wrong-type", "bool-for-int", "scalar-for-list", "list-item",
         "table-item", "top-level-key", "out-of-range", "int-out-of-range", "plugin-out-of-range"],
)
def test_file_errors_name_file_line_and_key(tmp_path, text, line, message):
    assert_file_error(tmp_path, text, line, message)


def test_invalid_toml_names_the_file_and_the_line(tmp_path):
    path = write(tmp_path, "[extract]\nfps = 2.0\nworkers = = 2\n")
    with pytest.raises(ConfigError, match=r"not valid TOML") as raised:
        config.load(path, environ={})
    assert str(raised.value).startswith(f"{path}: ")
    assert "line 3" in str(raised.value)


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "mer.toml"
    path.write_bytes(b"[data]\ndataset = '\xff'\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        config.load(path, environ={})


@pytest.mark.parametrize(
    ("variable", "raw", "message"),
    [
        ("MER_EXTRACT_WORKERS", "many", "'workers' must be an integer, got 'many'"),
        ("MER_EXTRACT_FPS", "[1, 2]", "'fps' must be a number"),
        ("MER_DATA_CLASSES", "happy", "'classes' must be a list"),
        ("MER_EXTRACT_FPS", "nan", "'fps' must be a finite number in (0, 120], got nan"),
        ("MER_EXTRACT_SAMPLE_RATE", "1", "'sample_rate' must be an integer in [8000, 192000], got 1"),
    ],
)
def test_bad_environment_values_name_the_variable(variable, raw, message):
    with pytest.raises(ConfigError) as raised:
        config.load(None, environ={variable: raw})
    assert str(raised.value).startswith(f"environment {variable}: ")
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("dotted", "value", "message"),
    [
        ("extract.fsp", 3, "command line (extract.fsp): unknown key 'fsp' in [extract]"),
        ("extrct.fps", 3, "command line (extrct.fps): unknown table [extrct]"),
        ("fps", 3, "command line (fps): a setting is named TABLE.KEY"),
        ("extract.fps", "fast", "command line (extract.fps): 'fps' must be a number"),
        ("extract.fps", -1.0, "command line (extract.fps): 'fps' must be a finite number in (0, 120], got -1.0"),
        ("extract.encoders", ["", ""], "command line (extract.encoders): 'encoders' holds an empty name"),
    ],
)
def test_bad_command_line_settings(dotted, value, message):
    with pytest.raises(ConfigError) as raised:
        config.load(None, environ={}, overrides={dotted: value})
    assert str(raised.value).startswith(message)


def test_parse_value_reads_toml_and_falls_back_to_text():
    assert config.parse_value("4") == 4
    assert config.parse_value("2.5") == 2.5
    assert config.parse_value("true") is True
    assert config.parse_value('["a", "b"]') == ["a", "b"]
    assert config.parse_value("crema-d") == "crema-d"


def test_text_settings_take_the_option_type_into_account():
    """A name that looks like a number stays a name; a number given as text becomes a number."""
    resolved = config.load(None, environ={"MER_DATA_DATASET": "2024"},
                           overrides={"extract.workers": config.Text("3"), "extract.transcriber": config.Text("7")})
    assert resolved.data.dataset == "2024"
    assert resolved.extract.workers == 3
    assert resolved.extract.transcriber == "7"
    quoted = config.load(None, environ={}, overrides={"data.dataset": config.Text('"mer2024"')})
    assert quoted.data.dataset == "mer2024"


def test_a_file_named_explicitly_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        config.load(tmp_path / "other.toml", environ={}, required=True)
    with pytest.raises(ConfigError, match=f"^{os.devnull}: not a regular file$"):
        config.load(Path(os.devnull), environ={}, required=True)


def test_a_workspace_configuration_that_is_no_file_is_named(tmp_path):
    (tmp_path / "mer.toml").mkdir()
    with pytest.raises(ConfigError, match="mer.toml: not a regular file$"):
        config.load(tmp_path / "mer.toml", environ={})


# --- plug-in tables -----------------------------------------------------------------------------


class ProbeEncoder(Encoder):
    """A test encoder with one option of each kind the checks distinguish."""

    name = "probe"
    modality = "audio"
    level = "utterance"
    dim = 1
    options = (
        Option("gain", float, 1.0, "Multiplier."),
        Option("model_path", str, None, "Optional path."),
    )

    def encode(self, clip):
        return Features(None, absent="probe")


class ProbePlugin:
    @hookimpl
    def register_encoders(self, register):
        register(ProbeEncoder)


@pytest.fixture
def probe(fresh_plugins):
    plugins.loaded().manager.register(ProbePlugin(), name="test-probe")


def test_plugin_table_is_validated_and_passed_to_the_plugin(tmp_path, probe):
    path = write(tmp_path, '[encoder.probe]\ngain = 2\nmodel_path = "/models/x"\n')
    resolved = config.load(path, environ={})
    assert resolved.table("encoder.probe") == {"gain": 2.0, "model_path": "/models/x"}
    assert resolved.tables["encoder.probe"]["gain"].source == f"{path}:2"
    encoder = plugins.build("encoders", "probe", resolved)
    assert encoder.settings == {"gain": 2.0, "model_path": "/models/x"}


def test_plugin_table_command_line_beats_file(tmp_path, probe):
    path = write(tmp_path, "[encoder.probe]\ngain = 2.0\n")
    resolved = config.load(path, environ={}, overrides={"encoder.probe.gain": 3})
    assert resolved.tables["encoder.probe"]["gain"].value == 3.0
    assert resolved.tables["encoder.probe"]["gain"].source == "command line"


def test_a_plugin_option_may_be_none_where_its_default_is(probe):
    resolved = config.load(None, environ={}, overrides={"encoder.probe.model_path": None})
    assert resolved.table("encoder.probe") == {"model_path": None}


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("[data]\ndataset = 'auto'\n[encoder.probe]\ngian = 2.0\n", 4,
         "unknown key 'gian' in [encoder.probe] (valid: gain, model_path)"),
        ("[encoder.probe]\ngain = 'loud'\n", 2, "'gain' must be a number, got 'loud'"),
        ("[encoder.nope]\ngain = 1.0\n", 1, "[encoder.nope] configures unknown encoder 'nope' (installed: "),
        ('[loss."no-such-loss"]\n', 1, "configures unknown loss 'no-such-loss'"),
    ],
    ids=["unknown-key", "wrong-type", "unknown-plugin", "unknown-plugin-quoted"],
)
def test_plugin_table_errors(tmp_path, probe, text, line, message):
    assert_file_error(tmp_path, text, line, message)


def test_unknown_plugin_on_the_command_line(probe):
    with pytest.raises(ConfigError, match=r"command line \(encoder\.nope\.gain\): .*unknown encoder 'nope'"):
        config.load(None, environ={}, overrides={"encoder.nope.gain": 1.0})


def test_core_tables_do_not_load_plugins(tmp_path, fresh_plugins, monkeypatch):
    """Reading a file with only core tables must not import any plug-in (start-up time)."""
    def fail():
        raise AssertionError("plug-ins were loaded")

    monkeypatch.setattr(plugins, "loaded", fail)
    config.load(write(tmp_path, "[extract]\nfps = 1.0\n"), environ={}, overrides={"data.dataset": "emodb"})


# --- the template of `mer init` ----------------------------------------------------------------


def defaults() -> dict:
    return config.load(None, environ={}).as_dict()


def test_template_loads_to_the_defaults(tmp_path):
    path = write(tmp_path, config.template())
    assert config.load(path, environ={}).as_dict() == defaults()


def test_template_with_every_setting_uncommented_still_loads_to_the_defaults(tmp_path):
    uncommented, count = re.subn(r"(?m)^# ", "", config.template())
    assert count == sum(len(options) for options in config.CORE_SECTIONS.values())
    path = write(tmp_path, uncommented)
    resolved = config.load(path, environ={})
    assert resolved.as_dict() == defaults()
    assert all(s.source.startswith(f"{path}:") for table in resolved.tables.values() for s in table.values())


def test_template_documents_every_core_setting():
    text = config.template()
    for table, options in config.CORE_SECTIONS.items():
        assert f"[{table}]" in text
        for option in options:
            assert f"# {option.name} = " in text and option.help in text


def test_the_sample_config_in_examples_loads():
    sample = Path(__file__).resolve().parents[1] / "examples" / "mer.toml"
    resolved = config.load(sample, environ={})
    assert resolved.data.dataset == "mer2024"
    assert resolved.table("encoder.whisper")["model"] == "tiny.en"
    assert resolved.table("loss.bdcl") == {"temperature": 0.1, "lambda_intra": 0.5}

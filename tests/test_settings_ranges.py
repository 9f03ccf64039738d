"""Every numeric setting declares the values it admits, and a value outside them is a usage error when
the configuration loads: one line naming where it was given, the key, the value and the range, before
any folder is made (issue #11 item 2). An infinite fps used to make `mer extract` spin for ever; a
zero fps or sample rate made every clip "fail", left an empty feature set and failure records."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib

from mercli import config, plugins
from mercli.contracts import FRACTION, POSITIVE, Option, Range
from mercli.errors import ConfigError
from mercli.media import decode
from support.mer_process import mer_environment, one_error_line

#: (dotted key, a value out of its range, the range as the message words it)
OUT_OF_RANGE = [
    ("extract.fps", math.inf, "a finite number in (0, 120]"),
    ("extract.fps", 120.5, "a finite number in (0, 120]"),
    ("extract.sample_rate", 1, "an integer in [8000, 192000]"),
    ("extract.workers", -1, "an integer >= 0"),
    ("reason.concurrency", 0, "an integer >= 1"),
    ("reason.requests_per_minute", -1.0, "a finite number >= 0"),
    ("reason.max_retries", -1, "an integer >= 0"),
    ("reason.backoff", math.nan, "a finite number >= 0"),
    ("reason.max_backoff", -0.5, "a finite number >= 0"),
    ("reason.max_cost", -1.0, "a finite number >= 0"),
    ("train.epochs", 0, "an integer >= 1"),
    ("train.patience", -1, "an integer >= 0"),
    ("train.batch_size", -1, "an integer >= 0"),
    ("train.lr", 0.0, "a finite number > 0"),
    ("train.weight_decay", -0.01, "a finite number >= 0"),
    ("train.seed", -1, "an integer in [0, 4294967295]"),
    ("train.val_fraction", 1.0, "a finite number in (0, 1)"),
    ("train.width", 0, "an integer >= 1"),
    ("train.layers", 0, "an integer >= 1"),
    ("train.heads", 0, "an integer >= 1"),
    ("train.dropout", 1.0, "a finite number in [0, 1)"),
    ("train.modality_dropout", -0.1, "a finite number in [0, 1)"),
    ("train.projection_dim", 0, "an integer >= 1"),
    ("loss.bdcl.temperature", 0.0, "a finite number > 0"),
    ("loss.bdcl.lambda_intra", -1.0, "a finite number >= 0"),
    ("loss.focal.gamma", math.inf, "a finite number >= 0"),
    ("loss.cb-ce.beta", 1.0, "a finite number in [0, 1)"),
    ("encoder.text-embedding.batch_size", 0, "an integer >= 1"),
    ("encoder.whisper-frames.hop", 0.0, "a finite number in [0.02, 30]"),
    ("transcriber.whisper.beam_size", 0, "an integer >= 1"),
    ("reasoner.gemini.temperature", 2.5, "a finite number in [0, 2]"),
    ("reasoner.openai.frame_size", 8, "an integer >= 16"),
    ("reasoner.openai.max_output_tokens", 0, "an integer >= 1"),
]


def every_option() -> list[tuple[str, Option]]:
    """Every option of the core and of every installed plug-in, by the table that configures it."""
    found = [(table, option) for table, options in config.CORE_SECTIONS.items() for option in options]
    for prefix, stage in config.PLUGIN_TABLES.items():
        for name, registered in plugins.registry(stage).items():
            found += [(f"{prefix}.{name}", option) for option in registered.component.options]
    return found


# --- the declarations -------------------------------------------------------------------------


def test_every_numeric_option_declares_its_range(fresh_plugins):
    """A new numeric option without a range fails here, so that no value is ever taken unchecked."""
    options = every_option()
    assert len(options) > 60  # the walk reached the plug-ins
    missing = [f"{table}.{option.name}" for table, option in options
               if option.kind in (int, float) and option.range is None and option.choices is None]
    assert missing == []


def test_every_default_is_in_its_own_range(fresh_plugins):
    bad = [f"{table}.{option.name}: {problem}" for table, option in every_option()
           if (problem := option.problem(option.default))]
    assert bad == []


@pytest.mark.parametrize(("allowed", "inside", "outside"), [
    (POSITIVE, [1e-12, 5, 1e300], [0, 0.0, -1, math.inf, math.nan, -math.inf]),
    (FRACTION, [0, 0.0, 0.999], [1, 1.0, -1e-9, math.nan]),
    (Range(0, 120, low_open=True), [120, 0.5], [0, 120.0001, math.inf]),
    (Range(0, infinite=True), [0, math.inf], [-1, math.nan, -math.inf]),
])
def test_ranges_refuse_nan_and_infinities_unless_allowed(allowed, inside, outside):
    assert all(allowed.admits(value) for value in inside)
    assert not any(allowed.admits(value) for value in outside)


def test_choices_are_checked_and_named():
    option = Option("compute_type", str, "int8", "", choices=("int8", "float32"))
    assert option.problem("float32") is None
    assert option.problem("int9") == "'compute_type' must be one of int8, float32, got 'int9'"


# --- when the configuration loads ---------------------------------------------------------------


@pytest.mark.parametrize(("dotted", "value", "allowed"), OUT_OF_RANGE, ids=[f"{k}={v}" for k, v, _ in OUT_OF_RANGE])
def test_a_value_out_of_range_names_key_value_and_range(dotted, value, allowed, fresh_plugins):
    key = dotted.rpartition(".")[2]
    with pytest.raises(ConfigError) as raised:
        config.load(None, environ={}, overrides={dotted: value})
    assert str(raised.value) == f"command line ({dotted}): '{key}' must be {allowed}, got {value!r}"


def test_bounds_themselves_are_accepted_where_they_are_closed():
    resolved = config.load(None, environ={}, overrides={
        "extract.fps": 120, "extract.sample_rate": 8000, "extract.workers": 0, "train.dropout": 0.0,
        "reason.max_cost": 0.0, "train.val_fraction": 0.5})
    assert resolved.extract.fps == 120.0 and resolved.extract.workers == 0


def test_a_closed_set_of_names_is_checked_when_the_configuration_loads(fresh_plugins):
    with pytest.raises(ConfigError, match=r"^command line \(encoder.whisper.compute_type\): 'compute_type' must be "
                                          r"one of default, auto, int8, .*, got 'int9'$"):
        config.load(None, environ={}, overrides={"encoder.whisper.compute_type": "int9"})


def test_a_component_built_directly_gets_the_same_ranges(fresh_plugins):
    """Scripts and tests that build a component without a configuration are held to the same ranges."""
    whisper_frames = plugins.get("encoders", "whisper-frames").component
    with pytest.raises(ConfigError, match=r"^whisper-frames: 'hop' must be a finite number in \[0.02, 30\], got nan$"):
        whisper_frames(hop=math.nan)


@pytest.mark.parametrize("text", ['["happy", ""]', '["happy", "  "]'])
def test_a_list_of_names_holding_an_empty_name_is_refused(text):
    with pytest.raises(ConfigError, match=r"^command line \(data.classes\): 'classes' holds an empty name"):
        config.load(None, environ={}, overrides={"data.classes": config.Text(text)})


def test_the_template_shows_each_declared_range():
    template = config.template()
    assert "## Video frames sampled per second. Allowed: a finite number in (0, 120].\n# fps = 2.0\n" in template
    assert "Allowed: an integer >= 0.\n# workers = 0\n" in template
    uncommented = "\n".join(line[2:] if line.startswith("# ") else line for line in template.splitlines())
    assert tomllib.loads(uncommented)["extract"]["fps"] == 2.0


@pytest.mark.slow
def test_the_frame_sampler_is_never_given_an_fps_it_would_loop_on(shared_data):
    """Whoever calls decode: an infinite fps used to spin for ever (so it runs in a child process here)."""
    clip = shared_data / "crema-d" / "1001_DFA_ANG_XX.flv"
    for fps in (math.nan, 0.0, -2.0):
        with pytest.raises(ValueError, match="fps"):
            decode(clip, "x", fps=fps)
    code = f"from mercli.media import decode; decode({str(clip)!r}, 'x', fps=float('inf'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "ValueError: fps, sample_rate and max_side must be finite" in result.stderr


# --- the command line, as a shell runs it -------------------------------------------------------


def run_quickly(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``mer ARGS`` that must finish within seconds (an infinite fps used to make it spin for ever)."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "mercli", *args], cwd=cwd, env=env or mer_environment(),
                            capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 30, result.stderr
    return result


def assert_refused_before_any_work(result: subprocess.CompletedProcess[str], workspace: Path, where: str,
                                   shown: str) -> None:
    """Exit 2, one line naming where, the key, the value and the range; nothing written in the workspace."""
    assert result.returncode == 2, result.stderr
    line = one_error_line(result)
    assert line.startswith(f"error: {where}: 'fps' must be a finite number in (0, 120], got {shown}"), line
    assert sorted(p.name for p in workspace.iterdir()) in ([], ["mer.toml"])


BAD_FPS = [("inf", "inf"), ("nan", "nan"), ("0", "0"), ("-1", "-1")]


@pytest.mark.slow
@pytest.mark.parametrize(("raw", "shown"), BAD_FPS)
def test_extract_refuses_a_bad_fps_option(tmp_path, shared_data, raw, shown):
    result = run_quickly("extract", str(shared_data / "crema-d"), "--encoders", "face-landmarks", "--fps", raw,
                         cwd=tmp_path)
    assert_refused_before_any_work(result, tmp_path, "command line (extract.fps)", repr(float(shown)))


@pytest.mark.slow
@pytest.mark.parametrize(("raw", "shown"), BAD_FPS)
def test_extract_refuses_a_bad_fps_setting(tmp_path, shared_data, raw, shown):
    result = run_quickly("-s", f"extract.fps={raw}", "extract", str(shared_data / "crema-d"),
                         "--encoders", "face-landmarks", cwd=tmp_path)
    assert_refused_before_any_work(result, tmp_path, "command line (extract.fps)", shown)


@pytest.mark.slow
@pytest.mark.parametrize(("raw", "shown"), BAD_FPS)
def test_extract_refuses_a_bad_fps_in_mer_toml(tmp_path, shared_data, raw, shown):
    (tmp_path / "mer.toml").write_text(f"[extract]\nfps = {raw}\n", encoding="utf-8")
    result = run_quickly("extract", str(shared_data / "crema-d"), "--encoders", "face-landmarks", cwd=tmp_path)
    assert_refused_before_any_work(result, tmp_path, f"{tmp_path / 'mer.toml'}:2", shown)


@pytest.mark.slow
@pytest.mark.parametrize(("raw", "shown"), BAD_FPS)
def test_extract_refuses_a_bad_fps_in_the_environment(tmp_path, shared_data, raw, shown):
    result = run_quickly("extract", str(shared_data / "crema-d"), "--encoders", "face-landmarks", cwd=tmp_path,
                         env=mer_environment(MER_EXTRACT_FPS=raw))
    assert_refused_before_any_work(result, tmp_path, "environment MER_EXTRACT_FPS", shown)


@pytest.mark.parametrize(("args", "message"), [
    (["-s", "extract.sample_rate=0", "extract", "CLIPS", "--encoders", "egemaps"],
     "command line (extract.sample_rate): 'sample_rate' must be an integer in [8000, 192000], got 0"),
    (["extract", "CLIPS", "--workers", "-2"], "command line (extract.workers): 'workers' must be an integer >= 0, got -2"),
    (["extract", "CLIPS", "--encoders", ","], "command line (extract.encoders): 'encoders' holds an empty name: ['', '']"),
    (["extract", "CLIPS", "--encoders", "egemaps,,whisper"], "'encoders' holds an empty name"),
    (["reason", "CLIPS", "--max-cost", "-1"], "command line (reason.max_cost): 'max_cost' must be a finite number >= 0"),
    (["reason", "CLIPS", "--concurrency", "0"], "command line (reason.concurrency): 'concurrency' must be an integer >= 1"),
    (["train", "--labels", "labels.csv", "--lr", "nan"], "command line (train.lr): 'lr' must be a finite number > 0, got nan"),
    (["-s", "train.heads=3", "train", "--labels", "labels.csv"], "[train] heads (3) must divide width (128)"),
], ids=["sample-rate", "workers", "empty-encoders", "empty-encoder-name", "max-cost", "concurrency", "lr",
        "heads-divide-width"])
@pytest.mark.slow
def test_other_stages_refuse_bad_settings_before_any_work(tmp_path, shared_data, args, message):
    clips = str(shared_data / "crema-d")
    result = run_quickly(*[clips if a == "CLIPS" else a for a in args], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in one_error_line(result)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_config_show_refuses_a_bad_value_from_the_environment(tmp_path):
    result = run_quickly("config", "show", cwd=tmp_path, env=mer_environment(MER_TRAIN_DROPOUT="1.5"))
    assert result.returncode == 2
    assert re.fullmatch(r"error: environment MER_TRAIN_DROPOUT: 'dropout' must be a finite number in \[0, 1\), "
                        r"got 1.5", one_error_line(result))

"""The core's settings are one frozen, typed object per table (mercli/settings.py), each option
declared once as a field; the configuration builds them as it loads, so values that disagree with
each other are a usage error naming the keys and where each came from, before any stage starts
(issue #12 point 3)."""

from __future__ import annotations

import dataclasses
import json
import re
import typing

import pytest

from mercli import config
from mercli.errors import ConfigError
from mercli.runs import load_run
from mercli.settings import (CORE_SECTIONS, MER2024_CLASSES, SETTINGS, DataSettings, PseudolabelSettings,
                             SettingsConflict, TrainSettings)
from mercli.train import train
from mercli.workspace import Workspace
from support.mer_process import mer_environment, one_error_line, run_mer
from support.training import config as fast_config, write_workspace


def template_keys() -> dict[str, list[str]]:
    """The keys ``mer init``'s template lists, by table, in order."""
    keys: dict[str, list[str]] = {}
    table = ""
    for line in config.template().splitlines():
        if header := re.fullmatch(r"\[(\w+)\]", line):
            table = header.group(1)
            keys[table] = []
        elif setting := re.match(r"# (\w+) = ", line):
            keys[table].append(setting.group(1))
    return keys


def test_the_template_lists_exactly_the_fields_of_the_settings_objects():
    assert template_keys() == {table: [f.name for f in dataclasses.fields(cls)] for table, cls in SETTINGS.items()}


def test_each_option_is_derived_from_its_field_type_default_and_declaration():
    for table, cls in SETTINGS.items():
        hints, defaults = typing.get_type_hints(cls), cls()
        for option in CORE_SECTIONS[table]:
            assert option.kind is (typing.get_origin(hints[option.name]) or hints[option.name]), option
            assert getattr(defaults, option.name) == option.default, option
    assert config.CORE_SECTIONS is CORE_SECTIONS  # what -s, MER_* and the click options read


def test_typed_access_returns_values_in_their_declared_types(tmp_path):
    path = tmp_path / "mer.toml"
    path.write_text("[extract]\nfps = 3\n[reason]\nmax_cost = 2\n[data]\nclasses = ['calm', 'tense']\n")
    resolved = config.load(path, environ={"MER_TRAIN_EPOCHS": "7", "MER_TRAIN_PRIORS": "false"},
                           overrides={"pseudolabel.selection": "threshold", "train.lr": 1})
    assert resolved.extract.fps == 3.0 and isinstance(resolved.extract.fps, float)
    assert resolved.reason.max_cost == 2.0 and isinstance(resolved.reason.max_cost, float)
    assert resolved.train.lr == 1.0 and isinstance(resolved.train.lr, float)
    assert resolved.train.epochs == 7 and resolved.train.priors is False
    assert resolved.data.classes == ["calm", "tense"] and resolved.pseudolabel.selection == "threshold"
    for table, options in CORE_SECTIONS.items():
        for option in options:
            value = getattr(getattr(resolved, table), option.name)
            assert option.problem(value) is None and type(value) is option.kind, (table, option.name, value)


def test_settings_objects_are_frozen_and_share_no_default():
    resolved = config.load(None, environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        resolved.train.epochs = 3  # type: ignore[misc]
    assert DataSettings().classes == MER2024_CLASSES
    assert DataSettings().classes is not DataSettings().classes is not MER2024_CLASSES


def test_an_object_built_directly_is_checked_too():
    with pytest.raises(ConfigError, match=r"^train\.epochs: 'epochs' must be an integer >= 1, got 0$"):
        TrainSettings(epochs=0)
    with pytest.raises(SettingsConflict, match=r"^\[train\] heads \(3\) must divide width \(128\)$"):
        TrainSettings(heads=3)
    assert TrainSettings(width=8, heads=2, dropout=0).dropout == 0.0


def test_heads_that_do_not_divide_width_are_refused_at_load_naming_both_keys(tmp_path):
    path = tmp_path / "mer.toml"
    path.write_text("[train]\nwidth = 96\nheads = 5\n")
    with pytest.raises(ConfigError) as refused:
        config.load(path, environ={})
    assert str(refused.value) == (f"{path}:3 (train.heads), {path}:2 (train.width): "
                                  "[train] heads (5) must divide width (96)")
    with pytest.raises(ConfigError) as refused:
        config.load(None, environ={"MER_TRAIN_HEADS": "3"})
    assert str(refused.value) == ("environment MER_TRAIN_HEADS (train.heads), default (train.width): "
                                  "[train] heads (3) must divide width (128)")
    fine = config.load(path, environ={}, overrides={"train.heads": 4})
    with pytest.raises(ConfigError, match=re.escape("command line (train.heads), run (train.width): [train] heads (4) "
                                                     "must divide width (90)")):
        fine.with_overrides({"train.width": 90})


def test_per_class_thresholds_and_class_names_are_checked_at_load(tmp_path):
    path = tmp_path / "mer.toml"
    path.write_text("[pseudolabel]\nselection = 'threshold'\nthresholds = {happy = 1.5}\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}:3 (pseudolabel.thresholds): [pseudolabel] "
                                                     "thresholds.happy: must be a number in [0, 1], got 1.5")):
        config.load(path, environ={})
    with pytest.raises(ConfigError, match=re.escape("command line (data.classes): [data] classes names a more "
                                                     "than once")):
        config.load(None, environ={}, overrides={"data.classes": ["a", "b", "a"]})
    assert PseudolabelSettings(thresholds={"happy": 1}).thresholds == {"happy": 1}


def test_a_run_record_loads_without_the_keys_it_predates_or_those_since_removed():
    recorded = TrainSettings.from_record({"width": 16, "heads": 2, "a_key_of_long_ago": 1})
    assert (recorded.width, recorded.heads, recorded.layers) == (16, 2, TrainSettings().layers)
    assert TrainSettings.from_record(TrainSettings(width=8, heads=2).to_json()) == TrainSettings(width=8, heads=2)


def test_a_run_records_its_train_settings_and_loads_across_changes_of_the_train_keys(tmp_path):
    labels = write_workspace(tmp_path, clips_per_class=8)
    settings = fast_config(**{"train.epochs": 1, "train.fold_workers": 1})
    run = train(settings, Workspace(tmp_path), labels, name="old").run
    document = json.loads((run / "config.json").read_text())
    assert document["train"] == dataclasses.asdict(settings.train)
    del document["train"]["fold_workers"]  # a key added since the run was trained
    document["train"]["a_key_of_long_ago"] = 1  # and one removed since
    (run / "config.json").write_text(json.dumps(document))
    assert len(load_run(run).folds) == 1  # its weights fit the recorded sizes (width 32, not the default 128)


@pytest.mark.slow
@pytest.mark.parametrize("command", [["train", "--labels", "labels.csv"], ["config", "show"]],
                         ids=["train", "config-show"])
def test_mer_refuses_disagreeing_settings_before_any_work(tmp_path, command):
    (tmp_path / "mer.toml").write_text("[train]\nwidth = 96\nheads = 5\n")
    result = run_mer(*command, cwd=tmp_path, env=mer_environment())
    assert result.returncode == 2, result.stderr
    assert re.fullmatch(r"error: \S*mer\.toml:3 \(train\.heads\), \S*mer\.toml:2 \(train\.width\): "
                        r"\[train\] heads \(5\) must divide width \(96\)", one_error_line(result))
    assert [p.name for p in tmp_path.iterdir()] == ["mer.toml"]

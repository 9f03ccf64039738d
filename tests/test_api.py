"""The Python API (:mod:`mercli.api`): every stage command's options are keywords of the same names
(the command forwards them by name), a value given is a command-line setting checked by the
configuration with the command's message, each function runs its real stage and returns what the
command prints with --json, and nothing reaches stdout (nor stderr, unless ``progress``)."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from support.encoders import MeanColour
from support.media import write_clip
from support.training import CLASSES, FAST, write_workspace

from mercli import api, plugins
from mercli.cli import SettingOption, cli
from mercli.errors import ConfigError, DataError, MerError, UsageError
from mercli.hookspecs import hookimpl

#: Each stage command and the function it calls.
STAGES = {"extract": api.extract, "reason": api.reason, "train": api.train, "eval": api.evaluate,
          "pseudolabel": api.pseudolabel, "report": api.report, "predict": api.predict}
#: Keywords every stage function takes besides the command's own (the group's -w, -c, -s; progress).
SHARED = {"workspace", "config", "settings", "progress"}
#: The positional arguments that let each function reach its configuration (none of them is read before).
FIRST = {"extract": ("clips",), "reason": ("clips",), "train": ("labels.csv",), "eval": (),
         "pseudolabel": ("clips",), "report": (("run",),), "predict": (("a.mp4",),)}
SETTINGS = {**FAST, "data.classes": CLASSES}


def python_name(param: click.Parameter) -> str:
    """The keyword a command-line parameter is: an argument's name, or the snake_case of the
    option's long flag (``--group-column`` -> ``group_column``, ``--no-embed`` -> ``no_embed``)."""
    if isinstance(param, click.Argument):
        return param.name
    return next(flag for flag in param.opts if flag.startswith("--"))[2:].replace("-", "_")


def stage_params(command: str) -> list[click.Parameter]:
    return [p for p in cli.commands[command].params if p.name not in ("as_json", "help")]


# --- names in step -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", STAGES)
def test_every_option_of_a_stage_command_is_a_keyword_of_its_function_and_back(command):
    params = stage_params(command)
    assert all(p.name == python_name(p) for p in params)  # the command forwards them by these names
    keywords = set(inspect.signature(STAGES[command]).parameters) - SHARED
    assert {python_name(p) for p in params} == keywords
    for name in {"workspace", "config", "settings"}:
        assert inspect.signature(STAGES[command]).parameters[name].default is None


def wrong_value(param: SettingOption):
    """A value the setting behind ``param`` refuses whatever its type."""
    return [""] if isinstance(param.type, click.types.StringParamType) and "NAMES" == param.metavar else {"no": 1}


@pytest.mark.parametrize("command", STAGES)
def test_every_setting_keyword_sets_the_key_its_option_sets_and_is_checked_there(command, tmp_path):
    settings = [p for p in stage_params(command) if isinstance(p, SettingOption)]
    for param in settings:
        with pytest.raises(ConfigError) as refused:
            STAGES[command](*FIRST[command], **{param.name: wrong_value(param)}, workspace=tmp_path)
        assert str(refused.value).startswith(f"command line ({param.setting}): '{param.setting.split('.')[1]}'")


@pytest.mark.parametrize(("command", "args", "keywords"), [
    ("train", ["--labels", "x.csv", "--epochs", "0"], {"epochs": 0}),
    ("extract", ["clips", "--fps", "0"], {"fps": 0.0}),
    ("reason", ["clips", "--rpm", "-1"], {"rpm": -1.0}),
    ("report", ["run", "--gallery", "-2"], {"gallery": -2}),
    ("train", ["--labels", "x.csv", "--loss", "nothing"], {"loss": "nothing"}),
])
def test_a_wrong_keyword_raises_the_config_error_the_command_prints(command, args, keywords, tmp_path):
    outcome = CliRunner().invoke(cli, ["-w", str(tmp_path), command, *args])
    assert outcome.exit_code == 2
    with pytest.raises(MerError) as refused:  # a ConfigError, or the PluginError of an unknown plug-in
        STAGES[command](*FIRST[command], **keywords, workspace=tmp_path)
    assert outcome.output.strip() == f"error: {refused.value}"


def test_settings_are_minus_s_and_a_keyword_given_wins_over_them(tmp_path):
    with pytest.raises(ConfigError, match=r"^command line \(train.epochs\): 'epochs' must be an integer >= 1, got 0"):
        api.train("labels.csv", settings={"train.epochs": 0}, workspace=tmp_path)
    with pytest.raises(DataError, match="labels.csv"):  # epochs=3 wins over the -s value: the stage starts
        api.train("labels.csv", epochs=3, settings={"train.epochs": 0}, workspace=tmp_path)


def test_a_named_config_file_must_exist_as_with_minus_c(tmp_path):
    with pytest.raises(ConfigError, match="other.toml: no such configuration file"):
        api.report(["run"], config=tmp_path / "other.toml", workspace=tmp_path)


def test_options_that_do_not_go_together_are_a_usage_error_and_the_command_still_prints_its_usage(tmp_path):
    with pytest.raises(UsageError, match="^--wait: only with --batch$"):
        api.reason("clips", wait=True, workspace=tmp_path)
    with pytest.raises(UsageError, match="^--rpm: means nothing with --batch"):
        api.reason("clips", batch=True, rpm=5, workspace=tmp_path)
    with pytest.raises(UsageError, match="need --labels"):
        api.evaluate("run", split="test", workspace=tmp_path)
    outcome = CliRunner().invoke(cli, ["-w", str(tmp_path), "reason", "clips", "--wait"])
    assert outcome.exit_code == 2
    assert "Usage: cli reason [OPTIONS] CLIPS_DIR" in outcome.output and "Error: --wait: only with --batch" in outcome.output


def test_the_workspace_is_found_as_mer_finds_it(tmp_path, monkeypatch):
    (tmp_path / "mer.toml").write_text("[train]\nepochs = 0\n")  # found upwards from the current folder
    inner = tmp_path / "inner"
    inner.mkdir()
    monkeypatch.chdir(inner)
    with pytest.raises(ConfigError, match=r"mer.toml:2: 'epochs'"):
        api.train("labels.csv")
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("MER_WORKSPACE", str(other))  # as `mer -w` reads it
    with pytest.raises(DataError, match="labels.csv"):
        api.train("labels.csv")


# --- real stages on a tiny workspace ---------------------------------------------------------------


@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    """A synthetic workspace (tests/support/training.py) whose run ``first`` trained through the API
    on half the training clips; ``clips`` holds (empty) files of the other clips, the pool."""
    root = tmp_path_factory.mktemp("api")
    labels = write_workspace(root)
    header, *rows = labels.read_text().splitlines()
    labelled = root / "half.csv"
    labelled.write_text("\n".join([header, *(r for n, r in enumerate(rows) if not r.endswith(",train") or n % 2)]) + "\n")
    clips = root / "clips"
    clips.mkdir()
    for row in rows:
        if not row.endswith(",test"):  # test clips are never pseudo-labelled
            (clips / f"{row.split(',')[0]}.wav").write_bytes(b"")
    trained = api.train(labelled, name="first", folds=2, epochs=2, seed=4, workspace=root, settings=SETTINGS)
    return root, labelled, clips, trained


def test_train_records_the_keywords_given(taught):
    root, _labels, _clips, trained = taught
    recorded = json.loads((root / "runs" / "first" / "config.json").read_text())
    assert recorded["train"]["epochs"] == 2 and recorded["train"]["seed"] == 4 and len(trained.folds) == 2
    assert trained.run == root / "runs" / "first" and set(trained.to_json()) >= {"run", "folds", "best"}


def test_evaluate_report_pseudolabel_and_a_student_run_their_stages_quietly(taught, capfd):
    root, labels, clips, _trained = taught
    evaluation = api.evaluate("first", workspace=root, settings=SETTINGS)
    assert evaluation.out == root / "runs" / "first" / "eval"
    assert evaluation.figures["waf"] == pytest.approx(json.loads((evaluation.out / "metrics.json").read_text())["waf"])
    page = api.report("first", gallery=0, workspace=root)
    assert page.out == root / "runs" / "first" / "report.html" and page.out.is_file()
    pseudo = api.pseudolabel(clips, checkpoint="first", out=root / "pseudo.csv", workspace=root, settings=SETTINGS)
    assert pseudo.out == root / "pseudo.csv" and pseudo.out.is_file() and pseudo.to_json()["kept"]
    student = api.train(labels, name="student", epochs=1, pseudo_labels=pseudo.out, pseudo_weight=0.5,
                        workspace=root, settings=SETTINGS)
    assert student.to_json()["pseudo_labels"]["path"] == str(pseudo.out.resolve())
    assert json.loads((root / "runs" / "student" / "config.json").read_text())["pseudo_labels"]["weight"] == 0.5
    printed = capfd.readouterr()
    assert printed.out == "" and printed.err == ""


def test_the_json_the_command_prints_is_the_functions_result(taught, tmp_path):
    root, labels, _clips, _trained = taught
    settings = [a for k, v in SETTINGS.items() for a in ("-s", f"{k}={json.dumps(v)}")]
    outcome = CliRunner().invoke(cli, ["-w", str(root), *settings, "eval", "--checkpoint", "first", "--labels",
                                       str(labels), "--split", "test", "--out", str(tmp_path / "cli"), "--json"])
    assert outcome.exit_code == 0, outcome.output
    printed = json.loads(outcome.stdout)
    evaluation = api.evaluate("first", labels=labels, split="test", out=tmp_path / "api", submission=tmp_path / "s.csv",
                              workspace=root, settings=SETTINGS)
    document = json.loads(json.dumps(evaluation.to_json(), default=str))
    assert document.pop("out") == str(tmp_path / "api") and printed.pop("out") == str(tmp_path / "cli")
    assert document == printed  # the same figures, by the same function
    assert (tmp_path / "s.csv").read_text().startswith("name,discrete\n")



class ColourPlugin:
    @hookimpl
    def register_encoders(self, register):
        register(MeanColour)


def test_extract_runs_the_stage_with_the_keywords_settings(fresh_plugins, tmp_path, capfd):
    plugins.loaded().manager.register(ColourPlugin(), name="test-api")
    clips = tmp_path / "clips"
    clips.mkdir()
    write_clip(clips / "red.mp4")
    write_clip(clips / "blue.mp4", colour=(20, 20, 220))
    (clips / "broken.mp4").write_bytes(b"not a video")
    summary = api.extract(clips, encoders="test-colour", fps=4, workers=1, workspace=tmp_path / "ws")
    assert summary.clips == 3 and len(summary.failed) == 1 and summary.failed[0]["clip"] == "broken"
    assert [s["name"] for s in summary.feature_sets] == [s["name"] for s in summary.to_json()["feature_sets"]]
    (made,) = summary.feature_sets
    assert json.loads((Path(made["path"]) / "manifest.json").read_text())["settings"]["fps"] == 4.0
    printed = capfd.readouterr()
    assert printed.out == "" and printed.err == ""
    again = api.extract(clips, encoders=["test-colour"], fps=4, workers=1, workspace=tmp_path / "ws",
                        progress=True)
    assert again.skipped == 2  # the same settings: the same set, resumed
    printed = capfd.readouterr()
    assert printed.out == "" and "extract" in printed.err  # the command's progress bar, on stderr


# --- the README's example, on real clips ---------------------------------------------------------

CREMA_CLASSES = ["neutral", "angry", "happy", "sad", "fear", "disgust"]


def readme_example() -> str:
    """The Python block that follows the README's note that this file runs it."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    after = text.split("<!-- tests/test_api.py runs this example -->", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_the_readme_example_runs_the_stages_from_extract_to_predict(shared_data, tmp_path, monkeypatch, capfd):
    shutil.copytree(shared_data / "crema-d", tmp_path / "clips")
    (tmp_path / "workspace").mkdir()
    (tmp_path / "workspace" / "mer.toml").write_text(f"[data]\nclasses = {json.dumps(CREMA_CLASSES)}\n")
    write_clip(tmp_path / "new-clip.mp4", seconds=2.0)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MER_EXTRACT_ENCODERS", '["egemaps"]')  # one fast encoder: the chain is what is tested
    exec(compile(readme_example(), "README.md", "exec"), {})
    printed = capfd.readouterr()
    assert printed.err == ""  # no progress unless asked
    figures, prediction = printed.out.splitlines()
    waf, out = figures.split(" ", 1)
    assert 0.0 <= float(waf) <= 1.0 and Path(out) == (tmp_path / "workspace" / "runs" / "first" / "eval").resolve()
    clip, label = prediction.split(" ")[:2]
    assert clip == "new-clip.mp4" and label in CREMA_CLASSES
    assert any((tmp_path / "workspace" / "features").glob("prior-*"))  # reason made its priors


def test_reason_asks_the_local_reasoner_then_keeps_its_traces(tmp_path, capfd):
    clips = tmp_path / "clips"
    clips.mkdir()
    write_clip(clips / "tone.mp4")
    write_clip(clips / "voice.wav", video=False)
    api.extract(clips, encoders="egemaps", workers=1, workspace=tmp_path)
    first = api.reason(clips, no_embed=True, concurrency=1, workspace=tmp_path)
    assert (first.clips, sorted(first.done), first.failed, first.priors) == (2, ["tone", "voice"], [], [])
    assert first.to_json()["source"]["reasoner"] == "local"
    plan = api.reason(clips, model="local", dry_run=True, workspace=tmp_path)
    assert plan.dry_run and sorted(plan.cached) == ["tone", "voice"] and plan.calls == 0
    printed = capfd.readouterr()
    assert printed.out == "" and printed.err == ""

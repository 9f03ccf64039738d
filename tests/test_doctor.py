"""`mer doctor`: one line per check, exit 1 when a required piece is missing, API keys reported by
presence only. ffmpeg is found through PATH, so the tests point PATH at folders with and without
an ``ffmpeg`` (a small script standing in for it) and run mer through this interpreter's path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mercli import config, doctor, plugins
from mercli.contracts import Check, Encoder
from mercli.hookspecs import hookimpl
from support.mer_process import mer_environment, run_mer

SECRET = "secret-value"


def fake_ffmpeg(folder: Path, exit_status: int = 0) -> Path:
    """A folder holding an executable ``ffmpeg`` that answers ``-version`` like the real one."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "ffmpeg"
    script.write_text(f"#!/bin/sh\necho 'ffmpeg version 9.9-test Copyright (c) the FFmpeg developers'\nexit {exit_status}\n")
    script.chmod(0o755)
    return folder


@pytest.fixture
def no_ffmpeg(tmp_path) -> Path:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    return empty


# --- single checks, in process -------------------------------------------------------------------


def test_ffmpeg_found_on_path_reports_where_and_which_version(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(fake_ffmpeg(tmp_path / "bin")))
    check = doctor.check_ffmpeg()
    assert check.ok and check.required
    assert check.detail == f"{tmp_path / 'bin' / 'ffmpeg'} (ffmpeg version 9.9-test)"


def test_ffmpeg_missing_from_path(no_ffmpeg, monkeypatch):
    monkeypatch.setenv("PATH", str(no_ffmpeg))
    check = doctor.check_ffmpeg()
    assert not check.ok and check.required
    assert check.detail.startswith("missing: not found on PATH")


def test_ffmpeg_that_does_not_run_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(fake_ffmpeg(tmp_path / "bin", exit_status=3)))
    check = doctor.check_ffmpeg()
    assert not check.ok and "exited with status 3" in check.detail


def test_api_keys_are_reported_by_name_never_by_value(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    checks = {c.name: c for c in doctor.component_checks(config.load(None, environ={}))}
    gemini, openai = checks["reasoner gemini: API key"], checks["reasoner openai: API key"]
    assert (gemini.ok, gemini.required) == (True, False) and "GEMINI_API_KEY is set" in gemini.detail
    assert (openai.ok, openai.required) == (False, False)
    assert SECRET not in repr(list(checks.values()))


class ModelNeeded(Encoder):
    name = "needs-model"
    modality = "visual"
    level = "utterance"
    dim = 4

    def checks(self):
        return [Check("model file", False, "/nowhere/model.onnx is missing")]


class CannotStart(Encoder):
    name = "cannot-start"
    modality = "text"
    level = "utterance"
    dim = 4

    def __init__(self, **settings):
        raise RuntimeError("no tokenizer")


class CheckedPlugin:
    @hookimpl
    def register_encoders(self, register):
        register(ModelNeeded)
        register(CannotStart)


def test_component_checks_are_named_after_the_component(fresh_plugins):
    plugins.loaded().manager.register(CheckedPlugin(), name="test-checked")
    checks = {c.name: c for c in doctor.component_checks(config.load(None, environ={}))}
    assert checks["encoder needs-model: model file"] == Check(
        "encoder needs-model: model file", False, "/nowhere/model.onnx is missing", True)
    broken = checks["encoder cannot-start: setup"]
    assert not broken.ok and broken.detail == "cannot be set up: RuntimeError: no tokenizer"


# --- the command ------------------------------------------------------------------------------


@pytest.mark.slow
def test_doctor_json_without_ffmpeg_exits_1_and_never_prints_keys(tmp_path, no_ffmpeg):
    result = run_mer("doctor", "--json", cwd=tmp_path,
                     env=mer_environment(PATH=str(no_ffmpeg), GEMINI_API_KEY=SECRET, GOOGLE_API_KEY=None))
    assert result.returncode == 1, result.stderr
    assert SECRET not in result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"ok", "checks"} and report["ok"] is False
    for check in report["checks"]:
        assert set(check) == {"name", "ok", "detail", "required"}
        assert isinstance(check["ok"], bool) and isinstance(check["required"], bool)
    by_name = {check["name"]: check for check in report["checks"]}
    assert by_name["ffmpeg"]["ok"] is False and by_name["ffmpeg"]["detail"].startswith("missing")
    gemini = by_name["reasoner gemini: API key"]
    assert gemini["ok"] is True and gemini["required"] is False and "GEMINI_API_KEY is set" in gemini["detail"]
    assert by_name["torch"]["ok"] is True


@pytest.mark.slow
def test_doctor_table_without_ffmpeg_says_missing(tmp_path, no_ffmpeg):
    result = run_mer("doctor", cwd=tmp_path, env=mer_environment(PATH=str(no_ffmpeg), GOOGLE_API_KEY=SECRET))
    assert result.returncode == 1
    assert result.stdout == ""
    assert SECRET not in result.stderr
    ffmpeg_line = next(line for line in result.stderr.splitlines() if " ffmpeg " in line)
    assert "FAIL" in ffmpeg_line and "missing" in ffmpeg_line


@pytest.mark.slow
def test_doctor_with_ffmpeg_exit_status_follows_the_required_checks(tmp_path):
    path = fake_ffmpeg(tmp_path / "bin")
    result = run_mer("doctor", "--json", cwd=tmp_path, env=mer_environment(PATH=str(path)))
    report = json.loads(result.stdout)
    by_name = {check["name"]: check for check in report["checks"]}
    assert by_name["ffmpeg"]["ok"] is True
    failed = [c["name"] for c in report["checks"] if c["required"] and not c["ok"]]
    assert report["ok"] is (not failed)
    assert result.returncode == (1 if failed else 0), failed

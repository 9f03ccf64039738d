"""The meta commands as a user's shell sees them: one JSON document on stdout with --json, human
output on stderr, exit statuses, the workspace (-w, and mer.toml found upwards from the current
folder), and a start-up that imports nothing heavy."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from mercli import __version__, config
from support.mer_process import error_document, mer_environment, one_error_line, run_mer

#: Packages that only the stages needing them may import: never `mer --help` or `mer plugins`.
HEAVY = ("torch", "transformers", "mediapipe", "cv2", "av", "whisper", "faster_whisper", "ctranslate2",
         "opensmile", "sklearn", "h5py", "scipy", "google.genai", "openai")


def only_json_document(stdout: str):
    """The single JSON document on stdout (one line), failing if there is anything else."""
    assert stdout.endswith("\n") and stdout.count("\n") == 1, stdout
    return json.loads(stdout)


@pytest.mark.parametrize(
    ("args", "keys"),
    [
        (["plugins", "--json"], {"encoders", "transcribers", "reasoners", "losses", "datasets"}),
        (["config", "show", "--json"], {"workspace", "file", "settings"}),
        (["init", "--json"], {"config"}),
        pytest.param(["doctor", "--json"], {"ok", "checks"}, marks=pytest.mark.slow),
    ],
    ids=["plugins", "config-show", "init", "doctor"],
)
def test_json_puts_exactly_one_document_on_stdout(tmp_path, args, keys):
    result = run_mer(*args, cwd=tmp_path)
    assert result.returncode in (0, 1), result.stderr  # doctor: 1 where this machine lacks something
    assert set(only_json_document(result.stdout)) == keys
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "title"),
    [(["plugins"], "Installed plug-ins"), (["config", "show"], "Configuration"), (["init"], "wrote ")],
)
def test_human_output_goes_to_stderr(tmp_path, args, title):
    result = run_mer(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert title in result.stderr


def test_tables_show_values_as_they_are_not_as_markup(tmp_path):
    result = run_mer("-s", "data.dataset=[bold]odd", "config", "show", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "'[bold]odd'" in result.stderr


@pytest.mark.slow
def test_mer_skips_the_interpreters_last_garbage_collection(tmp_path):
    """Objects are frozen once the command is over (an exit hook registered before mer's runs after
    it), so the interpreter's final collection does not walk everything torch made."""
    probe = ("import atexit, gc, sys; from mercli.cli import main; "
             "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0)); sys.argv = ['mer', '--version']; main()")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=mer_environment(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "frozen True", result


def test_init_writes_a_template_and_refuses_to_overwrite(tmp_path):
    workspace = tmp_path / "new-workspace"
    first = run_mer("-w", str(workspace), "init", "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    written = workspace / "mer.toml"
    assert only_json_document(first.stdout) == {"config": str(written)}
    assert written.read_text(encoding="utf-8") == config.template()

    written.write_text("[extract]\nfps = 9.0\n", encoding="utf-8")
    again = run_mer("-w", str(workspace), "init", cwd=tmp_path)
    assert again.returncode == 2
    assert "already exists (use --force to overwrite it)" in one_error_line(again)
    assert written.read_text(encoding="utf-8") == "[extract]\nfps = 9.0\n"

    forced = run_mer("-w", str(workspace), "init", "--force", cwd=tmp_path)
    assert forced.returncode == 0 and written.read_text(encoding="utf-8") == config.template()


def test_config_show_reports_values_and_sources(tmp_path):
    (tmp_path / "mer.toml").write_text("[extract]\nfps = 3.0\n", encoding="utf-8")
    result = run_mer("-s", "extract.workers=4", "config", "show", "--json", cwd=tmp_path,
                     env=mer_environment(MER_DATA_DATASET="emodb"))
    assert result.returncode == 0, result.stderr
    settings = only_json_document(result.stdout)["settings"]
    assert settings["extract"]["fps"] == {"value": 3.0, "source": f"{tmp_path / 'mer.toml'}:2"}
    assert settings["extract"]["workers"] == {"value": 4, "source": "command line"}
    assert settings["data"]["dataset"] == {"value": "emodb", "source": "environment MER_DATA_DATASET"}
    assert settings["data"]["classes"]["source"] == "default"


def test_mer_toml_is_found_upwards_from_the_current_folder(tmp_path):
    project = tmp_path / "project"
    deep = project / "clips" / "batch-1"
    deep.mkdir(parents=True)
    (project / "mer.toml").write_text("[extract]\nworkers = 7\n", encoding="utf-8")
    shown = only_json_document(run_mer("config", "show", "--json", cwd=deep).stdout)
    assert shown["workspace"] == str(project)
    assert shown["file"] == str(project / "mer.toml")
    assert shown["settings"]["extract"]["workers"]["value"] == 7


def test_workspace_option_wins_over_discovery(tmp_path):
    (tmp_path / "mer.toml").write_text("[extract]\nworkers = 7\n", encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    for args, env in ((["-w", str(elsewhere)], {}), ([], {"MER_WORKSPACE": str(elsewhere)})):
        shown = only_json_document(run_mer(*args, "config", "show", "--json", cwd=tmp_path,
                                           env=mer_environment(**env)).stdout)
        assert shown["workspace"] == str(elsewhere)
        assert shown["file"] == ""
        assert shown["settings"]["extract"]["workers"] == {"value": 0, "source": "default"}


def test_without_mer_toml_the_current_folder_is_the_workspace(tmp_path):
    shown = only_json_document(run_mer("config", "show", "--json", cwd=tmp_path).stdout)
    assert (shown["workspace"], shown["file"]) == (str(tmp_path), "")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["-s", "extract.fsp=3", "config", "show"], "unknown key 'fsp' in [extract]"),
        (["-s", "extract.fps=fast", "config", "show", "--json"], "'fps' must be a number"),
    ],
)
def test_configuration_errors_exit_2_with_one_line(tmp_path, args, fragment):
    result = run_mer(*args, cwd=tmp_path)
    assert result.returncode == 2
    line = one_error_line(result)
    assert fragment in line
    if "--json" in args:
        error_document(result.stdout, line, 2)
    else:
        assert result.stdout == ""


def test_a_broken_mer_toml_is_named_with_its_line(tmp_path):
    (tmp_path / "mer.toml").write_text("[extract]\n\nworkers = 'many'\n", encoding="utf-8")
    result = run_mer("config", "show", cwd=tmp_path)
    assert result.returncode == 2
    assert f"{tmp_path / 'mer.toml'}:3: 'workers' must be an integer" in one_error_line(result)


@pytest.mark.parametrize("args", [["--no-such-option"], ["no-such-command"], ["-s", "nokey", "plugins"]])
def test_usage_errors_exit_2(tmp_path, args):
    result = run_mer(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


def test_help_and_version(tmp_path):
    result = run_mer("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("extract", "report", "doctor", "plugins", "init", "config"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.MULTILINE), command
    assert run_mer("--version", cwd=tmp_path).stdout == f"mer, version {__version__}\n"


@pytest.mark.parametrize("args", [["--help"], ["plugins"], ["plugins", "--json"], ["config", "show", "--json"]])
def test_startup_imports_nothing_heavy(tmp_path, args):
    result = run_mer(*args, cwd=tmp_path, python_options=("-X", "importtime"))
    assert result.returncode == 0, result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    heavy = sorted(module for module in imported if module.startswith(tuple(f"{h}." for h in HEAVY)) or module in HEAVY)
    assert not heavy, f"`mer {' '.join(args)}` imports {', '.join(heavy)}"


@pytest.mark.slow
def test_config_option_names_a_file_that_must_exist_and_that_init_writes(tmp_path):
    missing = run_mer("-w", str(tmp_path), "-c", str(tmp_path / "other.toml"), "config", "show", cwd=tmp_path)
    assert missing.returncode == 2 and "other.toml: no such configuration file" in missing.stderr
    written = run_mer("-w", str(tmp_path), "-c", str(tmp_path / "other.toml"), "init", cwd=tmp_path)
    assert written.returncode == 0 and (tmp_path / "other.toml").is_file()
    assert not (tmp_path / "mer.toml").exists()
    shown = run_mer("-c", str(tmp_path / "other.toml"), "-s", "data.dataset=2024", "config", "show", "--json",
                    cwd=tmp_path)
    assert json.loads(shown.stdout)["settings"]["data"]["dataset"]["value"] == "2024"


def test_stage_options_take_their_type_help_and_range_from_the_settings_declarations():
    """A setting's command-line option is generated from its declaration: changing the help or
    the range in config.CORE_SECTIONS changes --help, and a value out of range is refused there."""
    from click.testing import CliRunner

    from mercli.cli import cli
    from mercli.config import CORE_SECTIONS

    fps = next(o for o in CORE_SECTIONS["extract"] if o.name == "fps")
    shown = " ".join(CliRunner(env={"COLUMNS": "400"}).invoke(cli, ["extract", "--help"]).output.split())
    assert f"--fps FLOAT {fps.help.rstrip('.')}; {fps.allowed()} [default: extract.fps]." in shown
    outcome = CliRunner().invoke(cli, ["train", "--labels", "x.csv", "--epochs", "0"])
    assert outcome.exit_code == 2 and "'epochs' must be an integer >= 1, got 0" in outcome.output

"""The project's hostile-input suite: what a hostile world does to real ``mer`` processes, stage by
stage, and what the user must see — one ``error: <path or key>: <problem>`` line, never a
traceback, the exit status of the contract, and nothing already finished lost.

Exit statuses of a workspace that cannot be written (read-only, full, under a regular file): 2 when
the command stopped before processing any clip (it could not even set up), 1 when it stopped in the
middle (the clips finished before are kept, and the same command run again resumes).

Real clips come from ../shared/data; the eGeMAPS encoder and the local reasoner keep each run to
seconds, offline. Mounts (a full or read-only filesystem) need root; where a mount cannot be made
the test is skipped with the reason.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from support.fake_gemini import FakeGemini, stalled
from support.mer_process import error_document, mer_environment, run_mer, with_site
from support.plugins import fake_distribution

pytestmark = pytest.mark.slow  # real mer processes: run by the full suite, not the quick loop

WORKERS = {"one worker": ("--workers", "1"), "two workers": ("--workers", "2"), "default workers": ()}


# --- helpers ----------------------------------------------------------------------------------


def the_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one ``error:`` line of a failed command (a progress bar may precede it on stderr)."""
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def summary(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.stdout.count("\n") == 1, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def crema_clips(shared_data: Path, folder: Path, names: list[str]) -> Path:
    """Copy the CREMA-D clips ``names`` (videos with speech) into ``folder``."""
    folder.mkdir(exist_ok=True)
    for name in names:
        shutil.copy(shared_data / "crema-d" / name, folder / name)
    return folder


@pytest.fixture
def names(shared_data: Path) -> list[str]:
    """Three CREMA-D videos, sorted: the order in which one worker takes them."""
    return [p.name for p in sorted((shared_data / "crema-d").glob("*.flv"))[:3]]


def extract(workspace: Path, clips: Path, *options: str, env: dict[str, str] | None = None):
    return run_mer("-w", str(workspace), "extract", str(clips), "--encoders", "egemaps", "--json", *options,
                   cwd=clips.parent, env=env)


def reason(workspace: Path, clips: Path, *options: str):
    return run_mer("-w", str(workspace), "reason", str(clips), "--model", "local", "--no-embed", "--json", *options,
                   cwd=clips.parent)


def stored(workspace: Path) -> set[str]:
    """The clips whose eGeMAPS features are stored (the values file is what makes a clip done)."""
    return {p.stem for p in (workspace / "features").glob("egemaps-*/*.npy")}


def traced(workspace: Path) -> set[str]:
    return {p.name.removesuffix(".trace.json") for p in (workspace / "reasoning").rglob("*.trace.json")}


@contextmanager
def mounted(target: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted on ``target`` with ``options``; the test is skipped where it cannot be."""
    target.mkdir(parents=True, exist_ok=True)
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}) here: {made.stderr.strip() or 'mount failed'} (needs root)")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)


@contextmanager
def read_only_view(folder: Path, target: Path) -> Iterator[Path]:
    """``folder`` seen read-only at ``target`` (a read-only bind mount)."""
    target.mkdir()
    made = subprocess.run(["mount", "--bind", str(folder), str(target)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {made.stderr.strip() or 'mount failed'} (needs root)")
    try:
        remounted = subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], capture_output=True, text=True)
        if remounted.returncode != 0:
            pytest.skip(f"cannot make a bind mount read-only here: {remounted.stderr.strip()}")
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)


def fill(folder: Path) -> list[Path]:
    """Fill the filesystem holding ``folder`` with 4 KiB files until nothing more fits."""
    fillers = []
    while True:
        path = folder / f".filler-{len(fillers)}"
        try:
            with open(path, "wb") as handle:
                handle.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
            path.unlink(missing_ok=True)
            return fillers
        fillers.append(path)


def free(fillers: list[Path]) -> None:
    for path in fillers:
        path.unlink()


# --- the workspace, whatever the stage ----------------------------------------------------------


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
@pytest.mark.parametrize("stage", ["extract", "reason", "init"])
def test_a_workspace_under_a_regular_file_is_one_line_and_exit_2(tmp_path, shared_data, names, stage, as_json):
    clips = crema_clips(shared_data, tmp_path / "clips", names[:1])
    (tmp_path / "file").write_text("a file, not a folder\n")
    workspace = tmp_path / "file" / "ws"
    arguments = {"extract": ["extract", str(clips), "--encoders", "egemaps"],
                 "reason": ["reason", str(clips), "--model", "local"], "init": ["init"]}[stage]
    result = run_mer("-w", str(workspace), *arguments, *(["--json"] if as_json else []), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = the_error(result)
    assert line.startswith(f"error: {workspace}/") and line.endswith(": Not a directory"), line
    if as_json:
        error_document(result.stdout, line, 2)
    else:
        assert result.stdout == ""


def test_init_into_a_read_only_filesystem_is_one_line_and_exit_2(tmp_path):
    with mounted(tmp_path / "ro", "ro,size=64k") as workspace:
        result = run_mer("-w", str(workspace), "init", cwd=tmp_path)
    assert result.returncode == 2
    assert the_error(result) == f"error: {workspace / 'mer.toml'}: Read-only file system"


# --- extract ------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", WORKERS.values(), ids=list(WORKERS))
def test_extract_into_a_read_only_workspace_stops_with_one_line_and_keeps_what_was_done(
        tmp_path, shared_data, names, workers):
    clips = crema_clips(shared_data, tmp_path / "clips", names[:1])
    workspace = tmp_path / "ws"
    assert extract(workspace, clips, *workers).returncode == 0
    with read_only_view(workspace, tmp_path / "ro") as view:
        everything_done = extract(view, clips, *workers)
        assert everything_done.returncode == 0, everything_done.stderr  # reading a read-only workspace is fine
        crema_clips(shared_data, clips, names[1:])
        result = extract(view, clips, *workers)
    assert result.returncode == 1, result.stderr
    line = the_error(result)
    assert line.startswith(f"error: {view}/features/egemaps-") and line.endswith(": Read-only file system"), line
    error_document(result.stdout, line, 1)
    assert stored(workspace) == {Path(names[0]).stem}


@pytest.mark.parametrize("new_clip", ["good", "broken"])
@pytest.mark.parametrize("workers", WORKERS.values(), ids=list(WORKERS))
def test_extract_onto_a_full_disk_stops_with_one_line_keeps_what_was_done_and_resumes(
        tmp_path, shared_data, names, workers, new_clip):
    clips = crema_clips(shared_data, tmp_path / "clips", names[:1])
    with mounted(tmp_path / "disk", "size=1m") as disk:
        workspace = disk / "ws"
        assert extract(workspace, clips, *workers).returncode == 0
        if new_clip == "good":
            crema_clips(shared_data, clips, names[1:])
            expected = "/features/egemaps-"
        else:  # a clip that fails while the disk is full: its failure cannot be recorded either
            (clips / "0_broken.flv").write_text("not a video\n")
            expected = "/features/_failures"
        fillers = fill(disk)
        result = extract(workspace, clips, *workers)
        assert result.returncode == 1, result.stderr
        line = the_error(result)
        assert line.startswith(f"error: {workspace}{expected}"), line
        assert line.endswith(": No space left on device"), line
        assert stored(workspace) == {Path(names[0]).stem}

        free(fillers)
        resumed = extract(workspace, clips, *workers)
    assert summary(resumed)["skipped"] == 1
    assert resumed.returncode == (0 if new_clip == "good" else 1), resumed.stderr


BAD_MODEL_FILES = {
    "missing": lambda folder: folder / "nowhere" / "model.pt",
    "not a checkpoint": lambda folder: write(folder / "notes.pt", "not a checkpoint\n"),
}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("bad", BAD_MODEL_FILES, ids=list(BAD_MODEL_FILES))
def test_a_bad_transcriber_model_path_is_one_configuration_error_before_any_clip(tmp_path, shared_data, names, bad):
    clips = crema_clips(shared_data, tmp_path / "clips", names[:2])
    model = BAD_MODEL_FILES[bad](tmp_path)
    workspace = tmp_path / "ws"
    result = run_mer("-w", str(workspace), "-s", f"transcriber.whisper.model_path={model}", "extract", str(clips),
                     "--encoders", "egemaps,text-embedding", "--workers", "1", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert the_error(result).startswith(f"error: transcriber.whisper.model_path: {model}: ")
    assert not (workspace / "features" / "_failures").exists() and stored(workspace) == set()

    doctor = run_mer("-s", f"transcriber.whisper.model_path={model}", "doctor", "--json", cwd=tmp_path)
    (check,) = [c for c in summary(doctor)["checks"] if c["name"] == "transcriber whisper: model"]
    assert not check["ok"] and check["detail"].startswith(f"transcriber.whisper.model_path: {model}: ")


NAN_ENCODER = """
import numpy as np
from mercli.contracts import Encoder, Features
from mercli.hookspecs import hookimpl

class NotANumber(Encoder):
    name = "test-nan"
    modality = "audio"
    level = "utterance"
    dim = 1

    def encode(self, clip):
        return Features(np.array([np.nan], dtype=np.float32))

@hookimpl
def register_encoders(register):
    register(NotANumber)
"""


@pytest.mark.parametrize("workers", WORKERS.values(), ids=list(WORKERS))
def test_an_encoder_returning_nan_fails_alone(tmp_path, shared_data, names, workers):
    site = tmp_path / "site"
    site.mkdir()
    fake_distribution(site, "nan-pkg", "nan", NAN_ENCODER)
    clips = crema_clips(shared_data, tmp_path / "clips", names[:2])
    workspace = tmp_path / "ws"
    result = run_mer("-w", str(workspace), "extract", str(clips), "--encoders", "test-nan,egemaps", "--json",
                     *workers, cwd=tmp_path, env=with_site(site))
    assert result.returncode == 1, result.stderr
    failed = summary(result)["failed"]
    assert sorted(f["clip"] for f in failed) == sorted(Path(n).stem for n in names[:2])
    assert all(f["reason"].startswith("encoder test-nan: ") and "NaN" in f["reason"] for f in failed)
    assert stored(workspace) == {Path(n).stem for n in names[:2]}


# --- reason -------------------------------------------------------------------------------------


def test_reason_onto_a_full_disk_stops_with_one_line_keeps_its_traces_and_resumes(tmp_path, shared_data, names):
    first = crema_clips(shared_data, tmp_path / "first", names[:1])
    clips = crema_clips(shared_data, tmp_path / "clips", names)
    with mounted(tmp_path / "disk", "size=1m") as disk:
        workspace = disk / "ws"
        assert extract(workspace, clips).returncode == 0
        assert reason(workspace, first).returncode == 0
        fillers = fill(disk)
        result = reason(workspace, clips)
        assert result.returncode == 1, result.stderr
        line = the_error(result)
        assert line.startswith(f"error: {workspace}/reasoning/local/") and line.endswith(": No space left on device")
        error_document(result.stdout, line, 1)
        assert traced(workspace) == {Path(names[0]).stem}

        free(fillers)
        resumed = reason(workspace, clips)
    assert resumed.returncode == 0, resumed.stderr
    assert summary(resumed)["cached"] == 1 and summary(resumed)["done"] == 2


def test_reason_into_a_read_only_workspace_is_one_line_and_exit_2(tmp_path, shared_data, names):
    clips = crema_clips(shared_data, tmp_path / "clips", names[:1])
    workspace = tmp_path / "ws"
    assert extract(workspace, clips).returncode == 0
    with read_only_view(workspace, tmp_path / "ro") as view:
        result = reason(view, clips)
    assert result.returncode == 2, result.stderr
    line = the_error(result)
    assert line == f"error: {view}/reasoning: Read-only file system", line
    error_document(result.stdout, line, 2)


# --- --json: exactly one JSON document on stdout, whatever the outcome ---------------------------


JSON_ERRORS = {
    "extract: no such folder": (["extract", "{tmp}/nowhere", "--encoders", "egemaps"], "nowhere"),
    "train: no such labels file": (["train", "--labels", "{tmp}/nowhere.csv"], "nowhere.csv"),
    "eval: no run": (["eval"], "runs"),
    "predict: no run": (["predict", "{tmp}/clip.mp4"], "runs"),
    "report: not a run": (["report", "{tmp}"], "not a run folder"),
    "reason: no such reasoner": (["reason", "{tmp}", "--model", "nosuch"], "nosuch"),
    "a usage error": (["extract", "{tmp}", "--workers", "many"], "'many' is not a valid integer"),
}


@pytest.mark.parametrize("case", JSON_ERRORS, ids=list(JSON_ERRORS))
def test_every_error_with_json_prints_one_json_document(tmp_path, case):
    arguments, fragment = JSON_ERRORS[case]
    result = run_mer("-w", str(tmp_path / "ws"), *(a.format(tmp=tmp_path) for a in arguments), "--json", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.count("\n") == 1, result.stdout
    document = json.loads(result.stdout)
    assert set(document) == {"error", "exit_code"} and document["exit_code"] == 2
    assert fragment in document["error"], document


def _as_from_a_shell() -> None:
    """In the child: Ctrl-C at its default and not blocked, as a terminal's shell starts a command
    (a child inherits both, and a command started with SIGINT ignored rightly keeps ignoring it, as
    `cmd &` does; tests/conftest.py checks that no test leaves the pytest process so)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_with_json_prints_one_json_document(tmp_path, shared_data, names):
    clips = crema_clips(shared_data, tmp_path / "clips", names[:1])
    with FakeGemini() as server:
        # Long enough that the interrupt lands while the call is in flight even when this test is slow
        # to notice the request (a loaded machine); the call in flight is then waited for.
        server.script(stalled(6))
        environment = mer_environment(GOOGLE_GEMINI_BASE_URL=server.base_url, GEMINI_API_KEY="fake-key-0123456789",
                                      GOOGLE_API_KEY=None)
        process = subprocess.Popen([sys.executable, "-m", "mercli", "-w", str(tmp_path / "ws"), "reason", str(clips),
                                    "--model", "gemini", "--json"], cwd=tmp_path, env=environment,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=_as_from_a_shell)
        deadline = time.monotonic() + 60
        while not server.generate_requests() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None and server.generate_requests(), "the run ended before it was interrupted"
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "error: interrupted" in stderr
    assert json.loads(stdout) == {"error": "interrupted", "exit_code": 130}


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.append(int(status.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc to see the worker processes")
def test_ctrl_c_while_folds_train_side_by_side_leaves_no_run_and_no_worker(tmp_path):
    from support.training import write_workspace

    labels = write_workspace(tmp_path / "ws")
    # No early stopping: these clips are separable, and a fold would stop after patience + 1 epochs,
    # a second or two, before the interrupt comes.
    process = subprocess.Popen([sys.executable, "-m", "mercli", "-w", str(tmp_path / "ws"), "-s", "train.patience=0",
                                "train", "--labels", str(labels), "--folds", "3", "--fold-workers", "2", "--epochs",
                                "100000", "--name", "cut", "--json"], cwd=tmp_path, env=mer_environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(_children(process.pid)) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = _children(process.pid)
    time.sleep(3)  # the workers are training by now
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert json.loads(stdout) == {"error": "interrupted", "exit_code": 130}
    assert not (tmp_path / "ws" / "runs" / "cut").exists()
    assert not _still_running(workers, within=10)


def _marked_processes(mark: str) -> list[int]:
    """The live processes whose environment carries ``HOSTILE_MARK=mark``: a command's workers,
    which the environment follows even once they have lost their parent."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"HOSTILE_MARK={mark}".encode() in environ.read_bytes().split(b"\0") and \
                    "zombie" not in (environ.parent / "status").read_text():
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def _gone(mark: str, within: float) -> bool:
    deadline = time.monotonic() + within
    while _marked_processes(mark):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc to find the worker processes")
def test_a_table_refused_while_fold_workers_start_stops_them(tmp_path):
    """Fold workers start while the features are read: a labels file none of whose clips has
    features ends the command with its one line, and the workers go with it."""
    from support.training import CLASSES, write_workspace

    write_workspace(tmp_path / "ws")
    strangers = tmp_path / "strangers.csv"
    strangers.write_text(f"name,discrete\nnobody1,{CLASSES[0]}\nnobody2,{CLASSES[1]}\n", encoding="utf-8")
    result = run_mer("-w", str(tmp_path / "ws"), "train", "--labels", str(strangers), "--folds", "3",
                     "--fold-workers", "2", "--name", "strangers", "--json", cwd=tmp_path,
                     env=mer_environment(HOSTILE_MARK=tmp_path.name))
    assert result.returncode == 2
    line = the_error(result)
    assert "strangers.csv" in line and "has features" in line
    error_document(result.stdout, line, 2)
    assert not (tmp_path / "ws" / "runs" / "strangers").exists()
    assert _gone(tmp_path.name, within=10)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc to find the worker processes")
def test_ctrl_c_as_fold_workers_start_leaves_no_run_and_no_worker(tmp_path):
    from support.training import write_workspace

    labels = write_workspace(tmp_path / "ws")
    process = subprocess.Popen([sys.executable, "-m", "mercli", "-w", str(tmp_path / "ws"), "train", "--labels",
                                str(labels), "--folds", "3", "--fold-workers", "2", "--epochs", "100000", "--name",
                                "cut", "--json"], cwd=tmp_path, env=mer_environment(HOSTILE_MARK=tmp_path.name),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(_children(process.pid)) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)  # the workers are still starting (importing torch)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert json.loads(stdout) == {"error": "interrupted", "exit_code": 130}
    assert not (tmp_path / "ws" / "runs" / "cut").exists()
    assert _gone(tmp_path.name, within=10)


def _still_running(pids: list[int], within: float) -> list[int]:
    """The processes of ``pids`` still alive after ``within`` seconds (multiprocessing's resource
    tracker leaves a moment after its parent; a worker left behind would keep training)."""
    deadline = time.monotonic() + within
    while True:
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()
                 and "zombie" not in Path(f"/proc/{pid}/status").read_text()]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


# --- a reader that closes the pipe early (`mer ... | head -1`) -------------------------------------


def closed_early(arguments: list[str], stream: str, cwd: Path, lines: int = 0) -> tuple[int, str]:
    """Run ``mer ARGUMENTS`` with ``stream`` (stdout or stderr) a real pipe whose reader reads
    ``lines`` lines and closes it; returns the exit status and what the other stream carried."""
    process = subprocess.Popen([sys.executable, "-m", "mercli", *arguments], cwd=cwd, env=mer_environment(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reader, other = (process.stdout, process.stderr) if stream == "stdout" else (process.stderr, process.stdout)
    for _ in range(lines):
        reader.readline()
    reader.close()
    rest = other.read()
    return process.wait(timeout=300), rest


CLOSED_EARLY = {"plugins --json, stdout": (["plugins", "--json"], "stdout"),
                "config show --json, stdout": (["config", "show", "--json"], "stdout"),
                "plugins table, stderr": (["plugins"], "stderr"),
                "config show table, stderr": (["config", "show"], "stderr")}


@pytest.mark.parametrize("case", CLOSED_EARLY, ids=list(CLOSED_EARLY))
def test_a_reader_that_closes_the_pipe_ends_the_command_quietly_with_141(tmp_path, case):
    arguments, stream = CLOSED_EARLY[case]
    status, other = closed_early(["-w", str(tmp_path), *arguments], stream, cwd=tmp_path)
    assert status == 141, other
    assert other == "", other  # no error message, no traceback, nothing else either


def test_train_whose_summary_meets_a_closed_pipe_keeps_its_complete_run(tmp_path):
    from support.training import CLASSES, FAST, write_workspace

    labels = write_workspace(tmp_path / "ws")
    settings = [a for k, v in {**FAST, "data.classes": CLASSES}.items() for a in ("-s", f"{k}={json.dumps(v)}")]
    status, stderr = closed_early(["-w", str(tmp_path / "ws"), *settings, "train", "--labels", str(labels),
                                   "--name", "piped", "--json"], "stdout", cwd=tmp_path)
    assert status == 141, stderr
    assert "error" not in stderr and "Traceback" not in stderr, stderr
    evaluated = run_mer("-w", str(tmp_path / "ws"), *settings, "eval", "--checkpoint", "piped", "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr  # the run folder is complete
    assert "waf" in json.dumps(summary(evaluated)).lower()


# --- a current folder that was removed ------------------------------------------------------------


def test_a_removed_current_folder_is_one_line_and_exit_2(tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    process = subprocess.run([sys.executable, "-c", "import os, sys; os.chdir(sys.argv[1]); os.rmdir(sys.argv[1]); "
                              "from mercli.cli import main; sys.argv = ['mer', 'plugins', '--json']; main()", str(gone)],
                             capture_output=True, text=True, timeout=120, env=mer_environment())
    line = "error: the current folder no longer exists (removed while the shell was in it); cd to one that does"
    assert process.returncode == 2 and process.stderr == line + "\n", process.stderr
    error_document(process.stdout, line, 2)


# --- a file name that is not UTF-8 --------------------------------------------------------------


@pytest.mark.skipif(sys.platform != "linux", reason="Linux file names are bytes; macOS and Windows names are text")
def test_a_clip_whose_name_is_not_utf8_is_refused_alone_and_the_summary_stays_json(shared_data, names, tmp_path):
    clips = crema_clips(shared_data, tmp_path / "clips", names[:1])
    shutil.copy(shared_data / "crema-d" / names[1], os.fsencode(clips) + b"/b\xe4d.flv")  # a Latin-1 name
    result = extract(tmp_path / "ws", clips)
    assert result.returncode == 1, result.stderr
    document = summary(result)
    assert document["done"] == 1 and len(document["failed"]) == 1, document
    assert os.fsencode(document["failed"][0]["clip"]).endswith(b"/b\xe4d.flv")  # the name, byte for byte
    assert "is not UTF-8" in document["failed"][0]["reason"]
    assert "Traceback" not in result.stderr, result.stderr


# --- standard streams closed (`>&-`, `2>&-`) or on a full disk (`> /dev/full`) -----------------------


def with_streams(arguments: list[str], cwd: Path, stdout: str = "pipe", stderr: str = "pipe",
                 closed: tuple[int, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``mer ARGUMENTS`` with its stdout and stderr each closed (``"closed"``), opened on a path or
    a pipe, and the file descriptors ``closed`` closed too."""
    def replace_streams() -> None:
        for number, target in ((1, stdout), (2, stderr)):
            if target == "closed":
                os.close(number)
            elif target != "pipe":
                os.dup2(os.open(target, os.O_WRONLY), number)
        for number in closed:
            os.close(number)

    return subprocess.run([sys.executable, "-m", "mercli", *arguments], cwd=cwd, env=mer_environment(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300,
                          preexec_fn=replace_streams)


STDOUTS = {"closed": ("closed", "standard output is closed: the JSON document cannot be written"),
           "full disk": ("/dev/full", "standard output cannot be written: No space left on device")}
UNWRITTEN = {"plugins --json": ["plugins", "--json"], "config show --json": ["config", "show", "--json"]}


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
@pytest.mark.parametrize("stdout", STDOUTS)
@pytest.mark.parametrize("command", UNWRITTEN)
def test_json_on_a_stdout_that_cannot_be_written_is_one_line_and_exit_2(tmp_path, stdout, command):
    target, line = STDOUTS[stdout]
    result = with_streams(["-w", str(tmp_path), *UNWRITTEN[command]], tmp_path, stdout=target)
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"error: {line}\n"  # no traceback, and nothing at exit either


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_help_on_a_full_disk_is_one_line_and_exit_2(tmp_path):
    result = with_streams(["--help"], tmp_path, stdout="/dev/full")
    assert (result.returncode, result.stderr) == (2, "error: the output cannot be written: No space left on device\n")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_train_whose_summary_meets_a_full_disk_keeps_its_complete_run(tmp_path):
    from support.training import CLASSES, FAST, write_workspace

    labels = write_workspace(tmp_path / "ws")
    settings = [a for k, v in {**FAST, "data.classes": CLASSES}.items() for a in ("-s", f"{k}={json.dumps(v)}")]
    result = with_streams(["-w", str(tmp_path / "ws"), *settings, "train", "--labels", str(labels), "--name", "full",
                           "--json"], tmp_path, stdout="/dev/full")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == "error: standard output cannot be written: No space left on device"
    assert "Traceback" not in result.stderr, result.stderr
    evaluated = run_mer("-w", str(tmp_path / "ws"), *settings, "eval", "--checkpoint", "full", "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr  # the run folder is complete


def test_extract_with_stdin_and_stderr_closed_does_every_clip(shared_data, names, tmp_path):
    """MediaPipe's encoders flush ``sys.stderr`` and mute file descriptor 2 while they start; with
    the stream closed every clip failed, in the workers too (a spawned process inherits only
    inheritable descriptors)."""
    clips = crema_clips(shared_data, tmp_path / "clips", names[:2])
    result = with_streams(["-w", str(tmp_path / "ws"), "extract", str(clips), "--encoders", "face-landmarks",
                           "--workers", "2", "--json"], tmp_path, closed=(0, 2))
    assert result.returncode == 0, result.stdout
    assert summary(result)["done"] == 2


def test_extract_with_stdout_closed_ends_cleanly(shared_data, names, tmp_path):
    clips = crema_clips(shared_data, tmp_path / "clips", names[:2])
    result = with_streams(["-w", str(tmp_path / "ws"), "extract", str(clips), "--encoders", "egemaps", "--workers", "2"],
                          tmp_path, stdout="closed")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_train_and_extract_whose_stderr_is_on_a_full_disk_finish_their_work(shared_data, names, tmp_path):
    """Progress and summaries that cannot be shown are dropped; the work and its exit status stand."""
    from support.training import CLASSES, FAST, write_workspace

    labels = write_workspace(tmp_path / "ws")
    settings = [a for k, v in {**FAST, "data.classes": CLASSES}.items() for a in ("-s", f"{k}={json.dumps(v)}")]
    trained = with_streams(["-w", str(tmp_path / "ws"), *settings, "train", "--labels", str(labels), "--name", "quiet",
                            "--json"], tmp_path, stderr="/dev/full")
    assert trained.returncode == 0 and summary(trained)["run"].endswith("quiet")
    evaluated = run_mer("-w", str(tmp_path / "ws"), *settings, "eval", "--checkpoint", "quiet", "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr  # the run folder is complete
    clips = crema_clips(shared_data, tmp_path / "clips", names[:2])
    extracted = with_streams(["-w", str(tmp_path / "ws2"), "extract", str(clips), "--encoders", "egemaps", "--workers",
                              "2", "--json"], tmp_path, stderr="/dev/full")
    assert extracted.returncode == 0 and summary(extracted)["done"] == 2


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_usage_error_whose_stderr_is_on_a_full_disk_still_exits_2(tmp_path):
    assert with_streams(["plugins", "--bogus"], tmp_path, stderr="/dev/full").returncode == 2
    assert with_streams(["-w", str(tmp_path), "eval", "--checkpoint", "none"], tmp_path, stderr="/dev/full"
                        ).returncode == 2


RESERVED = """
import os, sys, multiprocessing
from mercli.console import reserve_standard_streams
def streams():
    return [os.readlink(f"/proc/self/fd/{n}") for n in range(3)], sys.stdin is None, sys.stderr is None
if __name__ == "__main__":
    reserve_standard_streams()
    with open(__file__) as opened:
        taken = opened.fileno()
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        child = pool.apply(streams)
    os.write(1, repr((taken, streams(), child)).encode())
"""


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="reads /proc/self/fd")
def test_closed_standard_descriptors_are_held_by_dev_null_here_and_in_spawned_workers(tmp_path):
    script = tmp_path / "reserved.py"
    script.write_text(RESERVED)
    printed = subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, timeout=120, check=True,
                             preexec_fn=lambda: [os.close(0), os.close(2)]).stdout
    taken, here, child = eval(printed)
    assert taken > 2  # a file opened afterwards does not take a standard stream's number
    for streams, stdin_none, stderr_none in (here, child):
        assert streams[0] == streams[2] == os.devnull and not stdin_none and not stderr_none


# --- a usage error with --json: its JSON document too ----------------------------------------------


USAGE_ERRORS = {
    "unknown option after --json": (["plugins", "--json", "--bogus"], "No such option '--bogus'"),
    "unknown option before --json": (["plugins", "--bogus", "--json"], "No such option '--bogus'"),
    "--json given to the group": (["--json", "plugins"], "No such option '--json'"),
    "missing argument": (["extract", "--json"], "Missing argument 'CLIPS_DIR'"),
    "missing required option": (["train", "--json"], "Missing option '--labels'"),
    "unknown option of a nested command": (["config", "show", "--bogus", "--json"], "No such option '--bogus'"),
    "bad group option value": (["-s", "novalue", "plugins", "--json"], "is not KEY=VALUE"),
}


@pytest.mark.parametrize("case", USAGE_ERRORS, ids=list(USAGE_ERRORS))
def test_a_usage_error_with_json_prints_one_json_document_and_the_usage(tmp_path, case):
    arguments, fragment = USAGE_ERRORS[case]
    result = run_mer("-w", str(tmp_path), *arguments, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Usage: mer" in result.stderr, result.stderr
    assert result.stdout.count("\n") == 1, result.stdout
    document = json.loads(result.stdout)
    assert set(document) == {"error", "exit_code"} and document["exit_code"] == 2, document
    assert fragment in document["error"], document


@pytest.mark.parametrize("case", [c for c in USAGE_ERRORS if c != "--json given to the group"])
def test_a_usage_error_without_json_is_clicks_usage_message_alone(tmp_path, case):
    arguments, fragment = USAGE_ERRORS[case]
    result = run_mer("-w", str(tmp_path), *(a for a in arguments if a != "--json"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("Usage: mer") and "\nError: " in result.stderr, result.stderr
    assert fragment in result.stderr, result.stderr

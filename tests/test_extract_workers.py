"""Worker processes of ``mer extract`` (by default one per CPU): how many start, that finished clips
start none, that Ctrl-C in a terminal and ``kill -INT`` each end the run with one line, no partial
file and nothing left running, and leave it to resume, and that a killed worker costs only the
clips in progress. Real ``mer extract`` processes with the built-in egemaps encoder (or a test
encoder that kills its process) on synthetic wav clips."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from mercli import resources
from mercli.clips import discover
from mercli.config import load
from mercli.extract import LOST_REASON, WORKER_DEATHS_SURVIVED, extract_clips
from mercli.workspace import Workspace
from support.mer_process import mer_environment, with_site
from support.plugins import fake_distribution

pytestmark = [
    pytest.mark.slow,  # real mer processes: run by the full suite, not the quick loop
    pytest.mark.skipif(sys.platform != "linux", reason="reads the process tree from /proc"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
CLIPS = 60


def write_tone(path: Path, seconds: float = 2.0) -> None:
    samples = (0.3 * np.sin(2 * np.pi * 220 * np.arange(int(16000 * seconds)) / 16000) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(samples.tobytes())


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> Path:
    pytest.importorskip("opensmile")
    folder = tmp_path_factory.mktemp("tones")
    for index in range(CLIPS):
        write_tone(folder / f"tone{index:02d}.wav")
    return folder


def extract_command(workspace: Path, folder: Path, workers: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "mercli", "-w", str(workspace), "extract", str(folder),
            "--encoders", "egemaps", "--workers", workers, *options, "--json"]


def start(command: list[str], **environment: str) -> subprocess.Popen[str]:
    """In a session of its own, as a shell starts a job: Ctrl-C reaches its whole process group."""
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=mer_environment(**environment), start_new_session=True)


def worker_pids(parent: int) -> set[int]:
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except OSError:
        return set()
    found = set()
    for child in children:
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(int(child))
        except OSError:  # it ended while we looked
            continue
    return found


def session_processes(session: int) -> list[int]:
    """Processes still alive (not zombies) in ``session``."""
    alive = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[3]) == session and fields[0] != "Z":
                alive.append(int(entry.name))
    return alive


def stored(workspace: Path) -> int:
    return len(list(workspace.glob("features/egemaps-*/*.npy")))


def wait_until(condition, process: subprocess.Popen[str], seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def assert_stopped_cleanly(process: subprocess.Popen[str], workspace: Path,
                           exit_statuses: tuple[int, ...] = (130,), said: str = "interrupted") -> None:
    _, stderr = process.communicate(timeout=60)
    assert process.returncode in exit_statuses, stderr
    assert said in stderr and "Traceback" not in stderr, stderr
    assert not [p for p in workspace.rglob("*") if p.name.endswith(".part")]
    assert_nothing_left_running(process)


def assert_nothing_left_running(process: subprocess.Popen[str]) -> None:
    time.sleep(0.2)
    left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in session_processes(process.pid)}
    assert not left, f"still running after the run: {left}"


def assert_resumes(workspace: Path, folder: Path, stopped_midway: bool = True) -> None:
    """The next run does exactly what the stopped one left (which, stopped midway, is some of it)."""
    finished = stored(workspace)
    if stopped_midway:
        assert 0 < finished < CLIPS
    again = subprocess.run(extract_command(workspace, folder, "0"), capture_output=True, text=True,
                           env=mer_environment(), timeout=300)
    summary = json.loads(again.stdout)
    assert again.returncode == 0, again.stderr
    assert summary["skipped"] == finished and summary["done"] == CLIPS - finished
    assert summary["workers"] == min(resources.auto_workers(CLIPS - finished), CLIPS - finished)


@pytest.mark.parametrize("workers", ["1", "0"])
def test_ctrl_c_in_a_terminal_stops_every_process_and_the_next_run_resumes(tones, tmp_path, workers):
    workspace = tmp_path / "ws"
    process = start(extract_command(workspace, tones, workers))
    seen_workers: set[int] = set()

    def first_clip_stored() -> bool:
        seen_workers.update(worker_pids(process.pid))
        return stored(workspace) > 0

    wait_until(first_clip_stored, process)
    os.killpg(process.pid, signal.SIGINT)
    assert_stopped_cleanly(process, workspace)
    expected = 0 if workers == "1" else resources.auto_workers(CLIPS)
    assert len(seen_workers) == (0 if expected == 1 else expected)
    assert_resumes(workspace, tones)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_during_batches_stops_every_process_and_thread_and_the_next_run_resumes(tones, tmp_path, workers):
    """Groups of 4 clips: in one process the next group is being decoded in a thread meanwhile."""
    workspace = tmp_path / "ws"
    process = start(extract_command(workspace, tones, workers, "--batch-size", "4"))
    wait_until(lambda: stored(workspace) > 0, process)
    os.killpg(process.pid, signal.SIGINT)
    assert_stopped_cleanly(process, workspace)
    assert_resumes(workspace, tones)


def test_kill_int_to_the_main_process_alone_stops_its_workers(tones, tmp_path):
    workspace = tmp_path / "ws"
    process = start(extract_command(workspace, tones, "2"))
    wait_until(lambda: stored(workspace) > 0, process)
    process.send_signal(signal.SIGINT)
    assert_stopped_cleanly(process, workspace)
    assert_resumes(workspace, tones)


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("to_group", [False, True], ids=["main-process", "process-group"])
def test_sigterm_stops_like_ctrl_c(tones, tmp_path, workers, to_group):
    """kill, timeout and a batch scheduler's time limit send SIGTERM, to the main process or to the
    whole job: the workers stop with it (they were left running), exit status 143, and it resumes."""
    workspace = tmp_path / "ws"
    process = start(extract_command(workspace, tones, workers))
    wait_until(lambda: stored(workspace) > 0, process)
    if to_group:
        os.killpg(process.pid, signal.SIGTERM)
    else:
        process.send_signal(signal.SIGTERM)
    assert_stopped_cleanly(process, workspace, exit_statuses=(143,), said="error: terminated")
    assert_resumes(workspace, tones)


def test_ctrl_c_pressed_twice_still_ends_with_one_line(tones, tmp_path):
    """A second press while the workers are being stopped must not cut the clean-up short."""
    workspace = tmp_path / "ws"
    process = start(extract_command(workspace, tones, "2"))
    wait_until(lambda: stored(workspace) > 0, process)
    os.killpg(process.pid, signal.SIGINT)
    time.sleep(0.005)
    os.killpg(process.pid, signal.SIGINT)
    # A press that lands after the run has stopped, while the interpreter exits, ends it by the
    # signal itself, which a shell reports as 130 all the same.
    assert_stopped_cleanly(process, workspace, exit_statuses=(130, -signal.SIGINT))
    assert_resumes(workspace, tones, stopped_midway=False)


def test_ctrl_c_while_the_workers_start_prints_no_traceback(tones, tmp_path):
    workspace = tmp_path / "ws"
    process = start(extract_command(workspace, tones, "2"))
    wait_until(lambda: len(worker_pids(process.pid)) == 2, process)
    os.killpg(process.pid, signal.SIGINT)
    assert_stopped_cleanly(process, workspace)
    assert_resumes(workspace, tones, stopped_midway=False)


def test_a_killed_worker_costs_the_clips_in_progress_not_the_run_and_they_resume(tones, tmp_path):
    workspace, temporary = tmp_path / "ws", tmp_path / "tmp"
    temporary.mkdir()
    process = start(extract_command(workspace, tones, "2"), TMPDIR=str(temporary))
    wait_until(lambda: stored(workspace) > 0, process)
    os.kill(min(worker_pids(process.pid)), signal.SIGKILL)  # as the kernel's out-of-memory killer would
    stdout, stderr = process.communicate(timeout=120)
    summary = json.loads(stdout)
    assert process.returncode == 1 and "Traceback" not in stderr, stderr
    lost = [failure["clip"] for failure in summary["failed"]]
    assert 1 <= len(lost) <= 2, summary  # the clips of both workers at most
    # A clip a worker finished but whose result the broken pool lost is done again: as skipped (all stored).
    assert summary["done"] + summary["skipped"] == CLIPS - len(lost), summary
    assert {failure["reason"] for failure in summary["failed"]} == {LOST_REASON}
    assert not list(temporary.iterdir())  # the run's notes of clips in progress are gone
    assert_nothing_left_running(process)
    assert_resumes(workspace, tones, stopped_midway=False)


# An encoder that kills its own process (as a crash in native code, or the out-of-memory killer, would) on
# the clips whose names hold any word of $MER_TEST_FATAL.
FATAL_ENCODER = """
import os, signal
import numpy as np
from mercli.plugin_api import Encoder, Features, hookimpl


class Fatal(Encoder):
    name = "test-fatal"
    modality = "audio"
    level = "utterance"
    dim = 1

    def encode(self, clip):
        if any(word in clip.clip_id for word in os.environ["MER_TEST_FATAL"].split()):
            os.kill(os.getpid(), signal.SIGKILL)
        return Features(np.ones(1, dtype=np.float32))


@hookimpl
def register_encoders(register):
    register(Fatal)
"""


def fatal_run(tones: Path, tmp_path: Path, fatal: str) -> subprocess.CompletedProcess[str]:
    site = tmp_path / "site"
    site.mkdir()
    fake_distribution(site, "fatal-pkg", "fatal", FATAL_ENCODER)
    command = [sys.executable, "-m", "mercli", "-w", str(tmp_path / "ws"), "extract", str(tones), "--encoders",
               "test-fatal", "--workers", "2", "--json"]
    (tmp_path / "tmp").mkdir()
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=with_site(site, MER_TEST_FATAL=fatal, TMPDIR=str(tmp_path / "tmp")))


def test_a_clip_that_kills_its_worker_fails_alone_or_with_the_clip_beside_it(tones, tmp_path):
    result = fatal_run(tones, tmp_path, "tone07 tone33")
    summary = json.loads(result.stdout)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lost = {failure["clip"] for failure in summary["failed"]}
    assert {"tone07", "tone33"} <= lost and len(lost) <= 4, summary  # each death: its clip and the other worker's
    assert summary["done"] + summary["skipped"] == CLIPS - len(lost), summary  # skipped: see the test above
    assert not list((tmp_path / "tmp").iterdir())


def test_workers_that_keep_dying_stop_the_run_with_one_line(tones, tmp_path):
    result = fatal_run(tones, tmp_path, "tone")  # every clip
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: a worker process ended unexpectedly")
    assert "Traceback" not in result.stderr
    assert json.loads(result.stdout)["exit_code"] == 1
    recorded = list((tmp_path / "ws" / "features" / "_failures").glob("*.json"))
    assert len(recorded) <= 2 * WORKER_DEATHS_SURVIVED  # the clips of the deaths it survived
    assert not list((tmp_path / "tmp").iterdir())


def test_workers_run_without_a_temporary_folder_for_their_notes(tones, tmp_path, monkeypatch):
    def no_temporary_folder(**_options):
        raise FileNotFoundError("no usable temporary directory found")

    monkeypatch.setattr("mercli.extract.tempfile.mkdtemp", no_temporary_folder)
    config = load(None, environ={}, overrides={"extract.encoders": ["egemaps"]})
    summary = extract_clips(discover(tones)[:4], config, Workspace(tmp_path / "ws"), {}, workers=2)
    assert summary.done == 4 and summary.workers == 2


def test_clips_already_stored_start_no_worker(tones, tmp_path, monkeypatch):
    workspace = Workspace(tmp_path / "ws")
    config = load(None, environ={}, overrides={"extract.encoders": ["egemaps"]})
    clips = discover(tones)[:4]
    first = extract_clips(clips, config, workspace, {}, workers=2)
    assert first.done == 4 and first.workers == 2

    def no_workers(*args, **kwargs):
        raise AssertionError("a worker was started for clips that are all stored")

    monkeypatch.setattr("mercli.extract.run_in_workers", no_workers)
    again = extract_clips(clips, config, workspace, {}, workers=2)
    assert again.skipped == 4 and again.done == 0 and again.workers == 0


def test_auto_workers_follow_cpus_clips_and_memory():
    gib = 2**30
    assert resources.auto_workers(100, cpus=8, memory=64 * gib) == 8
    assert resources.auto_workers(3, cpus=8, memory=64 * gib) == 3
    assert resources.auto_workers(100, cpus=8, memory=4 * gib) == 2  # 1.5 GiB each
    assert resources.auto_workers(100, cpus=8, memory=gib) == 1
    assert resources.auto_workers(0, cpus=8, memory=64 * gib) == 1
    assert resources.auto_workers(100, cpus=8, memory=None) == 8  # memory unknown: CPUs decide


def test_available_memory_reads_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2000000 kB\n")
    assert resources.available_memory(meminfo) == 2000000 * 1024
    meminfo.write_text("MemTotal: 24000000 kB\n")
    assert resources.available_memory(meminfo) is None
    assert resources.available_memory(tmp_path / "absent") is None


def test_cpus_and_threads_follow_the_allocation_not_the_machine():
    """As under SLURM or taskset: a process allowed one CPU sizes its workers by that one."""
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});"
            "from mercli import resources; print(resources.usable_cpus(), resources.threads_per_worker(1),"
            " resources.threads_per_worker(4))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["1", "1", "1"]


def square(number: int) -> int:
    return number * number


def make_squarer() -> Callable[[int], int]:
    return square


def make_nothing() -> None:
    raise RuntimeError("no model here")


def stubborn_item(kind: str) -> str:
    """One item fails at once; the other, stopped meanwhile, turns the interrupt into an ordinary
    error, as a native library may."""
    if kind == "fails":
        time.sleep(1)  # the other worker is inside its item by now
        raise ValueError("this item fails")
    try:
        time.sleep(60)
    except KeyboardInterrupt:
        raise RuntimeError("interrupted in native code") from None
    return kind


def make_stubborn() -> Callable[[str], str]:
    return stubborn_item


def test_workers_stopped_after_a_failure_end_even_when_an_item_swallows_the_stop():
    """The failing item makes the main process stop every worker. The worker between items was
    stopped while holding the queue's lock; the other one, whose item swallowed the stop, used to
    go back to that queue and wait for ever, and the run with it."""
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from test_extract_workers import make_stubborn; "
              "from mercli.workers import run_in_workers; list(run_in_workers(make_stubborn, (), ['fails', 'slow'], 2))")
    process = subprocess.Popen([sys.executable, "-c", script, str(Path(__file__).parent)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("the run did not end after a failed item: a stopped worker waits on the queue")
    assert process.returncode == 1 and "ValueError: this item fails" in stderr, stderr
    assert_nothing_left_running(process)


def test_run_in_workers_gives_every_result_once():
    from mercli.workers import run_in_workers

    assert sorted(run_in_workers(make_squarer, (), range(20), 2)) == [n * n for n in range(20)]


def test_a_worker_that_cannot_start_says_why_in_one_line(capfd):
    from mercli.workers import WorkerDied, run_in_workers

    with pytest.raises(WorkerDied, match="a worker process ended unexpectedly"):
        list(run_in_workers(make_nothing, (), range(4), 2))
    errors = capfd.readouterr().err
    assert "error: a worker process could not start: RuntimeError: no model here" in errors
    assert "Traceback" not in errors


def test_the_summary_table_says_how_many_workers_ran():
    from rich.console import Console

    from mercli.extract import ExtractSummary
    from mercli.reports import extract_table

    console = Console(width=200, record=True)
    for workers, words in ((2, "2 workers"), (1, "1 worker,"), (0, "0 workers")):
        console.print(extract_table(ExtractSummary(clips=3, workers=workers, media_seconds=6.0, wall_seconds=2.0)))
        assert f"mer extract: 3 clips, {words}" in console.export_text()

"""Run folders (mercli.runs): a retrained run is replaced whole or not at all, even when the process
is killed between two of its writes; eval and predict refuse a folder that is not a complete run;
train refuses, before training, a run folder it cannot write. Runs are trained on the synthetic
feature sets of test_train."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest
from click.testing import CliRunner

from support.mer_process import mer_environment
from mercli import runs
from mercli.cli import cli
from mercli.errors import DataError
from mercli.runs import resolve_run
from mercli.train import train
from mercli.workspace import Workspace
from support.training import CLASSES, FAST, config, write_workspace

WRITE_ORDER = ["model.safetensors", "config.json", "history.json", "metrics.json", "curves.png"]
FILES = set(WRITE_ORDER)


def settings_args(space: Workspace) -> list[str]:
    """``-w WORKSPACE -s KEY=VALUE ...``: the fast CPU settings of test_train on the command line."""
    return ["-w", str(space.root), *(a for k, v in {**FAST, "data.classes": CLASSES}.items()
                                     for a in ("-s", f"{k}={json.dumps(v)}"))]


def mer(space: Workspace, *args: str):
    return CliRunner(env={"COLUMNS": "200"}).invoke(cli, [*settings_args(space), *args])


def one_line(outcome) -> str:
    """The whole of stderr: one ``error:`` line."""
    lines = outcome.stderr.strip().splitlines()
    assert "Traceback" not in outcome.output and len(lines) == 1 and lines[0].startswith("error: "), outcome.output
    return lines[0]


def error_line(outcome) -> str:
    """The one ``error:`` line after the training progress."""
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in outcome.output and len(errors) == 1, outcome.output
    return errors[0]


def snapshot(run: Path) -> dict[str, bytes]:
    """What says which model a run folder holds: its entries, its weights and its two records."""
    kept = {p.name: p.read_bytes() for p in run.iterdir() if p.suffix == ".safetensors"
            or p.name in ("config.json", "metrics.json")}
    return {**kept, "entries": "\n".join(sorted(p.name for p in run.iterdir())).encode()}


def staging_folders(space: Workspace) -> list[str]:
    return sorted(p.name for p in space.runs.iterdir() if p.name.startswith("."))


@pytest.fixture
def workspace(tmp_path):
    labels = write_workspace(tmp_path, clips_per_class=10)
    return Workspace(tmp_path), labels


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A workspace with one complete single-fold run, "r", for tests that damage copies of it."""
    root = tmp_path_factory.mktemp("finished")
    labels = write_workspace(root, clips_per_class=10)
    train(config(**{"train.epochs": 1}), Workspace(root), labels, name="r")
    return Workspace(root), labels


# --- a run changes as one unit ----------------------------------------------------------------

# A process that imports what `mer train` imports once (torch alone takes seconds), then for each
# request read on stdin, "KILL_AT<tab>LOG", forks a child that runs `mer train ARGS` (this process's
# arguments) through the console entry point, and answers the child's exit status. The child logs
# to LOG, one flushed line each, the writes under runs/ it is about to make (Python's audit events
# come before the operation): renames (os.rename, os.replace), removals and folders made (those of
# shutil.rmtree named relative to a descriptor), and the lookup of renameat2, which _exchange calls
# at once through ctypes (ctypes raises no event for the call itself). On reaching write KILL_AT
# (1 for the first, 0 never) the child sends itself SIGKILL, so that write never happens. Its output
# goes to LOG.out.
KILLABLE_TRAINS = r"""
import os, signal, sys
import mercli.cli, mercli.train  # and what training imports on first use (one left out costs only time):
import matplotlib.figure, safetensors.torch, scipy.optimize, scipy.special, sklearn.metrics, torch._dynamo
runs = os.environ["KILL_UNDER"]

def where(path, descriptor):
    folder = os.readlink(f"/proc/self/fd/{descriptor}") if descriptor not in (None, -1) else ""
    return os.path.join(folder, os.fsdecode(path))

def write(event, args):
    if event == "os.rename":
        paths = [where(args[0], args[2]), where(args[1], args[3])]
    elif event in ("os.remove", "os.rmdir", "os.mkdir"):
        paths = [where(args[0], args[-1])]
    else:
        return "renameat2" if event == "ctypes.dlsym" and args[1] == "renameat2" else None
    return " ".join([event[3:], *paths]) if any(p.startswith(runs + os.sep) for p in paths) else None

def train(kill_at, log):
    written, log = 0, open(log, "a", buffering=1)
    def hook(event, args):
        nonlocal written
        line = write(event, args)
        if line is not None:
            written += 1
            log.write(line + "\n")
            if written == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
    output = os.open(log.name + ".out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(output, 1)
    os.dup2(output, 2)
    sys.addaudithook(hook)
    return mercli.cli.main()  # click exits with the command's status

for request in sys.stdin:
    kill_at, log = request.rstrip("\n").split("\t")
    child = os.fork()
    if child == 0:
        sys.exit(train(int(kill_at), log))  # never back to this loop
    print(os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]), flush=True)
"""


@contextlib.contextmanager
def killable_trains(space: Workspace, labels: Path) -> Iterator[Callable[..., tuple[int, str]]]:
    """A function ``(log, kill_at=0) -> (exit status, output)`` that runs ``mer train --name r``
    (one fold, the split column) in a child process of KILLABLE_TRAINS, killed before write
    ``kill_at`` under runs/, with the writes logged to ``log``."""
    command = [sys.executable, "-c", KILLABLE_TRAINS, *settings_args(space), "train", "--labels", str(labels),
               "--name", "r", "--epochs", "1"]
    server = subprocess.Popen(command, env=mer_environment(KILL_UNDER=str(space.runs)), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)

    def run(log: Path, kill_at: int = 0) -> tuple[int, str]:
        server.stdin.write(f"{kill_at}\t{log}\n")
        server.stdin.flush()
        answered, _, _ = select.select([server.stdout], [], [], 300)
        answer = server.stdout.readline() if answered else ""
        assert answer, f"no exit status from the train killed at write {kill_at} (stderr above says why)"
        return int(answer), Path(f"{log}.out").read_text()

    try:
        yield run
    finally:
        server.kill()
        server.communicate()


def writes(space: Workspace, log: Path) -> list[str]:
    """The writes a child logged, without what differs from one process to the next (random names)."""
    lines = log.read_text().splitlines()
    return [re.sub(r"[0-9a-f]{12}", "*", line.replace(str(space.runs), "runs")) for line in lines]


def kill_points(logged: list[str]) -> list[int]:
    """The write numbers (from 1) to kill at: each rename of a file into place under runs/, the
    exchange of the folders, and the first removal after the last of them (after the exchange, the
    old run still whole under a hidden name)."""
    placed = [number for number, write in enumerate(logged, 1) if write.startswith("rename ") or write == "renameat2"]
    after = enumerate(logged[placed[-1]:], placed[-1] + 1)
    return placed + [number for number, write in after if write.startswith(("remove ", "rmdir "))][:1]


def assert_eval_scores_the_recorded_model(space: Workspace, run: Path) -> None:
    """``mer eval`` re-predicts each fold's recorded validation clips with the weights beside them
    and finds the figures train recorded: the record and the weights are of the same training."""
    outcome = mer(space, "eval", "--checkpoint", "r", "--json")
    assert outcome.exit_code == 0, outcome.output
    recorded = json.loads((run / "metrics.json").read_text())["folds"]
    document = json.loads(outcome.stdout)
    assert [f["clips"] for f in document["folds"]] == [len(f["val_clips"]) for f in recorded]
    for scored, trained in zip(document["folds"], recorded):
        assert scored["waf"] == pytest.approx(trained["waf"]) and scored["accuracy"] == pytest.approx(trained["accuracy"])


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="the child names the folder of a descriptor from /proc, and "
                                                    "only Linux exchanges two folders in one call")
def test_a_train_killed_between_any_two_writes_leaves_the_old_or_the_new_run(workspace, tmp_path):
    space, labels = workspace
    run = space.runs / "r"
    with killable_trains(space, labels) as killable_train:  # it imports while the old run trains
        # the old run: another validation split (speakers held out), so its record and weights differ
        train(config(**{"train.epochs": 2}), space, labels, name="r", group_column="speaker")
        old_copy = shutil.copytree(run, tmp_path / "old")
        status, output = killable_train(tmp_path / "full.log")
        assert status == 0, output
        new = snapshot(run)
        old = snapshot(old_copy)
        assert new != old and set(new["entries"].decode().split("\n")) == FILES
        logged = writes(space, tmp_path / "full.log")
        points = kill_points(logged)
        outcomes = []
        for number in points:
            for folder in space.runs.iterdir():  # each kill starts from the same folders
                shutil.rmtree(folder)
            shutil.copytree(old_copy, run)
            log = tmp_path / f"kill{number}.log"
            status, output = killable_train(log, kill_at=number)
            assert status == -signal.SIGKILL, output
            assert writes(space, log) == logged[:number]  # killed where intended, the same writes before
            state = snapshot(run)
            assert state in (old, new), f"killed before {logged[number - 1]}: runs/r mixes two trainings"
            outcomes.append("old" if state == old else "new")
            assert_eval_scores_the_recorded_model(space, run)
    # the points were every write of the run, the exchange, and a removal of the old run after it
    placed = [f"rename runs/.r.*.part/.{name}.*.part runs/.r.*.part/{name}" for name in WRITE_ORDER]
    assert [logged[n - 1] for n in points[:-1]] == [*placed, "renameat2"], logged
    assert re.fullmatch(r"(remove|rmdir) runs/\.r\.\*\.part/.+", logged[points[-1] - 1]), logged
    assert outcomes == ["old"] * (len(points) - 1) + ["new"]
    assert staging_folders(space)  # left by the last kill (the old run, not yet removed), and not a run:
    assert resolve_run(space, None) == run
    train(config(**{"train.epochs": 1}), space, labels, name="r")
    assert staging_folders(space) == []  # the next training of the run removes them


def test_a_failed_write_leaves_the_old_run_and_no_staging_folder(workspace, monkeypatch):
    space, labels = workspace
    run = train(config(**{"train.epochs": 1}), space, labels, name="r", folds=2).run
    before = snapshot(run)
    write_json = runs.write_json

    def full_disk(path: Path, document) -> None:
        if path.name == "metrics.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        write_json(path, document)

    monkeypatch.setattr(runs, "write_json", full_disk)
    outcome = mer(space, "train", "--labels", str(labels), "--name", "r", "--epochs", "1")
    assert outcome.exit_code == 2
    line = error_line(outcome)
    assert "metrics.json: No space left on device" in line and f"{run} is left as it was" in line
    assert snapshot(run) == before and staging_folders(space) == []


def test_an_interrupted_write_leaves_the_old_run_and_no_staging_folder(workspace, monkeypatch):
    space, labels = workspace
    run = train(config(**{"train.epochs": 1}), space, labels, name="r").run
    before = snapshot(run)

    write_bytes = runs.write_bytes

    def interrupted(path: Path, data: bytes) -> None:
        if path.name == "curves.png":  # the last file of the run
            raise KeyboardInterrupt
        write_bytes(path, data)

    monkeypatch.setattr(runs, "write_bytes", interrupted)
    outcome = mer(space, "train", "--labels", str(labels), "--name", "r", "--epochs", "1", "--group-column", "speaker")
    assert outcome.exit_code == 130
    assert snapshot(run) == before and staging_folders(space) == []


def test_retraining_replaces_the_whole_folder(workspace):
    space, labels = workspace
    run = train(config(**{"train.epochs": 1}), space, labels, name="r", folds=2).run
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text("{}")
    train(config(**{"train.epochs": 1}), space, labels, name="r")
    assert {p.name for p in run.iterdir()} == FILES
    assert staging_folders(space) == []


def test_without_an_exchange_call_the_run_is_replaced_by_two_renames(workspace, monkeypatch):
    space, labels = workspace
    run = train(config(**{"train.epochs": 1}), space, labels, name="r", folds=2).run
    monkeypatch.setattr(runs, "_exchange", lambda first, second: False)  # as on macOS, or NFS
    train(config(**{"train.epochs": 1}), space, labels, name="r")
    assert {p.name for p in run.iterdir()} == FILES and staging_folders(space) == []


# --- staging folders are never runs -----------------------------------------------------------


def test_staging_folders_are_neither_listed_nor_accepted_as_runs(tmp_path):
    space = Workspace(tmp_path)
    for name, age in (("r", 10), (".r.0123456789ab.part", 0)):
        (space.runs / name).mkdir(parents=True)
        (space.runs / name / "config.json").write_text("{}")
        os.utime(space.runs / name / "config.json", (1e9 - age, 1e9 - age))
    assert resolve_run(space, None) == space.runs / "r"
    with pytest.raises(DataError, match=r"\.r\.0123456789ab\.part: the staging folder of an unfinished `mer train`"):
        resolve_run(space, ".r.0123456789ab.part")


def test_staging_folders_left_by_a_dead_process_are_removed_and_a_live_one_is_kept(workspace):
    space, labels = workspace
    train(config(**{"train.epochs": 1}), space, labels, name="r")
    dead, live, other = (space.runs / n for n in (".r.0123456789ab.part", ".r.ba9876543210.part", ".r2.0123456789ab.part"))
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half written")
    held = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a train writing it now holds it
        train(config(**{"train.epochs": 1}), space, labels, name="r")
    finally:
        os.close(held)
    assert staging_folders(space) == [live.name, other.name]


# --- eval and predict refuse what is not a complete run -----------------------------------------


def drop_first_manifest(run: Path) -> None:
    document = json.loads((run / "config.json").read_text())
    del document["manifests"][sorted(document["manifests"])[0]]
    (run / "config.json").write_text(json.dumps(document))


@pytest.mark.parametrize("command", ["eval", "predict"])
@pytest.mark.parametrize("damage, message", [
    (lambda run: (run / "config.json").unlink(), r"/config\.json: missing, so .* is not a complete training run"),
    (lambda run: (run / "metrics.json").unlink(), r"/metrics\.json: missing, so .* is not a complete training run"),
    (lambda run: (run / "model.safetensors").unlink(), r"/model\.safetensors: missing, so fold 1 of the run has no weights"),
    (drop_first_manifest, r"/config\.json: its inputs name feature set\(s\) syn-audio-\w+ that its manifests do not record"),
])
def test_eval_and_predict_refuse_an_incomplete_run_in_one_line(finished, tmp_path, command, damage, message):
    space, _labels = finished
    run = shutil.copytree(space.runs / "r", tmp_path / "run")
    damage(run)
    args = ["--checkpoint", str(run)] if command == "eval" else [str(tmp_path / "clip.mp4"), "--checkpoint", str(run)]
    outcome = mer(space, command, *args)
    assert outcome.exit_code == 2, outcome.output
    assert re.search(message, one_line(outcome)) and outcome.stdout == ""


# --- train checks its run folder before training ------------------------------------------------


def refused_before_training(space: Workspace, labels: Path, message: str) -> None:
    epochs = []
    with pytest.raises(DataError, match=message):
        train(config(), space, labels, name="r", on_epoch=lambda *record: epochs.append(record))
    assert epochs == []
    outcome = mer(space, "train", "--labels", str(labels), "--name", "r")
    assert outcome.exit_code == 2 and re.search(message, one_line(outcome))


def test_a_runs_folder_that_is_a_file_is_refused_before_training(workspace):
    space, labels = workspace
    space.runs.write_text("not a folder")
    refused_before_training(space, labels, rf"{re.escape(str(space.runs))}: not a folder, so no run can be written in it")


def test_a_read_only_runs_folder_is_refused_before_training(workspace):
    space, labels = workspace
    space.runs.mkdir()
    space.runs.chmod(0o555)
    try:
        if os.access(space.runs, os.W_OK):
            pytest.skip("running as root, who may write in a read-only folder (the case of a file is tested)")
        refused_before_training(space, labels, rf"{re.escape(str(space.runs))}: cannot write runs there \(Permission denied\)")
    finally:
        space.runs.chmod(0o755)


def test_a_folder_that_is_not_a_run_is_not_replaced(workspace):
    space, labels = workspace
    (space.runs / "r").mkdir(parents=True)
    (space.runs / "r" / "notes.txt").write_text("mine")
    refused_before_training(space, labels, r"/runs/r: holds files but no config\.json, so it is not a training run")
    assert (space.runs / "r" / "notes.txt").read_text() == "mine"


# --- train --json -------------------------------------------------------------------------------


def test_train_json_lists_the_clips_left_out(workspace):
    space, labels = workspace
    with labels.open("a", encoding="utf-8") as handle:
        handle.write("ghost1,happy,spk0,train\nghost2,angry,spk1,val\n")
    outcome = mer(space, "train", "--labels", str(labels), "--name", "r", "--epochs", "1", "--json")
    assert outcome.exit_code == 0, outcome.output
    assert json.loads(outcome.stdout)["excluded"] == ["ghost1", "ghost2"]

"""The fast training path: a table's tensors built once (TableTensors) and folds trained side by
side in worker processes give what the per-clip path and one-fold-after-another give."""

from __future__ import annotations

import json
import multiprocessing

import numpy as np
import pytest
import torch

from mercli.parallel_folds import PARALLEL_WORK, fold_training, fold_workers
from mercli.resources import threads_per_worker, usable_cpus
from mercli.splits import Split
from mercli.table_files import load_table, save_table
from mercli.train import train, training_batch
from mercli.trainset import TableTensors, build_table, collate
from mercli.workspace import Workspace
from support.folds import threads_noting_trainer
from support.training import config, write_workspace


@pytest.fixture
def table(tmp_path):
    labels = write_workspace(tmp_path, prior=True)
    built = build_table(config(), Workspace(tmp_path).features, labels)
    built.weights = np.linspace(0.5, 1.5, len(built.clip_ids), dtype=np.float32)  # as pseudo-labels make them
    return built


def test_a_batch_of_the_stacked_table_equals_the_per_clip_collation(table):
    tensors = TableTensors(table, torch.device("cpu"))
    frame_sets = [s.name for s in table.sets if s.frame_level]
    assert frame_sets and len(tensors.stacked) == len(table.sets) - len(frame_sets)
    assert any(spec.prior for spec in table.inputs)  # a prior set travels like the others
    for indices in ([0, 1, 2], [5, 0, 9, 3], list(range(len(table.clip_ids)))[::-3]):
        fast, slow = tensors.batch(indices), collate(table, indices)
        assert fast.values.keys() == slow.values.keys()
        for name in slow.values:
            assert torch.equal(fast.values[name], slow.values[name]), name
            assert torch.equal(fast.masks[name], slow.masks[name]), name
        assert torch.equal(fast.labels, slow.labels) and torch.equal(fast.weights, slow.weights)
    absent = next(name for name in slow.masks if not slow.masks[name].all())
    assert not tensors.batch([0]).masks[absent].all()  # clip000 lacks the audio set: masked, not filled


def _run(tmp_path, name, workers):
    labels = write_workspace(tmp_path)
    records = []
    result = train(config(**{"train.deterministic": True, "train.fold_workers": workers}), Workspace(tmp_path), labels,
                   name=name, folds=3, on_epoch=lambda fold, epoch, *rest: records.append((fold, epoch)))
    return result, json.loads((result.run / "metrics.json").read_text()), records


@pytest.mark.slow
def test_folds_side_by_side_give_the_folds_trained_one_after_another(tmp_path):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads_per_worker(2))  # what each worker runs on, so both paths add in the same order
    try:
        alone, alone_metrics, _ = _run(tmp_path / "a", "alone", 1)
    finally:
        torch.set_num_threads(previous)
    together, together_metrics, records = _run(tmp_path / "b", "together", 2)
    assert [f.fold for f in together.folds] == [1, 2, 3]
    for a, b in zip(alone_metrics["folds"], together_metrics["folds"]):
        assert a["best_epoch"] == b["best_epoch"] and a["val_clips"] == b["val_clips"]
        for key in ("waf", "macro_f1", "accuracy", "temperature"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
    for a, b in zip(alone.folds, together.folds):
        assert all(torch.allclose(a.state[k], b.state[k], atol=1e-5) for k in a.state)
    epochs = config().train.epochs
    assert sorted(records) == [(fold, epoch) for fold in (1, 2, 3) for epoch in range(1, epochs + 1)]


def test_folds_run_side_by_side_only_where_it_pays():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert fold_workers(0, cpu, 5, 100, 10) == 1  # too short to repay the workers' start
    assert fold_workers(0, cpu, 5, PARALLEL_WORK, 1) >= 1
    assert fold_workers(0, cuda, 5, PARALLEL_WORK, 10) == 1  # a GPU: one after the other unless asked
    assert fold_workers(2, cuda, 5, PARALLEL_WORK, 10) == 2
    assert fold_workers(3, cpu, 1, PARALLEL_WORK, 10) == 1  # one fold: nothing to share
    assert fold_workers(8, cpu, 5, 10, 1) == 5  # asked for: never more than the folds


def test_the_automatic_batch_keeps_an_epoch_thirty_batches_and_brings_its_rate():
    assert training_batch(0, 180, 1e-3) == (32, 1e-3)  # EmoDB's training folds: larger batches lost WAF there
    assert training_batch(0, 1000, 1e-3) == (32, 1e-3)
    assert training_batch(0, 3000, 1e-3) == (64, 1e-3)
    assert training_batch(0, 4000, 1e-3) == (128, 2e-3)  # a MER2024 training fold: twice the rate
    assert training_batch(0, 10, 1e-3) == (32, 1e-3)
    assert training_batch(16, 100_000, 1e-3) == (16, 1e-3)  # asked for: as it is


def test_a_run_records_the_batch_size_each_fold_trained_with(tmp_path):
    labels = write_workspace(tmp_path)
    result = train(config(**{"train.batch_size": 0}), Workspace(tmp_path), labels, name="auto", folds=2)
    metrics = json.loads((result.run / "metrics.json").read_text())
    assert [fold["batch_size"] for fold in metrics["folds"]] == [32, 32]
    assert [fold["lr"] for fold in metrics["folds"]] == [config().train.lr] * 2


def test_a_table_written_as_arrays_reads_back_equal(table, tmp_path):
    folder = tmp_path / "table"
    folder.mkdir()
    save_table(table, folder)
    assert not [p for p in folder.iterdir() if p.suffix not in (".npy", ".json")]  # arrays and JSON, no pickle
    again = load_table(folder)
    assert (again.classes, again.clip_ids, again.speakers, again.splits, again.excluded) == \
        (table.classes, table.clip_ids, table.speakers, table.splits, table.excluded)
    assert [s.manifest for s in again.sets] == [s.manifest for s in table.sets]
    assert np.array_equal(again.labels, table.labels) and np.array_equal(again.weights, table.weights)
    everything = list(range(len(table.clip_ids)))
    first, second = collate(table, everything), collate(again, everything)
    for name in first.values:
        assert torch.equal(first.values[name], second.values[name]) and torch.equal(first.masks[name], second.masks[name])
    # The read table's utterance-level sets come stacked, and its tensors are those arrays, not copies.
    assert table.stacked is None and set(again.stacked) == {s.name for s in again.sets if not s.frame_level}
    built, read = TableTensors(table, torch.device("cpu")), TableTensors(again, torch.device("cpu"))
    for name, array in again.stacked.items():
        assert isinstance(array, np.memmap) and array.mode == "c"  # the writer's pages, not a copy
        assert read.stacked[name][0].data_ptr() == array.ctypes.data
    for indices in (everything, [4, 0, 7]):
        fast, slow = read.batch(indices), built.batch(indices)
        for name in slow.values:
            assert torch.equal(fast.values[name], slow.values[name]) and torch.equal(fast.masks[name], slow.masks[name])


def _threads_per_fold(table, rebalance, patience):
    """Three folds on two workers; fold 2 trains on until it has all the CPUs or ``patience`` s pass."""
    splits = [Split(fold, np.arange(2), np.arange(2, 4)) for fold in (1, 2, 3)]
    with fold_training(threads_noting_trainer, (5, 2, threads_per_worker(1), patience), 2, rebalance) as train_folds:
        results = train_folds(table, splits, None)
    assert [r.fold for r in results] == [1, 2, 3]
    return {r.fold: r.threads for r in results}


@pytest.mark.slow
def test_fold_workers_start_before_they_are_given_the_table(table):
    splits = [Split(fold, np.arange(2), np.arange(2, 4)) for fold in (1, 2)]
    with fold_training(threads_noting_trainer, (1, 0, 1, 0.0), 2) as train_folds:
        assert len(multiprocessing.active_children()) == 2  # importing torch while the caller reads the table
        assert [r.fold for r in train_folds(table, splits, None)] == [1, 2]
    assert not multiprocessing.active_children()


@pytest.mark.slow
@pytest.mark.skipif(usable_cpus() < 2, reason="one CPU: there is nothing to share out")
def test_the_last_fold_training_takes_the_cpus_the_others_left(table):
    threads = _threads_per_fold(table, rebalance=True, patience=60)
    assert threads[1][0] == threads_per_worker(2)  # two folds side by side: half the CPUs each
    assert threads[2][-1] == threads_per_worker(1)  # alone at the end: all of them
    fixed = _threads_per_fold(table, rebalance=False, patience=3)[2]  # deterministic runs: alone or not, fixed
    assert len(fixed) > 5 and set(fixed) == {threads_per_worker(2)}

"""Folds trained side by side, each in its own process on its share of the CPUs.

The fusion network is small: on a CPU a fold spends most of its time in many small operations that
one thread runs nearly as fast as two (measured: 93 %), so two folds on one thread each finish
sooner than two folds one after the other on two threads. Each fold seeds itself
(:func:`mercli.train.train_fold`), so a fold gives the same result in a worker as in the main
process on the same number of threads. The workers start before the table is read, so that their
start (importing torch: about a second each) overlaps it. Once fewer folds are left than workers,
the CPUs of the idle workers go to the folds still training (except in deterministic runs, whose
thread counts stay fixed). Epoch records travel back through a queue, so the progress display
follows every fold as it trains.
"""

from __future__ import annotations

import functools
import multiprocessing
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

import mercli.resources as resources
from mercli.splits import Split
from mercli.table_files import load_table, save_table
from mercli.trainset import TrainingTable
from mercli.workers import started_workers

#: Clips x epochs per fold below which folds stay in the main process: a worker's start (importing
#: torch, receiving the table) costs about 3 s, which a shorter training would not repay.
PARALLEL_WORK = 20_000


def fold_workers(requested: int, device: torch.device, folds: int, clips: int, epochs: int) -> int:
    """Processes for ``folds`` folds: ``requested``, or with 0 as many as the folds and the CPUs
    allow when the training is long enough. On a GPU folds run one after the other unless asked
    for (each worker holds its own CUDA context; worth it where Python, not the GPU, is the limit)."""
    if folds < 2:
        return 1
    if requested:
        return min(requested, folds)
    if device.type != "cpu":
        return 1
    return min(folds, resources.usable_cpus()) if clips * epochs >= PARALLEL_WORK else 1


FoldTrainer = Callable[[Split, Callable[..., None] | None], Any]
#: ``train_folds(table, splits, on_epoch)``: every split's result, in the order of ``splits``.
TrainFolds = Callable[[TrainingTable, Sequence[Split], Callable[..., None] | None], list[Any]]


def _start_fold_trainer(make: Callable[..., FoldTrainer], table: Path, arguments: tuple, workers: int,
                        unfinished: Any | None, records: "multiprocessing.SimpleQueue[Any]") -> Callable[[Split], Any]:
    """In a worker: the fold trainer, on its share of the CPUs, sending its epoch records home. It
    is built on the first fold, as the worker starts before the table is written. With
    ``unfinished`` (a shared count of the folds not yet done) the share grows between epochs once
    fewer folds are left than workers: the last fold need not train on one CPU while the others idle."""
    threads = resources.threads_per_worker(workers)
    torch.set_num_threads(threads)
    trainer = functools.cache(lambda: make(load_table(table), *arguments))

    def on_epoch(*record: Any) -> None:
        nonlocal threads
        records.put(record)
        if unfinished is not None and (share := resources.threads_per_worker(min(workers, unfinished.value))) != threads:
            threads = share
            torch.set_num_threads(threads)

    return lambda split: trainer()(split, on_epoch)


@contextmanager
def fold_training(make: Callable[..., FoldTrainer], arguments: tuple, workers: int,
                  rebalance: bool = True) -> Iterator[TrainFolds]:
    """A function that trains folds with ``make(table, *arguments)(split, on_epoch)``: in this
    process, or in ``workers`` processes that start at once and import torch while the caller reads
    the table. ``on_epoch`` is called in this process. With ``rebalance`` the CPUs of workers left
    without a fold go to those still training (a thread count that changes with timing changes
    sums in the last bits: off for reruns that must be identical)."""
    if workers < 2:
        yield functools.partial(_train_here, make, arguments)
        return
    context = multiprocessing.get_context("spawn")
    records = context.SimpleQueue()
    unfinished = context.Value("i", 0, lock=False) if rebalance else None
    # The table reaches the workers as files they map: handed to each process as it starts, it
    # would be written into a pipe that only drains once the process has imported torch, and the
    # workers would start one after the other (each with its own copy).
    with tempfile.TemporaryDirectory(prefix="mer-folds-") as folder, \
            started_workers(_start_fold_trainer, (make, Path(folder), arguments, workers, unfinished, records),
                            workers) as results:
        yield functools.partial(_train_in_workers, results, Path(folder), unfinished, records)


def _train_here(make: Callable[..., FoldTrainer], arguments: tuple, table: TrainingTable, splits: Sequence[Split],
                on_epoch: Callable[..., None] | None) -> list[Any]:
    trainer = make(table, *arguments)  # once for all the folds
    return [trainer(split, on_epoch) for split in splits]


def _train_in_workers(results: Callable[[Sequence[Split]], Iterator[Any]], folder: Path, unfinished: Any | None,
                      records: "multiprocessing.SimpleQueue[Any]", table: TrainingTable, splits: Sequence[Split],
                      on_epoch: Callable[..., None] | None) -> list[Any]:
    save_table(table, folder)
    if unfinished is not None:
        unfinished.value = len(splits)

    def relay() -> None:
        while (record := records.get()) is not None:
            if on_epoch is not None:
                on_epoch(*record)

    relaying = threading.Thread(target=relay, daemon=True)
    relaying.start()
    done = []
    try:
        for result in results(splits):
            done.append(result)
            if unfinished is not None:
                unfinished.value -= 1
    finally:
        records.put(None)
        relaying.join()
    order = {split.fold: position for position, split in enumerate(splits)}
    return sorted(done, key=lambda result: order[result.fold])

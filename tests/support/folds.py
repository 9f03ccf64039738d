"""A fold trainer for tests of mercli.parallel_folds that trains nothing: each epoch it notes the
threads torch runs on, so a test sees how the CPUs were shared. Importable by spawned workers."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, Callable

import torch

from mercli.splits import Split
from mercli.trainset import TrainingTable

def threads_noting_trainer(table: TrainingTable, epochs: int, long_fold: int, until_threads: int, patience: float
                           ) -> Callable[[Split, Callable[..., None]], Any]:
    """Folds of ``epochs`` short epochs; ``long_fold`` goes on until torch runs on ``until_threads``
    threads or ``patience`` seconds have passed, so that it is the one left training alone."""

    def train(split: Split, on_epoch: Callable[..., None]) -> SimpleNamespace:
        threads: list[int] = []
        deadline = time.monotonic() + patience
        while len(threads) < epochs or (split.fold == long_fold and threads[-1] != until_threads
                                         and time.monotonic() < deadline):
            threads.append(torch.get_num_threads())
            time.sleep(0.02)
            on_epoch(split.fold, len(threads), epochs, {})
        return SimpleNamespace(fold=split.fold, threads=threads)

    return train

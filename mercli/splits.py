"""Which clips train and which validate, per fold. Test clips never do either.

Three sources, in order of precedence: ``folds`` (k-fold cross-validation, by group when a group
column is given, else stratified by class), a group column alone (a seeded holdout of whole groups,
so that no speaker is in both train and validation), or the labels' ``split`` column (``train`` /
``val``). Clips whose split is ``test`` are left out of every fold: model selection never sees them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mercli.errors import DataError
from mercli.trainset import TrainingTable

GROUP_COLUMNS = ("speaker",)


@dataclass(frozen=True)
class Split:
    fold: int
    train: np.ndarray
    val: np.ndarray


def _groups_of(table: TrainingTable, column: str, indices: np.ndarray) -> np.ndarray:
    if column not in GROUP_COLUMNS:
        raise DataError(f"--group-column {column}: the labels reader provides {', '.join(GROUP_COLUMNS)} only")
    missing = [table.clip_ids[i] for i in indices if not table.speakers[i]]
    if missing:
        raise DataError(f"--group-column {column}: {len(missing)} clips have no {column} (first: {missing[0]})")
    return np.array([table.speakers[i] for i in indices])


def _shuffled_groups(groups: np.ndarray, rng: np.random.Generator) -> list[str]:
    unique = sorted(set(groups.tolist()))
    return [unique[i] for i in rng.permutation(len(unique))]


def plan_splits(table: TrainingTable, *, seed: int, folds: int | None = None, group_column: str | None = None,
                val_fraction: float = 0.2) -> list[Split]:
    named = np.array([split or "train" for split in table.splits])  # no split: a training clip
    pool = np.flatnonzero(named != "test")
    rng = np.random.default_rng(seed)
    if folds is not None:
        return _k_fold(table, pool, folds, group_column, rng)
    if group_column is not None:
        groups = _groups_of(table, group_column, pool)
        order = _shuffled_groups(groups, rng)
        if len(order) < 2:
            raise DataError(f"--group-column {group_column}: one {group_column} only; a holdout needs two or more")
        held, count = set(), 0
        for group in order[:-1]:  # at least one group stays for training
            held.add(group)
            count += int((groups == group).sum())
            if count >= val_fraction * len(pool):
                break
        is_val = np.isin(groups, list(held))
        return [Split(1, pool[~is_val], pool[is_val])]
    train, val = pool[named[pool] == "train"], pool[named[pool] == "val"]
    if len(val) == 0:
        raise DataError("no validation clips: give the labels a split column with val rows, "
                        "or use --group-column speaker or --folds K")
    if len(train) == 0:
        raise DataError("no training clips: every labelled clip with features is in the val or test split")
    return [Split(1, train, val)]


def _k_fold(table: TrainingTable, pool: np.ndarray, folds: int, group_column: str | None,
            rng: np.random.Generator) -> list[Split]:
    if folds < 2:
        raise DataError(f"--folds {folds}: k-fold cross-validation needs 2 folds or more")
    if group_column is not None:
        groups = _groups_of(table, group_column, pool)
        order = _shuffled_groups(groups, rng)
        if len(order) < folds:
            raise DataError(f"--folds {folds}: only {len(order)} distinct {group_column}s to spread over the folds")
        sizes = np.zeros(folds, dtype=np.int64)
        fold_of = {}
        for group in sorted(order, key=lambda g: -int((groups == g).sum())):  # largest first, stable after the shuffle
            target = int(np.argmin(sizes))
            fold_of[group] = target
            sizes[target] += int((groups == group).sum())
        assignment = np.array([fold_of[g] for g in groups])
    else:
        assignment = np.empty(len(pool), dtype=np.int64)
        labels = table.labels[pool]
        for label in np.unique(labels):  # stratified: each class dealt round-robin from a seeded shuffle
            members = np.flatnonzero(labels == label)
            members = members[rng.permutation(len(members))]
            offset = int(rng.integers(folds))
            assignment[members] = (np.arange(len(members)) + offset) % folds
    splits = []
    for fold in range(folds):
        val = pool[assignment == fold]
        if len(val) == 0:
            raise DataError(f"--folds {folds}: fold {fold + 1} would hold no clip; use fewer folds")
        splits.append(Split(fold + 1, pool[assignment != fold], val))
    return splits

"""A training table written as plain arrays in a folder and read back memory-mapped, so that worker
processes get it without each receiving a copy through a pipe (:mod:`mercli.parallel_folds`).

Per feature set, ``<k>-present.npy`` marks the clips that have it; an utterance-level set stores
one row per clip (zeros where absent), a frame-level set its clips' frames one after another with
``<k>-lengths.npy`` and ``<k>-masks.npy``. ``table.json`` holds everything else. Nothing is pickled.

An utterance-level set is written row by row, never stacked in the writing process, and mapped
copy-on-write by the reader, whose rows are then the pages the writer left in the page cache. Memory
a process touches for the first time is what costs: on the development machine (a virtual machine)
a stacked copy, or a worker reading the set into fresh memory, took up to a second per 0.14 GB (a
MER2024-size table) when two processes did it at once, against a hundredth of a second to map it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mercli.features import FeatureSet, Manifest
from mercli.trainset import TrainingTable


def save_table(table: TrainingTable, folder: Path) -> None:
    for k, feature_set in enumerate(table.sets):
        rows, masks = table.values[feature_set.name], table.masks[feature_set.name]
        present = np.array([row is not None for row in rows])
        np.save(folder / f"{k}-present.npy", present)
        kept = [row for row in rows if row is not None]
        dim = feature_set.manifest.dim
        if feature_set.frame_level:
            np.save(folder / f"{k}-lengths.npy", np.array([len(row) for row in kept], dtype=np.int64))
            np.save(folder / f"{k}-values.npy", np.concatenate(kept) if kept else np.zeros((0, dim), np.float32))
            np.save(folder / f"{k}-masks.npy", np.concatenate([m for m in masks if m is not None] or [np.zeros(0, bool)]))
        else:
            _save_rows(folder / f"{k}-values.npy", rows, dim)
    np.save(folder / "labels.npy", table.labels)
    if table.weights is not None:
        np.save(folder / "weights.npy", table.weights)
    document = {"classes": table.classes, "clip_ids": table.clip_ids, "speakers": table.speakers,
                "splits": table.splits, "excluded": table.excluded,
                "sets": [{"path": str(s.path), "manifest": s.manifest.to_json(), "read_only": s.read_only}
                         for s in table.sets]}
    (folder / "table.json").write_text(json.dumps(document), encoding="utf-8")


def _save_rows(path: Path, rows: list[np.ndarray | None], dim: int) -> None:
    """``rows`` as one (clips, dim) float32 array file, zeros for ``None``, without stacking them."""
    absent = np.zeros(dim, dtype=np.float32)
    with path.open("wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(absent.dtype),
                                                      "fortran_order": False, "shape": (len(rows), dim)})
        for row in rows:
            handle.write(np.ascontiguousarray(absent if row is None else row, dtype=np.float32).data)


def load_table(folder: Path) -> TrainingTable:
    document = json.loads((folder / "table.json").read_text(encoding="utf-8"))
    sets = [FeatureSet(Path(s["path"]), Manifest.from_json(s["manifest"]), s["read_only"]) for s in document["sets"]]
    values, masks, stacked = {}, {}, {}
    for k, feature_set in enumerate(sets):
        present = np.load(folder / f"{k}-present.npy")
        if feature_set.frame_level:
            stored = np.load(folder / f"{k}-values.npy", mmap_mode="r")
            ends = np.cumsum(np.load(folder / f"{k}-lengths.npy"))
            frames = np.split(stored, ends[:-1]) if len(ends) else []
            frame_masks = np.split(np.load(folder / f"{k}-masks.npy"), ends[:-1]) if len(ends) else []
        else:
            stored = stacked[feature_set.name] = np.load(folder / f"{k}-values.npy", mmap_mode="c")
            frames = [stored[i] for i in np.flatnonzero(present)]  # views: no copy of the set
            frame_masks = [None] * len(frames)
        found, found_masks = iter(frames), iter(frame_masks)
        values[feature_set.name] = [next(found) if has else None for has in present]
        masks[feature_set.name] = [next(found_masks) if has else None for has in present]
    weights = folder / "weights.npy"
    return TrainingTable(document["classes"], document["clip_ids"], np.load(folder / "labels.npy"),
                         document["speakers"], document["splits"], sets, values, masks, document["excluded"],
                         np.load(weights) if weights.exists() else None, stacked)

"""The training table: labelled clips joined with the feature sets of the workspace.

Every check that can refuse a run happens here, before a network is built: labels outside the
class list, a single-class training set, NaN or infinite features, and feature sets whose width
differs from what an earlier run of the same name was trained on. Clips that carry a label but have
no features in any chosen set are not an error: they are listed as exclusions, so that nothing is
dropped in silence. Unlabelled rows (a test set without labels) are ignored.

A feature set whose encoder name starts with ``prior-`` holds reasoning-trace embeddings (written by
the reason stage); its manifest's modality names the modality it informs. The model injects it into
that modality's stream instead of treating it as a modality of its own.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from mercli.config import Config
from mercli.errors import DataError
from mercli.contracts import Features
from mercli.features import FeatureSet, Manifest, list_feature_sets
from mercli.labels import check_classes, read_labels
from mercli.model import InputSpec
from mercli.vocabulary import is_prior


def input_spec(feature_set: FeatureSet) -> InputSpec:
    """What the network needs to know of a feature set, from its manifest."""
    m = feature_set.manifest
    return InputSpec(feature_set.name, m.modality, m.level, m.dim, is_prior(m.encoder))


@dataclass
class TrainingTable:
    """Labelled clips and, per feature set, each clip's values (``None`` where the modality is
    absent) and frame mask (frame-level sets only)."""

    classes: list[str]
    clip_ids: list[str]
    labels: np.ndarray
    speakers: list[str | None]
    splits: list[str | None]
    sets: list[FeatureSet]
    values: dict[str, list[np.ndarray | None]]
    masks: dict[str, list[np.ndarray | None]]
    excluded: list[str]
    #: Each clip's weight in the loss (pseudo-labelled clips: weight x confidence); ``None``: all 1.
    weights: np.ndarray | None = None
    #: Utterance-level sets already stacked, where the table was read that way (mercli.table_files):
    #: per set name, the (clips, dim) float32 values, zeros where absent, of which ``values`` holds
    #: views. :class:`TableTensors` then takes them as they are instead of stacking a copy.
    stacked: dict[str, np.ndarray] | None = None

    @property
    def inputs(self) -> list[InputSpec]:
        return [input_spec(s) for s in self.sets]

    def manifests(self) -> dict[str, dict[str, Any]]:
        """The exact manifest of every set used, by set name, as a run records them."""
        return {s.name: s.manifest.to_json() for s in self.sets}

    def class_counts(self, indices: Sequence[int]) -> list[int]:
        counts = np.bincount(self.labels[np.asarray(indices, dtype=np.int64)], minlength=len(self.classes))
        return [int(c) for c in counts]

    def joined(self, other: "TrainingTable") -> "TrainingTable":
        """This table followed by the rows of ``other`` (same classes and sets); rows without a
        weight weigh 1. The excluded clips stay this table's (labelled clips without features)."""
        if other.classes != self.classes or [s.name for s in other.sets] != [s.name for s in self.sets]:
            raise ValueError("only tables of the same classes and feature sets can be joined")
        weights = np.concatenate([_weights_of(self), _weights_of(other)])
        return TrainingTable(self.classes, self.clip_ids + other.clip_ids, np.concatenate([self.labels, other.labels]),
                             self.speakers + other.speakers, self.splits + other.splits, self.sets,
                             {n: self.values[n] + other.values[n] for n in self.values},
                             {n: self.masks[n] + other.masks[n] for n in self.masks},
                             self.excluded, weights)


def _weights_of(table: TrainingTable) -> np.ndarray:
    return np.ones(len(table.clip_ids), dtype=np.float32) if table.weights is None else table.weights


def choose_sets(features_root: Path, names: Sequence[str] | None) -> list[FeatureSet]:
    """The named feature sets (in the order given), or every set of the workspace."""
    available = {s.name: s for s in list_feature_sets(features_root)}
    if not available:
        raise DataError(f"{features_root}: no feature sets; run `mer extract` first")
    if not names:
        return list(available.values())
    unknown = [n for n in names if n not in available]
    if unknown:
        raise DataError(f"{features_root}: no feature set named {', '.join(unknown)} "
                        f"(available: {', '.join(available)})")
    return [available[n] for n in dict.fromkeys(names)]


def check_expected_inputs(sets: Sequence[FeatureSet], expected: Mapping[str, Mapping[str, Any]], where: str) -> None:
    """Refuse sets whose width or level differs from the manifests ``expected`` records (an
    earlier run's ``config.json``), or a different choice of sets: its weights would not fit."""
    current = {s.name: s.manifest for s in sets}
    if set(current) != set(expected):
        raise DataError(f"{where}: was trained on feature sets {', '.join(sorted(expected))}, "
                        f"this run uses {', '.join(sorted(current))}")
    for name, manifest in current.items():
        recorded = expected[name]
        if (manifest.dim, manifest.level) != (recorded.get("dim"), recorded.get("level")):
            raise DataError(f"{where}: feature set {name} is {manifest.level}-level of dim {manifest.dim}, "
                            f"the run expects {recorded.get('level')}-level of dim {recorded.get('dim')}")


def read_clip(feature_set: FeatureSet, clip_id: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """One clip's (values, mask), ``(None, None)`` where the modality is absent. NaN or infinity in a
    real measurement is refused, naming the file."""
    features = feature_set.read(clip_id)
    if features.values is None:
        return None, None
    measured = features.values if features.mask is None else features.values[features.mask]
    if not np.isfinite(measured).all():
        raise DataError(f"{feature_set.path / (clip_id + '.npy')}: features hold NaN or infinity")
    return features.values, features.mask


def _read_rows(sets: Sequence[FeatureSet], clip_ids: Sequence[str]
               ) -> tuple[list[int], dict[str, list[np.ndarray | None]], dict[str, list[np.ndarray | None]]]:
    """The positions in ``clip_ids`` of the clips with at least one modality in ``sets``, and
    their values and masks per set (``None`` where a set has nothing for the clip)."""
    values: dict[str, list[np.ndarray | None]] = {s.name: [] for s in sets}
    masks: dict[str, list[np.ndarray | None]] = {s.name: [] for s in sets}
    kept = []
    stored = {s.name: set(s.clip_ids()) for s in sets}
    for position, clip_id in enumerate(clip_ids):
        read = {s.name: read_clip(s, clip_id) if clip_id in stored[s.name] else (None, None) for s in sets}
        if all(read[s.name][0] is None for s in sets if not is_prior(s.manifest.encoder)):
            continue
        kept.append(position)
        for name, (clip_values, clip_mask) in read.items():
            values[name].append(clip_values)
            masks[name].append(clip_mask)
    return kept, values, masks


def _others(clip_ids: Sequence[str], positions: Sequence[int]) -> list[str]:
    """The clips of ``clip_ids`` not at ``positions``, in order."""
    kept = set(positions)
    return [clip for position, clip in enumerate(clip_ids) if position not in kept]


def check_sets(features_root: Path, sets: Sequence[FeatureSet]) -> None:
    """Refuse a choice of sets with no modality: priors only inform a modality's stream."""
    if all(is_prior(s.manifest.encoder) for s in sets):
        raise DataError(f"{features_root}: only prior feature sets were chosen; training needs at least one modality")


def build_table(config: Config, features_root: Path, labels_path: Path,
                feature_names: Sequence[str] | None = None) -> TrainingTable:
    """Join the labels of ``labels_path`` with the chosen feature sets; see the module docstring
    for what is refused and what is excluded."""
    classes = list(config.data.classes)
    clips = read_labels(labels_path, config)
    check_classes(clips, classes, labels_path)
    labelled = [c for c in clips if c.label is not None]
    if not labelled:
        raise DataError(f"{labels_path}: no labelled rows")
    sets = choose_sets(features_root, feature_names)
    check_sets(features_root, sets)
    positions, values, masks = _read_rows(sets, [c.clip_id for c in labelled])
    kept = [labelled[p] for p in positions]
    if not kept:
        raise DataError(f"{labels_path}: none of its {len(labelled)} labelled clips has features in "
                        f"{', '.join(s.name for s in sets)}")
    index = {c: i for i, c in enumerate(classes)}
    table = TrainingTable(
        classes=classes,
        clip_ids=[c.clip_id for c in kept],
        labels=np.array([index[c.label] for c in kept], dtype=np.int64),
        speakers=[c.speaker for c in kept],
        splits=[c.split for c in kept],
        sets=sets,
        values=values,
        masks=masks,
        excluded=_others([c.clip_id for c in labelled], positions),
    )
    present = Counter(classes[i] for i in table.labels)
    if len(present) < 2:
        only = ", ".join(present) or "none"
        raise DataError(f"{labels_path}: the clips with features cover one class only ({only}); "
                        "training needs two or more")
    return table


def one_clip_table(classes: list[str], clip_id: str, manifests: Mapping[str, Manifest],
                   features: Mapping[str, Features]) -> TrainingTable:
    """A table of one unlabelled clip held in memory (``mer predict``), over the sets ``manifests``
    names; a set ``features`` has nothing for is absent. Its sets live nowhere on disk: their path
    is their bare name."""
    sets = [FeatureSet(Path(name), manifest) for name, manifest in manifests.items()]
    held = {name: features.get(name, Features(None, absent="not made")) for name in manifests}
    return TrainingTable(classes, [clip_id], np.zeros(1, dtype=np.int64), [None], [None], sets,
                         {name: [f.values] for name, f in held.items()}, {name: [f.mask] for name, f in held.items()}, [])


def clip_table(classes: Sequence[str], sets: Sequence[FeatureSet], clip_ids: Sequence[str],
               labels: Sequence[int] | None = None, weights: Sequence[float] | None = None) -> TrainingTable:
    """The clips of ``clip_ids`` that have features in ``sets`` (unlabelled clips get class 0, and
    are only for predicting); the others are listed as excluded."""
    positions, values, masks = _read_rows(sets, clip_ids)
    chosen = np.asarray(positions, dtype=np.int64)
    kept = [clip_ids[p] for p in positions]
    return TrainingTable(
        classes=list(classes), clip_ids=kept,
        labels=np.zeros(len(kept), dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)[chosen],
        speakers=[None] * len(kept), splits=[None] * len(kept), sets=list(sets), values=values, masks=masks,
        excluded=_others(clip_ids, positions),
        weights=None if weights is None else np.asarray(weights, dtype=np.float32)[chosen])


def refuse_label_leaks(table: TrainingTable, indices: Sequence[int], role: str) -> None:
    """Refuse priors from label-conditioned traces for the clips at ``indices`` (validation or
    test clips): the reasoner saw their labels, so the score would be a leak, not a measurement."""
    from mercli.priors import label_conditioned

    for feature_set in table.sets:
        if not (is_prior(feature_set.manifest.encoder) and label_conditioned(feature_set.manifest)):
            continue
        leaked = [table.clip_ids[i] for i in indices if table.values[feature_set.name][i] is not None]
        if leaked:
            first = ", ".join(leaked[:3]) + (" ..." if len(leaked) > 3 else "")
            raise DataError(f"{feature_set.path}: priors from label-conditioned traces for {len(leaked)} {role} "
                            f"clip(s) ({first}): their labels would leak; reason those clips without "
                            "--label-conditioned, or leave this set out with --features")


#: Rows per chunk when summing squared deviations, so that no full-size temporary is made.
STATISTICS_CHUNK = 256


def feature_statistics(table: TrainingTable, indices: Sequence[int]) -> dict[str, tuple[Any, Any]]:
    """Per set, the mean and standard deviation of every feature over the real measurements of the
    clips at ``indices`` (a feature that never varies gets a scale of 1). The rows stay float32 and
    only the sums are float64, a chunk of clips at a time: a large table costs no second copy (a
    fresh copy of 0.1 GB cost about a second of page faults on the development machine)."""
    import torch

    statistics = {}
    for feature_set in table.sets:
        rows = [(v if m is None else v[m]) for i in indices
                for v, m in [(table.values[feature_set.name][i], table.masks[feature_set.name][i])] if v is not None]
        if not rows:
            continue

        def chunks() -> Iterator[Any]:
            for start in range(0, len(rows), STATISTICS_CHUNK):
                yield torch.from_numpy(np.concatenate([np.atleast_2d(r) for r in rows[start:start + STATISTICS_CHUNK]]))

        count = sum(len(np.atleast_2d(r)) for r in rows)
        mean = sum(chunk.sum(dim=0, dtype=torch.float64) for chunk in chunks()) / count
        centre, squares = mean.float(), torch.zeros_like(mean)
        for chunk in chunks():
            deviation = chunk - centre
            squares += deviation.mul_(deviation).sum(dim=0, dtype=torch.float64)
        std = (squares / count).sqrt_()
        std[std < 1e-8] = 1.0
        statistics[feature_set.name] = (mean.float(), std.float())
    return statistics


@dataclass
class Batch:
    """Tensors of one batch, per feature set: ``values`` ``(B, dim)`` or ``(B, T, dim)`` padded to the
    longest clip, ``mask`` ``(B,)`` (the clip has the modality) or ``(B, T)`` (real frames);
    ``weights`` ``(B,)``, each clip's weight in the loss, or ``None`` when every clip weighs 1."""

    values: dict[str, Any]
    masks: dict[str, Any]
    labels: Any
    weights: Any = None

    def to(self, device: Any) -> "Batch":
        return Batch({k: v.to(device) for k, v in self.values.items()},
                     {k: v.to(device) for k, v in self.masks.items()}, self.labels.to(device),
                     None if self.weights is None else self.weights.to(device))


def _stack(table: TrainingTable, feature_set: FeatureSet, indices: Sequence[int]) -> tuple[Any, Any]:
    """One set's values and mask for the clips at ``indices``: absent clips are zeros with a False
    mask, a frame-level set is padded to the longest of these clips."""
    import torch

    name, dim = feature_set.name, feature_set.manifest.dim
    rows = [table.values[name][i] for i in indices]
    if feature_set.frame_level:
        row_masks = [table.masks[name][i] for i in indices]
        longest = max((len(r) for r in rows if r is not None), default=1)
        stacked = np.zeros((len(rows), longest, dim), dtype=np.float32)
        mask = np.zeros((len(rows), longest), dtype=bool)
        for j, (row, row_mask) in enumerate(zip(rows, row_masks)):
            if row is not None:
                stacked[j, : len(row)] = row
                mask[j, : len(row)] = row_mask
    else:
        stacked = np.zeros((len(rows), dim), dtype=np.float32)
        mask = np.zeros(len(rows), dtype=bool)
        for j, row in enumerate(rows):
            if row is not None:
                stacked[j], mask[j] = row, True
    return torch.from_numpy(stacked), torch.from_numpy(mask)


def collate(table: TrainingTable, indices: Sequence[int]) -> Batch:
    """Stack the clips at ``indices`` (see :func:`_stack`)."""
    import torch

    values, masks = {}, {}
    for feature_set in table.sets:
        values[feature_set.name], masks[feature_set.name] = _stack(table, feature_set, indices)
    chosen = np.asarray(indices, dtype=np.int64)
    weights = None if table.weights is None else torch.from_numpy(table.weights[chosen])
    return Batch(values, masks, torch.from_numpy(table.labels[chosen]), weights)


class TableTensors:
    """A table's utterance-level sets, labels and weights stacked once on ``device``, so that a
    batch is an index into them rather than a loop over clips; frame-level sets are stacked per
    batch (padded to that batch's longest clip), as one padding for the whole table could be many
    times larger. A batch holds exactly what :func:`collate` makes of the same clips."""

    def __init__(self, table: TrainingTable, device: Any) -> None:
        import torch

        self.table, self.device = table, device
        everything = range(len(table.clip_ids))
        self.stacked = {s.name: tuple(t.to(device) for t in self._stacked(s, everything))
                        for s in table.sets if not s.frame_level}
        self.labels = torch.from_numpy(table.labels).to(device)
        self.weights = None if table.weights is None else torch.from_numpy(table.weights).to(device)

    def _stacked(self, feature_set: FeatureSet, everything: Sequence[int]) -> tuple[Any, Any]:
        import torch

        stacked = self.table.stacked
        if stacked is None or feature_set.name not in stacked:
            return _stack(self.table, feature_set, everything)
        present = np.array([row is not None for row in self.table.values[feature_set.name]])
        return torch.from_numpy(stacked[feature_set.name]), torch.from_numpy(present)

    def batch(self, indices: Sequence[int]) -> Batch:
        import torch

        chosen = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=self.device)
        values, masks = {}, {}
        for feature_set in self.table.sets:
            name = feature_set.name
            if name in self.stacked:
                values[name], masks[name] = (t.index_select(0, chosen) for t in self.stacked[name])
            else:
                values[name], masks[name] = (t.to(self.device) for t in _stack(self.table, feature_set, indices))
        weights = None if self.weights is None else self.weights.index_select(0, chosen)
        return Batch(values, masks, self.labels.index_select(0, chosen), weights)

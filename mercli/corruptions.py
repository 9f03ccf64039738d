"""``mer eval --corrupt``: how a run's scores fall when its clips are corrupted.

A spec names corruptions and their levels (``audio-noise:snr=20,10,0``, ``video-blur:sigma=4``,
``drop:audio``; see :data:`KINDS`). For each level, copies of the evaluated clips are corrupted
into a scratch folder of the workspace, ``corrupted/<corruption>-<parameter><level>-<hash>/``
(``clips/``, and beside them the ``features/`` and ``transcripts/`` of those copies), where the hash
names everything the copies depend on (the seed, the noise corpus), so that a changed setting never
reuses them. Every random choice is seeded by ``eval.seed``, the corruption, the level and the clip,
so a rerun writes the same bytes; every file is written under a temporary name and renamed.

The copies are re-extracted with the run's own encoders, rebuilt from the manifests the run recorded
(the extract stage itself, with its cache, failure records and workers), so a second run of the
same spec re-extracts nothing. Only the feature sets the corruption reaches are made again (audio
corruptions: audio, and text where a clip's transcript comes from speech recognition; video
corruptions: visual); the others keep their clean values. ``drop:<modality>`` re-extracts nothing:
that modality's feature sets (its priors included) are made absent. Priors of a corrupted clip are
left absent (``eval.corrupt_priors = "absent"``, cheap and honest: no reasoner saw the corrupted
clip), asked of the run's reasoner about the copy (``"reason"``, :class:`ReasonedPriors`) or kept
from the clean clip (``"clean"``, optimistic).

Each level is then scored exactly as the clean clips are (:func:`mercli.evaluation.evaluate`: the
same runs, folds, clips and ensemble), the corrupted values replacing the clean ones for the
evaluated clips. A clip that cannot be corrupted or re-extracted is recorded under its corruption's
``failed`` and scored with the reached feature sets absent; the batch goes on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mercli.atomic import hidden_twin, read_json, replacing, write_bytes
from mercli.clips import Clip, clip_kind, scan
from mercli.config import Config
from mercli.errors import ConfigError, DataError
from mercli.evaluation import Evaluation, TableChange
from mercli.features import FeatureSet, Manifest
from mercli.labels import read_labels
from mercli.plots import ROBUSTNESS_FIGURES, level_label, robustness_png
from mercli.trainset import TrainingTable, read_clip
from mercli.transcripts import TranscriptStore
from mercli.vocabulary import MODALITIES, is_prior, one_line
from mercli.runs import CONFIG
from mercli.workspace import Workspace

#: The workspace folder corrupted copies, and their features, are kept in.
SCRATCH = "corrupted"
#: Bumped when a corruption's output changes, so that older copies are not reused.
VERSION = 1
#: Other clips mixed into babble noise.
BABBLE_TALKERS = 3


@dataclass(frozen=True)
class Kind:
    """A corruption: the parameter its levels set, the modality it reaches, and which levels make sense."""

    parameter: str
    modality: str
    admits: Callable[[float], bool]
    allowed: str


KINDS: dict[str, Kind] = {
    "audio-noise": Kind("snr", "audio", lambda v: True, "a signal-to-noise ratio in dB"),
    "audio-pink": Kind("snr", "audio", lambda v: True, "a signal-to-noise ratio in dB"),
    "audio-babble": Kind("snr", "audio", lambda v: True, "a signal-to-noise ratio in dB"),
    "video-blur": Kind("sigma", "visual", lambda v: v > 0, "a Gaussian blur sigma > 0 (pixels)"),
    "video-lowres": Kind("scale", "visual", lambda v: 0 < v <= 1, "a scale in (0, 1]"),
    "frame-drop": Kind("rate", "visual", lambda v: 0 <= v < 1, "a share of frames dropped in [0, 1)"),
}
DROP = "drop"


@dataclass(frozen=True)
class Corruption:
    """One corruption of a spec: ``name`` as results name it (``audio-noise``, ``drop:audio``)."""

    name: str
    kind: str
    parameter: str | None
    levels: tuple[float | None, ...]
    modality: str


# --- specs ------------------------------------------------------------------------------------


def parse_specs(specs: Sequence[str]) -> list[Corruption]:
    """Every corruption of ``specs`` (each a list separated by ``;``, spaces or ``,``: a number after
    a comma is one more level of the corruption before it); a bad spec is a ConfigError naming it."""
    corruptions: dict[str, Corruption] = {}
    for spec in specs:
        for item in _items(spec):
            corruption = _parse_item(item, spec)
            if corruption.name in corruptions:
                raise ConfigError(f"--corrupt '{spec}': {corruption.name} is given twice")
            corruptions[corruption.name] = corruption
    if not corruptions:
        raise ConfigError("--corrupt: no corruption given (for example audio-noise:snr=10,0)")
    return list(corruptions.values())


def _items(spec: str) -> list[str]:
    """``spec`` cut into one string per corruption, its levels joined by commas."""
    items: list[str] = []
    for token in (t for part in re.split(r"[;\s]+", spec.strip("; \t\n")) for t in part.split(",")):
        if not token:
            raise ConfigError(f"--corrupt '{spec}': an empty item")
        if items and ":" not in token and not items[-1].startswith(DROP + ":"):
            items[-1] += "," + token
        else:
            items.append(token)
    return items


def _parse_item(item: str, spec: str) -> Corruption:
    where = f"--corrupt '{spec}'"
    name, colon, rest = item.partition(":")
    if name == DROP:
        if rest not in MODALITIES:
            raise ConfigError(f"{where}: drop needs a modality, one of {', '.join(MODALITIES)} (got {rest!r})")
        return Corruption(f"{DROP}:{rest}", DROP, None, (None,), rest)
    kind = KINDS.get(name)
    if kind is None:
        raise ConfigError(f"{where}: unknown corruption {name!r} (known: {', '.join([*KINDS, DROP])})")
    parameter, equals, values = rest.partition("=")
    if not colon or not equals or parameter != kind.parameter or not values.strip(","):
        raise ConfigError(f"{where}: {name} needs its levels as {name}:{kind.parameter}=L1,L2,... (missing level)")
    return Corruption(name, name, kind.parameter, tuple(_level(v, kind, where, name) for v in values.split(",")),
                      kind.modality)


def _level(text: str, kind: Kind, where: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{where}: {name} level {text!r} is not a number") from None
    if not np.isfinite(value) or not kind.admits(value):
        raise ConfigError(f"{where}: {name} {kind.parameter}={text} is out of range: {kind.allowed}")
    return int(value) if value.is_integer() else value


# --- corrupting one clip ----------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """Everything a corrupted copy depends on, and where it goes."""

    corruption: Corruption
    level: float | None
    seed: int
    noise_dir: Path | None
    sample_rate: int
    #: audio-babble: the clips whose speech is mixed in (the evaluated clips with audio)
    talkers: tuple[str, ...] = ()

    def identity(self) -> dict[str, Any]:
        noise = None
        if self.corruption.kind == "audio-noise" and self.noise_dir is not None:
            noise = {"dir": str(self.noise_dir.resolve()), "files": [f"{p.name}:{p.stat().st_size}"
                                                                     for p in noise_files(self.noise_dir)]}
        return {"version": VERSION, "kind": self.corruption.kind, "level": self.level, "seed": self.seed,
                "noise": noise, "sample_rate": self.sample_rate if self.corruption.modality == "audio" else None,
                "talkers": hashlib.sha256("\n".join(self.talkers).encode()).hexdigest() if self.talkers else None}

    @property
    def key(self) -> str:
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.corruption.kind}-{self.corruption.parameter}{self.level}-{digest}"

    @property
    def label(self) -> str:
        """How progress names the level: ``audio-noise snr=10``."""
        return f"{self.corruption.name} {level_label(self.corruption.parameter, self.level)}"

    def clip_seed(self, clip_id: str) -> int:
        text = f"{self.seed}:{self.corruption.kind}:{self.level}:{clip_id}"
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def noise_files(folder: Path) -> list[Path]:
    """The audio (and video) files of a noise corpus such as MUSAN, sorted."""
    if not folder.is_dir():
        raise ConfigError(f"eval.noise_dir: {folder}: no such folder")
    found = sorted(p for p in folder.rglob("*") if p.is_file() and clip_kind(p) and not p.name.startswith("."))
    if not found:
        raise ConfigError(f"eval.noise_dir: {folder}: holds no audio file")
    return found


def corrupt_clip(recipe: Recipe, clip: Clip, folder: Path, others: Sequence[Clip]) -> Clip:
    """The corrupted copy of ``clip`` in ``folder`` (made once; an existing copy is complete)."""
    from mercli.media import probe

    info = probe(clip.path)
    reached = info.has_audio if recipe.corruption.modality == "audio" else info.has_video
    suffix = (".mkv" if info.has_video else ".wav") if reached else clip.path.suffix.lower()
    target = folder / f"{clip.clip_id}{suffix}"
    if target.exists():
        return Clip(clip.clip_id, target, clip.kind)
    folder.mkdir(parents=True, exist_ok=True)
    if not reached:  # nothing the corruption can reach (no audio track, no picture): the copy is the clip
        with replacing(target, "wb") as handle, clip.path.open("rb") as source:
            shutil.copyfileobj(source, handle)
    elif recipe.corruption.modality == "audio":
        _noisy(recipe, clip, target, others, info.has_video)
    else:
        _ffmpeg(clip.path, target, ["-map", "0:v:0", "-map", "0:a:0?", "-vf", _video_filter(recipe, clip, info),
                                    "-fps_mode", "vfr", *VIDEO_CODEC, "-c:a", "pcm_f32le"])
    return Clip(clip.clip_id, target, clip.kind)


VIDEO_CODEC = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", "-threads", "1"]


def _video_filter(recipe: Recipe, clip: Clip, info: Any) -> str:
    if recipe.corruption.kind == "video-blur":
        return f"gblur=sigma={recipe.level}"
    if recipe.corruption.kind == "video-lowres":
        return (f"scale=trunc(iw*{recipe.level}/2)*2:trunc(ih*{recipe.level}/2)*2:flags=area,"
                f"scale={info.width}:{info.height}:flags=bilinear")
    # frame-drop: the first frame stays; each other one goes with probability rate, from ffmpeg's
    # generator seeded per clip in variable 0
    return f"select='if(eq(n,0),1+0*st(0,{recipe.clip_seed(clip.clip_id)}),gte(random(0),{recipe.level}))'"


def _ffmpeg(source: Path, target: Path, arguments: list[str]) -> None:
    """``ffmpeg -i source ARGUMENTS target`` with reproducible output, written under a temporary name."""
    temporary = hidden_twin(target).with_suffix(target.suffix)
    command = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(source), *arguments, "-fflags", "+bitexact",
               "-flags:v", "+bitexact", "-flags:a", "+bitexact", "-map_metadata", "-1", str(temporary)]
    try:
        answer = subprocess.run(command, capture_output=True, text=True)
        if answer.returncode != 0:
            raise DataError(f"{source}: ffmpeg could not corrupt it: {one_line(answer.stderr, 200) or answer.returncode}")
        temporary.replace(target)
    finally:
        temporary.unlink(missing_ok=True)


def _audio(path: Path, clip_id: str, sample_rate: int) -> np.ndarray:
    from mercli.media import decode

    decoded = decode(path, clip_id, sample_rate=sample_rate, video=False, audio=True)
    if decoded.audio is None or not len(decoded.audio):
        raise DataError(f"{path}: no audio track could be decoded")
    return decoded.audio.astype(np.float64)


def _noisy(recipe: Recipe, clip: Clip, target: Path, others: Sequence[Clip], video: bool) -> None:
    """Mix noise into the clip's audio at the level's SNR, against the clip's own signal power."""
    signal = _audio(clip.path, clip.clip_id, recipe.sample_rate)
    rng = np.random.default_rng(recipe.clip_seed(clip.clip_id))
    noise = _noise(recipe, clip, len(signal), rng, others)
    power = float(np.mean(signal ** 2))
    scale = np.sqrt(power / (float(np.mean(noise ** 2)) * 10 ** (recipe.level / 10))) if power > 0 else 0.0
    mixed = (signal + scale * noise).astype(np.float32)
    wav = _wav_bytes(mixed, recipe.sample_rate)
    if not video:
        write_bytes(target, wav)
        return
    track = hidden_twin(target).with_suffix(".wav")
    try:
        write_bytes(track, wav)
        _ffmpeg(clip.path, target, ["-i", str(track), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
                                    "-c:a", "pcm_f32le"])
    finally:
        track.unlink(missing_ok=True)


def _wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    import io

    from scipy.io import wavfile

    buffer = io.BytesIO()
    wavfile.write(buffer, sample_rate, samples)
    return buffer.getvalue()


def _noise(recipe: Recipe, clip: Clip, length: int, rng: np.random.Generator, others: Sequence[Clip]) -> np.ndarray:
    kind = recipe.corruption.kind
    if kind == "audio-pink":
        spectrum = np.fft.rfft(rng.standard_normal(length))
        spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
        spectrum[0] = 0
        return np.fft.irfft(spectrum, n=length)
    if kind == "audio-noise" and recipe.noise_dir is None:
        return rng.standard_normal(length)
    if kind == "audio-noise":
        files = noise_files(recipe.noise_dir)
        chosen = files[int(rng.integers(len(files)))]
        return _looped(_audio(chosen, chosen.stem, recipe.sample_rate), length, rng)
    talkers = [c for c in others if c.clip_id != clip.clip_id]
    if not talkers:
        raise DataError(f"{clip.path}: no other evaluated clip with audio to make babble from")
    picked = rng.choice(len(talkers), size=min(BABBLE_TALKERS, len(talkers)), replace=False)
    voices = [_looped(_audio(talkers[i].path, talkers[i].clip_id, recipe.sample_rate), length, rng) for i in picked]
    return np.sum([v / np.sqrt(np.mean(v ** 2) or 1.0) for v in voices], axis=0)


def _looped(audio: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """``length`` samples of ``audio`` from a random start, looped as often as needed."""
    start = int(rng.integers(len(audio)))
    return np.resize(np.roll(audio, -start), length)


# --- one level: copies, features, the change of the table -------------------------------------


@dataclass
class LevelOutcome:
    """The feature sets a level replaces (``None``: absent for the evaluated clips), and the clips
    that failed (clip -> reason)."""

    replaced: dict[str, FeatureSet | None]
    failed: dict[str, str] = field(default_factory=dict)

    def change(self, evaluated: set[str]) -> TableChange:
        def changed(table: TrainingTable) -> TrainingTable:
            values, masks = dict(table.values), dict(table.masks)
            for name, source in self.replaced.items():
                rows = [_row(None if clip in self.failed else source, clip) if clip in evaluated
                        else (table.values[name][i], table.masks[name][i]) for i, clip in enumerate(table.clip_ids)]
                values[name], masks[name] = [r[0] for r in rows], [r[1] for r in rows]
            return dataclasses.replace(table, values=values, masks=masks)

        return changed


def _row(source: FeatureSet | None, clip: str) -> tuple[Any, Any]:
    """A clip's values in ``source``, absent where it has none (dropped, or its corruption failed)."""
    if source is None or source.status(clip) is None:
        return None, None
    return read_clip(source, clip)


@dataclass
class EvaluatedClips:
    """The evaluated clips' files (found beside the labels files they were evaluated from) and
    the transcripts those labels files give them."""

    files: dict[str, Clip]
    transcripts: dict[str, str]
    missing: dict[str, str]

    @classmethod
    def find(cls, config: Config, labels_files: Sequence[Path], clip_ids: Sequence[str]) -> "EvaluatedClips":
        files: dict[str, Clip] = {}
        transcripts: dict[str, str] = {}
        for labels in labels_files:
            rows = read_labels(labels, config)
            transcripts.update({r.clip_id: r.transcript for r in rows if r.transcript})
            named = {r.clip_id: r.path for r in rows if r.path is not None}
            beside = {c.clip_id: c for c in scan(labels if labels.is_dir() else labels.parent).clips}
            for clip_id in clip_ids:
                if clip_id in named and clip_kind(named[clip_id]):
                    files.setdefault(clip_id, Clip(clip_id, Path(named[clip_id]), clip_kind(named[clip_id])))
                elif clip_id in beside:
                    files.setdefault(clip_id, beside[clip_id])
        folders = ", ".join(str(p if p.is_dir() else p.parent) for p in labels_files)
        missing = {c: f"clip file not found in {folders}" for c in clip_ids if c not in files}
        return cls(files, transcripts, missing)


class Robustness:
    """The corruptions of one ``mer eval --corrupt``; called by :func:`mercli.evaluation.evaluate`
    with the clean evaluation and a function that scores a change of the table."""

    def __init__(self, config: Config, workspace: Workspace, corruptions: Sequence[Corruption]) -> None:
        self.config = config
        self.workspace = workspace
        self.corruptions = list(corruptions)
        noise_dir = config.eval.noise_dir
        self.noise_dir = Path(noise_dir).expanduser() if noise_dir else None
        if self.noise_dir is not None and any(c.kind == "audio-noise" for c in corruptions):
            noise_files(self.noise_dir)  # a bad corpus is refused before any work
        self._reasoner: ReasonedPriors | None = None

    def __call__(self, evaluation: Evaluation, score: Callable[[TableChange], Evaluation]) -> dict[str, Any]:
        configs = [read_json(path / CONFIG) for path in evaluation.runs]
        manifests = {name: Manifest.from_json(doc) for name, doc in configs[0]["manifests"].items()}
        labels_files = [evaluation.labels_file] if evaluation.labels_file else list(
            dict.fromkeys(Path(str(c["labels"])) for c in configs))
        evaluated = list(dict.fromkeys(evaluation.clip_ids))
        clips = (EvaluatedClips.find(self.config, labels_files, evaluated)
                 if any(c.kind != DROP for c in self.corruptions) else EvaluatedClips({}, {}, {}))
        section = {}
        for corruption in self.corruptions:
            levels, failed = [], []
            for level in corruption.levels:
                outcome = self._level(corruption, level, manifests, clips, evaluation.runs[0])
                figures = score(outcome.change(set(evaluated))).figures
                levels.append({"level": level, **{k: figures[k] for k in ROBUSTNESS_FIGURES}})
                failed += [{"clip": c, "level": level, "reason": r} for c, r in sorted(outcome.failed.items())]
            section[corruption.name] = {"parameter": corruption.parameter,
                                        "clean": {k: evaluation.figures[k] for k in ROBUSTNESS_FIGURES},
                                        "levels": levels, "failed": failed}
        write_curves(evaluation.out, section, ", ".join(path.name for path in evaluation.runs))
        return section

    def _level(self, corruption: Corruption, level: float | None, manifests: dict[str, Manifest],
               clips: EvaluatedClips, run: Path) -> LevelOutcome:
        if corruption.kind == DROP:
            return LevelOutcome({n: None for n, m in manifests.items() if m.modality == corruption.modality})
        reached = self._reached(corruption, manifests, clips)
        if not reached:  # the run has no feature set the corruption could change: the clean figures
            return LevelOutcome({})
        others = _with_audio(clips.files.values()) if corruption.kind == "audio-babble" else []
        recipe = Recipe(corruption, level, self.config.eval.seed, self.noise_dir,
                        self._sample_rate(manifests), tuple(c.clip_id for c in others))
        root = self.workspace.root / SCRATCH / recipe.key
        copies, failed = self._copies(recipe, root / "clips", clips, others)
        if copies:
            failed.update(self._extract(root, [manifests[n] for n in reached], copies, clips.transcripts, run,
                                        recipe.label))
        replaced: dict[str, FeatureSet | None] = {name: FeatureSet(root / "features" / manifests[name].set_name,
                                                                   manifests[name]) for name in reached}
        replaced.update(self._priors(manifests, reached, root, copies, clips, run))
        return LevelOutcome(replaced, failed)

    def _priors(self, manifests: dict[str, Manifest], reached: list[str], root: Path, copies: list[Clip],
                clips: EvaluatedClips, run: Path) -> dict[str, FeatureSet | None]:
        """The run's prior sets for the copies, as ``eval.corrupt_priors`` says (clean: unchanged)."""
        choice = self.config.eval.corrupt_priors
        if choice == "clean":
            return {}
        absent: dict[str, FeatureSet | None] = {n: None for n, m in manifests.items() if is_prior(m.encoder)}
        if choice == "absent" or not absent:
            return absent
        sources = {n: FeatureSet((root / "features" if n in reached else self.workspace.features) / n, m)
                   for n, m in manifests.items() if not is_prior(m.encoder)}
        text = root / "transcripts" if any(manifests[n].modality == "text" for n in reached) else None
        transcripts = TranscriptStore(text or self.workspace.transcripts)
        return {**absent, **self._reasoned(manifests, run).make(root, copies, sources, clips.transcripts, transcripts)}

    def _reasoned(self, manifests: dict[str, Manifest], run: Path) -> "ReasonedPriors":
        """The run's reasoner and trace embedder, built once for every level."""
        if self._reasoner is None:
            self._reasoner = ReasonedPriors(self.config, self.workspace, manifests, run)
        return self._reasoner

    def _sample_rate(self, manifests: dict[str, Manifest]) -> int:
        """The rate the run's audio encoders heard, which noise is mixed at."""
        rates = [m.settings["sample_rate"] for m in manifests.values() if "sample_rate" in m.settings]
        return int(rates[0]) if rates else self.config.extract.sample_rate

    @staticmethod
    def _reached(corruption: Corruption, manifests: dict[str, Manifest], clips: EvaluatedClips) -> list[str]:
        """The run's modality sets a corruption changes: text follows audio where some clip's
        transcript comes from speech recognition rather than its labels file."""
        modalities = {corruption.modality}
        if corruption.modality == "audio" and any(c not in clips.transcripts for c in clips.files):
            modalities.add("text")
        return [n for n, m in manifests.items() if m.modality in modalities and not is_prior(m.encoder)]

    @staticmethod
    def _copies(recipe: Recipe, folder: Path, clips: EvaluatedClips, others: list[Clip]
                ) -> tuple[list[Clip], dict[str, str]]:
        from mercli.console import progress

        copies, failed = [], dict(clips.missing)
        with progress(len(clips.files), f"{recipe.label}: corrupt") as advance:
            for clip in clips.files.values():
                try:
                    copies.append(corrupt_clip(recipe, clip, folder, others))
                except DataError as problem:  # one clip that cannot be corrupted costs only itself
                    failed[clip.clip_id] = str(problem)
                advance()
        return copies, failed

    def _extract(self, root: Path, manifests: list[Manifest], copies: list[Clip], transcripts: dict[str, str],
                 run: Path, label: str) -> dict[str, str]:
        """Extract the copies into ``root`` with the run's encoders (nothing when all is stored)."""
        from mercli.console import progress
        from mercli.extract import extract_clips
        from mercli.predict import extraction_overrides

        reached = [m.set_name for m in manifests]
        sets = [FeatureSet.open(root / "features", m) for m in manifests]
        if all(s.status(c.clip_id) is not None for s in sets for c in copies):
            return {}
        config = self.config.with_overrides(extraction_overrides(manifests), f"{run / 'config.json'}")
        with progress(len(copies), f"{label}: extract") as advance:
            summary = extract_clips(copies, config, Workspace(root), transcripts,
                                    workers=config.extract.workers, observe=lambda outcome: advance())
        made = {entry["name"] for entry in summary.feature_sets}
        if set(reached) - made:
            raise DataError(f"{run}: the installed encoders do not reproduce feature set(s) "
                            f"{', '.join(sorted(set(reached) - made))} the run was trained on")
        return {entry["clip"]: f"re-extraction: {entry['reason']}" for entry in summary.failed}


class ReasonedPriors:
    """``eval.corrupt_priors = "reason"``: the run's reasoner asked about each corrupted copy (its
    trace kept in the workspace's trace store under the copy's content, as ``mer predict`` keeps a new
    clip's), embedded into prior sets beside the copy's features, so each copy is asked once."""

    def __init__(self, config: Config, workspace: Workspace, manifests: dict[str, Manifest], run: Path) -> None:
        from mercli.predict import TracePriors, extraction_overrides
        from mercli.priors import label_conditioned

        self.modality_sets = {n: m for n, m in manifests.items() if not is_prior(m.encoder)}
        self.priors = [m for m in manifests.values() if is_prior(m.encoder) and not label_conditioned(m)]
        config = config.with_overrides(extraction_overrides(list(self.modality_sets.values())), str(run / CONFIG))
        self.ask = TracePriors(config, workspace, self.priors, run) if self.priors else None

    def make(self, root: Path, copies: Sequence[Clip], sources: dict[str, FeatureSet | None],
             label_transcripts: dict[str, str], transcripts: TranscriptStore) -> dict[str, FeatureSet]:
        """The prior sets of the copies in ``root``, the copies' features read from ``sources``."""
        from mercli.chain import EncodedClip

        if self.ask is None:
            return {}
        sets = {m.set_name: FeatureSet.open(root / "features", m) for m in self.priors}
        set_of = {m.encoder: n for n, m in self.modality_sets.items()}
        for clip in copies:
            if all(s.status(clip.clip_id) is not None for s in sets.values()):
                continue
            features = {m.encoder: source.read(clip.clip_id) for n, m in self.modality_sets.items()
                        if (source := sources.get(n)) is not None and source.status(clip.clip_id) is not None}
            transcript = label_transcripts.get(clip.clip_id) or transcripts.latest(clip.clip_id)
            for name, values in self.ask(clip, EncodedClip(clip.clip_id, transcript=transcript,
                                                           features=features), set_of).items():
                sets[name].write(clip.clip_id, values)
        return sets


def _with_audio(clips: Any) -> list[Clip]:
    """The clips whose files have an audio track (babble is mixed from them)."""
    from mercli.media import probe

    found = []
    for clip in clips:
        try:
            if probe(clip.path).has_audio:
                found.append(clip)
        except DataError:
            continue  # the clip's own corruption records why it cannot be read
    return found


def write_curves(folder: Path, section: dict[str, Any], title: str) -> None:
    """One PNG per corruption, ``robustness-<name>.png`` beside metrics.json."""
    for name, curve in section.items():
        write_bytes(folder / f"robustness-{name.replace(':', '-')}.png", robustness_png({name: curve}, title))


def failures(section: dict[str, Any] | None) -> int:
    """How many (clip, level) pairs of the corruptions failed."""
    return sum(len(curve.get("failed", [])) for curve in (section or {}).values())

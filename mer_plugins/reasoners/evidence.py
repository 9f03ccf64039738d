"""Measured evidence per modality: cues read off a clip's extracted features, each citing its numbers.

Shared by the ``local`` reasoner (which answers from these cues alone) and by reasoners that pass
them on to a model. Everything here is a **heuristic**: hand-set rules of thumb from the affective
computing literature (FACS-like action cues, arousal correlates of the voice, a small English word
list), not a trained or validated classifier. Each rule is written down in a table below so that a
prior built from it can be audited.

Every rule speaks in the seven basic emotions of FER2013 (the *concepts* ``angry``, ``disgust``,
``fear``, ``happy``, ``sad``, ``surprise``, ``neutral``). :data:`CLASS_NAMES` carries a concept's
support to the first of its names that is among the target classes:

=========  =====================================================
concept    target class (first of these among ``classes``)
=========  =====================================================
angry      angry, anger
disgust    disgust, disgusted, angry, anger
fear       fear, fearful, worried, anxious
happy      happy, happiness, joy
sad        sad, sadness
surprise   surprise, surprised
neutral    neutral, calm
=========  =====================================================

So with the six MER2024 classes disgust counts as angry and fear as worried; a class name that is
a concept maps to itself; a target class that no concept reaches (``boredom``) gets no support.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from mer_plugins.encoders.face_landmarks import BLENDSHAPE_NAMES, FEATURE_NAMES as LANDMARK_NAMES
from mer_plugins.encoders.fer_expression import CLASSES as FER_CLASSES

if TYPE_CHECKING:
    from mercli.plugin_api import Features

FACE_LANDMARKS = "face-landmarks"
FER_EXPRESSION = "fer-expression"
EGEMAPS = "egemaps"
TEXT_EMBEDDING = "text-embedding"

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "angry": ("angry", "anger"),
    "disgust": ("disgust", "disgusted", "angry", "anger"),
    "fear": ("fear", "fearful", "worried", "anxious"),
    "happy": ("happy", "happiness", "joy"),
    "sad": ("sad", "sadness"),
    "surprise": ("surprise", "surprised"),
    "neutral": ("neutral", "calm"),
}


@dataclass(frozen=True)
class Evidence:
    """What one modality shows. ``cues`` are human-readable and cite their measurement and feature
    set; ``scores`` holds a non-negative support for every target class (empty when absent);
    ``absent`` says why the modality cannot be observed (no face, no audio, no speech, not extracted)."""

    cues: list[str]
    scores: dict[str, float]
    absent: str | None = None


def target_class(concept: str, classes: Sequence[str]) -> str | None:
    """The target class that receives ``concept``'s support, or None when no class fits."""
    return next((name for name in CLASS_NAMES[concept] if name in classes), None)


def measure(features: Mapping[str, "Features"], transcript: str | None,
            classes: Sequence[str]) -> dict[str, Evidence]:
    """Evidence per modality (keys ``visual``, ``acoustic``, ``textual``) from the clip's features,
    keyed by encoder name, and its transcript. Raises ValueError when a feature set does not have
    the layout its encoder documents (a different encoder under a known name)."""
    return {
        "visual": _visual(features, classes),
        "acoustic": _acoustic(features, classes),
        "textual": _textual(features, transcript, classes),
    }


# --- shared helpers ---------------------------------------------------------------------------


def _absent_reason(features: Mapping[str, "Features"], names: Sequence[str]) -> str:
    """The reason the first of ``names`` gives for its absence, else that none was extracted."""
    for name in names:
        if name in features and features[name].absent:
            return features[name].absent
    return f"features not extracted ({', '.join(names)})"


def _evidence(cues: list[str], support: dict[str, float], classes: Sequence[str]) -> Evidence:
    """Concept support carried to the target classes (see the module table)."""
    scores = dict.fromkeys(classes, 0.0)
    for concept, amount in support.items():
        name = target_class(concept, classes)
        if name is not None:
            scores[name] += amount
    if sum(scores.values()) <= 0:
        return Evidence([], {}, f"no measured cue bears on the classes {', '.join(classes)}")
    return Evidence(cues, {name: round(value, 6) for name, value in scores.items()})


def _add(support: dict[str, float], more: Mapping[str, float], scale: float = 1.0) -> None:
    for concept, amount in more.items():
        support[concept] = support.get(concept, 0.0) + amount * scale


def _concept_label(concept: str, classes: Sequence[str]) -> str:
    """``fear`` as it is named in a cue: with the class it counts for when that differs."""
    name = target_class(concept, classes)
    return concept if name in (concept, None) else f"{concept} (counts as {name})"


def _face_rows(features: "Features", name: str, width: int) -> tuple[np.ndarray, int]:
    """The rows of a frame-level set that hold a measurement, and the number of sampled frames."""
    values = np.asarray(features.values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != width:
        raise ValueError(f"{name} features have shape {values.shape}, expected (frames, {width})")
    mask = np.ones(len(values), dtype=bool) if features.mask is None else np.asarray(features.mask, dtype=bool)
    if mask.shape != (len(values),):
        raise ValueError(f"{name} mask has shape {mask.shape} for {len(values)} frames")
    return values[mask], len(values)


# --- visual -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaceAction:
    """A FACS-like action read from MediaPipe blendshapes (left and right averaged): it counts when
    its mean over the face frames reaches ``threshold``, and then adds ``mean * weight`` to each
    concept in ``support``."""

    label: str
    blendshapes: tuple[str, ...]
    threshold: float
    support: Mapping[str, float]


#: Thresholds sit above the resting level measured on real clips (brow lowering and eye squint
#: rest near 0.3-0.5 for some faces, so eye squint is not used). Jaw opening also comes with speech,
#: hence its small weight.
FACE_ACTIONS = (
    FaceAction("smile (AU12)", ("mouthSmileLeft", "mouthSmileRight"), 0.3, {"happy": 0.6}),
    FaceAction("brow lowerer (AU4)", ("browDownLeft", "browDownRight"), 0.4, {"angry": 0.4, "disgust": 0.1}),
    FaceAction("lip press (AU24)", ("mouthPressLeft", "mouthPressRight"), 0.2, {"angry": 0.2}),
    FaceAction("inner brow raiser (AU1)", ("browInnerUp",), 0.3, {"sad": 0.15, "fear": 0.2, "surprise": 0.15}),
    FaceAction("outer brow raiser (AU2)", ("browOuterUpLeft", "browOuterUpRight"), 0.3, {"surprise": 0.3, "fear": 0.1}),
    FaceAction("eye widening (AU5)", ("eyeWideLeft", "eyeWideRight"), 0.15, {"surprise": 0.3, "fear": 0.3}),
    FaceAction("jaw drop (AU26)", ("jawOpen",), 0.35, {"surprise": 0.15}),
    FaceAction("mouth frown (AU15)", ("mouthFrownLeft", "mouthFrownRight"), 0.15, {"sad": 0.5}),
    FaceAction("nose wrinkler (AU9)", ("noseSneerLeft", "noseSneerRight"), 0.2, {"disgust": 0.5}),
    FaceAction("upper lip raiser (AU10)", ("mouthUpperUpLeft", "mouthUpperUpRight"), 0.25, {"disgust": 0.2}),
    FaceAction("lip stretcher (AU20)", ("mouthStretchLeft", "mouthStretchRight"), 0.2, {"fear": 0.4}),
)
#: Support for neutral from a face on which no action reaches its threshold.
NO_ACTION_SUPPORT = {"neutral": 0.3}
#: A FER class is quoted when its mean probability reaches this (the top class always is).
FER_QUOTE_LEVEL = 0.15
#: Head pose spread (largest of the yaw, pitch and roll standard deviations, in degrees) under
#: which the head counts as held still (a little support for neutral), and over which the head
#: moves a lot (or the shot changes); movement itself supports no class.
HEAD_STILL_DEGREES = 2.0
HEAD_LIVELY_DEGREES = 8.0
HEAD_STILL_SUPPORT = {"neutral": 0.1}
_POSE_START = LANDMARK_NAMES.index("head_yaw")


def _visual(features: Mapping[str, "Features"], classes: Sequence[str]) -> Evidence:
    """FER expression probabilities (support: their means) plus blendshape actions and head pose."""
    names = (FER_EXPRESSION, FACE_LANDMARKS)
    observed = {name: features[name] for name in names if name in features and features[name].values is not None}
    if not observed:
        return Evidence([], {}, _absent_reason(features, names))
    cues: list[str] = []
    support: dict[str, float] = {}
    if FER_EXPRESSION in observed:
        _fer_expression(observed[FER_EXPRESSION], classes, cues, support)
    if FACE_LANDMARKS in observed:
        _face_landmarks(observed[FACE_LANDMARKS], cues, support)
    if not cues:
        return Evidence([], {}, "no face in any frame")
    return _evidence(cues, support, classes)


def _fer_expression(features: "Features", classes: Sequence[str], cues: list[str],
                    support: dict[str, float]) -> None:
    rows, frames = _face_rows(features, FER_EXPRESSION, len(FER_CLASSES))
    if not len(rows):
        return
    means, peaks = rows.mean(axis=0), rows.max(axis=0)
    dominant = np.bincount(rows.argmax(axis=1), minlength=len(FER_CLASSES))
    _add(support, dict(zip(FER_CLASSES, means.tolist())))
    order = sorted(range(len(FER_CLASSES)), key=lambda i: (-means[i], i))
    for rank, index in enumerate(order):
        if rank and means[index] < FER_QUOTE_LEVEL:
            break
        cues.append(f"FER expression {_concept_label(FER_CLASSES[index], classes)} {means[index]:.2f} mean, "
                    f"{peaks[index]:.2f} peak, dominant in {dominant[index]} of {len(rows)} face frames "
                    f"({frames} sampled) [{FER_EXPRESSION}]")


def _face_landmarks(features: "Features", cues: list[str], support: dict[str, float]) -> None:
    rows, frames = _face_rows(features, FACE_LANDMARKS, len(LANDMARK_NAMES))
    if not len(rows):
        return
    where = f"over {len(rows)} of {frames} frames with a face [{FACE_LANDMARKS}]"
    means = []
    for action in FACE_ACTIONS:
        columns = [BLENDSHAPE_NAMES.index(name) for name in action.blendshapes]
        per_frame = rows[:, columns].mean(axis=1)
        mean = float(per_frame.mean())
        means.append(mean)
        if mean >= action.threshold:
            _add(support, action.support, scale=mean)
            cues.append(f"{action.label}: {_blendshape_label(action.blendshapes)} {mean:.2f} mean, "
                        f"{per_frame.max():.2f} peak {where}")
    if all(mean < action.threshold for mean, action in zip(means, FACE_ACTIONS)):
        strongest = int(np.argmax(np.array(means) / [action.threshold for action in FACE_ACTIONS]))
        mean, action = means[strongest], FACE_ACTIONS[strongest]
        _add(support, NO_ACTION_SUPPORT)
        cues.append(f"no facial action reaches its threshold (strongest: {action.label} {mean:.2f} mean, "
                    f"threshold {action.threshold:.2f}) {where}")
    if len(rows) >= 2:
        spread = np.degrees(rows[:, _POSE_START:_POSE_START + 3].std(axis=0))
        largest = float(spread.max())
        if largest < HEAD_STILL_DEGREES:
            _add(support, HEAD_STILL_SUPPORT)
            verdict = "head held still"
        else:
            verdict = "lively head movement or a cut" if largest > HEAD_LIVELY_DEGREES else "some head movement"
        cues.append(f"{verdict}: yaw/pitch/roll standard deviation {spread[0]:.1f}/{spread[1]:.1f}/"
                    f"{spread[2]:.1f} degrees {where}")


def _blendshape_label(names: tuple[str, ...]) -> str:
    """``mouthSmileLeft/Right`` for a left-right pair, the name itself otherwise."""
    if len(names) == 2 and names[0].endswith("Left") and names[1] == names[0][:-4] + "Right":
        return f"{names[0]}/Right"
    return "/".join(names)


# --- acoustic ---------------------------------------------------------------------------------

#: Positions in the 88 eGeMAPSv02 functionals (openSMILE's order; a test checks them against it).
EGEMAPS_INDEX = {
    "F0semitoneFrom27.5Hz_sma3nz_amean": 0,
    "F0semitoneFrom27.5Hz_sma3nz_stddevNorm": 1,
    "F0semitoneFrom27.5Hz_sma3nz_pctlrange0-2": 5,
    "loudness_sma3_amean": 10,
    "loudness_sma3_stddevNorm": 11,
    "jitterLocal_sma3nz_amean": 30,
    "shimmerLocaldB_sma3nz_amean": 32,
    "HNRdBACF_sma3nz_amean": 34,
    "alphaRatioV_sma3nz_amean": 58,
    "hammarbergIndexV_sma3nz_amean": 60,
    "VoicedSegmentsPerSec": 82,
    "MeanVoicedSegmentLengthSec": 83,
}
EGEMAPS_DIM = 88


@dataclass(frozen=True)
class ArousalCue:
    """One correlate of vocal arousal: ``feature`` at or below ``low`` reads -1 (calm), at or above
    ``high`` +1 (aroused), linear between; ``voiced`` ones are unmeasured when no frame is voiced."""

    label: str
    feature: str
    low: float
    high: float
    weight: float
    voiced: bool = True

    def position(self, value: float) -> float:
        middle, half = (self.low + self.high) / 2, (self.high - self.low) / 2
        return float(np.clip((value - middle) / half, -1.0, 1.0))


#: Rough, sex-independent thresholds set by eye on acted speech (EmoDB, CREMA-D): loudness depends
#: on the recording level and pitch level on the speaker's sex, so treat the arousal estimate as a
#: coarse hint. Pitch range is the 20th-80th percentile range in semitones; the alpha ratio is the
#: spectral tilt of voiced frames (flatter, i.e. higher, with vocal effort).
AROUSAL_CUES = (
    ArousalCue("loudness", "loudness_sma3_amean", 0.2, 1.0, 1.0, voiced=False),
    ArousalCue("loudness variation", "loudness_sma3_stddevNorm", 0.5, 1.1, 0.5, voiced=False),
    ArousalCue("pitch range", "F0semitoneFrom27.5Hz_sma3nz_pctlrange0-2", 2.0, 8.0, 1.0),
    ArousalCue("pitch level", "F0semitoneFrom27.5Hz_sma3nz_amean", 28.0, 42.0, 0.5),
    ArousalCue("spectral tilt", "alphaRatioV_sma3nz_amean", -20.0, -6.0, 1.0),
    ArousalCue("voiced segment rate", "VoicedSegmentsPerSec", 1.5, 4.0, 0.5),
)
#: How arousal (a in [-1, 1]; a+ = max(a, 0), a- = max(-a, 0)), tension (spectral-tilt position,
#: t+ = max(t, 0)) and pitch liveliness (pitch-range position v; v+, v-) become support:
#: angry a+ (0.5 + t+); happy a+ (0.5 + v+); surprise 0.5 a+ v+; fear 0.3 a+;
#: sad a- (0.5 + v-); neutral 0.6 (1 - |a|). Voice quality (jitter, shimmer, HNR) is quoted as a
#: cue only: its link to discrete emotions is too weak for a rule.
_ROUGH = "(rough, sex-independent thresholds)"


def _acoustic(features: Mapping[str, "Features"], classes: Sequence[str]) -> Evidence:
    egemaps = features.get(EGEMAPS)
    if egemaps is None or egemaps.values is None:
        return Evidence([], {}, _absent_reason(features, (EGEMAPS,)))
    values = np.asarray(egemaps.values, dtype=np.float64)
    if values.shape != (EGEMAPS_DIM,):
        raise ValueError(f"{EGEMAPS} features have shape {values.shape}, expected ({EGEMAPS_DIM},)")
    value = {name: float(values[index]) for name, index in EGEMAPS_INDEX.items()}
    voiced = value["F0semitoneFrom27.5Hz_sma3nz_amean"] > 0 and value["VoicedSegmentsPerSec"] > 0
    cues = _acoustic_cues(value, voiced)

    usable = [cue for cue in AROUSAL_CUES if voiced or not cue.voiced]
    positions = {cue.feature: cue.position(value[cue.feature]) for cue in usable}
    arousal = sum(cue.weight * positions[cue.feature] for cue in usable) / sum(cue.weight for cue in usable)
    tension = positions.get("alphaRatioV_sma3nz_amean", 0.0)
    lively = positions.get("F0semitoneFrom27.5Hz_sma3nz_pctlrange0-2", 0.0)
    high, low = max(arousal, 0.0), max(-arousal, 0.0)
    support = {
        "angry": high * (0.5 + max(tension, 0.0)),
        "happy": high * (0.5 + max(lively, 0.0)),
        "surprise": 0.5 * high * max(lively, 0.0),
        "fear": 0.3 * high,
        "sad": low * (0.5 + max(-lively, 0.0)),
        "neutral": 0.6 * (1.0 - abs(arousal)),
    }
    level = "high" if arousal > 0.25 else "low" if arousal < -0.25 else "moderate"
    cues.append(f"{level} vocal arousal {arousal:+.2f} on a -1..1 scale from "
                f"{', '.join(cue.label for cue in usable)} {_ROUGH} [{EGEMAPS}]")
    return _evidence(cues, support, classes)


def _acoustic_cues(value: Mapping[str, float], voiced: bool) -> list[str]:
    """The measurements behind the arousal estimate, each with a plain-word reading."""
    loudness = value["loudness_sma3_amean"]
    cues = [f"loudness: {_reading(loudness, 0.3, 0.9, 'quiet', 'loud')}, {loudness:.2f} sone mean, "
            f"variation {value['loudness_sma3_stddevNorm']:.2f} (stddevNorm) [{EGEMAPS}]"]
    if not voiced:
        cues.append(f"no voiced frames: pitch, spectral tilt and voice quality unmeasured [{EGEMAPS}]")
        return cues
    semitones = value["F0semitoneFrom27.5Hz_sma3nz_amean"]
    variation = value["F0semitoneFrom27.5Hz_sma3nz_stddevNorm"]
    spread = value["F0semitoneFrom27.5Hz_sma3nz_pctlrange0-2"]
    alpha, hammarberg = value["alphaRatioV_sma3nz_amean"], value["hammarbergIndexV_sma3nz_amean"]
    jitter, shimmer = value["jitterLocal_sma3nz_amean"], value["shimmerLocaldB_sma3nz_amean"]
    cues += [
        f"pitch: {_reading(spread, 3.0, 7.0, 'flat', 'lively')}, {semitones:.1f} semitones above 27.5 Hz mean "
        f"(about {27.5 * 2 ** (semitones / 12):.0f} Hz), variation {variation:.2f} (stddevNorm), "
        f"20-80th percentile range {spread:.1f} semitones [{EGEMAPS}]",
        f"spectral tilt: {_reading(alpha, -16.0, -9.0, 'soft', 'tense')} voice, alpha ratio {alpha:.1f} dB, "
        f"Hammarberg index {hammarberg:.1f} dB [{EGEMAPS}]",
        f"tempo: {value['VoicedSegmentsPerSec']:.2f} voiced segments per second, "
        f"{value['MeanVoicedSegmentLengthSec']:.2f} s mean length [{EGEMAPS}]",
        f"voice quality: jitter {jitter:.3f}, shimmer {shimmer:.2f} dB, "
        f"harmonics-to-noise ratio {value['HNRdBACF_sma3nz_amean']:.1f} dB [{EGEMAPS}]",
    ]
    return cues


def _reading(value: float, low: float, high: float, below: str, above: str) -> str:
    return below if value < low else above if value > high else "moderate"


# --- textual ----------------------------------------------------------------------------------

#: A small English emotion lexicon (exact word forms, no stemming); neutral has no words of its
#: own: a transcript with words but none of these supports neutral.
LEXICON: dict[str, frozenset[str]] = {
    "happy": frozenset("happy happier glad great wonderful love loved lovely joy delighted excited fantastic "
                       "awesome enjoy enjoyed laugh laughing fun yay pleased cheerful thrilled".split()),
    "angry": frozenset("angry mad furious hate hated annoyed irritated outraged damn stupid ridiculous rage "
                       "pissed".split()),
    "sad": frozenset("sad unhappy sorry miss missed cry crying lonely depressed heartbroken tears grief hurt "
                     "upset miserable".split()),
    "fear": frozenset("afraid scared worried worry nervous anxious fear frightened terrified panic "
                      "dread".split()),
    "surprise": frozenset("surprised surprise wow unbelievable whoa shocked unexpected suddenly "
                          "incredible".split()),
    "disgust": frozenset("disgusting disgusted gross nasty yuck revolting sickening".split()),
}
#: A word within NEGATION_WINDOW words after one of these (same clause) is negated: a negated
#: happy word counts NEGATED_SUPPORT towards sad ("not happy"), any other negated emotion word
#: NEGATED_SUPPORT towards neutral ("not angry").
NEGATORS = frozenset("not no never nothing hardly without neither nor cannot".split())
NEGATION_WINDOW = 3
NEGATED_SUPPORT = 0.5
#: Support for neutral from a transcript with words but no emotion word.
NO_EMOTION_SUPPORT = 0.2
_TOKENS = re.compile(r"[a-z]+(?:'[a-z]+)*|[.!?,;:]")
_CONCEPT_OF = {word: concept for concept, words in LEXICON.items() for word in words}


def _textual(features: Mapping[str, "Features"], transcript: str | None, classes: Sequence[str]) -> Evidence:
    if transcript is None:
        reason = features[TEXT_EMBEDDING].absent if TEXT_EMBEDDING in features else None
        return Evidence([], {}, reason or "no transcript")
    letters = [char for char in transcript if char.isalpha()]
    if not letters:
        return Evidence([], {}, "no speech")
    if sum(char.isascii() for char in letters) < len(letters) / 2:
        return Evidence([], {}, "transcript is not in English (the local lexicon covers English words only)")
    tokens = _TOKENS.findall(transcript.lower().replace("\u2019", "'"))
    words = sum(token[0].isalpha() for token in tokens)
    found: dict[str, list[str]] = {}
    negated: list[tuple[str, str]] = []  # (quoted phrase, concept it supports)
    for position, token in enumerate(tokens):
        concept = _CONCEPT_OF.get(token)
        if concept is None:
            continue
        start = _negation_start(tokens, position)
        if start is None:
            found.setdefault(concept, []).append(token)
        else:
            negated.append((" ".join(tokens[start:position + 1]), "sad" if concept == "happy" else "neutral"))
    support: dict[str, float] = {}
    cues = []
    for concept, matches in found.items():
        _add(support, {concept: float(len(matches))})
        quoted = ", ".join(f"'{word}'" for word in matches)
        cues.append(f"{len(matches)} {_concept_label(concept, classes)} word(s) among {words} words: "
                    f"{quoted} [transcript]")
    for phrase, concept in negated:
        _add(support, {concept: NEGATED_SUPPORT})
        cues.append(f"negated '{phrase}': {NEGATED_SUPPORT} towards {_concept_label(concept, classes)} [transcript]")
    if not cues:
        support = {"neutral": NO_EMOTION_SUPPORT}
        cues = [f"no emotion words among {words} words [transcript]"]
    return _evidence(cues, support, classes)


def _negation_start(tokens: list[str], position: int) -> int | None:
    """Where the negating word among the NEGATION_WINDOW words before ``position`` stands (None
    when there is none); punctuation ends the search."""
    for index in range(position - 1, max(-1, position - 1 - NEGATION_WINDOW), -1):
        token = tokens[index]
        if not token[0].isalpha():
            return None
        if token in NEGATORS or token.endswith("n't"):
            return index
    return None

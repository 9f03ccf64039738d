"""The ``local`` reasoner and the evidence it reads: rules on hand-built features, the trace it
writes, and real clips of ../shared/data through the real encoders."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mer_plugins.encoders.face_landmarks import FEATURE_NAMES as LANDMARK_NAMES
from mer_plugins.encoders.fer_expression import CLASSES as FER_CLASSES
from mer_plugins.reasoners.evidence import EGEMAPS_DIM, EGEMAPS_INDEX, measure, target_class
from mer_plugins.reasoners.local import RULES_VERSION, LocalReasoner
from mercli.contracts import AnswerRejected, Features, ReasoningRequest
from mercli.prompts import FIRST_VERSION, PROMPT_VERSION
from mercli.trace_model import answer_schema
from mercli.traces import validate_trace

CLASSES = ("neutral", "angry", "happy", "sad", "worried", "surprise")


# --- building features by hand ----------------------------------------------------------------


def landmarks(frames: int = 6, mask: np.ndarray | None = None, **blendshapes: float) -> Features:
    """face-landmarks rows with the named blendshapes set in every frame (the rest zero)."""
    values = np.zeros((frames, len(LANDMARK_NAMES)), dtype=np.float32)
    for name, value in blendshapes.items():
        values[:, LANDMARK_NAMES.index(name)] = value
    return Features(values, np.ones(frames, dtype=bool) if mask is None else mask)


def fer(frames: int = 6, **probabilities: float) -> Features:
    """fer-expression rows: the named probabilities, the rest of the mass on neutral."""
    row = np.zeros(len(FER_CLASSES), dtype=np.float32)
    for name, value in probabilities.items():
        row[FER_CLASSES.index(name)] = value
    row[FER_CLASSES.index("neutral")] += 1.0 - row.sum()
    return Features(np.tile(row, (frames, 1)), np.ones(frames, dtype=bool))


def egemaps(**values: float) -> Features:
    """An eGeMAPS vector of a moderate voice, with the named functionals overridden."""
    moderate = {
        "F0semitoneFrom27.5Hz_sma3nz_amean": 35.0, "F0semitoneFrom27.5Hz_sma3nz_stddevNorm": 0.1,
        "F0semitoneFrom27.5Hz_sma3nz_pctlrange0-2": 5.0, "loudness_sma3_amean": 0.6,
        "loudness_sma3_stddevNorm": 0.8, "jitterLocal_sma3nz_amean": 0.03, "shimmerLocaldB_sma3nz_amean": 1.3,
        "HNRdBACF_sma3nz_amean": 6.0, "alphaRatioV_sma3nz_amean": -13.0, "hammarbergIndexV_sma3nz_amean": 22.0,
        "VoicedSegmentsPerSec": 2.75, "MeanVoicedSegmentLengthSec": 0.15,
    }
    vector = np.zeros(EGEMAPS_DIM, dtype=np.float32)
    for name, value in {**moderate, **values}.items():
        vector[EGEMAPS_INDEX[name]] = value
    return Features(vector)


LOUD_LIVELY_TENSE = dict(loudness_sma3_amean=1.5, loudness_sma3_stddevNorm=1.3, VoicedSegmentsPerSec=4.5,
                         alphaRatioV_sma3nz_amean=-4.0, **{"F0semitoneFrom27.5Hz_sma3nz_pctlrange0-2": 10.0,
                                                           "F0semitoneFrom27.5Hz_sma3nz_amean": 44.0})
QUIET_FLAT = dict(loudness_sma3_amean=0.1, loudness_sma3_stddevNorm=0.4, VoicedSegmentsPerSec=1.0,
                  alphaRatioV_sma3nz_amean=-24.0, **{"F0semitoneFrom27.5Hz_sma3nz_pctlrange0-2": 1.0,
                                                     "F0semitoneFrom27.5Hz_sma3nz_amean": 24.0})


def request(features: dict[str, Features], transcript: str | None = None, classes=CLASSES,
            label: str | None = None) -> ReasoningRequest:
    return ReasoningRequest(clip_id="clip", path=Path("clip.mp4"), prompt="unused",
                            answer_schema=answer_schema(classes), classes=tuple(classes), transcript=transcript,
                            label=label, features=features)


def answer(features: dict[str, Features], transcript: str | None = None, classes=CLASSES) -> dict[str, Any]:
    return LocalReasoner().reason(request(features, transcript, classes)).answer


NO_FACE = Features(None, absent="no face in any frame")
NO_AUDIO = Features(None, absent="no audio track")


def full_trace(result: dict[str, Any]) -> dict[str, Any]:
    """What the core stores: the answer plus the clip id and provenance."""
    return {"clip": "clip", **result, "provenance": {
        "reasoner": "local", "model": "evidence-rules", "prompt_version": RULES_VERSION, "label_conditioned": False,
        "usage": {"input_tokens": 0, "output_tokens": 0}, "cost_usd": 0.0, "content_hash": "0" * 64,
        "created": "2025-01-01T00:00:00+00:00"}}


def schema_problems(value: Any, schema: dict[str, Any], where: str = "answer") -> list[str]:
    """The JSON-schema keywords :func:`mercli.trace_model.answer_schema` uses, checked by hand."""
    if "anyOf" in schema:
        return [] if any(not schema_problems(value, option, where) for option in schema["anyOf"]) else [where]
    kinds = {"object": dict, "array": list, "string": str, "number": (int, float), "null": type(None)}
    if not isinstance(value, kinds[schema["type"]]) or isinstance(value, bool):
        return [f"{where}: not {schema['type']}"]
    problems = []
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: {value!r} not in {schema['enum']}")
    if schema["type"] == "number" and not schema.get("minimum", 0) <= value <= schema.get("maximum", 1):
        problems.append(f"{where}: {value} out of range")
    if schema["type"] == "array":
        problems += [p for i, item in enumerate(value) for p in schema_problems(item, schema["items"], f"{where}[{i}]")]
    if schema["type"] == "object":
        if sorted(value) != sorted(schema["required"]) or set(value) - set(schema["properties"]):
            problems.append(f"{where}: keys {sorted(value)}, expected {sorted(schema['required'])}")
        problems += [p for key in value if key in schema["properties"]
                     for p in schema_problems(value[key], schema["properties"][key], f"{where}.{key}")]
    return problems


def assert_valid(result: dict[str, Any], classes=CLASSES) -> None:
    assert schema_problems(result, answer_schema(classes)) == []
    assert validate_trace(full_trace(result)) == []


# --- the reasoner's contract ------------------------------------------------------------------


def test_declares_an_offline_reasoner_with_its_own_rules_version():
    reasoner = LocalReasoner()
    assert (reasoner.name, reasoner.needs_network, reasoner.model) == ("local", False, "evidence-rules")
    assert reasoner.trace_version(FIRST_VERSION) == RULES_VERSION == "rules-1"  # the folder of version-1 traces
    assert reasoner.trace_version(PROMPT_VERSION) == "rules-1-mer-trace-v2"
    assert LocalReasoner(model="my-rules").model == "my-rules"


def test_importing_the_reasoner_loads_no_numerical_library():
    """``mer --help`` imports every plug-in module."""
    code = "import sys, mer_plugins.reasoners.local; print(sorted(m for m in ('numpy', 'torch') if m in sys.modules))"
    answer_ = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert answer_.stdout.strip() == "[]"


def test_usage_is_zero_and_the_trace_is_valid():
    reply = LocalReasoner().reason(request({"fer-expression": fer(happy=0.8), "egemaps": egemaps()},
                                           "What a lovely day"))
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (0, 0)
    assert_valid(reply.answer)


def test_same_input_gives_an_identical_answer():
    features = {"face-landmarks": landmarks(browInnerUp=0.5), "fer-expression": fer(sad=0.5, fear=0.2),
                "egemaps": egemaps(**QUIET_FLAT)}
    first = answer(features, "I miss her, I'm not happy")
    second = LocalReasoner().reason(request(features, "I miss her, I'm not happy")).answer
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def test_the_label_never_changes_the_answer():
    features = {"fer-expression": fer(angry=0.6), "egemaps": egemaps()}
    plain = LocalReasoner().reason(request(features, "fine")).answer
    for label in ("happy", "sad", "surprise"):
        assert LocalReasoner().reason(request(features, "fine", label=label)).answer == plain


# --- visual -----------------------------------------------------------------------------------


def test_a_smiling_face_is_happy_with_the_measurements_cited():
    result = answer({"face-landmarks": landmarks(mouthSmileLeft=0.7, mouthSmileRight=0.9),
                     "fer-expression": fer(happy=0.8)})
    visual = result["visual"]
    assert visual["emotion"] == "happy" and 0 < visual["confidence"] <= 1 and visual["absent"] is None
    assert "smile (AU12): mouthSmileLeft/Right 0.80 mean, 0.80 peak over 6 of 6 frames with a face [face-landmarks]" \
        in visual["cues"]
    assert any(cue.startswith("FER expression happy 0.80 mean, 0.80 peak, dominant in 6 of 6")
               for cue in visual["cues"])
    assert result["overall"]["emotion"] == "happy"


def test_lowered_brows_and_pressed_lips_are_angry_from_blendshapes_alone():
    result = answer({"face-landmarks": landmarks(browDownLeft=0.7, browDownRight=0.7, mouthPressLeft=0.4,
                                                 mouthPressRight=0.4)})
    assert result["visual"]["emotion"] == "angry"
    assert any(cue.startswith("brow lowerer (AU4): browDownLeft/Right 0.70") for cue in result["visual"]["cues"])
    assert any(cue.startswith("lip press (AU24)") for cue in result["visual"]["cues"])


def test_a_frown_is_sad_and_a_still_face_without_actions_is_neutral():
    assert answer({"face-landmarks": landmarks(mouthFrownLeft=0.6, mouthFrownRight=0.6)})["visual"]["emotion"] == "sad"
    still = answer({"face-landmarks": landmarks(mouthSmileLeft=0.1, mouthSmileRight=0.1)})["visual"]
    assert still["emotion"] == "neutral"
    assert any(cue.startswith("no facial action reaches its threshold (strongest: smile (AU12) 0.10 mean")
               for cue in still["cues"])
    assert any(cue.startswith("head held still: yaw/pitch/roll standard deviation 0.0/0.0/0.0")
               for cue in still["cues"])


def test_masked_frames_are_ignored():
    mask = np.array([True, True, False, False])
    features = landmarks(4, mask, mouthFrownLeft=0.6, mouthFrownRight=0.6)
    features.values[~mask, LANDMARK_NAMES.index("mouthSmileLeft")] = 1.0  # garbage where there is no face
    features.values[~mask, LANDMARK_NAMES.index("mouthSmileRight")] = 1.0
    visual = answer({"face-landmarks": features})["visual"]
    assert visual["emotion"] == "sad"
    assert not any("smile" in cue for cue in visual["cues"])
    assert any("over 2 of 4 frames with a face" in cue for cue in visual["cues"])


def test_fer_classes_map_onto_the_target_classes():
    assert target_class("fear", CLASSES) == "worried"
    assert target_class("disgust", CLASSES) == "angry"
    assert target_class("disgust", (*CLASSES, "disgust")) == "disgust"
    assert target_class("happy", ("anger", "happiness")) == "happiness"
    assert target_class("surprise", ("neutral", "sad")) is None

    scores = measure({"fer-expression": fer(fear=0.9)}, None, CLASSES)["visual"].scores
    assert max(scores, key=scores.get) == "worried" and list(scores) == list(CLASSES)
    visual = answer({"fer-expression": fer(disgust=0.9)})["visual"]
    assert visual["emotion"] == "angry"
    assert any(cue.startswith("FER expression disgust (counts as angry) 0.90") for cue in visual["cues"])
    with_disgust = (*CLASSES, "disgust")
    assert answer({"fer-expression": fer(disgust=0.9)}, classes=with_disgust)["visual"]["emotion"] == "disgust"


def test_a_class_no_rule_reaches_gets_no_support():
    scores = measure({"fer-expression": fer(happy=0.6)}, None, ("neutral", "happy", "boredom"))["visual"].scores
    assert scores["boredom"] == 0 and scores["happy"] > scores["neutral"] > 0
    nothing = measure({"fer-expression": fer(happy=0.5)}, None, ("boredom", "contempt"))["visual"]
    assert nothing.absent is not None and nothing.scores == {} and nothing.cues == []


# --- acoustic ---------------------------------------------------------------------------------


def test_a_loud_lively_tense_voice_is_high_arousal():
    acoustic = answer({"egemaps": egemaps(**LOUD_LIVELY_TENSE)})["acoustic"]
    assert acoustic["emotion"] == "angry"
    assert any(cue.startswith("high vocal arousal +1.00") for cue in acoustic["cues"])
    assert "loudness: loud, 1.50 sone mean, variation 1.30 (stddevNorm) [egemaps]" in acoustic["cues"]
    assert any(cue.startswith("spectral tilt: tense voice, alpha ratio -4.0 dB") for cue in acoustic["cues"])


def test_a_loud_lively_relaxed_voice_supports_a_positive_high_arousal_class():
    voice = {**LOUD_LIVELY_TENSE, "alphaRatioV_sma3nz_amean": -13.0}
    assert answer({"egemaps": egemaps(**voice)})["acoustic"]["emotion"] in ("happy", "surprise")


def test_a_quiet_flat_voice_is_sad_and_a_moderate_one_neutral():
    quiet = answer({"egemaps": egemaps(**QUIET_FLAT)})["acoustic"]
    assert quiet["emotion"] == "sad"
    assert any(cue.startswith("low vocal arousal -1.00") for cue in quiet["cues"])
    assert any(cue.startswith("pitch: flat, 24.0 semitones above 27.5 Hz mean (about 110 Hz)") for cue in quiet["cues"])
    assert answer({"egemaps": egemaps()})["acoustic"]["emotion"] == "neutral"


def test_without_voiced_frames_only_loudness_counts():
    acoustic = answer({"egemaps": egemaps(**{"F0semitoneFrom27.5Hz_sma3nz_amean": 0.0, "VoicedSegmentsPerSec": 0.0,
                                             "loudness_sma3_amean": 0.1, "loudness_sma3_stddevNorm": 0.4})})["acoustic"]
    assert acoustic["emotion"] == "sad"
    assert "no voiced frames: pitch, spectral tilt and voice quality unmeasured [egemaps]" in acoustic["cues"]
    assert not any(cue.startswith("pitch:") for cue in acoustic["cues"])
    assert any("from loudness, loudness variation (rough" in cue for cue in acoustic["cues"])


def test_egemaps_positions_match_opensmile():
    opensmile = pytest.importorskip("opensmile")
    names = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                            feature_level=opensmile.FeatureLevel.Functionals).feature_names
    assert len(names) == EGEMAPS_DIM
    assert {name: names.index(name) for name in EGEMAPS_INDEX} == EGEMAPS_INDEX


# --- textual ----------------------------------------------------------------------------------


def text(transcript: str | None, features: dict[str, Features] | None = None, classes=CLASSES) -> dict[str, Any]:
    return answer({"egemaps": egemaps(), **(features or {})}, transcript, classes)["textual"]


def test_emotion_words_are_quoted_and_counted():
    textual = text("I'm so happy, and I love it!")
    assert textual["emotion"] == "happy"
    assert textual["cues"] == ["2 happy word(s) among 7 words: 'happy', 'love' [transcript]"]
    assert text("I'm scared and worried")["cues"] == ["2 fear (counts as worried) word(s) among 4 words: "
                                                      "'scared', 'worried' [transcript]"]


def test_negation_turns_happy_words_to_sad_and_negative_words_to_neutral():
    not_happy = text("I am not happy about this")
    assert not_happy["emotion"] == "sad"
    assert not_happy["cues"] == ["negated 'not happy': 0.5 towards sad [transcript]"]
    assert text("I wasn't really angry")["cues"] == ["negated 'wasn't really angry': 0.5 towards neutral [transcript]"]
    assert text("I wasn\u2019t really angry")["emotion"] == "neutral"
    assert text("No. I am happy")["emotion"] == "happy"  # punctuation ends the negation
    assert text("not that I would ever be happy")["emotion"] == "happy"  # too far from the negator


def test_words_without_emotion_support_neutral_and_equal_support_goes_to_the_earlier_class():
    plain = text("Don't forget a jacket.")
    assert plain["emotion"] == "neutral" and plain["cues"] == ["no emotion words among 4 words [transcript]"]
    assert text("happy but angry")["emotion"] == "angry"  # angry comes before happy in CLASSES


def test_a_transcript_without_words_or_english_is_absent():
    assert text("")["absent"] == "no speech"
    assert text("  ... ")["absent"] == "no speech"
    assert text("我今天很高兴")["absent"].startswith("transcript is not in English")
    assert text(None)["absent"] == "no transcript"
    silent = text(None, {"text-embedding": Features(None, absent="silent audio track")})
    assert silent == {"cues": [], "emotion": None, "confidence": None, "absent": "silent audio track", "scores": None}


# --- absent modalities and the overall verdict ------------------------------------------------


def test_absent_modalities_carry_their_reason_and_nothing_else():
    result = answer({"face-landmarks": NO_FACE, "fer-expression": NO_FACE, "egemaps": egemaps(**QUIET_FLAT)})
    assert result["visual"] == {"cues": [], "emotion": None, "confidence": None, "absent": "no face in any frame",
                                "scores": None}
    assert result["textual"]["absent"] == "no transcript"
    assert result["overall"]["emotion"] == result["acoustic"]["emotion"] == "sad"
    assert result["overall"]["summary"].startswith("Only the acoustic cues can be judged, and they suggest sad")
    assert "not observable: visual (no face in any frame), textual (no transcript)" in result["overall"]["summary"]
    assert_valid(result)

    unextracted = answer({"fer-expression": fer(happy=0.9)}, "hello there")
    assert unextracted["acoustic"]["absent"] == "features not extracted (egemaps)"
    unseen = answer({"egemaps": egemaps()})["visual"]
    assert unseen["absent"] == "features not extracted (fer-expression, face-landmarks)"


def test_no_features_or_nothing_observable_is_rejected():
    with pytest.raises(AnswerRejected, match="^no extracted features for this clip: run mer extract first$"):
        answer({}, "I am so happy")
    with pytest.raises(AnswerRejected, match=r"^nothing observable in this clip \(visual: no face in any frame; "
                                             r"acoustic: no audio track; textual: no transcript\)$"):
        answer({"face-landmarks": NO_FACE, "egemaps": NO_AUDIO})


def test_features_of_another_layout_are_rejected_in_one_line():
    with pytest.raises(AnswerRejected, match=r"fer-expression features have shape \(4, 5\), expected \(frames, 7\)"):
        answer({"fer-expression": Features(np.zeros((4, 5)), np.ones(4, dtype=bool))})
    with pytest.raises(AnswerRejected, match=r"egemaps features have shape \(87,\), expected \(88,\)"):
        answer({"egemaps": Features(np.zeros(87))})


def test_agreeing_modalities_are_summed_and_disagreement_lowers_the_overall_confidence():
    happy_face = {"face-landmarks": landmarks(mouthSmileLeft=0.8, mouthSmileRight=0.8),
                  "fer-expression": fer(happy=0.9)}
    agree = answer({**happy_face, "egemaps": egemaps(**{**LOUD_LIVELY_TENSE, "alphaRatioV_sma3nz_amean": -13.0})},
                   "I love this, it's wonderful")
    assert [agree[k]["emotion"] for k in ("visual", "acoustic", "textual", "overall")] == ["happy"] * 4
    mean = sum(agree[k]["confidence"] for k in ("visual", "acoustic", "textual")) / 3
    assert agree["overall"]["confidence"] == pytest.approx(mean, abs=1e-3)
    assert agree["overall"]["summary"].startswith("The visual, acoustic and textual cues agree on happy.")

    disagree = answer({**happy_face, "egemaps": egemaps(**QUIET_FLAT)}, "I am so sad, I miss them")
    assert (disagree["visual"]["emotion"], disagree["acoustic"]["emotion"], disagree["textual"]["emotion"]) == \
        ("happy", "sad", "sad")
    assert disagree["overall"]["emotion"] == "sad"
    summary = disagree["overall"]["summary"]
    assert summary.startswith("The modalities disagree: acoustic and textual suggest sad (")
    assert "; visual suggests happy (" in summary and summary.count(".") >= 2
    votes = disagree["acoustic"]["confidence"] + disagree["textual"]["confidence"]
    assert disagree["overall"]["confidence"] == pytest.approx(votes / 3, abs=1e-3)
    assert_valid(disagree)


# --- real clips through the real encoders -----------------------------------------------------

#: (clip, transcript as a labels file would give it): speech with video, audio only, and two MEAD
#: face crops (one without an audio track, one with a silent track).
REAL_CLIPS = [
    ("crema-d/1001_DFA_HAP_XX.flv", "Don't forget a jacket."),
    ("crema-d/1002_DFA_ANG_XX.mp3", "Don't forget a jacket."),
    ("mead/happy.mp4", None),
    ("mead/disgusted.mp4", None),
]


@pytest.fixture(scope="module")
def real_answers(shared_data: Path, tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Each clip decoded and encoded as ``mer extract`` does it (absence first, then the encoder)."""
    from mer_plugins.encoders.egemaps import EgemapsEncoder
    from mer_plugins.encoders.face_landmarks import FaceLandmarksEncoder
    from mer_plugins.encoders.fer_expression import FerExpressionEncoder
    from mercli.chain import absence
    from mercli.media import decode

    encoders = [FaceLandmarksEncoder(), FerExpressionEncoder(), EgemapsEncoder()]
    folder = tmp_path_factory.mktemp("clips")
    answers = {}
    for relative, transcript in REAL_CLIPS:
        path = Path(shutil.copy(shared_data / relative, folder))
        clip = decode(path, path.stem)
        features = {}
        for encoder in encoders:
            reason = absence(encoder, clip)
            features[encoder.name] = encoder.encode(clip) if reason is None else Features(None, absent=reason)
        answers[path.stem] = LocalReasoner().reason(request(features, transcript)).answer
    return answers


def test_every_real_clip_gets_a_valid_trace_whose_cues_cite_measurements(real_answers):
    assert sorted(real_answers) == sorted(Path(name).stem for name, _ in REAL_CLIPS)
    for clip, result in real_answers.items():
        assert_valid(result)
        for key in ("visual", "acoustic", "textual"):
            for cue in result[key]["cues"]:
                assert re.search(r"\d", cue) and re.search(r"\[[a-z-]+\]$", cue), (clip, cue)


def test_real_clips_report_what_they_lack(real_answers):
    assert real_answers["happy"]["acoustic"]["absent"] == "no audio track"
    assert real_answers["disgusted"]["acoustic"]["absent"] == "silent audio track"
    assert real_answers["1002_DFA_ANG_XX"]["visual"]["absent"] == "audio-only file"
    video = real_answers["1001_DFA_HAP_XX"]
    assert all(video[key]["absent"] is None for key in ("visual", "acoustic", "textual"))
    assert any(cue.endswith("[egemaps]") for cue in video["acoustic"]["cues"])


def test_the_smiling_mead_face_reads_happy(real_answers):
    visual = real_answers["happy"]["visual"]
    assert visual["emotion"] == "happy"
    assert any(cue.startswith("smile (AU12): mouthSmileLeft/Right") for cue in visual["cues"])

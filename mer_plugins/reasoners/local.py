"""``local``: the offline, deterministic reasoner, and the default of ``mer reason``.

It writes each clip's trace from the cues :mod:`mer_plugins.reasoners.evidence` measures in the
clip's extracted features and transcript, so the toolkit runs end to end without a network and
every prior can be traced back to a number. Its rules are heuristics, not a model: the traces are a
transparent baseline prior, not annotations.

Per modality the emotion is the class with the most support (ties go to the earlier class) and the
confidence its share of the support after every class is given :data:`SCORE_PRIOR` (so a single
weak cue is not reported as certainty). The overall emotion is a confidence-weighted vote of the
observed modalities; its confidence is the summed confidence of the modalities that voted for it
divided by the number of observed modalities, so disagreement lowers it. The clip's label is never
read.

When the answer schema asks for class scores (prompt version 2 on), each observed modality's scores
are every class's share of the support after the same :data:`SCORE_PRIOR` (so its confidence is
its emotion's score), and the overall scores the confidence-weighted mean of the observed
modalities' scores: distributions over the classes, as the schema requires.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from mercli.plugin_api import (FIRST_PROMPT_VERSION, TRACE_MODALITIES, AnswerRejected, Option, Reasoner,
                               ReasoningAnswer, ReasoningRequest, Usage, hookimpl)

if TYPE_CHECKING:
    from mer_plugins.reasoners.evidence import Evidence

#: The version traces of this reasoner are filed under; bump it whenever a rule or threshold in
#: :mod:`mer_plugins.reasoners.evidence` or here changes, so old traces are not reused.
RULES_VERSION = "rules-1"
#: Support every class starts with when a confidence is computed.
SCORE_PRIOR = 0.1


class LocalReasoner(Reasoner):
    name = "local"
    version = "1"
    description = "Offline rules over extracted features (FER, blendshapes, eGeMAPS) and an English word list"
    needs_network = False
    uses_features = True
    options = (
        Option("model", str, "evidence-rules", "Name recorded as the model in each trace's source."),
    )

    def trace_version(self, prompt_version: str) -> str:
        """Its own rules version (the prompt's text is not used), and the prompt version when it is
        not the first: the schema decides whether traces carry class scores."""
        return RULES_VERSION if prompt_version == FIRST_PROMPT_VERSION else f"{RULES_VERSION}-{prompt_version}"

    def reason(self, request: ReasoningRequest) -> ReasoningAnswer:
        from mer_plugins.reasoners.evidence import measure  # numpy: not on ``mer --help``'s path

        if not request.features:
            raise AnswerRejected("no extracted features for this clip: run mer extract first")
        try:
            evidence = measure(request.features, request.transcript, request.classes)
        except ValueError as problem:
            raise AnswerRejected(f"unusable features: {problem}") from None
        scored = _asks_scores(request.answer_schema)
        answer: dict[str, Any] = {key: _modality(evidence[key], request.classes, scored) for key in TRACE_MODALITIES}
        observed = [key for key in TRACE_MODALITIES if answer[key]["absent"] is None]
        if not observed:
            reasons = "; ".join(f"{key}: {answer[key]['absent']}" for key in TRACE_MODALITIES)
            raise AnswerRejected(f"nothing observable in this clip ({reasons})")
        answer["overall"] = _overall(answer, observed, request.classes)
        if scored:
            answer["overall"]["scores"] = _mean_scores(answer, observed, request.classes)
        return ReasoningAnswer(answer=answer, usage=Usage())


def _asks_scores(schema: dict[str, Any]) -> bool:
    """Whether the answer schema has class scores (the core's prompt version 2 on)."""
    return "scores" in schema.get("properties", {}).get("overall", {}).get("properties", {})


def _modality(evidence: "Evidence", classes: Sequence[str], scored: bool) -> dict[str, Any]:
    if evidence.absent is not None:
        reading: dict[str, Any] = {"cues": [], "emotion": None, "confidence": None, "absent": evidence.absent}
        return {**reading, "scores": None} if scored else reading
    emotion = _argmax(evidence.scores, classes)
    total = sum(evidence.scores.values()) + SCORE_PRIOR * len(classes)
    shares = {name: (evidence.scores.get(name, 0.0) + SCORE_PRIOR) / total for name in classes}
    reading = {"cues": list(evidence.cues), "emotion": emotion, "confidence": round(shares[emotion], 3), "absent": None}
    return {**reading, "scores": _rounded(shares)} if scored else reading


def _mean_scores(answer: dict[str, Any], observed: list[str], classes: Sequence[str]) -> dict[str, float]:
    """The observed modalities' scores averaged with their confidences as weights."""
    weight = sum(answer[key]["confidence"] for key in observed)
    return _rounded({name: sum(answer[key]["confidence"] * answer[key]["scores"][name] for key in observed) / weight
                     for name in classes})


def _rounded(scores: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 4) for name, value in scores.items()}


def _argmax(scores: dict[str, float], classes: Sequence[str]) -> str:
    """The class with the highest score; the earliest class among equals."""
    return max(classes, key=lambda name: (scores.get(name, 0.0), -classes.index(name)))


def _overall(answer: dict[str, Any], observed: list[str], classes: Sequence[str]) -> dict[str, Any]:
    votes: dict[str, float] = {}
    for key in observed:
        votes[answer[key]["emotion"]] = votes.get(answer[key]["emotion"], 0.0) + answer[key]["confidence"]
    emotion = _argmax(votes, classes)
    confidence = round(votes[emotion] / len(observed), 3)
    return {"emotion": emotion, "confidence": confidence,
            "summary": _summary(answer, observed, emotion, confidence)}


def _summary(answer: dict[str, Any], observed: list[str], emotion: str, confidence: float) -> str:
    """One sentence on which modalities agree or disagree, one on the verdict and what is missing."""
    absent = [f"{key} ({answer[key]['absent']})" for key in TRACE_MODALITIES if key not in observed]
    missing = f"; not observable: {', '.join(absent)}" if absent else ""
    if len(observed) == 1:
        key = observed[0]
        first = f"Only the {key} cues can be judged, and they suggest {emotion} ({answer[key]['confidence']:.2f})"
        return f"{first}{missing}."
    groups: dict[str, list[str]] = {}
    for key in observed:
        groups.setdefault(answer[key]["emotion"], []).append(key)
    if len(groups) == 1:
        first = f"The {_joined(observed)} cues agree on {emotion}"
    else:
        first = "The modalities disagree: " + "; ".join(
            f"{_joined(keys)} suggest{'s' if len(keys) == 1 else ''} {name} "
            f"({', '.join(format(answer[key]['confidence'], '.2f') for key in keys)})"
            for name, keys in sorted(groups.items(), key=lambda item: -len(item[1])))
    return f"{first}. Overall {emotion} ({confidence:.2f}) by confidence-weighted vote{missing}."


def _joined(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


@hookimpl
def register_reasoners(register) -> None:
    register(LocalReasoner)

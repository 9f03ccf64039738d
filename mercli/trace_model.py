"""The reasoning trace, defined once: the JSON schema a reasoner is asked to answer in and the
validation of every answer and every stored trace both come from these models.

A trace has one reading per modality (``visual``, ``acoustic``, ``textual``: the cues observed,
the emotion they alone suggest and a confidence, or ``absent`` with the reason when the clip lacks
the modality), an ``overall`` judgement, and, once stored, the clip id and its provenance. The
models are generic in the emotion's type: any non-blank text for a stored trace, one of the
configured classes for an answer (the schema sent lists them).

Two forms exist. The first (prompt version 1) has no class scores. The scored form (prompt version
2 on) adds ``scores`` to every observed modality and to ``overall``: an object with exactly one
score in [0, 1] per class, a distribution over the classes, so the scores must sum to 1 within
:data:`SCORE_SUM_TOLERANCE` (answers rounded to two decimals over a dozen classes still pass; a
list of independent ratings does not). An absent modality has ``scores: null``. A stored trace of
either form validates; an answer is checked against the form it was asked in.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, Mapping, Sequence, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator
from pydantic_core import PydanticCustomError

#: How far from 1 the class scores of one reading may sum.
SCORE_SUM_TOLERANCE = 0.05
SCORES_HELP = (f"A score from 0 to 1 for every emotion class, how strongly this evidence supports it; "
               f"a distribution: the scores sum to 1 (within {SCORE_SUM_TOLERANCE:g}). Null when the "
               "modality is absent.")


def _not_blank(text: str) -> str:
    if not text.strip():
        raise PydanticCustomError("blank", "must not be empty")
    return text


def _iso_time(text: str) -> str:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise PydanticCustomError("iso_time", "{text} is not an ISO 8601 date and time",
                                  {"text": repr(text[:60])}) from None
    return text


def _distribution(scores: Mapping[str, float]) -> Mapping[str, float]:
    total = sum(scores.values())
    if abs(total - 1) > SCORE_SUM_TOLERANCE:
        raise PydanticCustomError("score_sum", "the scores sum to {total}, not 1 (within {tolerance})",
                                  {"total": round(total, 4), "tolerance": SCORE_SUM_TOLERANCE})
    return scores


Text = Annotated[str, AfterValidator(_not_blank)]
Confidence = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]
Emotion = TypeVar("Emotion")
#: The type of a reading's scores: an object of the classes (an answer), any class names (a stored trace).
Scores = TypeVar("Scores")
#: The class scores of a stored trace, whatever its classes.
AnyScores = Annotated[dict[Text, Confidence], AfterValidator(_distribution)]


class _Strict(BaseModel):
    """No key beyond those declared, no coercion (``true`` is not a number, ``"1"`` not an integer)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_serialization_defaults_required=True)


class ModalityReading(_Strict, Generic[Emotion]):
    """What one modality alone shows; ``absent`` (the reason) when the clip lacks it."""

    cues: list[Text]
    emotion: Emotion | None
    confidence: Confidence | None
    absent: Text | None = None

    @model_validator(mode="after")
    def _observed_or_absent(self) -> "ModalityReading[Emotion]":
        if self.absent is not None and (self.emotion is not None or self.confidence is not None or self.cues):
            raise PydanticCustomError("absent_reading", "absent, so emotion and confidence must be null and cues empty")
        if self.absent is None and (self.emotion is None or self.confidence is None):
            raise PydanticCustomError("observed_reading", "an observed modality needs an emotion and a confidence "
                                      "(set 'absent' to the reason when the clip lacks it)")
        return self


class OverallReading(_Strict, Generic[Emotion]):
    emotion: Emotion
    confidence: Confidence
    summary: Text


class ScoredModalityReading(ModalityReading[Emotion], Generic[Emotion, Scores]):
    """A modality reading with class scores (prompt version 2 on); none when absent."""

    scores: Scores | None = Field(description=SCORES_HELP)

    @model_validator(mode="after")
    def _scored_unless_absent(self) -> "ScoredModalityReading[Emotion, Scores]":
        if (self.absent is None) != (self.scores is not None):
            raise PydanticCustomError("scored_reading", "an observed modality needs scores, an absent one has "
                                      "scores null")
        return self


class ScoredOverallReading(OverallReading[Emotion], Generic[Emotion, Scores]):
    scores: Scores = Field(description=SCORES_HELP)


Reading = TypeVar("Reading")
Overall = TypeVar("Overall")


class Answer(_Strict, Generic[Reading, Overall]):
    """What a reasoner answers for one clip (generic in the form of its readings)."""

    visual: Reading
    acoustic: Reading
    textual: Reading
    overall: Overall


class TokenUsage(_Strict):
    input_tokens: Count
    output_tokens: Count


class Provenance(_Strict):
    """Who wrote a trace, from what clip content (and, for reasoners that read them, which feature
    sets), at what cost and when."""

    reasoner: Text
    model: Text
    prompt_version: Text
    label_conditioned: bool
    usage: TokenUsage
    cost_usd: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    content_hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    created: Annotated[str, AfterValidator(_iso_time)]
    features: list[Text] | None = None


class Trace(Answer[Reading, Overall], Generic[Reading, Overall]):
    """A stored trace: the answer, the clip it is about, and its provenance."""

    clip: Text
    provenance: Provenance


class _ClassScores(_Strict):
    """Base of the scores object of an answer: one field per class (named by its alias)."""

    @model_validator(mode="after")
    def _sums_to_one(self) -> "_ClassScores":
        _distribution(self.model_dump())
        return self


@functools.lru_cache(maxsize=32)
def _class_scores(classes: tuple[str, ...]) -> type[_ClassScores]:
    """An object with exactly one score per class: JSON schema ``required`` lists every class, which
    structured-output APIs enforce (a map type would let a model drop or invent classes)."""
    fields: dict[str, Any] = {f"class_{i}": (Confidence, Field(alias=name)) for i, name in enumerate(classes)}
    return create_model("ClassScores", __base__=_ClassScores, **fields)


def _models(emotion: Any, scores: Any | None) -> tuple[type[Answer], type[Trace]]:
    """The answer and trace models of one form: without scores when ``scores`` is None."""
    if scores is None:
        parts = ModalityReading[emotion], OverallReading[emotion]
    else:
        parts = ScoredModalityReading[emotion, scores], ScoredOverallReading[emotion, scores]
    return Answer[parts], Trace[parts]  # type: ignore[index]


@functools.lru_cache(maxsize=32)
def _with_classes(classes: tuple[str, ...], scored: bool) -> tuple[type[Answer], type[Trace]]:
    return _models(Literal[classes], _class_scores(classes) if scored else None)  # type: ignore[valid-type]


_STORED = {False: _models(Text, None), True: _models(Text, AnyScores)}


def answer_schema(classes: Sequence[str], *, scores: bool = True) -> dict[str, Any]:
    """The JSON schema of an answer whose emotions are ``classes`` (with class scores unless
    ``scores`` is off: prompt version 1), every reference written out (structured-output APIs
    differ in the JSON-schema features they take)."""
    model = _with_classes(tuple(classes), scores)[0]
    schema = model.model_json_schema(mode="serialization")
    return _plain(schema, schema.get("$defs", {}))


def has_scores(document: Any) -> bool:
    """Whether any part of a trace carries class scores (then it is checked as the scored form)."""
    return isinstance(document, dict) and any(isinstance(part, dict) and "scores" in part
                                              for part in document.values())


def _plain(node: Any, definitions: dict[str, Any]) -> Any:
    """``node`` with each ``$ref`` replaced by its definition and without titles or defaults."""
    if isinstance(node, list):
        return [_plain(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:  # keys beside a reference (a field's description) stay
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        return _plain({**definitions[node["$ref"].rsplit("/", 1)[-1]], **siblings}, definitions)
    return {key: _plain(value, definitions) for key, value in node.items()
            if key not in ("title", "default", "$defs")}


def trace_problems(document: Any, classes: Sequence[str] | None = None, scores: bool | None = None) -> list[str]:
    """Every problem of ``document`` as a trace (with emotions, and scores, over ``classes`` when
    given), one line each naming where it is (``trace.visual.confidence: ...``); empty when valid.
    ``scores`` says which form the trace must have; None: the form it shows (a stored trace)."""
    scored = has_scores(document) if scores is None else scores
    model = _STORED[scored][1] if classes is None else _with_classes(tuple(classes), scored)[1]
    try:
        model.model_validate(document)
    except ValidationError as error:
        return [_described(problem) for problem in error.errors(include_url=False)]
    return []


_WORDS = {"dict_type": "expected object", "model_type": "expected object", "model_attributes_type": "expected object",
          "list_type": "expected array", "string_type": "expected string", "bool_type": "expected boolean",
          "int_type": "expected integer", "float_type": "expected number", "finite_number": "expected a finite number"}


def _described(problem: dict[str, Any]) -> str:
    path = list(problem["loc"])
    where = "trace" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)
    kind = problem["type"]
    if kind in ("missing", "extra_forbidden") and path:
        parent = where.rsplit(".", 1)[0] if isinstance(path[-1], str) else where
        return f"{parent}: {'missing' if kind == 'missing' else 'unknown key'} '{path[-1]}'"
    if kind == "literal_error":
        return f"{where}: {problem['input']!r} is not one of {problem['ctx']['expected']}"
    if kind in ("greater_than_equal", "less_than_equal"):
        bound = f"at least {problem['ctx']['ge']:g}" if "ge" in problem["ctx"] else f"at most {problem['ctx']['le']:g}"
        return f"{where}: {problem['input']} is outside the range ({bound})"
    if kind == "string_pattern_mismatch":
        return f"{where}: {str(problem['input'])[:60]!r} does not match {problem['ctx']['pattern']}"
    return f"{where}: {_WORDS.get(kind, problem['msg'])}"

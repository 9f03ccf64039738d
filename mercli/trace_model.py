"""The reasoning trace, defined once: the JSON schema a reasoner is asked to answer in and the
validation of every answer and every stored trace both come from these models.

A trace has one reading per modality (``visual``, ``acoustic``, ``textual``: the cues observed,
the emotion they alone suggest and a confidence, or ``absent`` with the reason when the clip lacks
the modality), an ``overall`` judgement, and, once stored, the clip id and its provenance. The
models are generic in the emotion's type: any non-blank text for a stored trace, one of the
configured classes for an answer (the schema sent lists them).
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, Sequence, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError



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


Text = Annotated[str, AfterValidator(_not_blank)]
Confidence = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]
Emotion = TypeVar("Emotion")


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


class Answer(_Strict, Generic[Emotion]):
    """What a reasoner answers for one clip."""

    visual: ModalityReading[Emotion]
    acoustic: ModalityReading[Emotion]
    textual: ModalityReading[Emotion]
    overall: OverallReading[Emotion]


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


class Trace(Answer[Emotion], Generic[Emotion]):
    """A stored trace: the answer, the clip it is about, and its provenance."""

    clip: Text
    provenance: Provenance



@functools.lru_cache(maxsize=32)
def _with_classes(classes: tuple[str, ...]) -> tuple[type[Answer], type[Trace]]:
    emotion = Literal[classes]  # type: ignore[valid-type]
    return Answer[emotion], Trace[emotion]  # type: ignore[valid-type]


def answer_schema(classes: Sequence[str]) -> dict[str, Any]:
    """The JSON schema of an answer whose emotions are ``classes``, every reference written out
    (structured-output APIs differ in the JSON-schema features they take)."""
    model = _with_classes(tuple(classes))[0]
    schema = model.model_json_schema(mode="serialization")
    return _plain(schema, schema.get("$defs", {}))


def _plain(node: Any, definitions: dict[str, Any]) -> Any:
    """``node`` with each ``$ref`` replaced by its definition and without titles or defaults."""
    if isinstance(node, list):
        return [_plain(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _plain(definitions[node["$ref"].rsplit("/", 1)[-1]], definitions)
    return {key: _plain(value, definitions) for key, value in node.items()
            if key not in ("title", "default", "$defs")}


def trace_problems(document: Any, classes: Sequence[str] | None = None) -> list[str]:
    """Every problem of ``document`` as a trace (with emotions among ``classes`` when given), one
    line each naming where it is (``trace.visual.confidence: ...``); empty when valid."""
    model = Trace[Text] if classes is None else _with_classes(tuple(classes))[1]
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

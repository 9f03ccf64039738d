"""The reasoning-trace store: the schema, the cache by clip content, failures kept apart from
traces, source folders and atomic writes."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest

from mercli.errors import DataError
from mercli.traces import TraceSource, TraceStore, content_hash, list_trace_stores, validate_trace

HASH = "a" * 64
OTHER_HASH = "b" * 64
SOURCE = TraceSource("gemini", "gemini-2.5-flash", "v1")


def trace(clip: str = "clip1", source: TraceSource = SOURCE, digest: str = HASH) -> dict:
    return {
        "clip": clip,
        "visual": {"cues": ["raised lip corners (mouthSmile 0.71, frames 3-9)"], "emotion": "happy",
                   "confidence": 0.8},
        "acoustic": {"cues": [], "emotion": None, "confidence": None, "absent": "no audio track"},
        "textual": {"cues": ["says 'great news'"], "emotion": "happy", "confidence": 0.6, "absent": None},
        "overall": {"emotion": "happy", "confidence": 0.75, "summary": "Smiles while sharing good news."},
        "provenance": {"reasoner": source.reasoner, "model": source.model, "prompt_version": source.prompt_version,
                       "label_conditioned": source.label_conditioned,
                       "usage": {"input_tokens": 1200, "output_tokens": 150}, "cost_usd": 0.0004,
                       "content_hash": digest, "created": "2025-05-01T12:00:00+00:00"},
    }


def edited(change) -> dict:
    document = copy.deepcopy(trace())
    change(document)
    return document


# --- the schema -------------------------------------------------------------------------------


def test_a_complete_trace_is_valid():
    assert validate_trace(trace()) == []


def test_every_modality_may_be_absent_and_an_observed_one_may_have_no_cues():
    document = edited(lambda d: d["visual"].update(cues=[]))
    for key in ("acoustic", "textual"):
        document[key] = {"cues": [], "emotion": None, "confidence": None, "absent": "nothing"}
    assert validate_trace(document) == []


@pytest.mark.parametrize("change, problem", [
    (lambda d: d.pop("overall"), "trace: missing 'overall'"),
    (lambda d: d.update(mood="x"), "trace: unknown key 'mood'"),
    (lambda d: d["visual"].pop("cues"), "trace.visual: missing 'cues'"),
    (lambda d: d["visual"].update(evidence=[]), "trace.visual: unknown key 'evidence'"),
    (lambda d: d["visual"].update(cues="smile"), "trace.visual.cues: expected array"),
    (lambda d: d["visual"].update(cues=["smile", 3]), "trace.visual.cues[1]: expected string"),
    (lambda d: d["visual"].update(cues=[" "]), "trace.visual.cues[0]: must not be empty"),
    (lambda d: d["visual"].update(emotion=""), "trace.visual.emotion: must not be empty"),
    (lambda d: d["visual"].update(confidence=1.5), "trace.visual.confidence: 1.5 is outside the range (at most 1)"),
    (lambda d: d["visual"].update(confidence=-0.1), "outside"),
    (lambda d: d["visual"].update(confidence=float("nan")), "trace.visual.confidence: expected a finite number"),
    (lambda d: d["visual"].update(confidence="high"), "trace.visual.confidence: expected number"),
    (lambda d: d["visual"].update(confidence=True), "trace.visual.confidence: expected number"),
    (lambda d: d["visual"].update(emotion=None), "trace.visual: an observed modality needs an emotion"),
    (lambda d: d["acoustic"].update(emotion="neutral"), "trace.acoustic: absent, so emotion"),
    (lambda d: d["acoustic"].update(cues=["silence"]), "trace.acoustic: absent, so"),
    (lambda d: d["acoustic"].update(absent=""), "trace.acoustic.absent: must not be empty"),
    (lambda d: d["overall"].update(summary=""), "trace.overall.summary: must not be empty"),
    (lambda d: d["overall"].update(confidence=None), "trace.overall.confidence: expected number"),
    (lambda d: d["overall"].pop("emotion"), "trace.overall: missing 'emotion'"),
    (lambda d: d["provenance"].pop("prompt_version"), "trace.provenance: missing 'prompt_version'"),
    (lambda d: d["provenance"].update(label_conditioned="no"), "label_conditioned: expected boolean"),
    (lambda d: d["provenance"]["usage"].update(input_tokens=True), "input_tokens: expected integer"),
    (lambda d: d["provenance"]["usage"].update(output_tokens=1.5), "output_tokens: expected integer"),
    (lambda d: d["provenance"]["usage"].update(output_tokens=-1), "output_tokens: -1 is outside"),
    (lambda d: d["provenance"].update(cost_usd=-0.01), "cost_usd: -0.01 is outside"),
    (lambda d: d["provenance"].update(content_hash="abc"), "content_hash: 'abc' does not match"),
    (lambda d: d["provenance"].update(created="yesterday"), "created: 'yesterday' is not an ISO 8601"),
])
def test_each_kind_of_invalid_trace_is_named(change, problem):
    problems = validate_trace(edited(change))
    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize("document", [None, [], "trace", 3])
def test_a_trace_that_is_not_an_object_is_invalid(document):
    problems = validate_trace(document)
    assert len(problems) == 1 and problems[0].startswith("trace: expected object")


# --- sources and folders ----------------------------------------------------------------------


def test_source_folders_separate_reasoner_model_prompt_and_label_conditioning(tmp_path):
    assert SOURCE.relative_path == Path("gemini/gemini-2.5-flash/v1")
    assert TraceSource("openai", "Qwen/Qwen2-VL-7B", "v2").relative_path == Path("openai/Qwen--Qwen2-VL-7B/v2")
    assert TraceSource("openai", "llava:13b", "v1").relative_path == Path("openai/llava_13b/v1")
    assert TraceSource("gemini", "gemini-2.5-flash", "v1", True).relative_path == \
        Path("gemini/gemini-2.5-flash/v1+labels")
    store = TraceStore.open(tmp_path, SOURCE)
    assert json.loads((store.folder / "source.json").read_text())["model"] == "gemini-2.5-flash"


@pytest.mark.parametrize("source, problem", [
    (TraceSource("", "m", "v1"), "non-empty reasoner"),
    (TraceSource("r", "..", "v1"), "cannot start with '.'"),
    (TraceSource("r", "m", " "), "non-empty prompt version"),
])
def test_unusable_source_names_are_refused(tmp_path, source, problem):
    with pytest.raises(DataError, match=problem):
        TraceStore.open(tmp_path, source)


def test_two_sources_mapping_to_one_folder_are_refused(tmp_path):
    TraceStore.open(tmp_path, TraceSource("openai", "org/model", "v1"))
    with pytest.raises(DataError, match="source.json: this folder belongs to"):
        TraceStore.open(tmp_path, TraceSource("openai", "org--model", "v1"))


def test_list_trace_stores_finds_every_source(tmp_path):
    first = TraceStore.open(tmp_path, SOURCE)
    second = TraceStore.open(tmp_path, TraceSource("local", "evidence", "v1"))
    assert [s.folder for s in list_trace_stores(tmp_path)] == [first.folder, second.folder]
    assert [s.source for s in list_trace_stores(tmp_path)] == [SOURCE, second.source]
    assert list_trace_stores(tmp_path / "missing") == []


def test_list_trace_stores_refuses_a_moved_source_folder(tmp_path):
    store = TraceStore.open(tmp_path, SOURCE)
    store.folder.rename(store.folder.parent / "v9")
    with pytest.raises(DataError, match="was it moved"):
        list_trace_stores(tmp_path)


# --- writing, reading and the cache -----------------------------------------------------------


def test_write_read_round_trip_and_cache_by_content_hash(tmp_path):
    store = TraceStore.open(tmp_path, SOURCE)
    assert store.status("clip1", HASH) is None
    store.write("clip1", trace())
    assert store.read("clip1") == trace()
    assert store.status("clip1", HASH) == "done"
    assert store.status("clip1", OTHER_HASH) is None  # the clip changed: ask again
    assert store.clip_ids() == ["clip1"]


@pytest.mark.parametrize("document, problem", [
    (edited(lambda d: d["overall"].update(confidence=2)), "outside"),
    (trace(clip="other"), "'other' is not the clip 'clip1'"),
    (trace(source=TraceSource("gemini", "gemini-2.5-pro", "v1")), "written by another source"),
    (trace(source=TraceSource("gemini", "gemini-2.5-flash", "v1", True)), "written by another source"),
])
def test_an_invalid_trace_is_never_stored(tmp_path, document, problem):
    store = TraceStore.open(tmp_path, SOURCE)
    with pytest.raises(DataError, match=problem):
        store.write("clip1", document)
    assert store.clip_ids() == [] and not (store.folder / "clip1.trace.json").exists()


def test_a_label_conditioned_trace_lives_apart_from_the_clean_ones(tmp_path):
    conditioned = TraceSource("gemini", "gemini-2.5-flash", "v1", label_conditioned=True)
    TraceStore.open(tmp_path, conditioned).write("clip1", trace(source=conditioned))
    assert TraceStore.open(tmp_path, SOURCE).status("clip1", HASH) is None


def test_a_corrupt_stored_trace_is_asked_again_and_named_when_read(tmp_path):
    store = TraceStore.open(tmp_path, SOURCE)
    store.write("clip1", trace())
    (store.folder / "clip1.trace.json").write_text('{"clip": "clip1"')
    assert store.status("clip1", HASH) is None
    with pytest.raises(DataError, match=r"clip1\.trace\.json: unreadable trace"):
        store.read("clip1")
    (store.folder / "clip1.trace.json").write_text(json.dumps(edited(lambda d: d.pop("overall"))))
    assert store.status("clip1", HASH) is None
    with pytest.raises(DataError, match=r"clip1\.trace\.json: invalid trace: trace: missing 'overall'"):
        store.read("clip1")


def test_reading_a_missing_trace_names_it(tmp_path):
    with pytest.raises(DataError, match="no trace for clip nope"):
        TraceStore.open(tmp_path, SOURCE).read("nope")


def test_clip_ids_that_could_escape_are_rejected(tmp_path):
    store = TraceStore.open(tmp_path, SOURCE)
    with pytest.raises(DataError, match="climbs out of its folder"):
        store.write("../clip1", trace("../clip1"))
    with pytest.raises(DataError, match="starts with a dot"):
        store.record_failure(".hidden", "blocked", HASH)


def test_no_clip_id_clashes_with_the_source_record(tmp_path):
    store = TraceStore.open(tmp_path, SOURCE)
    store.write("source", trace("source"))
    assert store.read("source")["clip"] == "source"
    assert TraceStore.open(tmp_path, SOURCE).source == SOURCE
    assert store.clip_ids() == ["source"]


# --- failures ---------------------------------------------------------------------------------


def test_a_failure_is_recorded_apart_never_as_a_trace_and_cleared_by_a_trace(tmp_path):
    store = TraceStore.open(tmp_path, SOURCE)
    failure = store.record_failure("clip1", "safety block: SAFETY", HASH, attempts=3)
    assert (store.folder / "_failures" / "clip1.json").is_file()
    assert failure.details == {"content_hash": HASH, "attempts": 3}
    assert store.clip_ids() == [] and not (store.folder / "clip1.trace.json").exists()
    with pytest.raises(DataError, match="no trace"):
        store.read("clip1")
    assert store.status("clip1", HASH) == "failed"
    assert store.status("clip1", OTHER_HASH) is None  # the clip changed since it failed
    assert [(f.clip, f.reason) for f in store.failures()] == [("clip1", "safety block: SAFETY")]
    store.write("clip1", trace())
    assert store.failures() == [] and store.status("clip1", HASH) == "done"


def test_a_failure_on_new_content_beats_a_stale_trace(tmp_path):
    store = TraceStore.open(tmp_path, SOURCE)
    store.write("clip1", trace())
    store.record_failure("clip1", "empty answer", OTHER_HASH)
    assert store.status("clip1", OTHER_HASH) == "failed"
    assert store.status("clip1", HASH) == "done"


def test_an_empty_failures_folder_lists_nothing(tmp_path):
    assert TraceStore.open(tmp_path, SOURCE).failures() == []


# --- atomic writes and content hashes ---------------------------------------------------------


def test_an_interrupted_trace_write_leaves_nothing_behind(tmp_path, monkeypatch):
    store = TraceStore.open(tmp_path, SOURCE)

    def interrupted(_descriptor):
        raise KeyboardInterrupt

    monkeypatch.setattr("mercli.atomic.os.fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.write("clip1", trace())
    assert sorted(p.name for p in store.folder.iterdir()) == ["source.json"]


def test_content_hash_is_the_sha256_of_the_file(tmp_path):
    clip = tmp_path / "clip.mp4"
    payload = bytes(range(256)) * 9000  # > 2 MiB: read in several pieces
    clip.write_bytes(payload)
    assert content_hash(clip) == hashlib.sha256(payload).hexdigest()
    with pytest.raises(DataError, match=r"missing\.mp4: cannot read the clip"):
        content_hash(tmp_path / "missing.mp4")


# --- one model, two uses ------------------------------------------------------------------------


def test_the_schema_sent_to_reasoners_is_the_one_prompt_version_1_was_written_for():
    """The schema comes from the trace model now; it must be the very document the hand-written
    one was, or traces of one prompt version would answer two schemas."""
    from mercli.trace_model import answer_schema

    classes = ["neutral", "angry"]
    emotion = {"type": "string", "enum": classes}
    confidence = {"type": "number", "minimum": 0, "maximum": 1}
    modality = {"type": "object", "additionalProperties": False,
                "required": ["cues", "emotion", "confidence", "absent"],
                "properties": {"cues": {"type": "array", "items": {"type": "string"}},
                               "emotion": {"anyOf": [emotion, {"type": "null"}]},
                               "confidence": {"anyOf": [confidence, {"type": "null"}]},
                               "absent": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}
    overall = {"type": "object", "additionalProperties": False, "required": ["emotion", "confidence", "summary"],
               "properties": {"emotion": emotion, "confidence": confidence, "summary": {"type": "string"}}}
    assert answer_schema(classes, scores=False) == {
        "type": "object", "additionalProperties": False, "required": ["visual", "acoustic", "textual", "overall"],
        "properties": {"visual": modality, "acoustic": modality, "textual": modality, "overall": overall}}


def test_an_answer_is_checked_against_the_classes_and_a_stored_trace_is_not():
    from mercli.trace_model import Answer, trace_problems
    from mercli.vocabulary import TRACE_MODALITIES

    assert list(Answer.model_fields) == [*TRACE_MODALITIES, "overall"]
    document = edited(lambda d: d["overall"].update(emotion="bored"))
    assert trace_problems(document) == []
    assert trace_problems(document, ["neutral", "happy"]) == ["trace.overall.emotion: 'bored' is not one of "
                                                              "'neutral' or 'happy'"]

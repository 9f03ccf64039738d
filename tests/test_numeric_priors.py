"""Numeric priors (issue 13): prompt version 2 asks a score for every class, the schema checks
them, the local reasoner gives its own, and each trace part's scores and confidence become a small
prior set that the network injects like the embedded ones; version-1 traces stay valid."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mer_plugins.reasoners.local import LocalReasoner
from mercli import prompts
from mercli.clips import discover
from mercli.config import load
from mercli.costs import Budget, Price
from mercli.errors import ConfigError
from mercli.features import FeatureSet, list_feature_sets
from mercli.priors import NO_SCORES, is_scores_prior, score_manifests, trace_scores
from mercli.reason import ClipInputs, Pacing, ReasonRun
from mercli.trace_model import SCORE_SUM_TOLERANCE, answer_schema, trace_problems
from mercli.traces import TraceSource, TraceStore
from mercli.trainset import input_spec
from mercli.vocabulary import TRACE_PARTS, is_prior, scores_prior_encoder
from mercli.workspace import Workspace
from support.answers import scores_for, with_scores
from support.training import CLASSES as SYN_CLASSES, config, write_workspace
from test_reason import CLASSES as REASON_CLASSES, Scripted, answer as scripted_answer
from test_reasoner_local import (CLASSES as LOCAL_CLASSES, NO_FACE, QUIET_FLAT, answer as local_reasoning, egemaps,
                                 fer, full_trace, request)

CLASSES = ["neutral", "angry", "happy"]
SOURCE = TraceSource("gemini", "gemini-2.5-flash", "mer-trace-v2")


def first_answer() -> dict:
    """A prompt-version-1 answer: no scores."""
    return {"visual": {"cues": ["smile"], "emotion": "happy", "confidence": 0.8, "absent": None},
            "acoustic": {"cues": [], "emotion": None, "confidence": None, "absent": "no audio track"},
            "textual": {"cues": ["'great'"], "emotion": "happy", "confidence": 0.6, "absent": None},
            "overall": {"emotion": "happy", "confidence": 0.75, "summary": "Smiles at good news."}}


def stored(answer: dict, source: TraceSource = SOURCE, clip: str = "clip1") -> dict:
    return {"clip": clip, **answer, "provenance": {
        "reasoner": source.reasoner, "model": source.model, "prompt_version": source.prompt_version,
        "label_conditioned": False, "usage": {"input_tokens": 1, "output_tokens": 1}, "cost_usd": 0.0,
        "content_hash": "a" * 64, "created": "2025-05-01T12:00:00+00:00"}}


def scored_answer() -> dict:
    return with_scores(first_answer(), CLASSES)


def problems_of(change, scores: bool = True) -> list[str]:
    document = stored(scored_answer())
    change(document)
    return trace_problems(document, CLASSES, scores)


# --- the schema ---------------------------------------------------------------------------------


def test_the_version_2_schema_asks_one_bounded_score_per_class_and_says_they_sum_to_one():
    schema = answer_schema(CLASSES)
    scores = schema["properties"]["overall"]["properties"]["scores"]
    assert scores["required"] == CLASSES and scores["additionalProperties"] is False
    assert all(scores["properties"][name] == {"type": "number", "minimum": 0, "maximum": 1} for name in CLASSES)
    assert f"sum to 1 (within {SCORE_SUM_TOLERANCE:g})" in scores["description"]
    visual = schema["properties"]["visual"]
    assert "scores" in visual["required"] and visual["properties"]["scores"]["anyOf"][1] == {"type": "null"}
    assert "scores" not in json.dumps(answer_schema(CLASSES, scores=False))


def test_a_scored_answer_is_valid_and_so_are_stored_traces_of_both_versions():
    assert problems_of(lambda d: None) == []
    assert trace_problems(stored(scored_answer())) == []
    assert trace_problems(stored(first_answer())) == []  # version 1: no scores, still valid
    assert trace_problems(stored(first_answer()), CLASSES, scores=False) == []


@pytest.mark.parametrize("change, problem", [
    (lambda d: d["visual"]["scores"].pop("angry"), "trace.visual.scores: missing 'angry'"),
    (lambda d: d["visual"]["scores"].update(bored=0.0), "trace.visual.scores: unknown key 'bored'"),
    (lambda d: d["overall"]["scores"].update(happy=1.2), "trace.overall.scores.happy: 1.2 is outside the range (at most 1)"),
    (lambda d: d["overall"]["scores"].update(happy=-0.1), "trace.overall.scores.happy: -0.1 is outside the range"),
    (lambda d: d["overall"]["scores"].update(happy="high"), "trace.overall.scores.happy: expected number"),
    (lambda d: d["visual"]["scores"].update(neutral=0.4), "trace.visual.scores: the scores sum to 1.15, not 1"),
    (lambda d: d["overall"].pop("scores"), "trace.overall: missing 'scores'"),
    (lambda d: d["visual"].update(scores=None), "trace.visual: an observed modality needs scores"),
    (lambda d: d["acoustic"].update(scores=scores_for("happy", CLASSES)), "trace.acoustic: an observed modality "
                                                                          "needs scores, an absent one has scores null"),
])
def test_the_schema_rejects_missing_extra_out_of_range_and_non_summing_scores(change, problem):
    problems = problems_of(change)
    assert any(problem in p for p in problems), problems


def test_scores_within_the_tolerance_pass_and_an_answer_must_have_the_form_it_was_asked_in():
    assert problems_of(lambda d: d["visual"]["scores"].update(neutral=0.25 + SCORE_SUM_TOLERANCE * 0.9)) == []
    assert problems_of(lambda d: None, scores=False)[0] == "trace.visual: unknown key 'scores'"
    assert "trace.visual: missing 'scores'" in trace_problems(stored(first_answer()), CLASSES, scores=True)


def test_a_stored_trace_with_some_scores_is_checked_as_the_scored_form():
    document = stored(scored_answer())
    del document["overall"]["scores"]
    assert trace_problems(document) == ["trace.overall: missing 'scores'"]
    document["overall"]["scores"] = {"neutral": 0.5}
    assert trace_problems(document) == ["trace.overall.scores: the scores sum to 0.5, not 1 (within 0.05)"]


# --- prompt versions ----------------------------------------------------------------------------


def test_version_2_asks_for_scores_and_version_1_is_the_prompt_it_always_was():
    assert prompts.PROMPT_VERSIONS == ("mer-trace-v1", "mer-trace-v2") and prompts.PROMPT_VERSION == "mer-trace-v2"
    newest = prompts.instruction(CLASSES)
    first = prompts.instruction(CLASSES, version="mer-trace-v1")
    assert '"scores"' in newest and "summing to 1" in newest
    assert "scores" not in first and first == newest.replace(prompts._SCORES, "")


class Named:
    """A reasoner as far as prompt versions go: its name, model and how it files traces."""

    def __init__(self, name: str = "gemini", model: str = "gemini-2.5-flash", rules: bool = False) -> None:
        self.name, self.model = name, model
        self.rules = rules

    def trace_version(self, version: str) -> str:
        return f"rules-{version}" if self.rules else version


def test_auto_keeps_the_prompt_version_of_the_traces_a_workspace_holds(tmp_path):
    reasoner = Named()
    assert prompts.chosen_version("auto", reasoner, tmp_path, False) == "mer-trace-v2"  # nothing yet: the newest
    old = TraceStore.open(tmp_path, TraceSource("gemini", "gemini-2.5-flash", "mer-trace-v1"))
    assert prompts.chosen_version("auto", reasoner, tmp_path, False) == "mer-trace-v2"  # an empty folder asks nothing
    old.write("clip1", stored(first_answer(), old.source))
    assert prompts.chosen_version("auto", reasoner, tmp_path, False) == "mer-trace-v1"  # not asked again unasked
    assert prompts.chosen_version("auto", reasoner, tmp_path, True) == "mer-trace-v2"  # other source: labels shown
    assert prompts.chosen_version("auto", Named(model="gemini-2.5-pro"), tmp_path, False) == "mer-trace-v2"
    assert prompts.chosen_version("mer-trace-v2", reasoner, tmp_path, False) == "mer-trace-v2"  # the user asks
    new = TraceStore.open(tmp_path, SOURCE)
    new.write("clip1", stored(scored_answer()))
    assert prompts.chosen_version("auto", reasoner, tmp_path, False) == "mer-trace-v2"


def test_the_prompt_version_a_trace_source_answered_is_found_from_the_reasoner():
    assert prompts.answered_version(Named(), "mer-trace-v1") == "mer-trace-v1"
    assert prompts.answered_version(Named(rules=True), "rules-mer-trace-v2") == "mer-trace-v2"
    assert prompts.answered_version(Named(), "mer-trace-v9") is None


def test_an_unknown_prompt_version_is_a_configuration_error():
    with pytest.raises(ConfigError, match="prompt_version"):
        load(None, environ={}, overrides={"reason.prompt_version": "mer-trace-v3"})


def test_a_version_1_run_sends_the_version_1_prompt_and_schema_and_stores_version_1_traces(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "c0.mp4").write_bytes(b"clip")
    workspace = Workspace(tmp_path / "ws")
    reasoner = Scripted({"c0": [scripted_answer(scores=False)]})
    source = TraceSource(reasoner.name, reasoner.model, "mer-trace-v1")
    store = TraceStore.open(workspace.reasoning, source)
    run = ReasonRun(reasoner, store, ClipInputs(workspace, {}), REASON_CLASSES, Pacing(1, 0, 0, 0.01, 0.05),
                    Price(0, 0), Budget(None), False, "mer-trace-v1")
    tasks, _, _ = run.plan(discover(clips), False)
    run.run(tasks)
    assert run.summary.done == ["c0"], run.summary.failed
    request = reasoner.requests[0]
    assert request.answer_schema == answer_schema(REASON_CLASSES, scores=False)
    assert request.prompt == prompts.instruction(REASON_CLASSES, version="mer-trace-v1")
    assert "scores" not in store.read("c0")["overall"]


# --- numeric prior sets -------------------------------------------------------------------------


def test_each_part_gives_its_class_scores_in_class_order_then_its_confidence():
    trace = stored(scored_answer())
    trace["visual"]["scores"] = {"happy": 0.7, "neutral": 0.1, "angry": 0.2}  # any key order
    made = trace_scores(trace, CLASSES)
    assert set(made) == set(TRACE_PARTS)
    assert made["visual"].values.dtype == np.float32 and made["visual"].values.shape == (len(CLASSES) + 1,)
    np.testing.assert_allclose(made["visual"].values, [0.1, 0.2, 0.7, 0.8])
    np.testing.assert_allclose(made["overall"].values, [0.25, 0.25, 0.5, 0.75])
    assert made["acoustic"].values is None and made["acoustic"].absent == "no audio track"


def test_a_version_1_trace_has_no_numeric_priors_and_says_why():
    made = trace_scores(stored(first_answer()), CLASSES)
    assert made["visual"].values is None and made["visual"].absent == NO_SCORES
    assert made["acoustic"].absent == "no audio track"  # an absent modality keeps the trace's reason


def test_scores_over_other_classes_are_absent_never_misread():
    made = trace_scores(stored(scored_answer()), ["neutral", "angry", "sad"])
    assert made["overall"].values is None and "not neutral, angry, sad" in made["overall"].absent


def test_numeric_manifests_name_the_source_and_classes_and_are_priors_of_each_modality():
    manifests = score_manifests(SOURCE, CLASSES)
    assert {part: m.encoder for part, m in manifests.items()} == {part: f"prior-scores-{part}" for part in TRACE_PARTS}
    assert all(is_prior(m.encoder) and is_scores_prior(m) for m in manifests.values())
    assert {part: m.modality for part, m in manifests.items()} == TRACE_PARTS
    assert all(m.dim == 4 and m.level == "utterance" for m in manifests.values())
    assert manifests["visual"].settings["source"]["prompt_version"] == "mer-trace-v2"
    other_source = score_manifests(TraceSource("local", "evidence-rules", "rules-1-mer-trace-v2"), CLASSES)
    other_classes = score_manifests(SOURCE, ["neutral", "happy", "angry"])
    names = {m.set_name for m in manifests.values()}
    assert names.isdisjoint(m.set_name for m in other_source.values())
    assert names.isdisjoint(m.set_name for m in other_classes.values())
    assert scores_prior_encoder("acoustic") == "prior-scores-acoustic"


# --- embedding a store: both kinds of set, or text alone for version 1 ------------------------------


@pytest.mark.slow  # the real text encoder
def test_mer_reason_writes_numeric_sets_for_a_scored_source_and_none_for_a_version_1_source(tmp_path):
    from mercli.priors import embed_traces

    config = load(None, environ={}, overrides={"data.classes": CLASSES})
    scored = TraceStore.open(tmp_path / "reasoning", SOURCE)
    for clip in ("a", "b"):
        scored.write(clip, stored(scored_answer(), clip=clip))
    sets = embed_traces(config, tmp_path / "features", scored)
    numeric = {s.manifest.encoder: s for s in sets if is_scores_prior(s.manifest)}
    assert len(sets) == 8 and set(numeric) == {f"prior-scores-{part}" for part in TRACE_PARTS}
    np.testing.assert_allclose(numeric["prior-scores-visual"].read("a").values, [0.25, 0.25, 0.5, 0.8])
    assert numeric["prior-scores-acoustic"].read("b").absent == "no audio track"
    assert input_spec(numeric["prior-scores-acoustic"]).prior

    first = TraceStore.open(tmp_path / "reasoning", TraceSource("gemini", "gemini-2.5-flash", "mer-trace-v1"))
    first.write("a", stored(first_answer(), first.source, clip="a"))
    only_text = embed_traces(config, tmp_path / "features", first)
    assert len(only_text) == 4 and not any(is_scores_prior(s.manifest) for s in only_text)


# --- the local reasoner -------------------------------------------------------------------------


def local_answer(scored: bool) -> dict:
    """The local reasoner on a happy face, a quiet flat voice and happy words."""
    asked = request({"fer-expression": fer(happy=0.6), "egemaps": egemaps(**QUIET_FLAT)}, "I am so happy")
    if not scored:
        asked = replace(asked, answer_schema=answer_schema(LOCAL_CLASSES, scores=False))
    return LocalReasoner().reason(asked).answer


def test_the_local_reasoner_gives_a_distribution_per_modality_whose_top_is_its_emotion():
    answer = local_answer(scored=True)
    assert trace_problems(full_trace(answer), LOCAL_CLASSES, scores=True) == []
    for part in ("visual", "acoustic", "textual"):
        scores = answer[part]["scores"]
        assert list(scores) == list(LOCAL_CLASSES) and sum(scores.values()) == pytest.approx(1, abs=1e-3)
        assert max(scores, key=scores.get) == answer[part]["emotion"]
        assert scores[answer[part]["emotion"]] == pytest.approx(answer[part]["confidence"], abs=1e-3)
        assert min(scores.values()) > 0  # every class starts with the same smoothing support
    assert answer["visual"]["emotion"] == "happy" and answer["acoustic"]["emotion"] == "sad"


def test_the_local_overall_scores_are_the_confidence_weighted_mean_of_the_modalities():
    answer = local_answer(scored=True)
    parts = ("visual", "acoustic", "textual")
    weights = np.array([answer[p]["confidence"] for p in parts])
    rows = np.array([[answer[p]["scores"][c] for c in answer["overall"]["scores"]] for p in parts])
    expected = weights @ rows / weights.sum()
    np.testing.assert_allclose(list(answer["overall"]["scores"].values()), expected, atol=1e-4)


def test_the_local_reasoner_answers_version_1_without_scores_and_files_it_as_it_always_did():
    answer = local_answer(scored=False)
    assert not any("scores" in part for part in answer.values())
    assert trace_problems(full_trace(answer), LOCAL_CLASSES, scores=False) == []
    assert LocalReasoner().trace_version("mer-trace-v1") == "rules-1"


def test_an_absent_modality_has_null_scores_from_the_local_reasoner():
    result = local_reasoning({"fer-expression": NO_FACE, "egemaps": egemaps(**QUIET_FLAT)})
    assert result["visual"]["scores"] is None and result["textual"]["scores"] is None
    assert result["overall"]["scores"] == result["acoustic"]["scores"]  # the only observed modality


# --- injection into the network ---------------------------------------------------------------


def write_numeric_priors(root: Path, labels: Path, absent_every: int = 4) -> list[FeatureSet]:
    """Numeric priors for the synthetic workspace: the acoustic part informative (its label gets
    most of the mass), absent for every ``absent_every``-th clip; the overall part always there."""
    rng = np.random.default_rng(1)
    manifests = score_manifests(TraceSource("local", "evidence-rules", "rules-1-mer-trace-v2"), SYN_CLASSES)
    sets = {part: FeatureSet.open(root / "features", manifests[part]) for part in ("acoustic", "overall")}
    for number, line in enumerate(labels.read_text().splitlines()[1:]):
        clip, label = line.split(",")[:2]
        scores = {c: (0.7 if c == label else 0.15) for c in SYN_CLASSES}
        trace = {"visual": {"absent": "no face"}, "textual": {"absent": "no speech"},
                 "acoustic": {"emotion": label, "confidence": 0.7, "scores": scores,
                              "absent": "no audio track" if number % absent_every == 0 else None},
                 "overall": {"emotion": label, "confidence": float(rng.random()), "scores": scores}}
        made = trace_scores(trace, SYN_CLASSES)
        for part, feature_set in sets.items():
            feature_set.write(clip, made[part])
    return list(sets.values())


def test_a_model_trained_with_numeric_priors_attends_to_them_and_masks_absent_ones(tmp_path):
    from mercli.train import train
    from mercli.trainset import build_table, collate

    labels = write_workspace(tmp_path, clips_per_class=6)
    numeric = write_numeric_priors(tmp_path, labels)
    result = train(config(), Workspace(tmp_path), labels, name="numeric")
    names = {s.name for s in numeric}
    assert names <= set(json.loads((result.run / "config.json").read_text())["priors"])
    state = result.folds[0].state
    assert all(f"prior_projections.{name}.project.0.weight" in state for name in names)
    assert state[f"prior_projections.{numeric[0].name}.project.0.weight"].shape[1] == 4  # 3 classes + confidence
    streams = {s.name: s.manifest.modality for s in list_feature_sets(tmp_path / "features")
               if not is_prior(s.manifest.encoder)}
    # the audio stream hears the acoustic and overall scores, the visual stream the overall ones
    assert {k.split(".")[1] for k in state if k.startswith("prior_attention.")} == set(streams)
    table = build_table(config(), tmp_path / "features", labels)
    batch = collate(table, range(8))
    acoustic = next(s.name for s in numeric if s.manifest.encoder == "prior-scores-acoustic")
    assert batch.masks[acoustic].tolist() == [i % 4 != 0 for i in range(8)]  # absent: masked, not zero-filled


def test_train_features_chooses_text_numeric_or_both_kinds_of_prior_by_set_name(tmp_path):
    from mercli.train import train

    labels = write_workspace(tmp_path, clips_per_class=6, prior=True)  # prior-visual: an embedded (text) prior
    numeric = write_numeric_priors(tmp_path, labels)
    sets = {s.name: s for s in list_feature_sets(tmp_path / "features")}
    modality_sets = [n for n, s in sets.items() if not is_prior(s.manifest.encoder)]
    text = [n for n, s in sets.items() if is_prior(s.manifest.encoder) and not is_scores_prior(s.manifest)]
    chosen = {"text": modality_sets + text, "numeric": modality_sets + [s.name for s in numeric],
              "both": modality_sets + text + [s.name for s in numeric]}
    for kind, names in chosen.items():
        result = train(config(**{"train.features": names, "train.epochs": 1}), Workspace(tmp_path), labels, name=kind)
        used = set(json.loads((result.run / "config.json").read_text())["priors"])
        assert used == set(names) - set(modality_sets), kind

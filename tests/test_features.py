"""The feature store: manifests, both levels, masks, absent records, validity checks, MERTools
folders, failure records and atomic writes."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from mercli import features as store
from mercli.contracts import Features
from mercli.errors import DataError
from mercli.failures import FailureLog
from mercli.features import FeatureSet, Manifest, list_feature_sets


def manifest(**changes) -> Manifest:
    base = dict(encoder="whisper", encoder_version="1", package="mer", package_version="0.1.0",
                weights="sha256:abc", settings={"fps": 2.0, "sample_rate": 16000}, modality="audio",
                dim=4, level="utterance")
    return Manifest(**{**base, **changes})


def frame_manifest(**changes) -> Manifest:
    return manifest(level="frame", modality="visual", encoder="face", **changes)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".part"))


# --- manifests --------------------------------------------------------------------------------


def test_config_hash_ignores_creation_time_and_package_version():
    first = manifest(created="2024-01-01T00:00:00+00:00")
    again = manifest(created="2025-06-01T00:00:00+00:00", package_version="0.2.0")
    assert first.config_hash == again.config_hash
    assert first.set_name == f"whisper-{first.config_hash[:8]}"


def test_config_hash_is_pinned_so_existing_feature_sets_stay_found():
    # Changing how the hash is computed orphans every feature set users already extracted.
    assert manifest().config_hash == "979922660bfbaa2b8391e953a8b21602a5453158445ff2fa6a724885c5131c57"
    assert manifest(settings={"sample_rate": 16000, "fps": 2.0}).config_hash == manifest().config_hash


@pytest.mark.parametrize("change", [
    {"settings": {"fps": 4.0, "sample_rate": 16000}},
    {"weights": "sha256:def"},
    {"encoder_version": "2"},
    {"dim": 8},
    {"level": "frame"},
])
def test_anything_that_changes_the_output_changes_the_set_name(change):
    assert manifest(**change).set_name != manifest().set_name


def test_manifest_json_round_trip():
    original = manifest()
    restored = Manifest.from_json(json.loads(json.dumps(original.to_json())))
    assert restored == original and restored.created == original.created


@pytest.mark.parametrize("edit, problem", [
    (lambda d: d.pop("dim"), "missing key(s) dim"),
    (lambda d: d.update(extra=1), "unknown key(s) extra"),
    (lambda d: d.update(weights=3), "'weights' must be a string"),
    (lambda d: d.update(settings=[]), "'settings' must be an object"),
    (lambda d: d.update(dim="4"), "dim must be a positive integer"),
    (lambda d: d.update(level="clip"), "level 'clip'"),
    (lambda d: d.update(modality="smell"), "modality 'smell'"),
    (lambda d: d.update(encoder="../up"), "invalid encoder name"),
])
def test_manifest_from_json_rejects_bad_documents(edit, problem):
    document = manifest().to_json()
    edit(document)
    with pytest.raises(DataError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        Manifest.from_json(document)


def test_open_creates_the_set_with_its_manifest_and_reopens_it(tmp_path):
    created = FeatureSet.open(tmp_path, manifest())
    assert (created.path / "manifest.json").is_file()
    reopened = FeatureSet.open(tmp_path, manifest(created="2030-01-01T00:00:00+00:00"))
    assert reopened.path == created.path
    assert reopened.manifest.created == created.manifest.created  # the stored one
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o027, 0o750)], ids=["022", "027"])
def test_a_new_set_folder_takes_the_umask_like_every_other_file(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        created = FeatureSet.open(tmp_path / "features", manifest())
    finally:
        os.umask(previous)
    assert stat.S_IMODE(created.path.stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "features").stat().st_mode) == mode


def test_open_refuses_a_folder_whose_manifest_does_not_match(tmp_path):
    opened = FeatureSet.open(tmp_path, manifest())
    document = json.loads((opened.path / "manifest.json").read_text())
    document["settings"]["fps"] = 25.0
    (opened.path / "manifest.json").write_text(json.dumps(document))
    with pytest.raises(DataError, match=r"manifest\.json: manifest does not match"):
        FeatureSet.open(tmp_path, manifest())


def test_open_refuses_a_folder_with_an_unreadable_manifest(tmp_path):
    (tmp_path / manifest().set_name).mkdir()
    (tmp_path / manifest().set_name / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="unreadable manifest"):
        FeatureSet.open(tmp_path, manifest())


def test_open_accepts_a_rival_shard_creating_the_same_set_first(tmp_path, monkeypatch):
    wanted = manifest()

    def rival_wins(_source, destination):
        Path(destination).mkdir()
        (Path(destination) / "manifest.json").write_text(json.dumps(wanted.to_json()))
        raise OSError(39, "Directory not empty")

    monkeypatch.setattr(store.os, "rename", rival_wins)
    assert FeatureSet.open(tmp_path, wanted).manifest == wanted
    assert leftovers(tmp_path) == []


def test_open_interrupted_leaves_no_set_and_no_staging_folder(tmp_path, monkeypatch):
    def interrupted(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        FeatureSet.open(tmp_path, manifest())
    assert list(tmp_path.iterdir()) == []


# --- writing and reading ----------------------------------------------------------------------


def test_utterance_round_trip(tmp_path):
    feature_set = FeatureSet.open(tmp_path, manifest())
    assert feature_set.status("clip1") is None
    feature_set.write("clip1", Features(np.arange(4, dtype=np.float64)))
    assert feature_set.status("clip1") == "done"
    read = feature_set.read("clip1")
    assert read.values.dtype == np.float32 and read.values.tolist() == [0, 1, 2, 3]
    assert read.mask is None and read.absent is None
    assert feature_set.clip_ids() == ["clip1"]


def test_frame_round_trip_stores_masked_rows_as_zeros_and_keeps_the_mask(tmp_path):
    feature_set = FeatureSet.open(tmp_path, frame_manifest())
    values = np.full((3, 4), 7.0)
    values[1] = np.nan  # no face in frame 1: whatever the encoder left there is not a measurement
    feature_set.write("clip1", Features(values, np.array([True, False, True])))
    assert feature_set.status("clip1") == "done"
    read = feature_set.read("clip1")
    assert read.mask.tolist() == [True, False, True]
    assert read.values[1].tolist() == [0, 0, 0, 0] and read.values[0].tolist() == [7, 7, 7, 7]
    assert (feature_set.path / "clip1.mask.npy").is_file()
    assert feature_set.clip_ids() == ["clip1"]


def test_frame_write_without_a_mask_marks_every_frame_real(tmp_path):
    feature_set = FeatureSet.open(tmp_path, frame_manifest())
    feature_set.write("clip1", Features(np.ones((2, 4))))
    assert feature_set.read("clip1").mask.tolist() == [True, True]


def test_absent_record_is_a_result_and_replaces_or_is_replaced_by_values(tmp_path):
    feature_set = FeatureSet.open(tmp_path, frame_manifest())
    feature_set.write("clip1", Features(np.ones((2, 4))))
    feature_set.write("clip1", Features(None, absent="no face\nin any frame"))
    assert feature_set.status("clip1") == "absent"
    assert feature_set.read("clip1") == Features(None, None, "no face in any frame")
    assert sorted(p.name for p in feature_set.path.glob("clip1*")) == ["clip1.absent.json"]
    feature_set.write("clip1", Features(np.ones((2, 4))))
    assert sorted(p.name for p in feature_set.path.glob("clip1*")) == ["clip1.mask.npy", "clip1.npy"]
    assert feature_set.clip_ids() == ["clip1"]


@pytest.mark.parametrize("result, problem", [
    (Features(np.ones(5)), r"expected values of shape \(4,\)"),
    (Features(np.ones(4), np.ones(1, dtype=bool)), "mask was given for an utterance-level set"),
    (Features(np.array([1, 2, np.inf, 4])), "NaN or infinity"),
    (Features(None), "either feature values or a non-empty absent reason"),
    (Features(np.ones(4), absent="no audio"), "either feature values"),
    (Features(None, absent="  "), "non-empty absent reason"),
])
def test_utterance_write_rejects_output_that_breaks_the_contract(tmp_path, result, problem):
    feature_set = FeatureSet.open(tmp_path, manifest())
    with pytest.raises(DataError, match=problem):
        feature_set.write("clip1", result)
    assert feature_set.clip_ids() == []


@pytest.mark.parametrize("result, problem", [
    (Features(np.ones(4)), r"expected values of shape \(T, 4\)"),
    (Features(np.ones((0, 4))), r"with T > 0"),
    (Features(np.ones((2, 4)), np.ones(3, dtype=bool)), "mask of shape"),
    (Features(np.ones((2, 4)), np.zeros(2, dtype=bool)), "report the modality as absent"),
    (Features(np.full((2, 4), np.nan), np.array([True, False])), "NaN or infinity in unmasked frames"),
])
def test_frame_write_rejects_output_that_breaks_the_contract(tmp_path, result, problem):
    feature_set = FeatureSet.open(tmp_path, frame_manifest())
    with pytest.raises(DataError, match=problem):
        feature_set.write("clip1", result)
    assert feature_set.clip_ids() == []


@pytest.mark.parametrize("clip_id, problem", [
    ("", "empty clip id"),
    ("../escape", "climbs out of its folder"),
    ("a/b", "holds a path separator"),
    ("a\\b", "holds a path separator"),
    (".hidden", "starts with a dot"),
    ("x.mask", "keeps for a clip's mask and absent record"),
    ("x.absent", "keeps for a clip's mask and absent record"),
])
def test_clip_ids_that_could_escape_hide_or_clash_are_rejected(tmp_path, clip_id, problem):
    feature_set = FeatureSet.open(tmp_path, manifest())
    with pytest.raises(DataError, match=problem):
        feature_set.write(clip_id, Features(np.ones(4)))
    with pytest.raises(DataError, match=problem):
        feature_set.status(clip_id)
    if clip_id.endswith((".mask", ".absent")):  # the failure log has no companion files: it can say why
        assert FailureLog(tmp_path).record(clip_id, "invalid clip id").clip == clip_id
    else:
        with pytest.raises(DataError, match=problem):
            FailureLog(tmp_path).record(clip_id, "boom")


@pytest.mark.parametrize("clip_id", ["sample 00.1", "_underscore", "manifest", "x.mask2"])
def test_unusual_but_harmless_clip_ids_round_trip(tmp_path, clip_id):
    feature_set = FeatureSet.open(tmp_path, frame_manifest())
    feature_set.write(clip_id, Features(np.ones((2, 4))))
    assert feature_set.status(clip_id) == "done" and feature_set.clip_ids() == [clip_id]
    assert FeatureSet.open(tmp_path, frame_manifest()).manifest == frame_manifest()


# --- invalid stored files: status None (redo), read names the file ----------------------------


def _corrupt(feature_set: FeatureSet, name: str, content) -> Path:
    path = feature_set.path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content)
    return path


@pytest.mark.parametrize("level, name, content, problem", [
    ("utterance", "c.npy", np.ones(5, dtype=np.float32), r"shape \(5,\), expected \(4,\)"),
    ("utterance", "c.npy", np.ones((1, 4), dtype=np.float32), r"shape \(1, 4\)"),
    ("utterance", "c.npy", np.ones(4, dtype=np.int64), "not floating-point"),
    ("utterance", "c.npy", b"", "not a readable .npy file"),
    ("utterance", "c.npy", b"this is text", "not a readable .npy file"),
    ("frame", "c.npy", np.ones((2, 5), dtype=np.float32), r"expected \(T, 4\)"),
    ("frame", "c.mask.npy", np.ones(3, dtype=bool), r"expected bool \(2,\)"),
    ("frame", "c.mask.npy", np.ones(2, dtype=np.float32), "float32 mask"),
])
def test_invalid_stored_features_are_redone_and_unreadable(tmp_path, level, name, content, problem):
    feature_set = FeatureSet.open(tmp_path, manifest() if level == "utterance" else frame_manifest())
    feature_set.write("c", Features(np.ones(4) if level == "utterance" else np.ones((2, 4))))
    _corrupt(feature_set, name, content)
    assert feature_set.status("c") is None
    with pytest.raises(DataError, match=problem):
        feature_set.read("c")


def test_truncated_npy_is_redone(tmp_path):
    feature_set = FeatureSet.open(tmp_path, manifest(dim=256))
    feature_set.write("c", Features(np.ones(256)))
    path = feature_set.path / "c.npy"
    path.write_bytes(path.read_bytes()[:-10])
    assert feature_set.status("c") is None
    with pytest.raises(DataError, match=r"c\.npy: truncated"):
        feature_set.read("c")


def test_frame_values_without_their_mask_are_redone(tmp_path):
    feature_set = FeatureSet.open(tmp_path, frame_manifest())
    feature_set.write("c", Features(np.ones((2, 4))))
    (feature_set.path / "c.mask.npy").unlink()
    assert feature_set.status("c") is None
    with pytest.raises(DataError, match=r"c\.mask\.npy"):
        feature_set.read("c")


def test_invalid_absent_record_is_redone(tmp_path):
    feature_set = FeatureSet.open(tmp_path, manifest())
    (feature_set.path / "c.absent.json").write_text('{"why": 1}')
    assert feature_set.status("c") is None
    with pytest.raises(DataError, match=r"c\.absent\.json"):
        feature_set.read("c")


def test_reading_a_clip_never_stored_names_it(tmp_path):
    feature_set = FeatureSet.open(tmp_path, manifest())
    with pytest.raises(DataError, match="no features stored for clip nope"):
        feature_set.read("nope")


# --- atomic writes ----------------------------------------------------------------------------


@pytest.mark.parametrize("previous", [Features(np.ones((2, 4))), Features(None, absent="no face")])
def test_interrupted_write_leaves_no_partial_or_temporary_file(tmp_path, monkeypatch, previous):
    feature_set = FeatureSet.open(tmp_path, frame_manifest())
    feature_set.write("c", previous)
    real_save = np.save
    calls = []

    def save_then_interrupt(handle, array, **options):
        calls.append(array.dtype)
        if array.dtype == np.float32:  # the mask went through; Ctrl-C while writing the values
            handle.write(b"\x93NUMPY partial")
            raise KeyboardInterrupt
        real_save(handle, array, **options)

    monkeypatch.setattr(store.np, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        feature_set.write("c", Features(np.zeros((3, 4))))
    assert calls == [np.bool_, np.float32]
    assert leftovers(tmp_path) == []
    assert not (feature_set.path / "c.npy").exists()
    assert feature_set.status("c") is None  # new mask, no values: redone, never mixed with the old result


def test_interrupted_absent_record_leaves_no_temporary_file(tmp_path, monkeypatch):
    feature_set = FeatureSet.open(tmp_path, manifest())

    def interrupted(_descriptor):
        raise KeyboardInterrupt

    monkeypatch.setattr("mercli.atomic.os.fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        feature_set.write("c", Features(None, absent="no audio track"))
    assert leftovers(tmp_path) == [] and feature_set.status("c") is None


# --- listing sets, MERTools folders -----------------------------------------------------------


def _mertools_folder(root: Path, name: str, arrays: dict[str, np.ndarray]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for clip, array in arrays.items():
        np.save(folder / f"{clip}.npy", array)
    return folder


def test_mertools_utterance_folder_is_read_as_it_is(tmp_path):
    _mertools_folder(tmp_path, "chinese-hubert-large-UTT",
                     {"sample_00000001": np.arange(6, dtype=np.float64), "sample_00000002": np.ones(6)})
    (only,) = list_feature_sets(tmp_path)
    assert only.read_only and only.name == "chinese-hubert-large-UTT"
    assert (only.manifest.encoder, only.manifest.level, only.manifest.dim, only.manifest.modality) == \
        ("chinese-hubert-large", "utterance", 6, "unknown")
    assert only.clip_ids() == ["sample_00000001", "sample_00000002"]
    assert only.status("sample_00000001") == "done"
    read = only.read("sample_00000001")
    assert read.values.dtype == np.float32 and read.values.tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(DataError, match="read-only"):
        only.write("sample_00000003", Features(np.ones(6)))


def test_mertools_modality_comes_from_a_one_word_sidecar(tmp_path):
    folder = _mertools_folder(tmp_path, "manet-UTT", {"a": np.ones(3)})
    (folder / "modality.txt").write_text("visual\n")
    assert list_feature_sets(tmp_path)[0].manifest.modality == "visual"
    (folder / "modality.txt").write_text("vision")
    with pytest.raises(DataError, match=r"modality\.txt: .*modality 'vision'"):
        list_feature_sets(tmp_path)


def test_mertools_file_of_another_dimension_is_refused(tmp_path):
    _mertools_folder(tmp_path, "bert-UTT", {"a": np.ones(3), "b": np.ones(5)})
    (only,) = list_feature_sets(tmp_path)
    assert only.status("b") is None
    with pytest.raises(DataError, match=r"b\.npy: shape \(5,\), expected \(3,\)"):
        only.read("b")


def test_mertools_frame_folder_has_every_frame_real(tmp_path):
    _mertools_folder(tmp_path, "clip-vit-FRA", {"a": np.ones((5, 3), dtype=np.float32)})
    (only,) = list_feature_sets(tmp_path)
    assert (only.manifest.level, only.manifest.dim) == ("frame", 3)
    assert only.status("a") == "done"
    assert only.read("a").mask.tolist() == [True] * 5


def test_mertools_frames_stored_in_fortran_order_read_as_numpy_loads_them(tmp_path):
    frames = np.arange(15, dtype=np.float64).reshape(5, 3)
    folder = _mertools_folder(tmp_path, "clip-vit-FRA", {"a": np.asfortranarray(frames), "b": frames})
    (only,) = list_feature_sets(tmp_path)
    for clip in ("a", "b"):
        read = only.read(clip).values
        assert read.dtype == np.float32 and np.array_equal(read, np.load(folder / f"{clip}.npy")), clip


def test_mertools_folder_of_the_wrong_shape_is_refused(tmp_path):
    _mertools_folder(tmp_path, "bert-UTT", {"a": np.ones((2, 3))})
    with pytest.raises(DataError, match="does not fit a MERTools utterance-level folder"):
        list_feature_sets(tmp_path)


def test_list_feature_sets_reads_every_set_and_skips_the_store_own_entries(tmp_path):
    mine = FeatureSet.open(tmp_path, manifest())
    _mertools_folder(tmp_path, "wavlm-UTT", {"a": np.ones(2)})
    (tmp_path / "empty-FRA").mkdir()
    FailureLog(tmp_path).record("a", "corrupt file", path="a.mp4", stage="decode")
    (tmp_path / ".whisper-0000.part").mkdir()
    assert [s.name for s in list_feature_sets(tmp_path)] == ["wavlm-UTT", mine.name]
    assert list_feature_sets(tmp_path / "missing") == []


def test_list_feature_sets_refuses_an_unknown_folder_and_a_renamed_set(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError, match="stuff: not a feature set"):
        list_feature_sets(tmp_path)
    (tmp_path / "stuff").rmdir()
    opened = FeatureSet.open(tmp_path, manifest())
    opened.path.rename(tmp_path / "whisper-renamed")
    with pytest.raises(DataError, match="should be named"):
        list_feature_sets(tmp_path)


# --- failure records --------------------------------------------------------------------------


def test_failures_are_recorded_listed_and_cleared(tmp_path):
    failures = FailureLog(tmp_path)
    assert failures.all() == []
    recorded = failures.record("b", "cannot decode:\n  moov atom not found", path="/clips/b.mp4", stage="decode")
    failures.record("a", "zero bytes", path="/clips/a.mp4", stage="decode")
    assert (tmp_path / "_failures" / "b.json").is_file()
    assert recorded.reason == "cannot decode: moov atom not found"
    assert [f.clip for f in failures.all()] == ["a", "b"]
    assert failures.get("b") == recorded
    assert failures.get("b").details == {"path": "/clips/b.mp4", "stage": "decode"}
    failures.clear("b")
    failures.clear("never-failed")
    assert [f.clip for f in failures.all()] == ["a"] and failures.get("b") is None


def test_unreadable_failure_record_is_named(tmp_path):
    failures = FailureLog(tmp_path)
    failures.folder.mkdir()
    (failures.folder / "x.json").write_text("[]")
    with pytest.raises(DataError, match=r"x\.json: unreadable failure record"):
        failures.all()


def test_manifest_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        manifest().dim = 3  # type: ignore[misc]

"""Clip discovery, clip ids, and the rule that no path leaves the clips folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mercli.clips import (
    MAX_CLIP_ID_BYTES, Clip, clip_from_file, clip_id_of, clip_kind, discover, resolve_clip, scan,
    storable_clip_id, validate_clip_id,
)
from mercli.errors import DataError


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# --- discover ---------------------------------------------------------------------------------


def test_discover_finds_every_media_file_recursively_sorted_by_id(tmp_path):
    for name in ["b.mp4", "a.WAV", "sub/c.Mkv", "sub/deeper/d.m4a", "e.avi", "f.flv", "g.mov", "h.webm",
                 "i.mp3", "notes.txt", "labels.csv", "sub/readme"]:
        touch(tmp_path / name)
    clips = discover(tmp_path)
    assert [c.clip_id for c in clips] == ["a", "b", "c", "d", "e", "f", "g", "h", "i"]
    assert clips[0] == Clip("a", tmp_path / "a.WAV", "audio")
    assert {c.clip_id: c.kind for c in clips} == {
        "a": "audio", "b": "video", "c": "video", "d": "audio", "e": "video",
        "f": "video", "g": "video", "h": "video", "i": "audio",
    }
    assert clips[2].path == tmp_path / "sub" / "c.Mkv"


def test_discover_skips_hidden_files_and_folders(tmp_path):
    touch(tmp_path / "kept.mp4")
    touch(tmp_path / ".hidden.mp4")
    touch(tmp_path / ".cache" / "inside.mp4")
    touch(tmp_path / "sub" / ".partial" / "x.wav")
    assert [c.clip_id for c in discover(tmp_path)] == ["kept"]


def test_discover_works_inside_a_hidden_root(tmp_path):
    touch(tmp_path / ".root" / "a.mp4")
    assert [c.clip_id for c in discover(tmp_path / ".root")] == ["a"]


def test_ids_keep_inner_dots(tmp_path):
    touch(tmp_path / "take.2.mp4")
    assert [c.clip_id for c in discover(tmp_path)] == ["take.2"]


def test_an_empty_folder_has_no_clips(tmp_path):
    assert discover(tmp_path) == []


def test_duplicate_ids_across_subfolders_name_both_files(tmp_path):
    first = touch(tmp_path / "happy" / "clip1.mp4")
    second = touch(tmp_path / "sad" / "clip1.mp4")
    with pytest.raises(DataError) as caught:
        discover(tmp_path)
    assert "'clip1'" in str(caught.value)
    assert str(first) in str(caught.value) and str(second) in str(caught.value)


def test_duplicate_ids_with_different_extensions_name_both_files(tmp_path):
    touch(tmp_path / "clip1.mp4")
    touch(tmp_path / "clip1.wav")
    with pytest.raises(DataError, match=r"clip1\.mp4 and .*clip1\.wav"):
        discover(tmp_path)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'nowhere'}: no such folder"):
        discover(tmp_path / "nowhere")


def test_a_file_is_not_a_clips_folder(tmp_path):
    clip = touch(tmp_path / "a.mp4")
    with pytest.raises(DataError, match=f"{clip}: not a folder"):
        discover(clip)


def test_a_linked_file_leading_outside_the_folder_is_refused(tmp_path):
    outside = touch(tmp_path / "outside" / "secret.mp4")
    clips = tmp_path / "clips"
    touch(clips / "ok.mp4")
    (clips / "escape.mp4").symlink_to(outside)
    with pytest.raises(DataError, match="escape.mp4.*outside the clips folder"):
        discover(clips)


def test_a_linked_folder_leading_outside_the_folder_is_refused(tmp_path):
    touch(tmp_path / "outside" / "secret.mp4")
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "elsewhere").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(DataError, match="elsewhere.*outside the clips folder"):
        discover(clips)


def test_links_that_stay_inside_are_followed_and_loops_end(tmp_path):
    touch(tmp_path / "store" / "a.mp4")
    (tmp_path / "alias.wav").symlink_to(tmp_path / "store" / "a.mp4")
    (tmp_path / "store" / "loop").symlink_to(tmp_path, target_is_directory=True)
    clips = discover(tmp_path)
    assert [c.clip_id for c in clips] == ["a", "alias"]
    assert clips[1].path == tmp_path / "alias.wav"


def test_the_clips_folder_itself_may_be_a_link(tmp_path):
    touch(tmp_path / "real" / "a.mp4")
    (tmp_path / "linked").symlink_to(tmp_path / "real", target_is_directory=True)
    assert [c.clip_id for c in discover(tmp_path / "linked")] == ["a"]


def test_an_unreadable_folder_is_named(tmp_path, monkeypatch):
    touch(tmp_path / "locked" / "a.mp4")
    listing = os.scandir

    def refuse_locked(path):  # chmod cannot lock out root, who runs the tests in CI
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", refuse_locked)
    with pytest.raises(DataError, match="locked: cannot read the folder: Permission denied"):
        discover(tmp_path)


def folder_with_bad_entries(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A clips folder holding two good clips and one entry of each kind scan refuses, with the
    problem each one's reason names."""
    touch(tmp_path / "outside" / "secret.mp4")
    clips = tmp_path / "clips"
    touch(clips / "good.mp4")
    touch(clips / "sub" / "also.wav")
    (clips / "escape.mp4").symlink_to(tmp_path / "outside" / "secret.mp4")
    (clips / "elsewhere").symlink_to(tmp_path / "outside", target_is_directory=True)
    (clips / "loop.mp3").symlink_to("loop.mp3")
    (clips / "sub" / "dangling.mp4").symlink_to("gone.mp4")
    touch(clips / "x.mask.mp4")
    touch(clips / "y.absent.wav")
    touch(clips / "a\tb.mp4")
    return clips, {
        "elsewhere": "leads outside the clips folder",
        "escape.mp4": "leads outside the clips folder",
        "loop.mp3": "is a loop of symbolic links",
        "sub/dangling.mp4": "is a link to gone.mp4, which does not exist",
        "x.mask.mp4": "keeps for a clip's mask and absent record",
        "y.absent.wav": "keeps for a clip's mask and absent record",
        "a\tb.mp4": "holds a control character",
    }


def test_scan_refuses_each_bad_entry_on_its_own_and_keeps_the_others(tmp_path):
    clips, problems = folder_with_bad_entries(tmp_path)
    found = scan(clips)
    assert found.clips == [Clip("also", clips / "sub" / "also.wav", "audio"), Clip("good", clips / "good.mp4", "video")]
    assert sorted(str(entry.path.relative_to(clips)) for entry in found.refused) == sorted(problems)
    for entry in found.refused:
        assert entry.reason.startswith(f"{entry.path}: ") and "\n" not in entry.reason
        assert problems[str(entry.path.relative_to(clips))] in entry.reason
        assert entry.to_json() == {"clip": str(entry.path), "reason": entry.reason}


def test_discover_refuses_a_folder_with_bad_entries_naming_the_first(tmp_path):
    clips, problems = folder_with_bad_entries(tmp_path)
    first_and_count = f"^{clips / 'elsewhere'}: .* \\(and {len(problems) - 1} more refused entries\\)$"
    with pytest.raises(DataError, match=first_and_count):
        discover(clips)


def test_scan_still_refuses_the_whole_folder_for_two_clips_with_one_id(tmp_path):
    touch(tmp_path / "happy" / "clip1.mp4")
    touch(tmp_path / "sad" / "clip1.wav")
    (tmp_path / "loop.mp4").symlink_to("loop.mp4")
    with pytest.raises(DataError, match="two clips share the id 'clip1'"):
        scan(tmp_path)


def test_discover_on_the_real_clips(shared_data):
    ids = [c.clip_id for c in discover(shared_data / "mer2023")]
    assert len(ids) == 8 and ids == sorted(ids)
    crema = discover(shared_data / "crema-d")
    assert len(crema) == 12
    assert {c.kind for c in crema if c.clip_id.startswith("1001")} == {"video"}
    assert {c.kind for c in crema if c.clip_id.startswith("1002")} == {"audio"}


# --- ids --------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip_id", ["sample_00000167", "03a01Wa", "take.2", "clip with spaces", "片段01"])
def test_plain_file_names_are_valid_ids(clip_id):
    assert validate_clip_id(clip_id, "labels.csv:2") == clip_id


@pytest.mark.parametrize("clip_id, problem", [
    ("", "empty clip id"),
    ("../x", "climbs out of its folder with '..'"),
    ("a/../../x", "climbs out of its folder"),
    ("/etc/passwd", "is an absolute path"),
    ("C:\\clips\\x", "is an absolute path"),
    ("sub/x", "holds a path separator"),
    ("sub\\x", "holds a path separator"),
    ("..", "starts with a dot"),
    (".", "starts with a dot"),
    (".hidden", "starts with a dot"),
    ("a\nb", "control character"),
    ("a\x00b", "control character"),
    ("b\udce4d", "is not UTF-8"),  # the name b'b\xe4d' (Latin-1) as os.fsdecode gives it
    ("x" * (MAX_CLIP_ID_BYTES + 1), "longer than"),
])
def test_unsafe_ids_are_refused_naming_where(clip_id, problem):
    with pytest.raises(DataError, match=r"^labels\.csv:7: .*" + problem):
        validate_clip_id(clip_id, "labels.csv:7")


def test_a_file_whose_name_cannot_be_an_id_is_named(tmp_path):
    touch(tmp_path / "a\nb.mp4")
    with pytest.raises(DataError, match="control character"):
        discover(tmp_path)


@pytest.mark.parametrize("name, expected", [
    ("sample_01.mp4", "sample_01"), ("a.WAV", "a"), ("take.2", "take.2"), ("x.csv", "x.csv"),
    ("sub/x.mp4", "sub/x"),
])
def test_clip_id_of_strips_only_media_extensions(name, expected):
    assert clip_id_of(name) == expected


def test_clip_kind_by_extension():
    assert clip_kind("a.MP4") == "video"
    assert clip_kind("a.m4a") == "audio"
    assert clip_kind("a.txt") is None
    assert clip_kind("mp4") is None


# --- paths from a labels file -------------------------------------------------------------------


def test_a_relative_path_inside_resolves(tmp_path):
    clip = touch(tmp_path / "clips" / "happy" / "a.mp4")
    assert resolve_clip(tmp_path / "clips", "happy/a.mp4", "labels.csv:2") == clip.resolve()
    assert resolve_clip(tmp_path / "clips", "happy/./a.mp4", "labels.csv:2") == clip.resolve()


@pytest.mark.parametrize("reference, problem", [
    ("../x.mp4", "climbs out of the clips folder"),
    ("happy/../../x.mp4", "climbs out of the clips folder"),
    ("..\\x.mp4", "climbs out of the clips folder"),
    ("/etc/passwd", "is an absolute path"),
    ("\\\\server\\share\\x.mp4", "is an absolute path"),
    ("C:\\x.mp4", "is an absolute path"),
])
def test_paths_leaving_the_folder_are_refused_naming_the_row(tmp_path, reference, problem):
    with pytest.raises(DataError, match=r"^labels\.csv:3: .*" + problem):
        resolve_clip(tmp_path, reference, "labels.csv:3")


def test_a_link_leading_outside_is_refused(tmp_path):
    touch(tmp_path / "secret.mp4")
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "sneaky.mp4").symlink_to(tmp_path / "secret.mp4")
    (clips / "dir").symlink_to(tmp_path, target_is_directory=True)
    for reference in ("sneaky.mp4", "dir/secret.mp4"):
        with pytest.raises(DataError, match=r"^labels\.csv:4: .*leads outside the clips folder"):
            resolve_clip(clips, reference, "labels.csv:4")


def test_a_link_loop_named_by_a_labels_file_is_one_line(tmp_path):
    (tmp_path / "loop.mp3").symlink_to("loop.mp3")
    with pytest.raises(DataError, match=r"^labels\.csv:5: 'loop\.mp3' is a loop of symbolic links$"):
        resolve_clip(tmp_path, "loop.mp3", "labels.csv:5")


@pytest.mark.parametrize("clip_id", ["x.mask", "x.absent"])
def test_ids_the_feature_store_keeps_for_companion_files_cannot_be_stored(clip_id):
    assert validate_clip_id(clip_id, "failure log") == clip_id  # a failure record can still name it
    with pytest.raises(DataError, match=r"^features/s: clip id .* keeps for a clip's mask and absent record"):
        storable_clip_id(clip_id, "features/s")
    assert storable_clip_id("x.mask2", "features/s") == "x.mask2"


# --- a single file ------------------------------------------------------------------------------


def test_clip_from_file(tmp_path):
    path = touch(tmp_path / "video.MOV")
    assert clip_from_file(path) == Clip("video", path, "video")
    with pytest.raises(DataError, match="not a clip"):
        clip_from_file(touch(tmp_path / "notes.txt"))
    with pytest.raises(DataError, match="no such file"):
        clip_from_file(tmp_path / "missing.mp4")
    with pytest.raises(DataError, match="keeps for a clip's mask"):
        clip_from_file(touch(tmp_path / "take.mask.mp4"))
    (tmp_path / "loop.mp4").symlink_to("loop.mp4")
    with pytest.raises(DataError, match="loop.mp4: a dangling link or a loop of symbolic links"):
        clip_from_file(tmp_path / "loop.mp4")
    (tmp_path / "folder.mp4").mkdir()
    with pytest.raises(DataError, match="folder.mp4: not a file"):
        clip_from_file(tmp_path / "folder.mp4")

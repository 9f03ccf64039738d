"""Choosing a reader, folding labels into class names, and the checks made on every reader's rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from mercli import config as configuration
from mercli import labels
from mercli.clips import discover
from mercli.settings import MER2024_CLASSES
from mercli.contracts import Dataset, LabelRecord
from mercli.errors import DataError, PluginError
from mercli.labels import LabelledClip, check_classes, choose_reader, map_label, read_labels


def settings(**overrides) -> configuration.Config:
    """The default configuration with ``data.<key>`` overrides, untouched by the environment."""
    return configuration.load(None, environ={}, overrides={f"data.{k}": v for k, v in overrides.items()})


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- reading real sources -----------------------------------------------------------------------


def test_crema_d_labels_file_folds_into_mer2024_classes(shared_data):
    clips = read_labels(shared_data / "crema-d" / "labels.csv", settings())
    by_id = {c.clip_id: c for c in clips}
    assert by_id["1001_DFA_HAP_XX"] == LabelledClip("1001_DFA_HAP_XX", "happy", "happiness", speaker="1001")
    assert {c.raw_label: c.label for c in clips} == {
        "anger": "angry", "disgust": "disgust", "fear": "fear",
        "happiness": "happy", "neutral": "neutral", "sadness": "sad",
    }


def test_crema_d_file_names_and_labels_file_give_the_same_clips(shared_data):
    from_names = read_labels(shared_data / "crema-d", settings())
    from_file = read_labels(shared_data / "crema-d" / "labels.csv", settings())
    assert [(c.clip_id, c.label, c.speaker) for c in from_names] == [(c.clip_id, c.label, c.speaker) for c in from_file]
    assert all(c.path.is_file() for c in from_names)


def test_emodb_file_names_and_labels_file_give_the_same_clips(shared_data):
    from_names = {c.clip_id: c for c in read_labels(shared_data / "emodb-dev", settings())}
    from_file = {c.clip_id: c for c in read_labels(shared_data / "emodb-dev" / "labels.csv", settings())}
    assert len(from_names) == len(from_file) == 278
    assert {k: (c.label, c.speaker) for k, c in from_names.items()} == {k: (c.label, c.speaker) for k, c in from_file.items()}


def test_mead_labels(shared_data):
    clips = read_labels(shared_data / "mead" / "labels.csv", settings())
    assert [(c.clip_id, c.label) for c in clips] == [
        ("M030_sad_3_001", "sad"), ("contempt", "contempt"), ("disgusted", "disgust"), ("fear", "fear"),
        ("happy", "happy"), ("sad", "sad"), ("surprised", "surprise"),
    ]


def test_mer2023_labels_cover_half_the_clips(shared_data):
    clips = read_labels(shared_data / "mer2023" / "labels.csv", settings())
    assert [c.label for c in clips] == ["happy", "sad", "angry", "surprise"]
    check_classes(clips, MER2024_CLASSES, shared_data / "mer2023" / "labels.csv")
    unlabelled = {c.clip_id for c in discover(shared_data / "mer2023")} - {c.clip_id for c in clips}
    assert len(unlabelled) == 4


# --- label maps ---------------------------------------------------------------------------------


def test_the_configured_map_has_case_insensitive_keys(tmp_path):
    source = write(tmp_path / "l.csv", "name,discrete\na,Happiness\nb,JOY\nc,\n")
    clips = read_labels(source, settings(label_map={"HAPPINESS": "happy", "joy": "happy"}))
    assert [(c.label, c.raw_label) for c in clips] == [("happy", "Happiness"), ("happy", "JOY"), (None, None)]


def test_a_configured_map_replaces_the_default_one(tmp_path):
    source = write(tmp_path / "l.csv", "name,discrete\na,happiness\n")
    assert read_labels(source, settings(label_map={}))[0].label == "happiness"
    assert read_labels(source, settings())[0].label == "happy"


def test_labels_take_the_spelling_of_the_configured_class(tmp_path):
    source = write(tmp_path / "l.csv", "name,discrete\na,Happy\nb,SURPRISE\nc,Contempt\n")
    assert [c.label for c in read_labels(source, settings())] == ["happy", "surprise", "Contempt"]


def test_the_reader_map_comes_before_the_configured_map():
    assert map_label("HAP", [{"HAP": "happiness"}, {"happiness": "happy"}], MER2024_CLASSES) == "happy"
    assert map_label("hap", [{"HAP": "happiness"}, {}], ["happiness"]) == "happiness"
    assert map_label("other", [{"HAP": "happiness"}, {"happiness": "happy"}], MER2024_CLASSES) == "other"
    assert map_label(None, [{"HAP": "happiness"}], MER2024_CLASSES) is None


def test_ravdess_codes_reach_mer2024_classes(tmp_path):
    touch(tmp_path / "03-01-08-01-01-01-02.wav")
    touch(tmp_path / "03-01-06-01-01-01-02.wav")
    clips = read_labels(tmp_path, settings(label_map={"surprised": "surprise", "fearful": "worried"}))
    assert [(c.raw_label, c.label, c.speaker) for c in clips] == [("06", "worried", "02"), ("08", "surprise", "02")]


# --- choosing the reader ------------------------------------------------------------------------


def ravdess_in_actor_folders(root: Path) -> Path:
    touch(root / "Actor_01" / "03-01-05-01-02-01-01.wav")
    touch(root / "Actor_02" / "03-01-03-01-02-01-02.wav")
    return root


def folder_per_label(root: Path) -> Path:
    touch(root / "happy" / "a.mp4")
    touch(root / "sad" / "b.mp4")
    return root


@pytest.mark.parametrize("relative, expected", [
    ("crema-d/labels.csv", "mer2024"),
    ("mer2023/labels.csv", "mer2024"),
    ("crema-d", "crema-d"),
    ("emodb-dev", "emodb"),
    ("emodb-dev/wav", "emodb"),
])
def test_auto_detects_the_real_layouts(shared_data, relative, expected):
    assert choose_reader(shared_data / relative, settings()).name == expected


def test_auto_asks_folder_per_label_last(tmp_path):
    # RAVDESS ships in Actor_NN folders, which folder-per-label would also accept
    assert choose_reader(ravdess_in_actor_folders(tmp_path / "ravdess"), settings()).name == "ravdess"
    assert choose_reader(folder_per_label(tmp_path / "labelled"), settings()).name == "folders"
    clips = read_labels(tmp_path / "labelled", settings())
    assert [(c.clip_id, c.label) for c in clips] == [("a", "happy"), ("b", "sad")]
    assert clips[0].path == (tmp_path / "labelled" / "happy" / "a.mp4").resolve()


def test_auto_names_the_source_no_reader_recognises(shared_data, tmp_path):
    with pytest.raises(DataError, match=r"mer2023: no dataset reader recognises this layout; set data\.dataset"):
        choose_reader(shared_data / "mer2023", settings())
    with pytest.raises(DataError, match="no dataset reader recognises"):
        choose_reader(write(tmp_path / "labels.json", "{}"), settings())


def test_a_missing_source_is_named(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'nothing'}: no such file or folder"):
        read_labels(tmp_path / "nothing", settings())


def test_a_named_reader_is_used_as_it_is(tmp_path, shared_data):
    source = ravdess_in_actor_folders(tmp_path)
    assert choose_reader(source, settings(dataset="folders")).name == "folders"
    assert {c.raw_label for c in read_labels(source, settings(dataset="folders"))} == {"Actor_01", "Actor_02"}
    with pytest.raises(DataError, match="a folder, not a labels file"):
        read_labels(shared_data / "crema-d", settings(dataset="mer2024"))


def test_an_unknown_reader_lists_those_installed():
    with pytest.raises(PluginError, match=r"unknown dataset 'nope' \(available: .*mer2024"):
        choose_reader(Path("."), settings(dataset="nope"))


def test_reader_settings_come_from_the_configuration(tmp_path):
    source = write(tmp_path / "l.csv", "name,discrete,chinese,english\na,happy,你好,hello\n")
    config = configuration.load(None, environ={}, overrides={"dataset.mer2024.transcript_column": "chinese"})
    assert read_labels(source, config)[0].transcript == "你好"
    assert read_labels(source, settings())[0].transcript == "hello"


# --- checks on every reader's rows --------------------------------------------------------------


def test_a_clip_listed_twice_names_the_file_and_the_id(tmp_path):
    source = write(tmp_path / "l.csv", "name,discrete\na,happy\nb,sad\na,sad\n")
    with pytest.raises(DataError, match=f"{source}: clip 'a' is listed more than once"):
        read_labels(source, settings())


def test_splits_are_read_in_any_case_and_spelling_and_checked_naming_the_clip(tmp_path):
    source = write(tmp_path / "l.csv", "name,discrete,split\na,happy,Test\nb,sad,VALID\nc,sad,\nd,happy, dev \n")
    assert [c.split for c in read_labels(source, settings())] == ["test", "val", None, "val"]
    write(source, "name,discrete,split\na,happy,train\nb,sad,tra\x00in\n")
    with pytest.raises(DataError, match=r"l.csv: clip 'b': split 'tra\\x00in' is not one of train, val, valid"):
        read_labels(source, settings())


class Returns(Dataset):
    """A third-party reader that returns whatever it was given."""

    name = "returns"
    records: list[LabelRecord] = []

    def read(self, source: Path) -> list[LabelRecord]:
        return self.records


@pytest.mark.parametrize("record, problem", [
    (LabelRecord("../x", "happy"), "climbs out of its folder"),
    (LabelRecord("a", "happy", path=Path("../outside.mp4")), "climbs out of the clips folder"),
    (LabelRecord("a", "happy", path=Path("/etc/passwd")), "is an absolute path"),
])
def test_rows_from_any_reader_are_checked(tmp_path, monkeypatch, record, problem):
    monkeypatch.setattr(Returns, "records", [record])
    monkeypatch.setattr(labels, "choose_reader", lambda source, config: Returns())
    with pytest.raises(DataError, match=problem):
        read_labels(tmp_path, settings())


def test_a_reader_path_through_a_link_outside_is_refused(tmp_path, monkeypatch):
    touch(tmp_path / "secret.mp4")
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").symlink_to(tmp_path / "secret.mp4")
    monkeypatch.setattr(Returns, "records", [LabelRecord("a", "happy", path=tmp_path / "clips" / "a.mp4")])
    monkeypatch.setattr(labels, "choose_reader", lambda source, config: Returns())
    with pytest.raises(DataError, match="leads outside the clips folder"):
        read_labels(tmp_path / "clips", settings())


def test_check_classes_names_unknown_labels_and_their_rows(shared_data):
    source = shared_data / "crema-d" / "labels.csv"
    clips = read_labels(source, settings())
    with pytest.raises(DataError) as caught:
        check_classes(clips, MER2024_CLASSES, source)
    message = str(caught.value)
    assert message.startswith(f"{source}: 4 rows have labels outside the classes")
    assert "disgust (2), fear (2)" in message and "data.label_map" in message
    check_classes(clips, MER2024_CLASSES + ["disgust", "fear"], source)


def test_check_classes_ignores_unlabelled_clips(tmp_path):
    check_classes([LabelledClip("a"), LabelledClip("b", "happy")], ["happy"], tmp_path / "l.csv")

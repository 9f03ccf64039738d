"""The built-in dataset readers, on the real labels in ../shared/data and on bad input."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from mercli import plugins
from mercli.cli import cli
from mercli.contracts import Dataset, LabelRecord
from mercli.errors import DataError

NAMES = {"mer2024": "dataset-mer2024", "folders": "dataset-folders", "crema-d": "dataset-crema-d",
         "ravdess": "dataset-ravdess", "emodb": "dataset-emodb"}


def reader(name: str, **settings) -> Dataset:
    return plugins.get("datasets", name).component(**settings)


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


# --- registration -------------------------------------------------------------------------------


def test_every_reader_is_registered_by_its_builtin_plugin():
    registered = plugins.registry("datasets")
    for name, entry_point in NAMES.items():
        assert registered[name].provenance.plugin == entry_point
        component = registered[name].component
        assert component.version and component.description


def test_mer_plugins_lists_the_readers():
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    listed = {row["name"]: row for row in json.loads(result.stdout)["datasets"]}
    assert set(NAMES) <= set(listed)
    assert listed["mer2024"]["package"] == "mer"
    assert listed["mer2024"]["options"] == ["transcript_column"]


# --- mer2024: the real labels files -------------------------------------------------------------


@pytest.mark.parametrize("folder, rows", [("crema-d", 12), ("mead", 7), ("mer2023", 4), ("emodb-dev", 278)])
def test_mer2024_reads_the_real_labels_as_written(shared_data, folder, rows):
    source = shared_data / folder / "labels.csv"
    records = reader("mer2024").read(source)
    expected = csv_rows(source)
    assert len(records) == rows == len(expected)
    for record, row in zip(records, expected):
        assert (record.clip_id, record.label, record.speaker) == (row["name"], row["discrete"], row.get("speaker"))
        assert record.split is None and record.transcript is None and record.path is None


def test_mer2024_real_label_counts(shared_data):
    emodb = Counter(r.label for r in reader("mer2024").read(shared_data / "emodb-dev" / "labels.csv"))
    assert emodb == {"anger": 72, "neutral": 47, "boredom": 40, "happiness": 36, "fear": 35,
                     "sadness": 34, "disgust": 14}
    crema = reader("mer2024").read(shared_data / "crema-d" / "labels.csv")
    assert Counter(r.speaker for r in crema) == {"1001": 6, "1002": 6}


# --- mer2024: what a labels file may hold -------------------------------------------------------


def test_mer2024_optional_columns_blank_lines_and_unlabelled_rows(tmp_path):
    source = write(tmp_path / "train.csv",
                   "Name , DISCRETE,speaker,split\n"
                   "a,happy,s1,train\n"
                   "\n"
                   "  b  ,  ,s2,test\n"
                   '"c, quoted","sad",,\n'
                   'd,happy,"two\nlines",\n'
                   "e,,,\n")
    records = reader("mer2024").read(source)
    assert records == [
        LabelRecord("a", "happy", speaker="s1", split="train"),
        LabelRecord("b", None, speaker="s2", split="test"),
        LabelRecord("c, quoted", "sad"),
        LabelRecord("d", "happy", speaker="two\nlines"),
        LabelRecord("e", None),
    ]


def test_mer2024_without_discrete_column_is_unlabelled(tmp_path):
    source = write(tmp_path / "test.csv", "name\nsample_1\nsample_2\n")
    assert [(r.clip_id, r.label) for r in reader("mer2024").read(source)] == [("sample_1", None), ("sample_2", None)]


def test_mer2024_accepts_a_byte_order_mark(tmp_path):
    source = write(tmp_path / "bom.csv", "\ufeffname,discrete\nclip_1,happy\n")
    assert reader("mer2024").read(source) == [LabelRecord("clip_1", "happy")]


def test_mer2024_strips_media_extensions_from_names(tmp_path):
    source = write(tmp_path / "l.csv", "name,discrete\nclip_1.mp4,happy\ntake.2,sad\n")
    assert [r.clip_id for r in reader("mer2024").read(source)] == ["clip_1", "take.2"]


def test_mer2024_transcript_is_the_first_non_empty_column_in_documented_order(tmp_path):
    source = write(tmp_path / "t.csv",
                   "name,discrete,chinese,english\n"
                   "a,happy,你好,hello\n"
                   "b,sad,再见,\n"
                   "c,sad,,\n")
    records = reader("mer2024").read(source)
    assert [r.transcript for r in records] == ["hello", "再见", None]
    chosen = reader("mer2024", transcript_column="Chinese").read(source)
    assert [r.transcript for r in chosen] == ["你好", "再见", None]


@pytest.mark.parametrize("column", ["transcript", "text", "english", "chinese", "subtitle"])
def test_mer2024_each_transcript_column_is_accepted(tmp_path, column):
    source = write(tmp_path / "t.csv", f"name,discrete,{column}\na,happy,words here\n")
    assert reader("mer2024").read(source)[0].transcript == "words here"


def test_mer2024_transcript_precedence_between_two_known_columns(tmp_path):
    source = write(tmp_path / "t.csv", "name,subtitle,transcript\na,from subtitle,from transcript\n")
    assert reader("mer2024").read(source)[0].transcript == "from transcript"


def test_mer2024_detect(tmp_path, shared_data):
    assert reader("mer2024").detect(shared_data / "crema-d" / "labels.csv")
    assert reader("mer2024").detect(write(tmp_path / "UPPER.CSV", "name\n"))
    assert not reader("mer2024").detect(shared_data / "crema-d")
    assert not reader("mer2024").detect(write(tmp_path / "labels.txt", "name\n"))
    assert not reader("mer2024").detect(tmp_path / "missing.csv")


# --- mer2024: bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("content, message", [
    ("", r"l\.csv: empty; expected a header row"),
    ("\n\n", r"l\.csv: empty; expected a header row"),
    ("clip,discrete\na,happy\n", r"l\.csv:1: no 'name' column \(found: clip, discrete\)"),
    ("name,discrete,Name\na,happy,b\n", r"l\.csv:1: column\(s\) name appear more than once"),
    ("name,discrete\na,happy\nb\n", r"l\.csv:3: 1 fields, the header has 2"),
    ("name,discrete\na,happy\nb,sad,extra\n", r"l\.csv:3: 3 fields, the header has 2"),
    ("name,discrete\na,happy,\n", r"l\.csv:2: 3 fields, the header has 2"),
    ('name,discrete\na,"two\nlines"\nb,sad,extra\n', r"l\.csv:4: 3 fields, the header has 2"),
    ("name,discrete\n ,happy\n", r"l\.csv:2: empty name"),
    ("name,discrete\n../x,happy\n", r"l\.csv:2: clip id '\.\./x' climbs out of its folder"),
    ("name,discrete\n/etc/passwd,happy\n", r"l\.csv:2: clip id '/etc/passwd' is an absolute path"),
    ("name,discrete\nsub/x,happy\n", r"l\.csv:2: clip id 'sub/x' holds a path separator"),
    ("name,discrete\n..,happy\n", r"l\.csv:2: clip id '\.\.' starts with a dot"),
    ('name,discrete\nb,sad\n"a,happy\nc,sad\n', r"l\.csv:3: not valid CSV: unexpected end of data"),
    ('name,discrete\n"a"x,happy\n', r"l\.csv:2: not valid CSV"),
    ("name,discrete\na,happy\nb\x00c,sad\n", r"l\.csv:3: clip id .* holds a control character"),
])
def test_mer2024_bad_files_are_named_with_the_line(tmp_path, content, message):
    source = write(tmp_path / "l.csv", content)
    with pytest.raises(DataError, match=message):
        reader("mer2024").read(source)


def test_mer2024_not_utf8_names_the_line(tmp_path):
    source = write(tmp_path / "l.csv", "name,discrete\nclip_1,happy\nclip_2,tr\u00e4ge\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"l\.csv:3: not UTF-8 text \(byte 0xe4\)"):
        reader("mer2024").read(source)


def test_mer2024_utf16_is_not_utf8(tmp_path):
    source = write(tmp_path / "l.csv", "name,discrete\nclip_1,happy\n", encoding="utf-16")
    with pytest.raises(DataError, match=r"l\.csv:1: not UTF-8 text"):
        reader("mer2024").read(source)


def test_mer2024_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"missing\.csv: no such file"):
        reader("mer2024").read(tmp_path / "missing.csv")


def test_mer2024_folder_given_as_labels_file(tmp_path):
    with pytest.raises(DataError, match="a folder, not a labels file"):
        reader("mer2024").read(tmp_path)


def test_mer2024_unreadable_file(tmp_path, monkeypatch):
    source = write(tmp_path / "l.csv", "name,discrete\n")

    def refuse(self):  # chmod cannot lock out root, who runs the tests in CI
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(DataError, match=r"l\.csv: cannot read: Permission denied"):
        reader("mer2024").read(source)


def test_mer2024_configured_transcript_column_must_exist(tmp_path):
    source = write(tmp_path / "l.csv", "name,discrete\na,happy\n")
    with pytest.raises(DataError, match=r"l\.csv:1: no 'english' column"):
        reader("mer2024", transcript_column="english").read(source)


# --- folder per label ---------------------------------------------------------------------------


def test_folders_label_is_the_first_level_folder(tmp_path):
    touch(tmp_path / "happy" / "a.mp4")
    touch(tmp_path / "sad" / "b.wav")
    touch(tmp_path / "sad" / "session2" / "c.mkv")
    touch(tmp_path / "sad" / "notes.txt")
    assert reader("folders").read(tmp_path) == [
        LabelRecord("a", "happy", path=tmp_path / "happy" / "a.mp4"),
        LabelRecord("b", "sad", path=tmp_path / "sad" / "b.wav"),
        LabelRecord("c", "sad", path=tmp_path / "sad" / "session2" / "c.mkv"),
    ]


def test_folders_refuses_a_clip_outside_any_label_folder(tmp_path):
    touch(tmp_path / "happy" / "a.mp4")
    stray = touch(tmp_path / "stray.mp4")
    with pytest.raises(DataError, match=f"{stray}: not inside a label folder"):
        reader("folders").read(tmp_path)


def test_folders_refuses_the_same_clip_under_two_labels(tmp_path):
    touch(tmp_path / "happy" / "a.mp4")
    touch(tmp_path / "sad" / "a.mp4")
    with pytest.raises(DataError, match="two clips share the id 'a'"):
        reader("folders").read(tmp_path)


def test_folders_detect(tmp_path, shared_data):
    touch(tmp_path / "layout" / "happy" / "a.mp4")
    assert reader("folders").detect(tmp_path / "layout")
    assert not reader("folders").detect(shared_data / "mer2023")  # clips in the root
    assert not reader("folders").detect(tmp_path / "empty")
    assert not reader("folders").detect(shared_data / "mer2023" / "labels.csv")


# --- CREMA-D ------------------------------------------------------------------------------------


def test_crema_d_file_names_agree_with_its_labels_file(shared_data):
    names = reader("crema-d")
    records = names.read(shared_data / "crema-d")
    rows = {row["name"]: row for row in csv_rows(shared_data / "crema-d" / "labels.csv")}
    assert sorted(r.clip_id for r in records) == sorted(rows)
    for record in records:
        assert names.label_map[record.label] == rows[record.clip_id]["discrete"]
        assert record.speaker == rows[record.clip_id]["speaker"]
        assert record.path.parent == shared_data / "crema-d" and record.path.stem == record.clip_id


def test_crema_d_codes():
    assert reader("crema-d").label_map == {"ANG": "anger", "DIS": "disgust", "FEA": "fear",
                                           "HAP": "happiness", "NEU": "neutral", "SAD": "sadness"}


@pytest.mark.parametrize("name", ["1001_DFA_XYZ_XX", "101_DFA_ANG_XX", "1001-DFA-ANG-XX", "1001_DFA_ang_XX"])
def test_crema_d_refuses_other_names(tmp_path, name):
    touch(tmp_path / "1001_DFA_ANG_XX.wav")
    odd = touch(tmp_path / f"{name}.wav")
    with pytest.raises(DataError, match=f"{odd}: does not follow the crema-d naming convention \\(e.g. 1001_DFA_ANG_XX\\)"):
        reader("crema-d").read(tmp_path)
    assert not reader("crema-d").detect(tmp_path)


def test_crema_d_detect(shared_data, tmp_path):
    assert reader("crema-d").detect(shared_data / "crema-d")
    assert not reader("crema-d").detect(shared_data / "emodb-dev")
    assert not reader("crema-d").detect(shared_data / "crema-d" / "labels.csv")
    assert not reader("crema-d").detect(tmp_path)  # no clips at all


# --- EmoDB --------------------------------------------------------------------------------------


def test_emodb_file_names_agree_with_its_labels_file(shared_data):
    names = reader("emodb")
    records = names.read(shared_data / "emodb-dev" / "wav")
    rows = {row["name"]: row for row in csv_rows(shared_data / "emodb-dev" / "labels.csv")}
    assert len(records) == len(rows) == 278
    assert sorted(r.clip_id for r in records) == sorted(rows)
    disagreements = [
        r.clip_id for r in records
        if (names.label_map[r.label], r.speaker) != (rows[r.clip_id]["discrete"], rows[r.clip_id]["speaker"])
    ]
    assert disagreements == []
    assert {r.speaker for r in records} == {"03", "08", "09", "10", "11", "12"}


def test_emodb_codes():
    assert reader("emodb").label_map == {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear",
                                         "F": "happiness", "T": "sadness", "N": "neutral"}


@pytest.mark.parametrize("name", ["03a01Xa", "3a01Wa", "03a01wa", "03a01WA", "03a1Wa"])
def test_emodb_refuses_other_names(tmp_path, name):
    touch(tmp_path / "03a01Wa.wav")
    touch(tmp_path / f"{name}.wav")
    with pytest.raises(DataError, match="does not follow the emodb naming convention"):
        reader("emodb").read(tmp_path)


def test_emodb_detect(shared_data):
    assert reader("emodb").detect(shared_data / "emodb-dev")
    assert reader("emodb").detect(shared_data / "emodb-dev" / "wav")
    assert not reader("emodb").detect(shared_data / "crema-d")


# --- RAVDESS ------------------------------------------------------------------------------------


def test_ravdess_names_give_emotion_and_actor(tmp_path):
    for name in ["Actor_01/03-01-05-01-02-01-01.wav", "Actor_01/01-01-08-02-01-02-01.mp4",
                 "Actor_12/03-01-01-01-01-01-12.wav", "Actor_12/02-01-06-01-02-02-12.mp4"]:
        touch(tmp_path / name)
    records = reader("ravdess").read(tmp_path)
    labels = reader("ravdess").label_map
    assert [(r.clip_id, labels[r.label], r.speaker) for r in records] == [
        ("01-01-08-02-01-02-01", "surprised", "01"),
        ("02-01-06-01-02-02-12", "fearful", "12"),
        ("03-01-01-01-01-01-12", "neutral", "12"),
        ("03-01-05-01-02-01-01", "angry", "01"),
    ]
    assert records[0].path == tmp_path / "Actor_01" / "01-01-08-02-01-02-01.mp4"


def test_ravdess_codes():
    assert reader("ravdess").label_map == {"01": "neutral", "02": "calm", "03": "happy", "04": "sad",
                                           "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised"}


@pytest.mark.parametrize("name", ["03-01-09-01-02-01-12", "03-01-05-01-02-01", "3-1-5-1-2-1-12", "03_01_05_01_02_01_12"])
def test_ravdess_refuses_other_names(tmp_path, name):
    touch(tmp_path / "03-01-05-01-02-01-12.wav")
    touch(tmp_path / f"{name}.wav")
    with pytest.raises(DataError, match="does not follow the ravdess naming convention"):
        reader("ravdess").read(tmp_path)
    assert not reader("ravdess").detect(tmp_path)


def test_ravdess_detect(tmp_path, shared_data):
    touch(tmp_path / "03-01-05-01-02-01-12.wav")
    assert reader("ravdess").detect(tmp_path)
    assert not reader("ravdess").detect(shared_data / "crema-d")

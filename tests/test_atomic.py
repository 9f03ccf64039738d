"""Atomic writes: whatever interrupts a write, neither half a file nor a temporary file is left."""

from __future__ import annotations

import builtins
import json
import os

import pytest

from mercli import atomic
from mercli.atomic import json_text, write_json


def test_a_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "a" / "doc.json"
    atomic.write_json(target, {"x": 1})
    atomic.write_text(target, "second\n")
    assert target.read_text() == "second\n"
    assert [p.name for p in target.parent.iterdir()] == ["doc.json"]


@pytest.mark.parametrize("where", ["while writing", "right after the temporary file is created"])
def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, where):
    target = tmp_path / "doc.txt"
    target.write_text("old\n")
    if where == "right after the temporary file is created":
        real_open = builtins.open

        def open_then_interrupt(file, *args, **kwargs):
            real_open(file, *args, **kwargs).close()
            raise KeyboardInterrupt

        monkeypatch.setattr(atomic, "open", open_then_interrupt, raising=False)
    with pytest.raises(KeyboardInterrupt):
        with atomic.replacing(target) as handle:
            handle.write("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc.txt"]


def test_json_keeps_a_file_name_that_is_not_utf8_and_stays_utf8(tmp_path):
    name = os.fsdecode(b"clips/b\xe4d.flv")  # a Latin-1 name: its byte becomes a surrogate escape
    document = {"clip": name, "label": "überrascht"}
    assert json.loads(json_text(document)) == document
    write_json(tmp_path / "doc.json", document)
    assert json.loads((tmp_path / "doc.json").read_text(encoding="utf-8")) == document
    assert os.fsencode(json.loads(json_text(document))["clip"]) == b"clips/b\xe4d.flv"
    assert "überrascht" in json_text(document)  # other text is written as it is

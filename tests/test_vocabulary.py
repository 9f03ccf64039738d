"""The shared words: one-line text, the device a setting names, prior naming, trace parts."""

from __future__ import annotations

import pytest
import torch

from mercli.errors import ConfigError
from mercli.vocabulary import (MODALITIES, TRACE_MODALITIES, TRACE_PARTS, UNKNOWN_MODALITY, is_prior, one_line,
                               pick_device, prior_set_encoder, split_named)


def test_one_line_folds_white_space_and_cuts_to_the_limit():
    assert one_line("a\n  b\tc ") == "a b c"
    assert one_line(ValueError("bad\nvalue")) == "bad value"
    assert one_line("x" * 20, limit=10) == "x" * 7 + "..."
    assert one_line("short", limit=10) == "short"


def test_pick_device_takes_a_name_or_the_first_accelerator_torch_sees():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto", accelerators=()) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto", accelerators=("cuda",)).type == expected
    with pytest.raises(ConfigError, match="device 'gpu-please'"):
        pick_device("gpu-please")


def test_every_trace_part_feeds_a_stream_and_priors_are_named_after_it():
    assert set(TRACE_MODALITIES.values()) == set(MODALITIES)
    assert TRACE_PARTS["overall"] == UNKNOWN_MODALITY
    assert prior_set_encoder("acoustic") == "prior-acoustic" and is_prior("prior-acoustic")
    assert not is_prior("whisper")


def test_a_split_is_named_in_any_case_and_any_other_word_lists_the_choices():
    assert [split_named(w) for w in ("train", "Val", "VALIDATION", "dev", " test ")] == ["train", "val", "val", "val",
                                                                                         "test"]
    with pytest.raises(ValueError, match="^split 'holdout' is not one of train, val, valid, validation, dev, test$"):
        split_named("holdout")

"""RAVDESS file names: seven two-digit fields
``<modality>-<channel>-<emotion>-<intensity>-<statement>-<repetition>-<actor>``,
e.g. ``03-01-05-01-02-01-12`` (audio-only speech, angry, normal intensity, actor 12).

The speaker is the actor; the emotion code becomes the dataset's own word (``05`` -> ``angry``).
"""

from __future__ import annotations

import re

from mercli.plugin_api import FileNameDataset, hookimpl

EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad",
            "05": "angry", "06": "fearful", "07": "disgust", "08": "surprised"}


class Ravdess(FileNameDataset):
    name = "ravdess"
    version = "1"
    description = "RAVDESS file names: 03-01-05-01-02-01-12 (modality-channel-emotion-intensity-statement-repetition-actor)"
    label_map = EMOTIONS
    pattern = re.compile(rf"\d\d-\d\d-(?P<label>{'|'.join(EMOTIONS)})-\d\d-\d\d-\d\d-(?P<speaker>\d\d)")
    example = "03-01-05-01-02-01-12"


@hookimpl
def register_datasets(register):
    register(Ravdess)

"""Berlin EmoDB file names: ``<speaker><text><emotion><version>``, e.g. ``03a01Wa``: speaker 03,
text a01, emotion W (Wut, anger), version a.

The emotion letters are German initials: W anger, L boredom (Langeweile), E disgust (Ekel),
A fear (Angst), F happiness (Freude), T sadness (Trauer), N neutral.
"""

from __future__ import annotations

import re

from mercli.plugin_api import FileNameDataset, hookimpl

EMOTIONS = {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness", "T": "sadness", "N": "neutral"}


class EmoDB(FileNameDataset):
    name = "emodb"
    version = "1"
    description = "Berlin EmoDB file names: 03a01Wa (speaker, text, emotion letter, version)"
    label_map = EMOTIONS
    pattern = re.compile(rf"(?P<speaker>\d\d)[a-z]\d\d(?P<label>[{''.join(EMOTIONS)}])[a-z]")
    example = "03a01Wa"


@hookimpl
def register_datasets(register):
    register(EmoDB)

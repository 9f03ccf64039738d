"""CREMA-D file names: ``<actor>_<sentence>_<emotion>_<level>``, e.g. ``1001_DFA_ANG_XX``.

The speaker is the four-digit actor id; the emotion code becomes the dataset's own word
(``ANG`` -> ``anger``), which the configuration's label map folds further (``anger`` -> ``angry``).
"""

from __future__ import annotations

import re

from mercli.plugin_api import FileNameDataset, hookimpl

EMOTIONS = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happiness", "NEU": "neutral", "SAD": "sadness"}


class CremaD(FileNameDataset):
    name = "crema-d"
    version = "1"
    description = "CREMA-D file names: 1001_DFA_ANG_XX (actor_sentence_emotion_level)"
    label_map = EMOTIONS
    pattern = re.compile(rf"(?P<speaker>\d{{4}})_[A-Z]{{3}}_(?P<label>{'|'.join(EMOTIONS)})_[A-Z]{{1,2}}")
    example = "1001_DFA_ANG_XX"


@hookimpl
def register_datasets(register):
    register(CremaD)

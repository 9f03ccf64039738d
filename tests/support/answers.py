"""Class scores for hand-written answers: what prompt version 2 adds to a version-1 answer."""

from __future__ import annotations

import copy
from typing import Any, Sequence


def scores_for(emotion: str, classes: Sequence[str]) -> dict[str, float]:
    """A distribution over ``classes`` with half its mass on ``emotion``."""
    rest = 0.5 / (len(classes) - 1)
    return {name: 0.5 if name == emotion else rest for name in classes}


def with_scores(answer: dict[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    """``answer`` with scores on every part: null where the modality is absent, else centred on its emotion."""
    scored = copy.deepcopy(answer)
    for part in scored.values():
        part["scores"] = None if part.get("absent") else scores_for(part["emotion"], classes)
    return scored

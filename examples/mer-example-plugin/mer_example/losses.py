"""Cross-entropy with label smoothing, as a mer loss."""

from __future__ import annotations

from typing import Sequence

from mercli.contracts import Loss, Option
from mercli.errors import ConfigError


class LabelSmoothing(Loss):
    name = "label-smoothing"
    version = "1"
    description = "Cross-entropy against targets smoothed towards the uniform distribution."
    options = (Option("smoothing", float, 0.1, "Probability mass spread evenly over all classes (0 to <1)."),)

    def __init__(self, **settings) -> None:
        super().__init__(**settings)
        if not 0 <= self.settings["smoothing"] < 1:
            raise ConfigError(f"[loss.{self.name}] smoothing must be in [0, 1), got {self.settings['smoothing']}")

    def build(self, class_counts: Sequence[int], embedding_dim: int):
        from mer_example.label_smoothing import LabelSmoothedCrossEntropy  # imports torch

        return LabelSmoothedCrossEntropy(self.settings["smoothing"])

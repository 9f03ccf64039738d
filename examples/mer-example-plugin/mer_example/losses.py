"""Cross-entropy with label smoothing, as a mer loss."""

from __future__ import annotations

from typing import Sequence

from mercli.plugin_api import FRACTION, Loss, Option


class LabelSmoothing(Loss):
    name = "label-smoothing"
    version = "1"
    description = "Cross-entropy against targets smoothed towards the uniform distribution."
    options = (Option("smoothing", float, 0.1, "Probability mass spread evenly over all classes.", FRACTION),)

    def build(self, class_counts: Sequence[int], embedding_dim: int):
        from mer_example.label_smoothing import LabelSmoothedCrossEntropy  # imports torch

        return LabelSmoothedCrossEntropy(self.settings["smoothing"])

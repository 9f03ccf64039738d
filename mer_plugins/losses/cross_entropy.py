"""Cross-entropy losses on the logits alone: ce, focal, la-ce (logit-adjusted) and cb-ce
(class-balanced). Formulas: docs/losses.md."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from mercli.plugin_api import FRACTION, NON_NEGATIVE, Option, hookimpl
from mer_plugins.losses.base import CheckedLoss, effective_number_weights, inverse_frequency_weights, log_prior

if TYPE_CHECKING:
    from torch import nn


class CrossEntropy(CheckedLoss):
    name = "ce"
    version = "1"
    description = "Cross-entropy, with optional label smoothing."
    options = (Option("label_smoothing", float, 0.0, "Probability mass spread evenly over all classes.", FRACTION),)

    def build(self, class_counts: Sequence[int], embedding_dim: int) -> "nn.Module":
        from mer_plugins.losses.objectives import ClassificationLoss

        counts = self.checked_counts(class_counts)
        return ClassificationLoss(len(counts), label_smoothing=self.settings["label_smoothing"])


class Focal(CheckedLoss):
    name = "focal"
    version = "1"
    description = "Focal loss (Lin et al. 2017): cross-entropy scaled down on well-classified clips."
    options = (
        Option("gamma", float, 2.0, "Focusing exponent on (1 - p_true); 0 gives cross-entropy.", NON_NEGATIVE),
        Option("class_alpha", bool, False, "Weight each class by its inverse frequency (weights average 1)."),
    )

    def build(self, class_counts: Sequence[int], embedding_dim: int) -> "nn.Module":
        from mer_plugins.losses.objectives import ClassificationLoss

        counts = self.checked_counts(class_counts)
        alpha = inverse_frequency_weights(counts) if self.settings["class_alpha"] else None
        return ClassificationLoss(len(counts), gamma=self.settings["gamma"], class_weights=alpha)


class LogitAdjustedCrossEntropy(CheckedLoss):
    name = "la-ce"
    version = "1"
    description = "Logit-adjusted cross-entropy (Menon et al. 2021): logits + tau * log prior in training."
    options = (Option("tau", float, 1.0, "Scale of the log class prior added to the logits.", NON_NEGATIVE),)

    def build(self, class_counts: Sequence[int], embedding_dim: int) -> "nn.Module":
        from mer_plugins.losses.objectives import ClassificationLoss

        counts = self.checked_counts(class_counts)
        offset = [self.settings["tau"] * value for value in log_prior(counts)]
        return ClassificationLoss(len(counts), logit_offset=offset)


class ClassBalancedCrossEntropy(CheckedLoss):
    name = "cb-ce"
    version = "1"
    description = "Class-balanced cross-entropy (Cui et al. 2019): weights from the effective number of samples."
    options = (Option("beta", float, 0.999, "Effective-number parameter; 0 gives plain cross-entropy.", FRACTION),)

    def build(self, class_counts: Sequence[int], embedding_dim: int) -> "nn.Module":
        from mer_plugins.losses.objectives import ClassificationLoss

        counts = self.checked_counts(class_counts)
        weights = effective_number_weights(counts, self.settings["beta"])
        return ClassificationLoss(len(counts), class_weights=weights)


@hookimpl
def register_losses(register):
    for loss in (CrossEntropy, Focal, LogitAdjustedCrossEntropy, ClassBalancedCrossEntropy):
        register(loss)

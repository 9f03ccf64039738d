"""Cross-entropy plus a supervised contrastive term on the projection head's embeddings: supcon,
bcl and bdcl. The three share one contrastive core (see ``objectives.contrastive_term``) and differ
only in its switches, so that "bdcl without its additions is SupCon" holds by construction and is
tested. Formulas: docs/losses.md."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

from mercli.plugin_api import NON_NEGATIVE, POSITIVE, Option, hookimpl
from mer_plugins.losses.base import CheckedLoss, log_prior

if TYPE_CHECKING:
    from torch import nn


def _shared_options(tau: float) -> tuple[Option, ...]:
    return (
        Option("temperature", float, 0.1, "Temperature t of the contrastive similarities.", POSITIVE),
        Option("lambda_inter", float, 0.5, "Weight of the contrastive (inter-class) term.", NON_NEGATIVE),
        Option("tau", float, tau, "Logit adjustment of the cross-entropy term: logits + tau * log prior.",
               NON_NEGATIVE),
    )


class ContrastiveLossBase(CheckedLoss):
    """Builds ``objectives.ContrastiveLoss`` from the settings plus the switches in ``fixed``."""

    uses_embeddings = True
    #: Arguments of the contrastive core that this loss does not expose as options.
    fixed: ClassVar[Mapping[str, Any]] = {}

    def build(self, class_counts: Sequence[int], embedding_dim: int) -> "nn.Module":
        from mer_plugins.losses.objectives import ContrastiveLoss

        counts = self.checked_counts(class_counts)
        terms = {**self.fixed, **self.settings}
        tau = terms.pop("tau")
        width = self.checked_width(embedding_dim)
        return ContrastiveLoss(len(counts), width, logit_offset=[tau * value for value in log_prior(counts)],
                               **terms)


class SupCon(ContrastiveLossBase):
    name = "supcon"
    version = "1"
    description = "Cross-entropy + supervised contrastive loss (Khosla et al. 2020, L_out)."
    options = _shared_options(tau=0.0)
    fixed = {"class_averaging": False, "prototypes": False, "lambda_intra": 0.0}


class BalancedContrastive(ContrastiveLossBase):
    name = "bcl"
    version = "1"
    description = "Balanced contrastive learning (Zhu et al. 2022): class-averaged contrast with class prototypes."
    options = _shared_options(tau=1.0)
    fixed = {"class_averaging": True, "prototypes": True, "lambda_intra": 0.0}


class BalancedDualContrastive(ContrastiveLossBase):
    name = "bdcl"
    version = "1"
    description = "Balanced dual-contrastive: bcl plus class-balanced compactness around the prototypes."
    options = (
        *_shared_options(tau=1.0),
        Option("lambda_intra", float, 0.5, "Weight of the intra-class compactness term (0 gives bcl).", NON_NEGATIVE),
        Option("class_averaging", bool, True, "Average the contrastive denominator within each class first."),
        Option("prototypes", bool, True, "Add learnable class prototypes to every batch (needed by lambda_intra)."),
    )

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        if self.settings["lambda_intra"] > 0 and not self.settings["prototypes"]:
            self.reject("lambda_intra > 0 needs prototypes = true (compactness is measured around them)")


@hookimpl
def register_losses(register):
    for loss in (SupCon, BalancedContrastive, BalancedDualContrastive):
        register(loss)

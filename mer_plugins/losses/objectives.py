"""The torch modules behind the built-in losses (imported only when a loss is built).

Two modules cover all seven losses: :class:`ClassificationLoss` (cross-entropy with optional label
smoothing, focal modulation, per-class weights and a per-class logit offset) and
:class:`ContrastiveLoss` (that cross-entropy plus one contrastive core whose switches give SupCon,
BCL and BDCL). docs/losses.md gives the formulas.

Every loss is computed in float32 (float64 inputs stay float64) with autocast switched off, whatever
precision the network ran in: exp(z . z' / t) with t = 0.1 overflows half precision, and bfloat16
rounds the similarities too coarsely for the log-sum-exp to be meaningful.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _at_least_float32(tensor: Tensor) -> Tensor:
    return tensor if tensor.dtype == torch.float64 else tensor.float()


class Float32Loss(nn.Module):
    """Calls :meth:`compute` outside autocast, on inputs promoted to float32 at least. ``weights``
    (``(B,)``, optional) multiplies each clip's term; ``None`` is the unweighted loss, exactly."""

    def forward(self, logits: Tensor, embeddings: Tensor | None, labels: Tensor,
                weights: Tensor | None = None) -> Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            embeddings = None if embeddings is None else _at_least_float32(embeddings)
            weights = None if weights is None else _at_least_float32(weights)
            return self.compute(_at_least_float32(logits), embeddings, labels, weights)

    def compute(self, logits: Tensor, embeddings: Tensor | None, labels: Tensor,
                weights: Tensor | None = None) -> Tensor:
        raise NotImplementedError


def _weighted(per_sample: Tensor, weights: Tensor | None) -> Tensor:
    return per_sample if weights is None else per_sample * weights


class ClassificationLoss(Float32Loss):
    """mean_i  s_i * w_{y_i} * (1 - p_i)^gamma * CE_smoothed(logits_i + offset, y_i), s_i the clip's
    sample weight (1 without weights).

    With no offset, no weights, no smoothing and gamma = 0 this is plain cross-entropy; the plug-ins
    choose which of the knobs they expose.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        logit_offset: Sequence[float] | None = None,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        gamma: float = 0.0,
    ) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.gamma = gamma
        # Derived from the class counts, which the run's config records: not part of the state dict.
        self.register_buffer("logit_offset", _vector(logit_offset, num_classes, 0.0), persistent=False)
        self.register_buffer("class_weights", _vector(class_weights, num_classes, 1.0), persistent=False)

    def compute(self, logits: Tensor, embeddings: Tensor | None, labels: Tensor,
                weights: Tensor | None = None) -> Tensor:
        log_probs = F.log_softmax(logits + self.logit_offset, dim=1)
        true_class = -log_probs.gather(1, labels[:, None]).squeeze(1)
        per_sample = (1.0 - self.label_smoothing) * true_class - self.label_smoothing * log_probs.mean(dim=1)
        if self.gamma:
            # 1 - p_y, floored so that (.)^gamma keeps a finite gradient for gamma < 1 when p_y -> 1.
            miss = (-torch.expm1(-true_class)).clamp_min(1e-12)
            per_sample = miss**self.gamma * per_sample
        return _weighted(self.class_weights[labels] * per_sample, weights).mean()


def _vector(values: Sequence[float] | None, size: int, fill: float) -> Tensor:
    if values is None:
        return torch.full((size,), fill)
    if len(values) != size:
        raise ValueError(f"expected {size} per-class values, got {len(values)}")
    return torch.tensor(values, dtype=torch.float32)


class ClassPrototypes(nn.Module):
    """One learnable direction c_k per class, as wide as the embeddings (returned L2-normalised)."""

    def __init__(self, num_classes: int, embedding_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, embedding_dim))

    def forward(self, embeddings: Tensor) -> Tensor:
        return F.normalize(self.weight.to(embeddings.dtype), dim=1)


def contrastive_term(
    z: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    temperature: float,
    prototypes: Tensor | None = None,
    class_averaging: bool = False,
    weights: Tensor | None = None,
) -> Tensor:
    """The supervised contrastive term shared by supcon, bcl and bdcl.

    Anchors are the batch samples. The contrasted set is the batch plus, when given, the prototypes
    (row k labelled k). For anchor i, A(i) is the contrasted set without i, P(i) its members of
    class y_i, and
        l_i = -1/|P(i)| sum_{p in P(i)} z_i.z_p / t + log D_i
        D_i = sum_{a in A(i)} exp(z_i.z_a / t)                                  (SupCon)
        D_i = sum_k 1/|A_k(i)| sum_{a in A_k(i)} exp(z_i.z_a / t)   over the classes k present in A(i)
                                                                  (class_averaging, BCL)
    The term is the mean of l_i (times anchor i's sample weight, when ``weights`` are given) over
    anchors that have a positive; an anchor without one (alone in its class, no prototypes) has no
    defined l_i and is left out, and with none left the term is 0.
    """
    points = z if prototypes is None else torch.cat([z, prototypes])
    point_labels = labels if prototypes is None else torch.cat([labels, torch.arange(num_classes, device=z.device)])
    batch = z.shape[0]
    same_class = labels[:, None] == point_labels[None, :]
    is_self = torch.zeros_like(same_class)
    is_self[:, :batch] = torch.eye(batch, dtype=torch.bool, device=z.device)
    positives = same_class & ~is_self
    has_positive = positives.any(dim=1)
    if not has_positive.any():
        return z.sum() * 0.0  # keeps the graph (and zero gradients) without a NaN from 0/0
    anchor_weights = None if weights is None else weights[has_positive]
    anchors = z[has_positive]
    same_class, is_self, positives = same_class[has_positive], is_self[has_positive], positives[has_positive]

    similarity = anchors @ points.T / temperature
    log_terms = similarity  # log of each summand of D_i
    if class_averaging:
        class_size = F.one_hot(point_labels, num_classes).sum(dim=0)[point_labels]
        others_in_class = class_size[None, :] - same_class.long()  # the anchor leaves its own class
        log_terms = similarity - others_in_class.clamp_min(1).to(similarity.dtype).log()
    log_denominator = torch.logsumexp(log_terms.masked_fill(is_self, float("-inf")), dim=1)
    positive_mean = (similarity * positives).sum(dim=1) / positives.sum(dim=1)
    return _weighted(log_denominator - positive_mean, anchor_weights).mean()


def intra_class_term(z: Tensor, labels: Tensor, prototypes: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean over the classes present in the batch of the mean of 1 - z_i.c_{y_i} (times sample i's
    weight, when given) over that class's samples: every class present weighs the same, however
    many samples it has in the batch."""
    distance = _weighted(1.0 - (z * prototypes[labels]).sum(dim=1), weights)
    members = F.one_hot(labels, prototypes.shape[0]).to(z.dtype)  # (B, K); a sum, not a scatter: deterministic on CUDA
    count = members.sum(dim=0)
    present = count > 0
    class_mean = (members.T @ distance)[present] / count[present]
    return class_mean.mean()


class ContrastiveLoss(Float32Loss):
    """CE(logits + offset) + lambda_inter * contrastive_term + lambda_intra * intra_class_term.

    ``prototypes`` adds learnable class prototypes to the contrasted set (BCL's class-complement)
    and is required by the intra-class term. The embeddings are L2-normalised again here, in
    float32, so that a projection computed in half precision is on the unit sphere.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        *,
        logit_offset: Sequence[float],
        temperature: float,
        lambda_inter: float,
        lambda_intra: float = 0.0,
        class_averaging: bool = False,
        prototypes: bool = False,
    ) -> None:
        super().__init__()
        if lambda_intra and not prototypes:
            raise ValueError("the intra-class term needs class prototypes")
        self.num_classes = num_classes
        self.temperature = temperature
        self.lambda_inter = lambda_inter
        self.lambda_intra = lambda_intra
        self.class_averaging = class_averaging
        self.classification = ClassificationLoss(num_classes, logit_offset=logit_offset)
        self.prototypes = ClassPrototypes(num_classes, embedding_dim) if prototypes else None

    def compute(self, logits: Tensor, embeddings: Tensor | None, labels: Tensor,
                weights: Tensor | None = None) -> Tensor:
        if embeddings is None:
            raise ValueError("a contrastive loss needs the embeddings (the projection head's output)")
        z = F.normalize(embeddings, dim=1)
        centres = None if self.prototypes is None else self.prototypes(z)
        total = self.classification.compute(logits, None, labels, weights) + self.lambda_inter * contrastive_term(
            z, labels, self.num_classes, temperature=self.temperature,
            prototypes=centres, class_averaging=self.class_averaging, weights=weights,
        )
        if self.lambda_intra:
            total = total + self.lambda_intra * intra_class_term(z, labels, centres, weights)
        return total

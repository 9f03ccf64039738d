"""The torch module behind the ``label-smoothing`` loss, kept apart so that torch is imported only
when a loss is actually built."""

from __future__ import annotations

import torch
from torch import nn


class LabelSmoothedCrossEntropy(nn.Module):
    """``(1 - s) * NLL(true class) + s * mean over classes of -log p``, averaged over the batch."""

    def __init__(self, smoothing: float) -> None:
        super().__init__()
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, embeddings: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log_softmax(logits, dim=-1)
        true_class = -log_probs.gather(1, labels.unsqueeze(1)).squeeze(1)
        uniform = -log_probs.mean(dim=-1)
        return ((1 - self.smoothing) * true_class + self.smoothing * uniform).mean()

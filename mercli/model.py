"""The fusion network: one token per feature set, priors injected per modality, attention across.

Reading order, top to bottom:

1. ``SetProjection``: each feature set is standardised with its training statistics and projected
   to a common width ``d``. An utterance-level set
   gives one token; a frame-level set is projected frame by frame and pooled to one token by masked
   attention pooling (padded and unmeasured frames get no weight).
2. A learned embedding per set (its "modality token") is added, so the fusion knows which input a
   token came from.
3. Priors (optional): a prior feature set (encoder ``prior-*``) of modality m is projected the same
   way, and every token of modality m attends to the prior tokens of m, and to those of priors of
   no one modality (modality ``unknown``: a trace's overall summary), by cross-attention whose
   output enters through a gate initialised to zero (``tanh(0) = 0``), so training starts from the
   network without priors. A clip without a prior for m is left untouched.
4. Fusion: a small pre-norm transformer encoder over ``[CLS] + set tokens``; absent sets are removed
   with the key padding mask (never zero-filled in silence), and during training whole sets are
   dropped at random (modality dropout) so that a clip missing a modality still gets a good
   prediction. Only the CLS token's output is read, so the last layer computes the CLS row alone
   (the set tokens still serve as its keys and values): the same result for a quarter of the work.
5. Heads on the CLS output: a classifier (logits) and a projection head whose output ``z`` is
   L2-normalised for the contrastive losses.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mercli.vocabulary import UNKNOWN_MODALITY


@dataclass(frozen=True)
class InputSpec:
    """What the network needs to know of one feature set, and what a run records of it."""

    name: str
    modality: str
    level: str
    dim: int
    prior: bool


class ModelSettings(Protocol):
    """The sizes of the network, as :class:`mercli.settings.TrainSettings` (``[train]`` in mer.toml,
    and the ``train`` record of a run's config.json) declares them and their defaults."""

    width: int
    layers: int
    heads: int
    dropout: float
    modality_dropout: float
    projection_dim: int
    priors: bool


#: The modality of a prior that concerns the whole clip: it is offered to every stream.
SHARED_PRIOR = UNKNOWN_MODALITY


def injected_priors(inputs: Sequence[InputSpec], settings: ModelSettings) -> list[InputSpec]:
    """The prior sets the network injects: none when priors are switched off, and only those whose
    modality has a feature set to inject into (a shared prior has every stream)."""
    modalities = {s.modality for s in inputs if not s.prior} | {SHARED_PRIOR}
    return [s for s in inputs if s.prior and settings.priors and s.modality in modalities]


def priors_of(spec: InputSpec, priors: Sequence[InputSpec]) -> list[InputSpec]:
    """The priors the stream of ``spec`` attends to: its modality's and the shared ones."""
    return [p for p in priors if p.modality in (spec.modality, SHARED_PRIOR)]


class SetProjection(nn.Module):
    """Features of one set -> one token of width ``d`` per clip.

    Inputs are first standardised feature by feature with the training set's mean and standard
    deviation (buffers, so they travel with the weights): functionals such as eGeMAPS mix loudness,
    Hz and ratios on scales that differ by orders of magnitude.
    """

    def __init__(self, spec: InputSpec, width: int, dropout: float) -> None:
        super().__init__()
        self.frame_level = spec.level == "frame"
        self.register_buffer("feature_mean", torch.zeros(spec.dim))
        self.register_buffer("feature_scale", torch.ones(spec.dim))
        self.project = nn.Sequential(nn.Linear(spec.dim, width), nn.LayerNorm(width), nn.GELU(), Dropout(dropout))
        self.pool_score = nn.Linear(width, 1) if self.frame_level else None

    def forward(self, values: Tensor, mask: Tensor) -> Tensor:
        # In place on the one temporary: a fresh buffer per step costs page faults on a large set.
        projected = self.project((values - self.feature_mean).div_(self.feature_scale))
        if not self.frame_level:
            return projected
        # A clip without any real frame (absent) would have all scores at -inf: give it a uniform
        # weight instead; its token is masked out downstream anyway.
        usable = mask | ~mask.any(dim=1, keepdim=True)
        scores = self.pool_score(projected).squeeze(-1).masked_fill(~usable, float("-inf"))
        weights = torch.softmax(scores.float(), dim=1).to(projected.dtype)
        return (weights.unsqueeze(-1) * projected).sum(dim=1)


#: The lowest 64-bit integer: ``random_(_LOWEST_INT64, None)`` draws all 64 bits of each word.
_LOWEST_INT64 = torch.iinfo(torch.int64).min


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout. On a CPU its mask takes 16 random bits an element, four to a 64-bit word:
    torch's CPU dropout draws a double-precision Bernoulli per element (two Mersenne Twister words
    and a conversion: 13 % of a training step on an AMD CPU, where it does not call MKL). The rate
    is rounded to a 65,536th and the kept values scaled by its inverse, so the expectation is
    unchanged; the mask reaches the input's type through bytes (from bools it converts seven times
    slower). Elsewhere torch's fused dropout."""
    if not training or p == 0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    dropped = min(round(p * 65536), 65535)
    words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(_LOWEST_INT64, None)
    kept = words.view(torch.int16)[: x.numel()].view(x.shape) >= dropped - 32768
    return x * kept.view(torch.uint8).to(x.dtype).mul_(65536 / (65536 - dropped))


class Dropout(nn.Dropout):
    """:func:`dropout` as a module, in the place of ``nn.Dropout`` (so weights saved with that load)."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)


def attention(projections: nn.MultiheadAttention, query: Tensor, keys: Tensor, attend: Tensor) -> Tensor:
    """Multi-head attention of ``query`` (B, Q, d) over ``keys`` (B, K, d), which serve as values
    too, where ``attend`` (B, K) is True, with the weights of ``projections`` and its dropout on the
    attention weights while training. Computed here rather than by ``projections`` itself, whose
    mask checks import torch's symbolic-shapes machinery (sympy: half a second of every cold start)."""
    batch, width, heads = query.shape[0], query.shape[-1], projections.num_heads
    weight, bias = projections.in_proj_weight, projections.in_proj_bias
    asked = F.linear(query, weight[:width], bias[:width])
    key, value = F.linear(keys, weight[width:], bias[width:]).chunk(2, dim=-1)
    split = [t.view(batch, -1, heads, width // heads).transpose(1, 2) for t in (asked, key, value)]
    dropout = projections.dropout if projections.training else 0.0
    attended = F.scaled_dot_product_attention(*split, attn_mask=attend[:, None, None, :], dropout_p=dropout)
    return projections.out_proj(attended.transpose(1, 2).reshape(batch, -1, width))


class GatedPriorAttention(nn.Module):
    """token + tanh(gate) * CrossAttention(token -> prior tokens), for clips that have a prior."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, token: Tensor, priors: Tensor, prior_present: Tensor) -> Tensor:
        has_prior = prior_present.any(dim=1)
        # Rows without any prior would attend to nothing (NaN): let them see everything, then drop
        # their update.
        update = attention(self.attention, self.norm(token)[:, None], priors, prior_present | ~has_prior[:, None])
        return token + torch.tanh(self.gate) * update[:, 0] * has_prior[:, None].to(token.dtype)


class FusionLayer(nn.Module):
    """One pre-norm transformer encoder layer (``x + attention(norm(x))``, then ``x + mlp(norm(x))``,
    GELU, dropout where :class:`torch.nn.TransformerEncoderLayer` puts it, under the same parameter
    names, so runs saved with that layer load unchanged). ``forward`` can compute only the first
    ``rows`` tokens' outputs: every token is still attended to."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.dropout = dropout
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.linear1, self.linear2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)

    def forward(self, x: Tensor, attend: Tensor, rows: int | None = None) -> Tensor:
        """``x`` (B, T, d); ``attend`` (B, T), False for tokens no one may attend to."""
        kept = x if rows is None else x[:, :rows]
        normed = self.norm1(x)
        kept = kept + dropout(attention(self.self_attn, normed[:, : kept.shape[1]], normed, attend),
                              self.dropout, self.training)
        hidden = dropout(F.gelu(self.linear1(self.norm2(kept))), self.dropout, self.training)
        return kept + dropout(self.linear2(hidden), self.dropout, self.training)


class Fusion(nn.Module):
    """The layers, as ``nn.TransformerEncoder`` holds them (``fusion.layers.N``); returns the CLS row."""

    def __init__(self, width: int, heads: int, dropout: float, layers: int) -> None:
        super().__init__()
        # Every layer starts from the same draw, as nn.TransformerEncoder's copies do: a seed gives the
        # network it gave before this module replaced that one.
        first = FusionLayer(width, heads, dropout)
        self.layers = nn.ModuleList([first, *(copy.deepcopy(first) for _ in range(layers - 1))])

    def forward(self, sequence: Tensor, attend: Tensor) -> Tensor:
        for layer in self.layers[:-1]:
            sequence = layer(sequence, attend)
        return self.layers[-1](sequence, attend, rows=1)[:, 0]


@dataclass
class ModelOutput:
    logits: Tensor
    embeddings: Tensor


class FusionNetwork(nn.Module):
    """See the module docstring. ``forward(values, masks)`` takes per-set tensors keyed by set name,
    as :func:`mercli.trainset.collate` builds them."""

    def __init__(self, inputs: Sequence[InputSpec], num_classes: int, settings: ModelSettings) -> None:
        super().__init__()
        self.settings = settings
        self.inputs = [s for s in inputs if not s.prior]
        if not self.inputs:
            raise ValueError("the network needs at least one feature set that is not a prior")
        self.priors = injected_priors(inputs, settings)
        width = settings.width
        self.projections = nn.ModuleDict({s.name: SetProjection(s, width, settings.dropout) for s in self.inputs})
        self.prior_projections = nn.ModuleDict({s.name: SetProjection(s, width, settings.dropout) for s in self.priors})
        self.prior_attention = nn.ModuleDict({
            s.name: GatedPriorAttention(width, settings.heads, settings.dropout)
            for s in self.inputs if priors_of(s, self.priors)
        })
        self.set_embedding = nn.Parameter(torch.randn(len(self.inputs), width) * 0.02)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.fusion = Fusion(width, settings.heads, settings.dropout, settings.layers)
        self.norm = nn.LayerNorm(width)
        self.classifier = nn.Linear(width, num_classes)
        self.projection_head = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, settings.projection_dim))

    def standardise_with(self, statistics: Mapping[str, tuple[Tensor, Tensor]]) -> None:
        """Set each set's feature mean and scale (from the training clips: never from validation)."""
        projections = {**self.projections, **self.prior_projections}
        with torch.no_grad():
            for name, (mean, scale) in statistics.items():
                if name in projections:
                    projections[name].feature_mean.copy_(mean)
                    projections[name].feature_scale.copy_(scale)

    def _present(self, spec: InputSpec, mask: Tensor) -> Tensor:
        return mask.any(dim=1) if spec.level == "frame" else mask

    def _modality_dropout(self, present: Tensor) -> Tensor:
        """Drop whole sets at random while training, keeping at least one present set per clip."""
        rate = self.settings.modality_dropout
        if not self.training or rate <= 0:
            return present
        keep = present & (torch.rand(present.shape, device=present.device) >= rate)
        lost_all = ~keep.any(dim=1)
        return torch.where(lost_all[:, None], present, keep)

    def forward(self, values: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> ModelOutput:
        prior_tokens = {p.name: self.prior_projections[p.name](values[p.name], masks[p.name]) for p in self.priors}
        prior_present = {p.name: self._present(p, masks[p.name]) for p in self.priors}
        tokens, present = [], []
        for spec in self.inputs:
            token = self.projections[spec.name](values[spec.name], masks[spec.name])
            if spec.name in self.prior_attention:
                attended = [p.name for p in priors_of(spec, self.priors)]
                token = self.prior_attention[spec.name](token, torch.stack([prior_tokens[n] for n in attended], dim=1),
                                                        torch.stack([prior_present[n] for n in attended], dim=1))
            tokens.append(token)
            present.append(self._present(spec, masks[spec.name]))
        stacked = torch.stack(tokens, dim=1) + self.set_embedding.to(tokens[0].dtype)
        kept = self._modality_dropout(torch.stack(present, dim=1))
        sequence = torch.cat([self.cls_token.expand(len(stacked), -1, -1).to(stacked.dtype), stacked], dim=1)
        attend = torch.cat([torch.ones_like(kept[:, :1]), kept], dim=1)
        fused = self.norm(self.fusion(sequence, attend))
        return ModelOutput(self.classifier(fused), F.normalize(self.projection_head(fused), dim=1))

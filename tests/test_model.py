"""The fusion block: the same network as ``torch.nn.TransformerEncoder`` (pre-norm, GELU), under its
parameter names, computing only the CLS row in its last layer; and the scores training selects epochs by."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mercli.model import Dropout, Fusion, FusionNetwork, GatedPriorAttention, InputSpec, dropout
from mercli.settings import TrainSettings


def reference_encoder(width: int, heads: int, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.1, batch_first=True,
                                       norm_first=True, activation="gelu")
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_fusion_gives_the_cls_row_of_torchs_encoder_with_the_same_weights(layers):
    torch.manual_seed(0)
    reference = reference_encoder(16, 4, layers).eval()
    fusion = Fusion(16, 4, 0.1, layers).eval()
    fusion.load_state_dict(reference.state_dict())  # strict: the same names and shapes
    for parameter in fusion.parameters():  # not the identical copies a fresh encoder holds
        parameter.data.add_(0.1 * torch.randn_like(parameter))
    reference.load_state_dict(fusion.state_dict())
    sequence = torch.randn(9, 5, 16)
    attend = torch.rand(9, 5) > 0.4
    attend[:, 0] = True
    with torch.no_grad():
        expected = reference(sequence, src_key_padding_mask=~attend)[:, 0]
        assert torch.allclose(fusion(sequence, attend), expected, atol=1e-5)


def test_a_seed_gives_the_initial_weights_torchs_encoder_gave():
    torch.manual_seed(3)
    reference = reference_encoder(16, 4, 2)
    torch.manual_seed(3)
    fusion = Fusion(16, 4, 0.1, 2)
    for (name, expected), (other, got) in zip(reference.state_dict().items(), fusion.state_dict().items()):
        assert name == other and torch.equal(expected, got)


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    network = FusionNetwork([InputSpec("a", "audio", "utterance", 8, False)], 3,
                            TrainSettings(width=16, heads=2, dropout=0.5, modality_dropout=0.0))
    values, masks = {"a": torch.randn(4, 8)}, {"a": torch.ones(4, dtype=torch.bool)}
    network.eval()
    assert torch.equal(network(values, masks).logits, network(values, masks).logits)
    network.train()
    assert not torch.equal(network(values, masks).logits, network(values, masks).logits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_drops_its_share_and_keeps_the_expectation(p, dtype):
    torch.manual_seed(0)
    x = torch.ones(1001, 999, dtype=dtype, requires_grad=True)  # not a multiple of four elements
    y = dropout(x, p, True)
    kept = y != 0
    scale = 65536 / (65536 - round(p * 65536))
    assert y.dtype == dtype and abs(1 - kept.float().mean().item() - p) < 0.003  # 5 sd of a binomial
    assert torch.equal(y[kept], torch.full_like(y[kept], scale))
    assert abs(y.float().mean().item() - 1) < 0.01
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, y.detach())  # the gradient goes through the kept elements, scaled alike
    torch.manual_seed(0)
    assert torch.equal(dropout(x, p, True), y)  # torch's seed decides the mask
    assert not torch.equal(dropout(x, p, True), y)  # and each call draws a new one
    for no_op in (dropout(x, p, False), dropout(x, 0.0, True)):
        assert no_op is x


def test_dropout_modules_keep_nn_dropouts_place():
    module = nn.Sequential(nn.Linear(3, 3), Dropout(0.2))
    module.load_state_dict(nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.2)).state_dict())  # strict
    assert module[1].p == 0.2 and torch.equal(module.eval()(torch.ones(1, 3)), module[0](torch.ones(1, 3)))


@pytest.mark.parametrize("seed", range(6))
def test_training_scores_are_scikit_learns(seed):
    from sklearn.metrics import accuracy_score, f1_score

    from mercli.train import scores

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, size=int(rng.integers(1, 40)))
    predicted = rng.integers(0, 4 + seed % 3, size=len(labels))  # some classes never predicted, some never true
    got = scores(labels, predicted)
    assert got["waf"] == pytest.approx(f1_score(labels, predicted, average="weighted", zero_division=0), abs=1e-12)
    assert got["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro", zero_division=0), abs=1e-12)
    assert got["accuracy"] == pytest.approx(accuracy_score(labels, predicted), abs=1e-12)


def test_prior_attention_is_torchs_multi_head_attention_with_its_weights():
    torch.manual_seed(0)
    gated = GatedPriorAttention(16, 4, 0.1).eval()
    gated.gate.data.fill_(0.7)
    token, priors = torch.randn(6, 16), torch.randn(6, 3, 16)
    present = torch.rand(6, 3) > 0.4
    present[0] = False  # a clip without any prior keeps its token
    with torch.no_grad():
        update, _ = gated.attention(gated.norm(token)[:, None], priors, priors, key_padding_mask=~present,
                                    need_weights=False)
        expected = token + torch.tanh(gated.gate) * update[:, 0] * present.any(dim=1, keepdim=True)
        got = gated(token, priors, present)
    assert torch.allclose(got[1:], expected[1:], atol=1e-6)
    assert torch.equal(got[0], token[0])

"""The loss plug-ins against independent, literal implementations of their published formulas.

The references below loop over samples and anchors in float64 Python arithmetic, following the
papers' equations term by term, so that they share nothing with the vectorised code under test.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from mercli import config as configuration
from mercli import plugins
from mercli.cli import cli
from mercli.errors import ConfigError, DataError
from mer_plugins.losses.contrastive import BalancedContrastive, BalancedDualContrastive, SupCon
from mer_plugins.losses.cross_entropy import (ClassBalancedCrossEntropy, CrossEntropy, Focal,
                                              LogitAdjustedCrossEntropy)
from mer_plugins.losses.objectives import intra_class_term

ALL_LOSSES = {cls.name: cls for cls in (CrossEntropy, Focal, LogitAdjustedCrossEntropy, ClassBalancedCrossEntropy,
                                        SupCon, BalancedContrastive, BalancedDualContrastive)}
COUNTS = [40, 25, 10, 4, 1]  # imbalanced, as the training set would be
TOLERANCE = 1e-6


# --- literal references -----------------------------------------------------------------------


def rows(tensor: torch.Tensor) -> list[list[float]]:
    return tensor.detach().double().tolist()


def dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v))


def reference_cross_entropy(logits, labels, offset=None, weights=None, smoothing=0.0, gamma=0.0) -> float:
    """mean_i w_y (1 - p_y)^gamma [(1 - eps)(-log p_y) + eps * mean_k(-log p_k)], p = softmax(logits + offset)."""
    total = 0.0
    for row, y in zip(rows(logits), labels.tolist()):
        shifted = [x + (offset[k] if offset else 0.0) for k, x in enumerate(row)]
        normaliser = sum(math.exp(x) for x in shifted)
        probability = [math.exp(x) / normaliser for x in shifted]
        smoothed = (1 - smoothing) * -math.log(probability[y]) + smoothing * sum(
            -math.log(p) for p in probability) / len(probability)
        total += (weights[y] if weights else 1.0) * (1 - probability[y]) ** gamma * smoothed
    return total / len(labels)


def reference_supcon(z, labels, temperature) -> float:
    """Khosla et al. (2020), eq. 2 (L_out), averaged over the anchors that have a positive:
    L_i = -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p/t) / sum_{a in A(i)} exp(z_i.z_a/t) )."""
    z, labels = rows(z), labels.tolist()
    losses = []
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(math.exp(dot(z[i], z[a]) / temperature) for a in others)
        losses.append(-sum(math.log(math.exp(dot(z[i], z[p]) / temperature) / denominator)
                           for p in positives) / len(positives))
    return sum(losses) / len(losses) if losses else 0.0


def reference_bcl(z, labels, prototypes, temperature) -> float:
    """Zhu et al. (2022), balanced contrastive loss with class-complement: the prototypes c_k join the
    batch as samples of class k; for anchor i (a batch sample), B_k is the set of class-k samples
    other than i and
    L_i = -1/|B_{y_i}| sum_{p in B_{y_i}} log( exp(z_i.z_p/t) / sum_k 1/|B_k| sum_{a in B_k} exp(z_i.z_a/t) )."""
    samples = list(zip(rows(z), labels.tolist())) + [(c, k) for k, c in enumerate(rows(prototypes))]
    losses = []
    for i in range(len(labels)):
        anchor, anchor_class = samples[i]
        others = [s for j, s in enumerate(samples) if j != i]
        by_class: dict[int, list[list[float]]] = {}
        for vector, k in others:
            by_class.setdefault(k, []).append(vector)
        denominator = sum(sum(math.exp(dot(anchor, v) / temperature) for v in members) / len(members)
                          for members in by_class.values())
        positives = by_class[anchor_class]
        losses.append(-sum(math.log(math.exp(dot(anchor, v) / temperature) / denominator)
                           for v in positives) / len(positives))
    return sum(losses) / len(losses)


def reference_intra(z, labels, prototypes) -> float:
    """Mean over the classes present of the class's mean distance 1 - z_i.c_{y_i}."""
    z, labels, prototypes = rows(z), labels.tolist(), rows(prototypes)
    per_class = {}
    for vector, k in zip(z, labels):
        per_class.setdefault(k, []).append(1 - dot(vector, prototypes[k]))
    return sum(sum(d) / len(d) for d in per_class.values()) / len(per_class)


def log_prior(counts) -> list[float]:
    return [math.log(max(n, 1) / sum(max(m, 1) for m in counts)) for n in counts]


# --- fixtures ---------------------------------------------------------------------------------


DIM = 6


def batch(labels: list[int], dim: int = DIM, dtype=torch.float64, seed: int = 0):
    """Seeded logits (B, K), unit embeddings (B, D) and labels, all requiring gradients."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(labels), len(COUNTS), generator=generator, dtype=dtype).requires_grad_()
    z = F.normalize(torch.randn(len(labels), dim, generator=generator, dtype=dtype), dim=1).requires_grad_()
    return logits, z, torch.tensor(labels, dtype=torch.int64)


# Class 4 is absent and class 3 appears once (no positive among the samples).
LABELS = [0, 0, 0, 1, 2, 0, 1, 2, 3, 0, 1, 1]


def built(name: str, dtype=torch.float64, **settings):
    """The loss module, built for the embeddings of ``batch`` (seeded: its prototypes are random)."""
    torch.manual_seed(1)
    return ALL_LOSSES[name](**settings).build(COUNTS, DIM).to(dtype)


def prototypes_of(module) -> torch.Tensor:
    return F.normalize(module.prototypes.weight.detach().double(), dim=1)


# --- cross-entropy family ---------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_ce_matches_the_formula(smoothing):
    logits, z, labels = batch(LABELS)
    loss = built("ce", label_smoothing=smoothing)(logits, None, labels)
    assert loss.item() == pytest.approx(reference_cross_entropy(logits, labels, smoothing=smoothing), abs=TOLERANCE)
    if smoothing == 0.0:
        assert loss.item() == pytest.approx(F.cross_entropy(logits, labels).item(), abs=TOLERANCE)


@pytest.mark.parametrize("class_alpha", [False, True])
def test_focal_matches_the_formula(class_alpha):
    logits, z, labels = batch(LABELS)
    inverse = [1 / n for n in COUNTS]
    alpha = [len(COUNTS) * a / sum(inverse) for a in inverse] if class_alpha else None
    loss = built("focal", gamma=2.0, class_alpha=class_alpha)(logits, None, labels)
    assert loss.item() == pytest.approx(reference_cross_entropy(logits, labels, weights=alpha, gamma=2.0), abs=TOLERANCE)


def test_focal_with_gamma_zero_is_cross_entropy():
    logits, z, labels = batch(LABELS)
    assert built("focal", gamma=0.0)(logits, None, labels).item() == pytest.approx(
        F.cross_entropy(logits, labels).item(), abs=TOLERANCE)


def test_logit_adjusted_ce_adds_tau_log_prior():
    logits, z, labels = batch(LABELS)
    offset = [0.7 * p for p in log_prior(COUNTS)]
    loss = built("la-ce", tau=0.7)(logits, None, labels)
    assert loss.item() == pytest.approx(reference_cross_entropy(logits, labels, offset=offset), abs=TOLERANCE)


def test_class_balanced_ce_uses_the_effective_number():
    beta = 0.99
    inverse_effective = [(1 - beta) / (1 - beta**n) for n in COUNTS]
    weights = [len(COUNTS) * w / sum(inverse_effective) for w in inverse_effective]
    logits, z, labels = batch(LABELS)
    loss = built("cb-ce", beta=beta)(logits, None, labels)
    assert loss.item() == pytest.approx(reference_cross_entropy(logits, labels, weights=weights), abs=TOLERANCE)


def test_a_class_without_training_clips_keeps_the_prior_finite():
    logits, z, labels = batch([0, 1, 1])
    for name in ("la-ce", "cb-ce", "focal", "bdcl"):
        settings = {"class_alpha": True} if name == "focal" else {}
        module = ALL_LOSSES[name](**settings).build([5, 3, 0, 0, 2], DIM).double()
        loss = module(logits, z, labels)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits.grad).all(), name



def test_focal_gradient_stays_finite_on_a_certain_prediction():
    """(1 - p)^gamma with gamma < 1 has an infinite slope at p = 1; the loss must not turn it into NaN."""
    logits = torch.tensor([[200.0, 0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    loss = built("focal", dtype=torch.float32, gamma=0.5)(logits, None, torch.tensor([0]))
    loss.backward()
    assert torch.isfinite(logits.grad).all()

# --- contrastive family -----------------------------------------------------------------------


def test_supcon_matches_khosla_eq2_plus_cross_entropy():
    logits, z, labels = batch(LABELS)
    loss = built("supcon", temperature=0.1, lambda_inter=0.5, tau=0.0)(logits, z, labels)
    expected = reference_cross_entropy(logits, labels) + 0.5 * reference_supcon(z, labels, 0.1)
    assert loss.item() == pytest.approx(expected, abs=TOLERANCE)


def test_bcl_matches_zhu_balanced_loss_plus_logit_adjusted_ce():
    module = built("bcl", temperature=0.2, lambda_inter=0.8, tau=1.0)
    logits, z, labels = batch(LABELS)
    expected = (reference_cross_entropy(logits, labels, offset=log_prior(COUNTS))
                + 0.8 * reference_bcl(z, labels, prototypes_of(module), 0.2))
    assert module(logits, z, labels).item() == pytest.approx(expected, abs=TOLERANCE)


def test_bdcl_is_bcl_plus_the_intra_class_term():
    module = built("bdcl", temperature=0.1, lambda_inter=0.5, lambda_intra=0.3)
    logits, z, labels = batch(LABELS)
    prototypes = prototypes_of(module)
    expected = (reference_cross_entropy(logits, labels, offset=log_prior(COUNTS))
                + 0.5 * reference_bcl(z, labels, prototypes, 0.1) + 0.3 * reference_intra(z, labels, prototypes))
    assert module(logits, z, labels).item() == pytest.approx(expected, abs=TOLERANCE)


def test_intra_class_term_weighs_each_present_class_equally():
    logits, z, labels = batch(LABELS)
    prototypes = F.normalize(torch.randn(len(COUNTS), z.shape[1], dtype=torch.float64), dim=1)
    assert intra_class_term(z, labels, prototypes).item() == pytest.approx(
        reference_intra(z, labels, prototypes), abs=TOLERANCE)


def test_bdcl_without_intra_term_equals_bcl_exactly():
    bcl = built("bcl", temperature=0.15, lambda_inter=0.7, tau=0.5)
    bdcl = ALL_LOSSES["bdcl"](temperature=0.15, lambda_inter=0.7, tau=0.5, lambda_intra=0.0).build(COUNTS, DIM).double()
    bdcl.load_state_dict(bcl.state_dict())  # the same prototypes
    logits, z, labels = batch(LABELS, seed=3)
    assert torch.equal(bdcl(logits, z, labels), bcl(logits, z, labels))


def test_bdcl_without_its_additions_equals_supcon_exactly():
    settings = {"temperature": 0.1, "lambda_inter": 0.5, "tau": 0.0}
    bdcl = built("bdcl", lambda_intra=0.0, class_averaging=False, prototypes=False, **settings)
    assert list(bdcl.parameters()) == []
    logits, z, labels = batch(LABELS, seed=4)
    assert torch.equal(bdcl(logits, z, labels), built("supcon", **settings)(logits, z, labels))


def test_embeddings_are_put_back_on_the_unit_sphere():
    """A projection computed in half precision is only roughly unit-length; the loss normalises it."""
    module = built("bdcl")
    logits, z, labels = batch(LABELS)
    assert module(logits, 3.0 * z, labels).item() == pytest.approx(module(logits, z, labels).item(), abs=TOLERANCE)


def test_an_anchor_without_positives_contributes_nothing():
    """supcon on one sample (no positive anywhere) is its cross-entropy; bcl's prototypes always
    give a positive, so its contrastive term is not zero there."""
    logits, z, labels = batch([2])
    supcon = built("supcon", tau=0.0)(logits, z, labels)
    assert supcon.item() == pytest.approx(F.cross_entropy(logits, labels).item(), abs=TOLERANCE)
    bcl = built("bcl", tau=0.0)
    assert bcl(logits, z, labels).item() > F.cross_entropy(logits, labels).item()


def test_float32_agrees_with_float64():
    logits, z, labels = batch(LABELS)
    for name in ALL_LOSSES:
        module = built(name)
        exact = module(logits, z, labels).item()
        single = module.float()(logits.float(), z.float(), labels).item()
        assert single == pytest.approx(exact, abs=1e-4), name


# --- robustness -------------------------------------------------------------------------------

ROUGH_BATCHES = {
    "a class absent": [0, 0, 1, 1, 2, 0],
    "one class": [1, 1, 1, 1],
    "batch of one": [3],
}


@pytest.mark.parametrize("name", ALL_LOSSES)
@pytest.mark.parametrize("case", ROUGH_BATCHES)
def test_gradients_stay_finite(name, case):
    module = built(name, dtype=torch.float32)
    logits, z, labels = batch(ROUGH_BATCHES[case], dtype=torch.float32, seed=7)
    loss = module(logits, z, labels)
    loss.backward()
    gradients = [logits.grad, z.grad] if ALL_LOSSES[name].uses_embeddings else [logits.grad]
    gradients += [p.grad for p in module.parameters()]
    assert torch.isfinite(loss)
    assert all(g is not None and torch.isfinite(g).all() for g in gradients)


@pytest.mark.parametrize("name", ["ce", "supcon", "bdcl"])
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_autocast_half_precision_is_computed_in_float32(name, half):
    module = built(name, dtype=torch.float32)
    logits, z, labels = batch(LABELS, dtype=torch.float32)
    low_logits, low_z = logits.detach().to(half), z.detach().to(half)
    with torch.autocast(device_type="cpu", dtype=half):
        loss = module(low_logits, low_z, labels)
    assert loss.dtype == torch.float32
    assert torch.equal(loss, module(low_logits.float(), low_z.float(), labels))


def test_prototypes_are_sized_at_build_time_and_survive_a_state_dict():
    module = ALL_LOSSES["bdcl"]().build(COUNTS, DIM)
    assert module.prototypes.weight.shape == (len(COUNTS), DIM)  # no dry run needed before the optimizer
    logits, z, labels = batch(LABELS, dtype=torch.float32)
    loss = module(logits, z, labels)
    assert module.prototypes.weight.shape == (len(COUNTS), z.shape[1])
    loss.backward()
    assert module.prototypes.weight.grad.abs().sum() > 0
    reloaded = ALL_LOSSES["bdcl"]().build(COUNTS, DIM)
    reloaded.load_state_dict(module.state_dict())
    assert torch.equal(reloaded(logits, z, labels), loss.detach())


def test_contrastive_losses_refuse_missing_embeddings():
    logits, z, labels = batch(LABELS)
    with pytest.raises(ValueError, match="embeddings"):
        built("supcon")(logits, None, labels)


# --- settings and class counts ----------------------------------------------------------------


@pytest.mark.parametrize("name, settings, message", [
    ("ce", {"label_smoothing": 1.0}, "'label_smoothing' must be a finite number in [0, 1), got 1.0"),
    ("focal", {"gamma": -1.0}, "'gamma' must be a finite number >= 0"),
    ("la-ce", {"tau": -0.5}, "'tau' must be a finite number >= 0"),
    ("cb-ce", {"beta": 1.0}, "'beta' must be a finite number in [0, 1)"),
    ("supcon", {"temperature": 0.0}, "'temperature' must be a finite number > 0, got 0.0"),
    ("bcl", {"temperature": float("nan")}, "'temperature' must be a finite number > 0"),
    ("bcl", {"temperature": float("inf")}, "'temperature' must be a finite number > 0, got inf"),
    ("bcl", {"lambda_inter": "high"}, "'lambda_inter' must be a number, got 'high'"),
    ("bdcl", {"lambda_intra": -0.1}, "'lambda_intra' must be a finite number >= 0"),
    ("bdcl", {"prototypes": False}, "lambda_intra > 0 needs prototypes = true"),
])
def test_bad_settings_are_refused_with_the_setting_named(name, settings, message):
    with pytest.raises(ConfigError) as caught:
        ALL_LOSSES[name](**settings)
    assert str(caught.value).startswith(f"[loss.{name}] ") and message in str(caught.value)


@pytest.mark.parametrize("counts", [[5], [3, -1], [0, 0], [2.5, 3], [True, 4]])
def test_bad_class_counts_are_refused(counts):
    with pytest.raises(DataError, match="class counts"):
        ALL_LOSSES["bdcl"]().build(counts, DIM)


def test_numpy_class_counts_are_accepted():
    assert ALL_LOSSES["la-ce"]().build(np.array([4, 2, 1]), DIM) is not None


@pytest.mark.parametrize("dim", [0, -3, 2.5, True])
def test_a_bad_embedding_width_is_refused(dim):
    with pytest.raises(DataError, match="embedding width"):
        ALL_LOSSES["bdcl"]().build(COUNTS, dim)


def test_a_bad_value_in_mer_toml_fails_when_the_configuration_loads(tmp_path, fresh_plugins):
    path = tmp_path / "mer.toml"
    path.write_text("[loss.bdcl]\ntemperature = 0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}:2: 'temperature' must be a finite number > 0, got 0"):
        configuration.load(path, environ={})


# --- registration -----------------------------------------------------------------------------


def test_every_loss_is_registered(fresh_plugins):
    registered = plugins.registry("losses")
    assert set(ALL_LOSSES) <= set(registered)
    for name, cls in ALL_LOSSES.items():
        assert registered[name].component is cls
        assert cls.uses_embeddings == (name in {"supcon", "bcl", "bdcl"})


def test_mer_plugins_lists_the_losses(fresh_plugins):
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    listed = {row["name"]: row for row in json.loads(result.stdout)["losses"]}
    assert set(ALL_LOSSES) <= set(listed)
    assert listed["bdcl"]["uses_embeddings"] is True
    assert listed["bdcl"]["options"] == [o.name for o in BalancedDualContrastive.options]


def test_importing_the_plugins_does_not_import_torch():
    code = ("import sys, mer_plugins.losses.cross_entropy, mer_plugins.losses.contrastive; "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"

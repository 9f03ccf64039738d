"""Temperature scaling and the expected calibration error, on hand-made and synthetic logits."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from mercli.calibration import (calibrated, expected_calibration_error, fit_temperature,
                                negative_log_likelihood, reliability)


def test_ece_matches_a_hand_computation():
    probabilities = np.array([[0.9, 0.1],    # confidence 0.90, right: bin (13/15, 14/15]
                              [0.2, 0.8],    # confidence 0.80, wrong: bin (11/15, 12/15], on its right edge
                              [0.88, 0.12],  # confidence 0.88, wrong: bin (13/15, 14/15]
                              [0.5, 0.5]])   # confidence 0.50, right (a tie goes to class 0): bin (7/15, 8/15]
    labels = np.array([0, 0, 1, 0])
    by_hand = 2 / 4 * abs(0.5 - 0.89) + 1 / 4 * abs(0 - 0.8) + 1 / 4 * abs(1 - 0.5)
    assert expected_calibration_error(labels, probabilities) == pytest.approx(by_hand)
    one_bin = abs(2 / 4 - (0.9 + 0.8 + 0.88 + 0.5) / 4)
    assert expected_calibration_error(labels, probabilities, bins=1) == pytest.approx(one_bin)
    assert expected_calibration_error(np.array([1, 0]), np.eye(2)[[1, 0]]) == 0.0


def test_reliability_bins_match_a_hand_computation():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.88, 0.12], [0.5, 0.5]])  # as above
    labels = np.array([0, 0, 1, 0])
    assert reliability(labels, probabilities) == [
        {"lower": 7 / 15, "upper": 8 / 15, "share": 0.25, "confidence": 0.5, "accuracy": 1.0},
        {"lower": 11 / 15, "upper": 12 / 15, "share": 0.25, "confidence": 0.8, "accuracy": 0.0},
        {"lower": 13 / 15, "upper": 14 / 15, "share": 0.5, "confidence": pytest.approx(0.89), "accuracy": 0.5},
    ]


def test_calibrated_is_the_softmax_of_scaled_logits():
    logits = np.array([[2.0, -1.0, 0.5], [300.0, 0.0, -300.0]])
    assert np.array_equal(calibrated(logits), softmax(logits, axis=1))
    assert np.array_equal(calibrated(logits, 4.0), softmax(logits / 4.0, axis=1))
    assert np.isfinite(calibrated(logits, 0.01)).all()
    noisy = np.random.default_rng(0).normal(scale=5.0, size=(200, 6)).astype(np.float32)
    for temperature in (0.37, 1.0, 11.21):  # exactly scipy's numbers: predictions must not move
        assert np.array_equal(calibrated(noisy, temperature), softmax(noisy.astype(np.float64) / temperature, axis=1))
    assert negative_log_likelihood(logits, np.array([0, 0]), 2.0) == pytest.approx(
        -np.log(softmax(logits / 2.0, axis=1)[:, 0]).mean())


def test_fit_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(4000, 4))
    true_probabilities = softmax(logits / 2.5, axis=1)  # the logits are 2.5 times too confident
    labels = np.array([rng.choice(4, p=p) for p in true_probabilities])
    fit = fit_temperature(logits, labels)
    assert fit.temperature == pytest.approx(2.5, abs=0.2)
    assert fit.nll_after < fit.nll_before and fit.ece_after < fit.ece_before and not fit.note
    assert fit.nll_after == pytest.approx(negative_log_likelihood(logits, labels, fit.temperature))


def test_fit_softens_over_confident_logits_without_changing_predictions():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=300)
    predicted = np.where(rng.random(300) < 0.7, labels, (labels + 1) % 3)  # 70 % right...
    logits = 10.0 * np.eye(3)[predicted]  # ...but sure of every answer
    fit = fit_temperature(logits, labels)
    assert fit.temperature > 1 and fit.nll_after < fit.nll_before / 3 and fit.ece_after < fit.ece_before
    assert (calibrated(logits, fit.temperature).argmax(axis=1) == predicted).all()


@pytest.mark.parametrize("logits, labels, reason", [
    (np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([0, 0]), "one class only"),
    (np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]]), np.array([0, 1, 2]), "classified correctly"),
    (5.0 * np.eye(3)[[1, 2, 0, 1]], np.array([0, 1, 2, 2]), "edge of the search"),  # always wrong: T -> infinity
    (np.zeros((4, 3)), np.array([0, 1, 2, 1]), "no temperature lowers"),  # uniform: every T is the same
])
def test_validation_clips_that_cannot_fix_a_temperature_leave_it_at_one(logits, labels, reason):
    fit = fit_temperature(logits, labels)
    assert fit.temperature == 1.0 and reason in fit.note
    assert fit.nll_after == fit.nll_before and fit.ece_after == fit.ece_before

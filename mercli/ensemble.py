"""A run's fold ensemble: the one place where the folds' predictions become one probability per class.

Every fold's logits are calibrated with that fold's temperature (mercli.calibration) and the
calibrated probabilities are averaged over the folds, so that ``mer predict`` and ``mer pseudolabel``
(and anything else that asks a run for its answer) agree to the last digit.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mercli.calibration import calibrated
from mercli.runs import TrainedRun
from mercli.train import predict_logits
from mercli.trainset import TrainingTable


def ensemble_probabilities(run: TrainedRun, table: TrainingTable, indices: Sequence[int], device: Any) -> np.ndarray:
    """``(len(indices), classes)``: the mean over the run's folds of their calibrated probabilities."""
    return np.mean([calibrated(predict_logits(fold.model.to(device), table, indices, device).numpy(),
                               fold.temperature) for fold in run.folds], axis=0)

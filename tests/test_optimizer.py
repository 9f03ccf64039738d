"""The training's optimizer: torch.optim.AdamW(fused=True) with LambdaLR's cosine decay, step for
step, without importing torch's compiler."""

from __future__ import annotations

import json

import pytest
import torch

from mercli.optimizer import FusedAdamW, cosine_decay
from support.mer_process import run_mer
from support.training import CLASSES, FAST, write_workspace


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))


def test_the_steps_are_torch_optims_bit_for_bit():
    ours, theirs = _model(), _model()
    total, lr, decay = 12, 3e-3, 0.01
    optimizer = FusedAdamW(ours.parameters(), lr, decay)
    reference = torch.optim.AdamW(theirs.parameters(), lr=lr, weight_decay=decay, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(reference, lambda step: cosine_decay(step, total))
    inputs, targets = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for step in range(total + 2):  # past the end of the schedule too
        for model, opt in ((ours, optimizer), (theirs, reference)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(inputs), targets).backward()
            if step % 3 == 1:  # a parameter without a gradient is left alone, its state too
                model[2].bias.grad = None
        optimizer.step()
        optimizer.param_groups[0]["lr"] = lr * cosine_decay(step + 1, total)
        reference.step()
        schedule.step()
        assert optimizer.param_groups[0]["lr"] == reference.param_groups[0]["lr"]
        for mine, its in zip(ours.parameters(), theirs.parameters()):
            assert torch.equal(mine, its), step
    assert optimizer.steps[-1].item() == reference.state[theirs[2].bias]["step"].item() < total + 2


def test_a_gradient_scaler_drives_it_as_it_drives_torch_optim():
    """float16 training (CUDA) steps through torch's gradient scaler, which skips a step whose
    gradients overflowed; the scaler is exercised here on the CPU."""
    ours, theirs = _model(), _model()
    optimizer = FusedAdamW(ours.parameters(), 1e-3, 0.01)
    reference = torch.optim.AdamW(theirs.parameters(), lr=1e-3, weight_decay=0.01, fused=True)
    inputs, targets = torch.randn(16, 6), torch.randint(0, 3, (16,))
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**8) for _ in range(2)]
    for step in range(4):
        for model, opt, scaler in ((ours, optimizer, scalers[0]), (theirs, reference, scalers[1])):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(inputs), targets) * (float("inf") if step == 1 else 1.0)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        assert scalers[0].get_scale() == scalers[1].get_scale()
        for mine, its in zip(ours.parameters(), theirs.parameters()):
            assert torch.allclose(mine, its, rtol=0, atol=1e-7), step
    assert optimizer.steps[0].item() == 3  # the overflowing step was skipped


def test_cosine_decay_runs_from_the_peak_to_zero_and_stays_there():
    assert [cosine_decay(step, 4) for step in (0, 2, 4, 9)] == [1.0, pytest.approx(0.5), 0.0, 0.0]


def test_parameters_of_several_dtypes_are_refused():
    with pytest.raises(ValueError, match="one device and dtype"):
        FusedAdamW([torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2, dtype=torch.float64))], 1e-3, 0)


def test_a_training_process_does_not_import_torch_compiler(tmp_path):
    """torch.optim's optimizers import torch._dynamo when first built: 1.8 s of every training."""
    labels = write_workspace(tmp_path)
    settings = [a for k, v in {**FAST, "train.epochs": 1, "data.classes": CLASSES}.items()
                for a in ("-s", f"{k}={json.dumps(v)}")]
    result = run_mer("-w", str(tmp_path), *settings, "train", "--labels", str(labels), "--json", cwd=tmp_path,
                     python_options=("-X", "importtime"))
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "mercli.train" in imported and "torch._dynamo" not in imported

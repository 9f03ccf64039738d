"""AdamW on torch's fused kernel, and the cosine decay of its learning rate.

``torch.optim.AdamW(fused=True)`` with ``LambdaLR`` computes the same updates (a test compares them
step for step, bit for bit), but the first optimizer a process builds imports torch's compiler
(``torch._dynamo``: 1.8 s of every training process's start on the development machine), and each
of its steps walks the parameter tensors in Python before its one fused call. Here the tensor lists
are built once, and a step is two calls.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import Tensor

BETAS = (0.9, 0.999)
EPS = 1e-8


def cosine_decay(step: int, total_steps: int) -> float:
    """The learning rate's share of its peak after ``step`` of ``total_steps`` steps: 1 at the
    start, half a cosine down to 0 at the end, and 0 after."""
    return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


class FusedAdamW:
    """AdamW (decoupled weight decay, no amsgrad) over fixed parameters. ``param_groups`` has the
    one group a gradient scaler reads (``params``) and the learning rate the next step takes
    (``lr``). A parameter without a gradient is left alone by a step, state and all, as
    ``torch.optim`` does."""

    def __init__(self, parameters: Iterable[Tensor], lr: float, weight_decay: float) -> None:
        self.params = [p for p in parameters if p.requires_grad]
        if len({(p.device, p.dtype) for p in self.params}) > 1:
            raise ValueError("FusedAdamW takes parameters of one device and dtype")
        self.param_groups = [{"params": self.params, "lr": lr}]
        self.weight_decay = weight_decay
        self.exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]

    def zero_grad(self) -> None:
        for parameter in self.params:
            parameter.grad = None

    @torch.no_grad()
    def step(self) -> None:
        kept = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not kept:
            return

        def pick(tensors: list[Tensor]) -> list[Tensor]:
            return tensors if len(kept) == len(tensors) else [tensors[i] for i in kept]

        steps = pick(self.steps)
        torch._foreach_add_(steps, 1)
        torch._fused_adamw_(pick(self.params), [self.params[i].grad for i in kept], pick(self.exp_avgs),
                            pick(self.exp_avg_sqs), [], steps, amsgrad=False, lr=self.param_groups[0]["lr"],
                            beta1=BETAS[0], beta2=BETAS[1], weight_decay=self.weight_decay, eps=EPS, maximize=False)

"""The paper's training recipe (§5.3): Adam and the warmup + inverse-square-root learning rate."""

import torch
from transformers import get_inverse_sqrt_schedule


def paper_learning_rate(d_model: int, warmup_steps: int) -> float:
    """The peak of §5.3's schedule, reached at step `warmup_steps`: d_model^-0.5 · warmup_steps^-0.5."""
    return d_model**-0.5 * warmup_steps**-0.5


def paper_optimizer(model, warmup_steps: int, learning_rate: float | None = None):
    """§5.3, Eq. 3: Adam with β1 = 0.9, β2 = 0.98, ε = 1e-9, and the learning rate
    lrate = scale · d_model^-0.5 · min(step^-0.5, step · warmup_steps^-1.5), where the peak `learning_rate`
    (default: the paper's) sets the scale."""
    peak = learning_rate or paper_learning_rate(model.config.d_model, warmup_steps)
    fused = model.device.type in ("cpu", "cuda")  # one kernel for all parameters
    optimizer = torch.optim.Adam(model.parameters(), lr=peak, betas=(0.9, 0.98), eps=1e-9, fused=fused)
    return optimizer, get_inverse_sqrt_schedule(optimizer, num_warmup_steps=warmup_steps, timescale=warmup_steps)

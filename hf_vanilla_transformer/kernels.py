"""Two operators of the paper computed otherwise than their plain PyTorch form, to the same result.

`LabelSmoothedCrossEntropy` is §5.4's label-smoothed loss, `F.cross_entropy(..., label_smoothing=ε,
reduction="sum")`, computed block by block with its own backward pass; `Dropout` is §5.4's dropout with its CPU
mask drawn from 16 random bits per element. Tests hold each equal to the plain operator; what each saves is measured
in `benchmarks/README.md`. This file imports only torch, so that a saved model folder carries it as remote code.
"""

import torch
from torch import nn


class LabelSmoothedCrossEntropy(torch.autograd.Function):
    """§5.4, label smoothing of value ε_ls: the summed cross-entropy of the logits (N, V) against the targets
    smoothed to (1 - ε) · one-hot + ε / V, rows labelled -100 left out.

    Per row, the loss is -(1 - ε) · log p_target - ε · mean(log p) and its gradient softmax(x) - (1 - ε) · one-hot
    - ε / V. Only the logits are kept for the backward pass, which recomputes the softmax. Both passes go through
    the logits in blocks of rows: on a CPU small enough to stay in cache; elsewhere large enough to fill the device,
    with no float32 log-probabilities of a whole 25k-token batch (3.7 GB at a 37k vocabulary) ever held at once.
    """

    BLOCK_ELEMENTS = {"cpu": 2**19}  # float32 logits per block: 2 MiB on a CPU
    DEVICE_BLOCK_ELEMENTS = 2**27  # 512 MiB elsewhere

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, epsilon: float) -> torch.Tensor:
        wide = torch.promote_types(logits.dtype, torch.float32)  # half-precision logits are summed in float32
        block = LabelSmoothedCrossEntropy.BLOCK_ELEMENTS.get(logits.device.type,
                                                             LabelSmoothedCrossEntropy.DEVICE_BLOCK_ELEMENTS)
        rows = max(64, block // logits.shape[-1])
        total = logits.new_zeros((), dtype=wide)
        for block, block_labels in zip(logits.split(rows), labels.split(rows)):
            log_probs = torch.log_softmax(block, dim=-1, dtype=wide)
            losses = -(1.0 - epsilon) * log_probs.gather(-1, block_labels.clamp(min=0)[:, None]).squeeze(-1)
            if epsilon:
                losses -= epsilon * log_probs.mean(-1)
            total += losses[block_labels != -100].sum()
        ctx.save_for_backward(logits, labels)
        ctx.epsilon, ctx.rows, ctx.wide = epsilon, rows, wide
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        logits, labels = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)
        for start in range(0, logits.shape[0], ctx.rows):
            rows = slice(start, start + ctx.rows)
            grad = torch.softmax(logits[rows], dim=-1, dtype=ctx.wide)
            if ctx.epsilon:
                grad -= ctx.epsilon / logits.shape[-1]
            targets = labels[rows].clamp(min=0)[:, None]
            grad.scatter_add_(-1, targets, torch.full(targets.shape, ctx.epsilon - 1.0, dtype=grad.dtype,
                                                      device=grad.device))
            grad *= ((labels[rows] != -100) * grad_output)[:, None]
            grad_logits[rows] = grad
        return grad_logits, None, None


class Dropout(nn.Dropout):
    """§5.4: each element is zeroed with probability P_drop and the others scaled by 1 / (1 - P_drop), in training
    only. On a CPU the mask compares 16 random bits per element with a threshold, four elements to each 64-bit draw
    of torch's generator (P_drop held to a multiple of 2⁻¹⁶: 0.1 is 0.100006); elsewhere it is `torch.nn.Dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu" or torch.compiler.is_compiling():
            return super().forward(x)
        bits = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-(2**63), None).view(torch.int16)
        keep = bits[: x.numel()].view(x.shape) >= round(self.p * 2**16) - 2**15  # P(bits ≥ it) = 1 - P_drop
        return x * keep * (1.0 / (1.0 - self.p))

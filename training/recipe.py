"""The paper's training recipe (§5): Adam with the warmup + inverse-square-root learning rate (§5.3), the tokens of
a step (§5.1), and its WMT14 runs as `--recipe` presets of the training command's flags."""

import math

import torch
from transformers import get_inverse_sqrt_schedule

from hf_vanilla_transformer.kernels import LabelSmoothedCrossEntropy


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


def label_smoothed_loss(logits: torch.Tensor, labels: torch.Tensor, epsilon: float) -> torch.Tensor:
    """§5.4, label smoothing of value ε_ls = `epsilon`: the training loss of a batch's logits (batch, length, V), the
    cross-entropy against targets smoothed to (1 - ε) · one-hot + ε / V, summed over the target tokens (labels other
    than -100), through the blockwise kernel."""
    return LabelSmoothedCrossEntropy.apply(logits.flatten(0, 1), labels.flatten(), epsilon)


TOKENS_PER_STEP = 25_000  # §5.1: "a set of sentence pairs containing approximately 25000 source tokens and 25000
# target tokens" per training batch
WMT14_EN_DE = dict(dataset_name="wmt/wmt14", dataset_config_name="de-en", source_lang="en", target_lang="de",
                   vocab_size=37_000, label_smoothing=0.1, learning_rate=0.0, warmup_steps=4000,
                   tokens_per_step=TOKENS_PER_STEP, bleu_style="paper", eval_split="test", logging_steps=100)
RECIPES = {
    # §5.2: 100k steps of ~0.4 s on 8 P100 (12 hours); §6.1: the average of the last 5 checkpoints, written every
    # 10 minutes (~1,500 steps); §5.4: dropout 0.1.
    "wmt14-en-de-base": dict(WMT14_EN_DE, config_name="base", dropout=0.1, max_steps=100_000,
                             checkpointing_steps=1500, keep_checkpoints=5, average_checkpoints=5),
    # §5.2: 300k steps of ~1.0 s (3.5 days); §6.1: the last 20 checkpoints (every ~600 steps); Table 3: dropout 0.3.
    "wmt14-en-de-big": dict(WMT14_EN_DE, config_name="big", dropout=0.3, max_steps=300_000,
                            checkpointing_steps=600, keep_checkpoints=20, average_checkpoints=20),
}


def split_tokens_per_step(tokens_per_step: int, processes: int, max_tokens: int | None = None,
                          accumulation: int | None = None) -> tuple[int, int]:
    """§5.1's tokens per step, exactly, as `max_tokens` per batch × `processes` × `accumulation` micro-batches: with
    `max_tokens` given (the most one device holds), the fewest micro-batches that reach the total, each of its exact
    share; else the batch that reaches it in `accumulation` (default 1) micro-batches per process. A total that
    does not divide among the batches raises `ValueError` naming the nearest that do: a step is never larger."""
    if max_tokens is not None and accumulation is not None:
        raise ValueError(f"--tokens_per_step {tokens_per_step} sets --max_tokens or --gradient_accumulation_steps "
                         "from the other: give one of them, not both")
    if max_tokens is not None:
        accumulation = math.ceil(tokens_per_step / (max_tokens * processes))
    accumulation = accumulation or 1
    batches = processes * accumulation
    batch, remainder = divmod(tokens_per_step, batches)
    if remainder:
        raise ValueError(f"--tokens_per_step {tokens_per_step} does not divide into {processes} process(es) × "
                         f"{accumulation} micro-batch(es): pass --tokens_per_step {batches * batch} or "
                         f"{batches * (batch + 1)}")
    return batch, accumulation

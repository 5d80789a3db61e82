"""Evaluation during and after training, the processes sharing the work: the validation loss and translations.

During training both run under the run's mixed precision; the final model is evaluated with `autocast=False`, in
the float32 it is saved in, so that its reported scores are the ones its users get from the saved folder."""

from contextlib import nullcontext

import torch
from accelerate.utils import gather_object
from torch.utils.data import DataLoader

from hf_vanilla_transformer.translate import translate

from .data import TokenBatchSampler, lengths


@torch.no_grad()
def validation_loss(model, dataset, collator, accelerator, max_tokens: int, autocast: bool = True) -> float:
    """The cross-entropy per target token (the model's loss, without §5.4's smoothing) over the whole split, shared
    out among the processes."""
    model.eval()
    sampler = TokenBatchSampler(lengths(dataset), max_tokens, num_replicas=accelerator.num_processes,
                                rank=accelerator.process_index)
    total = torch.zeros(2, device=accelerator.device)
    for batch in DataLoader(dataset.remove_columns("length"), batch_sampler=sampler, collate_fn=collator):
        batch = batch.to(accelerator.device)
        tokens = (batch["labels"] != -100).sum()
        with accelerator.autocast() if autocast else nullcontext():
            loss = model(**batch, num_items_in_batch=1).loss
        total += torch.stack([loss, tokens.float()])
    model.train()
    loss_sum, tokens = accelerator.reduce(total, "sum").tolist()
    return loss_sum / tokens


def translate_split(model, tokenizer, sources, accelerator, max_tokens: int, autocast: bool = True,
                    **generate_kwargs) -> list[str]:
    """Translations of `sources`, the processes sharing the work; every process gets all of them, in order. On a GPU
    a batch holds `max_tokens` source tokens, times the beams (a training batch's tokens, whose activations and
    gradients take more memory than decoding them); on a CPU it holds 64 sentences."""
    processes, rank = accelerator.num_processes, accelerator.process_index
    batching = dict(batch_size=None, max_tokens=max_tokens) if accelerator.device.type == "cuda" else {}
    with accelerator.autocast() if autocast else nullcontext():
        mine = translate(model, tokenizer, sources[rank::processes], **batching, **generate_kwargs)
    gathered = gather_object([mine])
    return [gathered[i % len(gathered)][i // len(gathered)] for i in range(len(sources))]

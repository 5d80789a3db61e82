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
    """Label-smoothed cross-entropy per target token over the whole split, shared out among the processes."""
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


def translate_split(model, tokenizer, sources, accelerator, batch_size=64, autocast: bool = True,
                    **generate_kwargs) -> list[str]:
    """Translations of `sources`, the processes sharing the work; every process gets all of them, in order."""
    processes, rank = accelerator.num_processes, accelerator.process_index
    with accelerator.autocast() if autocast else nullcontext():
        mine = translate(model, tokenizer, sources[rank::processes], batch_size, **generate_kwargs)
    gathered = gather_object([mine])
    return [gathered[i % len(gathered)][i // len(gathered)] for i in range(len(sources))]

"""Evaluation during and after training, the processes sharing the work: the validation loss and translations."""

import torch
from accelerate.utils import gather_object
from torch.utils.data import DataLoader

from hf_vanilla_transformer.translate import translate

from .data import TokenBatchSampler, lengths


@torch.no_grad()
def validation_loss(model, dataset, collator, accelerator, max_tokens: int) -> float:
    """Label-smoothed cross-entropy per target token over the whole split, shared out among the processes."""
    model.eval()
    sampler = TokenBatchSampler(lengths(dataset), max_tokens, num_replicas=accelerator.num_processes,
                                rank=accelerator.process_index)
    total = torch.zeros(2, device=accelerator.device)
    for batch in DataLoader(dataset.remove_columns("length"), batch_sampler=sampler, collate_fn=collator):
        batch = batch.to(accelerator.device)
        tokens = (batch["labels"] != -100).sum()
        with accelerator.autocast():
            loss = model(**batch, num_items_in_batch=1).loss
        total += torch.stack([loss, tokens.float()])
    model.train()
    loss_sum, tokens = accelerator.reduce(total, "sum").tolist()
    return loss_sum / tokens


def translate_split(model, tokenizer, sources, accelerator, batch_size=64, **generate_kwargs) -> list[str]:
    """Translations of `sources`, the processes sharing the work; every process gets all of them, in order."""
    with accelerator.autocast():
        mine = translate(model, tokenizer, sources[accelerator.process_index :: accelerator.num_processes],
                         batch_size, **generate_kwargs)
    gathered = gather_object([mine])
    return [gathered[i % len(gathered)][i // len(gathered)] for i in range(len(sources))]

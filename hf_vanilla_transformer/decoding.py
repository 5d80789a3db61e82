"""§6.1's decoding: "beam search with a beam size of 4 and length penalty α = 0.6 [...] the maximum output length
[set] to input length + 50, but terminate early when possible".

The one home of these numbers: the model's default generation config, `generate`'s per-sentence limit, the
CTranslate2 backend and the model cards take them from here. This file imports only torch and transformers, so
that a saved model folder carries it as remote code.
"""

import torch
from transformers.generation import LogitsProcessor

NUM_BEAMS = 4
LENGTH_PENALTY = 0.6
EXTRA_OUTPUT_TOKENS = 50  # a translation has at most its source's length + this many tokens


def set_paper_decoding(generation_config) -> None:
    """Make a `GenerationConfig` decode as §6.1 does: beam size 4, length penalty 0.6."""
    generation_config.num_beams = NUM_BEAMS
    generation_config.length_penalty = LENGTH_PENALTY


def decoding_options(generation_config, num_beams: int | None = None, length_penalty: float | None = None) -> dict:
    """The beam size and length penalty to decode with: those given, else the generation config's (§6.1's unless
    the model was saved with others)."""
    return {"num_beams": num_beams or generation_config.num_beams,
            "length_penalty": generation_config.length_penalty if length_penalty is None else length_penalty}


def output_limits(source_lengths: torch.Tensor, max_position_embeddings: int) -> torch.Tensor:
    """Each sentence's limit on new tokens, its final EOS included: its source length (in tokens, with the source's
    EOS) + 50, within the decoder's `max_position_embeddings` positions, of which the start token takes one."""
    return (source_lengths + EXTRA_OUTPUT_TOKENS).clamp(max=max_position_embeddings - 1)


class SourceLengthLimit(LogitsProcessor):
    """`output_limits` inside `generate`, per sentence: once sentence i has `max_new_tokens[i]` - 1 new tokens, only
    EOS may follow (a suppressed EOS too). Beams and returned sequences of a sentence are consecutive rows, as
    `generate` lays them out."""

    def __init__(self, max_new_tokens: torch.Tensor, start_length: int, eos_token_id: int | list[int]):
        self.max_new_tokens = max_new_tokens
        self.start_length = start_length
        self.eos_token_id = eos_token_id[0] if isinstance(eos_token_id, list) else eos_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        caps = self.max_new_tokens.to(scores.device).repeat_interleave(scores.shape[0] // len(self.max_new_tokens))
        at_limit = input_ids.shape[1] - self.start_length >= caps - 1  # (rows,): the next token is the last allowed
        if not at_limit.any():  # nearly every step: no pass over the (rows, vocabulary) scores
            return scores
        eos = scores[:, self.eos_token_id]
        eos = torch.where(eos.isfinite(), eos, torch.zeros_like(eos))
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.eos_token_id] = eos
        return torch.where(at_limit[:, None], forced, scores)

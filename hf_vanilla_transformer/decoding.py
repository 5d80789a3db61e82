"""§6.1's decoding: "beam search with a beam size of 4 and length penalty α = 0.6 [...] the maximum output length
[set] to input length + 50, but terminate early when possible".

The one home of these numbers: the model's default generation config, `generate`'s per-sentence limit, the
CTranslate2 backend and the model cards take them from here. This file imports only torch and transformers, so
that a saved model folder carries it as remote code.
"""

import torch
from transformers.generation import LogitsProcessor, LogitsProcessorList

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


class PaperDecoding:
    """The model's `generate` (a mixin before `GenerationMixin`), shared by the PyTorch model and the ONNX
    Runtime backend."""

    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, logits_processor=None, **kwargs):
        """`GenerationMixin.generate`; with no length limit given, each sentence gets at most its own source length
        + 50 new tokens (§6.1), so that a sentence translates the same alone and in any batch. Greedy decoding takes
        the neutral length penalty: §6.1's 0.6 scores beams alone, and transformers warns that it goes unused."""
        config = generation_config if generation_config is not None else self.generation_config
        if kwargs.get("num_beams", config.num_beams) == 1 and kwargs.get("length_penalty", config.length_penalty) != 1:
            kwargs["length_penalty"] = 1.0
        limits = (kwargs.get("max_length"), kwargs.get("max_new_tokens"), config.max_length, config.max_new_tokens)
        source = inputs if inputs is not None else kwargs.get("input_ids", kwargs.get("inputs_embeds"))
        if all(limit is None for limit in limits) and source is not None:
            mask = kwargs.get("attention_mask")
            source_lengths = mask.sum(-1) if mask is not None else torch.full(source.shape[:1], source.shape[1])
            caps = output_limits(source_lengths, self.config.max_position_embeddings)
            kwargs["max_new_tokens"] = int(caps.max())
            start_length = kwargs["decoder_input_ids"].shape[1] if "decoder_input_ids" in kwargs else 1
            limit = SourceLengthLimit(caps, start_length, config.eos_token_id)
            logits_processor = LogitsProcessorList([*(logits_processor or []), limit])
        return super().generate(inputs, generation_config, logits_processor=logits_processor, **kwargs)


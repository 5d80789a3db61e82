import pytest
import torch
from conftest import tiny_config

from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration


def test_default_generation_config_is_the_papers(model):
    assert model.generation_config.num_beams == 4
    assert model.generation_config.length_penalty == 0.6
    assert model.generation_config.decoder_start_token_id == 1
    assert model.generation_config.eos_token_id == 2


def test_greedy_decoding_leaves_the_length_penalty_without_a_warning(model):
    """§6.1's length penalty scores beams alone: greedy decoding with the paper's generation config must not make
    transformers warn, call after call, that it goes unused; the config itself keeps 0.6 for beam search."""
    import logging

    from transformers.testing_utils import CaptureLogger
    from transformers.utils.logging import get_logger

    logging.Logger.warning_once.cache_clear()  # transformers warns once per process: no earlier test hides it
    with CaptureLogger(get_logger("transformers.generation.configuration_utils")) as captured:
        model.generate(input_ids=torch.tensor([[11, 12, 13, 2]]), num_beams=1, max_new_tokens=4)
    assert "generation flags are not valid" not in captured.out
    assert model.generation_config.length_penalty == 0.6


def test_output_limit_is_source_length_plus_50(model):
    """§6.1: "maximum output length ... input length + 50"; EOS is suppressed so that the limit is reached."""
    source = torch.tensor([[11, 12, 13, 14, 15, 16, 2], [21, 22, 23, 2, 0, 0, 0]])
    mask = (source != 0).long()
    output = model.generate(input_ids=source, attention_mask=mask, num_beams=1, suppress_tokens=[2])
    assert output.shape[1] == 1 + 7 + 50  # decoder start + (longest source + 50) new tokens
    shorter = model.generate(input_ids=source[1:, :4], num_beams=1, suppress_tokens=[2])
    assert shorter.shape[1] == 1 + 4 + 50
    capped = model.generate(input_ids=source, attention_mask=mask, num_beams=1, suppress_tokens=[2], max_new_tokens=5)
    assert capped.shape[1] == 1 + 5


def test_beam_search_returns_sequences_sorted_by_score(model):
    source = torch.tensor([[11, 12, 13, 14, 2], [21, 22, 23, 2, 0]])
    output = model.generate(input_ids=source, attention_mask=(source != 0).long(), num_beams=4,
                            num_return_sequences=3, max_new_tokens=8, output_scores=True,
                            return_dict_in_generate=True)
    assert output.sequences.shape[0] == 6
    scores = output.sequences_scores.view(2, 3)
    assert torch.all(scores[:, :-1] >= scores[:, 1:])
    assert len({tuple(s) for s in output.sequences[:3].tolist()}) == 3  # distinct hypotheses


def test_greedy_beam_and_sampling_all_decode(model):
    source = torch.tensor([[11, 12, 13, 14, 2]])
    greedy = model.generate(input_ids=source, num_beams=1, max_new_tokens=6)
    beam = model.generate(input_ids=source, max_new_tokens=6)
    torch.manual_seed(3)
    sampled = model.generate(input_ids=source, num_beams=1, do_sample=True, top_k=50, max_new_tokens=6)
    torch.manual_seed(3)
    resampled = model.generate(input_ids=source, num_beams=1, do_sample=True, top_k=50, max_new_tokens=6)
    for output in (greedy, beam, sampled):
        assert output[0, 0].item() == 1 and output.max().item() < 600
    assert torch.equal(sampled, resampled)


def test_greedy_decoding_picks_the_most_likely_token_each_step():
    torch.manual_seed(1)
    model = VanillaTransformerForConditionalGeneration(tiny_config()).eval()
    source = torch.tensor([[11, 12, 13, 14, 2]])
    output = model.generate(input_ids=source, num_beams=1, max_new_tokens=5, suppress_tokens=[2])
    with torch.no_grad():
        logits = model(input_ids=source, decoder_input_ids=output[:, :-1]).logits
    logits[..., 2] = float("-inf")
    assert torch.equal(logits.argmax(-1)[0], output[0, 1:])


@pytest.mark.parametrize("num_beams", [1, 4])
def test_each_sentence_gets_its_own_length_limit_in_a_batch(num_beams):
    """§6.1's "input length + 50" holds per sentence: a batch translates each sentence as it translates alone,
    also when the model runs into the limit (here it never chooses EOS, whose output weights are zero)."""
    torch.manual_seed(2)
    model = VanillaTransformerForConditionalGeneration(tiny_config(tie_word_embeddings=False)).eval()
    with torch.no_grad():
        model.lm_head.weight[2] = 0.0
    sources = [[11, 12, 13, 14, 15, 16, 17, 18, 2], [21, 22, 2], [31, 32, 33, 34, 35, 2]]
    longest = max(map(len, sources))
    batch = torch.tensor([s + [0] * (longest - len(s)) for s in sources])
    batched = model.generate(input_ids=batch, attention_mask=(batch != 0).long(), num_beams=num_beams)
    for row, source in zip(batched, sources):
        alone = model.generate(input_ids=torch.tensor([source]), num_beams=num_beams)[0]
        row = row[: len(alone)]
        assert torch.equal(row, alone)
        if num_beams == 1:  # greedy runs into the limit: source length + 50 new tokens, the last one EOS
            assert len(alone) == 1 + len(source) + 50 and alone[-1].item() == 2 and 2 not in alone[:-1].tolist()

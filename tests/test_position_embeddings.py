"""`position_embedding_type`: the paper's sinusoids (§3.5), learned positions (Table 3, row E), RoPE and ALiBi.

Every type: padding changes nothing, eager == SDPA, generate agrees with and without the cache, save -> load is
bit-exact, and a saved folder runs as remote code.
RoPE's rotation and ALiBi's slopes and biases are checked against hand computations. That the cache continues
positions (step by step == full forward) is tested for every type in test_modeling.py.
"""

import math

import pytest
import torch
from conftest import run_python, tiny_config
from test_modeling import batch

from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration
from hf_vanilla_transformer.modeling_vanilla_transformer import RotaryPositionalEmbedding, alibi_slopes, apply_rotary

TYPES = ["sinusoidal", "learned", "rope", "alibi"]


def make_model(position_embedding_type: str, **overrides) -> VanillaTransformerForConditionalGeneration:
    torch.manual_seed(0)
    config = tiny_config(position_embedding_type=position_embedding_type, **overrides)
    return VanillaTransformerForConditionalGeneration(config).eval()


def forward(model, input_ids, attention_mask, decoder_input_ids, **kwargs):
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids, **kwargs)


def test_unknown_types_and_odd_rotary_sizes_are_refused():
    with pytest.raises(ValueError, match="`position_embedding_type` 'relative' is unknown"):
        VanillaTransformerConfig.tiny(position_embedding_type="relative")
    with pytest.raises(ValueError, match="`position_embedding_type` 'rope'.*encoder_attention_heads"):
        VanillaTransformerConfig.tiny(position_embedding_type="rope", d_model=36, encoder_attention_heads=4,
                                      decoder_attention_heads=2)
    with pytest.raises(ValueError, match="`position_embedding_type` 'rope'.*d_k of `encoder_attention_heads` \\(5\\)"):
        VanillaTransformerConfig.tiny(position_embedding_type="rope", attention_key_dim=5)
    with pytest.raises(ValueError, match="`attention_key_dim` must be a positive integer"):
        VanillaTransformerConfig.tiny(attention_key_dim=0)


def test_only_the_additive_types_add_to_the_embeddings():
    assert make_model("sinusoidal").num_parameters() == make_model("rope").num_parameters()
    assert make_model("alibi").num_parameters() == make_model("rope").num_parameters()
    # Two trained tables of max_position_embeddings × d_model, one per stack.
    assert make_model("learned").num_parameters() - make_model("sinusoidal").num_parameters() == 2 * 128 * 32
    for kind in ("rope", "alibi"):  # positions come from attention only: the embedded input is the scaled embedding
        model = make_model(kind)
        ids = torch.tensor([[5, 6, 7]])
        encoder = model.model.encoder
        assert torch.equal(encoder.embed(encoder.embed_tokens(ids), torch.arange(3)),
                           encoder.embed_tokens(ids) * math.sqrt(32))


@pytest.mark.parametrize("kind", TYPES)
def test_positions_matter(kind):
    """A permuted source or target changes the outputs: the model is not a bag of words."""
    model = make_model(kind)
    input_ids, attention_mask, decoder_input_ids = batch()
    original = forward(model, input_ids, attention_mask, decoder_input_ids)
    swapped_source = input_ids.clone()
    swapped_source[:, [1, 2]] = swapped_source[:, [2, 1]]
    swapped = forward(model, swapped_source, attention_mask, decoder_input_ids)
    assert not torch.allclose(swapped.encoder_last_hidden_state[:, 1], original.encoder_last_hidden_state[:, 2])
    swapped_target = decoder_input_ids.clone()
    swapped_target[:, [1, 2]] = swapped_target[:, [2, 1]]
    swapped = forward(model, input_ids, attention_mask, swapped_target)
    assert not torch.allclose(swapped.logits[:, 3:], original.logits[:, 3:], atol=1e-5)


@pytest.mark.parametrize("kind", TYPES)
def test_padding_changes_neither_encoder_nor_decoder_outputs(kind):
    model = make_model(kind)
    padded = torch.tensor([[17, 42, 99, 2, 0, 0, 0], [5, 6, 7, 8, 9, 10, 2]])
    padded_target = torch.tensor([[1, 30, 31, 0, 0], [1, 40, 41, 42, 43]])
    together = forward(model, padded, (padded != 0).long(), padded_target,
                       decoder_attention_mask=torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))
    alone = forward(model, padded[:1, :4], None, padded_target[:1, :3])
    torch.testing.assert_close(together.encoder_last_hidden_state[0, :4], alone.encoder_last_hidden_state[0])
    torch.testing.assert_close(together.logits[0, :3], alone.logits[0])
    torch.testing.assert_close(together.logits[1], forward(model, padded[1:], None, padded_target[1:]).logits[0])


@pytest.mark.parametrize("kind", TYPES)
def test_sdpa_and_eager_attention_agree(kind):
    sdpa, eager = make_model(kind), make_model(kind, attn_implementation="eager")
    assert sdpa.config._attn_implementation == "sdpa"
    eager.load_state_dict(sdpa.state_dict())
    input_ids, attention_mask, decoder_input_ids = batch()
    expected, actual = (forward(m, input_ids, attention_mask, decoder_input_ids) for m in (eager, sdpa))
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: the biases follow the queries' dtype
        expected, actual = (forward(m, input_ids, attention_mask, decoder_input_ids) for m in (eager, sdpa))
    torch.testing.assert_close(actual.logits.float(), expected.logits.float(), atol=0.1, rtol=0.05)


@pytest.mark.parametrize("kind", ["learned", "rope", "alibi"])
@pytest.mark.parametrize("num_beams", [1, 4])
def test_generate_with_and_without_cache_agree(kind, num_beams):
    model = make_model(kind)
    input_ids, attention_mask, _ = batch()
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, num_beams=num_beams, max_new_tokens=12)
    assert torch.equal(model.generate(**kwargs, use_cache=True), model.generate(**kwargs, use_cache=False))


@pytest.mark.parametrize("kind", ["learned", "rope", "alibi"])
def test_save_load_is_bit_exact(tmp_path, kind):
    model = make_model(kind)
    model.save_pretrained(tmp_path)
    loaded = VanillaTransformerForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.position_embedding_type == kind
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys() and all(torch.equal(original[k], reloaded[k]) for k in original)
    input_ids, attention_mask, decoder_input_ids = batch()
    assert torch.equal(forward(model, input_ids, attention_mask, decoder_input_ids).logits,
                       forward(loaded, input_ids, attention_mask, decoder_input_ids).logits)


def test_saved_folders_of_every_type_run_as_remote_code(tmp_path):
    input_ids, attention_mask, decoder_input_ids = batch()
    for kind in ("learned", "rope", "alibi"):
        model = make_model(kind)
        model.save_pretrained(tmp_path / kind)
        torch.save(forward(model, input_ids, attention_mask, decoder_input_ids).logits, tmp_path / f"{kind}.pt")
    code = f"""
import torch
from transformers import AutoModelForSeq2SeqLM
for kind in ("learned", "rope", "alibi"):
    model = AutoModelForSeq2SeqLM.from_pretrained(kind, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    with torch.no_grad():
        logits = model(input_ids=torch.tensor({input_ids.tolist()}),
                       attention_mask=torch.tensor({attention_mask.tolist()}),
                       decoder_input_ids=torch.tensor({decoder_input_ids.tolist()})).logits
    assert torch.equal(logits, torch.load(kind + ".pt")), kind
"""
    result = run_python(code, tmp_path, block_package=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_rope_rotates_feature_pairs_by_position_times_frequency():
    """d_k = 4: the pairs (x0, x2) and (x1, x3) turn by pos · 10000^0 and pos · 10000^(-1/2)."""
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    position = 3
    cos, sin = RotaryPositionalEmbedding(4)(torch.tensor([position]))
    rotated = apply_rotary(x.view(1, 1, 1, 4), cos, sin).flatten()
    expected = torch.empty(4)
    for first, second, angle in ((0, 2, position * 1.0), (1, 3, position / 100.0)):
        expected[first] = x[first] * math.cos(angle) - x[second] * math.sin(angle)
        expected[second] = x[first] * math.sin(angle) + x[second] * math.cos(angle)
    torch.testing.assert_close(rotated, expected)
    # The point of RoPE: q·k depends on the positions only through their difference.
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    rope = RotaryPositionalEmbedding(8)

    def score(m, n):
        return (apply_rotary(q, *rope(torch.tensor([m]))) * apply_rotary(k, *rope(torch.tensor([n])))).sum().item()

    assert score(7, 4) == pytest.approx(score(3, 0), abs=1e-5)
    assert score(7, 4) != pytest.approx(score(7, 5), abs=1e-3)


def test_alibi_slopes_are_the_papers_geometric_sequences():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0**-k for k in range(1, 9)]))
    torch.testing.assert_close(alibi_slopes(4), torch.tensor([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8]))
    # 6 heads: the 4 slopes of 4 heads, then every other slope of 8 heads (2^-1, 2^-3).
    torch.testing.assert_close(alibi_slopes(6), torch.tensor([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]))


def test_alibi_biases_attention_by_distance_symmetric_in_the_encoder_causal_in_the_decoder():
    """With the query projections zeroed, every score is ALiBi's bias alone, so the attention weights are
    softmax(-m_h |i - j|) over the visible keys: both directions in the encoder, the past in the decoder."""
    model = make_model("alibi", attn_implementation="eager")
    with torch.no_grad():
        for layer in (model.model.encoder.layers[0], model.model.decoder.layers[0]):
            layer.self_attn.q_proj.weight.zero_()
            layer.self_attn.q_proj.bias.zero_()
    input_ids, decoder_input_ids = torch.tensor([[5, 6, 7, 8, 9]]), torch.tensor([[1, 30, 31, 32]])
    output = forward(model, input_ids, None, decoder_input_ids, output_attentions=True)
    slopes = alibi_slopes(4)[:, None, None]
    positions = torch.arange(5)
    encoder_scores = -slopes * (positions[None, :] - positions[:, None]).abs()
    torch.testing.assert_close(output.encoder_attentions[0][0], encoder_scores.softmax(-1))
    positions = torch.arange(4)
    decoder_scores = (-slopes * (positions[:, None] - positions[None, :])).masked_fill(
        positions[None, :] > positions[:, None], float("-inf"))
    torch.testing.assert_close(output.decoder_attentions[0][0], decoder_scores.softmax(-1))


def test_alibi_needs_an_attention_that_takes_biases():
    model = make_model("alibi")
    model.config._attn_implementation = "flash_attention_2"  # as a user with flash-attn installed would set it
    input_ids, attention_mask, decoder_input_ids = batch()
    with pytest.raises(ValueError, match="attn_implementation='flash_attention_2'"):
        forward(model, input_ids, attention_mask, decoder_input_ids)


@pytest.mark.parametrize("kind", ["sinusoidal", "rope"])
def test_a_smaller_key_size_keeps_cache_sdpa_and_saving_exact(tmp_path, kind):
    """Table 3, row B: d_k = 4 with h = 4 heads of d_v = 8; the queries and keys shrink, the values keep their size."""
    model = make_model(kind, attention_key_dim=4)
    attention = model.model.encoder.layers[0].self_attn
    assert attention.q_proj.out_features == attention.k_proj.out_features == 4 * 4
    assert attention.v_proj.out_features == 32
    assert attention.scaling == 4**-0.5
    input_ids, attention_mask, decoder_input_ids = batch()
    eager = make_model(kind, attention_key_dim=4, attn_implementation="eager")
    eager.load_state_dict(model.state_dict())
    expected = forward(eager, input_ids, attention_mask, decoder_input_ids).logits
    torch.testing.assert_close(forward(model, input_ids, attention_mask, decoder_input_ids).logits, expected,
                               atol=1e-5, rtol=1e-5)
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, num_beams=4, max_new_tokens=8)
    assert torch.equal(model.generate(**kwargs, use_cache=True), model.generate(**kwargs, use_cache=False))
    model.save_pretrained(tmp_path)
    loaded = VanillaTransformerForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert torch.equal(forward(loaded, input_ids, attention_mask, decoder_input_ids).logits,
                       forward(model, input_ids, attention_mask, decoder_input_ids).logits)

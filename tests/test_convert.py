"""Importing Marian models (`hf_vanilla_transformer.convert`): transformers' own `MarianMTModel`, with random weights
in OPUS-MT's configurations (swish or ReLU, shared and tied embeddings, a non-zero output bias), gives the same
logits and the same greedy and beam-4 translations once converted, there and through the ONNX and CTranslate2
exports; what cannot be expressed is refused by name."""

import pytest
import torch
from conftest import read_multi30k, run_module
from transformers import MarianConfig, MarianMTModel

from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration
from hf_vanilla_transformer.convert import from_marian
from hf_vanilla_transformer.modeling_vanilla_transformer import SinusoidalPositionalEncoding
from hf_vanilla_transformer.translate import load_translator, translate

SOURCES = read_multi30k("val", "de", 16)


def marian_model(tokenizer, activation: str = "swish", **overrides) -> MarianMTModel:
    """A small MarianMTModel as OPUS-MT's are configured (the special tokens those of the test tokenizer)."""
    torch.manual_seed(0)
    fields = dict(vocab_size=len(tokenizer), decoder_vocab_size=len(tokenizer), d_model=32, encoder_layers=2,
                  decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                  decoder_ffn_dim=64, activation_function=activation, max_position_embeddings=128,
                  scale_embedding=True, share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                  decoder_start_token_id=tokenizer.pad_token_id, forced_eos_token_id=tokenizer.eos_token_id,
                  init_std=0.2)
    config = MarianConfig(**{**fields, **overrides})
    marian = MarianMTModel(config).eval()
    marian.generation_config.forced_eos_token_id = None  # what the import leaves out (`convert.from_marian`)
    with torch.no_grad():
        marian.final_logits_bias.normal_()  # OPUS-MT's models have one (Marian's output-layer bias)
    return marian


def test_the_halves_layout_is_marians_sinusoids():
    marian = MarianMTModel(MarianConfig(d_model=16, max_position_embeddings=20, vocab_size=10, pad_token_id=0,
                                        decoder_start_token_id=0))
    torch.testing.assert_close(SinusoidalPositionalEncoding(16, "halves")(torch.arange(20)),
                               marian.model.encoder.embed_positions.weight, rtol=0, atol=1e-6)


@pytest.mark.parametrize("activation", ["swish", "relu"])
def test_a_converted_marian_model_gives_its_logits_and_translations(tokenizer, activation):
    marian = marian_model(tokenizer, activation)
    ours = from_marian(marian)
    assert ours.config.activation_function == activation and ours.config.sinusoid_layout == "halves"
    assert ours.generation_config.forced_eos_token_id is None
    batch = tokenizer(SOURCES, padding=True, return_tensors="pt")
    decoder_input_ids = torch.randint(4, len(tokenizer), (len(SOURCES), 9), generator=torch.Generator().manual_seed(1))
    decoder_input_ids[:, 0] = marian.config.decoder_start_token_id
    with torch.no_grad():
        expected = marian(**batch, decoder_input_ids=decoder_input_ids).logits
        actual = ours(**batch, decoder_input_ids=decoder_input_ids).logits
    assert (actual - expected).abs().max().item() < 1e-5
    for beams in (1, 4):
        kwargs = dict(**batch, num_beams=beams, max_new_tokens=12, length_penalty=1.0)
        assert torch.equal(ours.generate(**kwargs), marian.generate(**kwargs))


def test_the_command_converts_a_folder_that_then_exports_to_onnx_and_ctranslate2(tokenizer, tmp_path):
    marian = marian_model(tokenizer)
    marian.save_pretrained(tmp_path / "marian")
    tokenizer.save_pretrained(tmp_path / "marian")
    result = run_module("hf_vanilla_transformer.convert", "--from_marian", tmp_path / "marian", "--output_dir",
                        tmp_path / "ours")
    assert result.returncode == 0, result.stderr[-3000:]
    model = VanillaTransformerForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    exports = (("onnx_backend", ["--no_quantize"]), ("ctranslate2_backend", ["--output_dir", tmp_path / "ct2"]))
    for module, flags in exports:
        result = run_module(f"hf_vanilla_transformer.{module}", "--model", tmp_path / "ours", *flags)
        assert result.returncode == 0, result.stderr[-3000:]
    for beams in (1, 4):
        expected = translate(marian, tokenizer, SOURCES, num_beams=beams, max_new_tokens=12)
        assert translate(model, tokenizer, SOURCES, num_beams=beams, max_new_tokens=12) == expected
        for folder, backend in ((tmp_path / "ours", "onnx"), (tmp_path / "ct2", "ctranslate2")):
            exported, exported_tokenizer = load_translator(str(folder), backend=backend)
            assert translate(exported, exported_tokenizer, SOURCES, num_beams=beams, max_new_tokens=12) == expected
    assert len(set(expected)) > 3  # the model distinguishes its inputs


def test_what_this_model_cannot_express_is_refused_by_name(tokenizer, tmp_path):
    marian = marian_model(tokenizer, share_encoder_decoder_embeddings=False)
    marian.config.decoder_vocab_size = len(tokenizer) + 8
    with pytest.raises(ValueError, match="target vocabulary of .* tokens: this model has one vocabulary size"):
        from_marian(marian)
    result = run_module("hf_vanilla_transformer.convert", "--from_marian", tmp_path / "none", "--output_dir",
                        tmp_path / "out")
    assert result.returncode == 1 and "error: --from_marian" in result.stderr and "Traceback" not in result.stderr

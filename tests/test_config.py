import pytest
from transformers import AutoConfig

from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration


def test_defaults_are_the_base_model_of_table_3():
    config = VanillaTransformerConfig()
    assert (config.d_model, config.encoder_layers, config.decoder_layers) == (512, 6, 6)
    assert (config.encoder_attention_heads, config.encoder_ffn_dim, config.dropout) == (8, 2048, 0.1)
    assert config.activation_function == "relu"
    assert not config.normalize_before and config.scale_embedding
    assert config.tie_word_embeddings and config.share_encoder_decoder_embeddings
    assert config.init_std == pytest.approx(512**-0.5)
    assert (config.hidden_size, config.num_attention_heads, config.num_hidden_layers) == (512, 8, 6)


def test_big_preset_is_the_big_model_of_table_3():
    config = VanillaTransformerConfig.big(vocab_size=1000)
    assert (config.d_model, config.encoder_ffn_dim, config.encoder_attention_heads, config.dropout) == (
        1024, 4096, 16, 0.3)
    assert config.vocab_size == 1000


@pytest.mark.parametrize(
    "preset, expected",
    [("base", 63_082_496), ("big", 214_245_376)],  # the paper: 65M and 213M (Table 3)
)
def test_parameter_counts(preset, expected):
    config = getattr(VanillaTransformerConfig, preset)(vocab_size=37000)
    model = VanillaTransformerForConditionalGeneration(config)
    assert model.num_parameters() == expected


def test_auto_config_for_model_and_round_trip(tmp_path):
    config = AutoConfig.for_model("vanilla_transformer", vocab_size=123, d_model=64, encoder_attention_heads=4)
    assert isinstance(config, VanillaTransformerConfig)
    config.save_pretrained(tmp_path)
    loaded, saved = AutoConfig.from_pretrained(tmp_path).to_dict(), config.to_dict()
    assert loaded.pop("_name_or_path") == str(tmp_path)
    assert loaded == {k: v for k, v in saved.items() if k != "_name_or_path"}


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"d_model": 100, "encoder_attention_heads": 8}, "encoder_attention_heads"),
        ({"d_model": 64, "decoder_attention_heads": 6}, "decoder_attention_heads"),
        ({"d_model": 0}, "d_model"),
        ({"encoder_layers": -1}, "encoder_layers"),
        ({"decoder_ffn_dim": 0}, "decoder_ffn_dim"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"dropout": 1.0}, "dropout"),
        ({"attention_dropout": -0.1}, "attention_dropout"),
        ({"activation_function": "relu7"}, "activation_function"),
        ({"init_std": -1.0}, "init_std"),
        ({"vocab_size": 10, "pad_token_id": 10}, "pad_token_id"),
        ({"d_model": 33, "encoder_attention_heads": 1, "decoder_attention_heads": 1}, "d_model"),
    ],
)
def test_invalid_values_raise_value_error_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        VanillaTransformerConfig(**overrides)


def test_invalid_config_json_is_rejected_on_load(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "vanilla_transformer", "d_model": 100}')
    with pytest.raises(ValueError, match="divisible"):
        AutoConfig.from_pretrained(tmp_path)


def test_a_folder_saved_with_label_smoothing_in_its_config_loads_silently_and_drops_it(tmp_path, recwarn, caplog):
    """Folders saved before the loss became the plain cross-entropy hold §5.4's ε_ls in config.json: read, dropped,
    never written again, and no warning."""
    import json

    VanillaTransformerConfig.tiny().save_pretrained(tmp_path / "old")
    path = tmp_path / "old" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "label_smoothing": 0.1}))
    config = VanillaTransformerConfig.from_pretrained(tmp_path / "old")
    assert not hasattr(config, "label_smoothing") and config.d_model == 32
    config.save_pretrained(tmp_path / "new")
    assert "label_smoothing" not in json.loads((tmp_path / "new" / "config.json").read_text())
    assert not recwarn.list and "label_smoothing" not in caplog.text

"""Stand-in for `tests/utils/test_configuration_utils.py`, which the sdist of transformers does not ship: fields every
`PreTrainedConfig` has, each with a value other than its default, to check that the config keeps them."""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "tie_word_embeddings": False,
    "is_encoder_decoder": True,
    "chunk_size_feed_forward": 5,
    "architectures": ["VanillaTransformerForConditionalGeneration"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
    "bos_token_id": 3,
    "pad_token_id": 4,
    "eos_token_id": 5,
    "decoder_start_token_id": 6,
    "sep_token_id": 7,
}

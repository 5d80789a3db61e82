"""Import a `MarianMTModel` (OPUS-MT's ~1,500 Helsinki-NLP/opus-mt-* models among them) into this model.

    python -m hf_vanilla_transformer.convert --from_marian Helsinki-NLP/opus-mt-de-en --output_dir opus-mt-de-en
    python -m hf_vanilla_transformer.convert --from_marian MARIAN_FOLDER --output_dir OUT

A Marian model is the paper's Transformer (§3): post-LN layers, √d_model-scaled embeddings (§3.4), sinusoidal
positions (§3.5) with its sines and cosines in halves rather than interleaved (`sinusoid_layout="halves"`), a fixed
bias on the output logits (`final_logits_bias=True`), swish or ReLU in the feed-forward networks. Its weights are
copied name by name; its tokenizer and generation config come along, but for Marian's forced </s> at the length
limit (a sentence cut there ends without it, as in every backend of this project). What this model cannot express
(source and target vocabularies of different sizes, weights the mapping does not place) is refused by name.
"""

import argparse
import copy
import logging

import torch

from .configuration_vanilla_transformer import VanillaTransformerConfig
from .modeling_vanilla_transformer import VanillaTransformerForConditionalGeneration
from .tokenization import record_tokenizer

logger = logging.getLogger(__name__)

# Marian's config fields that keep their meaning here, by name.
SAME_FIELDS = ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
               "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "activation_function", "dropout",
               "attention_dropout", "activation_dropout", "max_position_embeddings", "scale_embedding",
               "share_encoder_decoder_embeddings", "tie_word_embeddings", "pad_token_id", "eos_token_id",
               "decoder_start_token_id")
# Each Marian layer's weights under this model's names (the attention projections keep theirs).
RENAMED = {"self_attn_layer_norm": "self_attn_sublayer.norm", "encoder_attn_layer_norm": "encoder_attn_sublayer.norm",
           "final_layer_norm": "feed_forward_sublayer.norm", "fc1": "feed_forward.fc1", "fc2": "feed_forward.fc2"}


def from_marian(marian) -> VanillaTransformerForConditionalGeneration:
    """This model with the weights and decoding of `marian` (a `MarianMTModel`), its logits equal to Marian's."""
    source = marian.config
    if source.decoder_vocab_size not in (None, source.vocab_size):
        raise ValueError(f"the Marian model has a source vocabulary of {source.vocab_size} and a target vocabulary of "
                         f"{source.decoder_vocab_size} tokens: this model has one vocabulary size for both")
    config = VanillaTransformerConfig(**{name: getattr(source, name) for name in SAME_FIELDS},
                                      bos_token_id=getattr(source, "bos_token_id", None), sinusoid_layout="halves",
                                      final_logits_bias=True, normalize_before=False,
                                      position_embedding_type="sinusoidal", src_lang=getattr(source, "src_lang", None),
                                      tgt_lang=getattr(source, "tgt_lang", None))
    model = VanillaTransformerForConditionalGeneration(config)
    state_dict = {}
    for name, tensor in marian.state_dict().items():
        if name == "model.shared.weight" or ".embed_positions." in name:  # tied to embed_tokens; computed sinusoids
            continue
        parts = name.split(".")
        if len(parts) > 4 and parts[3].isdigit() and parts[4] in RENAMED:  # model.{encoder,decoder}.layers.N.part.x
            parts[4:5] = RENAMED[parts[4]].split(".")
        state_dict[".".join(parts)] = tensor
    expected = set(model.state_dict())
    unplaced = sorted(set(state_dict) - expected)
    if unplaced:
        raise ValueError(f"the Marian model has weights this model has no place for: {', '.join(unplaced[:5])}")
    missing = model.load_state_dict(state_dict, strict=False).missing_keys
    tied = {"lm_head.weight", "model.decoder.embed_tokens.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied:
        raise ValueError(f"the Marian model lacks weights this model needs: {', '.join(sorted(set(missing) - tied))}")
    model.tie_weights()
    model.generation_config = copy.deepcopy(marian.generation_config)
    # A sentence cut at the length limit ends there, as in §6.1's decoding and every backend here (CTranslate2 has no
    # forced end token), not with Marian's forced </s> in its last position.
    model.generation_config.forced_eos_token_id = None
    for name, default in (("num_beams", 1), ("length_penalty", 1.0)):  # transformers' defaults, which every backend
        if getattr(model.generation_config, name) is None:  # reads from the folder
            setattr(model.generation_config, name, default)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from_marian", required=True, help="a MarianMTModel folder or Hub repository id")
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer, MarianMTModel

    try:
        marian = MarianMTModel.from_pretrained(args.from_marian)
        tokenizer = AutoTokenizer.from_pretrained(args.from_marian)
        with torch.no_grad():
            model = from_marian(marian)
        record_tokenizer(model.config, tokenizer)
    except (OSError, ValueError, ImportError) as error:
        raise SystemExit(f"error: --from_marian {args.from_marian}: {error}") from None
    model.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    logger.warning("Saved %s as this model to %s", args.from_marian, args.output_dir)


if __name__ == "__main__":
    main()

"""Export a saved model to CTranslate2, the inference engine built for this architecture, for fast serving.

    python -m hf_vanilla_transformer.export ctranslate2 --model DIR --output_dir OUT [--quantization int8]
    python -m hf_vanilla_transformer.translate --model OUT --backend ctranslate2 "Ein Hund läuft."

The export is a `ctranslate2.specs.TransformerSpec` filled from the model: post-LN or pre-LN (with the final
LayerNorms) from `normalize_before`, the √d_model embedding scale, the shared embeddings and tied projection, and
the paper's interleaved sinusoidal encodings (§3.5) passed as a table, since CTranslate2's own sinusoid lays sin and
cos out in halves (learned positions, Table 3 row E, likewise; RoPE and ALiBi models cannot be exported). OUT
also holds the tokenizer, the generation config and a README. `ctranslate2` is an optional extra:
`pip install "hf-vanilla-transformer[ctranslate2]"`.
"""

import argparse
import json
import math
from pathlib import Path

import torch

from .configuration_vanilla_transformer import VanillaTransformerConfig

INSTALL_HINT = 'CTranslate2 is not installed: pip install "hf-vanilla-transformer[ctranslate2]"'
QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16", "float32")
# transformers' activation names and their CTranslate2 counterparts.
ACTIVATIONS = {"relu": "RELU", "gelu": "GELU", "gelu_new": "GELUTanh", "gelu_pytorch_tanh": "GELUTanh",
               "quick_gelu": "GELUSigmoid", "silu": "SWISH", "swish": "SWISH", "tanh": "Tanh", "sigmoid": "Sigmoid"}
# What the export adds to CTranslate2's config.json, for `translate` and for readers of the folder.
EXPORTED_FIELDS = ("vocab_size", "pad_token_id", "eos_token_id", "max_position_embeddings", "src_lang", "tgt_lang",
                   "tokenizer_fingerprint")

README = """# {name} for CTranslate2

The translation model `{name}` ({src_lang}→{tgt_lang}) exported to [CTranslate2](https://github.com/OpenNMT/CTranslate2)
by `hf-vanilla-transformer` (weights: `{quantization}`). With that package installed:

```bash
python -m hf_vanilla_transformer.translate --model {folder} --backend ctranslate2 "{example}"
```

or with `ctranslate2` and `transformers` alone (beam 4, length penalty 0.6, at most source length + 50 tokens, §6.1):

```python
import ctranslate2
from transformers import PreTrainedTokenizerFast

translator = ctranslate2.Translator("{folder}")
tokenizer = PreTrainedTokenizerFast.from_pretrained("{folder}")
source = tokenizer.convert_ids_to_tokens(tokenizer("{example}")["input_ids"])
result = translator.translate_batch([source], beam_size=4, length_penalty=0.6, max_decoding_length=len(source) + 49)
print(tokenizer.decode(tokenizer.convert_tokens_to_ids(result[0].hypotheses[0])))
```
"""


def import_ctranslate2():
    try:
        import ctranslate2
    except ImportError:
        raise SystemExit(INSTALL_HINT) from None
    return ctranslate2


def check_exportable(config: VanillaTransformerConfig) -> None:
    """Raise a `ValueError` naming the field when CTranslate2's Transformer cannot express the configuration."""
    if config.encoder_attention_heads != config.decoder_attention_heads:
        raise ValueError(f"encoder_attention_heads={config.encoder_attention_heads} and decoder_attention_heads="
                         f"{config.decoder_attention_heads}: CTranslate2 takes one head count for both stacks")
    if config.attention_key_dim not in (None, config.d_model // config.encoder_attention_heads):
        raise ValueError(f"attention_key_dim={config.attention_key_dim}: CTranslate2's attention takes queries and keys "
                         f"of d_model / heads = {config.d_model // config.encoder_attention_heads} features per head")
    if config.position_embedding_type not in ("sinusoidal", "learned"):
        raise ValueError(f"position_embedding_type={config.position_embedding_type!r}: CTranslate2's encoder-decoder "
                         "Transformer adds positions to the embeddings (sinusoidal or learned) and has no rotary or "
                         "ALiBi self-attention in its encoder, so this model cannot be exported")
    if config.activation_function not in ACTIVATIONS:
        raise ValueError(f"activation_function={config.activation_function!r} has no CTranslate2 counterpart "
                         f"(these do: {', '.join(ACTIVATIONS)})")


def transformer_spec(model, tokenizer):
    """The `ctranslate2.specs.TransformerSpec` of `model` (a `VanillaTransformerForConditionalGeneration`)."""
    from ctranslate2.specs import common_spec, transformer_spec as ct2

    config = model.config
    check_exportable(config)
    spec = ct2.TransformerSpec.from_config(
        (config.encoder_layers, config.decoder_layers),
        config.encoder_attention_heads,
        pre_norm=config.normalize_before,
        activation=common_spec.Activation[ACTIVATIONS[config.activation_function]],
    )
    for stack_spec, stack in ((spec.encoder, model.model.encoder), (spec.decoder, model.model.decoder)):
        stack_spec.scale_embeddings = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        with torch.no_grad():  # §3.5's sinusoids (sin and cos interleaved) or Table 3's learned vectors, as a table
            stack_spec.position_encodings.encodings = stack.embed_positions(torch.arange(config.max_position_embeddings))
        embeddings = stack_spec.embeddings[0] if isinstance(stack_spec.embeddings, list) else stack_spec.embeddings
        embeddings.weight = stack.embed_tokens.weight
        if config.normalize_before:
            _set_layer_norm(stack_spec.layer_norm, stack.layer_norm)
    for layer_spec, layer in zip(spec.encoder.layer, model.model.encoder.layers):
        _set_attention(layer_spec.self_attention, layer.self_attn, layer.self_attn_sublayer, self_attention=True)
        _set_feed_forward(layer_spec.ffn, layer.feed_forward, layer.feed_forward_sublayer)
    for layer_spec, layer in zip(spec.decoder.layer, model.model.decoder.layers):
        _set_attention(layer_spec.self_attention, layer.self_attn, layer.self_attn_sublayer, self_attention=True)
        _set_attention(layer_spec.attention, layer.encoder_attn, layer.encoder_attn_sublayer, self_attention=False)
        _set_feed_forward(layer_spec.ffn, layer.feed_forward, layer.feed_forward_sublayer)
    spec.decoder.projection.weight = model.lm_head.weight

    vocabulary = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    vocabulary += [f"<unused{i}>" for i in range(config.vocab_size - len(vocabulary))]
    spec.register_source_vocabulary(vocabulary)
    spec.register_target_vocabulary(vocabulary)
    spec.config.unk_token = tokenizer.unk_token
    spec.config.bos_token = tokenizer.bos_token
    spec.config.eos_token = tokenizer.eos_token
    spec.config.decoder_start_token = tokenizer.convert_ids_to_tokens(config.decoder_start_token_id)
    spec.config.layer_norm_epsilon = model.model.encoder.layers[0].self_attn_sublayer.norm.eps
    for name in EXPORTED_FIELDS:
        spec.config.add_attribute(name, getattr(config, name))
    return spec


def _set_linear(spec, *linears) -> None:
    """One CTranslate2 linear layer from one or more of ours, stacked along the output dimension."""
    spec.weight = torch.cat([linear.weight for linear in linears])
    spec.bias = torch.cat([linear.bias for linear in linears])


def _set_layer_norm(spec, norm) -> None:
    spec.gamma = norm.weight
    spec.beta = norm.bias


def _set_attention(spec, attention, sublayer, self_attention: bool) -> None:
    if self_attention:  # one projection to Q, K and V
        _set_linear(spec.linear[0], attention.q_proj, attention.kv_proj)
    else:  # queries from the decoder, keys and values from the encoder output
        _set_linear(spec.linear[0], attention.q_proj)
        _set_linear(spec.linear[1], attention.kv_proj)
    _set_linear(spec.linear[-1], attention.out_proj)
    _set_layer_norm(spec.layer_norm, sublayer.norm)


def _set_feed_forward(spec, feed_forward, sublayer) -> None:
    _set_linear(spec.linear_0, feed_forward.fc1)
    _set_linear(spec.linear_1, feed_forward.fc2)
    _set_layer_norm(spec.layer_norm, sublayer.norm)


def export_ctranslate2(model_dir: str | Path, output_dir: str | Path, quantization: str | None = None,
                       force: bool = False) -> Path:
    """Convert the saved model in `model_dir` into a CTranslate2 model in `output_dir`, with its tokenizer,
    generation config and a README."""
    ctranslate2 = import_ctranslate2()
    from .translate import load_translator

    model, tokenizer = load_translator(str(model_dir), device="cpu")

    class Converter(ctranslate2.converters.Converter):
        def _load(self):
            return transformer_spec(model, tokenizer)

    output_dir = Path(output_dir)
    Converter().convert(str(output_dir), quantization=quantization, force=force)
    tokenizer.save_pretrained(output_dir)
    model.generation_config.save_pretrained(output_dir)
    results = Path(model_dir) / "training_results.json"
    example = json.loads(results.read_text()).get("example_source") if results.is_file() else None
    (output_dir / "README.md").write_text(README.format(
        name=Path(model_dir).resolve().name, src_lang=model.config.src_lang or "source",
        tgt_lang=model.config.tgt_lang or "target", quantization=quantization or "as trained", folder=output_dir.name,
        example=example or "Ein Hund läuft über die Wiese."))
    return output_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    formats = parser.add_subparsers(dest="format", required=True)
    ct2 = formats.add_parser("ctranslate2", help="export to a CTranslate2 model folder")
    ct2.add_argument("--model", required=True, help="a saved model folder (or Hub repository id)")
    ct2.add_argument("--output_dir", required=True)
    ct2.add_argument("--quantization", choices=QUANTIZATIONS, default=None, help="default: the weights' own type")
    ct2.add_argument("--force", action="store_true", help="replace an existing --output_dir")
    args = parser.parse_args(argv)
    try:
        folder = export_ctranslate2(args.model, args.output_dir, args.quantization, args.force)
    except (OSError, ValueError, RuntimeError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"Exported {args.model} to {folder} (CTranslate2, {args.quantization or 'weights as trained'})")


if __name__ == "__main__":
    main()

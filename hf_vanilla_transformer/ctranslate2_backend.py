"""CTranslate2, the inference engine built for this architecture: the export of a saved model, and the backend
that runs the export with the decoding `generate` gives the model.

    python -m hf_vanilla_transformer.ctranslate2_backend --model DIR --output_dir OUT [--quantization int8]
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
import os
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import GenerationConfig, PreTrainedTokenizerFast

from .configuration_vanilla_transformer import VanillaTransformerConfig
from .decoding import EXTRA_OUTPUT_TOKENS, output_limits
from .loading import load_model_and_tokenizer, local_folder
from .tokenization import check_tokenizer_matches_model

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

or with `ctranslate2` and `transformers` alone (beam {num_beams}, length penalty {length_penalty}, at most source
length + {extra_tokens} tokens with the end of the sentence, which CTranslate2 does not count, §6.1):

```python
import ctranslate2
from transformers import PreTrainedTokenizerFast

translator = ctranslate2.Translator("{folder}")
tokenizer = PreTrainedTokenizerFast.from_pretrained("{folder}")
source = tokenizer.convert_ids_to_tokens(tokenizer("{example}")["input_ids"])
result = translator.translate_batch([source], beam_size={num_beams}, length_penalty={length_penalty},
                                    max_decoding_length=len(source) + {extra_tokens} - 1)
print(tokenizer.decode(tokenizer.convert_tokens_to_ids(result[0].hypotheses[0])))
```
"""


def import_ctranslate2():
    """The `ctranslate2` package, or an `ImportError` that says how to install it."""
    try:
        import ctranslate2
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return ctranslate2


def check_exportable(config: VanillaTransformerConfig) -> None:
    """Raise a `ValueError` naming the field when CTranslate2's Transformer cannot express the configuration."""
    if config.encoder_attention_heads != config.decoder_attention_heads:
        raise ValueError(f"encoder_attention_heads={config.encoder_attention_heads} and decoder_attention_heads="
                         f"{config.decoder_attention_heads}: CTranslate2 takes one head count for both stacks")
    if config.attention_key_dim not in (None, config.d_model // config.encoder_attention_heads):
        raise ValueError(f"attention_key_dim={config.attention_key_dim}: "
                         "CTranslate2's attention takes queries and keys "
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
    from ctranslate2.specs import common_spec
    from ctranslate2.specs import transformer_spec as ct2

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
        with torch.no_grad():  # §3.5's sinusoids (in either layout) or Table 3's learned vectors, as a table
            positions = torch.arange(config.max_position_embeddings)
            stack_spec.position_encodings.encodings = stack.embed_positions(positions)
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
    if config.final_logits_bias:
        spec.decoder.projection.bias = model.final_logits_bias[0]

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
        _set_linear(spec.linear[0], attention.q_proj, attention.k_proj, attention.v_proj)
    else:  # queries from the decoder, keys and values from the encoder output
        _set_linear(spec.linear[0], attention.q_proj)
        _set_linear(spec.linear[1], attention.k_proj, attention.v_proj)
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
    model, tokenizer = load_model_and_tokenizer(str(model_dir), device="cpu")

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
        example=example or "Ein Hund läuft über die Wiese.", num_beams=model.generation_config.num_beams,
        length_penalty=model.generation_config.length_penalty, extra_tokens=EXTRA_OUTPUT_TOKENS))
    return output_dir


def load(folder: str | Path, device: str | None = None, **options):
    """The backend: a `CTranslate2Model` of the folder `export_ctranslate2` wrote (on `device`, the CPU unless given),
    and its tokenizer."""
    model = CTranslate2Model(local_folder(folder), device or "cpu", **options)
    return model, model.tokenizer


class CTranslate2Model:
    """A folder `export_ctranslate2` wrote, run by CTranslate2, with the call and the decoding of the model's
    `generate`: the saved generation config (§6.1: beam 4, length penalty 0.6) and, unless `max_new_tokens` is
    given, each sentence's `output_limits`.

    The two rank finished hypotheses alike (log-probability / length^length_penalty) but stop beam search
    differently: CTranslate2 once `num_beams` × `patience` hypotheses have ended, `generate` with
    `early_stopping=True` once `num_beams` have (the same: patience 1), and with the default `early_stopping=False`
    once no running beam can still beat the finished ones, for which `HF_PATIENCE` stands in.
    """

    HF_PATIENCE = 1.5  # gave generate's translations on all 1,000 test_2016_flickr sentences (1: 977, 2: 999)

    def __init__(self, folder: str | Path, device: str = "cpu", compute_type: str = "default",
                 threads: int | None = None):
        """`threads`: on the CPU, parts of each batch translated side by side, one thread each (default: one per
        core). Measured on 2 cores (benchmarks/README.md): one thread per part is 1.4-1.7x one part alone, while
        two threads for one part, or more threads than cores, are 5-10x slower."""
        folder = Path(folder)
        if not (folder / "model.bin").is_file():
            raise FileNotFoundError(f"{folder} is not a CTranslate2 export (no model.bin): make one with "
                                    "`python -m hf_vanilla_transformer.ctranslate2_backend`")
        self.config = SimpleNamespace(**json.loads((folder / "config.json").read_text()))
        self.generation_config = GenerationConfig.from_pretrained(folder)
        self.tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
        check_tokenizer_matches_model(self.tokenizer, self.config)
        self.device = torch.device("cpu")  # where `generate` takes its input tensors, whatever device translates
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        self.workers = 1 if device != "cpu" else threads or cores
        self.translator = import_ctranslate2().Translator(str(folder), device=device, compute_type=compute_type,
                                                          intra_threads=1, inter_threads=self.workers)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 num_beams: int | None = None, length_penalty: float | None = None,
                 early_stopping: bool | None = None, max_new_tokens: int | None = None) -> torch.LongTensor:
        """`generate`'s output for the (padded) sources: per row the decoder start token, the translation and, where
        it ended, the EOS, padded; the arguments default to the saved generation config."""
        defaults, tokenizer = self.generation_config, self.tokenizer
        early_stopping = defaults.early_stopping if early_stopping is None else early_stopping
        options = dict(beam_size=num_beams or defaults.num_beams, max_input_length=0,
                       max_batch_size=math.ceil(len(input_ids) / self.workers),  # a part for each worker
                       length_penalty=defaults.length_penalty if length_penalty is None else length_penalty,
                       patience=1 if early_stopping is True else self.HF_PATIENCE)
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        sources = [ids[keep.bool()].tolist() for ids, keep in zip(input_ids, mask)]
        tokens = [tokenizer.convert_ids_to_tokens(ids) for ids in sources]
        if max_new_tokens is not None:  # a plain cap: `generate` stops the beams there, without an EOS, as CTranslate2
            results = self.translator.translate_batch(tokens, max_decoding_length=max_new_tokens, **options)
            outputs, caps = [result.hypotheses[0] for result in results], [max_new_tokens] * len(tokens)
        else:  # each sentence's own limit, the last token an EOS, which CTranslate2 does not count
            caps = output_limits(torch.tensor([len(ids) for ids in sources]), self.config.max_position_embeddings)
            limits = (caps - 1).tolist()
            results = self.translator.translate_batch(tokens, max_decoding_length=max(limits), **options)
            outputs = [result.hypotheses[0] for result in results]
            for i, (output, limit) in enumerate(zip(outputs, limits)):
                if len(output) >= limit:  # at or past this sentence's limit: decode it alone, under its own limit
                    outputs[i] = self.at_the_limit(tokens[i], limit, options)
        start = tokenizer.convert_tokens_to_ids(self.config.decoder_start_token)
        eos = self.config.eos_token_id
        rows = [torch.tensor([start, *tokenizer.convert_tokens_to_ids(output), *([eos] if len(output) < cap else [])])
                for output, cap in zip(outputs, caps)]
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=self.config.pad_token_id)

    def at_the_limit(self, source: list[str], limit: int, options: dict) -> list[str]:
        """The best translation of a sentence whose beams reach its limit. `generate` ends each beam there with a
        forced EOS whose log-probability counts in the beam's score; CTranslate2 stops the beams without it, and
        would rank them otherwise. So its hypotheses are scored again with the EOS and ranked as `generate` does:
        summed log-probabilities / (tokens with the EOS)^length_penalty."""
        hypotheses = self.translator.translate_batch([source], max_decoding_length=limit,
                                                     num_hypotheses=options["beam_size"], **options)[0].hypotheses
        scored = self.translator.score_batch([source] * len(hypotheses), hypotheses)
        return max(zip(hypotheses, scored),
                   key=lambda pair: sum(pair[1].log_probs) / len(pair[1].log_probs) ** options["length_penalty"])[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a saved model folder (or Hub repository id)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default=None, help="default: the weights' own type")
    parser.add_argument("--force", action="store_true", help="replace an existing --output_dir")
    args = parser.parse_args(argv)
    try:
        folder = export_ctranslate2(args.model, args.output_dir, args.quantization, args.force)
    except (ImportError, OSError, ValueError, RuntimeError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"Exported {args.model} to {folder} (CTranslate2, {args.quantization or 'weights as trained'})")


if __name__ == "__main__":
    main()

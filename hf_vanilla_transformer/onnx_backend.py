"""ONNX, the format of ONNX Runtime and transformers.js: the export of a saved model, and the backend that runs the
export with the decoding `generate` gives the model.

    python -m hf_vanilla_transformer.onnx_backend --model DIR [--output_dir OUT]
    python -m hf_vanilla_transformer.translate --model DIR --backend onnx "Ein Hund läuft."

The export writes the files optimum and transformers.js read for an encoder-decoder model: `onnx/encoder_model.onnx`
(source ids and mask → the encoder output, §3.1) and `onnx/decoder_model_merged.onnx`, one decoder graph that either
starts a translation or continues it from the key-value cache: an ONNX `If` on `use_cache_branch` chooses between
the two graphs `torch.onnx.export` traces, and the weights they share are stored once. Each has an int8 variant
(`*_quantized.onnx`: ONNX Runtime's dynamic quantization of the matrix products). OUT (the model folder itself
unless given) also holds the configuration, the tokenizer and the generation config. `onnxruntime` (and, to export,
`onnx` and `onnxscript`) is an optional extra: `pip install "hf-vanilla-transformer[onnx]"`.

`ONNXModel` runs the files with ONNX Runtime behind transformers' own `generate` (greedy, §6.1's beam search and
per-sentence limit): the model of the `translate`, `evaluate_bleu` and benchmark commands' `--backend onnx`.
"""

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel, PreTrainedTokenizerFast
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

from .configuration_vanilla_transformer import VanillaTransformerConfig
from .decoding import EXTRA_OUTPUT_TOKENS, PaperDecoding
from .loading import load_model_and_tokenizer, local_folder, model_location, sha256_file
from .modeling_vanilla_transformer import CACHE_NAME
from .tokenization import check_tokenizer_matches_model

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "hf-vanilla-transformer[onnx]" (onnxruntime; onnx and onnxscript to export)'
FOLDER = "onnx"
ENCODER, DECODER = "encoder_model", "decoder_model_merged"
VARIANTS = {"float32": "", "int8": "_quantized"}  # the file name's suffix of each weight type
OPSET = 18
WEIGHTS_KEY = "model.safetensors sha256"  # the graphs' metadata: the weights they were exported from
TRACE_SIZE = 2  # every dynamic dimension is traced at >= 2: the exporter fixes a size-1 dimension to the constant 1

ONNX_FILES = tuple(f"{FOLDER}/{graph}{suffix}.onnx" for graph in (ENCODER, DECODER) for suffix in VARIANTS.values())
# A model folder of its own that transformers.js loads as it is (`write_transformers_js_folder`).
TRANSFORMERS_JS = "transformers.js"
TRANSFORMERS_JS_FILES = tuple(f"{TRANSFORMERS_JS}/{name}" for name in (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", *ONNX_FILES))
USAGE = """The folder `{folder}/` holds the model in [ONNX](https://onnx.ai), float32 (`{encoder}.onnx`,
`{decoder}.onnx`) and int8 (`*_quantized.onnx`): the files [ONNX Runtime](https://onnxruntime.ai) and
transformers.js read. With `hf-vanilla-transformer[onnx]`, `python -m hf_vanilla_transformer.translate --model FOLDER
--backend onnx` translates with them as `generate` does (§6.1's beam search). With `onnxruntime` and `transformers`
alone, greedy decoding:

```python
import numpy as np
import onnxruntime
from huggingface_hub import snapshot_download
from transformers import PreTrainedTokenizerFast

folder = snapshot_download("{repo_id}", allow_patterns=["*.json", "{folder}/{encoder}.onnx", "{folder}/{decoder}.onnx"])
tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
encoder = onnxruntime.InferenceSession(f"{{folder}}/{folder}/{encoder}.onnx")
decoder = onnxruntime.InferenceSession(f"{{folder}}/{folder}/{decoder}.onnx")
source = tokenizer(["{example}"], return_tensors="np")
encoder_output = encoder.run(["last_hidden_state"], dict(source))[0]
cache = {{i.name: np.zeros([1, i.shape[1], 0, i.shape[3]], np.float32)  # empty before the first step
         for i in decoder.get_inputs() if i.name.startswith("past_key_values")}}
tokens = [{start}]
for step in range(source["input_ids"].shape[1] + {extra_tokens} - 1):  # §6.1: source length + {extra_tokens}, EOS last
    logits, *present = decoder.run(["logits", *(name.replace("past_key_values", "present") for name in cache)],
                                   {{"input_ids": np.array([tokens[-1:]]), "use_cache_branch": [step > 0],
                                    "encoder_hidden_states": encoder_output,
                                    "encoder_attention_mask": source["attention_mask"], **cache}})
    cache = dict(zip(cache, present))
    tokens.append(int(logits[0, -1].argmax()))
    if tokens[-1] == {eos}:
        break
print(tokenizer.decode(tokens, skip_special_tokens=True))
```
"""
TRANSFORMERS_JS_USAGE = """
In JavaScript, [transformers.js](https://huggingface.co/docs/transformers.js) loads the folder `{js}/` as it is (its
own config.json, which names the architecture transformers.js knows by the same fields, `marian`; the same graphs).
Its `generate` decodes greedily (it has no beam search; beam search is this project's, ONNX Runtime's through
`--backend onnx`, and CTranslate2's), up to {limit} tokens; translate one sentence per call, since in a batch its
pipeline keeps what a finished sentence's row samples after its end. With the folder downloaded:

```js
import {{ env, pipeline }} from "@huggingface/transformers";

env.localModelPath = "PATH/TO/{name}";  // the model folder, which holds {js}/
const translator = await pipeline("translation", "{js}");
console.log((await translator("{example}"))[0].translation_text);
```
"""


def usage(repo_id: str, example: str, start: int, eos: int, limit: int | None = None) -> str:
    """The model card's section on the ONNX files; with `limit` (the model's `max_position_embeddings`: a folder
    with a `transformers.js/` export), also on transformers.js."""
    text = USAGE.format(folder=FOLDER, encoder=ENCODER, decoder=DECODER, repo_id=repo_id, example=example,
                        start=start, eos=eos, extra_tokens=EXTRA_OUTPUT_TOKENS)
    if limit is not None:
        text += TRANSFORMERS_JS_USAGE.format(js=TRANSFORMERS_JS, limit=limit, name=repo_id.split("/")[-1],
                                             example=example)
    return text


def import_onnxruntime():
    """The `onnxruntime` package, or an `ImportError` that says how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return onnxruntime


def import_onnx_exporter() -> None:
    """Check that what the export needs is installed (onnx, onnxscript for `torch.onnx`'s exporter, onnxruntime for
    the int8 variant), or raise an `ImportError` that says how to install it."""
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"{', '.join(missing)} not installed. {INSTALL_HINT}")


def past_names(config: VanillaTransformerConfig, prefix: str = "past_key_values") -> list[str]:
    """The cache's flat names, per decoder layer: self-attention key and value, then encoder-decoder attention's."""
    return [f"{prefix}.{i}.{part}.{kind}" for i in range(config.decoder_layers)
            for part in ("decoder", "encoder") for kind in ("key", "value")]


def attention_names(config: VanillaTransformerConfig, kind: str) -> list[str]:
    """The graphs' attention-weight outputs, one per layer, which the browser page draws: `encoder_attentions.{i}`
    (the encoder's self-attention, (batch, heads, source, source)), `decoder_attentions.{i}` (the decoder's masked
    self-attention, (batch, heads, target, past + target)) or `cross_attentions.{i}` (encoder-decoder attention,
    (batch, heads, target, source))."""
    layers = config.encoder_layers if kind == "encoder_attentions" else config.decoder_layers
    return [f"{kind}.{i}" for i in range(layers)]


def principal_coordinates(matrix: torch.Tensor, count: int = 2) -> torch.Tensor:
    """Every row of `matrix` on its first `count` principal axes (the rows' PCA, through the SVD of the centred matrix
    in float64), each axis signed so that its largest component is positive: (rows, count), float32."""
    centred = matrix.detach().double() - matrix.detach().double().mean(0)
    axes = torch.linalg.svd(centred, full_matrices=False).Vh[:count].T
    axes = axes * axes.gather(0, axes.abs().argmax(0, keepdim=True)).sign()
    return (centred @ axes).float()


def embedding_names(config: VanillaTransformerConfig) -> list[str]:
    """The encoder graph's outputs after the attention weights, what the browser page draws of the input (§3.4–3.5):
    `inputs_embeds` (the source's embeddings × sqrt(d_model), (batch, source, d_model)), `position_encodings` (the
    vectors added for positions 0 .. source - 1, (source, d_model); sinusoidal and learned positions only) and
    `embedding_map` (every vocabulary entry's scaled embedding on the two principal axes of the shared embedding
    matrix, (vocab, 2))."""
    added = config.position_embedding_type in ("sinusoidal", "learned")
    return ["inputs_embeds", *(["position_encodings"] if added else []), "embedding_map"]


class EncoderGraph(nn.Module):
    """The encoder stack (§3.1) as the exported graph sees it: source ids and mask in; out, the encoder output, each
    layer's attention weights and the embedded input (`embedding_names`)."""

    def __init__(self, model):
        super().__init__()
        self.encoder = model.get_encoder()
        # the map is the same for every input: computed once here, it is a constant of the graph
        embedding_map = principal_coordinates(self.encoder.embed_tokens.weight * self.encoder.embed_scale)
        self.register_buffer("embedding_map", embedding_map, persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True)
        embed_positions = self.encoder.embed_positions
        positions = [] if embed_positions is None else [embed_positions(torch.arange(input_ids.shape[1]))]
        return (outputs.last_hidden_state, *outputs.attentions,
                self.encoder.embed_tokens(input_ids) * self.encoder.embed_scale, *positions, self.embedding_map)


class DecoderGraph(nn.Module):
    """The decoder stack and output projection (§3.1, §3.4) over a key-value cache given as plain tensors: empty
    (`past` not given, the first step, which projects the encoder output into keys and values) or the cache of
    the previous steps (the encoder's keys and values already projected). Returns the logits, the cache after
    the new tokens (flat, in `past_names` order), each layer's encoder-decoder attention weights and each layer's
    masked self-attention weights."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, encoder_attention_mask, encoder_hidden_states, *past: torch.Tensor):
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        for layer in range(len(past) // 4):
            self_key, self_value, cross_key, cross_value = past[4 * layer : 4 * layer + 4]
            cache.self_attention_cache.update(self_key, self_value, layer)
            cache.cross_attention_cache.update(cross_key, cross_value, layer)
            cache.is_updated[layer] = True
        outputs = self.model(encoder_outputs=(encoder_hidden_states,), attention_mask=encoder_attention_mask,
                             decoder_input_ids=input_ids, **{CACHE_NAME: cache}, use_cache=True,
                             output_attentions=True)
        present = []
        for self_layer, cross_layer in zip(cache.self_attention_cache.layers, cache.cross_attention_cache.layers):
            present += [self_layer.keys, self_layer.values, cross_layer.keys, cross_layer.values]
        return outputs.logits, *present, *outputs.cross_attentions, *outputs.decoder_attentions


def trace_onnx(module: nn.Module, args: tuple, names: list[str], output_names: list[str], dynamic: dict):
    """`module` as an optimized ONNX `ModelProto`, traced by `torch.onnx.export` (the dynamo exporter) with the
    named dynamic dimensions."""
    quiet = logging.getLogger("torch.onnx"), logging.getLogger("torch.onnx._internal.exporter._registration")
    levels = [logger.level for logger in quiet]
    for logger in quiet:  # the exporter's notes on torchvision operators this model does not use
        logger.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the exporter's own notes: equal dimensions named once, torch.export internals it still calls
            warnings.filterwarnings("ignore", message=".*axis name", category=UserWarning)
            warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
            program = torch.onnx.export(module.eval(), args, dynamo=True, input_names=names,
                                        output_names=output_names, dynamic_shapes=dynamic, opset_version=OPSET,
                                        verbose=False)
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    program.optimize()
    return program.model_proto


def merge_decoders(first_step, with_past):
    """One decoder graph that runs `with_past` where the input `use_cache_branch` is true and `first_step` where it
    is false (optimum's merged decoder), the two graphs' identical weights stored once in the outer graph."""
    import onnx
    from onnx import TensorProto, helper

    shared: dict[str, onnx.TensorProto] = {}  # a tensor's hash (type, shape, content) → the outer initializer

    def branch(model, prefix: str):
        graph, renamed = model.graph, {}
        for tensor in graph.initializer:
            copy = TensorProto()
            copy.CopyFrom(tensor)
            copy.name = ""
            key = hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()
            if key not in shared:
                copy.name = prefix + tensor.name
                shared[key] = copy
            renamed[tensor.name] = shared[key].name
        outer = {value.name for value in graph.input}

        def name(value: str) -> str:  # the outer graph's inputs keep their names, the rest get the branch's prefix
            return value if value in outer or not value else renamed.get(value, prefix + value)

        nodes = []
        for node in graph.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = prefix + node.name
            copy.input[:] = [name(value) for value in node.input]
            copy.output[:] = [name(value) for value in node.output]
            nodes.append(copy)
        values = []
        for value in [*graph.output, *graph.value_info]:
            copy = onnx.ValueInfoProto()
            copy.CopyFrom(value)
            copy.name = name(value.name)
            values.append(copy)
        outputs = values[: len(graph.output)]
        return helper.make_graph(nodes, prefix.rstrip("/"), [], outputs, value_info=values[len(graph.output):])

    with_cache, without = branch(with_past, "with_past/"), branch(first_step, "first_step/")
    inputs = [*with_past.graph.input, helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1])]
    choose = helper.make_node("If", ["use_cache_branch"], [value.name for value in first_step.graph.output],
                              name="optional_cache", then_branch=with_cache, else_branch=without)
    graph = helper.make_graph([choose], DECODER, inputs, list(first_step.graph.output),
                              initializer=list(shared.values()))
    merged = helper.make_model(graph, opset_imports=first_step.opset_import, ir_version=first_step.ir_version)
    onnx.checker.check_model(merged)
    return merged


def check_exportable(config: VanillaTransformerConfig) -> None:
    """Raise a `ValueError` naming the field when the export cannot express the configuration."""
    if config.max_position_embeddings < TRACE_SIZE + 2:
        raise ValueError(f"max_position_embeddings={config.max_position_embeddings}: the export traces sequences of "
                         f"{TRACE_SIZE} tokens after {TRACE_SIZE} cached ones, so it needs at least {TRACE_SIZE + 2}")


def export_graphs(model) -> tuple:
    """The encoder, first-step decoder and with-past decoder of `model` (a
    `VanillaTransformerForConditionalGeneration`, float32) as ONNX `ModelProto`s."""
    config = model.config
    check_exportable(config)
    batch = {0: "batch_size"}
    source = {**batch, 1: "encoder_sequence_length"}
    input_ids = torch.full((TRACE_SIZE, TRACE_SIZE + 1), config.eos_token_id)
    mask = torch.ones_like(input_ids)
    encoder = EncoderGraph(model).eval()
    encoder_graph = trace_onnx(encoder, (input_ids, mask), ["input_ids", "attention_mask"],
                               ["last_hidden_state", *attention_names(config, "encoder_attentions"),
                                *embedding_names(config)],
                               {"input_ids": source, "attention_mask": source})
    with torch.no_grad():
        hidden = encoder(input_ids, mask)[0]
        decoder_ids = torch.full((TRACE_SIZE, TRACE_SIZE), config.decoder_start_token_id)
        past = DecoderGraph(model).eval()(decoder_ids, mask, hidden)[1 : 1 + 4 * config.decoder_layers]
    names = ["input_ids", "encoder_attention_mask", "encoder_hidden_states"]
    dynamic = {"input_ids": {**batch, 1: "decoder_sequence_length"}, "encoder_attention_mask": source,
               "encoder_hidden_states": source}
    outputs = ["logits", *past_names(config, "present"), *attention_names(config, "cross_attentions"),
               *attention_names(config, "decoder_attentions")]
    first_step = trace_onnx(DecoderGraph(model), (decoder_ids, mask, hidden), names, outputs, dynamic)
    past_lengths = [{**batch, 2: "past_decoder_sequence_length"}, {**batch, 2: "past_decoder_sequence_length"},
                    {**batch, 2: "encoder_sequence_length"}, {**batch, 2: "encoder_sequence_length"}]
    with_past = trace_onnx(DecoderGraph(model), (decoder_ids, mask, hidden, *past), names + past_names(config),
                           outputs, {**dynamic, "past": tuple(past_lengths * config.decoder_layers)})
    return encoder_graph, first_step, with_past


def quantized(graph):
    """`graph` with int8 weights: ONNX Runtime's dynamic quantization of its matrix products (activations quantized
    as they come). Applied to each decoder graph before they are merged, since it leaves an `If`'s branches alone."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    class NoAdvice(logging.Filter):  # its advice to run its pre-processing first, logged at every call
        def filter(self, record: logging.LogRecord) -> bool:
            return "pre-processing before quantization" not in record.getMessage()

    advice = NoAdvice()
    logging.getLogger().addFilter(advice)
    try:
        with tempfile.TemporaryDirectory() as work:
            onnx.save(graph, Path(work) / "float32.onnx")
            quantize_dynamic(Path(work) / "float32.onnx", Path(work) / "int8.onnx", weight_type=QuantType.QInt8)
            return onnx.load(Path(work) / "int8.onnx")
    finally:
        logging.getLogger().removeFilter(advice)


def export_onnx(model_dir: str | Path, output_dir: str | Path | None = None, quantize: bool = True,
                force: bool = False) -> Path:
    """Export the saved model in `model_dir` to ONNX in `output_dir/onnx` (`output_dir`: the model folder unless
    given; a new one also gets the configuration, tokenizer and generation config); with `quantize`, also the int8
    variants. Existing ONNX files there are replaced only with `force`."""
    import_onnx_exporter()
    import onnx

    location = model_location(str(model_dir))
    if output_dir is None and not isinstance(location, Path):
        raise ValueError(f"{model_dir} is a Hub repository: give the folder to export to (--output_dir)")
    model, tokenizer = load_model_and_tokenizer(str(model_dir), device="cpu")
    check_exportable(model.config)
    model.set_attn_implementation("eager")  # the attention weights are among the graphs' outputs
    output_dir = Path(model_dir if output_dir is None else output_dir)
    folder = output_dir / FOLDER
    existing = [output_dir / name for name in ONNX_FILES + TRANSFORMERS_JS_FILES if (output_dir / name).exists()]
    if existing and not force:
        raise FileExistsError(f"{existing[0]} exists: pass --force to replace the ONNX files")
    for path in existing:  # an earlier export's files, the int8 ones too where this one has none: never mixed
        path.unlink()
    folder.mkdir(parents=True, exist_ok=True)  # before the minutes of tracing: an unusable folder stops it now
    graphs = export_graphs(model.float())
    variants = {"float32": graphs} | ({"int8": [quantized(graph) for graph in graphs]} if quantize else {})
    weights = {WEIGHTS_KEY: sha256_file(location / "model.safetensors")} if isinstance(location, Path) else {}
    for variant, (encoder, first_step, with_past) in variants.items():
        for name, graph in ((ENCODER, encoder), (DECODER, merge_decoders(first_step, with_past))):
            onnx.helper.set_model_props(graph, weights)
            save_atomically(graph, folder / f"{name}{VARIANTS[variant]}.onnx")
    if not (output_dir / "config.json").is_file():
        model.config.save_pretrained(output_dir)
        model.generation_config.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
    write_transformers_js_folder(output_dir, model, tokenizer)
    return output_dir


def write_transformers_js_folder(output_dir: Path, model, tokenizer) -> None:
    """`output_dir/transformers.js/`: the export as a model folder transformers.js loads without an override. Its
    config.json names the encoder-decoder Transformer transformers.js knows by the same field names, `marian` (this
    model exports as one: post-LN or pre-LN, positions, output bias, all in the graphs); its generation config sets
    transformers.js's greedy search (it has no beam search) a limit of `max_position_embeddings` tokens; the tokenizer
    and the ONNX graphs (hard links to `onnx/`'s, copies where a link cannot be made) come along. A model with
    Table 3's narrower d_k is left out, with a warning: transformers.js sizes the cache from d_model / h."""
    if model.config.attention_key_dim not in (None, model.config.d_model // model.config.encoder_attention_heads):
        logger.warning("%s: no %s/ folder: transformers.js sizes the key-value cache from d_model / h, and this "
                       "model's d_k is %d", output_dir, TRANSFORMERS_JS, model.config.attention_key_dim)
        return
    folder = output_dir / TRANSFORMERS_JS
    (folder / FOLDER).mkdir(parents=True, exist_ok=True)
    config = {name: value for name, value in model.config.to_dict().items()
              if name not in ("auto_map", "custom_pipelines")}
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "marian",
                                                    "architectures": ["MarianMTModel"]}, indent=2))
    ids = {name: getattr(model.config, name) for name in ("decoder_start_token_id", "bos_token_id", "eos_token_id",
                                                          "pad_token_id")}
    GenerationConfig(**ids, num_beams=1, max_length=model.config.max_position_embeddings).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for name in ONNX_FILES:
        if (output_dir / name).is_file():
            try:
                os.link(output_dir / name, folder / name)
            except OSError:  # another filesystem, or one without links
                shutil.copyfile(output_dir / name, folder / name)


def exported_from(path: Path) -> str | None:
    """The SHA-256 of the weights the graph at `path` was exported from, as its metadata records it (None: none
    recorded, as for an export of a Hub repository)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except DecodeError as error:
        raise OSError(f"{path} is damaged or cut short ({error}): export the model again") from None
    return {entry.key: entry.value for entry in graph.metadata_props}.get(WEIGHTS_KEY)


def check_export(folder: str | Path) -> None:
    """Raise `ValueError` where the ONNX files in `folder`/onnx/ (float32 and int8, encoder and decoder) were not all
    exported from the folder's model.safetensors, or, without one, not all in one export: an encoder and a decoder
    of two exports, or weights saved after the export, translate wrongly without an error. Needs `onnx`."""
    folder = Path(folder)
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ImportError(f"checking {folder / FOLDER} needs onnx: {INSTALL_HINT}") from None
    graphs = {name: exported_from(folder / name) for name in ONNX_FILES + TRANSFORMERS_JS_FILES
              if name.endswith(".onnx") and (folder / name).is_file()}
    weights = folder / "model.safetensors"
    if weights.is_file():
        expected = sha256_file(weights)
        stale = [name for name, origin in graphs.items() if origin != expected]
        problem = f"exported from other weights than {weights}"
    else:
        stale = sorted(graphs) if len(set(graphs.values())) > 1 else []
        problem = "of different exports"
    if stale:
        raise ValueError(f"{', '.join(stale)} in {folder} are {problem}: export the model again (python -m "
                         f"hf_vanilla_transformer.onnx_backend --model {folder} --force)")


def save_atomically(graph, path: Path) -> None:
    """Save `graph` to a temporary file beside `path`, then rename it: a run cut short leaves no half-written
    graph."""
    import onnx

    with tempfile.TemporaryDirectory(dir=path.parent) as work:
        onnx.save(graph, Path(work) / path.name)
        os.replace(Path(work) / path.name, path)


def load(folder: str | Path, device: str | None = None, variant: str = "float32", threads: int | None = None):
    """The backend: an `ONNXModel` of the folder's `onnx/` files (`variant` float32 or int8), and its tokenizer.
    ONNX Runtime runs them on the CPU."""
    if device not in (None, "cpu"):
        raise ValueError(f"device {device!r}: the ONNX backend runs on the CPU (ONNX Runtime's CPU provider)")
    model = ONNXModel(local_folder(folder), variant, threads)
    return model, model.tokenizer


def open_session(onnxruntime, path: Path, options):
    """An ONNX Runtime session of the graph at `path` on the CPU; a damaged file raises an `OSError` that says so."""
    errors = onnxruntime.capi.onnxruntime_pybind11_state
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except (errors.InvalidProtobuf, errors.InvalidGraph, errors.Fail) as error:
        raise OSError(f"{path} is damaged or cut short ({str(error).splitlines()[0][:200]}): export the model "
                      "again") from None


class ONNXEncoder(nn.Module):
    """The encoder graph as `generate` calls a model's encoder."""

    main_input_name = "input_ids"

    def __init__(self, session):
        super().__init__()
        self.session = session

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        hidden = self.session.run(["last_hidden_state"], {"input_ids": input_ids.numpy(),
                                                          "attention_mask": mask.long().numpy()})[0]
        return BaseModelOutput(last_hidden_state=torch.from_numpy(hidden))


class ONNXModel(PreTrainedModel, PaperDecoding, GenerationMixin):
    """A folder `export_onnx` wrote, run by ONNX Runtime, with the call and the decoding of the model's `generate`
    (transformers' own, with §6.1's per-sentence limit): its forward runs the merged decoder over the key-value
    cache `generate` keeps, a transformers `EncoderDecoderCache` of the graph's tensors."""

    config_class = VanillaTransformerConfig
    main_input_name = "input_ids"

    def __init__(self, folder: str | Path, variant: str = "float32", threads: int | None = None):
        """`variant`: float32 or int8; `threads`: ONNX Runtime's threads per graph (default 1)."""
        folder = Path(folder)
        if variant not in VARIANTS:
            raise ValueError(f"variant {variant!r}: the export has {' and '.join(VARIANTS)}")
        paths = {graph: folder / FOLDER / f"{graph}{VARIANTS[variant]}.onnx" for graph in (ENCODER, DECODER)}
        missing = [path for path in paths.values() if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} has no {missing[0].relative_to(folder)}: export the model with "
                                    "`python -m hf_vanilla_transformer.onnx_backend`")
        super().__init__(VanillaTransformerConfig.from_pretrained(folder))
        self.generation_config = GenerationConfig.from_pretrained(folder)
        self.tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
        check_tokenizer_matches_model(self.tokenizer, self.config)
        onnxruntime = import_onnxruntime()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or 1  # one beat two on 2 cores: benchmarks/README.md
        sessions = {graph: open_session(onnxruntime, path, options) for graph, path in paths.items()}
        check_export(folder)
        self.encoder = ONNXEncoder(sessions[ENCODER])
        self.decoder_session = sessions[DECODER]
        self.empty_past = {value.name: value.shape for value in self.decoder_session.get_inputs()
                           if value.name.startswith("past_key_values")}
        self.output_names = ["logits", *past_names(self.config, "present")]  # not the attention weights
        if list(self.empty_past) != past_names(self.config):
            raise ValueError(f"{paths[DECODER]} holds a cache of {len(self.empty_past) // 4} decoder layers and "
                             f"config.json says {self.config.decoder_layers}: they come from different models")

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def get_encoder(self):
        return self.encoder

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, encoder_outputs=None,
                cache: EncoderDecoderCache | None = None, past_key_values: EncoderDecoderCache | None = None,
                use_cache: bool | None = None, **kwargs) -> Seq2SeqLMOutput:
        """Logits for `decoder_input_ids` after the tokens `cache` holds (none when it is empty or not given);
        `cache` (`past_key_values` before transformers 5.24) is extended in place."""
        cache = cache if cache is not None else past_key_values
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids, attention_mask)
        hidden = encoder_outputs[0]
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long)
        past_length = cache.get_seq_length() if cache is not None else 0
        feeds = {"input_ids": decoder_input_ids.numpy(), "encoder_attention_mask": attention_mask.long().numpy(),
                 "encoder_hidden_states": hidden.numpy(), "use_cache_branch": torch.tensor([past_length > 0]).numpy()}
        for layer, names in enumerate(zip(*[iter(self.empty_past)] * 4)):
            if past_length:
                self_layer = cache.self_attention_cache.layers[layer]
                cross_layer = cache.cross_attention_cache.layers[layer]
                tensors = (self_layer.keys, self_layer.values, cross_layer.keys, cross_layer.values)
            else:
                tensors = [torch.zeros(len(hidden), self.empty_past[name][1], 0, self.empty_past[name][3])
                           for name in names]
            feeds.update((name, tensor.contiguous().numpy()) for name, tensor in zip(names, tensors))
        logits, *present = (torch.from_numpy(array) for array in self.decoder_session.run(self.output_names, feeds))
        if cache is not None:
            for layer in range(self.config.decoder_layers):
                self_key, self_value, cross_key, cross_value = present[4 * layer : 4 * layer + 4]
                cache.self_attention_cache.update(self_key[:, :, past_length:], self_value[:, :, past_length:],
                                                  layer)
                if not past_length:
                    cache.cross_attention_cache.update(cross_key, cross_value, layer)
                    cache.is_updated[layer] = True
        return Seq2SeqLMOutput(logits=logits, **{CACHE_NAME: cache})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a saved model folder (or Hub repository id)")
    parser.add_argument("--output_dir", default=None, help="default: --model's folder (the files go to its onnx/)")
    parser.add_argument("--no_quantize", action="store_true", help="float32 only, without the int8 variants")
    parser.add_argument("--force", action="store_true", help="replace the ONNX files of an earlier export")
    args = parser.parse_args(argv)
    try:
        folder = export_onnx(args.model, args.output_dir, quantize=not args.no_quantize, force=args.force)
    except (ImportError, OSError, ValueError, RuntimeError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"Exported {args.model} to {folder / FOLDER} (ONNX, float32{'' if args.no_quantize else ' and int8'})")


if __name__ == "__main__":
    main()

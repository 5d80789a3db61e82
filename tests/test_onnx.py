"""The ONNX export and its ONNX Runtime backend: the graphs' outputs equal the PyTorch model's, cached decoding
equals a full pass, a padded batch equals sentences alone, `generate` over the sessions gives `generate`'s tokens
(greedy and beam, every position type), the model card's onnxruntime-only snippet runs without the package, and the
command lines refuse what they cannot do. Skipped, with the reason, where the [onnx] extra is not installed."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import (
    ROOT,
    assert_each_sentence_keeps_its_own_limit,
    briefly_trained,
    read_multi30k,
    run_module,
    run_python,
    tiny_config,
)
from test_ecosystem import RESULTS

from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration, hub
from hf_vanilla_transformer.modeling_vanilla_transformer import shift_tokens_right
from hf_vanilla_transformer.onnx_backend import DECODER, ENCODER, FOLDER, ONNX_FILES, attention_names, export_onnx
from hf_vanilla_transformer.translate import load_translator, translate

onnxruntime = pytest.importorskip("onnxruntime", reason='ONNX needs pip install "hf-vanilla-transformer[onnx]"')
onnx = pytest.importorskip("onnx", reason='the ONNX export needs pip install "hf-vanilla-transformer[onnx]"')
pytest.importorskip("onnxscript", reason='the ONNX export needs pip install "hf-vanilla-transformer[onnx]"')

SOURCES = read_multi30k("val", "de", 24)
# Every position type, pre-LN, and queries and keys narrower than d_model / h (Table 3, row B)
VARIANTS = {"pre-LN-learned": {"normalize_before": True, "position_embedding_type": "learned"},
            "rope": {"position_embedding_type": "rope"},
            "alibi-key-dim": {"position_embedding_type": "alibi", "attention_key_dim": 12}}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer, pairs):
    """A briefly trained tiny model saved for the Hub with its ONNX export, as training does with --export_onnx."""
    folder = tmp_path_factory.mktemp("onnx") / "model"
    model = briefly_trained(tokenizer, pairs)
    hub.save_for_hub(folder, model, tokenizer, RESULTS, onnx=True)
    return folder, model


def sessions(folder):
    return [onnxruntime.InferenceSession(str(folder / FOLDER / f"{graph}.onnx")) for graph in (ENCODER, DECODER)]


def operators(graph) -> list[str]:
    """The operator types of `graph` and of the graphs nested in its nodes (the merged decoder's branches)."""
    nested = [operators(a.g) for node in graph.node for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
    return [node.op_type for node in graph.node] + [op for ops in nested for op in ops]


def run_decoder(decoder, input_ids, mask, hidden, past=None):
    """The merged decoder's logits, cache (by the past's input names) and cross-attention weights for `input_ids`
    after `past`."""
    shapes = {i.name: i.shape for i in decoder.get_inputs() if i.name.startswith("past_key_values")}
    empty = {name: np.zeros([len(input_ids), shape[1], 0, shape[3]], np.float32) for name, shape in shapes.items()}
    logits, *present = decoder.run(None, {"input_ids": input_ids.numpy(), "encoder_attention_mask": mask.numpy(),
                                          "encoder_hidden_states": hidden,
                                          "use_cache_branch": np.array([past is not None]),
                                          **(past or empty)})
    return logits, dict(zip(shapes, present)), present[len(shapes):]


def test_graphs_equal_the_pytorch_model_and_the_cache_equals_a_full_pass(exported, tokenizer):
    assert_graphs_equal_the_model(*exported, tokenizer)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_of_the_architecture_exports_equal(variant, tokenizer, tmp_path):
    torch.manual_seed(0)
    model = VanillaTransformerForConditionalGeneration(tiny_config(**VARIANTS[variant])).eval()
    hub.save_for_hub(tmp_path, model, tokenizer, RESULTS)
    export_onnx(tmp_path, quantize=False)
    assert_graphs_equal_the_model(tmp_path, model, tokenizer)
    onnx_model, _ = load_translator(str(tmp_path), backend="onnx")
    for num_beams in (1, 3):
        expected = translate(model, tokenizer, SOURCES[:8], num_beams=num_beams, max_new_tokens=12)
        assert translate(onnx_model, tokenizer, SOURCES[:8], num_beams=num_beams, max_new_tokens=12) == expected


def assert_graphs_equal_the_model(folder, model, tokenizer):
    """The encoder output and the decoder's logits, in one pass and token by token with the cache, equal the
    PyTorch model's for a padded batch."""
    encoder, decoder = sessions(folder)
    batch = tokenizer(SOURCES[:3], padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # padded: the masks reach both graphs
    targets = tokenizer(text_target=["A dog runs on the grass."] * 3, return_tensors="pt")["input_ids"]
    decoder_ids = torch.cat([torch.full((3, 1), model.config.decoder_start_token_id), targets[:, :-1]], 1)
    with torch.no_grad():
        expected = model(**batch, decoder_input_ids=decoder_ids, use_cache=False)
    model.set_attn_implementation("eager")  # the attention weights, as the export computes them
    with torch.no_grad():
        attentions = model(**batch, decoder_input_ids=decoder_ids, use_cache=False, output_attentions=True)
    encoded = dict(zip([o.name for o in encoder.get_outputs()],
                       encoder.run(None, {k: v.numpy() for k, v in batch.items()})))
    hidden = encoded["last_hidden_state"]
    np.testing.assert_allclose(hidden, expected.encoder_last_hidden_state.numpy(), atol=1e-4)
    full, _, weights = run_decoder(decoder, decoder_ids, batch["attention_mask"], hidden)
    np.testing.assert_allclose(full, expected.logits.numpy(), atol=1e-4)
    layers = model.config.decoder_layers
    encoder_attentions = [encoded[name] for name in attention_names(model.config, "encoder_attentions")]
    for exported, expected_weights in [*zip(encoder_attentions, attentions.encoder_attentions, strict=True),
                                       *zip(weights[:layers], attentions.cross_attentions, strict=True),
                                       *zip(weights[layers:], attentions.decoder_attentions, strict=True)]:
        np.testing.assert_allclose(exported, expected_weights.numpy(), atol=1e-5)  # what the browser page draws
    assert_embedded_input_equals_the_model(encoded, model, batch["input_ids"])
    # token by token with the cache: the same logits as the full pass
    logits, past, _ = run_decoder(decoder, decoder_ids[:, :1], batch["attention_mask"], hidden)
    steps = [logits]
    for t in range(1, decoder_ids.shape[1]):
        logits, past, _ = run_decoder(decoder, decoder_ids[:, t : t + 1], batch["attention_mask"], hidden, past)
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, 1), expected.logits.numpy(), atol=1e-4)


def pca_coordinates(embeddings: np.ndarray) -> np.ndarray:
    """Every row of `embeddings` on its two principal axes (numpy's SVD; the axes' signs as they come)."""
    centred = embeddings - embeddings.mean(0)
    return centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T


def assert_embedded_input_equals_the_model(encoded: dict, model, input_ids: torch.Tensor) -> None:
    """The encoder graph's view of the input, which the browser page draws: the embeddings × sqrt(d_model) (§3.4),
    the positional encodings added to them (§3.5), and every vocabulary entry on the embedding matrix's two
    principal axes (rows and axes of numpy's SVD, each axis's sign as the export chose it)."""
    stack = model.get_encoder()
    scale = model.config.d_model**0.5 if model.config.scale_embedding else 1.0
    with torch.no_grad():
        np.testing.assert_allclose(encoded["inputs_embeds"], stack.embed_tokens(input_ids).numpy() * scale, atol=1e-5)
        if stack.embed_positions is None:
            assert "position_encodings" not in encoded
        else:
            np.testing.assert_allclose(encoded["position_encodings"],
                                       stack.embed_positions(torch.arange(input_ids.shape[1])).numpy(), atol=1e-5)
    coordinates = pca_coordinates(stack.embed_tokens.weight.detach().double().numpy() * scale)
    exported = encoded["embedding_map"]
    assert exported.shape == (model.config.vocab_size, 2)
    coordinates *= np.sign((coordinates * exported).sum(0))
    np.testing.assert_allclose(exported, coordinates, atol=1e-4 * np.abs(coordinates).max())


@pytest.mark.parametrize("num_beams", [1, 4])
def test_onnx_backend_translates_as_generate_does(exported, tokenizer, num_beams):
    folder, model = exported
    onnx_model, onnx_tokenizer = load_translator(str(folder), backend="onnx")
    expected = translate(model, tokenizer, SOURCES, num_beams=num_beams)
    assert translate(onnx_model, onnx_tokenizer, SOURCES, num_beams=num_beams) == expected
    assert len(set(expected)) > 5  # the model distinguishes its inputs: the comparison is not vacuous
    alone = [translate(onnx_model, onnx_tokenizer, [s], num_beams=num_beams)[0] for s in SOURCES[:6]]
    assert alone == expected[:6]  # padding in a batch changes nothing


def test_int8_variant_is_smaller_and_translates(exported):
    """int8 files, with int8 products, that predict the float32 model's next token: teacher-forced on the float32
    translations, at least 90 % of positions (whole sentences of this tiny model part at the first flip)."""
    folder, _ = exported
    for graph in (ENCODER, DECODER):
        quantized = folder / FOLDER / f"{graph}_quantized.onnx"
        assert quantized.stat().st_size < (folder / FOLDER / f"{graph}.onnx").stat().st_size
        assert "MatMulInteger" in operators(onnx.load(quantized).graph)  # int8 products, in both decoder branches
    float32, tokenizer = load_translator(str(folder), backend="onnx")
    int8, _ = load_translator(str(folder), backend="onnx", variant="int8")
    expected = translate(float32, tokenizer, SOURCES, num_beams=1)
    assert all(translate(int8, tokenizer, SOURCES, num_beams=1))
    batch = tokenizer(SOURCES, text_target=expected, padding=True, return_tensors="pt")
    decoder_input_ids = shift_tokens_right(batch["labels"], tokenizer.pad_token_id, tokenizer.bos_token_id)
    float32_next, int8_next = (m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 decoder_input_ids=decoder_input_ids).logits.argmax(-1) for m in (float32, int8))
    agreement = (float32_next == int8_next)[batch["labels"] != tokenizer.pad_token_id].float().mean().item()
    assert agreement >= 0.9, f"int8 predicts float32's next token at {agreement:.1%} of positions"


def test_the_hub_folder_carries_the_export_and_the_card_snippet_runs_without_the_package(exported, tmp_path):
    folder, model = exported
    files, left_out = hub.files_to_upload(folder)
    assert set(ONNX_FILES) <= set(files) and not left_out
    repo_id = "someone/vanilla-de-en"
    card = hub.render_model_card({**json.loads((folder / hub.RESULTS_NAME).read_text()), "repo_id": repo_id})
    snippet = re.search(r"```python\n(import numpy as np\n.*?)```", card, re.S).group(1)
    revision = "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "hub" / "models--someone--vanilla-de-en"
    shutil.copytree(folder, cache / "snapshots" / revision)
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text(revision)
    result = run_python(snippet, tmp_path, block_package=True,
                        env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert result.returncode == 0, result.stderr[-3000:]
    onnx_model, tokenizer = load_translator(str(folder), backend="onnx")
    assert result.stdout.strip() == translate(onnx_model, tokenizer, [RESULTS["example_source"]], num_beams=1)[0]


def test_each_sentence_keeps_its_own_length_limit_in_a_batch(tmp_path, tokenizer):
    def exported(model):
        hub.save_for_hub(tmp_path / "model", model, tokenizer, RESULTS)
        return load_translator(str(export_onnx(tmp_path / "model", quantize=False)), backend="onnx")[0]

    assert_each_sentence_keeps_its_own_limit(tokenizer, exported)


def test_export_and_translate_from_the_command_line(tmp_path, tokenizer):
    torch.manual_seed(0)
    hub.save_for_hub(tmp_path / "model", VanillaTransformerForConditionalGeneration(tiny_config()), tokenizer,
                     RESULTS)
    out = tmp_path / "exported"
    export = run_module("hf_vanilla_transformer.onnx_backend", "--model", tmp_path / "model", "--output_dir", out,
                        "--no_quantize")
    assert export.returncode == 0, export.stderr[-2000:]
    assert {"config.json", "generation_config.json", "tokenizer.json", "onnx"} <= {p.name for p in out.iterdir()}
    assert sorted(p.name for p in (out / FOLDER).iterdir()) == [f"{DECODER}.onnx", f"{ENCODER}.onnx"]
    translated = run_module("hf_vanilla_transformer.translate", "--model", out, "--backend", "onnx",
                            stdin="\n".join(SOURCES[:3] + [""]) + "\n")
    assert translated.returncode == 0, translated.stderr[-2000:]
    lines = translated.stdout.split("\n")
    assert len(lines) == 5 and all(lines[:3]) and lines[3] == ""

    again = run_module("hf_vanilla_transformer.onnx_backend", "--model", tmp_path / "model", "--output_dir", out)
    assert again.returncode == 1 and "exists: pass --force" in again.stderr and "Traceback" not in again.stderr
    assert sorted(p.name for p in (out / FOLDER).iterdir()) == [f"{DECODER}.onnx", f"{ENCODER}.onnx"]
    missing = run_module("hf_vanilla_transformer.translate", "--model", tmp_path / "model", "--backend", "onnx",
                         "Ein Hund.")
    assert missing.returncode == 1 and "has no onnx/encoder_model.onnx" in missing.stderr
    with pytest.raises(ValueError, match="runs on the CPU"):
        load_translator(str(out), "cuda", backend="onnx")
    with pytest.raises(ValueError, match="someone/model is a Hub repository: give the folder to export to"):
        export_onnx("someone/model")  # not into ./someone/model


def test_onnx_files_of_other_weights_are_refused(exported, tmp_path, tokenizer):
    """An onnx/ folder left beside weights saved later (a model trained again into the same folder) is stale."""
    folder, model = exported
    stale = tmp_path / "model"
    shutil.copytree(folder, stale)
    torch.manual_seed(1)
    VanillaTransformerForConditionalGeneration(model.config).save_pretrained(stale)
    with pytest.raises(ValueError, match="exported from other weights"):
        load_translator(str(stale), backend="onnx")


def test_training_with_export_onnx_fills_the_hub_folder(tmp_path, tokenizer):
    from test_training_runs import train

    train(tmp_path, tmp_path / "run", "--max_steps", "2", "--export_onnx")
    folder = tmp_path / "run" / "model"
    assert set(ONNX_FILES) <= set(hub.files_to_upload(folder)[0])
    assert "--backend onnx" in (folder / "README.md").read_text()
    model, tokenizer = load_translator(str(folder), "cpu")
    onnx_model, _ = load_translator(str(folder), backend="onnx")
    expected = translate(model, tokenizer, SOURCES[:4], num_beams=2, max_new_tokens=8)
    assert translate(onnx_model, tokenizer, SOURCES[:4], num_beams=2, max_new_tokens=8) == expected


def test_damaged_or_mismatched_files_are_named(exported, tmp_path):
    folder, _ = exported
    cut = tmp_path / "cut"
    shutil.copytree(folder, cut)
    graph = cut / FOLDER / f"{DECODER}.onnx"
    graph.write_bytes(graph.read_bytes()[:100_000])
    with pytest.raises(OSError, match=f"{graph} is damaged or cut short"):
        load_translator(str(cut), backend="onnx")
    with pytest.raises(ValueError, match="variant 'int4': the export has float32 and int8"):
        load_translator(str(folder), backend="onnx", variant="int4")
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "decoder_layers": config["decoder_layers"] + 1}))
    with pytest.raises(ValueError, match="config.json says 3: they come from different models"):
        load_translator(str(other), backend="onnx")


def with_origin(graph_path, origin: str) -> None:
    """What a graph of another export looks like: the same shape, another recorded origin."""
    graph = onnx.load(str(graph_path))
    onnx.helper.set_model_props(graph, {"model.safetensors sha256": origin})
    onnx.save(graph, str(graph_path))


@pytest.mark.parametrize("mixed", [f"{FOLDER}/{DECODER}.onnx", f"{FOLDER}/{ENCODER}_quantized.onnx"])
def test_a_graph_of_another_export_is_refused_wherever_the_export_is_used(exported, tmp_path, mixed):
    """A decoder of an earlier export beside a new encoder decoded garbage; an int8 graph was never checked. The
    backend (whichever variant it opens), hub push and the page server all refuse, naming the file."""
    folder = tmp_path / "model"
    shutil.copytree(exported[0], folder)
    with_origin(folder / mixed, "0" * 64)
    with pytest.raises(ValueError, match=f"{mixed} in {folder} are exported from other weights.*--force"):
        load_translator(str(folder), backend="onnx")
    with pytest.raises(ValueError, match=re.escape(mixed)):
        hub.push(folder, "someone/model", dry_run=True)
    result = run_module("hf_vanilla_transformer.hub", "push", "--model", folder, "--repo_id", "someone/model",
                        "--dry_run")
    assert result.returncode == 2 and "Traceback" not in result.stderr and mixed in result.stderr
    served = subprocess.run([sys.executable, str(ROOT / "web" / "serve.py"), "--model", str(folder), "--port", "0"],
                            capture_output=True, text=True, timeout=120)  # refused before it listens
    assert served.returncode == 1 and "Traceback" not in served.stderr and mixed in served.stderr, served.stderr


def test_weights_saved_over_an_export_take_the_stale_files_away_and_say_so(exported, tmp_path, caplog):
    """Saving other weights into a folder with onnx/ (a resumed or repeated run without --export_onnx) removes the
    export it made stale, rather than publishing it; the same weights keep it."""
    folder, model = exported
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    tokenizer = load_translator(str(copy), "cpu")[1]
    hub.save_for_hub(copy, model, tokenizer, RESULTS)  # the same weights: the export stays valid
    assert all((copy / name).is_file() for name in ONNX_FILES)
    torch.manual_seed(1)
    with caplog.at_level("WARNING"):
        hub.save_for_hub(copy, VanillaTransformerForConditionalGeneration(model.config), tokenizer, RESULTS)
    assert not any((copy / name).exists() for name in ONNX_FILES)
    assert "removed onnx/encoder_model.onnx" in caplog.text and "exported from the weights this save replaced" in (
        caplog.text)
    assert not set(ONNX_FILES) & set(hub.files_to_upload(copy)[0])


def test_a_float32_export_over_one_with_int8_leaves_no_int8_graph_of_the_old_weights(exported, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(exported[0], folder)
    torch.manual_seed(1)
    VanillaTransformerForConditionalGeneration(exported[1].config).save_pretrained(folder)
    export_onnx(folder, quantize=False, force=True)
    assert not (folder / FOLDER / f"{ENCODER}_quantized.onnx").exists()
    load_translator(str(folder), backend="onnx")  # every graph left is of these weights

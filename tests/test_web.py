"""The browser page (web/): headless Chromium opens it from a local server, translates 20 test sentences with the
ONNX export exactly as Python's greedy decoding and §6.1's beam search of the same files do, shows every stage with
the numbers PyTorch computes (embeddings, positions, the embedding map, every attention, the next-token
probabilities, the beam's score), in English and in Chinese, from the keyboard, and shows a message on the page for
an empty box, a paragraph longer than the model reads, and a folder that does not load.

Needs Debian's `chromium` and `npm install --ignore-scripts` in web/; skipped, with the reason, without them, and
failed instead where REQUIRE_BROWSER=1 (as `.ci/run` sets it)."""

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import briefly_trained, read_multi30k
from test_ecosystem import RESULTS
from test_onnx import pca_coordinates

from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration, hub
from hf_vanilla_transformer.onnx_backend import export_onnx
from hf_vanilla_transformer.translate import load_translator, translate

WEB = Path(__file__).resolve().parent.parent / "web"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
MISSING = [what for what, present in (("chromium (apt-get install chromium)", Path(CHROMIUM).is_file()),
                                      ("node", shutil.which("node") is not None),
                                      ("web/node_modules (npm install --ignore-scripts in web/)",
                                       (WEB / "node_modules" / "playwright-core").is_dir())) if not present]
if MISSING:
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(f"the browser test cannot run: {', '.join(MISSING)} missing", pytrace=False)
    pytest.skip(f"the browser test needs {', '.join(MISSING)}", allow_module_level=True)
pytest.importorskip("onnxscript", reason='the ONNX export needs pip install "hf-vanilla-transformer[onnx]"')

SOURCES = read_multi30k("test_2016_flickr", "de", 20)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tokenizer, pairs):
    """The page and a briefly trained tiny model's ONNX export, served on a free localhost port."""
    import sys

    sys.path.insert(0, str(WEB))
    from serve import serve

    folder = tmp_path_factory.mktemp("web") / "model"
    hub.save_for_hub(folder, briefly_trained(tokenizer, pairs), tokenizer, RESULTS)
    export_onnx(folder, quantize=False)
    httpd = serve(folder, port=0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{httpd.server_port}/"
    httpd.shutdown()


def drive(url: str, texts: list[str], **options) -> dict:
    """What the page showed after loading and after each text was typed and translated (web/test/drive.mjs, with
    its `options`)."""
    result = subprocess.run(["node", str(WEB / "test" / "drive.mjs"), url, json.dumps(texts), json.dumps(options)],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "CHROMIUM": CHROMIUM})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["errors"] == []  # nothing went to the console uncaught
    return report


def test_the_page_translates_as_python_does_greedily_and_with_beam_search(server, tmp_path):
    folder, url = server
    onnx_model, tokenizer = load_translator(str(folder), backend="onnx")
    greedy = translate(onnx_model, tokenizer, SOURCES, num_beams=1)
    beam = translate(onnx_model, tokenizer, SOURCES, num_beams=4)  # §6.1: beam 4, α 0.6
    assert len(set(greedy)) > 5 and beam != greedy  # the comparisons are not vacuous
    report = drive(url, ["\n".join(SOURCES)], screenshot=str(tmp_path / "page.png"))
    assert report["load"]["state"] == "ready", report["load"]["message"]
    [page] = report["submissions"]
    assert page["state"] == "done", page["message"]
    assert [line["greedy"] for line in page["outputs"]] == greedy
    assert [line["beam"] for line in page["outputs"]] == beam
    assert (tmp_path / "page.png").stat().st_size > 50_000  # the page with every stage drawn


def test_every_stage_the_page_shows_equals_pytorch(server):
    folder, url = server
    model = VanillaTransformerForConditionalGeneration.from_pretrained(folder, attn_implementation="eager").eval()
    scale = model.config.d_model**0.5
    matrix = model.get_encoder().embed_tokens.weight.detach().double().numpy() * scale
    coordinates = pca_coordinates(matrix)
    report = drive(url, SOURCES[:3], stages=True)
    for submission in report["submissions"]:
        page = submission["stages"]
        source = torch.tensor([page["sourceIds"]])
        greedy = torch.tensor([page["greedyIds"]])
        with torch.no_grad():
            out = model(input_ids=source, decoder_input_ids=greedy[:, :-1], output_attentions=True)
            embeddings = model.get_encoder().embed_tokens(source)[0] * scale
            positions = model.get_encoder().embed_positions(torch.arange(source.shape[1]))
            generated = model.generate(source, num_beams=4, output_scores=True, return_dict_in_generate=True)
        close = {"atol": 1e-4, "rtol": 0}
        np.testing.assert_allclose(page["embeddings"], embeddings.numpy(), **close)  # §3.4: E · sqrt(d_model)
        np.testing.assert_allclose(page["positions"], positions.numpy(), **close)  # §3.5
        mapped = np.array(page["embeddingMap"])  # the shared matrix's PCA, up to each axis's sign
        expected = coordinates[page["sourceIds"]] * np.sign((coordinates[page["sourceIds"]] * mapped).sum(0))
        np.testing.assert_allclose(mapped, expected, atol=1e-3 * np.abs(expected).max())
        for kind, weights in (("encoder", out.encoder_attentions), ("cross", out.cross_attentions)):
            np.testing.assert_allclose(page[kind], torch.stack(weights)[:, 0].numpy(), **close)
        masked = torch.stack(out.decoder_attentions)[:, 0].numpy()  # (layers, heads, steps, steps), causal
        for s in range(masked.shape[-1]):  # step s's row holds positions 0..s: the future is not even sent
            assert all(len(head[s]) == s + 1 for layer in page["decoder"] for head in layer)
            np.testing.assert_allclose([[head[s] for head in layer] for layer in page["decoder"]],
                                       masked[:, :, s, : s + 1], **close)
            assert np.all(masked[:, :, s, s + 1 :] == 0)
        probabilities = out.logits[0].softmax(-1)  # §3.4's softmax at each greedy step
        for s, topk in enumerate(page["topk"][:-1]):  # the last step is the limit's forced </s>, if reached
            values, ids = probabilities[s].topk(len(topk))
            assert [i for i, _ in topk] == ids.tolist()
            np.testing.assert_allclose([p for _, p in topk], values.numpy(), **close)
        assert page["beamIds"] == generated.sequences[0][: len(page["beamIds"])].tolist()
        np.testing.assert_allclose(page["beamScore"], generated.sequences_scores[0].item(), **close)


def test_bad_input_gives_a_message_on_the_page(server):
    import onnx

    folder, url = server
    paragraph = " ".join(SOURCES)  # one line, longer than the model's 128 positions
    report = drive(url, ["", paragraph, "Ein Hund läuft."])
    empty, too_long, after = report["submissions"]
    assert empty["error"] and "Type a sentence" in empty["message"]
    assert too_long["error"] and "tokens long and the model reads at most 128" in too_long["message"]
    assert after["state"] == "done" and after["outputs"][0]["beam"]  # the page still translates: nothing froze

    missing = drive(url + "?model=/model/no-such-folder/", ["Ein Hund."])
    assert missing["load"]["state"] == "error" and missing["load"]["error"]
    assert "Could not load the model from" in missing["load"]["message"] and "404" in missing["load"]["message"]

    earlier = folder / "earlier"  # an export from before the page's stages: graphs without their outputs
    (earlier / "onnx").mkdir(parents=True)
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(folder / name, earlier / name)
    for graph in ("encoder_model", "decoder_model_merged"):
        proto = onnx.load(folder / "onnx" / f"{graph}.onnx")
        kept = [o for o in proto.graph.output if not o.name.startswith(("inputs_embeds", "position_encodings",
                                                                        "embedding_map", "decoder_attentions"))]
        del proto.graph.output[:]
        proto.graph.output.extend(kept)
        onnx.save(proto, earlier / "onnx" / f"{graph}.onnx")
    stale = drive(url + "?model=/model/earlier/", ["Ein Hund."])
    assert stale["load"]["state"] == "error", stale["load"]["message"]
    assert "inputs_embeds, embedding_map, decoder_attentions.0" in stale["load"]["message"]
    assert "export again" in stale["load"]["message"]


def test_the_page_speaks_chinese_works_from_the_keyboard_and_fits_a_phone(server, tmp_path):
    folder, url = server
    report = drive(url + "?lang=zh", ["", SOURCES[0]], width=390, height=844, scale=2, shots=str(tmp_path),
                   screenshot=str(tmp_path / "phone.png"))
    assert report["load"]["message"].startswith("模型已从")
    empty, translated = report["submissions"]
    assert empty["error"] and empty["message"].startswith("请先输入")
    assert translated["state"] == "done" and translated["message"].startswith("完成")
    assert report["widths"]["page"] <= report["widths"]["viewport"]  # nothing wider than the phone: no sideways scroll
    assert report["zoomClosedByEscape"]  # Enter on a small multiple enlarged it, Escape closed it
    for stage in ("stage-tokens", "stage-embeddings", "stage-encoder", "stage-decoder", "stage-beam", "enlarged"):
        assert (tmp_path / f"{stage}.png").stat().st_size > 5_000, stage

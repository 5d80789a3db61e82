"""transformers.js as a real client: the folder the ONNX export writes for it (`transformers.js/`) loads with
`pipeline("translation", ...)` in Node, without any override, and its greedy translations, one sentence at a time
and in a padded batch, equal Python's ONNX backend's (float32). Skipped without the packages of
tests/transformers_js (`npm ci --ignore-scripts` there); failed instead where REQUIRE_TRANSFORMERS_JS=1 (as
`.ci/run` sets it in one of its environments)."""

import json
import os
import shutil
import subprocess

import pytest
from conftest import ROOT, briefly_trained, read_multi30k
from test_ecosystem import RESULTS

from hf_vanilla_transformer import hub
from hf_vanilla_transformer.onnx_backend import TRANSFORMERS_JS
from hf_vanilla_transformer.translate import load_translator, translate

CLIENT = ROOT / "tests" / "transformers_js"
# 20 of the sentences the tests' model learned (`briefly_trained`): translated confidently, with no near-tie between
# two tokens that the float rounding of two ONNX Runtime builds (onnxruntime-node's, Python's) could flip.
SOURCES = read_multi30k("train", "de", 20)
MISSING = ("node" if shutil.which("node") is None else
           None if (CLIENT / "node_modules" / "@huggingface" / "transformers").is_dir() else
           f"{CLIENT}/node_modules (npm ci --ignore-scripts there)")
if MISSING and os.environ.get("REQUIRE_TRANSFORMERS_JS") == "1":
    raise RuntimeError(f"REQUIRE_TRANSFORMERS_JS=1, but {MISSING} is missing")
pytestmark = [pytest.mark.skipif(MISSING is not None, reason=f"needs {MISSING}"),
              pytest.mark.skipif(__import__("importlib").util.find_spec("onnxruntime") is None,
                                 reason='needs pip install "hf-vanilla-transformer[onnx]"')]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tokenizer, pairs):
    return hub.save_for_hub(tmp_path_factory.mktemp("js") / "model", briefly_trained(tokenizer, pairs), tokenizer,
                            RESULTS, onnx=True)


def test_transformers_js_translates_as_the_python_onnx_backend(folder):
    """Greedy, float32: the pipeline one sentence at a time, and a padded batch through its model and tokenizer
    with each row cut at its first </s> (transformers.js's `generate` keeps sampling a finished row while the others
    run, and its pipeline keeps what follows)."""
    model, tokenizer = load_translator(str(folder), backend="onnx")
    limit = model.config.max_position_embeddings  # transformers.js's limit for every sentence (its config's)
    expected = translate(model, tokenizer, SOURCES, num_beams=1, max_length=limit)
    result = subprocess.run(["node", CLIENT / "translate.mjs", folder / TRANSFORMERS_JS, "fp32"], cwd=CLIENT,
                            input=json.dumps(SOURCES), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    translations = json.loads(result.stdout.splitlines()[-1])
    assert translations["one_at_a_time"] == expected
    assert translations["batched"] == expected
    assert len(set(expected)) > 5  # the model tells its inputs apart: the comparison is not vacuous


def test_the_transformers_js_folder_is_published_and_documented(folder):
    uploaded, _ = hub.files_to_upload(folder)
    assert {f"{TRANSFORMERS_JS}/config.json", f"{TRANSFORMERS_JS}/onnx/decoder_model_merged.onnx",
            f"{TRANSFORMERS_JS}/onnx/encoder_model_quantized.onnx"} <= set(uploaded)
    config = json.loads((folder / TRANSFORMERS_JS / "config.json").read_text())
    assert config["model_type"] == "marian" and "auto_map" not in config
    card = (folder / "README.md").read_text()
    assert 'pipeline("translation", "transformers.js")' in card and "decodes greedily" in card

"""The browser page (web/): headless Chromium opens it from a local server, translates 20 test sentences with the
ONNX export exactly as Python's greedy decoding of the same files does, and shows a message on the page for an
empty box, a paragraph longer than the model reads, and a folder that does not load.

Needs Debian's `chromium` and `npm install --ignore-scripts` in web/; skipped, with the reason, without them, and
failed instead where REQUIRE_BROWSER=1 (as `.ci/run` sets it)."""

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import torch
from conftest import briefly_trained, read_multi30k
from test_ecosystem import RESULTS

from hf_vanilla_transformer import hub
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


def drive(url: str, texts: list[str], screenshot: Path | None = None) -> dict:
    """What the page showed after loading and after each text was typed and translated (web/test/drive.mjs)."""
    result = subprocess.run(["node", str(WEB / "test" / "drive.mjs"), url, json.dumps(texts),
                             *([str(screenshot)] if screenshot else [])],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "CHROMIUM": CHROMIUM})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["errors"] == []  # nothing went to the console uncaught
    return report


def test_the_page_translates_as_python_does_and_draws_the_attention(server, tmp_path):
    folder, url = server
    onnx_model, tokenizer = load_translator(str(folder), backend="onnx")
    torch.manual_seed(0)
    expected = translate(onnx_model, tokenizer, SOURCES, num_beams=1)
    assert len(set(expected)) > 5  # the model distinguishes its inputs: the comparison is not vacuous
    report = drive(url, ["\n".join(SOURCES)], tmp_path / "page.png")
    assert report["load"]["state"] == "ready", report["load"]["message"]
    [page] = report["submissions"]
    assert page["state"] == "done", page["message"]
    assert page["outputs"] == expected
    assert (tmp_path / "page.png").stat().st_size > 10_000  # the page with its heat map


def test_bad_input_gives_a_message_on_the_page(server):
    folder, url = server
    paragraph = " ".join(SOURCES)  # one line, longer than the model's 128 positions
    report = drive(url, ["", paragraph, "Ein Hund läuft."])
    empty, too_long, after = report["submissions"]
    assert empty["error"] and "Type a sentence" in empty["message"]
    assert too_long["error"] and "tokens long and the model reads at most 128" in too_long["message"]
    assert after["state"] == "done" and after["outputs"][0]  # the page still translates: nothing froze

    missing = drive(url + "?model=/model/no-such-folder/", ["Ein Hund."])
    assert missing["load"]["state"] == "error" and missing["load"]["error"]
    assert "Could not load the model from" in missing["load"]["message"] and "404" in missing["load"]["message"]

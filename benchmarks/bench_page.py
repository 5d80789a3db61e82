"""The browser page's speed as a reader meets it, in headless Chromium (web/test/drive.mjs): the first load (the page
opened to the model ready, and the model's own load as the page reports it), then one test sentence at a time typed
and translated with every stage drawn (greedy decoding with its attention and next-token bars, §6.1's beam search
and its tree); and how many of the page's translations equal the Python ONNX backend's on the same files, greedy and
beam 4. With --screenshots, the page at a laptop's and a phone's width and each stage, for docs/.

    python benchmarks/bench_page.py --model outputs/multi30k-de-en/model                 # exports ONNX if needed
    python benchmarks/bench_page.py --model outputs/multi30k-de-en/model --screenshots docs/page

Needs Debian's chromium and `npm install --ignore-scripts` in web/.
"""

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "web"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from serve import serve  # noqa: E402

from benchmarks.bench_data import cpu_name  # noqa: E402
from hf_vanilla_transformer.onnx_backend import export_onnx  # noqa: E402
from hf_vanilla_transformer.translate import load_translator, translate  # noqa: E402

EXAMPLE = "Zwei junge Männer spielen Fußball auf einer Wiese."


def drive(url: str, texts: list[str], **options) -> dict:
    result = subprocess.run(["node", str(ROOT / "web" / "test" / "drive.mjs"), url, json.dumps(texts),
                             json.dumps(options)], capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"error: the browser run failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="a saved model folder")
    parser.add_argument("--sentences", type=int, default=20, help="test_2016_flickr sentences, one at a time")
    parser.add_argument("--screenshots", type=Path, default=None, help="a folder for the page's screenshots")
    args = parser.parse_args(argv)
    if not (args.model / "onnx" / "encoder_model.onnx").is_file():
        export_onnx(args.model)
    with gzip.open(ROOT / "data" / "multi30k" / "test_2016_flickr.de.gz", "rt", encoding="utf-8") as file:
        sources = file.read().splitlines()[: args.sentences]
    server = serve(args.model, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/"
    report = drive(url, sources)
    print(f"CPU: {cpu_name()}; model {args.model}")
    print(f"first load, page opened to model ready: {report['load']['seconds']:.2f} s ({report['load']['message']})")
    timings = [submission["timings"][0] for submission in report["submissions"]]
    parts = {"decode": [t["decode"] for t in timings], "draw": [t["draw"] for t in timings],
             "both": [t["decode"] + t["draw"] for t in timings]}
    print(f"one sentence at a time ({len(timings)}), decoded (greedy and beam 4) and every stage drawn, as the page "
          "times it: " + "; ".join(f"{part} median {statistics.median(ms):.0f} ms, max {max(ms):.0f} ms"
                                   for part, ms in parts.items()))
    print(f"  the first sentence (the page's code not yet compiled): {parts['both'][0]:.0f} ms; median of the "
          f"others {statistics.median(parts['both'][1:] or parts['both']):.0f} ms")
    seconds = [submission["seconds"] for submission in report["submissions"]]
    print(f"  click to done as the browser driver sees it: median {1000 * statistics.median(seconds):.0f} ms")
    model, tokenizer = load_translator(str(args.model), backend="onnx")
    for decoding, num_beams in (("greedy", 1), ("beam", 4)):
        python = translate(model, tokenizer, sources, num_beams=num_beams)
        page = [submission["outputs"][0][decoding] for submission in report["submissions"]]
        print(f"{decoding}: the page's translation equals Python's (ONNX backend, the same files) for "
              f"{sum(a == b for a, b in zip(page, python))}/{len(sources)} sentences")
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
        drive(url, [EXAMPLE], screenshot=str(args.screenshots / "laptop.png"), shots=str(args.screenshots))
        drive(url + "?lang=zh", [EXAMPLE], width=390, height=844,
              screenshot=str(args.screenshots / "phone-zh.png"))
        print(f"screenshots in {args.screenshots}")
    server.shutdown()


if __name__ == "__main__":
    main()

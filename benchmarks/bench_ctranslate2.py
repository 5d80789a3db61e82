"""HF `generate` against the model's CTranslate2 export (float32 and int8), side by side in one run.

    python benchmarks/bench_ctranslate2.py --model outputs/multi30k-de-en/model          # the main job's model
    python benchmarks/bench_ctranslate2.py --model outputs/multi30k-de-en/model --preset base --sentences 200

Translates test_2016_flickr (the first `--sentences`) with each backend through `translate` (the same batching,
beam 4 with length penalty 0.6 or greedy, at most source length + 50 tokens), `--threads` CPU threads each, in a
process of its own, one untimed pass over a few sentences first. Reports sentences/s, the speed-up over HF,
sacreBLEU, and how many translations equal HF's token for token (with the sentences that differ). `--preset base`
swaps in a model of the paper's base shape with random weights and the same tokenizer: it never ends a sentence,
so every backend generates exactly `--max_new_tokens` (32) tokens per sentence.
"""

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.bench_data import cpu_name  # noqa: E402
from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration  # noqa: E402
from hf_vanilla_transformer.ctranslate2_backend import export_ctranslate2  # noqa: E402
from hf_vanilla_transformer.metrics import corpus_bleu  # noqa: E402
from hf_vanilla_transformer.translate import load_translator, translate  # noqa: E402
from training.data import load_translation_dataset  # noqa: E402

BACKENDS = (("hf", "transformers", None), ("ct2-float32", "ctranslate2", "float32"),
            ("ct2-int8", "ctranslate2", "int8"))


def base_shaped(model_dir: Path, folder: Path) -> Path:
    """A random model of the paper's base shape with the tokenizer and languages of `model_dir`."""
    model, tokenizer = load_translator(str(model_dir), device="cpu")
    torch.manual_seed(0)
    base = VanillaTransformerForConditionalGeneration(VanillaTransformerConfig.base(
        vocab_size=model.config.vocab_size, src_lang=model.config.src_lang, tgt_lang=model.config.tgt_lang,
        tokenizer_fingerprint=model.config.tokenizer_fingerprint))
    base.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def measure(folder: str, backend: str, beams: int, sources: list[str], args) -> tuple[float, list[str]]:
    """Seconds to translate `sources` (after an untimed pass over a few), and the translations."""
    torch.set_num_threads(args.threads)
    options = {"threads": args.threads} if backend == "ctranslate2" else {}
    model, tokenizer = load_translator(folder, "cpu", backend, **options)
    options = {"num_beams": beams} | ({"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {})
    translate(model, tokenizer, sources[:16], args.batch_size, **options)
    start = time.perf_counter()
    hypotheses = translate(model, tokenizer, sources, args.batch_size, **options)
    return time.perf_counter() - start, hypotheses


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/multi30k-de-en/model", help="a saved model folder")
    parser.add_argument("--preset", choices=["trained", "base"], default="trained")
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max_new_tokens", type=int, default=None,
                        help="a fixed length limit instead of source length + 50 (default with --preset base: 32)")
    parser.add_argument("--output", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    if args.preset == "base" and args.max_new_tokens is None:
        args.max_new_tokens = 32  # random weights never end a sentence: every backend generates exactly this many
    torch.set_num_threads(args.threads)

    test = load_translation_dataset("de", "en")["test"]["translation"][: args.sentences]
    sources, references = [p["de"] for p in test], [p["en"] for p in test]
    results = {}
    context = multiprocessing.get_context("spawn")  # each backend in a fresh process: no thread pool left spinning
    with tempfile.TemporaryDirectory() as work:
        model_dir = Path(args.model) if args.preset == "trained" else base_shaped(Path(args.model), Path(work) / "base")
        for name, backend, quantization in BACKENDS:
            folder = model_dir
            if backend == "ctranslate2":
                folder = export_ctranslate2(model_dir, Path(work) / name, quantization)
            for decoding, beams in (("greedy", 1), ("beam4", 4)):
                with context.Pool(1) as pool:
                    seconds, hypotheses = pool.apply(measure, (str(folder), backend, beams, sources, args))
                results[f"{name}/{decoding}"] = {
                    "sentences_per_second": len(sources) / seconds, "seconds": seconds,
                    "bleu": corpus_bleu(hypotheses, references)["score"], "hypotheses": hypotheses}

    print(f"\n{args.preset} model ({args.model}), test_2016_flickr, {len(sources)} sentences, "
          f"{cpu_name()}, {args.threads} threads\n")
    print(f"{'backend':<14}{'decoding':<9}{'sent/s':>9}{'vs HF':>8}{'BLEU':>8}{'same as HF':>12}")
    table = []
    for key, result in results.items():
        name, decoding = key.split("/")
        reference = results[f"hf/{decoding}"]
        same = sum(a == b for a, b in zip(result["hypotheses"], reference["hypotheses"]))
        row = {"backend": name, "decoding": decoding, "sentences_per_second": result["sentences_per_second"],
               "speedup": result["sentences_per_second"] / reference["sentences_per_second"], "bleu": result["bleu"],
               "same_as_hf": same, "differing": [i for i, (a, b) in enumerate(zip(result["hypotheses"],
                                                                                   reference["hypotheses"])) if a != b]}
        table.append(row)
        print(f"{name:<14}{decoding:<9}{row['sentences_per_second']:>9.1f}{row['speedup']:>8.2f}{row['bleu']:>8.2f}"
              f"{same:>7}/{len(sources)}")
    report = {"model": args.model, "preset": args.preset, "sentences": len(sources), "threads": args.threads,
              "max_new_tokens": args.max_new_tokens,
              "cpu": cpu_name(), "table": table}
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

"""Every backend side by side in one run: HF `generate`, the ONNX Runtime backend (float32, int8) and CTranslate2
(float32, int8).

    python benchmarks/bench_backends.py --model outputs/multi30k-de-en/model          # the main job's model
    python benchmarks/bench_backends.py --sentences 200 --batch_sizes 1 32 --threads 1 2   # thread layouts
    python benchmarks/bench_backends.py --model outputs/multi30k-de-en/model --preset base --sentences 200

Translates test_2016_flickr (the first `--sentences`) with each backend through `translate` (the same batching,
beam 4 with length penalty 0.6 or greedy, at most source length + 50 tokens), at each of `--batch_sizes` and each
count of `--threads` (torch's threads for HF, ONNX Runtime's and CTranslate2's own), in a process of its own, one
untimed pass over a few sentences first. Reports sentences/s, the speed-up over HF at the same batch size and
threads, peak memory (the process's maximum RSS), sacreBLEU, and how many translations equal HF's token for token
(with the sentences that differ). `--preset base`
swaps in a model of the paper's base shape with random weights and the same tokenizer: it never ends a sentence,
so every backend generates exactly `--max_new_tokens` (32) tokens per sentence.
"""

import argparse
import itertools
import json
import multiprocessing
import os
import resource
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
from hf_vanilla_transformer.onnx_backend import export_onnx  # noqa: E402
from hf_vanilla_transformer.translate import load_translator, translate  # noqa: E402
from training.data import load_translation_dataset  # noqa: E402

# name, backend, weights
BACKENDS = (("hf", "transformers", None), ("onnx-float32", "onnx", "float32"), ("onnx-int8", "onnx", "int8"),
            ("ct2-float32", "ctranslate2", "float32"), ("ct2-int8", "ctranslate2", "int8"))


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


def measure(folder: str, backend: str, weights: str | None, threads: int, batch_size: int, beams: int,
            sources: list[str], max_new_tokens: int | None) -> tuple[float, list[str], float]:
    """Seconds to translate `sources` (after an untimed pass over a few), the translations, and the process's peak
    memory in MB."""
    torch.set_num_threads(threads)
    options = {"transformers": {}, "onnx": {"threads": threads, "variant": weights},
               "ctranslate2": {"threads": threads}}[backend]
    model, tokenizer = load_translator(folder, "cpu", backend, **options)
    options = {"num_beams": beams} | ({"max_new_tokens": max_new_tokens} if max_new_tokens else {})
    translate(model, tokenizer, sources[:16], batch_size, **options)
    start = time.perf_counter()
    hypotheses = translate(model, tokenizer, sources, batch_size, **options)
    seconds = time.perf_counter() - start
    return seconds, hypotheses, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/multi30k-de-en/model", help="a saved model folder")
    parser.add_argument("--preset", choices=["trained", "base"], default="trained")
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[32])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--backends", nargs="+", default=[name for name, _, _ in BACKENDS],
                        choices=[name for name, _, _ in BACKENDS])
    parser.add_argument("--max_new_tokens", type=int, default=None,
                        help="a fixed length limit instead of source length + 50 (default with --preset base: 32)")
    parser.add_argument("--output", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    if args.preset == "base" and args.max_new_tokens is None:
        args.max_new_tokens = 32  # random weights never end a sentence: every backend generates exactly this many

    test = load_translation_dataset("de", "en")["test"]["translation"][: args.sentences]
    sources, references = [p["de"] for p in test], [p["en"] for p in test]
    results = {}
    context = multiprocessing.get_context("spawn")  # each backend in a fresh process: no thread pool left spinning
    with tempfile.TemporaryDirectory() as work:
        model_dir = Path(args.model) if args.preset == "trained" else base_shaped(Path(args.model), Path(work) / "base")
        folders = {"transformers": model_dir}
        if {"onnx-float32", "onnx-int8"} & set(args.backends):
            folders["onnx"] = export_onnx(model_dir, Path(work) / "onnx")
        for name, backend, weights in BACKENDS:
            if name not in args.backends:
                continue
            if backend == "ctranslate2":
                folders[name] = export_ctranslate2(model_dir, Path(work) / name, weights)
            settings = itertools.product(args.batch_sizes, args.threads, (("greedy", 1), ("beam4", 4)))
            for batch_size, threads, (decoding, beams) in settings:
                with context.Pool(1) as pool:
                    seconds, hypotheses, memory = pool.apply(measure, (
                        str(folders.get(name, folders.get(backend))), backend, weights, threads, batch_size, beams,
                        sources, args.max_new_tokens))
                results[(name, decoding, batch_size, threads)] = {
                    "sentences_per_second": len(sources) / seconds, "seconds": seconds, "peak_memory_mb": memory,
                    "bleu": corpus_bleu(hypotheses, references)["score"], "hypotheses": hypotheses}

    print(f"\n{args.preset} model ({args.model}), test_2016_flickr, {len(sources)} sentences, {cpu_name()}\n")
    print(f"{'backend':<14}{'decoding':<9}{'batch':>6}{'threads':>8}{'sent/s':>9}{'vs HF':>8}{'MB':>7}{'BLEU':>8}"
          f"{'same as HF':>12}")
    table = []
    for (name, decoding, batch_size, threads), result in results.items():
        reference = results.get(("hf", decoding, batch_size, threads), result)
        pairs = list(zip(result["hypotheses"], reference["hypotheses"]))
        row = {"backend": name, "decoding": decoding, "batch_size": batch_size, "threads": threads,
               "sentences_per_second": result["sentences_per_second"], "peak_memory_mb": result["peak_memory_mb"],
               "speedup": result["sentences_per_second"] / reference["sentences_per_second"], "bleu": result["bleu"],
               "same_as_hf": sum(a == b for a, b in pairs),
               "differing": [i for i, (a, b) in enumerate(pairs) if a != b]}
        table.append(row)
        print(f"{name:<14}{decoding:<9}{batch_size:>6}{threads:>8}{row['sentences_per_second']:>9.1f}"
              f"{row['speedup']:>8.2f}{row['peak_memory_mb']:>7.0f}{row['bleu']:>8.2f}"
              f"{row['same_as_hf']:>7}/{len(sources)}")
    report = {"model": args.model, "preset": args.preset, "sentences": len(sources),
              "max_new_tokens": args.max_new_tokens,
              "cpu": cpu_name(), "table": table}
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

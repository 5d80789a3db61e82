"""The training step under each speed lever, side by side in one run, against the step as it trains.

    python benchmarks/bench_training_step.py                                  # every lever, the main job's shape
    python benchmarks/bench_training_step.py --levers eager compile --dtype bf16 --preset medium
    python benchmarks/bench_training_step.py --device cuda --preset big --shape wmt --max_tokens 25000 \
        --dtype bf16 --levers eager compile                                   # the paper's step on one GPU

The step is `training.train`'s: §5.4's label-smoothed loss (`training.recipe.label_smoothed_loss`), backward,
fused Adam (§5.3), on batches cut by the token sampler (§5.1), for the main job's model on this machine unless
`--preset` names another. `--shape multi30k` (default): real Multi30k batches in a 6,000 BPE vocabulary; `--shape
wmt`: WMT14-shaped ones, each pair 1 to 3 Multi30k pairs joined (~27 tokens a side) and its ids spread over a
`--vocab_size` vocabulary (default 37,000, the paper's). Levers, each against `eager` (the step as it trains):

- `compile`: `torch.compile(model, dynamic=True)`, the compile time (the first pass) reported apart;
- `tokens4096`, `tokens8192`: batches of 4,096 and 8,192 tokens instead of 2,048 (fewer, larger matrix products);
- `vocab4000`, `vocab3000`: a smaller shared BPE vocabulary (its sentences are longer: the speed-up is that of
  an epoch, the training split's target tokens in that vocabulary over target tokens/s);
- `threads1`: one thread instead of all.

Each variant runs in a fresh process, `--rounds` times in alternating order, each a pass over `--steps` batches
untimed then `--repeats` timed (the median counts); "× eager" is the ratio of minutes per epoch. MFU is
6 · parameters · target tokens/s over the FLOP/s of a square matrix product (2048² on a CPU, 8192² on a GPU) in
float32 and in bf16, both measured in the same run (bf16 only where the hardware multiplies it natively: emulated
on a CPU, it is two orders of magnitude slower, and gives no peak). On a GPU, the peak memory of each lever too.
Writes JSON with `--output`.
"""

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_data import cpu_name  # noqa: E402
from benchmarks.bench_vs_marian import build, gemm_peak, prepare_batches, save_batches, timed  # noqa: E402
from training.train import main_job_model, native_mixed_precision  # noqa: E402

LEVERS = {  # name: what it changes against the main job's step
    "eager": {}, "compile": {"compile": True}, "tokens4096": {"max_tokens": 4096}, "tokens8192": {"max_tokens": 8192},
    "vocab4000": {"vocab_size": 4000}, "vocab3000": {"vocab_size": 3000}, "threads1": {"threads": 1},
}


def measure(args: argparse.Namespace, data_dir: str) -> dict:
    from training.recipe import label_smoothed_loss, paper_optimizer

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batches = torch.load(Path(data_dir) / "batches.pt")
    model = build("ours", args.preset, args.vocab_size, "eager" if device.type == "cpu" else "sdpa").to(device)
    model.train()
    optimizer, _ = paper_optimizer(model, warmup_steps=200, learning_rate=2e-3)
    forward = torch.compile(model, dynamic=True) if args.compile else model
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        batches = [{name: tensor.pin_memory() for name, tensor in batch.items()} for batch in batches]
        torch.cuda.reset_peak_memory_stats()

    def step(batch):
        tokens = int((batch["labels"] != -100).sum())  # on the host, before the copy: no wait for the device
        batch = {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}
        with autocast:
            logits = forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             decoder_input_ids=batch["decoder_input_ids"]).logits
            loss = label_smoothed_loss(logits, batch["labels"], 0.1) / tokens
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return tokens

    started = time.perf_counter()
    step(batches[0])  # compiles, where compiling
    synchronize()
    first_step = time.perf_counter() - started
    rate = timed(lambda: sum(step(batch) for batch in batches), args, synchronize)
    result = {"target_tokens_per_second": rate, "epoch_minutes": args.split_target_tokens / rate / 60,
              "first_step_seconds": first_step, "parameters": model.num_parameters()}
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def wmt_shaped_batches(args: argparse.Namespace, data_dir: Path) -> None:
    """batches.pt of WMT14-shaped pairs (`--shape wmt`): Multi30k's, tokenized in a 6,000 BPE vocabulary, 1 to 3
    pairs joined into one (as `bench_data.make_corpus` writes its corpus), ids spread over `--vocab_size`."""
    from hf_vanilla_transformer import train_tokenizer
    from training.data import load_translation_dataset, tokenize

    pairs = load_translation_dataset("de", "en")["train"]["translation"]
    tokenizer = train_tokenizer([p["de"] for p in pairs] + [p["en"] for p in pairs], vocab_size=6000)
    data = tokenize(load_translation_dataset("de", "en")["train"], tokenizer, "de", "en", max_length=256)
    generator = np.random.default_rng(0)
    spread = np.concatenate([np.arange(4), 4 + generator.permutation(args.vocab_size - 4)[: len(tokenizer) - 4]])
    rows, start = [], 0
    while start < len(data):
        joined = data[start : start + int(generator.integers(1, 4))]
        source, target = ([ids for row in joined[side] for ids in row[:-1]] + [2] for side in ("input_ids", "labels"))
        rows.append({"input_ids": spread[source].tolist(), "labels": spread[target].tolist()})
        start += len(joined["input_ids"])
    save_batches(rows, [max(len(r["input_ids"]), len(r["labels"])) for r in rows], tokenizer, args, data_dir)
    args.split_target_tokens = sum(len(r["labels"]) for r in rows)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levers", nargs="+", default=list(LEVERS), choices=LEVERS)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--preset", default=None, choices=["small", "medium", "base", "big"],
                        help="default: the main job's model with --dtype on this machine")
    parser.add_argument("--shape", default="multi30k", choices=["multi30k", "wmt"])
    parser.add_argument("--max_tokens", type=int, default=2048, help="tokens a batch (and a step)")
    parser.add_argument("--vocab_size", type=int, default=None,
                        help="--shape wmt: the vocabulary the ids are spread over (default 37000)")
    parser.add_argument("--steps", type=int, default=30, help="batches of --max_tokens per pass (fewer when larger)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    args.preset = args.preset or main_job_model("bf16" if args.dtype == "bf16" else "no")
    levers = ["eager"] + [lever for lever in args.levers if lever != "eager"]
    gpu = args.device.startswith("cuda")

    context = multiprocessing.get_context("spawn")
    rounds = {lever: [] for lever in levers}
    with tempfile.TemporaryDirectory() as root:
        settings, prepared = {}, {}  # prepared: (vocabulary, batch size) -> its batches' folder and split size
        for lever in levers:  # each lever's batches: the training split cut by its own sampler and vocabulary
            vocabulary = args.vocab_size or (37_000 if args.shape == "wmt" else 6000)
            setting = argparse.Namespace(**{**vars(args), "vocab_size": vocabulary, "compile": False,
                                            **LEVERS[lever]})
            setting.steps = max(1, args.steps * args.max_tokens // setting.max_tokens)
            key = (setting.vocab_size, setting.max_tokens)
            if key not in prepared:
                data_dir = Path(root) / f"vocab{key[0]}-tokens{key[1]}"
                data_dir.mkdir()
                (wmt_shaped_batches if args.shape == "wmt" else prepare_batches)(setting, data_dir)
                prepared[key] = (str(data_dir), setting.vocab_size, setting.split_target_tokens)
            data_dir, setting.vocab_size, setting.split_target_tokens = prepared[key]
            settings[lever] = (setting, data_dir)
        for round_ in range(args.rounds):
            for lever in levers if round_ % 2 == 0 else levers[::-1]:
                with context.Pool(1) as pool:
                    rounds[lever].append(pool.apply(measure, settings[lever]))
        peaks = {}
        native = ("fp32", "bf16") if gpu or native_mixed_precision() == "bf16" else ("fp32",)
        for dtype in native + (("fp16",) if args.dtype == "fp16" else ()):
            with context.Pool(1) as pool:
                peaks[dtype] = pool.apply(gemm_peak, (argparse.Namespace(threads=args.threads, device=args.device,
                                                                         dtype=dtype),))
    results = {lever: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
               for lever, runs in rounds.items()}
    device = torch.cuda.get_device_name() if gpu else f"{cpu_name()} ({args.threads} threads)"
    size = "8192²" if gpu else "2048²"
    print(f"\nthe training step of {args.preset}, {args.dtype}, {args.shape}-shaped batches of {args.max_tokens} "
          f"tokens, on {device}; {size} GEMM peaks: "
          + ", ".join(f"{dtype} {peak / 1e12:,.1f}" for dtype, peak in peaks.items()) + " TFLOP/s\n")
    print(f"{'lever':<12}{'tokens/s':>10}{'min/epoch':>11}{'× eager':>9}{'first step s':>14}"
          + "".join(f"{'MFU ' + dtype:>10}" for dtype in peaks) + (f"{'GiB':>7}" if gpu else ""))
    for lever, result in results.items():
        flops = 6 * result["parameters"] * result["target_tokens_per_second"]
        result["mfu"] = {dtype: flops / peak for dtype, peak in peaks.items()}
        result["speedup"] = results["eager"]["epoch_minutes"] / result["epoch_minutes"]
        print(f"{lever:<12}{result['target_tokens_per_second']:>10,.0f}{result['epoch_minutes']:>11.2f}"
              f"{result['speedup']:>9.2f}{result['first_step_seconds']:>14.1f}"
              + "".join(f"{100 * mfu:>9.1f}%" for mfu in result["mfu"].values())
              + (f"{result['peak_memory_gib']:>7.1f}" if gpu else ""))
    report = {"device": device, "dtype": args.dtype, "preset": args.preset, "shape": args.shape,
              "max_tokens": args.max_tokens, "gemm_peak_flops": peaks, "results": results, "rounds": rounds}
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

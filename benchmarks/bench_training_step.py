"""The main job's training step under each speed lever, side by side in one run, against the step as it trains.

    python benchmarks/bench_training_step.py                                  # every lever, the main job's shape
    python benchmarks/bench_training_step.py --levers eager compile --dtype bf16 --preset medium

The step is `training.train`'s, for the main job's model on this machine unless `--preset` names another (`small`;
`medium` where bf16 runs on AMX): the model's own label-smoothed loss (§5.4), backward, fused Adam (§5.3), on real
Multi30k batches cut by the token sampler (§5.1). Levers, each against `eager` (the main job as it is):

- `compile`: `torch.compile(model, dynamic=True)`, the compile time (the first pass) reported apart;
- `tokens4096`, `tokens8192`: batches of 4,096 and 8,192 tokens instead of 2,048 (fewer, larger matrix products);
- `vocab4000`, `vocab3000`: a smaller shared BPE vocabulary (its sentences are longer: the speed-up is that of
  an epoch, the training split's target tokens in that vocabulary over target tokens/s);
- `threads1`: one thread instead of all.

Each variant runs in a fresh process, `--rounds` times in alternating order, each a pass over `--steps` batches
untimed then `--repeats` timed (the median counts); "× eager" is the ratio of minutes per epoch. MFU is
6 · parameters · target tokens/s over the FLOP/s of a 2048² matrix product in float32 and in bf16, both measured
in the same run (bf16 only where the CPU multiplies it natively, AVX-512 BF16 or AMX: emulated, it is two orders
of magnitude slower, and gives no peak). Writes JSON with `--output`.
"""

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.bench_data import cpu_name  # noqa: E402
from benchmarks.bench_vs_marian import build, gemm_peak, prepare_batches, timed  # noqa: E402
from training.train import main_job_model, native_mixed_precision  # noqa: E402

LEVERS = {  # name: what it changes against the main job's step
    "eager": {}, "compile": {"compile": True}, "tokens4096": {"max_tokens": 4096}, "tokens8192": {"max_tokens": 8192},
    "vocab4000": {"vocab_size": 4000}, "vocab3000": {"vocab_size": 3000}, "threads1": {"threads": 1},
}


def measure(args: argparse.Namespace, data_dir: str) -> dict:
    from training.recipe import paper_optimizer

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    batches = torch.load(Path(data_dir) / "batches.pt")
    model = build("ours", args.preset, args.vocab_size, "eager")
    model.train()
    optimizer, _ = paper_optimizer(model, warmup_steps=200, learning_rate=2e-3)
    forward = torch.compile(model, dynamic=True) if args.compile else model
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def step(batch):
        with autocast:
            loss = forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           labels=batch["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return int((batch["labels"] != -100).sum())

    started = time.perf_counter()
    step(batches[0])  # compiles, where compiling
    first_step = time.perf_counter() - started
    rate = timed(lambda: sum(step(batch) for batch in batches), args, lambda: None)
    return {"target_tokens_per_second": rate, "epoch_minutes": args.split_target_tokens / rate / 60,
            "first_step_seconds": first_step, "parameters": model.num_parameters()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levers", nargs="+", default=list(LEVERS), choices=LEVERS)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--preset", default=None, choices=["small", "medium"],
                        help="default: the main job's model with --dtype on this machine")
    parser.add_argument("--steps", type=int, default=30, help="batches of 2,048 tokens per pass (fewer when larger)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    args.preset = args.preset or main_job_model("bf16" if args.dtype == "bf16" else "no")
    levers = ["eager"] + [lever for lever in args.levers if lever != "eager"]

    context = multiprocessing.get_context("spawn")
    rounds = {lever: [] for lever in levers}
    with tempfile.TemporaryDirectory() as root:
        settings, prepared = {}, {}  # prepared: (vocabulary, batch size) -> its batches' folder and split size
        for lever in levers:  # each lever's batches: the training split cut by its own sampler and vocabulary
            setting = argparse.Namespace(**{**vars(args), "vocab_size": 6000, "max_tokens": 2048, "compile": False,
                                            **LEVERS[lever]})
            setting.steps = args.steps * 2048 // setting.max_tokens
            key = (setting.vocab_size, setting.max_tokens)
            if key not in prepared:
                data_dir = Path(root) / f"vocab{key[0]}-tokens{key[1]}"
                data_dir.mkdir()
                prepare_batches(setting, data_dir)
                prepared[key] = (str(data_dir), setting.vocab_size, setting.split_target_tokens)
            data_dir, setting.vocab_size, setting.split_target_tokens = prepared[key]
            settings[lever] = (setting, data_dir)
        for round_ in range(args.rounds):
            for lever in levers if round_ % 2 == 0 else levers[::-1]:
                with context.Pool(1) as pool:
                    rounds[lever].append(pool.apply(measure, settings[lever]))
        peaks = {}
        for dtype in ("fp32", "bf16") if native_mixed_precision() == "bf16" else ("fp32",):
            with context.Pool(1) as pool:
                peaks[dtype] = pool.apply(gemm_peak, (argparse.Namespace(threads=args.threads, device="cpu",
                                                                         dtype=dtype),))
    results = {lever: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
               for lever, runs in rounds.items()}
    cpu = f"{cpu_name()} ({args.threads} threads)"
    print(f"\nthe training step of {args.preset}, {args.dtype}, on {cpu}; 2048² GEMM peaks: "
          + ", ".join(f"{dtype} {peak / 1e9:,.0f}" for dtype, peak in peaks.items()) + " GFLOP/s\n")
    print(f"{'lever':<12}{'tokens/s':>10}{'min/epoch':>11}{'× eager':>9}{'first step s':>14}"
          f"{'MFU fp32':>10}{'MFU bf16':>10}")
    for lever, result in results.items():
        flops = 6 * result["parameters"] * result["target_tokens_per_second"]
        result["mfu"] = {dtype: flops / peak for dtype, peak in peaks.items()}
        result["speedup"] = results["eager"]["epoch_minutes"] / result["epoch_minutes"]
        print(f"{lever:<12}{result['target_tokens_per_second']:>10,.0f}{result['epoch_minutes']:>11.2f}"
              f"{result['speedup']:>9.2f}{result['first_step_seconds']:>14.1f}"
              + "".join(f"{100 * result['mfu'][dtype]:>9.1f}%" if dtype in peaks else f"{'—':>10}"
                        for dtype in ("fp32", "bf16")))
    report = {"device": cpu, "dtype": args.dtype, "preset": args.preset, "gemm_peak_flops": peaks, "results": results,
              "rounds": rounds}
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

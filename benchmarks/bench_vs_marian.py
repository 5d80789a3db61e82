"""This model against transformers' MarianMTModel of the identical shape, side by side in one run.

    python benchmarks/bench_vs_marian.py                                    # CPU, the main job's `small` size
    python benchmarks/bench_vs_marian.py --preset base --device cuda        # a GPU, the paper's base size
    python benchmarks/bench_vs_marian.py --dtype fp32 --d_model 256         # fp32, the small preset widened

Both models get the same real Multi30k batches (bucketed by length, `--max_tokens` per batch, as in training)
and the same loss, label-smoothed cross-entropy with ε = 0.1, each as its users compute it (this model's built-in
loss; `F.cross_entropy` on Marian's logits, as HF's label smoother does), and both use the same attention
implementation. Measured: training throughput (target tokens/s of forward, backward and Adam step), greedy and
beam-4 generation (sentences/s; both forced to emit exactly `--new_tokens` tokens, so both do the same work),
peak memory (GPU: allocated; CPU: resident set), and training MFU: 6 · parameters · target tokens/s over the
FLOP/s of a large matrix product in the same dtype, measured in the same run. With `--profile`, one more pass of
each measurement runs under `torch.profiler`, and its time is split into phases by operator: matrix products
(GEMM), attention (its batched products and softmax), softmax/loss (log-softmax, cross-entropy), dropout (the
mask draw), and for generation the machinery around the model (`generate`'s own work: the time outside the
model's forward calls). Each pass over the batches runs once untimed, then `--repeats` times timed, and the median
counts; each measurement runs in a fresh process so that its peak memory is its own, `--rounds` times per model
in alternating order (ours, Marian, Marian, ours, ...), and the median over the rounds is reported (a CPU VM's
speed drifts by ±15 % over minutes). Prints a table with the
ratios ours/Marian and writes it as JSON.

Marian counts its frozen sinusoid tables (2 × max positions × d_model) among its parameters; the trainable
weights of the two models are the same in number.
"""

import argparse
import json
import multiprocessing
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MEASUREMENTS = ("train", "greedy", "beam4")
PHASES = {  # a phase: the operators it names, and those run inside them (an autograd function, its backward)
    "softmax/loss": ("LabelSmoothedCrossEntropy", "cross_entropy", "log_softmax", "LogSoftmaxBackward", "nll_loss",
                     "NllLoss"),
    "dropout": ("dropout", "bernoulli", "rand_like", "uniform_"),
    "attention": ("aten::bmm", "aten::baddbmm", "aten::_softmax", "softmax_backward", "scaled_dot_product",
                  "attention_backward"),
    "GEMM": ("aten::mm", "aten::addmm", "aten::addmv"),
}


def build(kind: str, preset: str, vocab_size: int, attn: str, d_model: int | None = None):
    from transformers import MarianConfig, MarianMTModel

    from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration

    width = {"d_model": d_model, "encoder_ffn_dim": 4 * d_model, "decoder_ffn_dim": 4 * d_model} if d_model else {}
    ours = getattr(VanillaTransformerConfig, preset)(vocab_size=vocab_size, attn_implementation=attn, **width)
    if kind == "ours":
        return VanillaTransformerForConditionalGeneration(ours)
    marian = MarianConfig(
        vocab_size=vocab_size, decoder_vocab_size=vocab_size, d_model=ours.d_model, encoder_layers=ours.encoder_layers,
        decoder_layers=ours.decoder_layers, encoder_attention_heads=ours.encoder_attention_heads,
        decoder_attention_heads=ours.decoder_attention_heads, encoder_ffn_dim=ours.encoder_ffn_dim,
        decoder_ffn_dim=ours.decoder_ffn_dim, activation_function="relu", dropout=ours.dropout,
        attention_dropout=0.0, activation_dropout=0.0, max_position_embeddings=ours.max_position_embeddings,
        scale_embedding=True, share_encoder_decoder_embeddings=True, tie_word_embeddings=True, pad_token_id=0,
        eos_token_id=2, forced_eos_token_id=None, decoder_start_token_id=1, attn_implementation=attn,
    )
    return MarianMTModel(marian)


def timed(run_pass, args, synchronize) -> float:
    """Items per second of `run_pass` (which returns its item count): the median of `--repeats` timed passes after
    one untimed pass, so that every batch shape has been seen (kernel choice and loading are not measured)."""
    run_pass()
    rates = []
    for _ in range(args.repeats):
        synchronize()
        start = time.perf_counter()
        items = run_pass()
        synchronize()
        rates.append(items / (time.perf_counter() - start))
    return statistics.median(rates)


def measure(kind: str, what: str, args: argparse.Namespace, data_dir: str) -> dict:
    from training.recipe import label_smoothed_loss

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batches = torch.load(Path(data_dir) / "batches.pt")
    model = build(kind, args.preset, args.vocab_size, args.attn, args.d_model).to(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    if what == "train":
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)

        def step(batch):
            batch = {k: v.to(device) for k, v in batch.items()}
            inputs = {name: batch[name] for name in ("input_ids", "attention_mask", "decoder_input_ids")}
            with autocast:
                logits = model(**inputs).logits
                if kind == "ours":  # §5.4's label-smoothed loss, as training.train computes it
                    loss = label_smoothed_loss(logits, batch["labels"], 0.1) / (batch["labels"] != -100).sum()
            if kind != "ours":  # ε = 0.1 on Marian's logits, as HF's LabelSmoother adds it
                loss = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=-100,
                                       label_smoothing=0.1)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return int((batch["labels"] != -100).sum())

        run_pass = lambda: sum(step(batch) for batch in batches)  # noqa: E731
        result = {"target_tokens_per_second": timed(run_pass, args, synchronize)}
    else:
        model.eval()
        beams = 1 if what == "greedy" else 4
        sources = [b for b in batches[: args.generate_batches]]

        def generate(batch):
            with torch.inference_mode(), autocast:
                model.generate(input_ids=batch["input_ids"].to(device),
                               attention_mask=batch["attention_mask"].to(device),
                               num_beams=beams, min_new_tokens=args.new_tokens, max_new_tokens=args.new_tokens,
                               do_sample=False, **({"length_penalty": 0.6} if beams > 1 else {}))
            return batch["input_ids"].shape[0]

        run_pass = lambda: sum(generate(batch) for batch in sources)  # noqa: E731
        result = {"sentences_per_second": timed(run_pass, args, synchronize)}
    if device.type == "cuda":
        result["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["peak_memory_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    result["parameters"] = model.num_parameters()
    if args.profile:  # after the peak memory is read: the profiler's records take memory of their own
        result["profile_ms"] = profile(run_pass, model, device, synchronize)
    return result


def profile(run_pass, model, device: torch.device, synchronize) -> dict:
    """Milliseconds of one pass per phase, which add up to the pass's wall time: the operators of each of `PHASES`
    (self time under `torch.profiler`; GPU kernel time on a GPU); while generating, "generation machinery", the time
    outside the model's and its encoder's forward calls (`generate`'s own work: search, logits processors, cache
    reordering), and "other", the rest (normalisation, residual adds, casts, the optimizer, Python)."""
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    forwards, in_forward = [], [0.0]

    def enter(*_):
        forwards.append((record_function("model forward").__enter__(), time.perf_counter()))

    def leave(*_):
        scope, started = forwards.pop()
        scope.__exit__(None, None, None)
        if not forwards:  # the outermost call: the encoder runs inside the model's forward when training
            in_forward[0] += time.perf_counter() - started

    hooks = [hook for module in (model, model.get_encoder())  # `generate` runs the encoder on its own
             for hook in (module.register_forward_pre_hook(enter), module.register_forward_hook(leave))]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as profiler:
        synchronize()
        wall = time.perf_counter()
        run_pass()
        synchronize()
        wall = time.perf_counter() - wall
    for hook in hooks:
        hook.remove()
    generating = not model.training
    attribute = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    phases = dict.fromkeys(PHASES, 0.0)
    for event in profiler.events():
        names, parent = [], event
        while parent is not None:
            names.append(parent.name)
            parent = parent.cpu_parent
        phase = next((phase for phase, keys in PHASES.items() if any(k in n for n in names for k in keys)), None)
        if phase is not None and (not generating or "model forward" in names):
            phases[phase] += getattr(event, attribute) / 1e3
    if generating:
        phases["generation machinery"] = (wall - in_forward[0]) * 1e3
    phases["other"] = wall * 1e3 - sum(phases.values())
    return phases


def gemm_peak(args) -> float:
    """FLOP/s of the best of 5 square matrix products in the benchmark's dtype: the peak that MFU is measured
    against, taken in the same run (2048² on a CPU, 8192² on a GPU)."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = 2048 if device.type == "cpu" else 8192
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best = float("inf")
    for _ in range(6):  # the first is a warm-up
        synchronize()
        started = time.perf_counter()
        a @ b
        synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def prepare_batches(args, data_dir: Path) -> None:
    from hf_vanilla_transformer import train_tokenizer
    from training.data import lengths, load_translation_dataset, tokenize

    splits = load_translation_dataset("de", "en")
    pairs = splits["train"]["translation"]
    tokenizer = train_tokenizer([p["de"] for p in pairs] + [p["en"] for p in pairs], vocab_size=args.vocab_size)
    data = tokenize(splits["train"], tokenizer, "de", "en", max_length=256)
    save_batches(data.remove_columns("length"), lengths(data), tokenizer, args, data_dir)
    args.vocab_size = len(tokenizer)
    args.split_target_tokens = sum(map(len, data["labels"]))  # an epoch's, in this vocabulary


def save_batches(rows, lengths, tokenizer, args, data_dir: Path) -> None:
    """batches.pt: the first `args.steps` batches the token sampler cuts from `rows` (pairs of ids, of `lengths`),
    collated with their decoder inputs (the labels shifted right, §3.1)."""
    from transformers import DataCollatorForSeq2Seq

    from hf_vanilla_transformer.modeling_vanilla_transformer import shift_tokens_right
    from training.data import TokenBatchSampler

    collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    batches = []
    for indices in list(TokenBatchSampler(lengths, args.max_tokens, seed=0))[: args.steps]:
        batch = dict(collate([rows[i] for i in indices]))
        decoder_input_ids = shift_tokens_right(batch["labels"], tokenizer.pad_token_id, tokenizer.bos_token_id)
        batches.append({**batch, "decoder_input_ids": decoder_input_ids})
    torch.save(batches, data_dir / "batches.pt")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "medium", "base", "big"])
    parser.add_argument("--d_model", type=int, default=None, help="widen or narrow the preset (d_ff = 4 d_model)")
    parser.add_argument("--vocab_size", type=int, default=6000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--attn", default=None, help="default: eager on CPU, sdpa on GPU (the training defaults)")
    parser.add_argument("--max_tokens", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=30, help="training batches")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per process")
    parser.add_argument("--rounds", type=int, default=2,
                        help="fresh processes per model and measurement, in alternating order; the median counts")
    parser.add_argument("--generate_batches", type=int, default=4)
    parser.add_argument("--new_tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--profile", action="store_true", help="split one more pass of each measurement into phases")
    parser.add_argument("--output", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    args.attn = args.attn or ("eager" if args.device == "cpu" else "sdpa")

    context = multiprocessing.get_context("spawn")
    results = {"ours": {}, "marian": {}}
    with tempfile.TemporaryDirectory() as data_dir:
        prepare_batches(args, Path(data_dir))
        for what in MEASUREMENTS:
            rounds = {"ours": [], "marian": []}
            for round_ in range(args.rounds):  # ours, Marian, Marian, ours, ...: a slow spell hits both alike
                for kind in ("ours", "marian") if round_ % 2 == 0 else ("marian", "ours"):
                    with context.Pool(1) as pool:  # the profile once, in the first round
                        rounds[kind].append(pool.apply(measure, (kind, what, argparse.Namespace(
                            **{**vars(args), "profile": args.profile and round_ == 0}), data_dir)))
            for kind, runs in rounds.items():
                results[kind][what] = {**runs[0], **{key: statistics.median(run[key] for run in runs)
                                                     for key in runs[0] if key not in ("profile_ms", "parameters")}}
        with context.Pool(1) as pool:
            peak = pool.apply(gemm_peak, (args,))
    # MFU: 6 · parameters · target tokens per second over the measured peak (both models train the same weights;
    # Marian's count also holds its frozen sinusoid tables, so ours is used for both).
    for kind in ("ours", "marian"):
        flops = 6 * results["ours"]["train"]["parameters"] * results[kind]["train"]["target_tokens_per_second"]
        results[kind]["train"]["mfu"] = flops / peak

    device = (torch.cuda.get_device_name() if args.device.startswith("cuda")
              else f"{platform.processor() or 'CPU'} ({args.threads} threads)")
    size = f"{args.preset} preset" + (f" at d_model {args.d_model}" if args.d_model else "")
    print(f"\n{size}, {results['ours']['train']['parameters']:,} parameters (Marian "
          f"{results['marian']['train']['parameters']:,}), {args.dtype}, attention {args.attn}, on {device}\n")
    print(f"{'measurement':<34}{'ours':>12}{'Marian':>12}{'ours/Marian':>13}")
    rows = [("train", "target_tokens_per_second", "training target tokens/s"),
            ("greedy", "sentences_per_second", "greedy sentences/s"),
            ("beam4", "sentences_per_second", "beam-4 sentences/s")]
    rows += [(what, "peak_memory_mib", f"{what} peak memory MiB") for what in MEASUREMENTS]
    rows.append(("train", "mfu", f"training MFU (peak {peak / 1e9:,.0f} GFLOP/s)"))
    table = []
    for what, key, label in rows:
        ours, marian = results["ours"][what][key], results["marian"][what][key]
        table.append({"measurement": label, "ours": ours, "marian": marian, "ratio": ours / marian})
        print(f"{label:<34}{ours:>12.{3 if key == 'mfu' else 1}f}{marian:>12.{3 if key == 'mfu' else 1}f}"
              f"{ours / marian:>13.2f}")
    if args.profile:
        print(f"\n{'profile of one pass, ms (share)':<34}{'ours':>16}{'Marian':>16}")
        for what in MEASUREMENTS:
            ours, marian = results["ours"][what]["profile_ms"], results["marian"][what]["profile_ms"]
            for phase in ours:
                print(f"{what + ' ' + phase:<34}" + "".join(
                    f"{p[phase]:>9.0f} ({100 * p[phase] / sum(p.values()):>2.0f}%)" for p in (ours, marian)))
    report = {"preset": args.preset, "d_model": args.d_model, "device": device, "dtype": args.dtype,
              "attention": args.attn,
              "max_tokens": args.max_tokens, "gemm_peak_flops": peak, "results": results, "table": table}
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

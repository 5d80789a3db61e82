"""Data preparation at WMT size: what a run spends before its first step, by corpus size and process count.

    python benchmarks/bench_data.py                                  # 200k and 1M pairs, 1 and 2 processes
    python benchmarks/bench_data.py --pairs 4500000 --processes 1    # WMT14 en-de's size

It writes its own WMT-shaped corpus (each line joins 1 to 3 random Multi30k pairs: ~25 words a side), then, per
size and process count, runs the training command (`--vocab_size 37000 --config_name tiny --max_steps 2`) three
times: cold (an empty `datasets` cache), a rerun into a fresh output folder (the cache is warm, the tokenizer is
learned again), and a resume of the cold run (`--resume_from_checkpoint latest`). Reported: the run's own phase
minutes (reading into Arrow, learning the vocabulary, tokenizing, setup) and their sum, the time to the first step;
the peak resident memory of the largest process (`ru_maxrss`: it counts the pages of the memory-mapped Arrow files
the process touched, which belong to the page cache, are shared with the other processes and are dropped first
under memory pressure) and, sampled every 0.2 s, its peak private memory (`RssAnon`: without those pages); and the
tokenizing throughput against `tokenizers`' own `encode_batch` of both sides of 200k pairs of the same corpus, on
the same cores, with the tokenizer the run learned. Several processes go through `accelerate launch --multi_gpu`
over gloo (`ACCELERATE_USE_CPU=true`), as on a machine without GPUs.
"""

import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MEASURE = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")
DATA_PHASES = ("reading_data", "learning_vocabulary", "tokenizing", "setup")


def make_corpus(prefix: Path, pairs: int, seed: int = 0) -> None:
    """PREFIX.de and PREFIX.en: each line 1 to 3 random Multi30k training pairs joined by spaces."""
    if prefix.with_suffix(".en").is_file():
        return
    sides = {lang: gzip.open(ROOT / "data" / "multi30k" / f"train.{lang}.gz", "rt", encoding="utf-8").read()
             .split("\n")[:29000] for lang in ("de", "en")}
    rng = np.random.default_rng(seed)
    files = {lang: open(f"{prefix}.{lang}.partial", "w", encoding="utf-8") for lang in sides}
    for start in range(0, pairs, 100_000):
        count = min(100_000, pairs - start)
        joined, rows = rng.integers(1, 4, count), rng.integers(0, 29000, (count, 3))
        for lang, file in files.items():
            file.write("".join(" ".join(sides[lang][i] for i in row[:n]) + "\n" for row, n in zip(rows, joined)))
    for lang, file in files.items():
        file.close()
        os.replace(f"{prefix}.{lang}.partial", f"{prefix}.{lang}")


def run_training(corpus: Path, output: Path, processes: int, cache: Path, extra: list[str]) -> dict:
    launcher = [sys.executable, "-m", "training.train"] if processes == 1 else [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "training.train"]
    command = [*launcher, "--train_file", str(corpus), "--source_lang", "de", "--target_lang", "en",
               "--vocab_size", "37000", "--config_name", "tiny", "--max_steps", "2", "--checkpointing_steps", "1",
               "--max_tokens", "1024", "--warmup_steps", "1", "--output_dir", str(output), "--no-with_tracking",
               *extra]
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}
    started, private = time.time(), 0
    with tempfile.TemporaryFile("w+") as log:
        launched = subprocess.Popen([sys.executable, "-c", MEASURE, *command], cwd=ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, text=True)
        while launched.poll() is None:  # the largest private (anonymous) memory of any process of the run
            private = max([private, *map(anonymous_kb, process_tree(launched.pid))])
            time.sleep(0.2)
        log.seek(0)
        text = log.read()
    if launched.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{text[-3000:]}")
    results = json.loads((output / "model" / "training_results.json").read_text())
    phases = results["phase_minutes"]
    return {"wall_minutes": round((time.time() - started) / 60, 2),
            **{name: phases.get(name, 0.0) for name in DATA_PHASES},
            "to_first_step_minutes": round(sum(phases.get(name, 0.0) for name in DATA_PHASES), 2),
            "peak_rss_gb": round(int(text.strip().splitlines()[-1]) / 2**20, 2),
            "peak_private_gb": round(private / 2**20, 2)}


def process_tree(pid: int) -> list[int]:
    import psutil  # installed with accelerate

    try:
        return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def anonymous_kb(pid: int) -> int:
    """A process's resident anonymous memory (`RssAnon`: its own, not the page cache of mapped files), in kB."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("RssAnon:")), 0)


def raw_encode_rate(corpus: Path, tokenizer_folder: Path, pairs: int = 200_000) -> float:
    """Pairs/s of `tokenizers`' `encode_batch` over both sides of the first `pairs` pairs, 10k at a time."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_folder / "tokenizer.json"))
    sides = [open(f"{corpus}.{lang}", encoding="utf-8").read().split("\n")[:pairs] for lang in ("de", "en")]
    started = time.time()
    for side in sides:
        for start in range(0, len(side), 10_000):
            tokenizer.encode_batch(side[start : start + 10_000])
    return len(sides[0]) / (time.time() - started)


def cpu_name() -> str:
    """The CPU's model name and the matrix instruction sets it has (AVX-512, AMX)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    extensions = [name for name in ("avx512f", "avx512_bf16", "amx_bf16") if name in flags]
    return f"{model} ({', '.join(extensions) or 'AVX2 only' if 'avx2' in flags else 'no AVX2'})"


def check_sampler(pairs: int, max_tokens: int = 25_000, replicas: int = 2, group: int = 2) -> dict:
    """§5.1's token batches at this size, on lengths like the corpus's: over `replicas` processes × `group`
    micro-batches an epoch holds every pair exactly once, and a resumed epoch is the rest of the same epoch."""
    sys.path.insert(0, str(ROOT))
    from training.data import TokenBatchSampler

    lengths = np.random.default_rng(0).integers(5, 150, pairs)
    started = time.time()
    samplers = [TokenBatchSampler(lengths, max_tokens, seed=1, num_replicas=replicas, rank=rank, group=group)
                for rank in range(replicas)]
    epoch = [list(sampler) for sampler in samplers]
    seconds = (time.time() - started) / replicas
    seen = np.sort(np.concatenate([np.concatenate(batches) for batches in epoch]))
    samplers[0].set_epoch(0, start=len(epoch[0]) // 2)
    return {"pairs": pairs, "batches_per_process": len(epoch[0]), "seconds_per_epoch_and_process": round(seconds, 1),
            "each_pair_once": bool(np.array_equal(seen, np.arange(pairs))),
            "resumed_epoch_is_the_rest": list(samplers[0]) == epoch[0][len(epoch[0]) // 2 :]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "bench_data"))
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "data.json"))
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for pairs in args.pairs:
        corpus = work / f"wmt-shaped-{pairs}"
        make_corpus(corpus, pairs)
        for processes in args.processes:
            name = f"{pairs}-{processes}"
            cache, output = work / f"cache-{name}", work / f"run-{name}"
            subprocess.run(["rm", "-rf", str(cache), str(output), str(output) + "-rerun"], check=True)
            cold = run_training(corpus, output, processes, cache, [])
            rerun = run_training(corpus, Path(str(output) + "-rerun"), processes, cache, [])
            resume = run_training(corpus, output, processes, cache, ["--resume_from_checkpoint", "latest",
                                                                     "--max_steps", "3"])
            raw = raw_encode_rate(corpus, output / "tokenizer")
            row = {"pairs": pairs, "processes": processes, "cold": cold, "rerun": rerun, "resume": resume,
                   "tokenizing_pairs_per_s": round(pairs / (cold["tokenizing"] * 60)),
                   "raw_encode_batch_pairs_per_s": round(raw)}
            row["tokenizing_vs_raw"] = round(row["tokenizing_pairs_per_s"] / raw, 2)
            row["sampler"] = check_sampler(pairs)
            rows.append(row)
            print(json.dumps(row), flush=True)
            subprocess.run(["rm", "-rf", str(cache), str(output), str(output) + "-rerun"], check=True)
    print("\n| pairs | processes | cold: reading, vocabulary, tokenizing, setup (min) | to step 1: cold, rerun, "
          "resume (min) | peak RSS / private, cold (GB) | tokenizing pairs/s (× raw encode_batch) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        cold = row["cold"]
        print(f"| {row['pairs']:,} | {row['processes']} | {cold['reading_data']}, {cold['learning_vocabulary']}, "
              f"{cold['tokenizing']}, {cold['setup']} | {cold['to_first_step_minutes']}, "
              f"{row['rerun']['to_first_step_minutes']}, {row['resume']['to_first_step_minutes']} | "
              f"{cold['peak_rss_gb']} / {cold['peak_private_gb']} | {row['tokenizing_pairs_per_s']:,} "
              f"({row['tokenizing_vs_raw']}×) |")
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()}
    output = Path(args.output)
    earlier = json.loads(output.read_text()) if output.is_file() else {"runs": []}
    earlier["runs"].append({"machine": machine, "rows": rows})
    output.write_text(json.dumps(earlier, indent=2) + "\n")


if __name__ == "__main__":
    main()

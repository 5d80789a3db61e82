#!/usr/bin/env bash
# The GPU check: one command, about 8 minutes on one GPU, from the repository root in an environment with the
# project and a CUDA build of torch installed (`pip install -e ".[dev]"`).
#
#     bash benchmarks/gpu_check.sh [OUTPUT_FOLDER]        # default: benchmarks/results/gpu-check
#
# 1. tests/test_gpu.py, failing (not skipping) where torch sees no GPU;
# 2. the training step of `base` and `big` on WMT14-shaped batches of 25,000 tokens (§5.1's step on one GPU), bf16,
#    eager and compiled: tokens/s, MFU against this GPU's bf16 peak measured in the same run, peak memory;
# 3. short real runs of the training command (`base`, Multi30k, 25,000 tokens a step, validation and saving
#    included): with the GPU defaults (two loader workers, pinned memory), with --dataloader_num_workers 0, and with
#    --torch_compile; their tokens/s from the run's own log.
# A table last, and everything in OUTPUT_FOLDER/gpu_check.json. Any failure stops the check with its status.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/gpu-check}
mkdir -p "$OUT"
STEPS=${GPU_CHECK_RUN_STEPS:-150}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python - <<'EOF'
import torch
assert torch.cuda.is_available(), "torch sees no CUDA GPU: install a CUDA build of torch"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}, bf16 native: "
      f"{torch.cuda.is_bf16_supported(including_emulation=False)}")
EOF

echo "=== 1. tests/test_gpu.py"
REQUIRE_GPU=1 python -m pytest tests/test_gpu.py -p no:randomly -n 0 -q

echo "=== 2. the training step at 25,000 tokens"
for preset in base big; do
    python benchmarks/bench_training_step.py --device cuda --preset "$preset" --dtype bf16 --shape wmt \
        --max_tokens 25000 --levers eager compile --steps 6 --repeats 2 --rounds 1 --output "$OUT/step-$preset.json"
done

echo "=== 3. short training runs ($STEPS steps of 25,000 tokens, base, Multi30k)"
run() {  # $1: the run's name; the rest: its flags
    local name=$1
    shift
    python -m training.train --config_name base --tokens_per_step 25000 --max_steps "$STEPS" --logging_steps 10 \
        --eval_steps "$STEPS" --checkpointing_steps "$STEPS" --eval_bleu_samples 200 --eval_split validation \
        --max_eval_samples 300 --no-with_tracking --output_dir "$OUT/run-$name" --overwrite_output_dir "$@"
}
run defaults
run workers0 --dataloader_num_workers 0
run compile --torch_compile

python - "$OUT" <<'EOF'
import json, statistics, sys
from pathlib import Path

out = Path(sys.argv[1])
report = {"steps": {}, "runs": {}}
print("\nthe training step, WMT14-shaped batches of 25,000 tokens, bf16:")
print(f"{'model':<6}{'lever':<9}{'tokens/s':>10}{'MFU bf16':>10}{'GiB':>7}{'first step s':>14}")
for preset in ("base", "big"):
    step = json.loads((out / f"step-{preset}.json").read_text())
    report["steps"][preset] = step
    for lever, result in step["results"].items():
        print(f"{preset:<6}{lever:<9}{result['target_tokens_per_second']:>10,.0f}{100 * result['mfu']['bf16']:>9.1f}%"
              f"{result['peak_memory_gib']:>7.1f}{result['first_step_seconds']:>14.1f}")
peak = report["steps"]["base"]["gemm_peak_flops"]["bf16"]
print(f"\n{report['steps']['base']['device']}: bf16 peak {peak / 1e12:.0f} TFLOP/s (8192² matrix product)")
print(f"\nshort runs of base (25,000 tokens a step):\n{'run':<10}{'tokens/s':>10}{'MFU bf16':>10}{'minutes':>9}{'BLEU':>7}")
for name in ("defaults", "workers0", "compile"):
    folder = out / f"run-{name}"
    log = [json.loads(line) for line in (folder / "logs" / "log.jsonl").read_text().splitlines()]
    rates = [r["target_tokens_per_second"] for r in log if "target_tokens_per_second" in r][1:]  # after warm-up
    results = json.loads((folder / "model" / "training_results.json").read_text())
    rate = statistics.median(rates)
    mfu = 6 * results["parameters"] * rate / peak
    report["runs"][name] = {"target_tokens_per_second": rate, "mfu_bf16": mfu, "train_minutes": results["train_minutes"],
                            "bleu": results.get("bleu"), "phase_minutes": results["phase_minutes"]}
    print(f"{name:<10}{rate:>10,.0f}{100 * mfu:>9.1f}%{results['train_minutes']:>9.1f}{results.get('bleu', 0):>7.2f}")
(out / "gpu_check.json").write_text(json.dumps(report, indent=2))
print(f"\nwritten: {out / 'gpu_check.json'}")
EOF

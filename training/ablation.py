"""The paper's Table 3 as a runnable experiment: variants of a base model, trained on the same data with the same
seed and step budget, compared by parameters, validation perplexity, test BLEU and wall time.

    python -m training.ablation --output_dir outputs/ablation                      # every variant
    python -m training.ablation --variants base A-heads1 E-learned --max_steps 300
    python -m training.ablation --length_split 14 --output_dir outputs/length      # the position variants

The base is the `small` preset (N=3, d_model=128, d_ff=512, h=4, d_k=32, P_drop=0.1, ε_ls=0.1, sinusoids, post-LN);
rows A-E change what Table 3's rows change, the last rows swap in pre-LN, RoPE and ALiBi. Each variant is one
`training.train` run in OUTPUT/VARIANT, in its own process (`--launcher "accelerate launch --num_processes 8"` spreads
it over GPUs); arguments after `--` go to every run. A finished variant is not run again and an interrupted one
resumes from its last checkpoint, so rerunning the command completes an interrupted ablation.

The data is the embedded Multi30k de→en. `--length_split N` trains on the pairs whose source has at most N tokens
and reports BLEU on the test sentences by source length, the longer ones never seen in training: where sinusoidal,
learned, rotary and ALiBi positions differ.
OUTPUT gets `table.md`, `results.json` and `ablation.png` (with `--length_split`: `length_table.md`, `length.png`).
"""

import argparse
import json
import logging
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from hf_vanilla_transformer import VanillaTransformerConfig
from hf_vanilla_transformer.metrics import corpus_bleu, load_bleu

from .data import load_translation_dataset

logger = logging.getLogger("training.ablation")


@dataclass(frozen=True)
class Variant:
    row: str  # Table 3's row, or "" for what the paper did not vary
    description: str
    config: dict = field(default_factory=dict)  # changes to the base model's configuration
    dropout: float | None = None
    label_smoothing: float | None = None


VARIANTS = {
    "base": Variant("base", "the small preset"),
    "A-heads1": Variant("A", "1 head, d_k = d_v = 128", {"encoder_attention_heads": 1, "decoder_attention_heads": 1}),
    "A-heads2": Variant("A", "2 heads, d_k = d_v = 64", {"encoder_attention_heads": 2, "decoder_attention_heads": 2}),
    "A-heads8": Variant("A", "8 heads, d_k = d_v = 16", {"encoder_attention_heads": 8, "decoder_attention_heads": 8}),
    "B-dk16": Variant("B", "smaller keys, d_k = 16", {"attention_key_dim": 16}),
    "C-layers2": Variant("C", "N = 2", {"encoder_layers": 2, "decoder_layers": 2}),
    "C-layers4": Variant("C", "N = 4", {"encoder_layers": 4, "decoder_layers": 4}),
    "C-dmodel64": Variant("C", "d_model = 64, d_ff = 256",
                          {"d_model": 64, "encoder_ffn_dim": 256, "decoder_ffn_dim": 256}),
    "C-dmodel256": Variant("C", "d_model = 256, d_ff = 1024",
                           {"d_model": 256, "encoder_ffn_dim": 1024, "decoder_ffn_dim": 1024}),
    "D-dropout0": Variant("D", "P_drop = 0", dropout=0.0),
    "D-smoothing0": Variant("D", "ε_ls = 0", label_smoothing=0.0),
    "E-learned": Variant("E", "learned positional embeddings", {"position_embedding_type": "learned"}),
    "pre-LN": Variant("", "LayerNorm before each sub-layer", {"normalize_before": True}),
    "rope": Variant("", "rotary positions (RoPE)", {"position_embedding_type": "rope"}),
    "alibi": Variant("", "ALiBi attention biases", {"position_embedding_type": "alibi"}),
}
POSITION_VARIANTS = ("base", "E-learned", "rope", "alibi")
# The columns of Table 3: (heading, how to read it from a variant's configuration).
COLUMNS = (("N", lambda c: c.encoder_layers), ("d_model", lambda c: c.d_model), ("d_ff", lambda c: c.encoder_ffn_dim),
           ("h", lambda c: c.encoder_attention_heads), ("d_k", lambda c: c.key_dim(c.encoder_attention_heads)),
           ("P_drop", lambda c: c.dropout), ("ε_ls", lambda c: c.label_smoothing),
           ("positions", lambda c: c.position_embedding_type),
           ("norm", lambda c: "pre-LN" if c.normalize_before else "post-LN"))


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, metavar="VARIANT",
                        help=f"default: all ({', '.join(VARIANTS)}); "
                        f"with --length_split: {', '.join(POSITION_VARIANTS)}")
    parser.add_argument("--output_dir", default="outputs/ablation")
    parser.add_argument("--max_steps", type=int, default=500, help="the training budget of every variant, in steps")
    parser.add_argument("--length_split", type=int, default=None, metavar="N",
                        help="train on sources of at most N tokens, report BLEU by source length")
    parser.add_argument("--launcher", default=f"{shlex.quote(sys.executable)} -m",
                        help='what runs `training.train`, e.g. "accelerate launch --num_processes 8 -m"')
    args = parser.parse_args(argv)
    args.variants = args.variants or list(POSITION_VARIANTS if args.length_split else VARIANTS)
    return args, train_args


def train_command(args, variant: Variant, run_dir: Path, train_args: list[str]) -> list[str]:
    """One `training.train` run: the shared budget, checkpoints averaged over its last fifth, no greedy BLEU
    during training (the validation loss is still logged each epoch)."""
    command = shlex.split(args.launcher) + [f"{__package__}.train", "--output_dir", str(run_dir),
                                            "--config_name", "small", "--max_steps", str(args.max_steps),
                                            "--checkpointing_steps", str(max(1, args.max_steps // 25)),
                                            "--average_checkpoints", "5", "--eval_bleu_samples", "0",
                                            "--no-with_tracking"]
    if variant.config:
        command += ["--config_overrides", ",".join(f"{k}={v}" for k, v in variant.config.items())]
    if variant.dropout is not None:
        command += ["--dropout", str(variant.dropout)]
    if variant.label_smoothing is not None:
        command += ["--label_smoothing", str(variant.label_smoothing)]
    if args.length_split:
        command += ["--max_train_source_tokens", str(args.length_split)]
    if (run_dir / "checkpoints").is_dir():
        command += ["--resume_from_checkpoint", "latest"]
    elif run_dir.is_dir():  # stopped before its first checkpoint: nothing to keep
        command += ["--overwrite_output_dir"]
    return command + train_args


def run_variant(args, name: str, train_args: list[str]) -> dict:
    """Train `name` unless it has finished before; its row of the results."""
    run_dir = Path(args.output_dir) / name
    summary = run_dir / "ablation.json"
    if summary.is_file():
        logger.info("%s: finished before (%s)", name, summary)
        return json.loads(summary.read_text())
    command = train_command(args, VARIANTS[name], run_dir, train_args)
    logger.info("%s: %s", name, shlex.join(command))
    started = time.time()
    if subprocess.run(command).returncode != 0:
        raise SystemExit(f"The run of variant {name!r} failed (command above); rerun to resume it")
    minutes = (time.time() - started) / 60
    results = json.loads((run_dir / "model" / "training_results.json").read_text())
    config = VanillaTransformerConfig.from_pretrained(run_dir / "model")
    config.label_smoothing = results["label_smoothing"]  # a choice of training: the run's results record it
    row = {"variant": name, "row": VARIANTS[name].row, "config": {heading: get(config) for heading, get in COLUMNS},
           "parameters": AutoModelForSeq2SeqLM.from_config(config).num_parameters(),
           "validation_perplexity": results.get("validation_perplexity"),
           "bleu": results.get("bleu"), "minutes": round(minutes, 1), "train_minutes": results["train_minutes"],
           "steps": results["train_steps"]}
    if args.length_split:
        row["bleu_by_source_length"] = bleu_by_source_length(run_dir, args.length_split)
    summary.write_text(json.dumps(row, indent=2) + "\n")
    return row


def length_buckets(n: int) -> list[tuple[int, int | None]]:
    """Source lengths (tokens) seen in training, then three unseen ranges of 5 tokens and the rest."""
    return [(1, n), (n + 1, n + 5), (n + 6, n + 10), (n + 11, n + 15), (n + 16, None)]


def bucket_label(low: int, high: int | None) -> str:
    return f"{low}–{high}" if high is not None else f"≥ {low}"


def bleu_by_source_length(run_dir: Path, n: int) -> dict:
    """BLEU of the run's test translations (`translations.txt`) per source-length bucket: {label: [BLEU, count]}."""
    hypotheses = (run_dir / "translations.txt").read_text(encoding="utf-8").split("\n")[:-1]
    # The run translated the first pairs of the test split (all of them unless --max_eval_samples).
    test = load_translation_dataset("de", "en")["test"]["translation"][: len(hypotheses)]
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    lengths = [len(ids) for ids in tokenizer([pair["de"] for pair in test])["input_ids"]]
    metric, table = load_bleu(), {}
    for low, high in length_buckets(n):
        chosen = [i for i, length in enumerate(lengths) if low <= length and (high is None or length <= high)]
        if chosen:
            bleu = corpus_bleu([hypotheses[i] for i in chosen], [test[i]["en"] for i in chosen], metric)["score"]
            table[bucket_label(low, high)] = [round(bleu, 2), len(chosen)]
    return table


def markdown_table(rows: list[dict]) -> str:
    """Table 3's layout: the base row in full, the other rows only where they differ from it."""
    base = next((row["config"] for row in rows if row["variant"] == "base"), {})
    header = ["", "variant", *rows[0]["config"], "params", "PPL (dev)", "BLEU (test)", "minutes"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [str(v) if row["variant"] == "base" or v != base.get(k) else "" for k, v in row["config"].items()]
        lines.append("| " + " | ".join([row["row"], row["variant"], *cells, f"{row['parameters'] / 1e6:.2f}M",
                                         f"{row['validation_perplexity']:.2f}", f"{row['bleu']:.2f}",
                                         f"{row['minutes']:.1f}"]) + " |")
    return "\n".join(lines) + "\n"


def length_table(rows: list[dict]) -> str:
    labels = list(rows[0]["bleu_by_source_length"])
    counts = [rows[0]["bleu_by_source_length"][label][1] for label in labels]
    lines = ["| variant | " + " | ".join(f"{label} tokens ({count})" for label, count in zip(labels, counts)) + " |",
             "| --- |" + " --- |" * len(labels)]
    for row in rows:
        cells = [f"{row['bleu_by_source_length'][label][0]:.2f}" for label in labels]
        lines.append(f"| {row['variant']} ({row['config']['positions']}) | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], output: Path, length_split: int | None) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'hf-vanilla-transformer[plot]'): no figures")
        return
    names = [row["variant"] for row in rows]
    figure, axes = plt.subplots(1, 2, figsize=(10, 0.35 * len(rows) + 1.5), sharey=True)
    for axis, key, label in ((axes[0], "bleu", "test BLEU"), (axes[1], "validation_perplexity", "validation PPL")):
        axis.barh(names, [row[key] for row in rows], color=["tab:gray" if n == "base" else "tab:blue" for n in names])
        if "base" in names:
            axis.axvline(rows[names.index("base")][key], color="black", linestyle="--", linewidth=1)
        axis.set_xlabel(label)
    axes[0].invert_yaxis()
    figure.tight_layout()
    figure.savefig(output / "ablation.png", dpi=120)
    plt.close(figure)
    if length_split:
        figure, axis = plt.subplots(figsize=(7, 4))
        for row in rows:
            buckets = row["bleu_by_source_length"]
            axis.plot(list(buckets), [bleu for bleu, _ in buckets.values()], marker="o",
                      label=row["config"]["positions"])
        axis.axvline(0.5, color="black", linestyle=":", linewidth=1)
        axis.set_xlabel(f"source length (tokens); trained on ≤ {length_split}")
        axis.set_ylabel("test BLEU")
        axis.legend()
        figure.tight_layout()
        figure.savefig(output / "length.png", dpi=120)
        plt.close(figure)


def main(argv=None) -> list[dict]:
    args, train_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    rows = [run_variant(args, name, train_args) for name in args.variants]
    (output / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    command = shlex.join(["python", "-m", "training.ablation", *(sys.argv[1:] if argv is None else argv)])
    split = f", trained on sources of ≤ {args.length_split} tokens" if args.length_split else ""
    (output / "table.md").write_text(f"`{command}`: {args.max_steps} steps per variant{split}\n\n"
                                     + markdown_table(rows))
    if args.length_split:
        (output / "length_table.md").write_text(f"`{command}`: test BLEU by source length (sentences)\n\n"
                                                + length_table(rows))
    plot(rows, output, args.length_split)
    logger.info("Wrote %s", ", ".join(str(output / name) for name in ("table.md", "results.json", "ablation.png")))
    print((output / "table.md").read_text())
    return rows


if __name__ == "__main__":
    main()

"""The Table 3 runner on a tiny budget: it trains each variant, writes the Table-3-style table, the results, the
bar chart and the length-generalisation table and plot, and a rerun reuses the finished variants."""

import json
import subprocess
import sys

from conftest import ROOT
from transformers import AutoTokenizer

from training.checkpoints import checkpoint_dirs, read_state
from training.data import load_translation_dataset

TINY_RUN = ["--", "--config_name", "tiny", "--max_train_samples", "300", "--max_eval_samples", "40",
            "--vocab_size", "300", "--mixed_precision", "no"]


def ablation(output, *args):
    command = [sys.executable, "-m", "training.ablation", "--output_dir", str(output), "--max_steps", "3", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_the_runner_writes_table_results_and_figures_and_reuses_finished_variants(tmp_path):
    result = ablation(tmp_path, "--variants", "base", "B-dk16", "rope", "--length_split", "12", *TINY_RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [row["variant"] for row in rows] == ["base", "B-dk16", "rope"]
    assert all(row["steps"] == 3 and row["bleu"] is not None and row["validation_perplexity"] > 1 for row in rows)
    base, smaller_keys, rope = rows
    assert smaller_keys["config"]["d_k"] == 16 and base["config"]["d_k"] == 8  # tiny: d_model 32, 4 heads
    assert rope["parameters"] == base["parameters"] and rope["config"]["positions"] == "rope"

    table = (tmp_path / "table.md").read_text().splitlines()
    header = [cell.strip() for cell in table[2].strip("|").split("|")]
    assert header[:4] == ["", "variant", "N", "d_model"] and header[-3:] == ["PPL (dev)", "BLEU (test)", "minutes"]
    row_cells = {line.split("|")[2].strip(): [c.strip() for c in line.strip("|").split("|")] for line in table[4:]}
    assert row_cells["base"][header.index("positions")] == "sinusoidal"
    assert row_cells["rope"][header.index("positions")] == "rope"
    assert row_cells["rope"][header.index("d_model")] == ""  # as in Table 3: only what differs from the base
    assert row_cells["B-dk16"][:2] == ["B", "B-dk16"] and row_cells["B-dk16"][header.index("d_k")] == "16"

    # --length_split 12: only pairs whose source has at most 12 tokens were trained on.
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "base" / "tokenizer")
    sources = [pair["de"] for pair in load_translation_dataset("de", "en")["train"]["translation"][:300]]
    short = sum(len(ids) <= 12 for ids in tokenizer(sources)["input_ids"])
    state = read_state(checkpoint_dirs(tmp_path / "base" / "checkpoints")[-1])
    assert 0 < state["layout"]["train_pairs"] == short < 300

    buckets = rows[0]["bleu_by_source_length"]
    assert sum(count for _, count in buckets.values()) == 40  # every translated test sentence, in one bucket
    assert "rope (rope)" in (tmp_path / "length_table.md").read_text()
    for figure in ("ablation.png", "length.png"):
        assert (tmp_path / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = ablation(tmp_path, "--variants", "base", "rope", "--length_split", "12", *TINY_RUN)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("finished before") == 2 and "training.train --output_dir" not in again.stderr

"""Real training runs of a tiny model, as a user starts them: `python -m training.train` and `accelerate launch`."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from hf_vanilla_transformer.translate import translate
from training.data import load_translation_dataset

TINY_RUN = [
    "--config_name", "tiny", "--vocab_size", "600", "--max_train_samples", "2000", "--max_eval_samples", "100",
    "--max_tokens", "1024", "--warmup_steps", "40", "--learning_rate", "3e-3", "--eval_bleu_samples", "50",
    "--num_beams", "2", "--mixed_precision", "no", "--no-with_tracking",
]


def environment(tmp_path) -> dict:
    return {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train_command(output_dir, *args, processes: int = 1) -> list[str]:
    if processes == 1:
        launcher = [sys.executable, "-m", "training.train"]
    else:  # DDP over gloo: `--multi_gpu` with ACCELERATE_USE_CPU (`--cpu --num_processes 2` starts only one)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                    str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    "--main_process_port", str(port), "-m", "training.train"]
    return [*launcher, "--output_dir", str(output_dir), *TINY_RUN, *args]


def train(tmp_path, output_dir, *args, processes: int = 1) -> subprocess.CompletedProcess:
    env = environment(tmp_path) | ({"ACCELERATE_USE_CPU": "true"} if processes > 1 else {})
    result = subprocess.run(train_command(output_dir, *args, processes=processes), cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    return result


def log(output_dir) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "logs" / "log.jsonl").read_text().splitlines()]


def test_a_short_run_learns_and_saves_a_hub_ready_model(tmp_path):
    output = tmp_path / "run"
    train(tmp_path, output, "--max_steps", "150", "--eval_steps", "50", "--checkpointing_steps", "50")
    records = log(output)
    eval_losses = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert len(eval_losses) == 3 and eval_losses[0] > eval_losses[1] > eval_losses[2]
    assert eval_losses[-1] < eval_losses[0] - 0.3
    assert all("eval_bleu" in r for r in records if "eval_loss" in r)
    assert [r["step"] for r in records if "train_loss" in r][-1] == 150
    hparams = json.loads((output / "logs" / "hparams.json").read_text())
    assert hparams["num_processes"] == 1 and hparams["max_steps"] == 150

    folder = output / "model"
    results = json.loads((folder / "training_results.json").read_text())
    assert results["averaged_checkpoints"] == 3 and results["eval_split"] == "test"
    assert f"sacreBLEU {results['bleu']}" in (folder / "README.md").read_text()
    assert (folder / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.src_lang == "de" and model.config.tgt_lang == "en"
    assert model.generation_config.num_beams == 4 and model.generation_config.length_penalty == 0.6
    assert all(isinstance(t, str) for t in translate(model, tokenizer, ["Ein Hund läuft.", "Zwei Männer."]))
    assert (folder / "attention.png").is_file() and "![attention_plot](attention.png)" in (folder / "README.md").read_text()

    def cli(*args):
        result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=environment(tmp_path),
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    translated = cli("hf_vanilla_transformer.translate", "--model", str(folder), "--num_beams", "2", "Ein Hund läuft.")
    assert translated.strip() == translate(model, tokenizer, ["Ein Hund läuft."], num_beams=2)[0]
    evaluation = json.loads(cli("training.evaluate_bleu", "--model", str(folder), "--split", "test", "--max_samples",
                                "20").strip().splitlines()[-1])
    assert evaluation["sentences"] == 20 and evaluation["num_beams"] == 4 and 0 <= evaluation["bleu"] <= 100
    cli("training.average_checkpoints", "--run_dir", str(output), "--last", "3", "--output_dir", str(tmp_path / "avg"))
    averaged = load_file(tmp_path / "avg" / "model.safetensors")
    final = load_file(folder / "model.safetensors")
    assert averaged.keys() == final.keys() and all(torch.equal(averaged[k], final[k]) for k in final)


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    """2 processes × 1 micro-batch and 1 process × 2 accumulated micro-batches see the same batches per step:
    their losses must agree step by step, and one epoch must cover every target token exactly once."""
    common = ["--num_train_epochs", "1", "--logging_steps", "1", "--dropout", "0", "--eval_bleu_samples", "0",
              "--checkpointing_steps", "1000", "--average_checkpoints", "1", "--max_train_samples", "600",
              "--max_tokens", "512"]
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    train(tmp_path, ddp, *common, processes=2)
    hparams = json.loads((ddp / "logs" / "hparams.json").read_text())
    assert hparams["num_processes"] == 2 and hparams["distributed_type"] == "MULTI_CPU"
    train(tmp_path, single, *common, "--gradient_accumulation_steps", "2", "--tokenizer_name", str(ddp / "tokenizer"))

    ddp_losses = [r["train_loss"] for r in log(ddp) if "train_loss" in r]
    single_losses = [r["train_loss"] for r in log(single) if "train_loss" in r]
    assert len(ddp_losses) == len(single_losses) >= 5
    torch.testing.assert_close(torch.tensor(ddp_losses), torch.tensor(single_losses), rtol=1e-4, atol=1e-5)

    tokenizer = AutoTokenizer.from_pretrained(ddp / "tokenizer")
    train_pairs = load_translation_dataset("de", "en")["train"].select(range(600))["translation"]
    labels = tokenizer(text_target=[p["en"] for p in train_pairs], truncation=True, max_length=128)["input_ids"]
    for run in (ddp, single):
        assert sum(r["target_tokens"] for r in log(run) if "target_tokens" in r) == sum(map(len, labels))


def test_a_killed_run_resumes_to_identical_weights(tmp_path):
    args = ["--max_steps", "120", "--checkpointing_steps", "10", "--eval_steps", "40", "--eval_bleu_samples", "10"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    train(tmp_path, reference, *args)

    process = subprocess.Popen(train_command(killed, *args), cwd=ROOT, env=environment(tmp_path),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-00000020").is_dir() and process.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "model").exists(), "the run finished before it could be killed"

    result = train(tmp_path, killed, *args, "--resume_from_checkpoint", "latest")
    assert "Resumed from" in result.stderr
    final = "checkpoints/step-00000120/model.safetensors"
    expected, resumed = load_file(reference / final), load_file(killed / final)
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
    assert (killed / "model" / "model.safetensors").read_bytes() == (reference / "model" / "model.safetensors").read_bytes()


def test_a_damaged_checkpoint_is_skipped_with_a_message(tmp_path):
    output = tmp_path / "run"
    args = ["--eval_bleu_samples", "0", "--checkpointing_steps", "10", "--average_checkpoints", "2"]
    train(tmp_path, output, "--max_steps", "30", *args)
    weights = output / "checkpoints" / "step-00000030" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (output / "checkpoints" / ".tmp-step-00000040").mkdir()  # a checkpoint a killed run left half-written
    result = train(tmp_path, output, "--max_steps", "40", *args, "--resume_from_checkpoint", "latest")
    assert "Skipping checkpoint" in result.stderr and "step-00000030" in result.stderr
    assert "Resumed from" in result.stderr and "step-00000020 (step 20" in result.stderr
    assert (output / "checkpoints" / "step-00000040").is_dir()


def test_an_earlier_run_is_not_overwritten_by_accident(tmp_path):
    output = tmp_path / "run"
    train(tmp_path, output, "--max_steps", "10", "--eval_bleu_samples", "0", "--max_eval_samples", "20")
    result = subprocess.run(train_command(output, "--max_steps", "10"), cwd=ROOT, env=environment(tmp_path),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "--resume_from_checkpoint latest" in result.stderr

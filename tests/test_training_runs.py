"""Real training runs of a tiny model, as a user starts them: the command line's `train.cli`, in this process, or
`python -m training.train` and `accelerate launch` where the process is the point (signals, several processes)."""

import io
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import redirect_stderr
from unittest import mock

import pytest
import torch
from conftest import ROOT, run_module
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration, train_tokenizer
from hf_vanilla_transformer.translate import translate
from training.data import load_translation_dataset

TINY_RUN = [
    "--max_train_samples", "2000", "--max_eval_samples", "100",
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
    # A new tiny model with a 600-token vocabulary, unless a saved model or tokenizer fixes them (the run refuses
    # flags that cannot apply).
    model = [] if "--model_name_or_path" in args else ["--config_name", "tiny"]
    model += [] if {"--model_name_or_path", "--tokenizer_name"} & set(args) else ["--vocab_size", "600"]
    return [*launcher, "--output_dir", str(output_dir), *model, *TINY_RUN, *args]


def train(tmp_path, output_dir, *args, processes: int = 1, in_process: bool = True,
          check: bool = True) -> subprocess.CompletedProcess:
    """The training command, with what it printed to stderr and its exit status. In this process where it can be
    (`train.cli`, as `python -m training.train` calls it; the data cache in `tmp_path` as the subprocess's HF_HOME
    puts it), else a new process (always for several processes)."""
    if in_process and processes == 1:
        result = train_in_process(tmp_path, train_command(output_dir, *args)[3:])
    else:
        env = environment(tmp_path) | ({"ACCELERATE_USE_CPU": "true"} if processes > 1 else {})
        result = subprocess.run(train_command(output_dir, *args, processes=processes), cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=600)
    assert not check or result.returncode == 0, result.stderr[-5000:]
    return result


def train_in_process(tmp_path, argv: list[str]) -> subprocess.CompletedProcess:
    """`train.cli(argv)` as its process would end: status 0, argparse's 2, or 1 with `SystemExit`'s message last on
    stderr. Any other exception is the traceback a user would see, and fails the test as it is."""
    import datasets

    from training import train as training

    stderr, status = io.StringIO(), 0
    handler = logging.StreamHandler(stderr)  # the run's log records, which reach the root logger
    logging.getLogger().addHandler(handler)
    try:
        with redirect_stderr(stderr), mock.patch.object(datasets.config, "HF_DATASETS_CACHE",
                                                        str(tmp_path / "hf_home" / "datasets")):
            training.cli(argv)
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
        if isinstance(exit_.code, str):
            stderr.write(exit_.code + "\n")
    finally:
        logging.getLogger().removeHandler(handler)
    return subprocess.CompletedProcess(argv, status, "", stderr.getvalue())


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
    # Table 3's perplexity: the averaged model's plain cross-entropy, as the logged validation loss is.
    assert 1 < results["validation_perplexity"] < math.exp(eval_losses[0])
    assert set(results["phase_minutes"]) == {"reading_data", "learning_vocabulary", "tokenizing", "setup",
                                             "training_steps", "checkpoints", "validation_loss", "validation_bleu",
                                             "final_evaluation"}
    assert sum(results["phase_minutes"].values()) >= results["train_minutes"] - 0.1  # rounding
    translations = (output / "translations.txt").read_text().split("\n")
    assert len(translations) == results["eval_sentences"] + 1 and translations[-1] == ""
    assert f"sacreBLEU {results['bleu']}" in (folder / "README.md").read_text()
    assert (folder / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.src_lang == "de" and model.config.tgt_lang == "en"
    assert model.generation_config.num_beams == 4 and model.generation_config.length_penalty == 0.6
    assert all(isinstance(t, str) for t in translate(model, tokenizer, ["Ein Hund läuft.", "Zwei Männer."]))
    assert (folder / "attention.png").is_file()
    assert "![attention_plot](attention.png)" in (folder / "README.md").read_text()

    def cli(*args):
        result = run_module(*args)
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


def test_a_killed_or_terminated_run_resumes_to_identical_weights(tmp_path):
    """SIGKILL: resume from the last checkpoint. SIGTERM (schedulers, spot instances): the run finishes its step,
    writes a checkpoint there, says how to resume and exits. Either way the resumed run ends bit for bit as an
    uninterrupted one, its checkpoints and their average included."""
    args = ["--max_steps", "120", "--checkpointing_steps", "10", "--eval_steps", "40", "--eval_bleu_samples", "10"]
    reference = tmp_path / "reference"
    train(tmp_path, reference, *args, in_process=False)  # the same thread count as the runs stopped below
    for sent in (signal.SIGKILL, signal.SIGTERM):
        stopped = tmp_path / sent.name
        process = subprocess.Popen(train_command(stopped, *args), cwd=ROOT, env=environment(tmp_path),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while not (stopped / "checkpoints" / "step-00000020").is_dir() and process.poll() is None:
            assert time.time() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # between two scheduled checkpoints
        process.send_signal(sent)
        stderr = process.communicate()[1]
        assert not (stopped / "model").exists(), "the run finished before it could be stopped"
        if sent == signal.SIGTERM:
            assert process.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
            assert "Stopped by SIGTERM after step" in stderr and "--resume_from_checkpoint latest" in stderr
            step = int(stderr.split("Stopped by SIGTERM after step ")[1].split(",")[0])
            assert (stopped / "checkpoints" / f"step-{step:08d}").is_dir()  # written where it stopped
            assert not list((stopped / "checkpoints").glob(".tmp-*"))

        result = train(tmp_path, stopped, *args, "--resume_from_checkpoint", "latest", in_process=False)
        assert "Resumed from" in result.stderr
        assert sorted(p.name for p in (stopped / "checkpoints").iterdir()) == sorted(
            p.name for p in (reference / "checkpoints").iterdir())
        final = "checkpoints/step-00000120/model.safetensors"
        expected, resumed = load_file(reference / final), load_file(stopped / final)
        assert expected.keys() == resumed.keys()
        assert all(torch.equal(expected[k], resumed[k]) for k in expected)
        assert (stopped / "model" / "model.safetensors").read_bytes() == (
            reference / "model" / "model.safetensors").read_bytes()


def test_a_damaged_checkpoint_is_skipped_with_a_message(tmp_path):
    output = tmp_path / "run"
    args = ["--eval_bleu_samples", "0", "--checkpointing_steps", "10", "--average_checkpoints", "2"]
    train(tmp_path, output, "--max_steps", "30", *args)
    weights = output / "checkpoints" / "step-00000030" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (output / "checkpoints" / ".tmp-step-00000040").mkdir()  # a checkpoint a killed run left half-written
    result = train(tmp_path, output, "--max_steps", "40", *args, "--resume_from_checkpoint", "latest")
    assert "Setting checkpoint" in result.stderr and "step-00000030 aside" in result.stderr
    assert "Resumed from" in result.stderr and "step-00000020 (step 20" in result.stderr
    assert (output / "checkpoints" / "step-00000040").is_dir()
    assert (output / "checkpoints" / "unusable-step-00000030" / "model.safetensors").is_file()  # kept to inspect


def test_an_earlier_run_is_not_overwritten_by_accident(tmp_path):
    output = tmp_path / "run"
    train(tmp_path, output, "--max_steps", "10", "--eval_bleu_samples", "0", "--max_eval_samples", "20")
    result = train(tmp_path, output, "--max_steps", "10", check=False)
    assert result.returncode != 0 and "--resume_from_checkpoint latest" in result.stderr


def rewrite_checksums(checkpoint):
    """What a file damaged before its checksum was taken looks like: every check but reading it passes."""
    from hf_vanilla_transformer.loading import sha256_file
    from training.checkpoints import STATE_NAME

    state = json.loads((checkpoint / STATE_NAME).read_text())
    for name in state["files"]:
        state["files"][name] = {"size": (checkpoint / name).stat().st_size, "sha256": sha256_file(checkpoint / name)}
    (checkpoint / STATE_NAME).write_text(json.dumps(state))


def test_unusable_checkpoints_are_set_aside_and_never_push_out_new_ones(tmp_path):
    """A damaged random state is skipped, not silently ignored; when no checkpoint fits (another config), training
    starts afresh and its own checkpoints survive pruning and are the ones averaged."""
    output = tmp_path / "run"
    args = ["--eval_bleu_samples", "0", "--checkpointing_steps", "10", "--keep_checkpoints", "2",
            "--average_checkpoints", "2"]
    train(tmp_path, output, "--max_steps", "30", *args)
    damaged = output / "checkpoints" / "step-00000030"
    (damaged / "random_states_0.pkl").write_bytes(b"garbage")
    rewrite_checksums(damaged)
    result = train(tmp_path, output, "--max_steps", "40", *args, "--resume_from_checkpoint", "latest")
    assert "random_states_0.pkl cannot be read" in result.stderr
    assert "Resumed from" in result.stderr and "step-00000020 (step 20" in result.stderr

    result = train(tmp_path, output, "--max_steps", "20", *args, "--resume_from_checkpoint", "latest",
                   "--config_overrides", "encoder_ffn_dim=128")
    assert "weights are of another model" in result.stderr and "starting from scratch" in result.stderr
    kept = sorted(p.name for p in (output / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert kept == ["step-00000010", "step-00000020"]
    results = json.loads((output / "model" / "training_results.json").read_text())
    assert results["averaged_checkpoints"] == 2 and results["train_steps"] == 20
    assert AutoModelForSeq2SeqLM.from_pretrained(output / "model").config.encoder_ffn_dim == 128
    assert [r["step"] for r in log(output) if "train_loss" in r] == [20]  # the log restarted with the run


def test_resuming_with_another_process_count_is_refused(tmp_path):
    output = tmp_path / "run"
    train(tmp_path, output, "--max_steps", "10", "--checkpointing_steps", "10", "--eval_bleu_samples", "0")
    result = train(tmp_path, output, "--max_steps", "20", "--resume_from_checkpoint", "latest", processes=2,
                   check=False)
    assert result.returncode != 0
    assert "num_processes 1 (now 2)" in result.stderr and "--num_processes 1" in result.stderr
    assert result.stderr.count("num_processes 1 (now 2)") == 1 and "[rank" not in result.stderr  # once, not per rank


def test_overwrite_output_dir_starts_clean(tmp_path):
    output = tmp_path / "run"
    train(tmp_path, output, "--max_steps", "10", "--eval_bleu_samples", "0", "--logging_steps", "5")
    train(tmp_path, output, "--max_steps", "5", "--eval_bleu_samples", "0", "--logging_steps", "5",
          "--vocab_size", "500", "--overwrite_output_dir")
    assert [r["step"] for r in log(output) if "train_loss" in r] == [5]
    assert len(AutoTokenizer.from_pretrained(output / "tokenizer")) == 500
    assert AutoModelForSeq2SeqLM.from_pretrained(output / "model").config.vocab_size == 500


def test_overwrite_output_dir_deletes_only_what_runs_wrote(tmp_path):
    """A folder no run wrote is never emptied, --overwrite_output_dir or not; in a run's folder, a file the runs did
    not write stops the overwrite, naming it, before anything is deleted."""
    mine = {"logs/notes.txt": "notes", "model/other.bin": "weights", "src/main.py": "code"}
    project = tmp_path / "project"
    for name, text in mine.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    for extra in ([], ["--overwrite_output_dir"]):
        result = train(tmp_path, project, "--max_steps", "2", "--eval_bleu_samples", "0", *extra, check=False)
        assert result.returncode == 1 and "holds logs, model, which no training run wrote" in result.stderr
    left = {str(p.relative_to(project)): p.read_text() for p in project.rglob("*") if p.is_file()}
    assert left == mine | {".lock": left.get(".lock")}  # the user's files as they were, and the runs' lock file

    output = tmp_path / "run"
    args = ["--max_steps", "2", "--checkpointing_steps", "2", "--eval_bleu_samples", "0", "--max_eval_samples", "20"]
    train(tmp_path, output, *args)
    (output / "logs" / "notes.txt").write_text("notes")
    result = train(tmp_path, output, *args, "--overwrite_output_dir", check=False)
    assert result.returncode == 1 and "files no run wrote" in result.stderr and "logs/notes.txt" in result.stderr
    assert (output / "logs" / "notes.txt").read_text() == "notes" and (output / "model" / "model.safetensors").is_file()
    # With the user's file gone, the overwrite goes ahead; a checkpoint a killed run left half-written is the run's.
    (output / "logs" / "notes.txt").unlink()
    (output / "checkpoints" / ".tmp-step-00000004").mkdir()
    (output / "checkpoints" / ".tmp-step-00000004" / "model.safetensors").write_bytes(b"half")
    train(tmp_path, output, *args, "--overwrite_output_dir")
    assert not (output / "checkpoints" / ".tmp-step-00000004").exists()


def test_continuing_a_saved_model_keeps_its_tokenizer_and_applies_or_refuses_overrides(tmp_path):
    first = tmp_path / "first"
    train(tmp_path, first, "--max_steps", "10", "--eval_bleu_samples", "0")
    saved = first / "model"
    fingerprint = json.loads((saved / "config.json").read_text())["tokenizer_fingerprint"]
    assert fingerprint
    second = tmp_path / "second"
    train(tmp_path, second, "--model_name_or_path", str(saved), "--max_steps", "5", "--eval_bleu_samples", "0",
          "--dropout", "0.3", "--config_overrides", "attention_dropout=0.2")
    continued = json.loads((second / "model" / "config.json").read_text())
    assert continued["tokenizer_fingerprint"] == fingerprint
    assert continued["dropout"] == 0.3 and continued["attention_dropout"] == 0.2
    assert (second / "tokenizer" / "tokenizer.json").read_bytes() == (saved / "tokenizer.json").read_bytes()

    refused = train(tmp_path, tmp_path / "third", "--model_name_or_path", str(saved), "--config_overrides",
                    "d_model=64", check=False)
    assert refused.returncode != 0 and "d_model=64 (the model has 32) cannot apply" in refused.stderr
    for moot in (["--vocab_size", "500"], ["--config_name", "tiny"]):  # fixed by the saved model: refused, not dropped
        refused = train(tmp_path, tmp_path / "third", "--model_name_or_path", str(saved), *moot, check=False)
        assert refused.returncode == 2 and f"{moot[0]} cannot apply with --model_name_or_path" in refused.stderr
    other = tmp_path / "other-tokenizer"
    pairs = load_translation_dataset("de", "en")["train"].select(range(2000, 4000))["translation"]
    train_tokenizer([p["de"] for p in pairs] + [p["en"] for p in pairs], vocab_size=600).save_pretrained(other)
    mismatched = train(tmp_path, tmp_path / "fourth", "--model_name_or_path", str(saved), "--tokenizer_name",
                       str(other), check=False)
    assert mismatched.returncode != 0 and "not the one the model was trained with" in mismatched.stderr


def test_a_run_on_a_train_file_alone_saves_a_card_that_says_it_was_not_evaluated(tmp_path):
    pairs = load_translation_dataset("de", "en")["train"].select(range(400))["translation"]
    (tmp_path / "train.tsv").write_text("".join(f"{p['de']}\t{p['en']}\n" for p in pairs))
    result = train(tmp_path, tmp_path / "run", "--train_file", str(tmp_path / "train.tsv"), "--max_steps", "3")
    assert "The data has no test split: the final BLEU is left out" in result.stderr
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert "Not evaluated: the run's data had no validation or test split" in card and "model-index" not in card


def test_over_long_evaluation_pairs_are_counted_not_fatal(tmp_path):
    pairs = load_translation_dataset("de", "en")["train"].select(range(400))["translation"]
    lines = [f"{p['de']}\t{p['en']}" for p in pairs]
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n")
    long = " ".join(["Ein Hund läuft über die Wiese."] * 40)
    (tmp_path / "test.tsv").write_text("\n".join(lines[:20] + [f"{long}\tA dog."]) + "\n")
    output = tmp_path / "run"
    train(tmp_path, output, "--train_file", str(tmp_path / "train.tsv"), "--validation_file",
          str(tmp_path / "test.tsv"), "--test_file", str(tmp_path / "test.tsv"), "--max_steps", "5",
          "--eval_bleu_samples", "30")
    counts = next(r for r in log(output) if "test_pairs_too_long" in r)
    assert counts["test_pairs_too_long"] == 1 and counts["validation_pairs_too_long"] == 1
    assert counts["train_pairs_too_long"] == 0
    results = json.loads((output / "model" / "training_results.json").read_text())
    assert results["eval_sentences"] == 21  # BLEU still scores every test sentence


def test_training_pairs_longer_than_max_tokens_are_left_out_with_a_warning(tmp_path):
    """A batch never holds more than --max_tokens tokens: a pair longer than that alone is left out, and said."""
    pairs = load_translation_dataset("de", "en")["train"].select(range(400))["translation"]
    long = " ".join(["Ein Hund läuft über die Wiese."] * 14)  # ~100 tokens a side: fewer than 128 positions
    lines = [f"{p['de']}\t{p['en']}" for p in pairs] + [f"{long}\t{long}"]
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n")
    output = tmp_path / "run"
    result = train(tmp_path, output, "--train_file", str(tmp_path / "train.tsv"), "--max_tokens", "90",
                   "--max_steps", "3", "--eval_bleu_samples", "0")
    assert "1 training pairs are longer than --max_tokens 90: left out of training" in result.stderr
    assert all(0 < r["target_tokens_per_step"] <= 90 for r in log(output) if "target_tokens_per_step" in r)


def test_mixed_precision_reaches_training_and_validation_and_the_saved_model_gives_the_reported_bleu(
        tmp_path, monkeypatch):
    """`--mixed_precision bf16` puts each training step's forward and the validation loss's and translations' under
    autocast (bfloat16 logits): a run that lost it would train in float32, slower and with nothing to say so. The
    final model is evaluated as it is saved, in float32, so that the folder gives its users the BLEU on its card."""
    from training import train as training

    seen = []

    def record(module, args, output):
        if isinstance(module, VanillaTransformerForConditionalGeneration):
            seen.append([module.training, str(output.logits.dtype)])

    evaluate = training.evaluate
    monkeypatch.setattr(training, "evaluate", lambda run: (seen.append("final"), evaluate(run))[1])
    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        train(tmp_path, tmp_path / "run", "--mixed_precision", "bf16", "--max_steps", "4", "--eval_steps", "2")
    finally:
        hook.remove()
    during, final = seen[: seen.index("final")], seen[seen.index("final") + 1 :]
    assert [dtype for training_, dtype in during if training_] == ["torch.bfloat16"] * 4
    validation = [dtype for training_, dtype in during if not training_]
    assert len(validation) > 10 and set(validation) == {"torch.bfloat16"}
    assert len(final) > 10 and {dtype for _, dtype in final} == {"torch.float32"} and not any(t for t, _ in final)

    folder = tmp_path / "run" / "model"
    results = json.loads((folder / "training_results.json").read_text())
    assert results["mixed_precision"] == "bf16"
    saved = run_module("training.evaluate_bleu", "--model", folder, "--split", "test", "--max_samples",
                       results["eval_sentences"], "--num_beams", results["num_beams"], "--output_file",
                       tmp_path / "from_folder.txt")
    assert saved.returncode == 0, saved.stderr[-3000:]
    assert json.loads(saved.stdout.strip().splitlines()[-1])["bleu"] == results["bleu"]
    assert (tmp_path / "from_folder.txt").read_text() == (tmp_path / "run" / "translations.txt").read_text()


def wmt_shaped_corpus(prefix, pairs: int, seed: int = 0) -> str:
    """PREFIX.de/.en of `pairs` lines, each 1 to 3 random Multi30k pairs joined: WMT's sentence lengths."""
    import random

    from conftest import read_multi30k

    sides = {lang: read_multi30k("train", lang, 5000) for lang in ("de", "en")}
    rng = random.Random(seed)
    rows = [rng.sample(range(5000), rng.randint(1, 3)) for _ in range(pairs)]
    for lang, sentences in sides.items():
        prefix.with_name(f"{prefix.name}.{lang}").write_text("".join(" ".join(sentences[i] for i in row) + "\n"
                                                                     for row in rows))
    return str(prefix)


def test_the_wmt14_recipe_runs_end_to_end_on_two_processes_at_tiny_scale(tmp_path):
    """`--recipe wmt14-en-de-base` on a WMT-shaped corpus, shrunk by flags that override it: the paper's other
    settings stay, the step's tokens split over 2 processes and accumulation, and the paper's BLEU is reported
    beside sacreBLEU."""
    corpus = wmt_shaped_corpus(tmp_path / "train", 1500)
    evaluation = wmt_shaped_corpus(tmp_path / "newstest", 60, seed=1)
    output = tmp_path / "run"
    args = ["--recipe", "wmt14-en-de-base", "--train_file", corpus, "--validation_file", evaluation, "--test_file",
            evaluation, "--tokens_per_step", "4096", "--max_steps", "6", "--checkpointing_steps", "2", "--eval_steps",
            "3", "--logging_steps", "2"]
    prepare = [sys.executable, "-m", "training.prepare", *train_command(output, *args)[3:]]  # fairseq-preprocess's
    prepared = subprocess.run(prepare, cwd=ROOT, env=environment(tmp_path), capture_output=True, text=True,
                              timeout=600)
    assert prepared.returncode == 0 and " validation, 60 test pairs in " in prepared.stderr, prepared.stderr[-2000:]
    assert not output.exists()  # it writes only the cache
    result = train(tmp_path, output, *args, processes=2)
    assert "learning_vocabulary" in result.stderr and "Tokenizing" not in result.stderr  # all found cached
    assert ("--recipe wmt14-en-de-base: --dataset_name None --dataset_config_name None --source_lang en "
            "--target_lang de --vocab_size 600") in result.stderr
    assert ("--tokens_per_step 4096: --max_tokens 1024 × 2 process(es) × --gradient_accumulation_steps 2"
            in result.stderr)
    results = json.loads((output / "model" / "training_results.json").read_text())
    assert (results["num_processes"], results["max_tokens"], results["gradient_accumulation_steps"]) == (2, 1024, 2)
    assert (results["dropout"], results["label_smoothing"], results["warmup_steps"]) == (0.1, 0.1, 40)
    assert (results["num_beams"], results["length_penalty"], results["averaged_checkpoints"]) == (2, 0.6, 3)
    assert results["dataset"] == "train" and results["eval_split"] == "test"
    assert 0 <= results["paper_bleu"] <= 100 and 0 <= results["bleu"] <= 100
    assert results["paper_bleu_signature"].startswith("tokenizer.perl -l de")
    card = (output / "model" / "README.md").read_text()
    assert f"BLEU as the paper computed it: **{results['paper_bleu']:.2f}**" in card
    config = json.loads((output / "model" / "config.json").read_text())
    assert (config["src_lang"], config["tgt_lang"]) == ("en", "de")
    steps = [r["step"] for r in log(output) if "eval_loss" in r]
    assert steps == [3, 6]  # validation shared by both processes, on its schedule
    assert all(0 < r["target_tokens_per_step"] <= 4096 for r in log(output) if "train_loss" in r)  # as run


def test_torch_compile_and_loader_workers_train_as_the_plain_run_and_resume(tmp_path):
    """--torch_compile (the training forward compiled) and --dataloader_num_workers 2 (batches collated in other
    processes): the same batches and, within float tolerance, the same losses as the plain run; the compiled run's
    checkpoint resumes and the run saves its model."""
    common = ["--max_steps", "10", "--logging_steps", "1", "--dropout", "0", "--eval_bleu_samples", "0",
              "--checkpointing_steps", "5", "--eval_steps", "10"]
    fast_flags = ["--torch_compile", "--dataloader_num_workers", "2"]
    train(tmp_path, tmp_path / "plain", *common)
    train(tmp_path, tmp_path / "fast", *common, *fast_flags)
    plain = [(r["step"], r["train_loss"], r["target_tokens"]) for r in log(tmp_path / "plain") if "train_loss" in r]
    fast = [(r["step"], r["train_loss"], r["target_tokens"]) for r in log(tmp_path / "fast") if "train_loss" in r]
    assert [(step, tokens) for step, _, tokens in fast] == [(step, tokens) for step, _, tokens in plain]
    assert [loss for _, loss, _ in fast] == pytest.approx([loss for _, loss, _ in plain], rel=1e-4)
    train(tmp_path, tmp_path / "fast", "--max_steps", "15", "--resume_from_checkpoint", "latest", *common[2:],
          *fast_flags)
    assert [r["step"] for r in log(tmp_path / "fast") if "train_loss" in r][-1] == 15
    assert (tmp_path / "fast" / "model" / "model.safetensors").is_file()

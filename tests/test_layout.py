"""The layout: a run's phases share one state and run in process; library code raises and only the command lines
exit; a wheel installs the library and the training scripts under the package's own name, Multi30k included."""

import os
import subprocess
import sys
import zipfile

import pytest
import torch
from conftest import ROOT
from test_training_runs import TINY_RUN

from training import checkpoints, train
from training.build import parse_config_overrides


def test_the_phases_of_a_run_share_one_state_and_each_runs_in_process(tmp_path):
    args = train.parse_args(["--output_dir", str(tmp_path / "run"), "--config_name", "tiny", "--vocab_size", "600",
                             *TINY_RUN, "--max_steps", "6", "--eval_steps", "3", "--checkpointing_steps", "3"])
    run = train.start(args)
    assert run.step == 0 and run.output == tmp_path / "run"
    train.load_data(run)
    assert set(run.raw) == {"train", "validation", "test"} and len(run.raw["train"]) == 2000
    assert len(run.tokenizer) == 600 and (run.output / "tokenizer" / "tokenizer.json").is_file()
    train.build(run)
    assert run.model.config.vocab_size == 600 and run.model.config.tokenizer_fingerprint is not None
    train.tokenize_data(run)
    assert len(run.data["train"]) == 2000 - run.too_long["train"] > 1900
    train.prepare_training(run)
    assert run.max_steps == 6 and run.step == 0 and run.learning_rate == 3e-3
    train.train(run)
    assert (run.step, run.batches_done) == (6, 6)
    assert [p.name for p in checkpoints.checkpoint_dirs(run.checkpoint_root)] == ["step-00000003", "step-00000006"]
    results = train.evaluate(run)
    assert results["averaged_checkpoints"] == 2 and results["train_steps"] == 6 and 0 <= results["bleu"] <= 100
    assert (results["num_beams"], results["length_penalty"]) == (2, 0.6)  # --num_beams 2; the model's penalty
    train.save(run, results)
    assert (run.output / "model" / "model.safetensors").is_file() and (run.output / "model" / "README.md").is_file()


@pytest.mark.parametrize("native, amx, model, epochs", [("bf16", True, "medium", 8), ("bf16", False, "small", 10),
                                                      ("no", False, "small", 10)])
def test_the_main_job_trains_medium_only_where_bf16_runs_on_amx(tmp_path, monkeypatch, native, amx, model, epochs):
    """`--config_name` and `--num_train_epochs` unset: the main job's model and its epochs for this hardware;
    either flag given is kept as given, and a saved model is continued as it is."""
    monkeypatch.setattr(train, "native_mixed_precision", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    resolved = []
    for flags in ([], ["--config_name", "small"], ["--num_train_epochs", "3"], ["--model_name_or_path", "saved"]):
        args = train.parse_args(["--output_dir", str(tmp_path / str(len(resolved))), "--no-with_tracking", *flags])
        train.start(args).release()
        resolved.append((args.config_name, args.num_train_epochs))
    assert resolved == [(model, epochs), ("small", 10), (model, 3), (None, 10)]


def test_a_run_resumed_on_another_kind_of_cpu_goes_on_with_the_model_its_first_machine_chose(tmp_path, monkeypatch,
                                                                                          caplog):
    """The main job's model depends on the CPU; its checkpoints record what the first machine chose, so that another
    machine resumes them instead of setting them aside as another model's and starting from scratch."""
    flags = ["--output_dir", str(tmp_path / "run"), "--vocab_size", "600", *TINY_RUN, "--checkpointing_steps", "2"]

    def train_until(step: int, *more: str) -> train.Run:
        run = train.start(train.parse_args([*flags, "--max_steps", str(step), *more]))
        try:
            for phase in (train.load_data, train.build, train.tokenize_data, train.prepare_training, train.train):
                phase(run)
        finally:
            run.release()
        return run

    monkeypatch.setitem(train.MAIN_JOB_EPOCHS, "tiny", 3)
    monkeypatch.setattr(train, "main_job_model", lambda mixed_precision: "tiny")  # the first machine's choice
    first = train_until(2)
    assert (first.args.config_name, first.args.num_train_epochs) == ("tiny", 3)
    monkeypatch.setattr(train, "main_job_model", lambda mixed_precision: "small")  # another machine's
    resumed = train_until(4, "--resume_from_checkpoint", "latest")
    assert (resumed.args.config_name, resumed.args.num_train_epochs) == ("tiny", 3)
    assert "--config_name tiny, as the machine that started this run chose (this one would choose small)" in caplog.text
    assert resumed.unwrapped.config.d_model == 32 and resumed.step == 4
    assert sorted(p.name for p in resumed.checkpoint_root.iterdir()) == ["step-00000002", "step-00000004"]
    fresh = train.parse_args(["--output_dir", str(tmp_path / "other"), "--mixed_precision", "no", "--no-with_tracking"])
    train.start(fresh).release()
    assert (fresh.config_name, fresh.num_train_epochs) == ("small", 10)  # a new run: this machine's choice


@pytest.mark.parametrize("native", ["no", "bf16"])
def test_library_code_raises_and_only_the_command_line_exits(tmp_path, monkeypatch, native):
    """`--mixed_precision auto` resolved both ways, whatever this CPU multiplies natively."""
    from hf_vanilla_transformer.ctranslate2_backend import import_ctranslate2

    monkeypatch.setattr(train, "native_mixed_precision", lambda: native)

    monkeypatch.setitem(sys.modules, "ctranslate2", None)
    with pytest.raises(ImportError, match=r'pip install "hf-vanilla-transformer\[ctranslate2\]"'):
        import_ctranslate2()
    with pytest.raises(ValueError, match="--config_overrides: 'd_model' is not FIELD=VALUE"):
        parse_config_overrides("d_model")
    (tmp_path / "run" / "logs").mkdir(parents=True)
    args = train.parse_args(["--output_dir", str(tmp_path / "run"), "--no-with_tracking"])
    with pytest.raises(train.RunStopped, match="holds logs, which no training run wrote"):
        train.start(args)
    assert args.mixed_precision == native
    with pytest.raises(SystemExit, match="which no training run wrote"):  # what the command line turns it into
        train.cli(["--output_dir", str(tmp_path / "run"), "--no-with_tracking"])


def test_a_wheel_installs_under_the_package_name_and_trains_outside_a_checkout(tmp_path):
    """No top-level `training` package lands in site-packages; the scripts and Multi30k come as
    `hf_vanilla_transformer.training`, with console scripts, and find their data where the package is."""
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if ".dist-info/" not in name} == {"hf_vanilla_transformer"}
    assert {"hf_vanilla_transformer/training/train.py", "hf_vanilla_transformer/training/multi30k/train.de.gz",
            "hf_vanilla_transformer/kernels.py", "hf_vanilla_transformer/decoding.py"} <= set(names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "vanilla-transformer-train = hf_vanilla_transformer.training.train:cli" in entry_points

    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                                str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert not (site / "training").exists()
    code = ("from hf_vanilla_transformer.training import data\n"
            "splits = data.load_translation_dataset('de', 'en')\n"
            "print(data.MULTI30K, {split: len(pairs) for split, pairs in splits.items()})")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(site), "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[0] == str(site / "hf_vanilla_transformer" / "training" / "multi30k")
    assert "'train': 29000" in result.stdout and "'test': 1000" in result.stdout
    help_text = subprocess.run([sys.executable, "-m", "hf_vanilla_transformer.training.train", "--help"],
                               cwd=elsewhere, capture_output=True, text=True, timeout=300,
                               env={**os.environ, "PYTHONPATH": str(site)})
    assert help_text.returncode == 0 and "--output_dir" in help_text.stdout, help_text.stderr[-3000:]

"""Faults and bad input, as a user meets them: a diverging run, a resume that is not one, two runs into one folder,
moot flags, impossible values, missing files, damaged folders. Each ends in the right result or one line that
names the problem, never a traceback and never a silently wrong model."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, read_multi30k, run_module, run_python, tiny_config
from safetensors.torch import load_file
from test_ecosystem import RESULTS
from test_training_runs import train, train_command, train_in_process
from transformers import pipeline

from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration, hub
from training import checkpoints
from training.train import parse_args


def assert_one_clear_line(result, *expected: str):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for text in expected:
        assert text in result.stderr, result.stderr[-3000:]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer):
    """A Hub-ready tiny model folder (de→en)."""
    torch.manual_seed(0)
    model = VanillaTransformerForConditionalGeneration(tiny_config(src_lang="de", tgt_lang="en")).eval()
    return hub.save_for_hub(tmp_path_factory.mktemp("saved") / "model", model, tokenizer, RESULTS)


@pytest.mark.parametrize("learning_rate, symptom", [("1e30", "the gradient norm was not finite at steps"),
                                                     ("1e3", "the training loss is")])
def test_a_diverging_run_stops_naming_the_step_and_saves_no_model(tmp_path, learning_rate, symptom):
    """Weights blown up to NaN (1e30), or a loss that climbs to ~1e7 while staying finite (1e3)."""
    output = tmp_path / "run"
    result = train(tmp_path, output, "--learning_rate", learning_rate, "--max_steps", "80", "--checkpointing_steps",
                   "1", "--eval_bleu_samples", "0", check=False)
    assert_one_clear_line(result, f"Training diverged: {symptom}", "--learning_rate")
    assert "learning rate" in result.stderr and not (output / "model").exists()
    for checkpoint in checkpoints.checkpoint_dirs(output / "checkpoints"):  # none holds a non-finite weight
        assert all(tensor.isfinite().all() for tensor in load_file(checkpoint / "model.safetensors").values())


def test_a_model_with_non_finite_weights_is_never_saved_for_the_hub(tmp_path, tokenizer):
    model = VanillaTransformerForConditionalGeneration(tiny_config())
    with torch.no_grad():
        model.lm_head.weight[3, 4] = float("nan")
    with pytest.raises(ValueError, match="not finite.*diverged"):
        hub.save_for_hub(tmp_path / "model", model, tokenizer, RESULTS)
    assert not (tmp_path / "model").exists()


def test_a_push_of_linked_weights_is_refused(saved, tmp_path):
    """A folder whose weights are a symbolic link (as in a Hub cache snapshot) never pushes without them."""
    folder = tmp_path / "snapshot"
    folder.mkdir()
    for path in saved.iterdir():
        if path.is_file():
            (folder / path.name).write_bytes(path.read_bytes())
    (tmp_path / "blob").write_bytes((saved / "model.safetensors").read_bytes())
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to(tmp_path / "blob")
    with pytest.raises(ValueError, match="model.safetensors is a symbolic link.*cp -rL"):
        hub.push(folder, "someone/model", dry_run=True)
    result = run_module("hf_vanilla_transformer.hub", "push", "--model", folder, "--repo_id", "someone/model",
                        "--dry_run")
    assert_one_clear_line(result, "model.safetensors is a symbolic link")


def test_resuming_with_other_data_or_vocabulary_is_refused(tmp_path):
    """A run killed before its first checkpoint leaves its tokenizer: a "resume" with other data must not reuse it."""
    output = tmp_path / "run"
    train(tmp_path, output, "--max_steps", "2", "--eval_bleu_samples", "0", "--max_eval_samples", "20")
    for leftover in ("checkpoints", "model"):  # what a kill before the first checkpoint leaves: tokenizer/, logs/
        subprocess.run(["rm", "-r", str(output / leftover)], check=True)
    tsv = tmp_path / "other.tsv"
    tsv.write_text("".join(f"{de}\t{en}\n" for de, en in zip(read_multi30k("train", "de", 300),
                                                             read_multi30k("train", "en", 300))))
    for changed, named in ((["--vocab_size", "500"], "--vocab_size 500 (was 600)"),
                           (["--train_file", str(tsv)], f"--train_file {tsv} (was None)")):
        command = train_command(output, "--max_steps", "2", "--resume_from_checkpoint", "latest", *changed)
        if changed[0] == "--vocab_size":  # instead of the helper's own --vocab_size 600
            index = command.index("--vocab_size")
            del command[index : index + 2]
        result = train_in_process(tmp_path, command[3:])
        assert_one_clear_line(result, "holds the tokenizer of a run with other data or vocabulary", named,
                              "--overwrite_output_dir")


def test_flags_that_cannot_apply_are_refused(capsys):
    for argv, message in (
        (["--tokenizer_name", "somewhere", "--vocab_size", "300"], "--vocab_size cannot apply with --tokenizer_name"),
        (["--model_name_or_path", "somewhere", "--config_name", "tiny"],
         "--config_name cannot apply with --model_name_or_path"),
    ):
        with pytest.raises(SystemExit) as exit_:
            parse_args(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_second_run_into_the_same_folder_is_refused_and_a_dead_runs_lock_is_not(tmp_path):
    output = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
                               "from training import checkpoints\n"
                               f"lock = checkpoints.lock_output_dir(Path({str(output)!r}))\n"
                               "print('locked', flush=True)\ntime.sleep(600)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = train(tmp_path, output, "--max_steps", "2", check=False)
        assert_one_clear_line(result, f"another run (pid {holder.pid}) is writing to {output}")
        assert not (output / "logs").exists()  # the refused run wrote nothing
    finally:
        holder.kill()  # SIGKILL: the lock file stays, the kernel drops the lock
        holder.wait()
    assert (output / checkpoints.LOCK_NAME).read_text().split()[0] == str(holder.pid)  # then the lock's token
    checkpoints.lock_output_dir(output).close()  # a killed run's lock does not block


def test_a_finished_runs_lock_does_not_outlive_it_in_a_forked_child(tmp_path):
    """A process forked while the run held the lock (a loader worker, a compiler pool) and still alive when the run
    releases it does not keep the folder locked."""
    import os
    import signal

    output = tmp_path / "run"
    lock = checkpoints.lock_output_dir(output)
    child = os.fork()
    if child == 0:  # holds a copy of the locked file's descriptor until killed
        signal.pause()
        os._exit(0)
    try:
        checkpoints.unlock_output_dir(lock)
        checkpoints.unlock_output_dir(checkpoints.lock_output_dir(output))  # the next run takes it at once
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


@pytest.mark.parametrize("argv, message", [
    (["--num_beams", "0"], "--num_beams: 0 is not positive"),
    (["--max_tokens", "0"], "--max_tokens: 0 is not positive"),
    (["--warmup_steps", "0"], "--warmup_steps: 0 is not positive"),
    (["--gradient_accumulation_steps", "-1"], "--gradient_accumulation_steps: -1 is not positive"),
    (["--checkpointing_steps", "0"], "--checkpointing_steps: 0 is not positive"),
    (["--average_checkpoints", "0"], "--average_checkpoints: 0 is not positive"),
    (["--max_steps", "two"], "--max_steps: 'two' is not a whole number"),
    (["--label_smoothing", "1.5"], "--label_smoothing 1.5: expected a finite number in [0, 0.999]"),
    (["--dropout", "nan"], "--dropout nan: expected a finite number in [0, 0.999]"),
    (["--learning_rate", "-1"], "--learning_rate -1.0: expected a finite number in [0, inf]"),
    (["--num_train_epochs", "0"], "--num_train_epochs 0.0: expected a finite number in"),
    (["--length_penalty", "inf"], "--length_penalty inf: expected a finite number in"),
    (["--max_train_samples", "0"], "--max_train_samples: 0 is not positive"),
    (["--max_eval_samples", "-1"], "--max_eval_samples: -1 is not positive"),
    (["--max_train_source_tokens", "0"], "--max_train_source_tokens: 0 is not positive"),
    (["--eval_bleu_samples", "-1"], "--eval_bleu_samples: -1 is negative"),
    (["--eval_split", "tset"], "--eval_split: invalid choice: 'tset'"),
    (["--source_lang", "en", "--target_lang", "en"], "--source_lang and --target_lang are both 'en'"),
])
def test_impossible_training_values_are_refused_by_name(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("module, argv, message", [
    ("hf_vanilla_transformer.translate", ["--num_beams", "0", "Hallo"], "--num_beams: 0 is not positive"),
    ("hf_vanilla_transformer.translate", ["--batch_size", "0", "Hallo"], "--batch_size: 0 is not positive"),
    ("training.evaluate_bleu", ["--num_beams", "0"], "--num_beams: 0 is not positive"),
    ("training.evaluate_bleu", ["--max_samples", "0"], "--max_samples: 0 is not positive"),
    ("hf_vanilla_transformer.translate", ["--device", "cuda:99", "Hallo"], "'cuda:99' is not a device of this machine"),
    ("training.evaluate_bleu", ["--device", "gpu"], "--device: 'gpu' is not a device of this machine"),
])
def test_impossible_decoding_values_are_refused_by_name(module, argv, message, saved, tmp_path):
    assert_one_clear_line(run_module(module, "--model", saved, *argv), message)


def test_a_full_disk_while_caching_the_data_names_the_cache(tmp_path, monkeypatch):
    """ENOSPC out of `datasets.map` (tokenizing), as `datasets` raises it: one line naming the cache and the variable
    that moves it; the next run, with room, trains."""
    import errno

    import datasets

    map_ = datasets.Dataset.map

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(datasets.Dataset, "map", full_disk)
    result = train(tmp_path, tmp_path / "run", "--max_steps", "2", "--eval_bleu_samples", "0", check=False)
    assert_one_clear_line(result, "No space left on device while caching the data in", "hf_home", "HF_DATASETS_CACHE")
    monkeypatch.setattr(datasets.Dataset, "map", map_)
    train(tmp_path, tmp_path / "run", "--max_steps", "2", "--eval_bleu_samples", "0", "--resume_from_checkpoint",
          "latest")
    unwritable = tmp_path / "elsewhere"  # a cache folder that cannot be made: a file stands where it would go
    (unwritable / "hf_home").mkdir(parents=True)
    (unwritable / "hf_home" / "datasets").write_text("not a folder")
    result = train(unwritable, unwritable / "run", "--max_steps", "2", "--eval_bleu_samples", "0", check=False)
    assert_one_clear_line(result, "while caching the data in", str(unwritable / "hf_home" / "datasets"))


def test_a_bad_line_in_a_training_file_stops_the_run_with_one_line(tmp_path):
    """A `DataError` raised inside `datasets`' generator (line 2 is not UTF-8) reaches the command line as one line
    naming the file and the line (its exception chain loops back on itself: once, that hung the run)."""
    bad = tmp_path / "train.tsv"
    bad.write_bytes(b"Ein Hund.\tA dog.\n" + "Grüße.\tGreetings.\n".encode("latin-1"))
    result = train(tmp_path, tmp_path / "run", "--train_file", str(bad), "--max_steps", "1", check=False)
    assert_one_clear_line(result, f"{bad}, line 2: not UTF-8")


def test_a_run_stopped_at_the_start_records_what_it_wrote(tmp_path):
    """A run refused after it saved its tokenizer (an invalid model configuration) leaves those files on the
    record: the next run with --overwrite_output_dir replaces them instead of calling them a user's files."""
    stopped = train(tmp_path, tmp_path / "run", "--max_steps", "1", "--config_overrides", "d_model=-3", check=False)
    assert_one_clear_line(stopped, "`d_model` must be a positive integer, got -3")
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").is_file()
    train(tmp_path, tmp_path / "run", "--max_steps", "1", "--eval_bleu_samples", "0", "--overwrite_output_dir")


def test_a_model_ctranslate2_cannot_express_is_refused_before_training(tmp_path):
    pytest.importorskip("ctranslate2")
    result = train(tmp_path, tmp_path / "run", "--max_steps", "2", "--export_ctranslate2", "--config_overrides",
                   "position_embedding_type=rope", check=False)
    assert_one_clear_line(result, "--export_ctranslate2: position_embedding_type='rope'")
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before the first step


def test_missing_data_files_name_the_file(saved, tmp_path):
    missing = tmp_path / "missing.tsv"
    for flag in ("--train_file", "--validation_file", "--test_file"):
        extra = [] if flag == "--train_file" else ["--train_file", str(tmp_path / "train")]
        (tmp_path / "train.de").write_text("Ein Hund.\n")
        (tmp_path / "train.en").write_text("A dog.\n")
        result = train(tmp_path, tmp_path / "run", *extra, flag, str(missing), check=False)
        assert_one_clear_line(result, f"{missing}: no such file")
    result = run_module("training.evaluate_bleu", "--model", saved, "--test_file", missing)
    assert_one_clear_line(result, f"{missing}: no such file")


def test_bad_configs_name_the_field(tmp_path):
    (tmp_path / "garbage.json").write_text("{not json")
    negative = tmp_path / "negative"
    negative.mkdir()
    (negative / "config.json").write_text(json.dumps(tiny_config().to_dict() | {"d_model": -128}))
    for number, (args, message) in enumerate((
            (["--config_name", str(tmp_path / "garbage.json")], "--config_name"),
            (["--config_name", str(negative)], "`d_model` must be a positive integer, got -128"),
            (["--config_overrides", "d_model=abc"], "--config_overrides: d_model='abc' is not a int"))):
        command = train_command(tmp_path / f"run-{number}", "--max_steps", "1", *args)
        if args[0] == "--config_name":  # instead of the helper's --config_name tiny
            index = command.index("--config_name")
            del command[index : index + 2]
        result = train_in_process(tmp_path, command[3:])
        assert_one_clear_line(result, message)


@pytest.mark.parametrize("damage", ["vocab_size", "half", "header"])
def test_a_damaged_model_folder_is_reported_by_the_translate_cli(saved, tmp_path, damage):
    folder = tmp_path / "model"
    folder.mkdir()
    for path in saved.iterdir():
        if path.is_file():
            (folder / path.name).write_bytes(path.read_bytes())
    weights = (folder / "model.safetensors").read_bytes()
    if damage == "vocab_size":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 100}))
        message = "do not fit config.json"
    else:
        header = 8 + int.from_bytes(weights[:8], "little")
        (folder / "model.safetensors").write_bytes(weights[: len(weights) // 2 if damage == "half" else header])
        message = "model.safetensors is damaged or cut short"
    result = run_module("hf_vanilla_transformer.translate", "--model", folder, "Ein Hund.")
    assert_one_clear_line(result, f"--model {folder}", message)


def test_the_saved_tokenizer_carries_the_models_length_limit(saved):
    """`pipeline(..., truncation=True)` cuts a too-long input to the model's max_position_embeddings (128 here)."""
    assert json.loads((saved / "tokenizer_config.json").read_text())["model_max_length"] == 128
    translator = pipeline("translation", model=str(saved), trust_remote_code=True)
    assert translator("Ein Hund läuft über die Wiese. " * 60, truncation=True, num_beams=1, max_new_tokens=4)


def request(port: int, path: str) -> int:
    """The status the server answers `GET path` with (sent raw: http.client refuses control characters)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode("latin-1"))
        answer = connection.makefile("rb").readline()
    return int(answer.split()[1])


def test_the_page_server_serves_the_page_and_the_model_and_nothing_else(saved):
    """No folder listings, no server or test source, no hidden files, no way out of the model folder; a NUL byte
    gets 400 (it used to drop the connection with a ValueError in the server)."""
    import functools
    import http.server
    import threading

    sys.path.insert(0, str(ROOT / "web"))
    from serve import Handler

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, model=saved.resolve()))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_port
        for path in ("/", "/index.html", "/app.js", "/translator.js", "/model/config.json", "/model/tokenizer.json"):
            assert request(port, path) == 200, path
        for path in ("/serve.py", "/test/drive.mjs", "/package.json", "/node_modules/", "/model/", "/.git/config",
                     "/model/../serve.py", "/model/%2e%2e/serve.py", "/model/..%2f..%2fREADME.md", "/web/serve.py"):
            assert request(port, path) == 404, path
        for path in ("/%00", "/model/config.json%00.png", "/app.js\x00"):
            assert request(port, path) == 400, path
    finally:
        server.shutdown()


def test_the_page_server_names_a_bad_port_or_one_in_use(saved, tmp_path):
    import socket

    folder = tmp_path / "model"
    folder.mkdir()
    for path in saved.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "onnx").mkdir()
    (folder / "onnx" / "encoder_model.onnx").write_bytes(b"")  # what the command looks for first
    serve = [sys.executable, str(ROOT / "web" / "serve.py"), "--model", str(folder)]
    for port in ("70000", "-1", "http"):
        result = subprocess.run([*serve, "--port", port], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and f"{port!r} is not a port: give 0 to 65535" in result.stderr
    (folder / "onnx" / "encoder_model.onnx").unlink()
    (folder / "onnx").rmdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        sys.path.insert(0, str(ROOT / "web"))
        from serve import serve as start_server

        with pytest.raises(SystemExit, match=f"port {taken.getsockname()[1]} on 127.0.0.1 cannot be used .*--port"):
            start_server(folder, taken.getsockname()[1])


def test_hub_push_names_a_bad_repository_id_and_a_hub_out_of_reach(saved, monkeypatch):
    result = run_module("hf_vanilla_transformer.hub", "push", "--model", saved, "--repo_id", "bad repo id!!",
                        "--dry_run")  # checked in a dry run too, not only by the Hub
    assert_one_clear_line(result, "hub push: Repo id must use alphanumeric chars")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    result = run_module("hf_vanilla_transformer.hub", "push", "--model", saved, "--repo_id", "someone/model",
                        "--token", "hf_not_a_token")
    assert_one_clear_line(result, "hub push: could not upload to someone/model at http://127.0.0.1:9",
                          "none was made; check the network")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    result = run_module("hf_vanilla_transformer.hub", "push", "--model", saved, "--repo_id", "someone/model",
                        "--token", "hf_not_a_token")
    assert_one_clear_line(result, "hub push: could not upload to someone/model", "offline mode is enabled")


def test_a_finished_run_resumed_with_fewer_steps_is_refused_and_with_as_many_says_so(tmp_path):
    """It used to "train" nothing and save the model of the later step as if of the fewer, without a word."""
    output = tmp_path / "run"
    args = ["--eval_bleu_samples", "0", "--checkpointing_steps", "5"]
    train(tmp_path, output, "--max_steps", "10", *args)
    result = train(tmp_path, output, "--max_steps", "6", *args, "--resume_from_checkpoint", "latest", check=False)
    assert_one_clear_line(result, "the checkpoint resumed is of step 10, past this run's last step 6",
                          "--max_steps 10 or more")
    assert (output / "checkpoints" / "step-00000010").is_dir()  # nothing set aside
    result = train(tmp_path, output, "--max_steps", "10", *args, "--resume_from_checkpoint", "latest")
    assert "at step 10, --max_steps already: nothing to train" in result.stderr


def test_validation_or_test_data_that_is_the_training_data_is_refused(tmp_path):
    """Scored on its own training pairs, a model's card would call them validation or test results."""
    pairs = read_multi30k("train", "de", 200), read_multi30k("train", "en", 200)
    (tmp_path / "train.tsv").write_text("".join(f"{de}\t{en}\n" for de, en in zip(*pairs)))
    (tmp_path / "copy.tsv").write_bytes((tmp_path / "train.tsv").read_bytes())  # the same pairs under another name
    for flag, path in (("--validation_file", "train.tsv"), ("--test_file", "copy.tsv")):
        result = train(tmp_path, tmp_path / "run", "--train_file", str(tmp_path / "train.tsv"), flag,
                       str(tmp_path / path), "--max_steps", "2", check=False)
        assert_one_clear_line(result, f"{flag} {tmp_path / path} holds the same pairs as --train_file",
                              "pass held-out pairs")
    assert not (tmp_path / "run" / "model").exists()


def test_the_tokenizer_loads_without_the_package_as_the_readme_says(saved, tmp_path):
    """With trust_remote_code=True, or PreTrainedTokenizerFast, without a word; refused remote code gives the same
    tokenizer, with transformers' own warning about the config's model type (the README says so)."""
    code = ("from transformers import AutoTokenizer, PreTrainedTokenizerFast\n"
            f"folder = {str(saved)!r}\n"
            "loaded = [AutoTokenizer.from_pretrained(folder, trust_remote_code=True),\n"
            "          PreTrainedTokenizerFast.from_pretrained(folder)]\n"
            "import sys; print('REFUSED:', file=sys.stderr, flush=True)\n"
            "loaded.append(AutoTokenizer.from_pretrained(folder, trust_remote_code=False))\n"
            "print([t('Ein Hund läuft.')['input_ids'] for t in loaded])\n")
    result = run_python(code, tmp_path, block_package=True)
    assert result.returncode == 0, result.stderr[-3000:]
    ids = json.loads(result.stdout.strip().splitlines()[-1])
    assert ids[0] == ids[1] == ids[2]
    quiet, refused = result.stderr.split("REFUSED:")
    assert "vanilla_transformer" not in quiet, quiet
    assert "model of type `vanilla_transformer` to instantiate a model of type ``" in refused

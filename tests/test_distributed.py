"""Several processes on gloo: a preparation longer than `--ddp_timeout`; lost, stopped and hung processes; two
machines without a shared filesystem, with the same data or not; sharded training refused."""

import json
import os
import re
import signal
import subprocess
import time

import pytest
from conftest import ROOT
from test_training_runs import environment, train, train_command

from training.data import load_translation_dataset

SLOW_PREPARATION = """import sys, time
sys.path.insert(0, {root!r})
from training import train
load_data = train.load_data
def slow(run):  # the local main process prepares for longer
    if run.accelerator.is_local_main_process:
        time.sleep({seconds})
    load_data(run)
train.load_data = slow
train.cli()
"""


def launch(tmp_path, output, *args, preparation_seconds: int = 0) -> subprocess.Popen:
    """Two processes over gloo, in the background, their stderr piped; the local main process's preparation
    `preparation_seconds` longer."""
    command = train_command(output, *args, processes=2)
    if preparation_seconds:
        shim = tmp_path / "slow_train.py"
        shim.write_text(SLOW_PREPARATION.format(root=str(ROOT), seconds=preparation_seconds))
        module = command.index("-m", command.index("--main_process_port"))
        command[module : module + 2] = [str(shim)]
    return subprocess.Popen(command, cwd=ROOT, env=environment(tmp_path) | {"ACCELERATE_USE_CPU": "true"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_a_preparation_longer_than_ddp_timeout_does_not_time_out_a_launch(tmp_path):
    launcher = launch(tmp_path, tmp_path / "run", "--ddp_timeout", "3", "--max_steps", "6", "--checkpointing_steps",
                      "3", "--eval_bleu_samples", "0", preparation_seconds=10)
    stderr = launcher.communicate(timeout=600)[1]
    assert launcher.returncode == 0, stderr[-3000:]
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def processes_of(launcher, output) -> dict:
    """The pids of the launcher ("launcher") and its processes ("rank0", "rank1")."""
    deadline = time.time() + 120
    while True:
        ranks = {"launcher": launcher.pid}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/environ") as file:
                    environ = dict(item.split("=", 1) for item in file.read().split("\0") if "=" in item)
                with open(f"/proc/{pid}/cmdline") as file:
                    cmdline = file.read()
            except OSError:
                continue
            if environ.get("TORCHELASTIC_RUN_ID") and str(output) in cmdline:
                ranks["rank" + environ["RANK"]] = int(pid)
        if set(ranks) == {"launcher", "rank0", "rank1"}:
            return ranks
        assert time.time() < deadline and launcher.poll() is None, ranks
        time.sleep(0.1)


def ranks_once_checkpointed(launcher, output, step: int = 20) -> dict:
    """`processes_of` the launch, once checkpoint `step` is written."""
    deadline = time.time() + 300
    while not (output / "checkpoints" / f"step-{step:08d}").is_dir() and launcher.poll() is None:
        assert time.time() < deadline
        time.sleep(0.1)
    return processes_of(launcher, output)


FAULT_RUN = ["--max_steps", "400", "--checkpointing_steps", "10", "--eval_bleu_samples", "0", "--ddp_timeout", "30"]


@pytest.mark.parametrize("target, sent", [("rank1", signal.SIGKILL), ("rank0", signal.SIGKILL),
                                          ("launcher", signal.SIGTERM)])
def test_a_lost_or_stopped_process_ends_the_others_with_one_message_and_the_run_resumes(tmp_path, target, sent):
    """kill -9 of either process (rank 0 included, beside the launcher's store) or SIGTERM to the launcher, which
    passes it to every process: one message from the project, never a traceback from a process; then it resumes."""
    output = tmp_path / "run"
    launcher = launch(tmp_path, output, *FAULT_RUN)
    ranks = ranks_once_checkpointed(launcher, output)
    os.kill(ranks[target], sent)
    stderr = launcher.communicate(timeout=120)[1]
    assert launcher.returncode != 0 and not (output / "model").exists()
    # The message, after the end of a killed rank 0's progress bar where it left one unfinished.
    messages = [re.sub(r"^training: .*?(?=Rank |Stopped by)", "", line) for line in stderr.splitlines()
                if "lost the other processes" in line or "Stopped by" in line]
    assert len(messages) == 1, stderr[-3000:]
    if sent == signal.SIGKILL:
        survivor = 1 - int(target[-1])
        assert messages[0].startswith(f"Rank {survivor} of 2 lost the other processes at step ")
        assert f"{target[:4]} {target[-1]} (pid {ranks[target]}) ended" in messages[0]
    else:  # every process finished its step and checkpointed there
        assert messages[0].startswith("Stopped by SIGTERM after step ")
        step = int(messages[0].split("Stopped by SIGTERM after step ")[1].split(",")[0])
        assert (output / "checkpoints" / f"step-{step:08d}" / "random_states_1.pkl").is_file()
    assert "--resume_from_checkpoint latest" in messages[0]
    assert not any(f"[rank{rank}]: Traceback" in stderr or f"[rank{rank}]: RuntimeError" in stderr for rank in (0, 1))
    result = train(tmp_path, output, *FAULT_RUN[:1], "40", *FAULT_RUN[2:], "--resume_from_checkpoint", "latest",
                   processes=2)
    assert "Resumed from" in result.stderr and (output / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("target", ["rank0", "rank1"])
def test_a_process_lost_while_the_data_is_prepared_ends_the_launch_at_once_with_one_message(tmp_path, target):
    """The process preparing (rank 0) or one waiting for it (rank 1): the other stops within seconds, not after the
    preparation nor the launcher's 30 s grace, and says which process ended."""
    output = tmp_path / "run"
    launcher = launch(tmp_path, output, "--max_steps", "6", preparation_seconds=60)
    ranks = processes_of(launcher, output)
    while not (output / ".run-outputs.json").is_file():  # the end of `start`: both go on to the preparation
        assert launcher.poll() is None
        time.sleep(0.1)
    time.sleep(1)
    killed = time.time()
    os.kill(ranks[target], signal.SIGKILL)
    stderr = launcher.communicate(timeout=120)[1]
    assert time.time() - killed < 20
    messages = [line for line in stderr.splitlines() if "Stopped by" in line or "lost the other" in line]
    assert len(messages) == 1, stderr[-3000:]
    assert messages[0].startswith(f"rank {target[-1]} (pid {ranks[target]}) ended: Stopped by SIGTERM while ")
    assert not (output / "checkpoints").exists()


def test_a_hung_process_ends_the_others_after_ddp_timeout_with_one_message(tmp_path):
    """A process that stops answering (SIGSTOP: a hung GPU, a frozen machine) ends the others once a collective has
    waited --ddp_timeout seconds for it, not torch's default half hour."""
    output = tmp_path / "run"
    launcher = launch(tmp_path, output, *FAULT_RUN[:-1], "5")
    ranks = ranks_once_checkpointed(launcher, output)
    os.kill(ranks["rank1"], signal.SIGSTOP)
    stopped, message = time.time(), None
    for line in launcher.stderr:
        if "lost the other processes" in line:
            message = line
            break
    waited = time.time() - stopped
    os.kill(ranks["rank1"], signal.SIGKILL)  # what the launcher does only after its own 30 s grace
    launcher.communicate(timeout=120)
    assert message is not None and message.startswith("Rank 0 of 2 lost the other processes at step ")
    assert "a process did not answer for --ddp_timeout 5 s" in message, message
    # rank 0 may already have been waiting in a collective when rank 1 stopped, so the wait counted from the stop
    # can fall short of --ddp_timeout by up to one training step (a CI run measured 4.9986 s)
    assert 4 <= waited < 20, waited


def two_machines(tmp_path, *args) -> list[subprocess.CompletedProcess]:
    """The training command on two "machines" of one process each, on localhost: each its own working folder and
    data cache (nothing shared but the network), the same relative --output_dir."""
    command = train_command("run", *args, processes=2)  # one main process port for both
    command[command.index("--num_machines") + 1] = "2"
    launched = []
    for machine in (0, 1):
        folder = tmp_path / f"machine{machine}"
        folder.mkdir(exist_ok=True)
        env = environment(folder) | {"ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(ROOT)}
        where = ["--machine_rank", str(machine), "--main_process_ip", "127.0.0.1"]
        with open(folder / "stderr.txt", "w") as stderr:  # not a pipe: a full one would block its writer
            launched.append(subprocess.Popen([*command[:3], *where, *command[3:]], cwd=folder, env=env,
                                             stdout=subprocess.DEVNULL, stderr=stderr))
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=600), "", (tmp_path / f"machine{machine}" /
                                        "stderr.txt").read_text()) for machine, p in enumerate(launched)]


def test_two_machines_without_a_shared_filesystem_each_prepare_keep_checkpoints_and_resume(tmp_path):
    """Each machine's first process prepares the data into its own cache; each machine keeps a whole copy of the
    checkpoints (with its processes' random states) to resume from; only the main machine writes logs and model."""
    args = ["--max_steps", "20", "--checkpointing_steps", "10", "--eval_bleu_samples", "0"]
    main, other = two_machines(tmp_path, *args)
    assert main.returncode == other.returncode == 0, main.stderr[-3000:] + other.stderr[-3000:]
    assert "2 process(es) on 2 machine(s); each machine keeps its own copy of the checkpoints" in main.stderr
    for machine in ("machine0", "machine1"):
        assert any((tmp_path / machine / "hf_home" / "datasets").iterdir())  # prepared there
        checkpoint = tmp_path / machine / "run" / "checkpoints" / "step-00000020"
        assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "trainer_state.json").is_file()
        assert (tmp_path / machine / "run" / "tokenizer" / "tokenizer.json").is_file()
    assert (tmp_path / "machine0" / "run" / "model" / "model.safetensors").is_file()
    assert not any((tmp_path / "machine1" / "run" / name).exists() for name in ("model", "logs"))
    assert (tmp_path / "machine1" / "run" / "checkpoints" / "step-00000020" / "random_states_1.pkl").is_file()

    main, other = two_machines(tmp_path, "--max_steps", "30", *args[2:], "--resume_from_checkpoint", "latest")
    assert main.returncode == other.returncode == 0, main.stderr[-3000:] + other.stderr[-3000:]
    assert "Resumed from run/checkpoints/step-00000020 (step 20" in main.stderr
    assert (tmp_path / "machine1" / "run" / "checkpoints" / "step-00000030").is_dir()
    assert json.loads((tmp_path / "machine0" / "run" / "model" / "training_results.json").read_text())[
        "train_steps"] == 30


def test_machines_that_found_different_data_stop_before_training_with_one_message(tmp_path):
    """Machines without a shared filesystem given different files under one name: their batches would not be the
    shares of one step, so the run stops, naming what differs on which rank."""
    pairs = load_translation_dataset("de", "en")["train"].select(range(800))["translation"]
    for machine, part in ((0, pairs[:400]), (1, pairs[400:])):
        (tmp_path / f"machine{machine}").mkdir()
        (tmp_path / f"machine{machine}" / "train.tsv").write_text("".join(f"{p['de']}\t{p['en']}\n" for p in part))
    main, other = two_machines(tmp_path, "--train_file", "train.tsv", "--max_steps", "2", "--eval_bleu_samples", "0")
    assert main.returncode != 0 and other.returncode != 0
    messages = [line for line in (main.stderr + other.stderr).splitlines() if "The processes found different" in line]
    assert len(messages) == 1, main.stderr[-3000:] + other.stderr[-3000:]
    assert "the tokenizer" in messages[0] and "on rank 0" in messages[0] and "on rank 1" in messages[0]
    assert not (tmp_path / "machine0" / "run" / "checkpoints").exists()


def test_sharded_training_and_processes_that_each_train_alone_are_refused(tmp_path):
    for variable, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        env = environment(tmp_path) | {variable: "true"}  # what `accelerate config` sets for the processes
        result = subprocess.run(train_command(tmp_path / "run", "--max_steps", "2"), cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 1 and f"{name} is not supported" in result.stderr.splitlines()[-1]
    alone = subprocess.run(train_command(tmp_path / "alone", "--max_steps", "2", processes=2), cwd=ROOT,
                           env=environment(tmp_path), capture_output=True, text=True, timeout=300)
    assert alone.returncode != 0 and "ACCELERATE_USE_CPU=true" in alone.stderr
    assert not (tmp_path / "run").exists()

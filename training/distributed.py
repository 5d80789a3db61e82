"""The processes of a run, beyond Accelerate's collectives: waits that cannot time out, checks that every process
found the same, and one message when a process is lost.

A collective (a barrier, an all-reduce) fails once a process has not joined it for `--ddp_timeout` seconds: right
for a training step, whose peers are a moment apart, wrong for a wait whose length nobody knows (the preparation of
WMT-sized data, the final save). Those waits poll the key-value store that torchrun keeps for the processes instead,
without a deadline, and end early where a process published why it stopped or the launcher sent SIGTERM.
"""

import os
import socket
import time
import traceback

import torch
from accelerate.utils import broadcast_object_list, gather_object, parse_flag_from_env

KEYS = "hf_vanilla_transformer/"  # the store's keys of this module; the store is new for each launch
POLL_SECONDS = 0.5
ENDING_SECONDS = 2.0  # how long a process that lost a connection looks for the process of its machine that ended
# How `accelerate config` asks for sharded training, in the environment of the processes it launches.
SHARDING = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed",
            "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM"}
_first_report = {}  # per store: whether this process was the first of its run to report why it stopped


class Stopped(Exception):
    """The run cannot go on, for a reason the processes found together or another process published."""


def sharding_requested() -> str | None:
    """The sharded training `accelerate config` set up for this launch, if any (FSDP, DeepSpeed, Megatron-LM)."""
    return next((name for variable, name in SHARDING.items() if parse_flag_from_env(variable)), None)


def processes(accelerator) -> list[tuple[str, int, int]]:
    """(machine, local rank, pid) of every process, by rank."""
    return gather_object([(socket.gethostname(), accelerator.local_process_index, os.getpid())])


def from_main(accelerator, value):
    """The main process's `value`, on every process."""
    return broadcast_object_list([value])[0] if accelerator.num_processes > 1 else value


def store():
    """The process group's key-value store (torchrun's own, which outlives any one process), or None alone."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return None
    return torch.distributed.distributed_c10d._get_default_store()


def wait_for_all(accelerator, name: str, stop=None) -> None:
    """Wait until every process has come to `name`, however long that takes. A process that published why it stopped
    (`publish_failure`) ends the wait with its reason, and so does SIGTERM (`stop`, an Event) with its own."""
    kv = store()
    if kv is None or accelerator.num_processes == 1:
        return
    kv.add(KEYS + name, 1)
    while kv.add(KEYS + name, 0) < accelerator.num_processes:
        if kv.check([KEYS + "failed"]):
            raise Stopped(kv.get(KEYS + "failed").decode())
        if stop is not None and stop.is_set():
            raise Stopped(f"Stopped by SIGTERM while waiting for the other processes ({name}): nothing is lost; run "
                          "the same command again to go on")
        time.sleep(POLL_SECONDS)


def publish_failure(message: str) -> None:
    """Tell the processes waiting in `wait_for_all` why this one stopped; this process is the one to report it."""
    kv = store()
    if kv is not None:
        first_to_report()
        kv.set(KEYS + "failed", message)


def first_to_report() -> bool:
    """Whether this process is the first of its run to report why it stopped: the others stay silent, so that a run
    ends with one message, from whichever process lived to give it. True alone, or where the store is gone."""
    kv = store()
    if kv is None:
        return True
    if id(kv) not in _first_report:
        try:
            _first_report[id(kv)] = kv.add(KEYS + "reports", 1) == 1
        except RuntimeError:  # the store's host is gone with its machine
            _first_report[id(kv)] = True
    return _first_report[id(kv)]


def agree(accelerator, what: str, values: dict) -> None:
    """Raise `Stopped` where the processes found different `values` (name → value) of `what`."""
    if accelerator.num_processes == 1:
        return
    found = gather_object([(socket.gethostname(), values)])
    for name in values:
        if len({repr(v[name]) for _, v in found}) > 1:
            each = "; ".join(f"{v[name]} on rank {rank} ({machine})" for rank, (machine, v) in enumerate(found))
            raise Stopped(f"The processes found different {what}: {name} {each}. Give every machine the same files "
                          "and flags (and, to resume, the same checkpoints: a shared filesystem, or each its own copy)")


def agreed_problem(accelerator, problem: str | None) -> str | None:
    """The problem any process found (the first rank's, named where not all found it), on every process: they decide
    together, so that none goes on alone into a collective the others skip."""
    if accelerator.num_processes == 1:
        return problem
    found = gather_object([problem])
    rank, first = next(((rank, p) for rank, p in enumerate(found) if p), (None, None))
    return first if first is None or all(p == first for p in found) else f"rank {rank}: {first}"


def is_communication_failure(error: BaseException) -> bool:
    """Whether `error` came out of torch.distributed: a process that ended, hung past the timeout or cannot be
    reached (gloo and NCCL raise a plain `RuntimeError` for all of these)."""
    if isinstance(error, getattr(torch.distributed, "DistError", ())):
        return True
    frames = [frame.f_code.co_filename.replace(os.sep, "/") for frame, _ in traceback.walk_tb(error.__traceback__)]
    # DDP's all-reduce runs inside backward: its failure names the backend, not a torch.distributed frame.
    named = any(backend in str(error) for backend in ("/gloo/", "NCCL", "ProcessGroup"))
    return isinstance(error, RuntimeError) and (named or any("/torch/distributed/" in name for name in frames))


def lost_processes(peers: list, error: BaseException, ddp_timeout: int) -> str:
    """Which processes were lost, as far as this machine can tell: those of its own that ended, else the kind of
    failure the error shows. A killed process resets its connections before the kernel marks it ended: a lost
    connection is given `ENDING_SECONDS` to show which process it was."""
    timed_out = any(words in str(error).lower() for words in ("timed out", "timeout"))
    deadline = time.time() + (0 if timed_out else ENDING_SECONDS)
    while not (gone := ended(peers)) and time.time() < deadline:
        time.sleep(0.05)
    if gone:
        return gone
    if timed_out:
        return f"a process did not answer for --ddp_timeout {ddp_timeout} s (it hung, or its machine is unreachable)"
    return "a process on another machine ended or cannot be reached"


def ended(peers: list) -> str | None:
    """The processes of this machine that ended ("rank 1 (pid 123) ended"), or None."""
    here = socket.gethostname()
    gone = [f"rank {rank} (pid {pid})" for rank, (machine, _, pid) in enumerate(peers)
            if machine == here and pid != os.getpid() and not alive(pid)]
    return f"{', '.join(gone)} ended" if gone else None


def alive(pid: int) -> bool:
    """Whether process `pid` is running (not ended, nor ended and waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

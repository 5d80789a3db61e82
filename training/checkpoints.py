"""Checkpoints that survive faults, and checkpoint averaging (§6.1).

A checkpoint is `accelerator.save_state` (weights as safetensors, optimizer, scheduler, every process's RNG state)
plus `trainer_state.json`, written into a temporary folder that is renamed to `step-NNNNNNNN` once complete: a
killed run leaves at most a `.tmp-*` folder, which is never read. `trainer_state.json` records each file's size
and SHA-256, so a checkpoint damaged later is recognised and skipped in favour of the one before it; a checkpoint
that cannot be used is set aside as `unusable-step-NNNNNNNN`, where it is neither resumed, counted nor averaged.

The folders are written by a run's writer processes: the main process, and where a machine does not see the main
process's folder (no shared filesystem), that machine's local main process too, each keeping a whole copy of every
checkpoint (Accelerate's `save_on_each_node`) with its own processes' random states: what resuming there needs.
"""

import errno
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import torch
from accelerate.utils import load as load_accelerate_file
from safetensors import safe_open
from safetensors.torch import load_file

from hf_vanilla_transformer.loading import sha256_file

from . import distributed

try:
    import fcntl
except ImportError:  # not POSIX: runs into one folder are not locked
    fcntl = None

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
RECORD_NAME = ".run-outputs.json"  # what the runs in an output folder wrote there
LOW_DISK_BYTES = 256 << 20  # a writer failing with less free space than this ran out of it
STATE_NAME = "trainer_state.json"
WEIGHTS_NAME = "model.safetensors"
PREFIX = "step-"
SET_ASIDE_PREFIX = "unusable-"


def lock_output_dir(output: Path):
    """Hold an exclusive lock on OUTPUT/.lock while the run lives (`unlock_output_dir` releases it; the kernel drops
    it when the process and the children it forked end, killed or not, so a stale lock never blocks); raises
    `RuntimeError` naming the pid of a run that holds it already. The file holds the pid and a token new to this lock
    (`lock_holder`): a process that reads the same token sees the same folder."""
    output.mkdir(parents=True, exist_ok=True)
    file = open(output / LOCK_NAME, "a+")
    if fcntl is None:
        return file
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        holder = (file.read().split() or ["unknown"])[0]
        file.close()
        raise RuntimeError(f"another run (pid {holder}) is writing to {output}: wait for it to end, or pass another "
                           "--output_dir") from None
    file.seek(0)
    file.truncate()
    file.write(f"{os.getpid()} {uuid.uuid4().hex}")
    file.flush()
    return file


def unlock_output_dir(lock) -> None:
    """Release the lock `lock_output_dir` took, then close its file. Unlocked first: a process forked while the run
    held it (a data loader worker, torch.compile's compiler pool) shares the lock and can outlive the run for a
    moment; closing alone would leave the folder locked until the last of them ends."""
    if fcntl is not None:
        fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()


def lock_holder(output: Path) -> str | None:
    """What OUTPUT/.lock holds: the pid and token of the run that locked it last; None where there is none."""
    try:
        return (output / LOCK_NAME).read_text()
    except OSError:
        return None


def record_outputs(output: Path, names) -> None:
    """OUTPUT/RECORD_NAME: the files a run has written under `names` (its outputs in OUTPUT), added to those of the
    runs before it. Only these may `discard_outputs` delete. Written whole, then renamed."""
    listed = set(recorded_outputs(output) or ())
    listed |= {str(path.relative_to(output)) for name in names for path in files_under(output / name)}
    temporary = output / f".tmp-{RECORD_NAME}"
    temporary.write_text(json.dumps(sorted(listed), indent=0))
    os.replace(temporary, output / RECORD_NAME)


def recorded_outputs(output: Path) -> list[str] | None:
    """The files runs recorded writing in OUTPUT; None where no run left a record (the folder is not a run's)."""
    try:
        return json.loads((output / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None


def discard_outputs(output: Path, names) -> None:
    """Delete an earlier run's outputs `names` in OUTPUT for a clean start, and nothing a run did not write: a
    folder without a record, or a file the record does not list, stops it (`RuntimeError`) before anything goes."""
    listed = recorded_outputs(output)
    if listed is None:
        raise RuntimeError(f"{output} holds {', '.join(names)}, which no training run wrote (no {RECORD_NAME}): "
                           "move them away, or pass another --output_dir")
    found = [path for name in names for path in files_under(output / name)]
    unknown = sorted(str(path.relative_to(output)) for path in found
                     if str(path.relative_to(output)) not in listed and not half_written_checkpoint(output, path))
    if unknown:
        raise RuntimeError(f"{output} holds files no run wrote in the outputs --overwrite_output_dir would delete: "
                           f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}: move them away first")
    for path in found:
        path.unlink()
    for name in names:  # the folders, now empty of files
        if (output / name).is_dir():
            shutil.rmtree(output / name)
    (output / RECORD_NAME).unlink()


def half_written_checkpoint(output: Path, path: Path) -> bool:
    """Whether `path` lies in a checkpoint a killed run left half-written (`checkpoints/.tmp-step-…`), which its
    record cannot list: the run writes the folder under that name only, so it is the run's."""
    parts = path.relative_to(output).parts
    return len(parts) > 2 and parts[0] == "checkpoints" and parts[1].startswith(f".tmp-{PREFIX}")


def files_under(path: Path) -> list[Path]:
    """`path` if it is a file (or a link), else the files and links inside it, at any depth."""
    if path.is_symlink() or path.is_file():
        return [path]
    return [p for p in path.rglob("*") if p.is_symlink() or not p.is_dir()] if path.is_dir() else []


def checkpoint_dirs(root: str | os.PathLike) -> list[Path]:
    """The finished checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()]
    return sorted(found, key=step_of)


def step_of(path: Path) -> int:
    return int(path.name[len(PREFIX) :])


def save_checkpoint(accelerator, root: str | os.PathLike, step: int, state: dict, keep: int,
                    writer: bool = True) -> Path:
    """Write the training state for `step` atomically and keep only the newest `keep` checkpoints, this one always;
    `writer`: whether this process writes the folder on its machine.

    A full disk raises an `OSError` whose message names the folder; the checkpoints already written stay intact.
    """
    root = Path(root)
    final = root / f"{PREFIX}{step:08d}"
    temporary = root / f".tmp-{final.name}"
    try:
        if writer:
            shutil.rmtree(temporary, ignore_errors=True)
            temporary.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(temporary), safe_serialization=True)
        accelerator.wait_for_everyone()
        if writer:
            files = {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(temporary.iterdir())}
            with open(temporary / STATE_NAME, "w") as file:
                json.dump({**state, "step": step, "files": files}, file, indent=2)
                file.flush()
                os.fsync(file.fileno())
            shutil.rmtree(final, ignore_errors=True)
            os.replace(temporary, final)
    except BaseException as error:
        shutil.rmtree(temporary, ignore_errors=True)  # whatever stopped the writing: no half-written folder stays
        if not disk_is_full(error, root):
            raise
        kept = ", ".join(p.name for p in checkpoint_dirs(root)) or "none"
        raise OSError(f"No space left on device at {root}: the checkpoint of step {step} was not written "
                      f"(intact checkpoints: {kept}). Free some space, then resume with "
                      "--resume_from_checkpoint latest.") from None
    if writer and not state.get("interrupted"):
        # A checkpoint written off the schedule (the run was stopped) goes once a scheduled one follows it, and never
        # counts among the `keep`: a stopped and resumed run keeps and averages the checkpoints of an unstopped one.
        older = [p for p in checkpoint_dirs(root) if p != final]
        interrupted = [p for p in older if _was_interrupted(p)]
        scheduled = [p for p in older if p not in interrupted]
        for old in interrupted + scheduled[: max(len(scheduled) - (keep - 1), 0)]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def disk_is_full(error: BaseException, root: Path) -> bool:
    """Whether `error`, raised while writing under `root`, comes from a full disk: an `ENOSPC`, or a writer's own
    error (torch's zip writer says "[enforce fail at inline_container.cc] unexpected pos") with little space left."""
    if getattr(error, "errno", None) == errno.ENOSPC or "No space left" in str(error):
        return True
    return isinstance(error, (OSError, RuntimeError)) and shutil.disk_usage(root).free < LOW_DISK_BYTES


def _was_interrupted(path: Path) -> bool:
    try:
        return bool(read_state(path).get("interrupted"))
    except (OSError, ValueError):
        return False


def set_aside(path: Path, reason: str, writer: bool = True) -> None:
    """Rename an unusable checkpoint to `unusable-step-N` (kept for inspection, never used again), where `writer`."""
    if not writer:
        return
    target = path.with_name(SET_ASIDE_PREFIX + path.name)
    number = 1
    while target.exists():
        target, number = path.with_name(f"{SET_ASIDE_PREFIX}{number}-{path.name}"), number + 1
    logger.warning("Setting checkpoint %s aside as %s: %s", path, target.name, reason)
    os.replace(path, target)


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why the checkpoint at `path` cannot be used, or None when it is complete and intact."""
    path = Path(path)
    try:
        state = json.loads((path / STATE_NAME).read_text())
    except (OSError, ValueError) as error:
        return f"{STATE_NAME} is missing or unreadable ({error})"
    for name, expected in state.get("files", {}).items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected["size"] or sha256_file(file) != expected["sha256"]:
            return f"{name} is damaged (its size or checksum differs from when it was written)"
    if WEIGHTS_NAME not in state.get("files", {}):
        return f"{WEIGHTS_NAME} was never written"
    return None


def weights_problem(path: str | os.PathLike, model) -> str | None:
    """Why the checkpoint's weights do not fit `model` (another architecture or vocabulary), or None."""
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    with safe_open(Path(path) / WEIGHTS_NAME, framework="pt") as weights:
        for name in weights.keys():
            shape = tuple(weights.get_slice(name).get_shape())
            if expected.get(name) != shape:
                here = f"{expected[name]} here" if name in expected else "not in this model"
                return f"its weights are of another model ({name}: {shape} in the checkpoint, {here})"
    return None


def rng_state_problem(path: str | os.PathLike, process_index: int) -> str | None:
    """Why process `process_index` cannot restore its random state from the checkpoint, or None."""
    file = Path(path) / f"random_states_{process_index}.pkl"
    if not file.is_file():
        return f"{file.name} is missing"
    try:
        load_accelerate_file(file)
    except Exception as error:  # the same reader accelerate uses, which would otherwise only log an info line
        return f"{file.name} cannot be read ({type(error).__name__}: {error})"
    return None


def read_state(path: str | os.PathLike) -> dict:
    return json.loads((Path(path) / STATE_NAME).read_text())


def recorded_machine_choices(requested: str, root: Path) -> dict:
    """The flags that the machine which started a run chose for it, as the checkpoint to resume records them (the
    newest whose state can be read, for `latest`); {} where none records them."""
    candidates = [Path(requested)] if requested != "latest" else list(reversed(checkpoint_dirs(root)))
    for path in candidates:
        try:
            return dict(read_state(path).get("machine_choices", {}))
        except (OSError, ValueError, TypeError, AttributeError):
            continue  # damaged: `resume` says so and sets it aside
    return {}


def usable_checkpoints(root: str | os.PathLike) -> list[Path]:
    """The checkpoints under `root`, newest first, leaving out (with a warning) those that are damaged."""
    usable = []
    for path in reversed(checkpoint_dirs(root)):
        problem = checkpoint_problem(path)
        if problem is None:
            usable.append(path)
        else:
            logger.warning("Skipping checkpoint %s: %s", path, problem)
    return usable


def average_checkpoints(paths: list[str | os.PathLike]) -> dict[str, torch.Tensor]:
    """§6.1: the element-wise mean of the weights of several checkpoints (model.safetensors in each folder)."""
    if not paths:
        raise ValueError("No checkpoints to average")
    total, dtypes = {}, {}
    for path in paths:
        weights = load_file(Path(path) / WEIGHTS_NAME)
        if not total:
            dtypes = {name: tensor.dtype for name, tensor in weights.items()}
            total = {name: torch.zeros_like(tensor, dtype=torch.float64) for name, tensor in weights.items()}
        if weights.keys() != total.keys():
            raise ValueError(f"{path} holds other tensors than {paths[0]}: they are not checkpoints of one model")
        for name, tensor in weights.items():
            total[name] += tensor.double()
    return {name: (tensor / len(paths)).to(dtypes[name]) for name, tensor in total.items()}


def load_average(model, paths: list[str | os.PathLike]) -> None:
    """Load the average of the checkpoints' weights into `model`; every parameter must come from them (a weight
    tied to others is stored once, under any one of its names)."""
    average = average_checkpoints(paths)
    unexpected = model.load_state_dict(average, strict=False).unexpected_keys
    loaded = {model.get_parameter(name).data_ptr() for name in average if name not in unexpected}
    missing = [name for name, p in model.named_parameters() if p.data_ptr() not in loaded]
    if unexpected or missing:
        raise ValueError(f"The checkpoints do not fit the model: missing {missing}, unexpected {unexpected}")


def resume(requested: str, root: Path, accelerator, model, layout: dict, writer: bool = True) -> dict:
    """Load the newest usable checkpoint under `root` (or the one named) and return its state (step, epoch,
    batches done); with none usable, the state of a fresh start.

    A checkpoint that is damaged, cannot be read, or holds another model's weights is set aside (renamed, so that
    `--keep_checkpoints` and averaging never count it), and so are those newer than the one resumed. One written
    with another data `layout` (process count, accumulation, batch size, seed, data) raises `ValueError`. The
    processes decide together, checkpoint by checkpoint: all resume the same one, or all refuse; processes that see
    different checkpoints (machines without a shared filesystem that kept other ones) raise `distributed.Stopped`.
    """
    candidates = [Path(requested)] if requested != "latest" else list(reversed(checkpoint_dirs(root)))
    distributed.agree(accelerator, f"checkpoints under {root}", {"the checkpoints": [p.name for p in candidates]})
    partly_loaded = False
    for path in candidates:
        problem = distributed.agreed_problem(accelerator, checkpoint_problem(path) or weights_problem(path, model))
        if problem is None:
            state = read_state(path)
            check_layout(path, state.get("layout"), layout)  # before the random states: one per process
            problem = distributed.agreed_problem(accelerator, rng_state_problem(path, accelerator.process_index))
        if problem is None:
            try:
                accelerator.load_state(str(path))
            except Exception as error:  # a file that passed its checksum but still cannot be read
                problem = f"it cannot be loaded ({error})"
            problem = distributed.agreed_problem(accelerator, problem)
            partly_loaded |= problem is not None
        if problem is None:
            logger.info("Resumed from %s (step %d, epoch %d)", path, state["step"], state["epoch"])
            for newer in checkpoint_dirs(root):
                if step_of(newer) > state["step"]:
                    set_aside(newer, f"it is newer than {path.name}, the checkpoint resumed", writer)
            accelerator.wait_for_everyone()
            return state
        if requested != "latest":
            raise ValueError(f"Cannot resume from {requested}: {problem}")
        set_aside(path, problem, writer)
    accelerator.wait_for_everyone()
    if partly_loaded:
        raise ValueError(f"No checkpoint under {root} could be loaded, and one was loaded in part: start afresh with "
                         "--overwrite_output_dir")
    logger.warning("No usable checkpoint under %s: starting from scratch", root)
    return {"step": 0, "epoch": 0, "batches_done": 0}


def check_layout(path: Path, saved: dict | None, current: dict) -> None:
    """Refuse to resume a checkpoint whose batches were laid out otherwise: its position would be another one."""
    differences = [f"{name} {saved[name]} (now {current[name]})" for name in current
                   if saved is not None and name in saved and saved[name] != current[name]]
    if differences:
        raise ValueError(f"Cannot resume from {path}: it was written with {', '.join(differences)}, and where an epoch "
                         "stands depends on these. Resume with the same settings (e.g. `accelerate launch "
                         f"--num_processes {saved['num_processes']}`), or start a new run in another --output_dir.")

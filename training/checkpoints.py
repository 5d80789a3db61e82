"""Checkpoints that survive faults, and checkpoint averaging (§6.1).

A checkpoint is `accelerator.save_state` (weights as safetensors, optimizer, scheduler, every process's RNG state)
plus `trainer_state.json`, written into a temporary folder that is renamed to `step-NNNNNNNN` once complete: a
killed run leaves at most a `.tmp-*` folder, which is never read. `trainer_state.json` records each file's size
and SHA-256, so a checkpoint damaged later is recognised and skipped in favour of the one before it.
"""

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

logger = logging.getLogger(__name__)

STATE_NAME = "trainer_state.json"
WEIGHTS_NAME = "model.safetensors"
PREFIX = "step-"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_dirs(root: str | os.PathLike) -> list[Path]:
    """The finished checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def save_checkpoint(accelerator, root: str | os.PathLike, step: int, state: dict, keep: int) -> Path:
    """Write the training state for `step` atomically and keep only the newest `keep` checkpoints."""
    root = Path(root)
    final = root / f"{PREFIX}{step:08d}"
    temporary = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(temporary.iterdir())}
        with open(temporary / STATE_NAME, "w") as file:
            json.dump({**state, "step": step, "files": files}, file, indent=2)
            file.flush()
            os.fsync(file.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temporary, final)
        for old in checkpoint_dirs(root)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


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
        if file.stat().st_size != expected["size"] or _sha256(file) != expected["sha256"]:
            return f"{name} is damaged (its size or checksum differs from when it was written)"
    if WEIGHTS_NAME not in state.get("files", {}):
        return f"{WEIGHTS_NAME} was never written"
    return None


def read_state(path: str | os.PathLike) -> dict:
    return json.loads((Path(path) / STATE_NAME).read_text())


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

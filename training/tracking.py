"""What a training run reports: a JSON-lines Accelerate tracker that is always on, and the learning-curve PNG."""

import json
import logging
import os
from pathlib import Path

from accelerate.tracking import GeneralTracker, on_main_process

logger = logging.getLogger(__name__)


class JSONLTracker(GeneralTracker):
    """An Accelerate tracker writing one JSON object per `accelerator.log` call to `path`."""

    name = "jsonl"
    requires_logging_directory = False

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        self.path = Path(path)

    @on_main_process
    def start(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def tracker(self):
        return self.path

    @on_main_process
    def store_init_configuration(self, values: dict):
        self.path.with_name("hparams.json").write_text(json.dumps(values, indent=2, default=str))

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs):
        with open(self.path, "a") as file:
            file.write(json.dumps({"step": step, **values}) + "\n")


def read_log(path: str | os.PathLike) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def truncate_log(path: str | os.PathLike, step: int) -> None:
    """Drop the records after `step`: what a killed run logged past the checkpoint that training resumes from."""
    path = Path(path)
    if path.is_file():
        kept = [r for r in read_log(path) if r.get("step") is None or r["step"] <= step]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def plot_learning_curve(log_path: str | os.PathLike, png_path: str | os.PathLike) -> Path | None:
    """Training and validation loss (and validation BLEU where logged) against the step; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'hf-vanilla-transformer[plot]'): no learning curve")
        return None
    records = read_log(log_path)
    figure, loss_axis = plt.subplots(figsize=(7, 4))
    for key, label in (("train_loss", "training loss"), ("eval_loss", "validation loss")):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            loss_axis.plot(*zip(*points), label=label, marker="." if key == "eval_loss" else None)
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("label-smoothed cross-entropy")
    loss_axis.legend(loc="upper left")
    bleu = [(r["step"], r["eval_bleu"]) for r in records if "eval_bleu" in r]
    if bleu:
        bleu_axis = loss_axis.twinx()
        bleu_axis.plot(*zip(*bleu), color="tab:green", marker="o", label="validation BLEU (greedy)")
        bleu_axis.set_ylabel("BLEU")
        bleu_axis.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(png_path, dpi=120)
    plt.close(figure)
    return Path(png_path)

"""Train the Transformer with the paper's recipe, anywhere Accelerate runs, and save a Hub-ready model.

    python -m training.train                                      # the main job: Multi30k de→en on a CPU
    accelerate launch --num_processes 8 -m training.train --config_name base --mixed_precision bf16 ...

Data-parallel (DDP) on one machine or several, from `accelerate config`; sharded training (FSDP, DeepSpeed) is
refused: the paper's models fit one GPU. The run writes, under `--output_dir`: `checkpoints/` (atomic, resumable),
`tokenizer/`, `logs/` (JSONL, TensorBoard) and `model/`, the Hub-ready folder with the averaged final weights, the
tokenizer, the model card and the learning curve.
"""


import argparse
import contextlib
import errno
import hashlib
import importlib.util
import logging
import math
import os
import re
import shutil
import signal
import threading
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import islice
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import DataCollatorForSeq2Seq

from hf_vanilla_transformer import plot_attention
from hf_vanilla_transformer.cli import non_negative_int, positive_int
from hf_vanilla_transformer.ctranslate2_backend import QUANTIZATIONS, check_exportable, import_ctranslate2
from hf_vanilla_transformer.decoding import decoding_options
from hf_vanilla_transformer.hub import save_for_hub
from hf_vanilla_transformer.metrics import BLEU_STYLES, corpus_bleu, load_bleu, paper_bleu
from hf_vanilla_transformer.onnx_backend import check_exportable as check_onnx_exportable
from hf_vanilla_transformer.onnx_backend import import_onnx_exporter

from . import checkpoints, distributed
from .build import DEFAULT_VOCAB_SIZE, PRESETS, build_model, build_tokenizer
from .data import DataError, TokenBatchSampler, lengths, load_translation_dataset, tokenize
from .evaluation import translate_split, validation_loss
from .recipe import (
    RECIPES,
    TOKENS_PER_STEP,
    label_smoothed_loss,
    paper_learning_rate,
    paper_optimizer,
    split_tokens_per_step,
)
from .tracking import JSONLTracker, plot_learning_curve, truncate_log

logger = logging.getLogger("training.train")

# Everything a run writes into --output_dir; --overwrite_output_dir removes all of it.
RUN_OUTPUTS = ("checkpoints", "tokenizer", "logs", "model", "learning_curve.png", "attention.png", "translations.txt")
STOP_REQUESTED = threading.Event()  # set by SIGTERM
MAX_LOG_PERPLEXITY = 700.0  # math.exp overflows a float past ~709.8
DEFAULT_MAX_TOKENS = 2048  # a batch of the main job on a CPU
MAX_NON_FINITE_STEPS = 10  # updates skipped in a row for a non-finite gradient before the run stops
DEFAULT_EPOCHS = 10
MAIN_JOB_EPOCHS = {"medium": 8}  # what fits the main job's ~10 minutes on 2 cores, where it differs


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=RECIPES, default=None,
                        help="the paper's hyperparameters for its WMT14 run (§5, §6.1); a flag given overrides its "
                        "value, and local files (--train_file ...) replace its dataset")
    model = parser.add_argument_group("model")
    model.add_argument("--config_name", default=None,
                       help=f"a preset ({', '.join(PRESETS)}) or a config.json path; default: the main job's, "
                       "medium where the run trains in bf16 on a CPU with AMX, else small")
    model.add_argument("--model_name_or_path", default=None,
                       help="continue training a saved model (with its own tokenizer unless --tokenizer_name)")
    model.add_argument("--tokenizer_name", default=None, help="a saved tokenizer; default: learn one on the data")
    model.add_argument("--vocab_size", type=positive_int, default=None,
                       help=f"size of a newly learned BPE vocabulary (default {DEFAULT_VOCAB_SIZE})")
    model.add_argument("--dropout", type=float, default=None, help="override the preset's dropout")
    model.add_argument("--config_overrides", default=None,
                       help='other config fields, e.g. "normalize_before=true,attention_dropout=0.1"')
    model.add_argument("--label_smoothing_factor", "--label_smoothing", dest="label_smoothing", type=float,
                       default=0.1, help="ε_ls of the training loss (§5.4; HF Trainer's flag); the logged and saved "
                       "model's losses and perplexities are the plain cross-entropy")
    model.add_argument("--attn_implementation", default=None,
                       help="default: eager on CPUs (it trains 1.5x faster there than SDPA), sdpa elsewhere")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", default=None, help="a Hub dataset; default: the embedded Multi30k")
    data.add_argument("--dataset_config_name", default=None)
    data.add_argument("--train_file", default=None,
                      help=".tsv, .jsonl or a parallel-text prefix (PREFIX.de, PREFIX.en)")
    data.add_argument("--validation_file", default=None)
    data.add_argument("--test_file", default=None)
    data.add_argument("--source_lang", default="de")
    data.add_argument("--target_lang", default="en")
    data.add_argument("--max_train_samples", type=positive_int, default=None)
    data.add_argument("--tokenizer_sample_size", type=positive_int, default=None,
                      help="learn the BPE vocabulary on a random sample of this many training pairs; default: all")
    data.add_argument("--preprocessing_num_workers", type=positive_int, default=None,
                      help="processes that tokenize the data (once: the result is cached); default: one, whose "
                      "tokenizer uses every core")
    data.add_argument("--max_eval_samples", type=positive_int, default=None)
    data.add_argument("--max_train_source_tokens", type=positive_int, default=None,
                      help="train only on pairs whose source has at most this many tokens (length generalisation)")
    optim = parser.add_argument_group("optimisation (§5)")
    optim.add_argument("--num_train_epochs", type=float, default=None,
                       help=f"default: {', '.join(f'{n} for {name}' for name, n in MAIN_JOB_EPOCHS.items())}, "
                       f"else {DEFAULT_EPOCHS}")
    optim.add_argument("--max_steps", type=positive_int, default=None,
                       help="stop after this many steps (overrides epochs)")
    optim.add_argument("--learning_rate", type=float, default=2e-3,
                       help="peak rate, reached after warmup; 0: the paper's d_model^-0.5 · warmup^-0.5")
    optim.add_argument("--warmup_steps", type=positive_int, default=200)
    optim.add_argument("--max_tokens", type=positive_int, default=None,
                       help=f"tokens per batch and process (default {DEFAULT_MAX_TOKENS})")
    optim.add_argument("--gradient_accumulation_steps", type=positive_int, default=None, help="default 1")
    optim.add_argument("--tokens_per_step", type=positive_int, default=None,
                       help=f"tokens per optimizer step over all processes (§5.1: {TOKENS_PER_STEP}); "
                       "sets --max_tokens, "
                       "or --gradient_accumulation_steps where --max_tokens is given")
    optim.add_argument("--max_grad_norm", type=float, default=0.0, help="clip gradients to this norm; 0: no clipping")
    optim.add_argument("--mixed_precision", default="auto", choices=["auto", "no", "fp16", "bf16"],
                       help="auto: bf16 where the hardware multiplies bf16 natively; fp16 with loss scaling on a GPU "
                       "without it (V100, T4); else no (float32)")
    optim.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=None,
                       help="float32 matrix products on TF32 tensor cores (HF Trainer's flag); default: on where the "
                       "GPU has them (Ampere and newer)")
    optim.add_argument("--seed", type=int, default=42)
    optim.add_argument("--ddp_timeout", type=positive_int, default=1800,
                       help="seconds a collective of several processes waits for a missing one before the run stops "
                       "(HF Trainer's flag); waits of unknown length (preparing the data, saving) have none")
    speed = parser.add_argument_group("speed (HF Trainer's flags)")
    speed.add_argument("--torch_compile", action="store_true",
                       help="compile the model with torch.compile: pays on a GPU over a long run; each new batch "
                       "shape compiles first, until its lengths are made dynamic")
    speed.add_argument("--dataloader_num_workers", type=non_negative_int, default=None,
                       help="processes that collate the next batches while the step runs; default: 2 where the run "
                       "trains on a GPU, else 0 (on a CPU they would take cores from the step)")
    speed.add_argument("--dataloader_pin_memory", action=argparse.BooleanOptionalAction, default=None,
                       help="batches in page-locked memory, copied to the GPU without blocking; default: on a GPU")
    ckpt = parser.add_argument_group("checkpoints")
    ckpt.add_argument("--output_dir", default="outputs/multi30k-de-en")
    ckpt.add_argument("--overwrite_output_dir", action="store_true", help="discard an earlier run's checkpoints")
    ckpt.add_argument("--checkpointing_steps", type=positive_int, default=120)
    ckpt.add_argument("--keep_checkpoints", type=positive_int, default=5)
    ckpt.add_argument("--average_checkpoints", type=positive_int, default=5,
                      help="average the last N checkpoints for the final model (§6.1: 5 for base, 20 for big)")
    ckpt.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or `latest`")
    ckpt.add_argument("--export_ctranslate2", nargs="?", const="float32", default=None, choices=QUANTIZATIONS,
                      metavar="QUANTIZATION", help="also export the final model to CTranslate2 in model/ctranslate2 "
                      "(float32 unless a quantization is named: int8, float16, ...); needs the [ctranslate2] extra")
    ckpt.add_argument("--export_onnx", action="store_true", help="also export the final model to ONNX (float32 "
                      "and int8) in model/onnx, for ONNX Runtime and transformers.js; needs the [onnx] extra")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--eval_steps", type=positive_int, default=None,
                            help="validate every N steps; default: per epoch")
    evaluation.add_argument("--eval_bleu_samples", type=non_negative_int, default=500,
                            help="validation sentences translated (greedily) for the BLEU logged during training")
    evaluation.add_argument("--eval_split", default="test", choices=["validation", "test"],
                            help="the split of the final BLEU (§6.1: newstest2014); validation where there is no test")
    evaluation.add_argument("--num_beams", type=positive_int, default=None,
                            help="beam size of the final BLEU; default: the model's (§6.1: 4)")
    evaluation.add_argument("--length_penalty", type=float, default=None,
                            help="length penalty of the final BLEU; default: the model's (§6.1: 0.6)")
    evaluation.add_argument("--bleu_style", choices=BLEU_STYLES, default="sacrebleu",
                            help="paper: also the final tokenized, compound-split BLEU of the paper's WMT14 tables "
                            "(needs sacremoses)")
    evaluation.add_argument("--logging_steps", type=positive_int, default=20)
    evaluation.add_argument("--with_tracking", action=argparse.BooleanOptionalAction, default=True,
                            help="log to the trackers of --report_to besides the JSONL log")
    evaluation.add_argument("--report_to", default="tensorboard",
                            help="Accelerate trackers, e.g. tensorboard, wandb, all")
    recipe = parser.parse_known_args(argv)[0].recipe
    if recipe:
        parser.set_defaults(**RECIPES[recipe])
    args = parser.parse_args(argv)
    if recipe:  # local files replace the recipe's dataset; a saved model or tokenizer, its architecture or vocabulary
        preset, local = RECIPES[recipe], any((args.train_file, args.validation_file, args.test_file))
        replaced = {"dataset_name": local, "dataset_config_name": local, "config_name": args.model_name_or_path,
                    "vocab_size": args.model_name_or_path or args.tokenizer_name}
        for name, by in replaced.items():
            if by and getattr(args, name) == preset[name]:
                setattr(args, name, None)
    ranges = {"learning_rate": (0, math.inf), "num_train_epochs": (1e-9, math.inf), "max_grad_norm": (0, math.inf),
              "label_smoothing": (0, 0.999), "dropout": (0, 0.999), "length_penalty": (-math.inf, math.inf)}
    for name, (low, high) in ranges.items():
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and low <= value <= high):
            parser.error(f"--{name} {value}: expected a finite number in [{low}, {high}]")
    if args.source_lang == args.target_lang:
        parser.error(f"--source_lang and --target_lang are both {args.source_lang!r}: a translation needs two"
                     " languages")
    # Flags that a saved model or tokenizer makes moot are refused, not dropped.
    moot = {"--config_name": args.model_name_or_path and args.config_name,
            "--vocab_size": (args.model_name_or_path or args.tokenizer_name) and args.vocab_size}
    for flag, given in moot.items():
        if given:
            source = "--model_name_or_path" if args.model_name_or_path else "--tokenizer_name"
            parser.error(f"{flag} cannot apply with {source}: the saved model or tokenizer fixes it; drop {flag}")
    return args



class RunStopped(Exception):
    """The run cannot go on; the message says why and what to do. `cli` prints it and exits with status 1."""


@dataclass
class Run:
    """What the phases of a run share: its arguments and Accelerator, the data, the model and its optimisation,
    and where training stands (`step`, `epoch`, `batches_done`: the batches of this epoch already trained on)."""

    args: argparse.Namespace
    accelerator: Accelerator
    output: Path
    phases: defaultdict = field(default_factory=lambda: defaultdict(float))  # minutes per phase of the job
    started: float = field(default_factory=time.time)
    lock: object = None  # the output folder's lock, held while the run lives (`writer` processes)
    peers: list = field(default_factory=list)  # (machine, local rank, pid) of each process, by rank
    writer: bool = True  # writes the checkpoints and tokenizer: the main process, and each machine's local main
    # process where that machine does not see the main process's folder
    saved_tokenizer: bool = False  # the folder held a tokenizer (of the run this one resumes) when the run started
    raw: dict = None  # the text pairs of each split
    data: dict = None  # the tokenized pairs of each split
    too_long: dict = None  # per split, the pairs left out for being longer than the model's positions
    bleu_pairs: list = None  # the validation pairs translated for the BLEU logged during training
    bleu_metric: object = None
    tokenizer: object = None
    model: torch.nn.Module = None  # as Accelerate prepared it (wrapped for DDP with several processes)
    compiled: torch.nn.Module = None  # the model compiled for the training step (--torch_compile)
    unwrapped: torch.nn.Module = None  # the model itself
    collator: DataCollatorForSeq2Seq = None
    train_loader: DataLoader = None
    optimizer: torch.optim.Optimizer = None
    scheduler: object = None
    learning_rate: float = 0.0  # the peak
    steps_per_epoch: int = 0
    max_steps: int = 0
    machine_choices: dict = field(default_factory=dict)  # unset flags, as the machine that started the run set them
    layout: dict = None  # what the position within an epoch depends on: a checkpoint resumes only under the same
    step: int = 0
    epoch: int = 0
    batches_done: int = 0

    @property
    def checkpoint_root(self) -> Path:
        return self.output / "checkpoints"

    def release(self) -> None:
        """Unlock the output folder."""
        if self.lock is not None:
            checkpoints.unlock_output_dir(self.lock)
            self.lock = None


def main(argv=None) -> dict:
    """The run, phase after phase; returns what `model/training_results.json` holds."""
    run = start(parse_args(argv))
    try:
        with one_report(run):
            with local_main_process_first(run):
                load_data(run)
                build(run)
                tokenize_data(run)
            prepare_training(run)
            train(run)
            results = evaluate(run)
            save(run, results)
    finally:  # what it wrote is on the record, and the folder free again for the next run (a notebook, a test)
        with contextlib.suppress(OSError):  # a full disk must not hide what stopped the run
            record_outputs(run)
        run.release()
    return results


def cli(argv=None) -> None:
    """The command line: SIGTERM (what schedulers and spot instances send before they kill) ends the run after the
    current step, with a checkpoint to resume from; a run that cannot go on exits with its message, given once
    for all its processes (by the first to stop; the others exit silently with status 1)."""
    signal.signal(signal.SIGTERM, request_stop)
    try:
        main(argv)
    except RunStopped as error:
        raise SystemExit(str(error) if distributed.first_to_report() else 1) from None
    except Exception as error:
        if distributed.is_communication_failure(error) and not distributed.first_to_report():
            raise SystemExit(1) from None  # a consequence: the process that failed first reports it
        distributed.first_to_report()  # this traceback is the report: the others' consequences stay silent
        raise


def request_stop(signum, frame) -> None:
    """SIGTERM during training: the run stops after the current step, with a checkpoint there."""
    STOP_REQUESTED.set()


@contextmanager
def stopped_at_once_by_sigterm(what: str):
    """Where the command line's `request_stop` handles SIGTERM, in this block it stops the run at once: nothing in
    it would be lost (a preparation keeps what it cached), and a launcher gives its processes 30 s before it kills."""
    def stop(signum=None, frame=None):
        raise distributed.Stopped(f"Stopped by SIGTERM while {what}: what was cached stays; run the same command again "
                                  "to go on")

    if signal.getsignal(signal.SIGTERM) is not request_stop:
        yield
        return
    if STOP_REQUESTED.is_set():
        stop()
    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, request_stop)


@contextmanager
def local_main_process_first(run: Run):
    """The block (the data's preparation) runs in the local main process of each machine, which caches what it
    prepares, then in the others, which load it from that cache. Every process waits for all machines' preparation
    without a deadline (`distributed.wait_for_all`): a preparation as long as WMT's never times a launch out."""
    accelerator = run.accelerator
    if not accelerator.is_local_main_process:
        distributed.wait_for_all(accelerator, "prepared", STOP_REQUESTED)
    with data_cache_failures(), stopped_at_once_by_sigterm("preparing the data"):
        yield
    if accelerator.is_local_main_process:
        distributed.wait_for_all(accelerator, "prepared", STOP_REQUESTED)


@contextmanager
def one_report(run: Run):
    """What stops one process reaches the others: those waiting for it (`distributed.wait_for_all`) stop with its
    reason, and a process whose collective failed because another was lost stops with one line that says which,
    and how to resume."""
    try:
        yield
    except Exception as error:
        if isinstance(error, distributed.Stopped):  # the launcher's SIGTERM follows a process that ended
            gone = distributed.ended(run.peers)
            error = RunStopped(f"{gone}: {error}" if gone else str(error))
        elif run.accelerator.num_processes > 1 and distributed.is_communication_failure(error):
            error = RunStopped(lost_contact(run, error))
        with contextlib.suppress(RuntimeError):  # the store may be gone with the machine that held it
            failure = f"rank {run.accelerator.process_index} failed ({type(error).__name__}: {error})"
            distributed.publish_failure(str(error) if isinstance(error, RunStopped) else failure)
        if isinstance(error, RunStopped):
            raise error from None
        raise


def lost_contact(run: Run, error: Exception) -> str:
    """The message of a process whose collective failed: which process was lost, and how to go on."""
    args = run.args
    lost = distributed.lost_processes(run.peers, error, args.ddp_timeout)
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    reason = re.sub(r"^\[[^\]]*\] ", "", reason).split(". ")[0][:200]  # gloo's: "[file:line] What. Advice.
    kept = checkpoints.checkpoint_dirs(run.checkpoint_root)
    resume = (f"the newest checkpoint is {kept[-1].name} in {run.checkpoint_root}: run the same command with "
              "--resume_from_checkpoint latest to continue" if kept else "no checkpoint was written: run it again")
    return (f"Rank {run.accelerator.process_index} of {run.accelerator.num_processes} lost the other processes at "
            f"step {run.step}: {lost} ({reason}); {resume}")


def start(args) -> Run:
    """The Accelerator, logging and the output folder (locked; an earlier run's outputs kept or removed)."""
    if args.mixed_precision == "auto":
        args.mixed_precision = native_mixed_precision()
    if args.tf32 and not tf32_available():
        raise RunStopped("error: --tf32: this machine has no GPU with TF32 tensor cores (Ampere or newer)")
    args.tf32 = tf32_available() if args.tf32 is None else args.tf32
    if args.tf32:
        torch.set_float32_matmul_precision("high")  # TF32 for the float32 matrix products (autocast's are bf16)
    output = Path(args.output_dir)
    trackers = [JSONLTracker(output / "logs" / "log.jsonl")]
    if args.with_tracking:
        trackers += args.report_to.split(",")
    if sharding := distributed.sharding_requested():
        raise RunStopped(f"error: {sharding} is not supported: the paper's models (213M parameters for the big one) "
                         "fit one GPU, so the run is data-parallel (DDP); answer `accelerate config` with multi-GPU "
                         "and no FSDP or DeepSpeed")
    # The process group's collectives give up after --ddp_timeout seconds (HF Trainer's flag).
    accelerator = Accelerator(mixed_precision=args.mixed_precision, log_with=trackers,
                              project_dir=str(output / "logs"), step_scheduler_with_optimizer=False,
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=args.ddp_timeout))])
    set_up_logging(accelerator.is_main_process)
    logger.info("%s; %d process(es) on %s; mixed precision: %s", accelerator.distributed_type,
                accelerator.num_processes, accelerator.device, accelerator.mixed_precision)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise RunStopped(f"error: {launched} processes were launched, but each trains alone ({accelerator.device}, "
                         f"{accelerator.distributed_type}): without GPUs, launch with ACCELERATE_USE_CPU=true for "
                         "data-parallel training over gloo")
    on_gpu = accelerator.device.type == "cuda"
    if args.dataloader_num_workers is None:
        args.dataloader_num_workers = 2 if on_gpu else 0
    args.dataloader_pin_memory = on_gpu and args.dataloader_pin_memory is not False  # nothing to pin for without one
    run = Run(args, accelerator, output)
    run.peers = distributed.processes(accelerator)
    run.machine_choices = main_job_choices(args, run.checkpoint_root)
    if args.recipe:
        logger.info("--recipe %s: %s", args.recipe, " ".join(f"--{name} {getattr(args, name)}"
                                                             for name in RECIPES[args.recipe]))
    if args.tokens_per_step:
        try:
            args.max_tokens, args.gradient_accumulation_steps = split_tokens_per_step(
                args.tokens_per_step, accelerator.num_processes, args.max_tokens, args.gradient_accumulation_steps)
        except ValueError as error:
            raise RunStopped(f"error: {error}") from None
        logger.info("--tokens_per_step %d: --max_tokens %d × %d process(es) × --gradient_accumulation_steps %d",
                    args.tokens_per_step, args.max_tokens, accelerator.num_processes, args.gradient_accumulation_steps)
    args.max_tokens = args.max_tokens or DEFAULT_MAX_TOKENS
    args.gradient_accumulation_steps = args.gradient_accumulation_steps or 1
    if args.bleu_style == "paper" and importlib.util.find_spec("sacremoses") is None:  # now, not after training
        raise RunStopped("--bleu_style paper needs sacremoses (Moses tokenization): "
                         "pip install 'hf-vanilla-transformer[wmt]'")
    if args.export_ctranslate2:
        try:
            import_ctranslate2()  # now, not after training
        except ImportError as error:
            raise RunStopped(f"--export_ctranslate2: {error}") from None
    if args.export_onnx:
        try:
            import_onnx_exporter()  # now, not after training
        except ImportError as error:
            raise RunStopped(f"--export_onnx: {error}") from None
    set_seed(args.seed, device_specific=True)
    lock_output_folder(run)
    earlier = [name for name in RUN_OUTPUTS if (output / name).exists() or (output / name).is_symlink()]
    problem = None
    if args.resume_from_checkpoint is None and earlier:
        unrecorded = checkpoints.recorded_outputs(output) is None
        if unrecorded:
            problem = (f"error: {output} holds {', '.join(earlier)}, which no training run wrote: move them away, or "
                       "pass another --output_dir")
        elif not args.overwrite_output_dir:
            problem = (f"{output} holds an earlier run ({', '.join(earlier)}): resume it with "
                       "--resume_from_checkpoint latest, or pass --overwrite_output_dir to start afresh")
    if problem := distributed.agreed_problem(accelerator, problem):
        run.release()
        raise RunStopped(problem)
    if args.resume_from_checkpoint is None and earlier and run.writer:
        # A clean start: no old log, tokenizer, checkpoint or model survives.
        try:
            checkpoints.discard_outputs(output, earlier)
        except RuntimeError as error:
            problem = f"error: {error}"
    if problem := distributed.agreed_problem(accelerator, problem):
        run.release()
        raise RunStopped(problem)
    run.saved_tokenizer = (output / "tokenizer" / "tokenizer.json").is_file()
    record_outputs(run)
    return run


def set_up_logging(main_process: bool) -> None:
    """Warnings from every process; the run's progress from the main one."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)  # "Removed shared tensor": the tied embeddings
    if main_process:
        logging.getLogger("training").setLevel(logging.INFO)


def lock_output_folder(run: Run) -> None:
    """The main process locks the output folder; a machine whose local main process does not find the main
    process's lock there (no shared filesystem) locks and writes its own copy (`Run.writer`)."""
    accelerator, output = run.accelerator, run.output
    problem = None
    if accelerator.is_main_process:
        try:
            run.lock = checkpoints.lock_output_dir(output)  # held until the run ends (`Run.release`) or its process
        except RuntimeError as error:
            problem = f"error: {error}"
    if problem := distributed.agreed_problem(accelerator, problem):
        raise RunStopped(problem)
    token = distributed.from_main(accelerator, checkpoints.lock_holder(output))
    run.writer = accelerator.is_main_process or (accelerator.is_local_main_process
                                                 and checkpoints.lock_holder(output) != token)
    if run.writer and not accelerator.is_main_process:
        try:
            run.lock = checkpoints.lock_output_dir(output)
        except RuntimeError as error:
            problem = f"error: {error}"
    if problem := distributed.agreed_problem(accelerator, problem):
        run.release()
        raise RunStopped(problem)
    accelerator.project_configuration.save_on_each_node = run.writer
    if accelerator.num_processes > 1:
        machines = sum(local_rank == 0 for _, local_rank, _ in run.peers)
        logger.info("%d process(es) on %d machine(s); %s", accelerator.num_processes, machines,
                    "one output folder" if accelerator.reduce(torch.tensor(int(run.writer)), "sum") == 1
                    else "each machine keeps its own copy of the checkpoints")


def record_outputs(run: Run) -> None:
    """Add the files the run has written so far to its output folder's record (the writer processes)."""
    if run.writer:
        run.output.mkdir(parents=True, exist_ok=True)
        checkpoints.record_outputs(run.output, RUN_OUTPUTS)


def load_data(run: Run) -> None:
    """The text pairs of each split (`--max_*_samples` of them) and the run's tokenizer."""
    args = run.args
    try:
        with timed(run.phases, "reading_data"):
            raw = load_translation_dataset(args.source_lang, args.target_lang, args.dataset_name,
                                           args.dataset_config_name, args.train_file, args.validation_file,
                                           args.test_file)
    except DataError as error:
        raise RunStopped(f"error: {error}") from None
    if "train" not in raw:
        raise RunStopped(f"The data has no train split (only {sorted(raw)}): pass --train_file or a dataset with one")
    if args.max_train_samples is not None:
        raw["train"] = raw["train"].select(range(min(args.max_train_samples, len(raw["train"]))))
    for split in set(raw) - {"train"}:
        if args.max_eval_samples is not None:
            raw[split] = raw[split].select(range(min(args.max_eval_samples, len(raw[split]))))
    run.raw = raw
    try:
        with timed(run.phases, "learning_vocabulary"):
            run.tokenizer = build_tokenizer(args, raw["train"], run.output / "tokenizer", run.saved_tokenizer,
                                            run.writer)
    except (OSError, ValueError) as error:
        raise RunStopped(str(error)) from None


def build(run: Run) -> None:
    """The model: a new one of `--config_name`, or the saved `--model_name_or_path`; one that `--export_ctranslate2`
    or `--export_onnx` cannot export is refused now, not after training."""
    try:
        run.model = build_model(run.args, run.tokenizer, run.accelerator.device)
    except (OSError, ValueError) as error:
        raise RunStopped(f"error: {error}") from None
    if run.args.export_ctranslate2:
        try:
            check_exportable(run.model.config)
        except ValueError as error:
            raise RunStopped(f"error: --export_ctranslate2: {error}") from None
    if run.args.export_onnx:
        try:
            check_onnx_exportable(run.model.config)
        except ValueError as error:
            raise RunStopped(f"error: --export_onnx: {error}") from None


def tokenize_data(run: Run) -> None:
    """Token ids of every split; pairs longer than the model's positions are left out, and counted."""
    args, raw, max_length = run.args, run.raw, run.model.config.max_position_embeddings
    with timed(run.phases, "tokenizing"):
        run.data = {split: tokenize(raw[split], run.tokenizer, args.source_lang, args.target_lang, max_length,
                                    args.preprocessing_num_workers) for split in raw}
    run.too_long = {split: len(raw[split]) - len(run.data[split]) for split in raw}
    if args.max_train_source_tokens is not None:
        run.data["train"] = run.data["train"].filter(lambda ids: len(ids) <= args.max_train_source_tokens,
                                                     input_columns="input_ids", desc="Keeping short sources")
        logger.info("Training on the %d pairs whose source has at most %d tokens", len(run.data["train"]),
                    args.max_train_source_tokens)
    for split, count in run.too_long.items():
        if count:
            logger.warning("%d pairs of %r are longer than max_position_embeddings=%d tokens: left out of training "
                           "and the validation loss; BLEU translates their truncated sources", count, split, max_length)


def prepare_training(run: Run) -> None:
    """§5.1's token batches, §5.3's optimizer and schedule, Accelerate's preparation, and the resumed state."""
    args, accelerator = run.args, run.accelerator
    # Every process, on every machine, prepared the same: or their batches would not be the shares of one step.
    vocabulary = (run.tokenizer.backend_tokenizer.to_str() if hasattr(run.tokenizer, "backend_tokenizer")
                  else repr(sorted(run.tokenizer.get_vocab().items())))
    tokenizer = hashlib.sha256(vocabulary.encode()).hexdigest()[:16]
    splits = {f"the {split} split (pairs, tokens)": (len(data), int(lengths(data).sum()))
              for split, data in run.data.items()}
    distributed.agree(accelerator, "data", {"the tokenizer": tokenizer, **splits})
    train_lengths = lengths(run.data["train"])
    if (over := int((train_lengths > args.max_tokens).sum())) > 0:  # a batch is never larger than --max_tokens
        logger.warning("%d training pairs are longer than --max_tokens %d: left out of training", over,
                       args.max_tokens)
        run.data["train"] = run.data["train"].select(np.flatnonzero(train_lengths <= args.max_tokens))
        train_lengths = lengths(run.data["train"])
    # §5.1: batches of about `max_tokens` tokens per process, by approximate length.
    try:
        sampler = TokenBatchSampler(train_lengths, args.max_tokens, args.seed,
                                    accelerator.num_processes, accelerator.process_index,
                                    args.gradient_accumulation_steps)
    except ValueError as error:
        raise RunStopped(f"error: the training data: {error}") from None
    run.collator = DataCollatorForSeq2Seq(run.tokenizer, label_pad_token_id=-100,
                                          pad_to_multiple_of=8 if accelerator.device.type == "cuda" else None)
    # Its own generator keeps the loader from drawing on the global RNG, which resuming must replay exactly. Its
    # workers collate the next batches during the step; the sampler stays in this process (`set_epoch`).
    workers = args.dataloader_num_workers
    run.train_loader = DataLoader(run.data["train"].remove_columns("length"), batch_sampler=sampler,
                                  collate_fn=run.collator, generator=torch.Generator(), num_workers=workers,
                                  persistent_workers=workers > 0, pin_memory=args.dataloader_pin_memory)
    run.steps_per_epoch = len(sampler) // args.gradient_accumulation_steps
    run.max_steps = args.max_steps or math.ceil(args.num_train_epochs * run.steps_per_epoch)

    optimizer, scheduler = paper_optimizer(run.model, args.warmup_steps, args.learning_rate)
    run.learning_rate = optimizer.defaults["lr"]
    run.model, run.optimizer, run.scheduler = accelerator.prepare(run.model, optimizer, scheduler)
    # Mixed precision through `accelerator.autocast()` around each forward, without the wrapper that also copies
    # every output to float32: the loss is computed inside the model, and nothing reads a float32 copy of the logits.
    run.unwrapped = accelerator.unwrap_model(run.model, keep_fp32_wrapper=False)
    if args.torch_compile:  # the training step's forward and backward; checkpoints and evaluation use the model
        run.compiled = torch.compile(run.model)

    run.layout = {"num_processes": accelerator.num_processes,
                  "gradient_accumulation_steps": args.gradient_accumulation_steps, "max_tokens": args.max_tokens,
                  "seed": args.seed, "train_pairs": len(run.data["train"])}
    if args.resume_from_checkpoint:
        try:
            state = checkpoints.resume(args.resume_from_checkpoint, run.checkpoint_root, accelerator, run.unwrapped,
                                       run.layout, run.writer)
        except (ValueError, distributed.Stopped) as error:
            raise RunStopped(str(error)) from None
        run.step, run.epoch, run.batches_done = state["step"], state["epoch"], state["batches_done"]
        if run.step > run.max_steps:  # its model is of more steps than the run would report
            raise RunStopped(f"error: the checkpoint resumed is of step {run.step}, past this run's last step "
                             f"{run.max_steps} (--max_steps, else --num_train_epochs): pass --max_steps {run.step} or "
                             "more to go on from it, or an earlier checkpoint's folder to --resume_from_checkpoint")
        if run.step == run.max_steps:
            logger.warning("The run resumed is at step %d, --max_steps already: nothing to train; its checkpoints "
                           "are averaged, evaluated and saved again", run.step)
        if accelerator.is_main_process:
            truncate_log(run.output / "logs" / "log.jsonl", run.step)  # the killed run's records after the checkpoint
    hparams = {**vars(args), "learning_rate": run.learning_rate, "num_processes": accelerator.num_processes,
               "distributed_type": accelerator.distributed_type.value,
               "max_steps": run.max_steps, "parameters": run.unwrapped.num_parameters()}
    accelerator.init_trackers("train", config={k: v for k, v in hparams.items() if v is not None})
    if run.step == 0:
        accelerator.log({f"{split}_pairs_too_long": count for split, count in run.too_long.items()}, step=0)
    record_outputs(run)  # the tokenizer and the logs: what a run killed before its first checkpoint leaves
    run.bleu_pairs = run.raw["validation"]["translation"][: args.eval_bleu_samples] if "validation" in run.data else []
    run.bleu_metric = load_bleu()
    paper_peak = paper_learning_rate(run.unwrapped.config.d_model, args.warmup_steps)
    logger.info("%d parameters; %d steps of %d per epoch; peak learning rate %.2e (%.2f × the paper's)",
                run.unwrapped.num_parameters(), run.max_steps, run.steps_per_epoch, run.learning_rate,
                run.learning_rate / paper_peak)
    run.phases["setup"] = (time.time() - run.started) / 60 - sum(run.phases.values())  # all else before step 1


def train(run: Run) -> None:
    """Steps until `max_steps`: each logged, validated and checkpointed on its schedule, validation also after
    each epoch unless `--eval_steps` sets the schedule. A step is queued on the device without waiting for it: the
    host reads what it needs (tokens, a stop request, a non-finite gradient) a step later, or at once on the steps
    that log, validate or checkpoint (`Steps.settle`)."""
    args = run.args
    loop_started = time.time()
    run.model.train()
    steps = Steps()
    # The progress bar is closed (its line ended) before any message the run stops with.
    with tqdm(total=run.max_steps, initial=run.step, disable=not run.accelerator.is_local_main_process,
              desc="training") as progress:
        window = {"tokens": 0, "seconds": 0.0, "loss": 0.0}  # since the last log
        while run.step < run.max_steps:
            run.train_loader.batch_sampler.set_epoch(run.epoch, start=run.batches_done)
            for micro_batches in groups(run.train_loader, args.gradient_accumulation_steps):
                step_started = time.time()
                window["loss"] += train_step(run, micro_batches, steps)
                logging_step = run.step % args.logging_steps == 0 or run.step == run.max_steps
                eval_step = (args.eval_steps and run.step % args.eval_steps == 0) or run.step == run.max_steps
                checkpoint_step = run.step % args.checkpointing_steps == 0 or run.step == run.max_steps
                window["tokens"] += steps.settle(run, every=logging_step or eval_step or checkpoint_step)
                window["seconds"] += time.time() - step_started
                progress.update(1)
                if logging_step:
                    log_training(run, window, progress)
                if eval_step:
                    validate(run)
                if checkpoint_step:
                    save_checkpoint(run)
                elif steps.stop:
                    save_checkpoint(run, interrupted=True)
                if steps.stop:
                    raise RunStopped(f"Stopped by SIGTERM after step {run.step}, whose checkpoint is in "
                                     f"{run.checkpoint_root}: run the same command with --resume_from_checkpoint "
                                     "latest to continue")
                if run.step == run.max_steps:
                    break
            else:  # the epoch is over
                run.epoch, run.batches_done = run.epoch + 1, 0
                if not args.eval_steps:
                    validate(run)
    run.phases["training_steps"] = (time.time() - loop_started) / 60 - sum(
        run.phases[name] for name in ("checkpoints", "validation_loss", "validation_bleu"))
    run.accelerator.wait_for_everyone()


class Steps:
    """What the host learns of the queued steps, read without stalling the device: for each step, its target tokens
    (all processes), whether a process was asked to stop (SIGTERM), and whether its gradient was finite (the same
    on every process, after DDP's all-reduce), copied to the host as the device gets there."""

    def __init__(self):
        self.queued = []  # (step, the copy of its flags on their way to the host, the copy's event)
        self.non_finite = []  # the steps in a row whose gradient was not finite (their updates skipped)
        self.stop = False

    def add(self, step: int, flags: torch.Tensor) -> None:
        """Start copying a step's flags (target tokens, stop requests, a non-finite gradient) to the host."""
        event = None
        if flags.device.type == "cuda":
            copy = torch.empty(flags.shape, dtype=flags.dtype, pin_memory=True)
            copy.copy_(flags, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            flags = copy
        self.queued.append((step, flags, event))

    def settle(self, run: Run, every: bool) -> int:
        """Read the flags of every queued step but the newest (the device is past them), or of `every` one; returns
        the target tokens read. A stop request sets `stop`; too many non-finite gradients in a row stop the run."""
        tokens = 0
        while self.queued and (every or len(self.queued) > 1):
            step, flags, event = self.queued.pop(0)
            if event is not None:
                event.synchronize()
            step_tokens, stop, non_finite = flags.tolist()
            tokens += step_tokens
            self.stop = self.stop or stop > 0
            if not non_finite:
                self.non_finite.clear()
                continue
            self.non_finite.append(step)
            logger.warning("step %d: the gradient norm is not finite; the update is skipped", step)
            if len(self.non_finite) == MAX_NON_FINITE_STEPS:
                raise diverged(run, f"the gradient norm was not finite at steps {self.non_finite[0]}-"
                                    f"{self.non_finite[-1]}")
        return tokens


def train_step(run: Run, micro_batches: list, steps: Steps) -> torch.Tensor:
    """One optimizer step over the micro-batches, queued without waiting for the device; returns its summed loss (on
    the device). A non-finite gradient skips the update, on the device: fused Adam's `found_inf`, as loss scaling
    uses it."""
    accelerator, model = run.accelerator, run.model
    forward = model if run.compiled is None else run.compiled  # (a compiled module has no truth value)
    # The step's target tokens, counted on the host before the copy, and a stop request, summed over the processes
    # in one reduction: a step's loss is its summed token losses over all its target tokens, whatever the process
    # count, and every process learns whether any was asked to stop.
    flags = torch.tensor([sum(int((b["labels"] != -100).sum()) for b in micro_batches), int(STOP_REQUESTED.is_set())])
    if accelerator.device.type == "cuda":
        flags = flags.pin_memory()
    flags = accelerator.reduce(flags.to(accelerator.device, non_blocking=True), "sum")
    normalizer = flags[0] / accelerator.num_processes  # DDP averages the processes' gradients
    step_loss = 0.0
    for i, batch in enumerate(micro_batches):
        batch = batch.to(accelerator.device, non_blocking=True)
        decoder_input_ids = run.unwrapped.prepare_decoder_input_ids_from_labels(batch["labels"])  # §3.1's offset
        with nullcontext() if i == len(micro_batches) - 1 else accelerator.no_sync(model):
            with accelerator.autocast():
                logits = forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 decoder_input_ids=decoder_input_ids).logits
                loss = label_smoothed_loss(logits, batch["labels"], run.args.label_smoothing) / normalizer
            accelerator.backward(loss)
        step_loss += loss.detach()
    # Without a limit the "clipping" only measures the norm (the gradients are multiplied by exactly 1).
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), run.args.max_grad_norm or math.inf)
    non_finite = ~torch.isfinite(grad_norm)
    adam = run.optimizer.optimizer
    if accelerator.mixed_precision == "fp16":  # loss scaling skips the overflowing steps itself
        non_finite = torch.zeros_like(non_finite)
        run.optimizer.step()
    elif adam.defaults.get("fused"):
        adam.found_inf = non_finite.float()
        run.optimizer.step()
    elif not non_finite:  # no fused Adam on this device: the host waits for the norm
        run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    run.batches_done += len(micro_batches)
    steps.add(run.step, torch.cat([flags, non_finite[None].to(flags.dtype)]))
    return step_loss


def log_training(run: Run, window: dict, progress) -> None:
    """Log the training loss and speed since the last log, and stop a run whose loss shows it diverged."""
    steps_logged = run.step % run.args.logging_steps or run.args.logging_steps
    train_loss = run.accelerator.reduce(window["loss"], "mean").item() / steps_logged
    vocab_size = run.unwrapped.config.vocab_size
    if run.step > run.args.warmup_steps and train_loss > 2 * math.log(vocab_size):
        raise diverged(run, f"the training loss is {train_loss:.3g} at step {run.step}, more than twice a uniform "
                            f"guess's (ln {vocab_size} = {math.log(vocab_size):.2f})")
    tokens_per_second = window["tokens"] / window["seconds"]
    run.accelerator.log({"train_loss": train_loss, "learning_rate": run.scheduler.get_last_lr()[0],
                         "target_tokens": window["tokens"], "target_tokens_per_step": window["tokens"] / steps_logged,
                         "target_tokens_per_second": tokens_per_second,
                         "epoch": run.epoch}, step=run.step)
    progress.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tokens_per_second:.0f}")
    window.update(tokens=0, seconds=0.0, loss=0.0)


def validate(run: Run) -> None:
    """The validation loss and the greedy BLEU of the first `--eval_bleu_samples` validation sentences, logged."""
    if "validation" not in run.data:
        return
    args = run.args
    with timed(run.phases, "validation_loss"):
        metrics = {"eval_loss": validation_loss(run.model, run.data["validation"], run.collator, run.accelerator,
                                                args.max_tokens)}
    pairs = run.bleu_pairs
    if pairs:
        with timed(run.phases, "validation_bleu"):
            run.unwrapped.eval()
            hypotheses = translate_split(run.unwrapped, run.tokenizer, [p[args.source_lang] for p in pairs],
                                         run.accelerator, args.max_tokens, num_beams=1)
            run.unwrapped.train()
            references = [p[args.target_lang] for p in pairs]
            metrics["eval_bleu"] = corpus_bleu(hypotheses, references, run.bleu_metric)["score"]
    run.accelerator.log(metrics, step=run.step)
    logger.info("step %d: %s", run.step, ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))


def save_checkpoint(run: Run, interrupted: bool = False) -> None:
    """The training state at this step, written atomically (never weights that are not finite)."""
    if not all(p.isfinite().all() for p in run.unwrapped.parameters()):
        raise diverged(run, f"the weights are not finite at step {run.step}")
    state = {"epoch": run.epoch, "batches_done": run.batches_done, "learning_rate": run.learning_rate,
             "layout": run.layout, "machine_choices": run.machine_choices, "interrupted": interrupted}
    with timed(run.phases, "checkpoints"):
        try:
            checkpoints.save_checkpoint(run.accelerator, run.checkpoint_root, run.step, state,
                                        run.args.keep_checkpoints, run.writer)
        except OSError as error:
            raise RunStopped(str(error)) from None
        record_outputs(run)


def diverged(run: Run, what: str) -> RunStopped:
    kept = ", ".join(p.name for p in checkpoints.checkpoint_dirs(run.checkpoint_root)) or "none"
    return RunStopped(f"Training diverged: {what} (learning rate {run.scheduler.get_last_lr()[0]:.2e}), so the run "
                      "stops without saving a model. Lower --learning_rate or clip with --max_grad_norm, then start "
                      f"afresh with --overwrite_output_dir, or resume an intact checkpoint ({kept}) with "
                      "--resume_from_checkpoint.")


def evaluate(run: Run) -> dict:
    """§6.1: average the last checkpoints, then the perplexity of the validation split and the BLEU of the
    evaluation split with beam search; returns the results."""
    args, accelerator, model = run.args, run.accelerator, run.unwrapped
    started = time.time()
    # The main process averages its checkpoints and gives every process the result: all evaluate the model it saves.
    usable, problem = [], None
    if accelerator.is_main_process:
        usable = checkpoints.usable_checkpoints(run.checkpoint_root)[: args.average_checkpoints]
        try:
            checkpoints.load_average(model, usable)
        except (OSError, ValueError) as error:
            problem = f"error: averaging the checkpoints in {run.checkpoint_root}: {error}"
    if problem := distributed.agreed_problem(accelerator, problem):
        raise RunStopped(problem)
    if accelerator.num_processes > 1:
        usable = distributed.from_main(accelerator, usable)
        for tensor in model.state_dict().values():
            torch.distributed.broadcast(tensor, src=0)
    model.eval()
    results = {"train_minutes": round((started - run.started) / 60, 1), "train_steps": run.step,
               "train_epochs": round(run.step / run.steps_per_epoch, 1), "averaged_checkpoints": len(usable)}
    if "validation" in run.data:  # of the averaged model, per target token (Table 3's PPL)
        nll = validation_loss(run.model, run.data["validation"], run.collator, accelerator, args.max_tokens,
                              autocast=False)  # as saved
        results["validation_perplexity"] = round(math.exp(nll), 2) if nll < MAX_LOG_PERPLEXITY else None
        if results["validation_perplexity"] is None:
            logger.warning("The validation loss is %.3g: its perplexity overflows, and is left out", nll)
        model.eval()
    split = args.eval_split if args.eval_split in run.raw else ("validation" if "validation" in run.raw else None)
    if split != args.eval_split:
        logger.warning("The data has no %s split: the final BLEU is %s", args.eval_split,
                       f"on {split}" if split else "left out")
    decoding = decoding_options(model.generation_config, args.num_beams, args.length_penalty)
    results.update(decoding)
    if split is not None:
        pairs = run.raw[split]["translation"]
        sources = [p[args.source_lang] for p in pairs]
        hypotheses = translate_split(model, run.tokenizer, sources, accelerator, args.max_tokens, autocast=False,
                                     **decoding)
        bleu = corpus_bleu(hypotheses, [p[args.target_lang] for p in pairs], run.bleu_metric)
        if accelerator.is_main_process:
            (run.output / "translations.txt").write_text("".join(f"{line}\n" for line in hypotheses), encoding="utf-8")
        results.update(bleu=round(bleu["score"], 2), bleu_signature=bleu["signature"], eval_split=split,
                       eval_sentences=len(sources), example_source=sources[0].replace('"', "'"))
        if args.bleu_style == "paper":
            paper = paper_bleu(hypotheses, [p[args.target_lang] for p in pairs], args.target_lang)
            results.update(paper_bleu=round(paper["score"], 2), paper_bleu_signature=paper["signature"],
                           paper_bleu_line=f"BLEU as the paper computed it: **{paper['score']:.2f}** "
                                           f"(`{paper['signature']}`).")
            logger.info("%s BLEU %.2f as the paper computed it (%s)", split, paper["score"], paper["signature"])
        accelerator.log({f"{split}_bleu": bleu["score"]}, step=run.step)
        logger.info("%s BLEU %.2f (%s) with the average of %d checkpoints", split, bleu["score"], bleu["signature"],
                    len(usable))
    run.phases["final_evaluation"] = (time.time() - started) / 60
    results["phase_minutes"] = {name: round(minutes, 2) for name, minutes in run.phases.items()}
    return results


def save(run: Run, results: dict) -> None:
    """The Hub-ready folder OUTPUT/model: the averaged model, tokenizer, results, model card and figures."""
    args, accelerator, model = run.args, run.accelerator, run.unwrapped
    started = time.time()
    if accelerator.is_main_process:
        folder = run.output / "model"
        dataset = args.dataset_name or ("multi30k" if not args.train_file else Path(args.train_file).stem)
        results.update(
            model_name=f"vanilla-transformer-{dataset.split('/')[-1]}-{args.source_lang}-{args.target_lang}",
            dataset=dataset, train_sentences=len(run.raw["train"]), warmup_steps=args.warmup_steps,
            learning_rate=f"{run.learning_rate:.2e}", dropout=model.config.dropout,
            label_smoothing=args.label_smoothing, max_tokens=args.max_tokens,
            num_processes=accelerator.num_processes, gradient_accumulation_steps=args.gradient_accumulation_steps,
            parameters=model.num_parameters(),
            hardware=describe_hardware(accelerator), mixed_precision=accelerator.mixed_precision,
        )
        figures = {"learning_curve": plot_learning_curve(run.output / "logs" / "log.jsonl",
                                                         run.output / "learning_curve.png")}
        if "example_source" in results and importlib.util.find_spec("matplotlib"):
            figures["attention_plot"] = plot_attention(model, run.tokenizer, results["example_source"],
                                                       path=run.output / "attention.png")
        captions = {"learning_curve": "Loss and greedy validation BLEU during training:",
                    "attention_plot": "The last layer's attention weights (one column per head) when it translates "
                                      "the first test sentence:"}
        results.update({name: f"{captions[name]}\n\n![{name}]({path.name})" if path else ""
                        for name, path in figures.items()})
        results.setdefault("attention_plot", "")
        try:
            save_for_hub(folder, model, run.tokenizer, results, args.export_ctranslate2, args.export_onnx)
        except (ImportError, ValueError) as error:
            raise RunStopped(f"{folder}: {error}") from None
        for path in filter(None, figures.values()):
            shutil.copy(path, folder / path.name)
        run.phases["figures_and_saving"] = (time.time() - started) / 60
        logger.info("Saved the Hub-ready model to %s (%.1f minutes in all: %s)", folder,
                    (time.time() - run.started) / 60,
                    ", ".join(f"{name} {minutes:.2f}" for name, minutes in run.phases.items()))
    distributed.wait_for_all(accelerator, "saved")  # however long the main process takes to save
    accelerator.end_training()
    record_outputs(run)


@contextmanager
def data_cache_failures():
    """A full disk, or a cache folder that cannot be written, while `datasets` caches the data: one line naming the
    cache. (`datasets` renames its files into place only when written whole: a later run reads none half-written.)"""
    try:
        yield
    except Exception as error:
        chain = [error]  # the error and those it was raised from or during (a chain can loop back on itself)
        while (link := chain[-1].__cause__ or chain[-1].__context__) is not None and link not in chain:
            chain.append(link)
        cache = str(datasets.config.HF_DATASETS_CACHE)
        failed = next((link for link in chain if isinstance(link, OSError) and (
            link.errno == errno.ENOSPC or str(link.filename or "").startswith(cache))), None)
        if failed is None:
            raise
        raise RunStopped(f"{failed.strerror or failed} while caching the data in {cache}: free space there, or set "
                         "HF_DATASETS_CACHE to a writable folder on a disk with room") from None


@contextmanager
def timed(phases: dict, name: str):
    """Add the minutes the block takes to `phases[name]`."""
    started = time.time()
    yield
    phases[name] += (time.time() - started) / 60


def groups(iterable, size: int):
    """Consecutive lists of `size` items (the last may be shorter): the micro-batches of each step."""
    iterator = iter(iterable)
    while group := list(islice(iterator, size)):
        yield group


def native_mixed_precision() -> str:
    """bf16 where the hardware multiplies bf16 matrices natively (a GPU from Ampere on, a CPU with AVX-512 BF16 or
    AMX); fp16, with accelerate's loss scaling, on an older GPU (V100, T4), whose tensor cores multiply fp16; else
    "no": emulated, a bf16 matrix product is two orders of magnitude slower than a float32 one."""
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return "bf16" if cpu_supports("avx512_bf16") or cpu_supports("amx_tile") else "no"


def tf32_available() -> bool:
    """A GPU with TF32 tensor cores (compute capability 8.0, Ampere, and newer)."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


def cpu_supports(feature: str) -> bool:
    """torch.cpu's `_is_{feature}_supported()`, False where this torch lacks the check."""
    return getattr(torch.cpu, f"_is_{feature}_supported", lambda: False)()


def main_job_model(mixed_precision: str) -> str:
    """The main job's preset: `medium` where it trains in bf16 on a CPU with AMX tiles, whose bf16 matrix products
    (~2 TFLOP/s on 2 cores) leave the step bound by its other work, so that twice the width costs 1.6 times the
    time per token and reached test BLEU 39.19 against `small`'s 37.05 (benchmarks/README.md); `small` elsewhere."""
    amx = not torch.cuda.is_available() and cpu_supports("amx_tile")
    return "medium" if mixed_precision == "bf16" and amx else "small"


def main_job_choices(args, checkpoint_root: Path) -> dict:
    """Set `--config_name` and `--num_train_epochs` where they were left unset, and return what was set so: the main
    job's model for this hardware and its epochs, or, for a resumed run, what the machine that started it chose
    (its checkpoints record it), so that a run resumed on another kind of CPU goes on with the same model."""
    chosen = {}
    if args.config_name is None and args.model_name_or_path is None:
        chosen["config_name"] = main_job_model(args.mixed_precision)
    if args.num_train_epochs is None:
        chosen["num_train_epochs"] = MAIN_JOB_EPOCHS.get(args.config_name or chosen.get("config_name"), DEFAULT_EPOCHS)
    if args.resume_from_checkpoint:
        recorded = checkpoints.recorded_machine_choices(args.resume_from_checkpoint, checkpoint_root)
        for name, value in recorded.items():
            if name in chosen and value != chosen[name]:
                logger.info("--%s %s, as the machine that started this run chose (this one would choose %s)",
                            name, value, chosen[name])
                chosen[name] = value
    for name, value in chosen.items():
        setattr(args, name, value)
    return chosen


def describe_hardware(accelerator) -> str:
    if accelerator.device.type == "cuda":
        return f"{accelerator.num_processes} × {torch.cuda.get_device_name()}"
    return f"a CPU ({accelerator.num_processes} process(es) of {torch.get_num_threads()} threads)"


if __name__ == "__main__":
    cli()

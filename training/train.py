"""Train the Transformer with the paper's recipe, anywhere Accelerate runs, and save a Hub-ready model.

    python -m training.train                                      # the main job: Multi30k de→en on a CPU
    accelerate launch --num_processes 8 -m training.train --config_name base --mixed_precision bf16 ...

Multi-node, FSDP and DeepSpeed come from `accelerate config`, with no change here. The run writes, under
`--output_dir`: `checkpoints/` (atomic, resumable), `tokenizer/`, `logs/` (JSONL, TensorBoard) and `model/`, the
Hub-ready folder with the averaged final weights, the tokenizer, the model card and the learning curve.
"""

import argparse
import importlib.util
import json
import logging
import math
import shutil
import signal
import threading
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from itertools import islice
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoTokenizer, DataCollatorForSeq2Seq, get_inverse_sqrt_schedule

from hf_vanilla_transformer import (
    VanillaTransformerConfig,
    VanillaTransformerForConditionalGeneration,
    plot_attention,
    record_tokenizer,
    train_tokenizer,
)
from hf_vanilla_transformer.export import QUANTIZATIONS, import_ctranslate2
from hf_vanilla_transformer.hub import save_for_hub
from hf_vanilla_transformer.metrics import corpus_bleu, load_bleu
from hf_vanilla_transformer.translate import load_model, positive_int, translate
from training import checkpoints
from training.data import DataError, TokenBatchSampler, load_translation_dataset, tokenize
from training.tracking import JSONLTracker, plot_learning_curve, truncate_log

logger = logging.getLogger("training.train")

# Everything a run writes into --output_dir; --overwrite_output_dir removes all of it.
RUN_OUTPUTS = ("checkpoints", "tokenizer", "logs", "model", "learning_curve.png", "attention.png", "translations.txt")
DEFAULT_VOCAB_SIZE = 6000
PRESETS = {"tiny": VanillaTransformerConfig.tiny, "small": VanillaTransformerConfig.small,
           "base": VanillaTransformerConfig.base, "big": VanillaTransformerConfig.big}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--config_name", default=None,
                       help=f"a preset ({', '.join(PRESETS)}) or a config.json path; default: small")
    model.add_argument("--model_name_or_path", default=None,
                       help="continue training a saved model (with its own tokenizer unless --tokenizer_name)")
    model.add_argument("--tokenizer_name", default=None, help="a saved tokenizer; default: learn one on the data")
    model.add_argument("--vocab_size", type=positive_int, default=None,
                       help=f"size of a newly learned BPE vocabulary (default {DEFAULT_VOCAB_SIZE})")
    model.add_argument("--dropout", type=float, default=None, help="override the preset's dropout")
    model.add_argument("--config_overrides", default=None,
                       help='other config fields, e.g. "normalize_before=true,attention_dropout=0.1"')
    model.add_argument("--label_smoothing", type=float, default=0.1, help="ε_ls (§5.4)")
    model.add_argument("--attn_implementation", default=None,
                       help="default: eager on CPUs (it trains 1.5x faster there than SDPA), sdpa elsewhere")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", default=None, help="a Hub dataset; default: the embedded Multi30k")
    data.add_argument("--dataset_config_name", default=None)
    data.add_argument("--train_file", default=None, help=".tsv, .jsonl or a parallel-text prefix (PREFIX.de, PREFIX.en)")
    data.add_argument("--validation_file", default=None)
    data.add_argument("--test_file", default=None)
    data.add_argument("--source_lang", default="de")
    data.add_argument("--target_lang", default="en")
    data.add_argument("--max_train_samples", type=int, default=None)
    data.add_argument("--max_eval_samples", type=int, default=None)
    data.add_argument("--max_train_source_tokens", type=int, default=None,
                      help="train only on pairs whose source has at most this many tokens (length generalisation)")
    optim = parser.add_argument_group("optimisation (§5)")
    optim.add_argument("--num_train_epochs", type=float, default=10)
    optim.add_argument("--max_steps", type=positive_int, default=None, help="stop after this many steps (overrides epochs)")
    optim.add_argument("--learning_rate", type=float, default=2e-3,
                       help="peak rate, reached after warmup; 0: the paper's d_model^-0.5 · warmup^-0.5")
    optim.add_argument("--warmup_steps", type=positive_int, default=200)
    optim.add_argument("--max_tokens", type=positive_int, default=2048, help="tokens per batch and process (§5.1: 25000)")
    optim.add_argument("--gradient_accumulation_steps", type=positive_int, default=1)
    optim.add_argument("--max_grad_norm", type=float, default=0.0, help="clip gradients to this norm; 0: no clipping")
    optim.add_argument("--mixed_precision", default="auto", choices=["auto", "no", "fp16", "bf16"],
                       help="auto: bf16 where the hardware multiplies bf16 natively, else no (float32)")
    optim.add_argument("--seed", type=int, default=42)
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
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--eval_steps", type=positive_int, default=None, help="validate every N steps; default: per epoch")
    evaluation.add_argument("--eval_bleu_samples", type=int, default=500,
                            help="validation sentences translated (greedily) for the BLEU logged during training")
    evaluation.add_argument("--eval_split", default="test", help="the split of the final BLEU (§6.1: newstest2014)")
    evaluation.add_argument("--num_beams", type=positive_int, default=4)
    evaluation.add_argument("--length_penalty", type=float, default=0.6)
    evaluation.add_argument("--logging_steps", type=positive_int, default=20)
    evaluation.add_argument("--with_tracking", action=argparse.BooleanOptionalAction, default=True,
                            help="log to the trackers of --report_to besides the JSONL log")
    evaluation.add_argument("--report_to", default="tensorboard", help="Accelerate trackers, e.g. tensorboard, wandb, all")
    args = parser.parse_args(argv)
    ranges = {"learning_rate": (0, math.inf), "num_train_epochs": (1e-9, math.inf), "max_grad_norm": (0, math.inf),
              "label_smoothing": (0, 0.999), "dropout": (0, 0.999), "length_penalty": (-math.inf, math.inf)}
    for name, (low, high) in ranges.items():
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and low <= value <= high):
            parser.error(f"--{name} {value}: expected a finite number in [{low}, {high}]")
    # Flags that a saved model or tokenizer makes moot are refused, not dropped.
    moot = {"--config_name": args.model_name_or_path and args.config_name,
            "--vocab_size": (args.model_name_or_path or args.tokenizer_name) and args.vocab_size}
    for flag, given in moot.items():
        if given:
            source = "--model_name_or_path" if args.model_name_or_path else "--tokenizer_name"
            parser.error(f"{flag} cannot apply with {source}: the saved model or tokenizer fixes it; drop {flag}")
    return args


STOP_REQUESTED = threading.Event()  # set by SIGTERM
MAX_LOG_PERPLEXITY = 700.0  # math.exp overflows a float past ~709.8
MAX_NON_FINITE_STEPS = 10  # updates skipped in a row for a non-finite gradient before the run stops


def diverged_message(what: str, learning_rate: float, checkpoint_root: Path) -> str:
    kept = ", ".join(p.name for p in checkpoints.checkpoint_dirs(checkpoint_root)) or "none"
    return (f"Training diverged: {what} (learning rate {learning_rate:.2e}), so the run stops without saving a model. "
            f"Lower --learning_rate or clip with --max_grad_norm, then start afresh with --overwrite_output_dir, or "
            f"resume an intact checkpoint ({kept}) with --resume_from_checkpoint.")


# What continuing to train a saved model may change; the rest is its architecture, fixed by its weights.
TRAINING_FIELDS = {"dropout", "attention_dropout", "activation_dropout", "label_smoothing", "src_lang", "tgt_lang"}


def build_model(args, tokenizer, device: torch.device) -> VanillaTransformerForConditionalGeneration:
    """A new model of `--config_name` for `tokenizer`, or the saved `--model_name_or_path` with the training
    fields of the command line applied (other changes are refused)."""
    overrides = dict(label_smoothing=args.label_smoothing, src_lang=args.source_lang, tgt_lang=args.target_lang)
    overrides.update(parse_config_overrides(args.config_overrides))
    if args.dropout is not None:
        overrides["dropout"] = args.dropout
    attn_implementation = args.attn_implementation or ("eager" if device.type == "cpu" else "sdpa")
    if args.model_name_or_path:
        try:
            saved = VanillaTransformerConfig.from_pretrained(args.model_name_or_path)
        except (OSError, ValueError) as error:
            raise SystemExit(f"error: --model_name_or_path {args.model_name_or_path}: {error}") from None
        fixed = [f"{name}={value!r} (the model has {getattr(saved, name)!r})" for name, value in overrides.items()
                 if name not in TRAINING_FIELDS and value != getattr(saved, name)]
        if fixed:
            raise SystemExit(f"--model_name_or_path {args.model_name_or_path}: continuing to train keeps the saved "
                             f"architecture, so {', '.join(fixed)} cannot apply; only {', '.join(sorted(TRAINING_FIELDS))} "
                             "can change. Train a new model (--config_name) to change the others.")
        try:
            model = load_model(args.model_name_or_path, attn_implementation=attn_implementation, **overrides)
        except OSError as error:
            raise SystemExit(f"error: --model_name_or_path {args.model_name_or_path}: {error}") from None
        own_tokenizer = Path(args.model_name_or_path, "tokenizer.json")
        if model.config.tokenizer_fingerprint is None and args.tokenizer_name and own_tokenizer.is_file():
            record_tokenizer(model.config, AutoTokenizer.from_pretrained(args.model_name_or_path))  # an older folder
    else:
        overrides.update(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.bos_token_id,
            attn_implementation=attn_implementation,
        )
        config_name = args.config_name or "small"
        try:
            if config_name in PRESETS:
                config = PRESETS[config_name](**overrides)
            else:
                config = VanillaTransformerConfig.from_pretrained(config_name, **overrides)
        except (OSError, ValueError, TypeError) as error:
            raise SystemExit(f"error: --config_name {config_name}: {error}") from None
        model = VanillaTransformerForConditionalGeneration(config)
    try:
        record_tokenizer(model.config, tokenizer)
    except ValueError as error:
        raise SystemExit(f"--tokenizer_name {args.tokenizer_name or args.model_name_or_path}: {error}") from None
    return model


def parse_config_overrides(text: str | None) -> dict:
    """`FIELD=VALUE,...` as keyword arguments, each value of its field's type."""
    defaults, overrides = VanillaTransformerConfig(), {}
    for item in filter(None, (text or "").split(",")):
        name, separator, value = item.partition("=")
        if not separator or name not in VanillaTransformerConfig.__dataclass_fields__:
            raise SystemExit(f"--config_overrides: {item!r} is not FIELD=VALUE for a field of VanillaTransformerConfig")
        default = getattr(defaults, name)
        if isinstance(default, bool):
            overrides[name] = value.lower() in ("true", "1", "yes")
        elif default is not None:
            try:
                overrides[name] = type(default)(value)
            except ValueError:
                raise SystemExit(f"--config_overrides: {name}={value!r} is not a {type(default).__name__}") from None
        else:  # a field that may be None: a number, null, or else text
            try:
                overrides[name] = json.loads(value)
            except json.JSONDecodeError:
                overrides[name] = value
    return overrides


# The arguments that decide the run's tokenizer, recorded beside it: a resumed run must give the same.
TOKENIZER_ORIGIN = ("tokenizer_name", "model_name_or_path", "vocab_size", "dataset_name", "dataset_config_name",
                    "train_file", "source_lang", "target_lang", "max_train_samples")
ORIGIN_NAME = "run_arguments.json"


def load_or_train_tokenizer(args, raw, output: Path):
    """The run's tokenizer, saved as OUTPUT/tokenizer: the one saved there already (a resumed run), else
    `--tokenizer_name`, else the continued model's own, else a BPE vocabulary learned on the training data."""
    saved = output / "tokenizer"
    origin = {name: getattr(args, name) for name in TOKENIZER_ORIGIN}
    if not (args.tokenizer_name or args.model_name_or_path):
        origin["vocab_size"] = args.vocab_size or DEFAULT_VOCAB_SIZE
    if (saved / "tokenizer.json").is_file():
        recorded = json.loads((saved / ORIGIN_NAME).read_text()) if (saved / ORIGIN_NAME).is_file() else origin
        changed = [f"--{name} {origin[name]} (was {recorded.get(name)})" for name in origin
                   if recorded.get(name) != origin[name]]
        if changed:
            raise SystemExit(f"{output} holds the tokenizer of a run with other data or vocabulary: "
                             f"{', '.join(changed)}. Resume with the same arguments, or pass --overwrite_output_dir "
                             "to start afresh.")
        return AutoTokenizer.from_pretrained(saved)
    if args.tokenizer_name or args.model_name_or_path:
        name = args.tokenizer_name or args.model_name_or_path
        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as error:
            raise SystemExit(f"No tokenizer in {name} ({error}): pass --tokenizer_name") from None
    else:
        pairs = raw["train"]["translation"]
        sentences = [p[args.source_lang] for p in pairs] + [p[args.target_lang] for p in pairs]
        tokenizer = train_tokenizer(sentences, vocab_size=args.vocab_size or DEFAULT_VOCAB_SIZE)
    tokenizer.save_pretrained(saved)
    (saved / ORIGIN_NAME).write_text(json.dumps(origin, indent=2))
    return tokenizer


@torch.no_grad()
def validation_loss(model, dataset, collator, accelerator, max_tokens: int) -> float:
    """Label-smoothed cross-entropy per target token over the whole split, shared out among the processes."""
    model.eval()
    sampler = TokenBatchSampler(dataset["length"], max_tokens, num_replicas=accelerator.num_processes,
                                rank=accelerator.process_index)
    total = torch.zeros(2, device=accelerator.device)
    for batch in DataLoader(dataset.remove_columns("length"), batch_sampler=sampler, collate_fn=collator):
        batch = batch.to(accelerator.device)
        tokens = (batch["labels"] != -100).sum()
        with accelerator.autocast():
            loss = model(**batch, num_items_in_batch=1).loss
        total += torch.stack([loss, tokens.float()])
    model.train()
    loss_sum, tokens = accelerator.reduce(total, "sum").tolist()
    return loss_sum / tokens


def translate_split(model, tokenizer, sources, accelerator, batch_size=64, **generate_kwargs) -> list[str]:
    """Translations of `sources`, the processes sharing the work; every process gets all of them, in order."""
    with accelerator.autocast():
        mine = translate(model, tokenizer, sources[accelerator.process_index :: accelerator.num_processes],
                         batch_size, **generate_kwargs)
    gathered = gather_object([mine])
    return [gathered[i % len(gathered)][i // len(gathered)] for i in range(len(sources))]


def paper_learning_rate(d_model: int, warmup_steps: int) -> float:
    """The peak of §5.3's schedule, reached at step `warmup_steps`: d_model^-0.5 · warmup_steps^-0.5."""
    return d_model**-0.5 * warmup_steps**-0.5


def paper_optimizer(model, warmup_steps: int, learning_rate: float | None = None):
    """§5.3: Adam with β1 = 0.9, β2 = 0.98, ε = 1e-9, and the learning rate
    lrate = scale · d_model^-0.5 · min(step^-0.5, step · warmup_steps^-1.5), where the peak `learning_rate`
    (default: the paper's) sets the scale."""
    peak = learning_rate or paper_learning_rate(model.config.d_model, warmup_steps)
    fused = model.device.type in ("cpu", "cuda")  # one kernel for all parameters: ~5 % of a CPU step saved
    optimizer = torch.optim.Adam(model.parameters(), lr=peak, betas=(0.9, 0.98), eps=1e-9, fused=fused)
    return optimizer, get_inverse_sqrt_schedule(optimizer, num_warmup_steps=warmup_steps, timescale=warmup_steps)


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
    """bf16 where the hardware multiplies bf16 matrices natively (a GPU that supports it, a CPU with AVX-512 BF16 or
    AMX), else "no": emulated, a bf16 matrix product is two orders of magnitude slower than a float32 one (0.8
    against 117 GFLOP/s on an AVX2-only CPU)."""
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's, where this torch has them
    return "bf16" if any(getattr(torch.cpu, name, lambda: False)() for name in checks) else "no"


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.mixed_precision == "auto":
        args.mixed_precision = native_mixed_precision()
    output = Path(args.output_dir)
    trackers = [JSONLTracker(output / "logs" / "log.jsonl")]
    if args.with_tracking:
        trackers += args.report_to.split(",")
    accelerator = Accelerator(mixed_precision=args.mixed_precision, log_with=trackers,
                              project_dir=str(output / "logs"), step_scheduler_with_optimizer=False)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)  # "Removed shared tensor": the tied embeddings
    if accelerator.is_main_process:
        logging.getLogger("training").setLevel(logging.INFO)
    logger.info("%s; %d process(es) on %s; mixed precision: %s", accelerator.distributed_type,
                accelerator.num_processes, accelerator.device, accelerator.mixed_precision)
    started = time.time()
    phases = defaultdict(float)  # minutes per phase of the job, logged and kept in training_results.json
    if args.export_ctranslate2:
        import_ctranslate2()  # now, not after training
    set_seed(args.seed, device_specific=True)

    checkpoint_root = output / "checkpoints"
    if accelerator.is_main_process:
        try:
            lock = checkpoints.lock_output_dir(output)  # noqa: F841  (held until the process ends)
        except RuntimeError as error:
            raise SystemExit(f"error: {error}") from None
    earlier = [name for name in RUN_OUTPUTS if (output / name).exists()]
    if args.resume_from_checkpoint is None and earlier:
        if not args.overwrite_output_dir:
            raise SystemExit(f"{output} holds an earlier run ({', '.join(earlier)}): resume it with "
                             "--resume_from_checkpoint latest, or pass --overwrite_output_dir to start afresh")
        if accelerator.is_main_process:  # a clean start: no old log, tokenizer, checkpoint or model survives
            for name in earlier:
                (shutil.rmtree if (output / name).is_dir() else Path.unlink)(output / name)
        accelerator.wait_for_everyone()

    # Data and tokenizer: the main process prepares (and caches) them first, the others then load them.
    with accelerator.main_process_first():
        try:
            raw = load_translation_dataset(args.source_lang, args.target_lang, args.dataset_name,
                                           args.dataset_config_name, args.train_file, args.validation_file,
                                           args.test_file)
        except DataError as error:
            raise SystemExit(f"error: {error}") from None
        if "train" not in raw:
            raise SystemExit(f"The data has no train split (only {sorted(raw)}): pass --train_file or a dataset with one")
        if args.max_train_samples:
            raw["train"] = raw["train"].select(range(min(args.max_train_samples, len(raw["train"]))))
        for split in set(raw) - {"train"}:
            if args.max_eval_samples:
                raw[split] = raw[split].select(range(min(args.max_eval_samples, len(raw[split]))))
        tokenizer = load_or_train_tokenizer(args, raw, output)
        model = build_model(args, tokenizer, accelerator.device)
        max_length = model.config.max_position_embeddings
        data = {split: tokenize(raw[split], tokenizer, args.source_lang, args.target_lang, max_length) for split in raw}
    too_long = {f"{split}_pairs_too_long": len(raw[split]) - len(data[split]) for split in raw}
    if args.max_train_source_tokens:
        data["train"] = data["train"].filter(lambda ids: len(ids) <= args.max_train_source_tokens,
                                             input_columns="input_ids", desc="Keeping short sources")
        logger.info("Training on the %d pairs whose source has at most %d tokens", len(data["train"]),
                    args.max_train_source_tokens)
    for split in raw:
        if len(data[split]) < len(raw[split]):
            logger.warning("%d pairs of %r are longer than max_position_embeddings=%d tokens: left out of training "
                           "and the validation loss; BLEU translates their truncated sources",
                           len(raw[split]) - len(data[split]), split, max_length)
    has_validation = "validation" in data

    # §5.1: batches of about `max_tokens` tokens per process, by approximate length.
    sampler = TokenBatchSampler(data["train"]["length"], args.max_tokens, args.seed, accelerator.num_processes,
                                accelerator.process_index, args.gradient_accumulation_steps)
    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100,
                                      pad_to_multiple_of=8 if accelerator.device.type == "cuda" else None)
    # Its own generator keeps the loader from drawing on the global RNG, which resuming must replay exactly.
    train_loader = DataLoader(data["train"].remove_columns("length"), batch_sampler=sampler, collate_fn=collator,
                              generator=torch.Generator())
    steps_per_epoch = len(sampler) // args.gradient_accumulation_steps
    max_steps = args.max_steps or math.ceil(args.num_train_epochs * steps_per_epoch)

    optimizer, scheduler = paper_optimizer(model, args.warmup_steps, args.learning_rate)
    learning_rate, paper_peak = optimizer.defaults["lr"], paper_learning_rate(model.config.d_model, args.warmup_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    # Mixed precision through `accelerator.autocast()` around each forward, without the wrapper that also copies
    # every output to float32: the loss is computed inside the model, and the float32 copy of the whole batch's
    # logits that nothing reads made a CPU training step of the main job about 12 % slower.
    unwrapped = accelerator.unwrap_model(model, keep_fp32_wrapper=False)

    # What the position within an epoch depends on: a checkpoint resumes only under the same.
    layout = {"num_processes": accelerator.num_processes, "gradient_accumulation_steps": args.gradient_accumulation_steps,
              "max_tokens": args.max_tokens, "seed": args.seed, "train_pairs": len(data["train"])}
    step, epoch, batches_done = 0, 0, 0
    if args.resume_from_checkpoint:
        step, epoch, batches_done = resume(args.resume_from_checkpoint, checkpoint_root, accelerator, unwrapped, layout)
        if accelerator.is_main_process:
            truncate_log(output / "logs" / "log.jsonl", step)  # the killed run's records after the checkpoint
    hparams = {**vars(args), "learning_rate": learning_rate, "num_processes": accelerator.num_processes,
               "distributed_type": accelerator.distributed_type.value,
               "max_steps": max_steps, "parameters": unwrapped.num_parameters()}
    accelerator.init_trackers("train", config={k: v for k, v in hparams.items() if v is not None})
    if step == 0:
        accelerator.log(too_long, step=0)
    logger.info("%d parameters; %d steps of %d per epoch; peak learning rate %.2e (%.2f × the paper's)",
                unwrapped.num_parameters(), max_steps, steps_per_epoch, learning_rate, learning_rate / paper_peak)

    def save(step, interrupted=False):
        if not all(p.isfinite().all() for p in unwrapped.parameters()):
            raise SystemExit(diverged_message(f"the weights are not finite at step {step}",
                                              scheduler.get_last_lr()[0], checkpoint_root))
        state = {"epoch": epoch, "batches_done": batches_done, "learning_rate": learning_rate, "layout": layout,
                 "interrupted": interrupted}
        with timed(phases, "checkpoints"):
            checkpoints.save_checkpoint(accelerator, checkpoint_root, step, state, args.keep_checkpoints)

    bleu_pairs = raw["validation"]["translation"][: args.eval_bleu_samples] if has_validation else []
    sources, references = [p[args.source_lang] for p in bleu_pairs], [p[args.target_lang] for p in bleu_pairs]

    def evaluate(step):
        if not has_validation:
            return
        with timed(phases, "validation_loss"):
            metrics = {"eval_loss": validation_loss(model, data["validation"], collator, accelerator, args.max_tokens)}
        if sources:
            with timed(phases, "validation_bleu"):
                unwrapped.eval()
                hypotheses = translate_split(unwrapped, tokenizer, sources, accelerator, num_beams=1)
                unwrapped.train()
                metrics["eval_bleu"] = corpus_bleu(hypotheses, references, bleu_metric)["score"]
        accelerator.log(metrics, step=step)
        logger.info("step %d: %s", step, ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))

    bleu_metric = load_bleu()
    phases["data_and_setup"] = (time.time() - started) / 60
    loop_started = time.time()
    model.train()
    progress = tqdm(total=max_steps, initial=step, disable=not accelerator.is_local_main_process, desc="training")
    window_tokens, window_seconds, window_loss = 0, 0.0, 0.0  # since the last log: tokens, seconds, summed loss
    non_finite_steps = []  # the steps in a row whose gradient was not finite
    while step < max_steps:
        sampler.set_epoch(epoch, start=batches_done)
        for micro_batches in groups(train_loader, args.gradient_accumulation_steps):
            step_started = time.time()
            micro_batches = [batch.to(accelerator.device) for batch in micro_batches]
            # A step's loss is its summed token losses over all its target tokens, whatever the process count; the
            # same reduction tells every process whether any was asked to stop (SIGTERM).
            step_tokens, stop = accelerator.reduce(torch.stack([
                sum((b["labels"] != -100).sum() for b in micro_batches),
                torch.tensor(int(STOP_REQUESTED.is_set()), device=accelerator.device)]), "sum")
            normalizer = step_tokens / accelerator.num_processes  # DDP averages the processes' gradients
            step_loss = 0.0
            for i, batch in enumerate(micro_batches):
                last = i == len(micro_batches) - 1
                with nullcontext() if last else accelerator.no_sync(model):
                    with accelerator.autocast():
                        loss = model(**batch, num_items_in_batch=normalizer).loss
                    accelerator.backward(loss)
                step_loss += loss.detach()
            # Without a limit the "clipping" only measures the norm (the gradients are multiplied by exactly 1).
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm or math.inf)
            # A non-finite gradient (every process sees the same, after DDP's all-reduce) skips the update, as fp16's
            # loss scaling does, whose own skipping is left to it; too many in a row stop the run.
            if grad_norm is not None and not torch.isfinite(grad_norm) and accelerator.mixed_precision != "fp16":
                non_finite_steps.append(step + 1)
                logger.warning("step %d: the gradient norm is %s; the update is skipped (learning rate %.2e)",
                               step + 1, grad_norm.item(), scheduler.get_last_lr()[0])
                if len(non_finite_steps) == MAX_NON_FINITE_STEPS:
                    raise SystemExit(diverged_message(
                        f"the gradient norm was not finite at steps {non_finite_steps[0]}-{non_finite_steps[-1]}",
                        scheduler.get_last_lr()[0], checkpoint_root))
            else:
                non_finite_steps.clear()
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            batches_done += len(micro_batches)
            window_tokens += int(step_tokens)
            window_seconds += time.time() - step_started
            window_loss += step_loss
            progress.update(1)

            if step % args.logging_steps == 0 or step == max_steps:
                steps_logged = step % args.logging_steps or args.logging_steps
                train_loss = accelerator.reduce(window_loss, "mean").item() / steps_logged
                if step > args.warmup_steps and train_loss > 2 * math.log(unwrapped.config.vocab_size):
                    raise SystemExit(diverged_message(
                        f"the training loss is {train_loss:.3g} at step {step}, more than twice a uniform guess's "
                        f"(ln {unwrapped.config.vocab_size} = {math.log(unwrapped.config.vocab_size):.2f})",
                        scheduler.get_last_lr()[0], checkpoint_root))
                tokens_per_second = window_tokens / window_seconds
                accelerator.log({"train_loss": train_loss, "learning_rate": scheduler.get_last_lr()[0],
                                 "target_tokens": window_tokens, "target_tokens_per_second": tokens_per_second,
                                 "epoch": epoch}, step=step)
                progress.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tokens_per_second:.0f}")
                window_tokens, window_seconds, window_loss = 0, 0.0, 0.0
            if (args.eval_steps and step % args.eval_steps == 0) or step == max_steps:
                evaluate(step)
            if step % args.checkpointing_steps == 0 or step == max_steps:
                save(step)
            elif stop:
                save(step, interrupted=True)
            if stop:
                raise SystemExit(f"Stopped by SIGTERM after step {step}, whose checkpoint is in {checkpoint_root}: run "
                                 "the same command with --resume_from_checkpoint latest to continue")
            if step == max_steps:
                break
        else:  # the epoch is over
            epoch, batches_done = epoch + 1, 0
            if not args.eval_steps:
                evaluate(step)
    progress.close()
    train_minutes = (time.time() - started) / 60
    phases["training_steps"] = (time.time() - loop_started) / 60 - sum(
        phases[name] for name in ("checkpoints", "validation_loss", "validation_bleu"))
    accelerator.wait_for_everyone()

    # §6.1: average the last checkpoints, translate the test set with beam search, and save the Hub-ready folder.
    final_started = time.time()
    usable = checkpoints.usable_checkpoints(checkpoint_root)[: args.average_checkpoints]
    checkpoints.load_average(unwrapped, usable)
    unwrapped.eval()
    results = {"train_minutes": round(train_minutes, 1), "train_steps": step,
               "train_epochs": round(step / steps_per_epoch, 1), "averaged_checkpoints": len(usable)}
    if has_validation:  # of the averaged model, per target token, without label smoothing (Table 3's PPL)
        smoothing, unwrapped.config.label_smoothing = unwrapped.config.label_smoothing, 0.0
        nll = validation_loss(model, data["validation"], collator, accelerator, args.max_tokens)
        unwrapped.config.label_smoothing = smoothing
        results["validation_perplexity"] = round(math.exp(nll), 2) if nll < MAX_LOG_PERPLEXITY else None
        if results["validation_perplexity"] is None:
            logger.warning("The validation loss is %.3g: its perplexity overflows, and is left out", nll)
        unwrapped.eval()
    split = args.eval_split if args.eval_split in raw else ("validation" if has_validation else None)
    if split is not None:
        test_pairs = raw[split]["translation"]
        test_sources = [p[args.source_lang] for p in test_pairs]
        hypotheses = translate_split(unwrapped, tokenizer, test_sources, accelerator, num_beams=args.num_beams,
                                     length_penalty=args.length_penalty)
        bleu = corpus_bleu(hypotheses, [p[args.target_lang] for p in test_pairs], bleu_metric)
        if accelerator.is_main_process:
            (output / "translations.txt").write_text("".join(f"{line}\n" for line in hypotheses), encoding="utf-8")
        results.update(bleu=round(bleu["score"], 2), bleu_signature=bleu["signature"], eval_split=split,
                       eval_sentences=len(test_sources), example_source=test_sources[0].replace('"', "'"))
        accelerator.log({f"{split}_bleu": bleu["score"]}, step=step)
        logger.info("%s BLEU %.2f (%s) with the average of %d checkpoints", split, bleu["score"], bleu["signature"],
                    len(usable))
    phases["final_evaluation"] = (time.time() - final_started) / 60
    results["phase_minutes"] = {name: round(minutes, 2) for name, minutes in phases.items()}
    if accelerator.is_main_process:
        folder = output / "model"
        dataset = args.dataset_name or ("multi30k" if not args.train_file else Path(args.train_file).stem)
        results.update(
            model_name=f"vanilla-transformer-{dataset.split('/')[-1]}-{args.source_lang}-{args.target_lang}",
            dataset=dataset,
            train_sentences=len(raw["train"]), num_beams=args.num_beams, length_penalty=args.length_penalty,
            warmup_steps=args.warmup_steps, learning_rate=f"{learning_rate:.2e}", dropout=unwrapped.config.dropout,
            label_smoothing=unwrapped.config.label_smoothing, max_tokens=args.max_tokens,
            num_processes=accelerator.num_processes, gradient_accumulation_steps=args.gradient_accumulation_steps,
            hardware=describe_hardware(accelerator), mixed_precision=accelerator.mixed_precision,
        )
        figures = {"learning_curve": plot_learning_curve(output / "logs" / "log.jsonl", output / "learning_curve.png")}
        if "example_source" in results and importlib.util.find_spec("matplotlib"):
            figures["attention_plot"] = plot_attention(unwrapped, tokenizer, results["example_source"],
                                                       path=output / "attention.png")
        captions = {"learning_curve": "Loss and greedy validation BLEU during training:",
                    "attention_plot": "The last layer's attention weights (one column per head) when it translates "
                                      "the first test sentence:"}
        results.update({name: f"{captions[name]}\n\n![{name}]({path.name})" if path else ""
                        for name, path in figures.items()})
        results.setdefault("attention_plot", "")
        try:
            save_for_hub(folder, unwrapped, tokenizer, results, args.export_ctranslate2)
        except ValueError as error:
            raise SystemExit(f"{folder}: {error}") from None
        for path in filter(None, figures.values()):
            shutil.copy(path, folder / path.name)
        phases["figures_and_saving"] = (time.time() - final_started) / 60 - phases["final_evaluation"]
        logger.info("Saved the Hub-ready model to %s (%.1f minutes in all: %s)", folder, (time.time() - started) / 60,
                    ", ".join(f"{name} {minutes:.2f}" for name, minutes in phases.items()))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


def resume(requested: str, checkpoint_root: Path, accelerator, model, layout: dict) -> tuple[int, int, int]:
    """Load the newest usable checkpoint (or the one named) and return its step, epoch and batches done.

    A checkpoint that is damaged, cannot be read, or holds another model's weights is set aside (renamed, so that
    `--keep_checkpoints` and averaging never count it), and so are those newer than the one resumed. One written
    with another data layout (process count, accumulation, batch size, seed, data) is refused.
    """
    if requested != "latest":
        candidates = [Path(requested)]
    else:
        candidates = list(reversed(checkpoints.checkpoint_dirs(checkpoint_root)))
    partly_loaded = False
    for path in candidates:
        problem = checkpoints.checkpoint_problem(path) or checkpoints.weights_problem(path, model)
        if problem is None:
            state = checkpoints.read_state(path)
            check_layout(path, state.get("layout"), layout)
            rng_problems = gather_object([checkpoints.rng_state_problem(path, accelerator.process_index)])
            problem = next(filter(None, rng_problems), None)
        if problem is None:
            try:
                accelerator.load_state(str(path))
            except Exception as error:  # a file that passed its checksum but still cannot be read
                problem, partly_loaded = f"it cannot be loaded ({error})", True
        if problem is None:
            logger.info("Resumed from %s (step %d, epoch %d)", path, state["step"], state["epoch"])
            for newer in checkpoints.checkpoint_dirs(checkpoint_root):
                if checkpoints.step_of(newer) > state["step"]:
                    checkpoints.set_aside(newer, f"it is newer than {path.name}, the checkpoint resumed", accelerator)
            accelerator.wait_for_everyone()
            return state["step"], state["epoch"], state["batches_done"]
        if requested != "latest":
            raise SystemExit(f"Cannot resume from {requested}: {problem}")
        checkpoints.set_aside(path, problem, accelerator)
    accelerator.wait_for_everyone()
    if partly_loaded:
        raise SystemExit(f"No checkpoint under {checkpoint_root} could be loaded, and one was loaded in part: start "
                         "afresh with --overwrite_output_dir")
    logger.warning("No usable checkpoint under %s: starting from scratch", checkpoint_root)
    return 0, 0, 0


def check_layout(path: Path, saved: dict | None, current: dict) -> None:
    """Refuse to resume a checkpoint whose batches were laid out otherwise: its position would be another one."""
    differences = [f"{name} {saved[name]} (now {current[name]})" for name in current
                   if saved is not None and name in saved and saved[name] != current[name]]
    if differences:
        raise SystemExit(f"Cannot resume from {path}: it was written with {', '.join(differences)}, and where an epoch "
                         "stands depends on these. Resume with the same settings (e.g. `accelerate launch "
                         f"--num_processes {saved['num_processes']}`), or start a new run in another --output_dir.")


def describe_hardware(accelerator) -> str:
    if accelerator.device.type == "cuda":
        return f"{accelerator.num_processes} × {torch.cuda.get_device_name()}"
    return f"a CPU ({accelerator.num_processes} process(es) of {torch.get_num_threads()} threads)"


if __name__ == "__main__":
    # SIGTERM (what schedulers and spot instances send before they kill) ends the run after the current step, with
    # a checkpoint to resume from.
    signal.signal(signal.SIGTERM, lambda signum, frame: STOP_REQUESTED.set())
    main()

"""The run's tokenizer and model, from the command line's arguments.

A new run learns a shared BPE vocabulary on its training data (§5.1) and builds a preset or a config file's model;
a continued one takes a saved model (and its tokenizer, or `--tokenizer_name`), whose architecture stays fixed.
Problems raise `ValueError` or `OSError` naming the argument.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import datasets
import numpy as np
from transformers import AutoTokenizer

from hf_vanilla_transformer import (
    VanillaTransformerConfig,
    VanillaTransformerForConditionalGeneration,
    record_tokenizer,
    train_tokenizer,
)
from hf_vanilla_transformer.loading import load_model

DEFAULT_VOCAB_SIZE = 6000
PRESETS = {"tiny": VanillaTransformerConfig.tiny, "small": VanillaTransformerConfig.small,
           "medium": VanillaTransformerConfig.medium, "base": VanillaTransformerConfig.base,
           "big": VanillaTransformerConfig.big}
# What continuing to train a saved model may change; the rest is its architecture, fixed by its weights.
TRAINING_FIELDS = {"dropout", "attention_dropout", "activation_dropout", "src_lang", "tgt_lang"}
# The arguments that decide the run's tokenizer, recorded beside it: a resumed run must give the same.
TOKENIZER_ORIGIN = ("tokenizer_name", "model_name_or_path", "vocab_size", "dataset_name", "dataset_config_name",
                    "train_file", "source_lang", "target_lang", "max_train_samples", "tokenizer_sample_size")
ORIGIN_NAME = "run_arguments.json"


def build_tokenizer(args, train, folder: Path | None, saved: bool = False, save: bool = True):
    """The run's tokenizer: the one in `folder`, where the run it resumes saved it (`saved`), else `--tokenizer_name`,
    else the continued model's own, else a BPE vocabulary learned on the `train` split (or found in the cache);
    written to `folder` where `save` (the processes that write the run's folder)."""
    origin = {name: getattr(args, name) for name in TOKENIZER_ORIGIN}
    if not (args.tokenizer_name or args.model_name_or_path):
        origin["vocab_size"] = args.vocab_size or DEFAULT_VOCAB_SIZE
    if saved:
        recorded = json.loads((folder / ORIGIN_NAME).read_text()) if (folder / ORIGIN_NAME).is_file() else origin
        changed = [f"--{name} {origin[name]} (was {recorded.get(name)})" for name in origin
                   if recorded.get(name) != origin[name]]
        if changed:
            raise ValueError(f"{folder.parent} holds the tokenizer of a run with other data or vocabulary: "
                             f"{', '.join(changed)}. Resume with the same arguments, or pass --overwrite_output_dir "
                             "to start afresh.")
        return AutoTokenizer.from_pretrained(folder)
    if args.tokenizer_name or args.model_name_or_path:
        name = args.tokenizer_name or args.model_name_or_path
        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as error:
            raise OSError(f"No tokenizer in {name} ({error}): pass --tokenizer_name") from None
    else:
        tokenizer = learn_tokenizer(train, args.source_lang, args.target_lang, args.vocab_size or DEFAULT_VOCAB_SIZE,
                                    args.tokenizer_sample_size)
    if save:
        tokenizer.save_pretrained(folder)
        (folder / ORIGIN_NAME).write_text(json.dumps(origin, indent=2))
    return tokenizer


def learn_tokenizer(train, source_lang: str, target_lang: str, vocab_size: int, sample_size: int | None = None):
    """§5.1's shared BPE vocabulary, learned from the sentences of `train` as they are read (or of a random sample
    of `sample_size` pairs, as sentencepiece's `input_sentence_size`). A vocabulary learned from cached data is
    cached beside it, keyed by the data's fingerprint, so a rerun on the same data does not learn it again."""
    if sample_size and sample_size < len(train):
        train = train.select(np.sort(np.random.default_rng(0).choice(len(train), sample_size, replace=False)))
    key = hashlib.sha256(f"{train._fingerprint} {source_lang} {target_lang} {vocab_size}".encode()).hexdigest()[:16]
    cache = Path(datasets.config.HF_DATASETS_CACHE, "hf_vanilla_transformer", f"bpe-{key}")
    if train.cache_files and (cache / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(cache)

    def sentences():
        for batch in train.iter(batch_size=10_000):
            for pair in batch["translation"]:
                yield pair[source_lang]
                yield pair[target_lang]

    tokenizer = train_tokenizer(sentences(), vocab_size=vocab_size, length=2 * len(train))
    if train.cache_files:  # written whole, then moved into place: an interrupted run leaves no half a tokenizer
        partial = cache.with_name(f"{cache.name}.{os.getpid()}.partial")
        tokenizer.save_pretrained(partial)
        try:
            partial.rename(cache)
        except OSError:  # another run cached it meanwhile
            shutil.rmtree(partial)
    return tokenizer


def build_model(args, tokenizer, device) -> VanillaTransformerForConditionalGeneration:
    """A new model of `--config_name` for `tokenizer`, or the saved `--model_name_or_path` with the training
    fields of the command line applied (other changes are refused)."""
    overrides = dict(src_lang=args.source_lang, tgt_lang=args.target_lang)
    overrides.update(parse_config_overrides(args.config_overrides))
    if args.dropout is not None:
        overrides["dropout"] = args.dropout
    attn_implementation = args.attn_implementation or ("eager" if device.type == "cpu" else "sdpa")
    if args.model_name_or_path:
        try:
            saved = VanillaTransformerConfig.from_pretrained(args.model_name_or_path)
        except (OSError, ValueError) as error:
            raise OSError(f"--model_name_or_path {args.model_name_or_path}: {error}") from None
        fixed = [f"{name}={value!r} (the model has {getattr(saved, name)!r})" for name, value in overrides.items()
                 if name not in TRAINING_FIELDS and value != getattr(saved, name)]
        if fixed:
            raise ValueError(f"--model_name_or_path {args.model_name_or_path}: continuing to train keeps the saved "
                             f"architecture, so {', '.join(fixed)} cannot apply; "
                             f"only {', '.join(sorted(TRAINING_FIELDS))} "
                             "can change. Train a new model (--config_name) to change the others.")
        try:
            model = load_model(args.model_name_or_path, attn_implementation=attn_implementation, **overrides)
        except OSError as error:
            raise OSError(f"--model_name_or_path {args.model_name_or_path}: {error}") from None
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
        config_name = args.config_name
        try:
            if config_name in PRESETS:
                config = PRESETS[config_name](**overrides)
            else:
                config = VanillaTransformerConfig.from_pretrained(config_name, **overrides)
        except (OSError, ValueError, TypeError) as error:
            raise ValueError(f"--config_name {config_name}: {error}") from None
        model = VanillaTransformerForConditionalGeneration(config)
    try:
        record_tokenizer(model.config, tokenizer)
    except ValueError as error:
        raise ValueError(f"--tokenizer_name {args.tokenizer_name or args.model_name_or_path}: {error}") from None
    return model


def parse_config_overrides(text: str | None) -> dict:
    """`FIELD=VALUE,...` as keyword arguments, each value of its field's type."""
    defaults, overrides = VanillaTransformerConfig(), {}
    for item in filter(None, (text or "").split(",")):
        name, separator, value = item.partition("=")
        if not separator or name not in VanillaTransformerConfig.__dataclass_fields__:
            raise ValueError(f"--config_overrides: {item!r} is not FIELD=VALUE for a field of VanillaTransformerConfig")
        default = getattr(defaults, name)
        if isinstance(default, bool):
            overrides[name] = value.lower() in ("true", "1", "yes")
        elif default is not None:
            try:
                overrides[name] = type(default)(value)
            except ValueError:
                raise ValueError(f"--config_overrides: {name}={value!r} is not a {type(default).__name__}") from None
        else:  # a field that may be None: a number, null, or else text
            try:
                overrides[name] = json.loads(value)
            except json.JSONDecodeError:
                overrides[name] = value
    return overrides

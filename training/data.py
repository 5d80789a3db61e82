"""Training data: translation datasets through `datasets`, tokenized with `datasets.map`, batched by tokens (§5.1).

Every source becomes a `datasets.Dataset` with the `translation` column of the Hugging Face translation examples
(`{"de": ..., "en": ...}` per row): the Multi30k copy embedded in this repository (the default, offline), a Hub
dataset (`--dataset_name wmt14 --dataset_config_name de-en`) or local files: `.tsv` (source<TAB>target),
`.jsonl`/`.json` (a `translation` column) or a parallel-text prefix (`PREFIX.de` and `PREFIX.en`, optionally gzipped).
"""

import csv
import logging
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, concatenate_datasets, load_dataset

logger = logging.getLogger(__name__)

MULTI30K = Path(__file__).resolve().parent.parent / "data" / "multi30k"
MULTI30K_SPLITS = {"train": "train", "validation": "val", "test": "test_2016_flickr"}


def _parallel_text_file(prefix: str, lang: str) -> Path:
    for candidate in (Path(f"{prefix}.{lang}"), Path(f"{prefix}.{lang}.gz")):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"No parallel text for language {lang!r}: neither {prefix}.{lang} nor {prefix}.{lang}.gz")


def load_parallel_text(prefix: str, source_lang: str, target_lang: str) -> Dataset:
    """Line-aligned `PREFIX.SRC` and `PREFIX.TGT` files (optionally `.gz`), one sentence a line."""
    sides = []
    for lang in (source_lang, target_lang):
        path = _parallel_text_file(prefix, lang)
        side = load_dataset("text", data_files=str(path), split="train")
        sides.append(side.rename_column("text", lang))
    if len(sides[0]) != len(sides[1]):
        raise ValueError(
            f"{prefix}: {len(sides[0])} {source_lang} lines but {len(sides[1])} {target_lang} lines; "
            "parallel files must be line-aligned"
        )
    return _to_translation(concatenate_datasets(sides, axis=1), source_lang, target_lang)


def _to_translation(dataset: Dataset, source_lang: str, target_lang: str) -> Dataset:
    return dataset.map(
        lambda batch: {"translation": [{source_lang: s, target_lang: t} for s, t in zip(batch[source_lang], batch[target_lang])]},
        batched=True,
        remove_columns=dataset.column_names,
    )


def load_file(path: str, source_lang: str, target_lang: str) -> Dataset:
    """A local split: `.tsv`, `.jsonl`/`.json`, or a parallel-text prefix."""
    if path.endswith(".tsv"):
        dataset = load_dataset(
            "csv",
            data_files=path,
            split="train",
            delimiter="\t",
            column_names=[source_lang, target_lang],
            quoting=csv.QUOTE_NONE,
            keep_default_na=False,
        )
        return _to_translation(dataset, source_lang, target_lang)
    if path.endswith((".jsonl", ".json")):
        dataset = load_dataset("json", data_files=path, split="train")
        if "translation" not in dataset.column_names:
            if {source_lang, target_lang} <= set(dataset.column_names):
                return _to_translation(dataset, source_lang, target_lang)
            raise ValueError(f"{path} has columns {dataset.column_names}; expected `translation`")
        return dataset
    return load_parallel_text(path, source_lang, target_lang)


def load_translation_dataset(
    source_lang: str,
    target_lang: str,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    test_file: str | None = None,
) -> DatasetDict:
    """A `DatasetDict` of the splits the source has (`train`, `validation`, `test`); pairs with an empty side are
    dropped (with a warning)."""
    if dataset_name is not None:
        splits = load_dataset(dataset_name, dataset_config_name)
    elif any(path is not None for path in (train_file, validation_file, test_file)):
        files = {"train": train_file, "validation": validation_file, "test": test_file}
        splits = DatasetDict(
            {split: load_file(path, source_lang, target_lang) for split, path in files.items() if path is not None}
        )
    else:
        splits = DatasetDict(
            {
                split: load_parallel_text(str(MULTI30K / name), source_lang, target_lang)
                for split, name in MULTI30K_SPLITS.items()
            }
        )
    for split, dataset in splits.items():
        if "translation" not in dataset.column_names:
            raise ValueError(f"Split {split!r} has columns {dataset.column_names}; expected a `translation` column")
        feature = dataset.features["translation"]  # a `Translation` feature, or a dict of string features
        languages = set(getattr(feature, "languages", None) or (feature.keys() if isinstance(feature, dict) else []))
        if languages and not {source_lang, target_lang} <= languages:
            raise ValueError(f"Split {split!r} has languages {sorted(languages)}, not {source_lang} and {target_lang}")
        splits[split] = dataset.filter(
            lambda batch: [bool(p[source_lang].strip() and p[target_lang].strip()) for p in batch["translation"]],
            batched=True,
            desc="Dropping empty pairs",
        )
        if len(splits[split]) < len(dataset):
            logger.warning("Dropped %d pairs of %r with an empty side", len(dataset) - len(splits[split]), split)
    return splits


def tokenize(dataset: Dataset, tokenizer, source_lang: str, target_lang: str, max_length: int) -> Dataset:
    """Source ids, attention mask, target `labels` and the pair's `length` (the longer side, for batching) with
    `datasets.map` (cached)."""

    def encode(batch):
        sources = [pair[source_lang] for pair in batch["translation"]]
        targets = [pair[target_lang] for pair in batch["translation"]]
        encoded = tokenizer(sources, text_target=targets, truncation=True, max_length=max_length)
        encoded["length"] = [max(len(s), len(t)) for s, t in zip(encoded["input_ids"], encoded["labels"])]
        return encoded

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="Tokenizing")


class TokenBatchSampler:
    """§5.1: "Sentence pairs were batched together by approximate sequence length", up to `max_tokens` tokens.

    A batch's size is its padded size: examples × the longest of their `lengths` (source or target). The batches of an epoch depend on
    (seed, epoch) alone: lengths are bucketed with a random tie-break and the batch order is shuffled. Process
    `rank` of `num_replicas` takes every `num_replicas`-th batch; the batch count is first made a multiple of
    `num_replicas × group` (`group`: gradient accumulation) by halving the largest batches, so every process runs
    the same steps and an epoch sees each example exactly once.
    """

    def __init__(self, lengths, max_tokens: int, seed: int = 0, num_replicas: int = 1, rank: int = 0, group: int = 1):
        self.lengths = np.asarray(lengths)
        if len(self.lengths) < num_replicas * group:
            raise ValueError(f"{len(self.lengths)} examples cannot fill {num_replicas * group} batches per step")
        self.max_tokens = max_tokens
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.group = group
        self.epoch = 0
        self.start = 0
        self._cache = (None, [])

    def set_epoch(self, epoch: int, start: int = 0):
        """Iterate over `epoch`, beginning at this process's batch number `start` (to resume mid-epoch)."""
        self.epoch = epoch
        self.start = start

    def global_batches(self, epoch: int) -> list[list[int]]:
        if self._cache[0] != epoch:
            self._cache = (epoch, self._make_global_batches(epoch))
        return self._cache[1]

    def _make_global_batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = np.lexsort((rng.random(len(self.lengths)), self.lengths))
        batches, batch, longest = [], [], 0
        for index in order.tolist():
            longest_with = max(longest, int(self.lengths[index]))
            if batch and longest_with * (len(batch) + 1) > self.max_tokens:
                batches.append(batch)
                batch, longest_with = [], int(self.lengths[index])
            batch.append(index)
            longest = longest_with
        batches.append(batch)
        while len(batches) % (self.num_replicas * self.group):
            largest = max(range(len(batches)), key=lambda i: len(batches[i]))
            if len(batches[largest]) < 2:
                raise ValueError(f"Cannot make {len(self.lengths)} examples into a multiple of "
                                 f"{self.num_replicas * self.group} batches")
            batch = batches.pop(largest)
            batches += [batch[: len(batch) // 2], batch[len(batch) // 2 :]]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self):
        yield from self.global_batches(self.epoch)[self.rank :: self.num_replicas][self.start :]

    def __len__(self) -> int:
        return len(self.global_batches(self.epoch)) // self.num_replicas - self.start

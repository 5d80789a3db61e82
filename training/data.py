"""Training data: translation datasets through `datasets`, tokenized with `datasets.map`, batched by tokens (§5.1).

Every source becomes a `datasets.Dataset` with the `translation` column of the Hugging Face translation examples
(`{"de": ..., "en": ...}` per row): the Multi30k copy embedded in this repository (the default, offline), a Hub
dataset (`--dataset_name wmt14 --dataset_config_name de-en`) or local UTF-8 files: `.tsv` (exactly two columns,
source<TAB>target, or a first line naming the columns, e.g. `de<TAB>en<TAB>domain`), `.jsonl`/`.json` (a
`translation` object or the two language keys per row) or a parallel-text prefix (`PREFIX.de` and `PREFIX.en`,
optionally gzipped). A file that is not that raises `DataError`, naming the file and line.
"""

import gzip
import json
import logging
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, load_dataset

logger = logging.getLogger(__name__)

# Multi30k task 1: data/multi30k in a checkout, package data beside this file when the package is installed.
HERE = Path(__file__).resolve().parent
MULTI30K = HERE / "multi30k" if (HERE / "multi30k").is_dir() else HERE.parent / "data" / "multi30k"
MULTI30K_SPLITS = {"train": "train", "validation": "val", "test": "test_2016_flickr"}


class DataError(ValueError):
    """A data file that is not translation pairs; the message names the file and, where it can, the line."""


def read_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file (gzipped when its name ends in `.gz`), without their line ends."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
        data = file.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not UTF-8 (byte {data[error.start]:#04x}); convert the file to UTF-8, "
                        "e.g. with `iconv -t utf-8`") from None
    if not text.strip():
        raise DataError(f"{path} is empty")
    lines = text.split("\n")  # not splitlines(): a sentence may hold U+2028 and other "line breaks"
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _pairs_dataset(pairs: list[dict]) -> Dataset:
    return Dataset.from_dict({"translation": pairs})


def load_parallel_text(prefix: str, source_lang: str, target_lang: str) -> Dataset:
    """Line-aligned `PREFIX.SRC` and `PREFIX.TGT` files (optionally `.gz`), one sentence a line."""
    sides = []
    for lang in (source_lang, target_lang):
        candidates = [Path(f"{prefix}.{lang}"), Path(f"{prefix}.{lang}.gz")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise DataError(f"No parallel text for language {lang!r}: neither {candidates[0]} nor {candidates[1]}")
        sides.append(read_lines(path))
    if len(sides[0]) != len(sides[1]):
        raise DataError(f"{prefix}: {len(sides[0])} {source_lang} lines but {len(sides[1])} {target_lang} lines; "
                        "parallel files must be line-aligned")
    return _pairs_dataset([{source_lang: s, target_lang: t} for s, t in zip(*sides)])


def load_tsv(path: str, source_lang: str, target_lang: str) -> Dataset:
    """Tab-separated pairs: exactly two columns, source then target, or any columns under a first line that
    names them (`de<TAB>en<TAB>domain`), the languages read by name. Every line has the same number of columns."""
    lines = read_lines(path)
    header = lines[0].split("\t")
    has_header = source_lang in header and target_lang in header
    columns = header if has_header else [source_lang, target_lang]
    pairs = []
    for number, line in enumerate(lines[1:] if has_header else lines, start=2 if has_header else 1):
        cells = line.split("\t")
        if len(cells) != len(columns):
            layout = f"the {len(columns)} of the header" if has_header else (
                f"2 ({source_lang}<TAB>{target_lang}), or a first line naming the columns")
            raise DataError(f"{path}, line {number}: {len(cells)} tab-separated column(s), expected {layout}")
        row = dict(zip(columns, cells))
        pairs.append({source_lang: row[source_lang], target_lang: row[target_lang]})
    return _pairs_dataset(pairs)


def load_jsonl(path: str, source_lang: str, target_lang: str) -> Dataset:
    """JSON lines (or a `.json` list) of `{"translation": {"de": ..., "en": ...}}` or `{"de": ..., "en": ...}`."""
    lines = read_lines(path)
    if path.endswith(".json") and lines[0].lstrip().startswith("["):
        try:
            rows = list(enumerate(json.loads("\n".join(lines)), start=1))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from None
        where = "item"
    else:
        rows, where = [], "line"
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    rows.append((number, json.loads(line)))
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}, line {number}: not valid JSON ({error.msg})") from None
    pairs = []
    for number, row in rows:
        pair = row.get("translation", row) if isinstance(row, dict) else None
        missing = [lang for lang in (source_lang, target_lang) if not isinstance((pair or {}).get(lang), str)]
        if missing:
            found = sorted(pair) if isinstance(pair, dict) else type(row).__name__
            raise DataError(f"{path}, {where} {number}: no {' or '.join(missing)} text (found {found}); expected "
                            f'{{"translation": {{"{source_lang}": ..., "{target_lang}": ...}}}}')
        pairs.append({source_lang: pair[source_lang], target_lang: pair[target_lang]})
    return _pairs_dataset(pairs)


def load_file(path: str, source_lang: str, target_lang: str) -> Dataset:
    """A local split: `.tsv`, `.jsonl`/`.json`, or a parallel-text prefix."""
    if path.endswith(".tsv"):
        return load_tsv(path, source_lang, target_lang)
    if path.endswith((".jsonl", ".json")):
        return load_jsonl(path, source_lang, target_lang)
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
        if not MULTI30K.is_dir():
            raise DataError(f"The embedded Multi30k is missing (expected in {MULTI30K}): reinstall the package, or "
                            "pass --train_file or --dataset_name")
        splits = DatasetDict(
            {
                split: load_parallel_text(str(MULTI30K / name), source_lang, target_lang)
                for split, name in MULTI30K_SPLITS.items()
            }
        )
    for split, dataset in splits.items():
        if "translation" not in dataset.column_names:
            raise DataError(f"Split {split!r} has columns {dataset.column_names}; expected a `translation` column")
        feature = dataset.features["translation"]  # a `Translation` feature, or a dict of string features
        languages = set(getattr(feature, "languages", None) or (feature.keys() if isinstance(feature, dict) else []))
        if languages and not {source_lang, target_lang} <= languages:
            raise DataError(f"Split {split!r} has languages {sorted(languages)}, not {source_lang} and {target_lang}")
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
    `datasets.map`; pairs with a side longer than `max_length` tokens are left out (callers count them)."""

    def encode(batch):
        sources = [pair[source_lang] for pair in batch["translation"]]
        targets = [pair[target_lang] for pair in batch["translation"]]
        encoded = tokenizer(sources, text_target=targets)
        encoded["length"] = [max(len(s), len(t)) for s, t in zip(encoded["input_ids"], encoded["labels"])]
        return encoded

    encoded = dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="Tokenizing")
    return encoded.filter(lambda lengths: [n <= max_length for n in lengths], input_columns="length", batched=True,
                          desc="Leaving out over-long pairs")


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

"""Training data: translation datasets in `datasets`' Arrow cache, tokenized once with `datasets.map`, batched by
tokens (§5.1).

Every source becomes a `datasets.Dataset` with the `translation` column of the Hugging Face translation examples
(`{"de": ..., "en": ...}` per row): the Multi30k copy embedded in this repository (the default, offline), a Hub
dataset (`--dataset_name wmt14 --dataset_config_name de-en`) or local UTF-8 files: `.tsv` (exactly two columns,
source<TAB>target, or a first line naming the columns, e.g. `de<TAB>en<TAB>domain`), `.jsonl`/`.json` (a
`translation` object or the two language keys per row) or a parallel-text prefix (`PREFIX.de` and `PREFIX.en`,
optionally gzipped). A file that is not that raises `DataError`, naming the file and line.

Local files are read line by line into an Arrow file in the `datasets` cache (`HF_DATASETS_CACHE`), memory-mapped,
so memory stays flat in the corpus size; the cache is keyed by each file's path and the SHA-256 of its bytes (an
edit that keeps the size and the modification time is read again; hashing costs ~1 % of reading). The
tokenized splits are cached too, keyed by the text's fingerprint and the whole tokenizer: the main process prepares
them once, and the other processes, reruns and resumes load them.
"""

import gzip
import hashlib
import json
import logging
import zlib
from collections.abc import Iterator
from itertools import chain, zip_longest
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, Features, List, Translation, Value, load_dataset
from datasets.exceptions import DatasetGenerationError, DatasetNotFoundError
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from hf_vanilla_transformer.loading import sha256_file

logger = logging.getLogger(__name__)

# Multi30k task 1: data/multi30k in a checkout, package data beside this file when the package is installed.
HERE = Path(__file__).resolve().parent
MULTI30K = HERE / "multi30k" if (HERE / "multi30k").is_dir() else HERE.parent / "data" / "multi30k"
MULTI30K_SPLITS = {"train": "train", "validation": "val", "test": "test_2016_flickr"}
TOKENIZED = Features({"input_ids": List(Value("int32")), "labels": List(Value("int32")), "length": Value("int32")})
TOKENIZE_BATCH = 10_000  # pairs per `encode_batch_fast` call: enough for the tokenizer's threads to share


class DataError(ValueError):
    """A data file that is not translation pairs; the message names the file and, where it can, the line."""


def open_text(path: Path):
    """A UTF-8 text file as bytes, gunzipped when its name ends in `.gz`."""
    return (gzip.open if path.suffix == ".gz" else open)(path, "rb")


GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)  # a .gz file cut short, or not gzip at all


def read_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """The numbered lines of a text file, without their line ends, read one at a time. Only "\\n" ends a line: a
    sentence may hold U+2028 and other "line breaks"."""
    number = 0
    with open_text(Path(path)) as file:
        try:
            for number, data in enumerate(file, start=1):
                try:
                    line = data.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise DataError(f"{path}, line {number}: not UTF-8 (byte {data[error.start]:#04x}); convert the "
                                    "file to UTF-8, e.g. with `iconv -t utf-8`") from None
                yield number, line.removesuffix("\n").removesuffix("\r")
        except GZIP_ERRORS as error:
            raise damaged_gzip(f"{path}, after line {number}", error) from None


def check_not_empty(path: Path) -> None:
    """Raise a `DataError` for a file of whitespace alone (found at its first bytes for any other)."""
    try:
        with open_text(path) as file:
            while chunk := file.read(1 << 20):
                if chunk.strip():
                    return
    except GZIP_ERRORS as error:
        raise damaged_gzip(str(path), error) from None
    raise DataError(f"{path} is empty")


def damaged_gzip(where: str, error: Exception) -> DataError:
    return DataError(f"{where}: the gzip data is cut short or damaged ({error}); download or compress it again")


def parallel_text_pairs(files: tuple, source_lang: str, target_lang: str) -> Iterator[dict]:
    """Line-aligned `PREFIX.SRC` and `PREFIX.TGT` files, one sentence a line."""
    (source, *_), (target, *_) = files
    count = {source_lang: 0, target_lang: 0}
    for source_line, target_line in zip_longest(read_lines(source), read_lines(target)):
        count[source_lang] += source_line is not None
        count[target_lang] += target_line is not None
        if source_line is not None and target_line is not None:
            yield {"translation": {source_lang: source_line[1], target_lang: target_line[1]}}
    if count[source_lang] != count[target_lang]:
        prefix = str(source).removesuffix(".gz").removesuffix(f".{source_lang}")
        raise DataError(f"{prefix}: {count[source_lang]} {source_lang} lines but {count[target_lang]} {target_lang} "
                        "lines; parallel files must be line-aligned")


def tsv_pairs(files: tuple, source_lang: str, target_lang: str) -> Iterator[dict]:
    """Tab-separated pairs: exactly two columns, source then target, or any columns under a first line that
    names them (`de<TAB>en<TAB>domain`), the languages read by name. Every line has the same number of columns."""
    ((path, *_),) = files
    columns, has_header = [source_lang, target_lang], False
    for number, line in read_lines(path):
        cells = line.split("\t")
        if number == 1 and source_lang in cells and target_lang in cells:
            columns, has_header = cells, True
            continue
        if len(cells) != len(columns):
            layout = f"the {len(columns)} of the header" if has_header else (
                f"2 ({source_lang}<TAB>{target_lang}), or a first line naming the columns")
            raise DataError(f"{path}, line {number}: {len(cells)} tab-separated column(s), expected {layout}")
        row = dict(zip(columns, cells))
        yield {"translation": {source_lang: row[source_lang], target_lang: row[target_lang]}}


def jsonl_pairs(files: tuple, source_lang: str, target_lang: str) -> Iterator[dict]:
    """JSON lines (or a `.json` list) of `{"translation": {"de": ..., "en": ...}}` or `{"de": ..., "en": ...}`."""
    ((path, *_),) = files
    lines = read_lines(path)
    first = next(lines)
    if path.endswith(".json") and first[1].lstrip().startswith("["):
        try:
            rows = enumerate(json.loads("\n".join(line for _, line in chain([first], lines))), start=1)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from None
        where = "item"
    else:
        rows, where = json_lines(chain([first], lines), path), "line"
    for number, row in rows:
        pair = row.get("translation", row) if isinstance(row, dict) else None
        missing = [lang for lang in (source_lang, target_lang) if not isinstance((pair or {}).get(lang), str)]
        if missing:
            found = sorted(pair) if isinstance(pair, dict) else type(row).__name__
            found = "; ".join([str(found)] + [f"{lang} is a {type(pair[lang]).__name__}" for lang in missing
                                              if isinstance(pair, dict) and lang in pair])
            raise DataError(f"{path}, {where} {number}: no {' or '.join(missing)} text (found {found}); expected "
                            f'{{"translation": {{"{source_lang}": ..., "{target_lang}": ...}}}}')
        yield {"translation": {source_lang: pair[source_lang], target_lang: pair[target_lang]}}


def json_lines(lines: Iterator[tuple[int, str]], path: str) -> Iterator[tuple[int, object]]:
    """The numbered JSON values of the non-blank lines."""
    for number, line in lines:
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}, line {number}: not valid JSON ({error.msg})") from None


def local_files(path: str, source_lang: str, target_lang: str) -> tuple:
    """The files of a local split (`.tsv`, `.jsonl`/`.json` or a parallel-text prefix), each with the SHA-256 of its
    bytes."""
    if path.endswith((".tsv", ".jsonl", ".json")):
        paths = [Path(path)]
    else:
        paths = []
        for lang in (source_lang, target_lang):
            candidates = [Path(f"{path}.{lang}"), Path(f"{path}.{lang}.gz")]
            found = next((p for p in candidates if p.is_file()), None)
            if found is None:
                raise DataError(f"No parallel text for language {lang!r}: neither {candidates[0]} nor {candidates[1]}")
            paths.append(found)
    for file in paths:
        if not file.is_file():
            raise DataError(f"{file}: no such file")
        check_not_empty(file)
    # Each file with the digest of its bytes: they key the cache, so an edited file is read again, whatever its size
    # and modification time say (`touch -r`, `cp -p` and tar keep them). A tuple: `datasets` would shard a list.
    return tuple((str(file), sha256_file(file)) for file in paths)


def load_file(path: str, source_lang: str, target_lang: str, files: tuple | None = None) -> Dataset:
    """A local split, `.tsv`, `.jsonl`/`.json` or a parallel-text prefix (its `local_files`), through the Arrow
    cache."""
    pairs = tsv_pairs if path.endswith(".tsv") else jsonl_pairs if path.endswith((".jsonl", ".json")) else (
        parallel_text_pairs)
    files = files or local_files(path, source_lang, target_lang)
    try:
        features = Features({"translation": Translation([source_lang, target_lang])})
        return Dataset.from_generator(pairs, features=features,
                                      gen_kwargs={"files": files, "source_lang": source_lang,
                                                  "target_lang": target_lang})
    except DatasetGenerationError as error:
        if isinstance(error.__cause__, DataError):
            raise error.__cause__ from None
        raise


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
        try:
            splits = load_dataset(dataset_name, dataset_config_name)
        except (ConnectionError, DatasetNotFoundError, FileNotFoundError) as error:
            raise DataError(f"The dataset {dataset_name!r} could not be loaded ({error}); without the network, pass "
                            "local files (--train_file ...) or load it once where the Hub is reachable") from None
    elif any(path is not None for path in (train_file, validation_file, test_file)):
        paths = {split: path for split, path in
                 {"train": train_file, "validation": validation_file, "test": test_file}.items() if path is not None}
        files = {split: local_files(path, source_lang, target_lang) for split, path in paths.items()}
        for split in set(files) - {"train"}:  # what the card calls validation or test is never the training data
            if "train" in files and [d for _, d in files[split]] == [d for _, d in files["train"]]:
                raise DataError(f"--{split}_file {paths[split]} holds the same pairs as --train_file "
                                f"{paths['train']}: its scores would be of the training data; pass held-out pairs")
        splits = DatasetDict({split: load_file(path, source_lang, target_lang, files[split])
                              for split, path in paths.items()})
    else:
        if not MULTI30K.is_dir():
            raise DataError(f"The embedded Multi30k is missing (expected in {MULTI30K}): reinstall the package, or "
                            "pass --train_file or --dataset_name")
        splits = DatasetDict(
            {split: load_file(str(MULTI30K / name), source_lang, target_lang)
             for split, name in MULTI30K_SPLITS.items()}
        )
    for split, dataset in splits.items():
        if "translation" not in dataset.column_names:
            raise DataError(f"Split {split!r} has columns {dataset.column_names}; expected a `translation` column")
        feature = dataset.features["translation"]  # a `Translation` feature, or a dict of string features
        languages = set(getattr(feature, "languages", None) or (feature.keys() if isinstance(feature, dict) else []))
        if languages and not {source_lang, target_lang} <= languages:
            raise DataError(f"Split {split!r} has languages {sorted(languages)}, not {source_lang} and {target_lang}")
        splits[split] = dataset.filter(
            lambda pairs: [bool(p[source_lang].strip() and p[target_lang].strip()) for p in pairs],
            input_columns="translation", batched=True, batch_size=TOKENIZE_BATCH, desc="Dropping empty pairs",
        )
        if len(splits[split]) < len(dataset):
            logger.warning("Dropped %d pairs of %r with an empty side", len(dataset) - len(splits[split]), split)
    return splits


def tokenize(dataset: Dataset, tokenizer, source_lang: str, target_lang: str, max_length: int,
             num_proc: int | None = None) -> Dataset:
    """Source `input_ids`, target `labels` and the pair's `length` (the longer side, for batching) with
    `datasets.map` over `num_proc` processes; pairs with a side longer than `max_length` tokens are left out
    (callers count them). The attention mask is the collator's (padding makes it), not stored.

    The result is cached beside the text, keyed by the text's fingerprint and the serialized tokenizer."""
    if isinstance(tokenizer, PreTrainedTokenizerFast):
        # The Rust tokenizer directly: what `tokenizer(texts)["input_ids"]` gives, without Python-side encodings. A
        # copy without the padding or truncation an earlier call may have left set: the same ids, the same key.
        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        backend.no_padding()
        backend.no_truncation()

        def ids(texts):
            return [encoding.ids for encoding in backend.encode_batch_fast(texts)]
        fingerprint = hashlib.sha256(backend.to_str().encode()).hexdigest()
    else:
        def ids(texts):
            return tokenizer(texts)["input_ids"]
        fingerprint = None  # `datasets` hashes the function, tokenizer included

    def encode(pairs):
        sources, labels = ids([p[source_lang] for p in pairs]), ids([p[target_lang] for p in pairs])
        lengths = [max(len(source), len(label)) for source, label in zip(sources, labels)]
        kept = [i for i, length in enumerate(lengths) if length <= max_length]  # dropped here, not by a filter,
        # so the result is one contiguous table (a filter's index mapping makes every later read a gather)
        return {"input_ids": [sources[i] for i in kept], "labels": [labels[i] for i in kept],
                "length": [lengths[i] for i in kept]}

    if fingerprint is not None:
        key = f"{dataset._fingerprint} {fingerprint} {source_lang} {target_lang} {max_length}"
        fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
    return dataset.map(encode, input_columns="translation", batched=True, batch_size=TOKENIZE_BATCH,
                       remove_columns=dataset.column_names, features=TOKENIZED, num_proc=num_proc,
                       new_fingerprint=fingerprint, desc="Tokenizing")


def lengths(dataset: Dataset) -> np.ndarray:
    """The `length` column as one array, read from Arrow at once (iterating the column costs ~0.3 ms a pair)."""
    return dataset.with_format("arrow", columns=["length"])[:]["length"].to_numpy()


class TokenBatchSampler:
    """§5.1: "Sentence pairs were batched together by approximate sequence length", up to `max_tokens` tokens.

    A batch's size is its padded size: examples × the longest of their `lengths` (source or target). The batches of an
    epoch depend on (seed, epoch) alone: lengths are bucketed with a random tie-break and the batch order is
    shuffled. Process `rank` of `num_replicas` takes every `num_replicas`-th batch; the batch count is first made a
    multiple of `num_replicas × group` (`group`: gradient accumulation) by halving the largest batches, so every
    process runs the same steps and an epoch sees each example exactly once.
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

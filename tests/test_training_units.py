"""The training recipe's pieces, in process: batching, schedule, checkpoints, averaging, BLEU, data loading."""

import copy
import json
import logging
import math
import os
from contextlib import nullcontext
from pathlib import Path

import evaluate
import pytest
import sacrebleu
import torch
from accelerate import Accelerator
from conftest import MULTI30K, step_run, tiny_config
from safetensors.torch import save_file
from transformers import DataCollatorForSeq2Seq

import hf_vanilla_transformer
from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration
from hf_vanilla_transformer.metrics import bleu_compute_metrics, corpus_bleu, load_bleu
from training import checkpoints
from training.data import DataError, TokenBatchSampler, load_translation_dataset, tokenize
from training.recipe import label_smoothed_loss, paper_optimizer


def sampler_lengths(n=1000, seed=0):
    return torch.randint(1, 40, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("replicas, group", [(1, 1), (2, 1), (3, 2)])
def test_token_batches_cover_every_example_once_per_epoch(replicas, group):
    lengths = sampler_lengths()
    samplers = [TokenBatchSampler(lengths, 500, seed=7, num_replicas=replicas, rank=r, group=group)
                for r in range(replicas)]
    for epoch in range(2):
        per_rank = []
        for sampler in samplers:
            sampler.set_epoch(epoch)
            per_rank.append(list(sampler))
        assert len({len(batches) for batches in per_rank}) == 1  # every process runs the same number of steps
        assert len(per_rank[0]) % group == 0
        seen = sorted(i for batches in per_rank for batch in batches for i in batch)
        assert seen == list(range(len(lengths)))  # nothing lost, nothing repeated
        for batch in (b for batches in per_rank for b in batches):
            assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 500
    first, second = samplers[0].global_batches(0), samplers[0].global_batches(1)
    assert first != second  # reshuffled every epoch
    assert first == TokenBatchSampler(lengths, 500, seed=7, num_replicas=replicas, group=group).global_batches(0)


def test_token_batches_group_examples_of_similar_length():
    lengths = sampler_lengths(2000)
    batches = TokenBatchSampler(lengths, 1000).global_batches(0)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread <= 2  # bucketing by length: little padding


def test_resuming_mid_epoch_continues_the_same_batches():
    sampler = TokenBatchSampler(sampler_lengths(), 500, seed=1, num_replicas=2, rank=1)
    sampler.set_epoch(3)
    full = list(sampler)
    sampler.set_epoch(3, start=5)
    assert list(sampler) == full[5:] and len(sampler) == len(full) - 5


def test_learning_rate_schedule_matches_the_papers_formula():
    model = VanillaTransformerForConditionalGeneration(tiny_config())
    d_model, warmup = model.config.d_model, 40
    for scale in (1.0, 2.5):
        optimizer, scheduler = paper_optimizer(model, warmup, scale * d_model**-0.5 * warmup**-0.5)
        assert optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["eps"] == 1e-9
        for step in range(1, 200):
            optimizer.step()
            scheduler.step()
            expected = scale * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)
            assert scheduler.get_last_lr()[0] == pytest.approx(expected, rel=1e-9)
    default, _ = paper_optimizer(model, warmup)
    assert default.defaults["lr"] == pytest.approx(d_model**-0.5 * warmup**-0.5)


def test_averaging_checkpoints_is_the_mean_of_their_tensors(tmp_path):
    tensors = [{"a": torch.randn(3, 4), "b": torch.randn(5).to(torch.bfloat16)} for _ in range(3)]
    for i, weights in enumerate(tensors):
        (tmp_path / str(i)).mkdir()
        save_file(weights, tmp_path / str(i) / "model.safetensors")
    average = checkpoints.average_checkpoints([tmp_path / str(i) for i in range(3)])
    torch.testing.assert_close(average["a"], (tensors[0]["a"] + tensors[1]["a"] + tensors[2]["a"]) / 3)
    assert average["b"].dtype == torch.bfloat16
    expected_b = sum(t["b"].double() for t in tensors) / 3
    torch.testing.assert_close(average["b"], expected_b.to(torch.bfloat16))
    save_file({"a": torch.randn(3, 4)}, tmp_path / "0" / "model.safetensors")
    with pytest.raises(ValueError, match="other tensors"):
        checkpoints.average_checkpoints([tmp_path / "0", tmp_path / "1"])


def test_checkpoints_are_atomic_verified_and_rotated(tmp_path):
    accelerator = Accelerator(cpu=True)
    accelerator.prepare(VanillaTransformerForConditionalGeneration(tiny_config()))
    for step in (10, 20, 30):
        checkpoints.save_checkpoint(accelerator, tmp_path, step, {"epoch": 0, "batches_done": step}, keep=2)
    assert [p.name for p in checkpoints.checkpoint_dirs(tmp_path)] == ["step-00000020", "step-00000030"]
    assert checkpoints.checkpoint_problem(tmp_path / "step-00000030") is None
    (tmp_path / ".tmp-step-00000040").mkdir()  # what a run killed while writing leaves behind
    assert [p.name for p in checkpoints.checkpoint_dirs(tmp_path)] == ["step-00000020", "step-00000030"]
    weights = tmp_path / "step-00000030" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    assert "damaged" in checkpoints.checkpoint_problem(tmp_path / "step-00000030")
    assert checkpoints.usable_checkpoints(tmp_path) == [tmp_path / "step-00000020"]
    (tmp_path / "step-00000020" / "trainer_state.json").unlink()
    assert "missing" in checkpoints.checkpoint_problem(tmp_path / "step-00000020")
    assert checkpoints.usable_checkpoints(tmp_path) == []


def test_pruning_never_deletes_the_checkpoint_just_written(tmp_path):
    """Left-over checkpoints of higher steps must not push out the new ones: the newest written always stays."""
    accelerator = Accelerator(cpu=True)
    accelerator.prepare(VanillaTransformerForConditionalGeneration(tiny_config()))
    for step in (50, 60):
        checkpoints.save_checkpoint(accelerator, tmp_path, step, {"epoch": 0, "batches_done": step}, keep=2)
    checkpoints.save_checkpoint(accelerator, tmp_path, 10, {"epoch": 0, "batches_done": 10}, keep=2)
    assert [p.name for p in checkpoints.checkpoint_dirs(tmp_path)] == ["step-00000010", "step-00000060"]
    checkpoints.set_aside(tmp_path / "step-00000060", "a test")
    assert [p.name for p in checkpoints.checkpoint_dirs(tmp_path)] == ["step-00000010"]
    assert (tmp_path / "unusable-step-00000060").is_dir()


@pytest.mark.parametrize("writer", ["os", "torch"])
def test_a_full_disk_while_checkpointing_names_the_folder_and_keeps_earlier_checkpoints(tmp_path, monkeypatch, writer):
    """The OS's ENOSPC, or torch's zip writer failing (as it does with a few MB free) while little space is left."""
    import errno
    import shutil

    accelerator = Accelerator(cpu=True)
    accelerator.prepare(VanillaTransformerForConditionalGeneration(tiny_config()))
    checkpoints.save_checkpoint(accelerator, tmp_path, 10, {"epoch": 0, "batches_done": 10}, keep=2)

    def disk_full(folder, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"half")  # the part written before the disk filled up
        if writer == "os":
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 << 30, 10 << 30, 3 << 20))
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1536 vs 1430")

    monkeypatch.setattr(accelerator, "save_state", disk_full)
    with pytest.raises(OSError, match=f"No space left on device at {tmp_path}.*step 20.*step-00000010"):
        checkpoints.save_checkpoint(accelerator, tmp_path, 20, {"epoch": 0, "batches_done": 20}, keep=2)
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000010"]  # no half-written folder left
    assert checkpoints.checkpoint_problem(tmp_path / "step-00000010") is None


def test_a_damaged_random_state_is_a_checkpoint_problem(tmp_path):
    accelerator = Accelerator(cpu=True)
    accelerator.prepare(VanillaTransformerForConditionalGeneration(tiny_config()))
    path = checkpoints.save_checkpoint(accelerator, tmp_path, 10, {"epoch": 0, "batches_done": 10}, keep=2)
    assert checkpoints.rng_state_problem(path, 0) is None
    assert "random_states_1.pkl is missing" in checkpoints.rng_state_problem(path, 1)
    (path / "random_states_0.pkl").write_bytes(b"not a pickle")
    assert "random_states_0.pkl cannot be read" in checkpoints.rng_state_problem(path, 0)


def test_weights_of_another_model_are_a_checkpoint_problem(tmp_path):
    accelerator = Accelerator(cpu=True)
    accelerator.prepare(VanillaTransformerForConditionalGeneration(tiny_config()))
    path = checkpoints.save_checkpoint(accelerator, tmp_path, 10, {"epoch": 0, "batches_done": 10}, keep=2)
    assert checkpoints.weights_problem(path, VanillaTransformerForConditionalGeneration(tiny_config())) is None
    wider = VanillaTransformerForConditionalGeneration(tiny_config(d_model=64))
    assert "weights are of another model" in checkpoints.weights_problem(path, wider)


def test_bleu_of_a_perfect_translation_is_100_and_offline_equals_sacrebleu():
    metric = load_bleu()
    assert "sacrebleu" in type(metric).__module__.lower() or metric.name == "sacrebleu"
    references = ["A dog runs across the grass.", "Two men are talking near a red car.", "A girl jumps."]
    assert corpus_bleu(references, references, metric)["score"] == pytest.approx(100.0)
    hypotheses = ["A dog is running on grass.", "Two men talk near a car.", "The girl jumps high."]
    result = corpus_bleu(hypotheses, references, metric)
    assert result["score"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)
    assert result["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")


def test_bleu_falls_back_to_the_shipped_metric_when_the_hub_is_out_of_reach(monkeypatch, caplog):
    from huggingface_hub import constants

    fetch = evaluate.load

    def without_network(path, *args, **kwargs):
        if path == "sacrebleu":
            raise ConnectionError("Couldn't reach https://huggingface.co")
        return fetch(path, *args, **kwargs)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", False)
    monkeypatch.setattr(evaluate, "load", without_network)
    with caplog.at_level(logging.WARNING, logger="hf_vanilla_transformer.metrics"):
        metric = load_bleu()
    assert "the sacrebleu metric shipped with hf_vanilla_transformer" in caplog.text
    assert "Couldn't reach https://huggingface.co" in caplog.text and "HF_HUB_OFFLINE=1" in caplog.text
    hypotheses, references = ["A dog is running on grass."], ["A dog runs across the grass."]
    assert corpus_bleu(hypotheses, references, metric)["score"] == pytest.approx(
        sacrebleu.corpus_bleu(hypotheses, [references]).score)


def test_the_papers_bleu_scores_moses_tokens_with_compounds_split_as_counted_by_hand():
    """Moses tokenization splits "Teppich." and escapes "&"; the compound split makes "Boden-Teppich" three tokens."""
    from hf_vanilla_transformer.metrics import paper_bleu

    hypotheses = ["Die Katze sitzt auf dem Boden-Teppich.", "Ein Mann & eine Frau."]
    references = ["Die Katze sitzt auf der Matte.", "Ein Mann & eine junge Frau lachen."]
    # Tokens: "Die Katze sitzt auf dem Boden ##AT##-##AT## Teppich ." (9) against "Die Katze sitzt auf der Matte ."
    # (7): n-gram matches 5/9, 3/8, 2/7, 1/6. "Ein Mann &amp; eine Frau ." (6) against "Ein Mann &amp; eine junge
    # Frau lachen ." (8): 6/6, 3/5, 2/4, 1/3, and a brevity penalty exp(1 - 8/6) for it alone.
    first = paper_bleu(hypotheses[:1], references[:1], "de")
    assert first["score"] == pytest.approx(100 * (5 / 9 * 3 / 8 * 2 / 7 * 1 / 6) ** 0.25)
    second = paper_bleu(hypotheses[1:], references[1:], "de")["score"]
    assert second == pytest.approx(100 * math.exp(1 - 8 / 6) * (1 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    # The corpus sums the counts: 15 tokens a side (no brevity penalty), 11/15, 6/13, 4/11, 2/9.
    corpus = paper_bleu(hypotheses, references, "de")
    assert corpus["score"] == pytest.approx(100 * (11 / 15 * 6 / 13 * 4 / 11 * 2 / 9) ** 0.25)
    assert "compound split" in corpus["signature"] and "-l de" in corpus["signature"]
    # sacreBLEU's 13a keeps "Boden-Teppich" one token: 5/7, 3/6, 2/5, 1/4 for the first pair, another number.
    assert corpus_bleu(hypotheses[:1], references[:1])["score"] == pytest.approx(
        100 * (5 / 7 * 3 / 6 * 2 / 5 * 1 / 4) ** 0.25)
    # multi-bleu.perl does not smooth: no 4-gram in common is a BLEU of 0.
    assert paper_bleu(["Ein Hund läuft."], ["Ein Hund rennt."], "de")["score"] == 0.0


def test_compute_metrics_for_seq2seq_trainer(tokenizer):
    from transformers import EvalPrediction

    texts = ["A dog runs across the grass.", "Two men are talking."]
    labels = tokenizer(text_target=texts, padding=True, return_tensors="np")["input_ids"]
    labels[labels == tokenizer.pad_token_id] = -100
    metrics = bleu_compute_metrics(tokenizer)(EvalPrediction(predictions=labels.copy(), label_ids=labels))
    assert metrics["bleu"] == pytest.approx(100.0) and metrics["gen_len"] > 0


def test_embedded_multi30k_and_local_files_load(tmp_path, tokenizer):
    splits = load_translation_dataset("de", "en")
    assert {k: len(v) for k, v in splits.items()} == {"train": 29000, "validation": 1014, "test": 1000}
    assert splits["test"][0]["translation"]["en"] == "A man in an orange hat starring at something."
    (tmp_path / "pairs.tsv").write_text('Ein "Hund".\tA "dog".\nZwei Katzen.\tTwo cats.\n \tNothing.\n')
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"translation": {"de": "Ein Hund.", "en": "A dog."}}) + "\n")
    tsv = load_translation_dataset("de", "en", train_file=str(tmp_path / "pairs.tsv"),
                                   validation_file=str(tmp_path / "pairs.jsonl"))
    assert tsv["train"][0]["translation"] == {"de": 'Ein "Hund".', "en": 'A "dog".'}
    assert len(tsv["train"]) == 2  # the pair with an empty side is dropped
    assert tsv["validation"][0]["translation"] == {"de": "Ein Hund.", "en": "A dog."}
    prefix = tmp_path / "text"
    (tmp_path / "text.de").write_text("Ein Hund.\nZwei Katzen.\n")
    (tmp_path / "text.en").write_text("A dog.\n")
    with pytest.raises(ValueError, match="line-aligned"):
        load_translation_dataset("de", "en", train_file=str(prefix))
    with pytest.raises(DataError, match="text.fr"):
        load_translation_dataset("de", "fr", train_file=str(prefix))
    tokenized = tokenize(tsv["train"], tokenizer, "de", "en", max_length=64)
    assert tokenized.column_names == ["input_ids", "labels", "length"]
    pairs = tsv["train"]["translation"]
    expected = tokenizer([p["de"] for p in pairs], text_target=[p["en"] for p in pairs])
    assert tokenized["input_ids"] == expected["input_ids"] and tokenized["labels"] == expected["labels"]
    assert tokenized[0]["length"] == max(len(tokenized[0]["input_ids"]), len(tokenized[0]["labels"]))
    # The collator makes the attention mask that padding needs.
    batch = DataCollatorForSeq2Seq(tokenizer)(list(tokenized.remove_columns("length")))
    assert batch["attention_mask"].tolist() == (batch["input_ids"] != tokenizer.pad_token_id).int().tolist()


def test_local_files_are_cached_as_arrow_and_tokenized_once(tmp_path, tokenizer, monkeypatch):
    """The text goes to an Arrow file on disk (memory-mapped); the tokenized split is cached beside it, keyed by the
    text and the tokenizer; an edited file is read again, even where its size and modification time stay."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    (tmp_path / "corpus.de").write_text("Ein Hund.\nZwei Katzen.\nDrei Vögel.\n")
    (tmp_path / "corpus.en").write_text("A dog.\nTwo cats.\nThree birds.\n")
    train = load_translation_dataset("de", "en", train_file=str(tmp_path / "corpus"))["train"]
    assert train.cache_files and all(Path(f["filename"]).is_relative_to(tmp_path / "cache") for f in train.cache_files)
    first = tokenize(train, tokenizer, "de", "en", max_length=64)
    again = tokenize(load_translation_dataset("de", "en", train_file=str(tmp_path / "corpus"))["train"], tokenizer,
                     "de", "en", max_length=64)
    assert again.cache_files == first.cache_files and again["input_ids"] == first["input_ids"]
    used = copy.deepcopy(tokenizer)  # as a call with padding and truncation leaves the Rust tokenizer: same ids, key
    used(["Ein Hund.", "Zwei Katzen laufen."], padding=True, truncation=True, max_length=4)
    assert tokenize(train, used, "de", "en", max_length=64).cache_files == first.cache_files
    other = hf_vanilla_transformer.train_tokenizer(["Ein Hund.", "A dog."] * 50, vocab_size=40)
    assert tokenize(train, other, "de", "en", max_length=64).cache_files != first.cache_files
    (tmp_path / "corpus.en").write_text("A dog.\nTwo cats.\nThree small birds.\n")
    edited = load_translation_dataset("de", "en", train_file=str(tmp_path / "corpus"))["train"]
    assert edited[2]["translation"]["en"] == "Three small birds."
    # An edit that keeps the size and the modification time (`touch -r`, `cp -p`, tar): the content keys the cache.
    stat = (tmp_path / "corpus.en").stat()
    (tmp_path / "corpus.en").write_text("A dog.\nTwo cats.\nThree large birds.\n")
    os.utime(tmp_path / "corpus.en", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    restored = (tmp_path / "corpus.en").stat()
    assert (restored.st_size, restored.st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    same_size = load_translation_dataset("de", "en", train_file=str(tmp_path / "corpus"))["train"]
    assert same_size[2]["translation"]["en"] == "Three large birds."


def test_multi30k_copy_is_complete():
    for split in ("train", "val", "test_2016_flickr"):
        for lang in ("de", "en", "fr"):
            assert (MULTI30K / f"{split}.{lang}.gz").is_file()


def test_a_hub_dataset_out_of_reach_is_one_line_naming_it():
    """Offline (as the tests run), a Hub dataset that is not cached: a `DataError`, not `datasets`' traceback."""
    with pytest.raises(DataError, match="The dataset 'someone/no-such-dataset' could not be loaded.*--train_file"):
        load_translation_dataset("de", "en", dataset_name="someone/no-such-dataset")


def test_hub_style_datasets_with_a_translation_feature_load(tmp_path):
    """What `--dataset_name` gets from the Hub (wmt14 and the like): splits with a `Translation` feature."""
    from datasets import Dataset, Features, Translation

    features = Features({"translation": Translation(languages=["de", "en"])})
    rows = {"translation": [{"de": "Ein Hund.", "en": "A dog."}, {"de": "Eine Katze.", "en": "A cat."}]}
    for split in ("train", "validation", "test"):
        Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / f"{split}.parquet"))
    splits = load_translation_dataset("de", "en", dataset_name=str(tmp_path))
    assert sorted(splits) == ["test", "train", "validation"] and splits["train"][1]["translation"]["en"] == "A cat."
    with pytest.raises(ValueError, match=r"languages \['de', 'en'\], not de and fr"):
        load_translation_dataset("de", "fr", dataset_name=str(tmp_path))


def test_tsv_is_two_columns_or_a_header_naming_them(tmp_path):
    three = tmp_path / "three.tsv"
    three.write_text("Ein Hund.\tA dog.\tflickr\nZwei Katzen.\tTwo cats.\tflickr\n")
    with pytest.raises(DataError, match=r"three.tsv, line 1: 3 tab-separated column\(s\), expected 2"):
        load_translation_dataset("de", "en", train_file=str(three))
    named = tmp_path / "named.tsv"
    named.write_text("domain\ten\tde\nflickr\tA dog.\tEin Hund.\nflickr\tTwo cats.\tZwei Katzen.\n")
    pairs = load_translation_dataset("de", "en", train_file=str(named))["train"]["translation"]
    assert pairs == [{"de": "Ein Hund.", "en": "A dog."}, {"de": "Zwei Katzen.", "en": "Two cats."}]
    named.write_text("de\ten\tdomain\nEin Hund.\tA dog.\tflickr\nZwei Katzen.\tTwo cats.\n")
    with pytest.raises(DataError, match="named.tsv, line 3: 2 tab-separated column.*the 3 of the header"):
        load_translation_dataset("de", "en", train_file=str(named))


@pytest.mark.parametrize("name, content, message", [
    ("latin1.tsv", "Ein Hund.\tA dog.\nGrüße.\tGreetings.\n".encode("latin-1"), r"latin1.tsv, line 2: not UTF-8"),
    ("empty.tsv", b"\n", r"empty.tsv is empty"),
    ("mixed.tsv", b"Ein Hund.\tA dog.\nZwei Katzen.\n", r"mixed.tsv, line 2: 1 tab-separated column"),
    ("broken.jsonl", b'{"translation": {"de": "a", "en": "b"}}\n{"translation": \n',
     r"broken.jsonl, line 2: not valid JSON"),
    ("keys.jsonl", b'{"translation": {"de": "a", "en": "b"}}\n{"translation": {"de": "a", "fr": "b"}}\n',
     r"keys.jsonl, line 2: no en text \(found \['de', 'fr'\]\)"),
    ("text.de.gz", (MULTI30K / "train.de.gz").read_bytes()[:5000],  # cut short
     r"text.de.gz.*: the gzip data is cut short or damaged"),
    ("number.jsonl", b'{"translation": {"de": 5, "en": "A dog."}}\n',
     r"number.jsonl, line 1: no de text \(found \['de', 'en'\]; de is a int\)"),
    ("text.de", "Grüße.\n".encode("latin-1"), r"text.de, line 1: not UTF-8"),
])
def test_bad_data_files_give_one_line_errors_naming_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    (tmp_path / "text.en").write_text("Greetings.\n")
    path = tmp_path / (name if not name.startswith("text.") else "text")
    with pytest.raises(DataError, match=message) as error:
        load_translation_dataset("de", "en", train_file=str(path))
    assert "\n" not in str(error.value)


def test_over_long_pairs_are_left_out_of_tokenized_data(tokenizer):
    from datasets import Dataset

    long = " ".join(["Hund"] * 100)
    pairs = Dataset.from_dict({"translation": [{"de": "Ein Hund.", "en": "A dog."}, {"de": long, "en": "Dogs."},
                                               {"de": "Katzen.", "en": long}]})
    tokenized = tokenize(pairs, tokenizer, "de", "en", max_length=64)
    assert len(tokenized) == 1 and tokenized[0]["length"] <= 64


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(False, False, "no"), (True, False, "bf16"),
                                                        (False, True, "bf16")])
def test_auto_mixed_precision_is_bf16_only_where_the_cpu_multiplies_bf16_natively(monkeypatch, avx512_bf16, amx,
                                                                                   expected):
    """An AVX2-only CPU emulates bf16 matrix products ~100x slower than float32: the default must not pick it."""
    from training.train import native_mixed_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert native_mixed_precision() == expected


def test_a_steps_tokens_split_into_batch_size_processes_and_accumulation():
    """§5.1's ~25000 tokens a step, whatever the hardware: the batch per process, or the accumulation."""
    from training.recipe import split_tokens_per_step

    assert split_tokens_per_step(25000, 8) == (3125, 1)  # the paper's 8 GPUs
    assert split_tokens_per_step(25000, 1) == (25000, 1)
    assert split_tokens_per_step(25000, 2, max_tokens=4096) == (3125, 4)  # 4 micro-batches of 3125 ≤ 4096
    assert split_tokens_per_step(25000, 4, accumulation=2) == (3125, 2)
    with pytest.raises(ValueError, match="does not divide into 3 process.* × 3 micro-batch.*24993 or 25002"):
        split_tokens_per_step(25000, 3, max_tokens=4096)  # never 3 × 3 × 4096 = 36,864 tokens a step
    with pytest.raises(ValueError, match="25002"):
        split_tokens_per_step(25000, 6)
    with pytest.raises(ValueError, match="give one of them, not both"):
        split_tokens_per_step(25000, 1, max_tokens=4096, accumulation=2)


def test_a_recipe_sets_the_papers_flags_and_any_flag_given_overrides_it():
    from training.train import parse_args

    big = parse_args(["--recipe", "wmt14-en-de-big"])
    assert (big.config_name, big.dropout, big.max_steps, big.average_checkpoints, big.keep_checkpoints) == (
        "big", 0.3, 300_000, 20, 20)
    assert (big.dataset_name, big.dataset_config_name, big.source_lang, big.target_lang) == (
        "wmt/wmt14", "de-en", "en", "de")
    assert (big.vocab_size, big.warmup_steps, big.learning_rate, big.tokens_per_step, big.bleu_style) == (
        37000, 4000, 0.0, 25000, "paper")
    base = parse_args(["--recipe", "wmt14-en-de-base", "--dropout", "0.2", "--train_file", "corpus"])
    assert (base.config_name, base.dropout, base.max_steps, base.average_checkpoints) == ("base", 0.2, 100_000, 5)
    assert base.dataset_name is None and base.dataset_config_name is None  # local files replace the recipe's data
    continued = parse_args(["--recipe", "wmt14-en-de-base", "--model_name_or_path", "saved"])
    assert continued.config_name is None and continued.vocab_size is None  # the saved model fixes them
    with pytest.raises(SystemExit):  # but given by hand, they are refused as ever
        parse_args(["--recipe", "wmt14-en-de-base", "--model_name_or_path", "saved", "--config_name", "big"])
    plain = parse_args([])
    assert (plain.recipe, plain.tokens_per_step, plain.max_tokens, plain.dropout) == (None, None, None, None)


def test_translation_shares_the_sentences_among_the_processes_and_gives_all_of_them_to_each(monkeypatch):
    from types import SimpleNamespace

    from training import evaluation

    calls = {}

    def fake_translate(model, tokenizer, sentences, **kwargs):
        calls[rank] = len(sentences)
        return [sentence.upper() for sentence in sentences]

    sources = ["a", "b", "c", "d", "e"]
    outputs = {rank: [s.upper() for s in sources[rank::2]] for rank in (0, 1)}
    monkeypatch.setattr(evaluation, "translate", fake_translate)
    monkeypatch.setattr(evaluation, "gather_object", lambda mine: [outputs[0], outputs[1]])
    for rank in (0, 1):
        accelerator = SimpleNamespace(num_processes=2, process_index=rank, autocast=nullcontext,
                                      device=torch.device("cpu"))
        assert evaluation.translate_split(None, None, sources, accelerator, 1024) == ["A", "B", "C", "D", "E"]
    assert calls == {0: 3, 1: 2}


def test_the_queued_training_step_equals_the_plain_step_and_skips_a_non_finite_update(tokenizer, pairs, tmp_path,
                                                                                        caplog):
    """`train_step` reads nothing back from the device (the host learns a step's tokens, stop request and finite
    gradient a step later, `Steps.settle`), and skips a non-finite update on the device (fused Adam's `found_inf`):
    losses, weights and Adam's state equal the plain step's, which checks the norm on the host, step by step."""
    from transformers import BatchEncoding

    from training.train import Steps, train_step

    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = VanillaTransformerForConditionalGeneration(tiny_config(dropout=0.0))
    reference = copy.deepcopy(model)
    poisoned = {"step": None}
    for net in (model, reference):  # step 2's gradient is NaN in both
        net.lm_head.weight.register_hook(lambda grad: grad * math.nan if poisoned["step"] == 2 else grad)
    reference_optimizer, reference_scheduler = paper_optimizer(reference, warmup_steps=4, learning_rate=1e-3)
    run, optimizer, collate, features = step_run(tmp_path, accelerator, model, tokenizer, pairs, 32)
    steps, tokens, skipped = Steps(), 0, []
    for step in range(1, 5):
        poisoned["step"] = step
        micro_batches = [BatchEncoding(collate(features[i : i + 4])) for i in (8 * step - 8, 8 * step - 4)]
        loss = train_step(run, micro_batches, steps)
        assert len(steps.queued) == step  # nothing read back yet
        count = sum(int((b["labels"] != -100).sum()) for b in micro_batches)
        expected = 0.0
        for batch in micro_batches:  # §5.4's loss: the model's own is the plain cross-entropy
            logits = reference(**batch).logits
            part = label_smoothed_loss(logits, batch["labels"], 0.1) / count
            part.backward()
            expected += part.detach()
        norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), math.inf)
        if torch.isfinite(norm):
            reference_optimizer.step()
        else:
            skipped.append(step)
        reference_scheduler.step()
        reference_optimizer.zero_grad(set_to_none=True)
        tokens += count
        torch.testing.assert_close(loss, expected)
        for ours, theirs in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
        assert [s["step"] for s in optimizer.state.values()][0] == reference_optimizer.state[
            next(iter(reference.parameters()))]["step"]
    assert skipped == [2]
    with caplog.at_level(logging.WARNING, logger="training.train"):
        assert steps.settle(run, every=False) == tokens - count  # all but the newest step
    assert "step 2: the gradient norm is not finite; the update is skipped" in caplog.text
    assert steps.settle(run, every=True) == count and not steps.queued
    assert steps.non_finite == [] and not steps.stop  # step 2's was followed by finite ones


@pytest.mark.parametrize("gpu, capability, expected", [("A100", (8, 0), ("bf16", True)),
                                                       ("H100", (9, 0), ("bf16", True)),
                                                       ("V100", (7, 0), ("fp16", False)),
                                                       ("T4", (7, 5), ("fp16", False))])
def test_auto_mixed_precision_fits_the_gpu(monkeypatch, gpu, capability, expected):
    """bf16 where the GPU multiplies it natively (Ampere on; emulation does not count), else fp16 with loss scaling;
    TF32 for float32 matrix products from Ampere on."""
    from training.train import native_mixed_precision, tf32_available

    def bf16_supported(including_emulation=True):
        return capability >= (8, 0) or including_emulation  # torch emulates bf16 on a V100 or T4

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert (native_mixed_precision(), tf32_available()) == expected


def test_tf32_on_a_machine_without_it_is_refused_in_one_line(tmp_path):
    from training import train

    with pytest.raises(train.RunStopped, match="--tf32: this machine has no GPU with TF32 tensor cores"):
        train.start(train.parse_args(["--output_dir", str(tmp_path), "--tf32", "--no-with_tracking"]))

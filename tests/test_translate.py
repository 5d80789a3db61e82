"""`translate` and its CLI at the edges: blank lines, bad bytes, missing folders, unknown or over-long input,
and a tokenizer that does not belong to the model."""

import logging
import shutil

import pytest
import torch
from conftest import read_multi30k, run_module, tiny_config
from test_ecosystem import RESULTS
from transformers import pipeline

from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration, hub, train_tokenizer
from hf_vanilla_transformer.translate import translate


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    model = VanillaTransformerForConditionalGeneration(tiny_config(src_lang="de", tgt_lang="en")).eval()
    return hub.save_for_hub(tmp_path_factory.mktemp("model") / "vanilla-de-en", model, tokenizer, RESULTS)


def cli(folder, *args, stdin: bytes = b""):
    return run_module("hf_vanilla_transformer.translate", "--model", folder, "--num_beams", "1", "--max_new_tokens",
                      "4", *args, stdin=stdin)


def test_blank_lines_translate_to_blank_lines_and_the_rest_is_translated(folder):
    result = cli(folder, stdin=b"Ein Hund.\n\nZwei Katzen.\n   \n")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.split("\n")
    assert len(lines) == 5 and lines[4] == ""  # four translations, each ending in a newline
    assert lines[1] == "" and lines[3] == "" and lines[0] and lines[2]


def test_bad_stdin_and_a_missing_model_folder_get_clear_messages(folder, tmp_path):
    bad = cli(folder, stdin=b"Ein Hund.\n" + "Grüße.\n".encode("latin-1"))
    assert bad.returncode != 0 and "standard input, line 2, is not UTF-8" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = cli(tmp_path / "no-such-model", "Ein Hund.")
    assert missing.returncode != 0 and f"No model folder at {tmp_path / 'no-such-model'}" in missing.stderr
    assert "Repo id" not in missing.stderr and "Traceback" not in missing.stderr


def test_a_tokenizer_of_another_vocabulary_is_refused_by_the_cli_and_the_pipeline(folder, tmp_path, tokenizer):
    """Same size and special ids, other tokens: the fingerprint in config.json tells them apart."""
    swapped = tmp_path / "swapped"
    shutil.copytree(folder, swapped)
    other = train_tokenizer(read_multi30k("train", "de", 4000)[2000:] + read_multi30k("train", "en", 4000)[2000:],
                            vocab_size=600)
    assert len(other) == len(tokenizer)
    other.save_pretrained(swapped)
    result = cli(swapped, "Ein Hund.")
    assert result.returncode != 0 and "not the one the model was trained with" in result.stderr
    with pytest.raises(ValueError, match="not the one the model was trained with"):
        pipeline("translation", model=str(swapped), trust_remote_code=True)


def test_unknown_and_over_long_input_is_reported(folder, tokenizer, caplog):
    model = VanillaTransformerForConditionalGeneration.from_pretrained(folder).eval()
    with caplog.at_level(logging.WARNING, logger="hf_vanilla_transformer.translate"):
        translate(model, tokenizer, ["一只狗在草地上跑。"], num_beams=1, max_new_tokens=3)
    assert "unknown to the model's vocabulary (<unk>): is the input in de?" in caplog.text
    caplog.clear()
    long = " ".join(["Ein Hund läuft."] * 60)  # far more than max_position_embeddings=128 tokens
    assert len(tokenizer(long)["input_ids"]) > 128
    with caplog.at_level(logging.WARNING, logger="hf_vanilla_transformer.translate"):
        translations = translate(model, tokenizer, [long, "Ein Hund."], num_beams=1, max_new_tokens=3)
    assert "1 sentence(s) longer than max_position_embeddings=128 tokens were truncated" in caplog.text
    assert len(translations) == 2


def test_the_pipeline_names_an_empty_item_and_warns_on_unknown_input_as_translate_does(folder, caplog):
    translator = pipeline("translation", model=str(folder), trust_remote_code=True)
    with pytest.raises(ValueError, match="Item 1 of the inputs is empty"):
        translator(["Ein Hund.", " "], max_new_tokens=3)
    with caplog.at_level(logging.WARNING):
        translator("一只狗在草地上跑。", max_new_tokens=3, num_beams=1)
    assert "unknown to the model's vocabulary (<unk>): is the input in de?" in caplog.text


def test_batches_by_tokens_translate_as_batches_by_sentences(tokenizer, monkeypatch):
    """A GPU validates in batches of a token budget (source tokens with padding, times the beams): each batch keeps
    to it, and the translations equal those of batches of 64 sentences, in input order."""
    from hf_vanilla_transformer import translate as module

    torch.manual_seed(0)
    model = VanillaTransformerForConditionalGeneration(tiny_config()).eval()
    sources = read_multi30k("val", "de", 40)
    expected = translate(model, tokenizer, sources, num_beams=2, max_new_tokens=6)
    sizes = []
    generate = model.generate

    def recording_generate(input_ids, **kwargs):
        sizes.append(input_ids.shape)
        return generate(input_ids=input_ids, **kwargs)

    monkeypatch.setattr(model, "generate", recording_generate)
    assert translate(model, tokenizer, sources, batch_size=None, max_tokens=200, num_beams=2,
                     max_new_tokens=6) == expected
    assert len(sizes) > 4 and all(rows * length * 2 <= 200 for rows, length in sizes)
    assert module.batches(list("abc"), [5, 500, 6], None, 100) == [["a"], ["b"], ["c"]]  # one too long goes alone
    assert module.batches(list("abcde"), [1] * 5, 2, None) == [["a", "b"], ["c", "d"], ["e"]]

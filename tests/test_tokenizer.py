import json

import pytest
from conftest import read_multi30k
from transformers import AutoTokenizer

from hf_vanilla_transformer import (
    VanillaTransformerConfig,
    check_tokenizer_matches_model,
    record_tokenizer,
    train_tokenizer,
    vocabulary_fingerprint,
)


def test_special_tokens_have_the_configs_ids(tokenizer):
    assert [tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token] == [
        "<pad>", "<s>", "</s>", "<unk>"]
    config = VanillaTransformerConfig()
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (
        config.pad_token_id, config.bos_token_id, config.eos_token_id)
    assert tokenizer.unk_token_id == 3 and len(tokenizer) == 600


def test_sources_and_targets_end_with_eos_and_pad_on_the_right(tokenizer):
    encoded = tokenizer(["Ein Hund läuft.", "Zwei Männer stehen auf der Straße."],
                        text_target=["A dog runs.", "Two men stand in the street."], padding=True)
    for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"]):
        assert ids[sum(mask) - 1] == tokenizer.eos_token_id
        assert all(i == tokenizer.pad_token_id for i in ids[sum(mask):])
    assert encoded["labels"][0][-1] in (tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert tokenizer.eos_token_id in encoded["labels"][0]
    assert tokenizer.decode(encoded["labels"][1], skip_special_tokens=True) == "Two men stand in the street."


def test_round_trip_on_multi30k_is_exact(tokenizer):
    """Decoding gives back every training sentence (umlauts, ß, punctuation), whitespace normalised."""
    sentences = read_multi30k("train", "de", 2000) + read_multi30k("train", "en", 2000)
    for sentence in sentences:
        ids = tokenizer(sentence)["input_ids"]
        assert tokenizer.decode(ids, skip_special_tokens=True) == " ".join(sentence.split()), sentence
    assert tokenizer.decode(tokenizer("Größere  Mädchen   grüßen.")["input_ids"], skip_special_tokens=True) == (
        "Größere Mädchen grüßen.")


def test_unknown_characters_become_unk(tokenizer):
    ids = tokenizer("Ein Hund ☃")["input_ids"]
    assert tokenizer.unk_token_id in ids


def test_save_and_reload(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Eine Frau mit einem großen Geldbeutel geht an einem Tor vorbei."
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert reloaded.pad_token_id == tokenizer.pad_token_id and reloaded.model_max_length == 1024


def test_training_checks_its_inputs():
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["a b c"], vocab_size=4)
    with pytest.raises(ValueError, match="empty"):
        train_tokenizer(["", " "], vocab_size=100)


def test_mismatched_tokenizer_and_model_are_reported(tokenizer):
    with pytest.raises(ValueError, match="vocab_size"):
        check_tokenizer_matches_model(tokenizer, VanillaTransformerConfig(vocab_size=100))
    with pytest.raises(ValueError, match="pad_token_id"):
        check_tokenizer_matches_model(tokenizer, VanillaTransformerConfig(vocab_size=600, pad_token_id=5))
    check_tokenizer_matches_model(tokenizer, VanillaTransformerConfig(vocab_size=600))


def test_a_tokenizer_with_another_vocabulary_is_refused(tmp_path, tokenizer, pairs):
    """Same size, same special ids, other tokens: only the recorded vocabulary fingerprint tells them apart."""
    config = VanillaTransformerConfig(vocab_size=600)
    record_tokenizer(config, tokenizer)
    assert config.tokenizer_fingerprint == vocabulary_fingerprint(tokenizer)
    other_data = read_multi30k("train", "de", 4000)[2000:] + read_multi30k("train", "en", 4000)[2000:]
    same_size = train_tokenizer(other_data, vocab_size=600)
    assert len(same_size) == 600 and same_size.pad_token_id == tokenizer.pad_token_id
    smaller = train_tokenizer([s for pair in pairs for s in pair], vocab_size=500)
    for wrong in (same_size, smaller):
        with pytest.raises(ValueError, match="not the one the model was trained with"):
            check_tokenizer_matches_model(wrong, config)
    tokenizer.save_pretrained(tmp_path)
    check_tokenizer_matches_model(AutoTokenizer.from_pretrained(tmp_path), config)  # a reload is the same vocabulary


def test_a_saved_tokenizer_loads_without_the_package_or_remote_code(tmp_path, tokenizer, model):
    """tokenizer.json is all a tokenizer needs: `AutoTokenizer` (even refusing the model's code) and
    `PreTrainedTokenizerFast` load it in a Python without this package, the same ids and special tokens."""
    from conftest import run_python

    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    text = "Zwei Männer stehen vor einem Haus."
    code = f"""
import json
from transformers import AutoTokenizer, PreTrainedTokenizerFast
loaded = [AutoTokenizer.from_pretrained({str(folder)!r}), AutoTokenizer.from_pretrained({str(folder)!r},
          trust_remote_code=False), PreTrainedTokenizerFast.from_pretrained({str(folder)!r})]
print("RESULT", json.dumps([[t({text!r})["input_ids"], t.pad_token_id, t.eos_token_id, t.unk_token_id, len(t)]
                            for t in loaded]))
"""
    result = run_python(code, tmp_path, block_package=True)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = [tokenizer(text)["input_ids"], tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id,
                len(tokenizer)]
    # (transformers may first ask, on standard output, whether to run the model's code: stdin is closed, so "no")
    assert json.loads(result.stdout.split("RESULT", 1)[1]) == [expected] * 3

"""The key-value cache through every client, on each transformers the project supports.

transformers 5.24 renamed `past_key_values` to `cache`; a model that knew only the old name decoded every step as if
it were the first: fluent-looking text, test BLEU 2.6 instead of 37, and no error. Each client here (`generate`,
`translate`, the pipeline, a remote-code load) must decode with the cache exactly as without it, and really use it.
"""

import json
import logging

import pytest
import torch
from conftest import run_python, tiny_config
from transformers import pipeline

from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration
from hf_vanilla_transformer.modeling_vanilla_transformer import CACHE_NAME
from hf_vanilla_transformer.translate import translate

SENTENCES = ["Ein Hund läuft über die Wiese.", "Zwei Männer stehen vor einem großen, alten Haus in der Stadt.",
             "Ein Kind."]  # padded batches: three lengths
POSITION_TYPES = [{}, {"normalize_before": True}, *({"position_embedding_type": kind} for kind in ("learned", "rope",
                                                                                                   "alibi"))]
POSITION_IDS = ["paper", "pre-LN", "learned", "rope", "alibi"]


def model_for(overrides: dict) -> VanillaTransformerForConditionalGeneration:
    torch.manual_seed(0)
    return VanillaTransformerForConditionalGeneration(tiny_config(src_lang="de", tgt_lang="en", **overrides)).eval()


def decoder_input_lengths(model):
    """The decoder's input lengths, one per forward, recorded while the context is open."""
    lengths = []
    hook = model.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    return lengths, hook


@pytest.mark.parametrize("num_beams", [1, 4])
@pytest.mark.parametrize("overrides", POSITION_TYPES, ids=POSITION_IDS)
def test_generate_with_the_cache_equals_generate_without(overrides, num_beams, tokenizer):
    model = model_for(overrides)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    kwargs = dict(**batch, num_beams=num_beams, max_new_tokens=16)
    lengths, hook = decoder_input_lengths(model)
    cached = model.generate(**kwargs, use_cache=True)
    hook.remove()
    assert lengths[0] == 1 and set(lengths[1:]) == {1}  # the cache is used: one new token per step
    assert torch.equal(cached, model.generate(**kwargs, use_cache=False))


@pytest.mark.parametrize("num_beams", [1, 4])
def test_translate_with_the_cache_equals_translate_without(num_beams, tokenizer):
    model = model_for({})
    cached = translate(model, tokenizer, SENTENCES, num_beams=num_beams, max_new_tokens=16, use_cache=True)
    assert cached == translate(model, tokenizer, SENTENCES, num_beams=num_beams, max_new_tokens=16, use_cache=False)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_the_pipeline_of_a_save_pretrained_folder_decodes_with_the_cache_as_without(tmp_path, tokenizer, num_beams):
    """A plain `save_pretrained` folder declares the pipeline and carries its source (not only `save_for_hub`'s)."""
    model = model_for({})
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["custom_pipelines"]["translation"]["impl"] == (
        "pipeline_vanilla_transformer.TranslationPipeline")
    assert (tmp_path / "pipeline_vanilla_transformer.py").is_file()
    translator = pipeline("translation", model=str(tmp_path), trust_remote_code=True)
    cached = translator(SENTENCES, num_beams=num_beams, max_new_tokens=16, use_cache=True)
    assert cached == translator(SENTENCES, num_beams=num_beams, max_new_tokens=16, use_cache=False)
    assert cached == [{"translation_text": t} for t in translate(model, tokenizer, SENTENCES, num_beams=num_beams,
                                                                  max_new_tokens=16)]


def test_remote_code_generates_with_the_cache_as_without_for_every_position_type(tmp_path, tokenizer):
    """In a Python without the package: greedy and beam 4, with and without the cache, equal to this process."""
    expected = {}
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    for name, overrides in zip(POSITION_IDS, POSITION_TYPES):
        model = model_for(overrides)
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
        for num_beams in (1, 4):
            expected[f"{name}-{num_beams}"] = model.generate(**batch, num_beams=num_beams, max_new_tokens=16).tolist()
    code = f"""
import json, torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
results = {{}}
for name in {POSITION_IDS!r}:
    folder = {str(tmp_path)!r} + "/" + name
    model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    batch = tokenizer({SENTENCES!r}, padding=True, return_tensors="pt")
    for num_beams in (1, 4):
        outputs = [model.generate(**batch, num_beams=num_beams, max_new_tokens=16, use_cache=use_cache).tolist()
                   for use_cache in (True, False)]
        results[f"{{name}}-{{num_beams}}"] = outputs
print(json.dumps(results))
"""
    result = run_python(code, tmp_path, block_package=True)
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout.strip().splitlines()[-1])
    for key, (cached, uncached) in results.items():
        assert cached == uncached == expected[key], key


def test_the_cache_passed_as_past_key_values_still_works(model):
    """The name before transformers 5.24, deprecated from 5.24 on as in its own models."""
    source, target = torch.tensor([[11, 12, 13, 2]]), torch.tensor([[1, 30, 31]])
    with torch.no_grad():
        first = model(input_ids=source, decoder_input_ids=target[:, :2], use_cache=True)
        expected = model(input_ids=source, decoder_input_ids=target).logits[:, 2]
        cache = getattr(first, CACHE_NAME)
        if CACHE_NAME == "cache":
            with pytest.warns(FutureWarning, match="past_key_values"):
                step = model(input_ids=source, decoder_input_ids=target[:, 2:], past_key_values=cache)
        else:
            step = model(input_ids=source, decoder_input_ids=target[:, 2:], past_key_values=cache)
    torch.testing.assert_close(step.logits[:, 0], expected)


def test_decoding_and_saving_log_no_deprecation_of_transformers(tmp_path, model, tokenizer):
    """transformers reports some renames through its logger, once per process, instead of a warning."""
    logging.Logger.warning_once.cache_clear()  # transformers' once-only logging: make it speak again
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
        for num_beams in (1, 4):
            model.generate(**batch, num_beams=num_beams, max_new_tokens=8)
        output = model(**batch, decoder_input_ids=torch.ones(3, 2, dtype=torch.long), use_cache=True)
        model(**batch, decoder_input_ids=torch.ones(3, 1, dtype=torch.long), cache=getattr(output, CACHE_NAME))
        model.save_pretrained(tmp_path)
        VanillaTransformerForConditionalGeneration.from_pretrained(tmp_path)
    finally:
        logger.removeHandler(handler)
    assert not [r.getMessage() for r in records if "deprecat" in r.getMessage().lower()]

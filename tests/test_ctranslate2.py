"""The CTranslate2 export: the same translations as `generate`, greedy and beam, post-LN and pre-LN (with learned
positions); clear errors for what it cannot express; the CLI round trip. Skipped, with the reason, where
`ctranslate2` is not installed."""

import shutil

import pytest
import torch
from conftest import assert_each_sentence_keeps_its_own_limit, briefly_trained, read_multi30k, run_module, tiny_config
from test_ecosystem import RESULTS

from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration, hub
from hf_vanilla_transformer.ctranslate2_backend import export_ctranslate2
from hf_vanilla_transformer.translate import load_translator, translate

pytest.importorskip("ctranslate2",
                    reason='the CTranslate2 export needs pip install "hf-vanilla-transformer[ctranslate2]"')

SOURCES = read_multi30k("val", "de", 24)


@pytest.fixture(scope="module", params=[{}, {"normalize_before": True, "position_embedding_type": "learned"}],
                ids=["post-LN", "pre-LN-learned-positions"])
def exported(request, tmp_path_factory, tokenizer, pairs):
    folder = tmp_path_factory.mktemp("ct2") / "model"
    model = briefly_trained(tokenizer, pairs, **request.param)
    hub.save_for_hub(folder, model, tokenizer, RESULTS, ctranslate2_quantization="float32")  # as training does
    return folder


@pytest.mark.parametrize("num_beams", [1, 4])
def test_ctranslate2_translates_as_generate_does(exported, num_beams):
    model, tokenizer = load_translator(str(exported), device="cpu")
    ct2_model, ct2_tokenizer = load_translator(str(exported / "ctranslate2"), device="cpu", backend="ctranslate2")
    expected = translate(model, tokenizer, SOURCES, num_beams=num_beams)
    assert translate(ct2_model, ct2_tokenizer, SOURCES, num_beams=num_beams) == expected
    assert len(set(expected)) > 5  # the model distinguishes its inputs: the comparison is not vacuous


def test_the_hub_folder_carries_the_export_and_says_how_to_use_it(exported):
    files, left_out = hub.files_to_upload(exported)
    assert {"ctranslate2/model.bin", "ctranslate2/config.json", "ctranslate2/tokenizer.json",
            "ctranslate2/README.md"} <= set(files) and not left_out
    card = (exported / "README.md").read_text()
    assert ('python -m hf_vanilla_transformer.translate --model ctranslate2 --backend ctranslate2 '
            f'"{RESULTS["example_source"]}"') in card


def test_configurations_ctranslate2_cannot_express_are_refused(tmp_path, tokenizer):
    for overrides, field in (({"decoder_attention_heads": 2}, "decoder_attention_heads=2"),
                             ({"activation_function": "mish"}, "activation_function='mish'"),
                             ({"attention_key_dim": 4}, "attention_key_dim=4"),
                             ({"position_embedding_type": "rope"}, "position_embedding_type='rope'"),
                             ({"position_embedding_type": "alibi"}, "position_embedding_type='alibi'")):
        folder = tmp_path / field.split("=")[0]
        hub.save_for_hub(folder, VanillaTransformerForConditionalGeneration(tiny_config(**overrides)), tokenizer,
                         RESULTS)
        with pytest.raises(ValueError, match=field):
            export_ctranslate2(folder, tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_export_and_translate_from_the_command_line(exported, tmp_path):
    out = tmp_path / "int8"
    export = run_module("hf_vanilla_transformer.ctranslate2_backend", "--model", exported, "--output_dir", out,
                        "--quantization", "int8")
    assert export.returncode == 0, export.stderr[-2000:]
    assert {"model.bin", "config.json", "tokenizer.json", "generation_config.json", "README.md"} <= {
        p.name for p in out.iterdir()}
    translated = run_module("hf_vanilla_transformer.translate", "--model", out, "--backend", "ctranslate2",
                            stdin="\n".join(SOURCES[:3] + [""]) + "\n")
    assert translated.returncode == 0, translated.stderr[-2000:]
    lines = translated.stdout.split("\n")
    assert len(lines) == 5 and all(lines[:3]) and lines[3] == ""
    missing = run_module("hf_vanilla_transformer.translate", "--model", exported, "--backend", "ctranslate2",
                         "Ein Hund.")
    assert missing.returncode != 0 and "is not a CTranslate2 export" in missing.stderr


def test_each_sentence_keeps_its_own_length_limit_in_a_batch(tmp_path, tokenizer):
    def exported(model):
        hub.save_for_hub(tmp_path / "model", model, tokenizer, RESULTS)
        return load_translator(str(export_ctranslate2(tmp_path / "model", tmp_path / "ct2")), "cpu", "ctranslate2")[0]

    assert_each_sentence_keeps_its_own_limit(tokenizer, exported)


def test_weights_saved_over_an_export_take_the_stale_ctranslate2_files_away(exported, tmp_path, caplog):
    """Other weights saved into the folder without --export_ctranslate2: the old conversion is removed, said."""
    folder = tmp_path / "model"
    shutil.copytree(exported, folder)
    model, tokenizer = load_translator(str(folder), device="cpu")
    torch.manual_seed(1)
    with caplog.at_level("WARNING"):
        hub.save_for_hub(folder, VanillaTransformerForConditionalGeneration(model.config), tokenizer, RESULTS)
    assert not (folder / "ctranslate2" / "model.bin").exists() and "removed ctranslate2/model.bin" in caplog.text
    assert not any(name.startswith("ctranslate2/") for name in hub.files_to_upload(folder)[0])

"""The model among HF's tools: Seq2SeqTrainer, pipeline("translation"), loading by repo id, Hub upload, card, plots."""

import json
import shutil
import struct
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import run_module, run_python, tiny_config
from huggingface_hub import ModelCard
from transformers import (
    AutoModelForSeq2SeqLM,
    DataCollatorForSeq2Seq,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    pipeline,
)

from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration, hub, plot_attention
from hf_vanilla_transformer.metrics import bleu_compute_metrics
from hf_vanilla_transformer.translate import translate
from training.data import load_translation_dataset, tokenize
from training.recipe import label_smoothed_loss

RESULTS = {  # what a training run records for the model card
    "train_minutes": 1.0, "train_steps": 10, "train_epochs": 0.5, "averaged_checkpoints": 2, "bleu": 12.34,
    "bleu_signature": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0", "eval_split": "test",
    "eval_sentences": 1000, "example_source": "Ein Hund läuft.", "dataset": "multi30k", "train_sentences": 29000,
    "num_beams": 4, "length_penalty": 0.6, "warmup_steps": 200, "learning_rate": "2.00e-03", "dropout": 0.1,
    "label_smoothing": 0.1, "max_tokens": 2048, "num_processes": 1, "gradient_accumulation_steps": 1,
    "hardware": "a CPU", "mixed_precision": "bf16", "learning_curve": "", "attention_plot": "",
}
SENTENCES = ["Ein Hund läuft über die Wiese.", "Zwei Männer stehen vor einem Haus."]


def pipeline_without_the_package(folder, tmp_path, num_beams: int) -> list[dict]:
    """`pipeline("translation", model=folder, trust_remote_code=True)(SENTENCES)` in a Python without the package."""
    code = f"""
import json
from transformers import pipeline
translator = pipeline("translation", model={str(folder)!r}, trust_remote_code=True)
print(json.dumps(translator({SENTENCES!r}, num_beams={num_beams}, max_new_tokens=8)))
"""
    result = run_python(code, tmp_path, block_package=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def hub_folder(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = VanillaTransformerForConditionalGeneration(tiny_config(src_lang="de", tgt_lang="en")).eval()
    return hub.save_for_hub(tmp_path / "vanilla-de-en", model, tokenizer, RESULTS), model


def test_seq2seq_trainer_fine_tunes_evaluates_bleu_and_checkpoints(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = VanillaTransformerForConditionalGeneration(tiny_config())
    splits = load_translation_dataset("de", "en")
    train = tokenize(splits["train"].select(range(512)), tokenizer, "de", "en", 128)
    validation = tokenize(splits["validation"].select(range(32)), tokenizer, "de", "en", 128)
    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path / "trainer"), max_steps=40, per_device_train_batch_size=32, learning_rate=3e-3,
        warmup_steps=5, logging_steps=5, eval_strategy="steps", eval_steps=20, save_strategy="steps", save_steps=20,
        load_best_model_at_end=True, metric_for_best_model="bleu", predict_with_generate=True,
        generation_num_beams=2, generation_max_length=24, bf16=True, use_cpu=True, report_to=[], seed=0,
    )
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=train, eval_dataset=validation,
                             data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
                             processing_class=tokenizer, compute_metrics=bleu_compute_metrics(tokenizer))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0] - 0.5
    metrics = trainer.evaluate()
    assert "eval_bleu" in metrics and 0 <= metrics["eval_bleu"] <= 100 and metrics["eval_gen_len"] > 0
    best = trainer.state.best_model_checkpoint
    assert best is not None and best.endswith(("checkpoint-20", "checkpoint-40"))
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(best)
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, trainer.model.state_dict()[name]), name


def test_a_folder_saved_by_the_trainer_translates_through_the_pipeline(tmp_path, tokenizer):
    """`trainer.save_model()` goes through `save_pretrained`: the folder declares the pipeline and carries its code,
    in process and where the package is not installed."""
    torch.manual_seed(0)
    model = VanillaTransformerForConditionalGeneration(tiny_config(src_lang="de", tgt_lang="en"))
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path / "trainer"), max_steps=1, use_cpu=True, report_to=[])
    trainer = Seq2SeqTrainer(model=model, args=args, processing_class=tokenizer)
    folder = tmp_path / "saved"
    trainer.save_model(str(folder))
    expected = translate(model.eval(), tokenizer, SENTENCES, num_beams=4, max_new_tokens=8)
    translator = pipeline("translation", model=str(folder), trust_remote_code=True)
    assert translator(SENTENCES, num_beams=4, max_new_tokens=8) == [{"translation_text": t} for t in expected]
    assert pipeline_without_the_package(folder, tmp_path, num_beams=4) == [{"translation_text": t} for t in expected]


def test_translation_pipeline_in_process(hub_folder, tokenizer):
    folder, model = hub_folder
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"]["translation"]["impl"] == "pipeline_vanilla_transformer.TranslationPipeline"
    translator = pipeline("translation", model=str(folder), trust_remote_code=True)
    one = translator(SENTENCES[0], num_beams=2, max_new_tokens=8)
    assert one == [{"translation_text": translate(model, tokenizer, SENTENCES[:1], num_beams=2, max_new_tokens=8)[0]}]
    batched = translator(SENTENCES, batch_size=2, num_beams=2, max_new_tokens=8)
    assert batched == [{"translation_text": t} for t in translate(model, tokenizer, SENTENCES, num_beams=2,
                                                                  max_new_tokens=8)]
    several = translator(SENTENCES[0], num_beams=3, num_return_sequences=2, max_new_tokens=8)
    assert len(several) == 2 and all("translation_text" in t for t in several)
    assert translator(SENTENCES[0], src_lang="de", tgt_lang="en", max_new_tokens=3)
    with pytest.raises(ValueError, match="translates de to en"):
        translator(SENTENCES[0], src_lang="fr")
    with pytest.raises(ValueError, match="empty"):
        translator("  ")


def test_translation_pipeline_and_remote_code_without_the_package(hub_folder, tokenizer, tmp_path):
    folder, model = hub_folder
    expected = translate(model, tokenizer, SENTENCES, num_beams=2, max_new_tokens=8)
    assert pipeline_without_the_package(folder, tmp_path, num_beams=2) == [{"translation_text": t} for t in expected]


def test_loading_by_repo_id_from_an_offline_hub_cache(hub_folder, tokenizer, tmp_path):
    folder, model = hub_folder
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--vanilla-de-en"
    shutil.copytree(folder, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    expected = translate(model, tokenizer, SENTENCES, num_beams=2, max_new_tokens=8)
    code = f"""
import json, sys
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, pipeline
installed = sys.argv[-1] == "installed"
if installed:
    import hf_vanilla_transformer  # registered Auto classes: no remote code needed
model = AutoModelForSeq2SeqLM.from_pretrained("someone/vanilla-de-en", trust_remote_code=not installed)
tokenizer = AutoTokenizer.from_pretrained("someone/vanilla-de-en", trust_remote_code=not installed)
batch = tokenizer({SENTENCES!r}, return_tensors="pt", padding=True)
out = model.generate(**batch, num_beams=2, max_new_tokens=8)
print(json.dumps([type(model).__module__, tokenizer.batch_decode(out, skip_special_tokens=True)]))
"""
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    for installed in (False, True):
        result = subprocess.run([sys.executable, "-c", ("" if installed else
                                 "import sys; sys.modules['hf_vanilla_transformer'] = None\n") + code,
                                 "installed" if installed else "remote"],
                                cwd=tmp_path,
                                env={**__import__("os").environ, **env, "HF_HOME": str(tmp_path / "home")},
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        module, translations = json.loads(result.stdout.strip().splitlines()[-1])
        assert module.startswith("hf_vanilla_transformer" if installed else "transformers_modules")
        assert translations == expected


def test_push_dry_run_lists_exactly_the_files_it_would_send(hub_folder, tmp_path):
    """Only the files the package writes go up: never stray files, subfolders or symbolic links in the folder."""
    folder, _ = hub_folder
    (folder / "notes.txt").write_text("private")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "model.safetensors").write_bytes(b"x")
    (tmp_path / "secret").write_text("token")
    (folder / "learning_curve.png").symlink_to(tmp_path / "secret")
    result = run_module("hf_vanilla_transformer.hub", "push", "--model", folder, "--repo_id", "someone/vanilla-de-en",
                        "--dry_run")
    assert result.returncode == 0, result.stderr
    listed = [line.strip() for line in result.stdout.split("README.md:")[0].splitlines()[1:] if line.strip()]
    assert listed == sorted([
        "README.md", "config.json", "configuration_vanilla_transformer.py", "decoding.py", "generation_config.json",
        "kernels.py", "model.safetensors", "modeling_vanilla_transformer.py", "pipeline_vanilla_transformer.py",
        "tokenizer.json",
        "tokenizer_config.json", "tokenization.py", "training_results.json"])
    assert "Not uploaded (not files this package writes): checkpoints/, learning_curve.png, notes.txt" in result.stderr
    assert 'pipeline("translation", model="someone/vanilla-de-en", trust_remote_code=True)' in result.stdout


def test_push_sends_one_commit_with_the_card_for_the_repo(hub_folder, monkeypatch):
    folder, _ = hub_folder
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls["repo"] = (repo_id, private, exist_ok)

        def create_commit(self, repo_id, operations, commit_message):
            calls["commit"] = (repo_id, operations)

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    (folder / "stray.bin").write_bytes(b"x")
    files, card, left_out = hub.push(folder, "someone/vanilla-de-en", private=True, token="secret")
    assert left_out == ["stray.bin"] and "stray.bin" not in files
    assert calls["repo"] == ("someone/vanilla-de-en", True, True) and calls["token"] == "secret"
    operations = calls["commit"][1]
    assert sorted(op.path_in_repo for op in operations) == files
    readme = next(op for op in operations if op.path_in_repo == "README.md")
    assert readme.path_or_fileobj == card.encode()
    with pytest.raises(FileNotFoundError, match="training_results.json"):
        (folder / "training_results.json").unlink()
        hub.push(folder, "someone/vanilla-de-en", dry_run=True)


def test_model_card_metadata_parses_and_carries_the_score(hub_folder):
    folder, model = hub_folder
    text = (folder / "README.md").read_text()
    metadata = yaml.safe_load(text.split("---")[1])
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "translation"
    assert metadata["language"] == ["de", "en"] and metadata["datasets"] == ["multi30k"]
    assert metadata["model-index"][0]["results"][0]["metrics"][0]["value"] == 12.34
    card = ModelCard(text)
    assert card.data.eval_results[0].metric_value == 12.34 and card.data.eval_results[0].metric_type == "bleu"
    assert f"{model.num_parameters() / 1e6:.1f}M parameters" in text
    assert "${" not in text
    for section in ("## Model description", "## Intended use and limitations", "## Training data and procedure",
                    "## Evaluation", "## How to use", "## Citation"):
        assert section in text
    values = json.loads((folder / "training_results.json").read_text())
    assert hub.render_model_card(values) == text
    with pytest.raises(KeyError, match="d_model"):
        hub.render_model_card({k: v for k, v in values.items() if k != "d_model"})
    # A run with no split to evaluate on: the card says so, with no score and no model-index.
    scores = ("bleu", "bleu_signature", "eval_split", "eval_sentences", "example_source")
    unscored = hub.render_model_card({k: v for k, v in values.items() if k not in scores})
    metadata = yaml.safe_load(unscored.split("---")[1])
    assert "model-index" not in metadata and metadata["datasets"] == ["multi30k"]
    assert unscored.count("Not evaluated: the run's data had no validation or test split") == 2
    assert "BLEU" not in unscored.replace("bleu", "") and "${" not in unscored and "## Evaluation" in unscored


def test_the_model_card_names_the_position_type(tmp_path, tokenizer):
    for kind, words in (("sinusoidal", "sinusoidal positions"), ("rope", "rotary positions (RoPE)")):
        model = VanillaTransformerForConditionalGeneration(tiny_config(position_embedding_type=kind))
        text = (hub.save_for_hub(tmp_path / kind, model, tokenizer, RESULTS) / "README.md").read_text()
        assert f"layer normalisation, {words}" in text


def test_attention_plot_is_a_png_of_the_expected_size(tmp_path, model, tokenizer):
    path = plot_attention(model, tokenizer, SENTENCES[0], "A dog runs across the meadow.", tmp_path / "attention.png",
                          layers=[0, 1], heads=[0, 1])
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (2 * 300, 3 * 2 * 300)  # heads × 3 in, (3 kinds × layers) × 3 in, at 100 dpi
    assert model.config._attn_implementation == "sdpa"  # restored after plotting
    plot_attention(model, tokenizer, SENTENCES[1], path=tmp_path / "translated.png")  # target from generate
    assert (tmp_path / "translated.png").is_file()


def test_finetune_script_turns_a_de_en_model_into_en_de(hub_folder, tmp_path):
    folder, _ = hub_folder
    output = tmp_path / "finetuned"
    result = run_module(
        "training.finetune_trainer", "--model_name_or_path", folder, "--source_lang", "en", "--target_lang", "de",
        "--output_dir", output, "--max_steps", "8", "--per_device_train_batch_size", "16", "--max_train_samples",
        "128", "--max_eval_samples", "16", "--predict_with_generate", "--generation_num_beams", "1",
        "--generation_max_length", "16", "--report_to", "none", "--use_cpu", "--save_strategy", "no")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((output / "all_results.json").read_text())
    assert "eval_bleu" in metrics and "test_bleu" in metrics and metrics["train_loss"] > 0
    config = json.loads((output / "config.json").read_text())
    assert (config["src_lang"], config["tgt_lang"]) == ("en", "de") and "translation" in config["custom_pipelines"]
    assert (output / "pipeline_vanilla_transformer.py").is_file() and (output / "model.safetensors").is_file()


def test_finetune_smooths_by_label_smoothing_factor_and_zero_gives_the_plain_loss(hub_folder, tmp_path, tokenizer):
    """Seq2SeqTrainer's `label_smoothing_factor` (0.1 unless given) is the only smoothing: at 0, `eval_loss` is the
    model's plain cross-entropy over the validation tokens."""
    from training import finetune_trainer

    folder, _ = hub_folder
    common = ["--model_name_or_path", str(folder), "--do_eval", "--max_eval_samples", "16", "--report_to", "none",
              "--use_cpu", "--per_device_eval_batch_size", "16"]
    plain = finetune_trainer.main([*common, "--output_dir", str(tmp_path / "plain"), "--label_smoothing_factor", "0"])
    smoothed = finetune_trainer.main([*common, "--output_dir", str(tmp_path / "smoothed")])
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    validation = tokenize(load_translation_dataset("de", "en")["validation"].select(range(16)), tokenizer, "de", "en",
                          128).remove_columns("length")
    batch = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)(list(validation))
    with torch.no_grad():
        output = model(**batch)
    tokens = (batch["labels"] != -100).sum()
    assert plain["eval_loss"] == pytest.approx(output.loss.item(), rel=1e-4)
    expected = label_smoothed_loss(output.logits, batch["labels"], 0.1) / tokens  # §5.4's, as train.py computes it
    assert smoothed["eval_loss"] == pytest.approx(expected.item(), rel=1e-4)
    assert abs(smoothed["eval_loss"] - plain["eval_loss"]) > 1e-3

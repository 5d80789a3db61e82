"""PEFT as Marian users use it: `LoraConfig(target_modules=["q_proj", "v_proj"])` adapts W^Q and W^V of every
attention layer (encoder self-attention, decoder self- and encoder-decoder attention), trains only the adapters,
and the saved adapter reloads onto the saved model to the same outputs."""

import torch
from conftest import fit, labelled_batch, tiny_config
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import AutoModelForSeq2SeqLM

from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration


def test_lora_on_q_proj_and_v_proj_adapts_both_everywhere_trains_and_reloads(tmp_path, tokenizer, pairs):
    torch.manual_seed(0)
    VanillaTransformerForConditionalGeneration(tiny_config(dropout=0.0)).save_pretrained(tmp_path / "base")
    base = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "base", trust_remote_code=True)
    config = LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=4, lora_alpha=8, lora_dropout=0.0,
                        target_modules=["q_proj", "v_proj"])
    model = get_peft_model(base, config)
    adapted = [name for name, module in model.named_modules() if hasattr(module, "lora_A")]
    attention_layers = 2 + 2 * 2  # tiny: 2 encoder layers (self), 2 decoder layers (self and cross)
    for projection in ("q_proj", "v_proj"):
        assert sum(name.endswith(projection) for name in adapted) == attention_layers, adapted
    assert len(adapted) == 2 * attention_layers
    assert all("lora_" in name for name, p in model.named_parameters() if p.requires_grad)

    batch = labelled_batch(tokenizer, pairs[:16])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = fit(model, batch, optimizer, 15)
    assert losses[-1] < losses[0] - 0.2

    model.eval().save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(
        AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "base", trust_remote_code=True), tmp_path / "adapter").eval()
    with torch.no_grad():
        expected, actual = (m(**batch).logits for m in (model, reloaded))
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], num_beams=2, max_new_tokens=8)
    assert torch.equal(model.generate(**kwargs), reloaded.generate(**kwargs))

"""GPU behaviour: half precision, SDPA/flash attention, cached decoding, and a training step that never waits for
the GPU, on CUDA. Skipped without a GPU; failed instead where REQUIRE_GPU=1 (as `benchmarks/gpu_check.sh` sets it)."""

import importlib.util
import json
import os

import pytest
import torch
from conftest import step_run, tiny_config

from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration

if not torch.cuda.is_available() and os.environ.get("REQUIRE_GPU") == "1":
    raise RuntimeError("REQUIRE_GPU=1, but torch sees no CUDA GPU (a CPU build of torch, or no driver)")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def gpu_batch(vocab=600, batch_size=8, source_length=24, target_length=20):
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(4, vocab, (batch_size, source_length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[::2, source_length // 2 :] = 0
    decoder_input_ids = torch.randint(4, vocab, (batch_size, target_length), generator=generator)
    return [t.cuda() for t in (input_ids.masked_fill(attention_mask == 0, 0), attention_mask, decoder_input_ids)]


def small_model(**overrides):
    torch.manual_seed(0)
    config = VanillaTransformerConfig.small(vocab_size=600, **overrides)
    return VanillaTransformerForConditionalGeneration(config).cuda().eval()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_match_fp32(dtype):
    model = small_model()
    input_ids, attention_mask, decoder_input_ids = gpu_batch()
    with torch.no_grad():
        reference = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
        half = model.to(dtype)(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    assert half.logits.dtype == dtype
    probabilities = reference.logits.softmax(-1), half.logits.float().softmax(-1)
    assert (probabilities[0] - probabilities[1]).abs().max().item() < 0.02
    agreement = (reference.logits.argmax(-1) == half.logits.argmax(-1)).float().mean().item()
    assert agreement > 0.95


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_training_steps_lower_the_loss(dtype):
    torch.manual_seed(0)
    model = VanillaTransformerForConditionalGeneration(tiny_config(dropout=0.0)).cuda().train()
    input_ids, attention_mask, labels = gpu_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    losses = []
    for _ in range(30):
        with torch.autocast("cuda", dtype=dtype):
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sdpa_and_eager_agree_on_gpu(dtype):
    sdpa = small_model().to(dtype)
    eager = small_model(attn_implementation="eager").to(dtype)
    eager.load_state_dict(sdpa.state_dict())
    input_ids, attention_mask, decoder_input_ids = gpu_batch()
    with torch.no_grad():
        a = sdpa(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
        b = eager(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(a.float(), b.float(), atol=tolerance, rtol=tolerance)


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="needs the flash-attn package")
def test_flash_attention_agrees_with_sdpa():
    sdpa = small_model().to(torch.bfloat16)
    flash = small_model(attn_implementation="flash_attention_2").to(torch.bfloat16)
    flash.load_state_dict(sdpa.state_dict())
    input_ids, attention_mask, decoder_input_ids = gpu_batch()
    with torch.no_grad():
        a = sdpa(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
        b = flash(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
    torch.testing.assert_close(a.float(), b.float(), atol=5e-2, rtol=5e-2)


def test_cached_generation_matches_uncached_on_gpu():
    model = small_model().to(torch.bfloat16)
    input_ids, attention_mask, _ = gpu_batch()
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=16)
    for beams in (1, 4):
        cached = model.generate(**kwargs, num_beams=beams, use_cache=True)
        uncached = model.generate(**kwargs, num_beams=beams, use_cache=False)
        assert (cached == uncached).float().mean().item() > 0.95  # bf16 rounding may flip a rare near-tie


def test_training_steps_between_logs_never_wait_for_the_gpu(tokenizer, pairs, tmp_path):
    """The step is queued without a host synchronisation (CUDA's sync debug mode raises on any), loss scaling aside;
    its flags are read a step later, and the losses equal the plain loop's."""
    import copy

    from accelerate import Accelerator
    from transformers import BatchEncoding

    from training.recipe import label_smoothed_loss
    from training.train import Steps, train_step

    torch.manual_seed(0)
    accelerator = Accelerator(mixed_precision="bf16")
    model = VanillaTransformerForConditionalGeneration(tiny_config(dropout=0.0)).cuda()
    reference = copy.deepcopy(model)
    run, _, collate, features = step_run(tmp_path, accelerator, model, tokenizer, pairs, 64)
    batches = [BatchEncoding({name: tensor.pin_memory() for name, tensor in collate(features[i : i + 16]).items()})
               for i in range(0, 64, 16)]
    steps = Steps()
    first = train_step(run, batches[:1], steps)  # the first step allocates and picks its kernels
    with torch.autocast("cuda", dtype=torch.bfloat16):
        batch = batches[0].to("cuda")
        tokens = (batch["labels"] != -100).sum()
        expected = label_smoothed_loss(reference(**batch).logits, batch["labels"], 0.1) / tokens
    torch.testing.assert_close(first, expected, rtol=1e-2, atol=1e-2)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [train_step(run, [batch], steps) for batch in batches[1:]]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(steps.queued) == 4
    assert steps.settle(run, every=True) == sum(int((b["labels"] != -100).sum()) for b in batches)
    assert torch.isfinite(torch.stack(losses)).all() and not steps.stop and not steps.non_finite


def test_a_short_training_run_on_the_gpu_with_workers_pinned_memory_and_compile(tmp_path):
    """The training command on the GPU with its GPU defaults (bf16, two loader workers, pinned memory) and
    --torch_compile: it trains, validates, checkpoints and saves a model whose BLEU is reported."""
    from test_training_runs import train

    output = tmp_path / "run"
    train(tmp_path, output, "--max_steps", "30", "--torch_compile", "--eval_steps", "30", in_process=False)
    results = json.loads((output / "model" / "training_results.json").read_text())
    assert results["mixed_precision"] == "bf16" and torch.cuda.get_device_name() in results["hardware"]
    assert results["train_steps"] == 30 and 0 <= results["bleu"] <= 100

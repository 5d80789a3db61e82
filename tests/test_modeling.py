import json

import pytest
import torch
import torch.nn.functional as F
from conftest import run_python, tiny_config
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForSeq2SeqLM, EncoderDecoderCache
from transformers.modeling_outputs import Seq2SeqLMOutput

from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration, VanillaTransformerModel
from hf_vanilla_transformer.kernels import Dropout, LabelSmoothedCrossEntropy
from hf_vanilla_transformer.modeling_vanilla_transformer import (
    CACHE_NAME,
    SinusoidalPositionalEncoding,
    shift_tokens_right,
)
from training.recipe import label_smoothed_loss


def batch(seed=0, batch_size=3, source_length=9, target_length=7, vocab=600):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, vocab, (batch_size, source_length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, source_length - 3 :] = 0  # the second source is 3 tokens shorter
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    decoder_input_ids = torch.randint(4, vocab, (batch_size, target_length), generator=generator)
    decoder_input_ids[:, 0] = 1
    return input_ids, attention_mask, decoder_input_ids


def test_positional_encoding_is_the_papers_interleaved_sinusoid():
    encoding = SinusoidalPositionalEncoding(8)(torch.arange(5))
    for pos in range(5):
        for i in range(4):
            angle = pos / 10000 ** (2 * i / 8)
            assert encoding[pos, 2 * i].item() == pytest.approx(torch.tensor(angle).sin().item(), abs=1e-6)
            assert encoding[pos, 2 * i + 1].item() == pytest.approx(torch.tensor(angle).cos().item(), abs=1e-6)


def test_forward_returns_seq2seq_output_and_tuples(model):
    input_ids, attention_mask, decoder_input_ids = batch()
    output = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    assert isinstance(output, Seq2SeqLMOutput)
    assert output.logits.shape == (3, 7, 600)
    assert output.encoder_last_hidden_state.shape == (3, 9, 32)
    as_tuple = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                     return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], output.logits)
    assert model.get_encoder() is model.model.encoder


def test_embeddings_are_shared_tied_and_scaled(model):
    encoder, decoder = model.model.encoder, model.model.decoder
    assert decoder.embed_tokens.weight is encoder.embed_tokens.weight
    assert model.lm_head.weight is encoder.embed_tokens.weight
    assert model.model.encoder.embed_tokens.weight.std().item() == pytest.approx(32**-0.5, rel=0.1)
    input_ids, attention_mask, decoder_input_ids = batch()
    embeddings = encoder.embed_tokens(input_ids)
    from_ids = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
    from_embeds = model(inputs_embeds=embeddings, attention_mask=attention_mask,
                        decoder_inputs_embeds=decoder.embed_tokens(decoder_input_ids)).logits
    torch.testing.assert_close(from_embeds, from_ids)


@pytest.mark.parametrize("overrides", [{}, {"normalize_before": True}, *(
    {"position_embedding_type": kind} for kind in ("learned", "rope", "alibi"))], ids=lambda o: str(o) or "paper")
def test_incremental_decoding_with_cache_equals_full_forward(overrides):
    """Step by step with the cache == one full forward; every position type continues from the cache's length."""
    torch.manual_seed(0)
    model = VanillaTransformerForConditionalGeneration(tiny_config(**overrides)).eval()
    input_ids, attention_mask, decoder_input_ids = batch()
    with torch.no_grad():
        full = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
        encoder_outputs = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
        cache = None
        for t in range(decoder_input_ids.shape[1]):
            step = model(encoder_outputs=encoder_outputs, attention_mask=attention_mask,
                         decoder_input_ids=decoder_input_ids[:, t : t + 1], cache=cache, use_cache=True)
            cache = getattr(step, CACHE_NAME)
            assert isinstance(cache, EncoderDecoderCache)
            assert (step.logits[:, 0] - full[:, t]).abs().max().item() <= 1e-5
    assert cache.get_seq_length() == decoder_input_ids.shape[1]
    assert cache.cross_attention_cache.get_seq_length() == input_ids.shape[1]  # projected once, kept


@pytest.mark.parametrize("num_beams", [1, 4])
def test_generate_with_and_without_cache_agree(model, num_beams):
    input_ids, attention_mask, _ = batch()
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, num_beams=num_beams, max_new_tokens=12)
    assert torch.equal(model.generate(**kwargs, use_cache=True), model.generate(**kwargs, use_cache=False))


def test_padding_changes_neither_encoder_nor_decoder_outputs(model):
    short, long = torch.tensor([[17, 42, 99, 2]]), torch.tensor([[5, 6, 7, 8, 9, 10, 2]])
    target_short, target_long = torch.tensor([[1, 30, 31]]), torch.tensor([[1, 40, 41, 42, 43]])
    padded = torch.tensor([[17, 42, 99, 2, 0, 0, 0], [5, 6, 7, 8, 9, 10, 2]])
    mask = (padded != 0).long()
    padded_target = torch.tensor([[1, 30, 31, 0, 0], [1, 40, 41, 42, 43]])
    target_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        alone = model(input_ids=short, decoder_input_ids=target_short)
        together = model(input_ids=padded, attention_mask=mask, decoder_input_ids=padded_target,
                         decoder_attention_mask=target_mask)
        alone_long = model(input_ids=long, decoder_input_ids=target_long)
    torch.testing.assert_close(together.encoder_last_hidden_state[0, :4], alone.encoder_last_hidden_state[0])
    torch.testing.assert_close(together.logits[0, :3], alone.logits[0])
    torch.testing.assert_close(together.logits[1], alone_long.logits[0])


def test_causal_mask_hides_the_future(model):
    input_ids, attention_mask, decoder_input_ids = batch()
    changed = decoder_input_ids.clone()
    changed[:, 4] = (changed[:, 4] + 1) % 600
    with torch.no_grad():
        before = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
        after = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=changed).logits
    assert torch.equal(before[:, :4], after[:, :4])
    assert not torch.allclose(before[:, 4:], after[:, 4:])


def test_sdpa_and_eager_attention_agree(model):
    assert model.config._attn_implementation == "sdpa"
    eager = VanillaTransformerForConditionalGeneration(tiny_config(attn_implementation="eager")).eval()
    eager.load_state_dict(model.state_dict())
    input_ids, attention_mask, decoder_input_ids = batch()
    with torch.no_grad():
        for m in (model, eager):
            m.output = m(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    torch.testing.assert_close(model.output.logits, eager.output.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.output.encoder_last_hidden_state, eager.output.encoder_last_hidden_state,
                               atol=1e-5, rtol=1e-5)


def test_attentions_and_hidden_states_are_returned_with_eager(model):
    model.set_attn_implementation("eager")
    input_ids, attention_mask, decoder_input_ids = batch()
    with torch.no_grad():
        output = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                       output_attentions=True, output_hidden_states=True)
    assert len(output.encoder_attentions) == 2 and output.encoder_attentions[0].shape == (3, 4, 9, 9)
    assert len(output.decoder_attentions) == 2 and output.decoder_attentions[0].shape == (3, 4, 7, 7)
    assert len(output.cross_attentions) == 2 and output.cross_attentions[0].shape == (3, 4, 7, 9)
    assert len(output.encoder_hidden_states) == 3 and len(output.decoder_hidden_states) == 3
    for weights in output.encoder_attentions + output.decoder_attentions + output.cross_attentions:
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    assert torch.all(output.decoder_attentions[0].triu(diagonal=1) == 0)  # nothing attends to the future
    assert torch.all(output.cross_attentions[0][1, :, :, -3:] == 0)  # nor to source padding
    assert torch.all(output.encoder_attentions[0][1, :, :, -3:] == 0)


def test_dropout_only_in_training_mode(model):
    input_ids, attention_mask, decoder_input_ids = batch()
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    with torch.no_grad():
        assert torch.equal(model(**kwargs).logits, model(**kwargs).logits)
        model.train()
        assert not torch.equal(model(**kwargs).logits, model(**kwargs).logits)


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_cpu_dropout_draws_the_paper_distribution(p):
    """The CPU mask (16 random bits per element, four to a 64-bit draw) zeroes a P_drop share of the elements, in
    each of the four positions of a draw alike, scales the rest by 1 / (1 - P_drop) in the forward and backward
    passes, and is the identity in evaluation."""
    dropout = Dropout(p)
    x = torch.full((1000, 1000), 2.0, requires_grad=True)
    y = dropout(x)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - p) < 3e-3  # 1M draws: the standard deviation is below 5e-4
    for lane in range(4):  # 250k draws each: the standard deviation is below 6e-4
        assert abs(1 - kept.flatten()[lane::4].float().mean().item() - p) < 3e-3
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 2.0 / (1 - p)))
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept / (1 - p))
    assert not torch.equal(kept, dropout(x) != 0)  # a fresh mask per call
    assert dropout.eval()(x) is x
    bf16 = Dropout(p)(torch.ones(1000, 1000, dtype=torch.bfloat16))
    assert bf16.dtype == torch.bfloat16 and abs(1 - (bf16 != 0).float().mean().item() - p) < 3e-3


def test_the_loss_is_the_plain_cross_entropy_as_hf_models_return_it(model):
    """`outputs.loss` is the mean token cross-entropy, as Marian's and BART's: §5.4's smoothing is training's
    (`training.recipe.label_smoothed_loss`, checked against a hand computation below)."""
    input_ids, attention_mask, _ = batch()
    labels = torch.tensor([[1, 5, 9, 2, -100], [7, 2, -100, -100, -100], [3, 3, 3, 3, 2]])
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    expected = F.cross_entropy(output.logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(output.loss, expected)
    summed = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, num_items_in_batch=4).loss
    torch.testing.assert_close(summed, expected * 11 / 4)  # 11 target tokens, divided by 4

    log_probs = F.log_softmax(output.logits.double(), dim=-1)
    epsilon, losses = 0.1, []
    for b in range(3):
        for t in range(5):
            if labels[b, t] != -100:  # (1 - ε) · NLL + ε · mean over the vocabulary of -log p
                losses.append((1 - epsilon) * -log_probs[b, t, labels[b, t]] - epsilon * log_probs[b, t].mean())
    smoothed = label_smoothed_loss(output.logits, labels, epsilon)
    assert smoothed.item() == pytest.approx(torch.stack(losses).sum().item(), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_the_blockwise_loss_equals_torch_cross_entropy_and_its_gradient(monkeypatch, dtype, epsilon):
    """The loss goes through the logits in blocks of rows (here 64, so 150 rows make three blocks); loss and
    gradient equal `F.cross_entropy` with label smoothing, rows labelled -100 left out."""
    monkeypatch.setattr(LabelSmoothedCrossEntropy, "BLOCK_ELEMENTS", {"cpu": 1})
    generator = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(150, 37, generator=generator)).to(dtype).requires_grad_()
    labels = torch.randint(0, 37, (150,), generator=generator)
    labels[::7] = -100
    expected = F.cross_entropy(logits.float(), labels, ignore_index=-100, label_smoothing=epsilon, reduction="sum")
    (expected_grad,) = torch.autograd.grad(expected, logits)
    actual = LabelSmoothedCrossEntropy.apply(logits, labels, epsilon)
    (actual_grad,) = torch.autograd.grad(actual, logits)
    assert actual.dtype == torch.float32 and actual_grad.dtype == dtype
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(actual_grad, expected_grad)
    wide = torch.randn(150, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    five_classes = labels.where(labels == -100, labels % 5)
    assert torch.autograd.gradcheck(lambda x: LabelSmoothedCrossEntropy.apply(x, five_classes, epsilon), (wide,),
                                    fast_mode=True)


def test_labels_give_decoder_inputs_shifted_right(model):
    labels = torch.tensor([[5, 6, 2, -100], [7, 2, -100, -100]])
    assert shift_tokens_right(labels, 0, 1).tolist() == [[1, 5, 6, 2], [1, 7, 2, 0]]
    input_ids, attention_mask, _ = batch(batch_size=2)
    with_labels = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits
    explicit = model(input_ids=input_ids, attention_mask=attention_mask,
                     decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels)).logits
    assert torch.equal(with_labels, explicit)


def test_gradient_checkpointing_gives_the_same_gradients():
    def gradients(checkpointing):
        torch.manual_seed(0)
        model = VanillaTransformerForConditionalGeneration(tiny_config(dropout=0.0)).train()
        if checkpointing:  # renamed activation checkpointing in transformers 5.23
            getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        input_ids, attention_mask, decoder_input_ids = batch()
        model(input_ids=input_ids, attention_mask=attention_mask, labels=decoder_input_ids).loss.backward()
        return {name: p.grad for name, p in model.named_parameters()}

    plain, checkpointed = gradients(False), gradients(True)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


@pytest.mark.parametrize("share, tie", [(True, True), (True, False), (False, True), (False, False)])
def test_save_load_is_bit_exact_and_keeps_the_ties(tmp_path, share, tie):
    torch.manual_seed(0)
    model = VanillaTransformerForConditionalGeneration(
        tiny_config(share_encoder_decoder_embeddings=share, tie_word_embeddings=tie)
    ).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is VanillaTransformerForConditionalGeneration
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys()
    assert all(torch.equal(original[k], reloaded[k]) for k in original)
    assert (loaded.model.decoder.embed_tokens.weight is loaded.model.encoder.embed_tokens.weight) == share
    assert (loaded.lm_head.weight is loaded.model.decoder.embed_tokens.weight) == tie
    input_ids, attention_mask, decoder_input_ids = batch()
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    assert torch.equal(model(**kwargs).logits, loaded(**kwargs).logits)
    stored = load_file(tmp_path / "model.safetensors")
    assert len(stored) == len({p.data_ptr() for p in model.parameters()})  # each shared matrix stored once


def test_a_checkpoint_without_its_embedding_reports_it_missing(tmp_path, model):
    """A tied weight absent from the file must be reported missing and initialised, never left on `meta`."""
    model.save_pretrained(tmp_path)
    stored = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in stored.items() if k != "model.encoder.embed_tokens.weight"},
              tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded, info = VanillaTransformerForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"], "the embedding is missing from the file but was not reported"
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    assert loaded.model.decoder.embed_tokens.weight is loaded.model.encoder.embed_tokens.weight
    input_ids, attention_mask, decoder_input_ids = batch()
    outputs = loaded(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    assert outputs.logits.isfinite().all()


def test_folders_saved_with_one_shared_embedding_module_still_load(tmp_path, model):
    """Folders written before the decoder had its own embedding module store the matrix once, as the encoder's."""
    model.save_pretrained(tmp_path)
    assert [k for k in load_file(tmp_path / "model.safetensors") if "embed_tokens" in k or "lm_head" in k] == [
        "model.encoder.embed_tokens.weight"]
    loaded, info = VanillaTransformerForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(loaded.model.decoder.embed_tokens.weight, model.model.encoder.embed_tokens.weight)


@pytest.mark.parametrize("share, tie", [(True, True), (False, True), (False, False)])
def test_resize_token_embeddings_keeps_the_ties(share, tie):
    model = VanillaTransformerForConditionalGeneration(
        tiny_config(share_encoder_decoder_embeddings=share, tie_word_embeddings=tie)
    )
    model.resize_token_embeddings(640)
    encoder, decoder = model.model.encoder.embed_tokens, model.model.decoder.embed_tokens
    assert encoder.num_embeddings == decoder.num_embeddings == model.lm_head.weight.shape[0] == 640
    assert model.config.vocab_size == 640
    assert (decoder.weight is encoder.weight) == share
    assert (model.lm_head.weight is decoder.weight) == tie
    input_ids, attention_mask, decoder_input_ids = batch(vocab=640)
    assert model(input_ids=input_ids, attention_mask=attention_mask, labels=decoder_input_ids).logits.shape[-1] == 640


def test_bare_model_returns_decoder_states(tmp_path):
    model = VanillaTransformerModel(tiny_config()).eval()
    input_ids, attention_mask, decoder_input_ids = batch()
    output = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    assert output.last_hidden_state.shape == (3, 7, 32)
    model.save_pretrained(tmp_path)
    assert type(AutoModel.from_pretrained(tmp_path)) is VanillaTransformerModel


def test_empty_and_over_long_inputs_are_rejected(model):
    with pytest.raises(ValueError, match="empty"):
        model(input_ids=torch.zeros(1, 0, dtype=torch.long), decoder_input_ids=torch.ones(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="max_position_embeddings=128"):
        model(input_ids=torch.ones(1, 129, dtype=torch.long), decoder_input_ids=torch.ones(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="exactly one"):
        model(decoder_input_ids=torch.ones(1, 1, dtype=torch.long))


def test_remote_code_loads_where_the_package_is_not_importable(tmp_path, model, tokenizer):
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSeq2SeqLM"] == (
        "modeling_vanilla_transformer.VanillaTransformerForConditionalGeneration"
    )
    assert {"modeling_vanilla_transformer.py", "configuration_vanilla_transformer.py"} <= {
        p.name for p in folder.iterdir()
    }
    input_ids, attention_mask, decoder_input_ids = batch()
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    code = f"""
import torch
try:
    import hf_vanilla_transformer
    raise SystemExit("the package is importable")
except ImportError:
    pass
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
model = AutoModelForSeq2SeqLM.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
tokenizer = AutoTokenizer.from_pretrained({str(folder)!r}, trust_remote_code=True)
with torch.no_grad():
    logits = model(input_ids=torch.tensor({input_ids.tolist()}), attention_mask=torch.tensor({attention_mask.tolist()}),
                   decoder_input_ids=torch.tensor({decoder_input_ids.tolist()})).logits
torch.save(logits, "logits.pt")
"""
    result = run_python(code, tmp_path, block_package=True)
    assert result.returncode == 0, result.stderr
    assert torch.equal(torch.load(tmp_path / "logits.pt"), expected.logits)


def test_the_model_compiles_whole_and_trains_as_in_eager_mode():
    """`--torch_compile`: the training forward is one graph (`fullgraph`: no break, the CPU dropout and loss kernels
    give way to the plain operators), for any batch shape (`dynamic`), with the eager model's loss and gradients."""
    torch.manual_seed(0)
    model = VanillaTransformerForConditionalGeneration(tiny_config(dropout=0.0)).train()
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    for batch_size, length in ((3, 7), (5, 11)):
        input_ids, attention_mask, labels = batch(batch_size=batch_size, target_length=length)
        results = []
        for forward in (model, compiled):
            logits = forward(input_ids=input_ids, attention_mask=attention_mask,
                             decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels)).logits
            loss = label_smoothed_loss(logits, labels, 0.1)
            results.append((loss, torch.autograd.grad(loss, list(model.parameters()))))
        torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
        for compiled_grad, eager_grad in zip(results[1][1], results[0][1]):
            torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-5)
    dropout = VanillaTransformerForConditionalGeneration(tiny_config(dropout=0.1)).train()
    input_ids, attention_mask, labels = batch()
    torch.compile(dropout, fullgraph=True)(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


@pytest.mark.parametrize("attention_key_dim", [None, 4])
def test_a_folder_saved_with_fused_key_value_projections_loads_split(tmp_path, attention_key_dim, recwarn):
    """Folders saved before 0.9 hold each attention layer's W^K and W^V stacked in one `kv_proj` (its first h · d_k
    rows the keys'): loaded, they are split into `k_proj` and `v_proj`, and give the same logits, without a
    warning of missing or unexpected weights."""
    torch.manual_seed(0)
    model = VanillaTransformerForConditionalGeneration(tiny_config(attention_key_dim=attention_key_dim)).eval()
    model.generation_config.num_beams = 3
    model.save_pretrained(tmp_path / "old")
    weights = load_file(tmp_path / "old" / "model.safetensors")
    for name in [name for name in weights if ".k_proj." in name]:  # the layout the fused projection was saved in
        weights[name.replace(".k_proj.", ".kv_proj.")] = torch.cat([weights.pop(name),
                                                                   weights.pop(name.replace(".k_proj.", ".v_proj."))])
    save_file(weights, tmp_path / "old" / "model.safetensors", metadata={"format": "pt"})
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "old", trust_remote_code=True).eval()
    input_ids, attention_mask, decoder_input_ids = batch()
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
        actual = loaded(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    torch.testing.assert_close(actual.logits, expected.logits, rtol=0, atol=0)
    assert loaded.generation_config.num_beams == 3
    assert not [w for w in recwarn.list if "kv_proj" in str(w.message) or "newly initialized" in str(w.message)]

import torch
from conftest import fit, labelled_batch, tiny_config

from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration


def test_a_tiny_model_learns_to_reproduce_a_handful_of_translations(pairs, tokenizer):
    """The whole stack (tokenizer, embeddings, attention, loss, generate) can learn: 8 pairs are memorised until
    greedy decoding reproduces every reference exactly."""
    torch.manual_seed(0)
    sources, targets = [p[0] for p in pairs[:8]], [p[1] for p in pairs[:8]]
    model = VanillaTransformerForConditionalGeneration(
        tiny_config(d_model=64, encoder_ffn_dim=128, decoder_ffn_dim=128, dropout=0.0)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.98), eps=1e-9)
    model.train()
    losses = fit(model, labelled_batch(tokenizer, pairs[:8]), optimizer, 300)
    assert losses[-1] < 0.01 < losses[0]
    model.eval()
    inputs = tokenizer(sources, padding=True, return_tensors="pt")
    output = model.generate(**inputs, num_beams=1)
    assert tokenizer.batch_decode(output, skip_special_tokens=True) == targets

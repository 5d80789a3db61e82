"""Attention you can see: heat maps of a model's attention weights for one sentence pair (cf. Figures 3-5)."""

from pathlib import Path

import torch

KINDS = {
    "encoder self-attention": ("encoder_attentions", "source", "source"),
    "decoder self-attention": ("decoder_attentions", "target", "target"),
    "encoder-decoder attention": ("cross_attentions", "target", "source"),
}


def plot_attention(model, tokenizer, source: str, target: str | None = None, path: str | Path = "attention.png",
                   layers: list[int] | None = None, heads: list[int] | None = None, cell_inches: float = 3.0,
                   dpi: int = 100) -> Path:
    """Save a PNG with one row per attention kind and layer and one column per head: the weights with which each
    query token (rows of a heat map) attends to each key token (columns).

    `target` defaults to the model's translation of `source`; `layers` to the last layer, `heads` to all.
    The figure is `cell_inches × dpi` pixels per heat map. Needs matplotlib (`pip install
    'hf-vanilla-transformer[plot]'`).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plot_attention needs matplotlib: pip install 'hf-vanilla-transformer[plot]'") from error

    model.eval()
    inputs = tokenizer(source, return_tensors="pt").to(model.device)
    if target is None:
        target = tokenizer.decode(model.generate(**inputs)[0], skip_special_tokens=True)
    labels = tokenizer(text_target=target, return_tensors="pt")["input_ids"].to(model.device)
    decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels)
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")  # the fused kernels do not return attention weights
    try:
        with torch.no_grad():
            output = model(**inputs, decoder_input_ids=decoder_input_ids, output_attentions=True)
    finally:
        model.set_attn_implementation(previous)

    tokens = {"source": tokenizer.convert_ids_to_tokens(inputs["input_ids"][0]),
              "target": tokenizer.convert_ids_to_tokens(decoder_input_ids[0])}
    layers = layers if layers is not None else [model.config.decoder_layers - 1]
    heads = heads if heads is not None else list(range(model.config.decoder_attention_heads))
    rows = [(kind, layer) for kind in KINDS for layer in layers]
    figure, axes = plt.subplots(len(rows), len(heads), figsize=(cell_inches * len(heads), cell_inches * len(rows)),
                                dpi=dpi, squeeze=False)
    for row, (kind, layer) in enumerate(rows):
        field, query_side, key_side = KINDS[kind]
        weights = getattr(output, field)[layer][0].float().cpu().numpy()  # (heads, queries, keys)
        for column, head in enumerate(heads):
            axis = axes[row][column]
            axis.imshow(weights[head], cmap="viridis", vmin=0.0, vmax=1.0)
            axis.set_title(f"{kind}\nlayer {layer}, head {head}", fontsize=7)
            axis.set_xticks(range(len(tokens[key_side])), tokens[key_side], rotation=90, fontsize=5)
            axis.set_yticks(range(len(tokens[query_side])), tokens[query_side], fontsize=5)
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.1, top=0.92, wspace=0.5, hspace=0.7)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return Path(path)

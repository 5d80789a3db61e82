"""The Transformer from "Attention Is All You Need" (Vaswani et al., 2017) as a Hugging Face model.

Section (§) and equation numbers refer to the paper (arXiv:1706.03762). The classes follow its structure:
`SinusoidalPositionalEncoding` (§3.5), `MultiHeadAttention` (§3.2), `PositionwiseFeedForward` (§3.3),
`SublayerConnection` (§3.1), `EncoderLayer`/`DecoderLayer` and their stacks (§3.1), the shared embeddings and
pre-softmax projection (§3.4), and the label-smoothed loss (§5.4). The alternatives to §3.5 that
`config.position_embedding_type` selects are here too: `LearnedPositionalEmbedding` (Table 3, row E),
`RotaryPositionalEmbedding` (RoPE) and `ALiBi`. Beside its configuration, the file imports `kernels` (the loss
and dropout of §5.4, computed faster), `decoding` (§6.1) and, to declare it when saving, the translation pipeline:
all of them relatively, so that a saved model folder carries them as remote code.
"""

import contextlib
import functools
import inspect
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import SAFE_WEIGHTS_NAME, TransformersKwargs, cached_file, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_vanilla_transformer import VanillaTransformerConfig
from .decoding import PaperDecoding, set_paper_decoding
from .kernels import Dropout

# transformers 5.24 renamed the key-value cache, argument and output field alike, from `past_key_values` to `cache`.
# The model's forwards take `cache` (and `past_key_values`, the name `generate` passes before 5.24) and return the cache
# in the field the installed transformers reads.
CACHE_NAME = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"


def takes_the_cache_by_either_name(forward: Callable) -> Callable:
    """Let `forward(..., cache=...)` also be called with `past_key_values=...`: deprecated from transformers 5.24 on,
    as in its own models (a `FutureWarning`), and silently before, where `generate` passes that name."""
    if CACHE_NAME == "cache":
        return deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")(forward)

    @functools.wraps(forward)
    def forward_with_past_key_values(*args, past_key_values: Cache | None = None, **kwargs):
        if past_key_values is not None:
            if kwargs.get("cache") is not None:
                raise ValueError("Pass the cache once, as `cache` or as `past_key_values`, not both")
            kwargs["cache"] = past_key_values
        return forward(*args, **kwargs)

    return forward_with_past_key_values


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """The decoder input is the target "offset by one position" (§3.1), starting with the decoder start token."""
    decoder_input_ids = labels.new_full(labels.shape, pad_token_id)
    decoder_input_ids[:, 1:] = labels[:, :-1]
    decoder_input_ids[:, 0] = decoder_start_token_id
    return decoder_input_ids.masked_fill_(decoder_input_ids == -100, pad_token_id)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1, scaled dot-product attention: softmax(Q K^T / sqrt(d_k)) V; the eager path, which returns the weights."""
    scores = torch.matmul(query, key.transpose(-2, -1)) * scaling  # (B, h, T, S)
    if attention_mask is not None:
        scores = scores + attention_mask  # 0 where allowed, the dtype's minimum where masked
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    output = torch.matmul(F.dropout(weights, p=dropout, training=module.training), value)  # (B, h, T, d_k)
    return output.transpose(1, 2).contiguous(), weights  # (B, T, h, d_k)


class SinusoidalPositionalEncoding(nn.Module):
    """§3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model)); in the
    "halves" layout (Marian's) the same sines fill the first half of the vector and the cosines the second."""

    def __init__(self, d_model: int, layout: str = "interleaved"):
        super().__init__()
        self.d_model = d_model
        self.layout = layout

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        exponents = torch.arange(0, self.d_model, 2, device=positions.device, dtype=torch.float32) / self.d_model
        angles = positions.float()[:, None] / 10000.0**exponents  # (T, d_model/2)
        if self.layout == "halves":
            return torch.cat((angles.sin(), angles.cos()), dim=-1)
        return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # (T, d_model), sin and cos interleaved


class LearnedPositionalEmbedding(nn.Embedding):
    """Table 3, row E: "learned positional embeddings instead of sinusoids", one trained vector per position,
    added to the token embeddings like §3.5's encoding (initialised as fairseq does, N(0, d_model^-1))."""


class RotaryPositionalEmbedding(nn.Module):
    """RoPE (Su et al., 2021, Eq. 34): rotate query and key features pairwise, (x_i, x_{i + d_k/2}) by the angle
    pos · 10000^(-2i/d_k), so that a query-key product depends on their positions only through their distance."""

    def __init__(self, key_dim: int):
        super().__init__()
        self.key_dim = key_dim

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        exponents = torch.arange(0, self.key_dim, 2, device=positions.device, dtype=torch.float32) / self.key_dim
        angles = positions.float()[:, None] / 10000.0**exponents  # (T, d_k/2)
        angles = torch.cat((angles, angles), dim=-1)  # (T, d_k): feature i and i + d_k/2 share an angle
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i + d_k/2}) of x (B, h, T, d_k) by the angles whose cosines and sines are given."""
    first, second = x.chunk(2, dim=-1)
    return (x * cos + torch.cat((-second, first), dim=-1) * sin).to(x.dtype)


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi's head-specific slopes (Press et al., 2022, §3): the geometric sequence 2^(-8/n), 2^(-16/n), ... for n
    heads, n a power of two; otherwise those of the nearest smaller power of two, then every other slope of the next."""
    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = [2 ** (-8 * (h + 1) / closest) for h in range(closest)]
    slopes += [2 ** (-4 * (2 * h + 1) / closest) for h in range(num_heads - closest)]
    return torch.tensor(slopes)


class ALiBi(nn.Module):
    """ALiBi (Press et al., 2022): no position is added to the embeddings; head h's score of query i for key j gets
    the bias -m_h · |i - j| instead (keys after i hidden in the decoder, both directions in the encoder)."""

    def __init__(self, num_heads: int, is_causal: bool):
        super().__init__()
        self.num_heads = num_heads
        self.is_causal = is_causal

    def forward(self, attention_mask: torch.Tensor | None, positions: torch.Tensor, past_length: int,
                dtype: torch.dtype) -> torch.Tensor:
        """The additive mask (1 or B, h, T, S) of the biases and of `attention_mask` (None, a boolean mask, True
        where a key is visible, or an additive one) for the T queries at `positions`, which follow `past_length`
        cached ones, and the S = past_length + T keys."""
        keys = torch.arange(past_length + positions.shape[0], device=positions.device)
        distances = (keys[None, :] - positions[:, None]).abs()  # (T, S)
        bias = -alibi_slopes(self.num_heads).to(positions.device)[:, None, None] * distances  # (h, T, S)
        bias = bias[None].to(dtype)
        if attention_mask is not None and attention_mask.is_floating_point():
            return attention_mask.to(dtype) + bias  # it already holds the dtype's minimum where a key is hidden
        visible = attention_mask
        if visible is None and self.is_causal:
            visible = keys[None, :] <= positions[:, None]
        return bias if visible is None else bias.masked_fill(~visible, torch.finfo(dtype).min)


class MultiHeadAttention(nn.Module):
    """§3.2.2: MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O, head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

    Self-attention takes queries, keys and values from `hidden_states`; encoder-decoder attention (§3.2.3) takes
    keys and values from `key_value_states`, the encoder output, which the cache projects once per `generate`.
    """

    def __init__(self, config: VanillaTransformerConfig, num_heads: int, is_causal: bool = False,
                 layer_idx: int | None = None):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.key_dim = config.key_dim(num_heads)  # d_k: d_model / h unless set (Table 3, row B)
        self.head_dim = config.d_model // num_heads  # d_v = d_model / h
        self.scaling = self.key_dim**-0.5  # 1 / sqrt(d_k)
        self.dropout = config.attention_dropout
        self.is_causal = is_causal
        self.layer_idx = layer_idx
        self.q_proj = nn.Linear(config.d_model, num_heads * self.key_dim)  # W^Q of all heads
        self.k_proj = nn.Linear(config.d_model, num_heads * self.key_dim)  # W^K
        self.v_proj = nn.Linear(config.d_model, num_heads * self.head_dim)  # W^V
        self.k_proj.drawn_with = (self.v_proj,)  # W^K and W^V are initialised as one matrix (`_init_weights`)
        self.out_proj = nn.Linear(config.d_model, config.d_model)  # W^O

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`position_embeddings`: RoPE's cosines and sines for the new positions, which rotate queries and keys."""
        batch_size, length, _ = hidden_states.shape
        query = self.q_proj(hidden_states).view(batch_size, length, self.num_heads, self.key_dim).transpose(1, 2)
        # query: (B, h, T, d_k)

        is_cross_attention = key_value_states is not None
        layer_cache = None
        if cache is not None:
            layer_cache = cache.cross_attention_cache if is_cross_attention else cache.self_attention_cache
        if is_cross_attention and cache is not None and cache.is_updated.get(self.layer_idx):
            key, value = layer_cache.layers[self.layer_idx].keys, layer_cache.layers[self.layer_idx].values
        else:
            source = key_value_states if is_cross_attention else hidden_states
            key = self.k_proj(source).view(batch_size, -1, self.num_heads, self.key_dim).transpose(1, 2)
            value = self.v_proj(source).view(batch_size, -1, self.num_heads, self.head_dim).transpose(1, 2)
            # key: (B, h, S, d_k); value: (B, h, S, d_v)
            if position_embeddings is not None:
                query, key = apply_rotary(query, *position_embeddings), apply_rotary(key, *position_embeddings)
            if cache is not None:
                key, value = layer_cache.update(key, value, self.layer_idx)
                if is_cross_attention:
                    cache.is_updated[self.layer_idx] = True

        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, weights = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        output = output.reshape(batch_size, length, -1)  # Concat(head_1, ..., head_h): (B, T, d_model)
        return self.out_proj(output), weights


class PositionwiseFeedForward(nn.Module):
    """Eq. 2: FFN(x) = max(0, x W_1 + b_1) W_2 + b_2, applied to each position separately (§3.3)."""

    def __init__(self, config: VanillaTransformerConfig, ffn_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, ffn_dim)  # W_1, b_1
        self.fc2 = nn.Linear(ffn_dim, config.d_model)  # W_2, b_2
        self.activation = ACT2FN[config.activation_function]
        self.dropout = Dropout(config.activation_dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.activation(self.fc1(hidden_states))))


class SublayerConnection(nn.Module):
    """§3.1 and §5.4: LayerNorm(x + Dropout(Sublayer(x))), or x + Dropout(Sublayer(LayerNorm(x))) when pre-LN."""

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.d_model)
        self.dropout = Dropout(config.dropout)
        self.normalize_before = config.normalize_before

    def forward(self, x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if self.normalize_before:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class EncoderLayer(GradientCheckpointingLayer):
    """§3.1: multi-head self-attention, then a position-wise feed-forward network."""

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(config, config.encoder_attention_heads)
        self.feed_forward = PositionwiseFeedForward(config, config.encoder_ffn_dim)
        self.self_attn_sublayer = SublayerConnection(config)
        self.feed_forward_sublayer = SublayerConnection(config)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs) -> torch.Tensor:
        hidden_states = self.self_attn_sublayer(
            hidden_states,
            lambda x: self.self_attn(x, attention_mask=attention_mask, position_embeddings=position_embeddings,
                                     **kwargs)[0],
        )
        return self.feed_forward_sublayer(hidden_states, self.feed_forward)


class DecoderLayer(GradientCheckpointingLayer):
    """§3.1: masked self-attention, encoder-decoder attention, then a position-wise feed-forward network."""

    def __init__(self, config: VanillaTransformerConfig, layer_idx: int):
        super().__init__()
        self.self_attn = MultiHeadAttention(config, config.decoder_attention_heads, is_causal=True, layer_idx=layer_idx)
        self.encoder_attn = MultiHeadAttention(config, config.decoder_attention_heads, layer_idx=layer_idx)
        self.feed_forward = PositionwiseFeedForward(config, config.decoder_ffn_dim)
        self.self_attn_sublayer = SublayerConnection(config)
        self.encoder_attn_sublayer = SublayerConnection(config)
        self.feed_forward_sublayer = SublayerConnection(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None,
        cache: EncoderDecoderCache | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        hidden_states = self.self_attn_sublayer(
            hidden_states,
            lambda x: self.self_attn(x, attention_mask=attention_mask, cache=cache,
                                     position_embeddings=position_embeddings, **kwargs)[0],
        )
        hidden_states = self.encoder_attn_sublayer(
            hidden_states,
            lambda x: self.encoder_attn(
                x,
                key_value_states=encoder_hidden_states,
                attention_mask=encoder_attention_mask,
                cache=cache,
                **kwargs,
            )[0],
        )
        return self.feed_forward_sublayer(hidden_states, self.feed_forward)


def split_fused_key_value_weights(name_or_path, hub_options: dict) -> dict[str, torch.Tensor] | None:
    """The weights of a saved model whose attention layers have one fused `kv_proj` (W^K and W^V stacked, before
    0.9), with each split into `k_proj` and `v_proj`; None for any other folder."""
    path = cached_file(name_or_path, SAFE_WEIGHTS_NAME, _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False, **hub_options)
    if path is None:
        return None
    with safe_open(path, "pt") as weights:
        if not any(".kv_proj." in name for name in weights.keys()):
            return None
        state_dict = {name: weights.get_tensor(name) for name in weights.keys()}
    for name in [name for name in state_dict if ".kv_proj." in name]:
        fused = state_dict.pop(name)
        d_model = state_dict[name.replace(".kv_proj.", ".out_proj.")].shape[0]  # h · d_v rows of W^V
        key, value = fused.split([fused.shape[0] - d_model, d_model])
        state_dict[name.replace(".kv_proj.", ".k_proj.")] = key
        state_dict[name.replace(".kv_proj.", ".v_proj.")] = value
    return state_dict


class VanillaTransformerPreTrainedModel(PreTrainedModel):
    config: VanillaTransformerConfig
    config_class = VanillaTransformerConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["EncoderLayer", "DecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        """Embeddings ~ N(0, init_std²) with init_std = d_model^-0.5 by default, so that sqrt(d_model)-scaled
        embeddings (§3.4) have unit variance; linear layers Glorot-uniform (W^K and W^V of a layer drawn as one
        stacked matrix, as when they were one fused projection, so that a seed gives the same model); LayerNorm the
        identity."""
        if isinstance(module, nn.Linear):
            stacked = (module, *getattr(module, "drawn_with", ()))
            weight = torch.empty(sum(part.out_features for part in stacked), module.in_features,
                                 device=module.weight.device, dtype=module.weight.dtype)
            init.xavier_uniform_(weight)
            for part, rows in zip(stacked, weight.split([part.out_features for part in stacked])):
                init.copy_(part.weight, rows)
                if part.bias is not None:
                    init.zeros_(part.bias)
                part._is_hf_initialized = True
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`; the weights of a folder saved when the key and value projections were
        one fused `kv_proj` (before 0.9) are split into `k_proj` and `v_proj` on load."""
        if pretrained_model_name_or_path is None or kwargs.get("state_dict") is not None:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        hub = {name: kwargs.pop(name) for name in ("cache_dir", "force_download", "local_files_only", "token",
                                                   "revision", "subfolder") if kwargs.get(name) is not None}
        state_dict = split_fused_key_value_weights(pretrained_model_name_or_path, hub)
        if state_dict is None:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs, **hub)
        config = kwargs.pop("config", None) or cls.config_class.from_pretrained(pretrained_model_name_or_path, **hub)
        model = super().from_pretrained(None, *model_args, config=config, state_dict=state_dict, **kwargs)
        with contextlib.suppress(OSError):  # the folder's own, as a load from it reads it
            model.generation_config = GenerationConfig.from_pretrained(pretrained_model_name_or_path, **hub)
        return model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, declaring the translation pipeline in config.json; its source is saved
        beside this file's (a relative import), so that every saved folder, also `Seq2SeqTrainer`'s and
        `push_to_hub`'s, works with `pipeline("translation", model=folder, trust_remote_code=True)`."""
        from .pipeline_vanilla_transformer import CONFIG_ENTRY
        from .tokenization import check_tokenizer_matches_model  # noqa: F401  (the pipeline's own import, named here
        # too: transformers 5.5 copies only the direct relative imports of a local folder into its remote code)

        self.config.custom_pipelines = CONFIG_ENTRY
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _resize_token_embeddings(self, new_num_tokens, pad_to_multiple_of=None, mean_resizing=True):
        """Resize the target embedding too when it is not shared with the source (one vocabulary, §5.1)."""
        embeddings = super()._resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        decoder = self.base_model.decoder
        if not self.config.share_encoder_decoder_embeddings:
            decoder.embed_tokens = self._get_resized_embeddings(
                decoder.embed_tokens, embeddings.num_embeddings, mean_resizing=mean_resizing
            )
        return embeddings


class VanillaTransformerStack(VanillaTransformerPreTrainedModel):
    """What encoder and decoder share: the embedded input (§3.4–3.5), N layers, and pre-LN's final LayerNorm.

    Positions enter as `config.position_embedding_type` says: added to the embeddings ("sinusoidal", "learned"),
    rotating self-attention's queries and keys ("rope"), or biasing self-attention's scores ("alibi").
    """

    def __init__(self, config: VanillaTransformerConfig, layers: list[nn.Module], num_heads: int, is_causal: bool,
                 tied_embedding: bool = False):
        super().__init__(config)
        # A tied embedding gets its matrix from `tie_weights` (§3.4): until then it holds none, and draws no numbers.
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id,
                                         device="meta" if tied_embedding else None)
        kind = config.position_embedding_type
        self.embed_positions = None  # added to the embeddings: §3.5's sinusoids or Table 3's learned vectors (E)
        if kind == "sinusoidal":
            self.embed_positions = SinusoidalPositionalEncoding(config.d_model, config.sinusoid_layout)
        elif kind == "learned":
            self.embed_positions = LearnedPositionalEmbedding(config.max_position_embeddings, config.d_model)
        self.rotary = RotaryPositionalEmbedding(config.key_dim(num_heads)) if kind == "rope" else None
        self.alibi = ALiBi(num_heads, is_causal) if kind == "alibi" else None
        self.dropout = Dropout(config.dropout)
        self.layers = nn.ModuleList(layers)
        self.layer_norm = nn.LayerNorm(config.d_model) if config.normalize_before else None
        self.post_init()

    def positions(self, inputs_embeds: torch.Tensor, past_length: int) -> torch.Tensor:
        """The positions of the new tokens, which follow the `past_length` cached ones."""
        length = inputs_embeds.shape[1]
        if length == 0:
            raise ValueError("The input sequence is empty: pass at least one token")
        if past_length + length > self.config.max_position_embeddings:
            raise ValueError(
                f"The sequence has {past_length + length} positions, more than max_position_embeddings="
                f"{self.config.max_position_embeddings}; truncate the input (e.g. `tokenizer(..., truncation=True)`)"
            )
        return torch.arange(past_length, past_length + length, device=inputs_embeds.device)

    @property
    def embed_scale(self) -> float:
        """§3.4: "In the embedding layers, we multiply those weights by sqrt(d_model)" (1 without `scale_embedding`)."""
        return math.sqrt(self.config.d_model) if self.config.scale_embedding else 1.0

    def embed(self, inputs_embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """§3.4–3.5: sqrt(d_model) · embeddings (+ positional encodings when added), then dropout (§5.4)."""
        hidden_states = inputs_embeds * self.embed_scale
        if self.embed_positions is not None:
            hidden_states = hidden_states + self.embed_positions(positions).to(inputs_embeds.dtype)
        return self.dropout(hidden_states)

    def self_attention_positions(self, attention_mask, positions: torch.Tensor, past_length: int, dtype: torch.dtype):
        """Self-attention's mask, with ALiBi's biases when it has them, and RoPE's rotation (or None)."""
        if self.alibi is not None:
            if self.config._attn_implementation not in ("eager", "sdpa"):
                raise ValueError(f"position_embedding_type='alibi' adds biases to the attention scores, which the "
                                 f"eager and sdpa attention take; attn_implementation="
                                 f"{self.config._attn_implementation!r} does not")
            attention_mask = self.alibi(attention_mask, positions, past_length, dtype)
        return attention_mask, self.rotary(positions) if self.rotary is not None else None


class VanillaTransformerEncoder(VanillaTransformerStack):
    """§3.1: a stack of N identical `EncoderLayer`s over the embedded source."""

    _can_record_outputs = {"hidden_states": EncoderLayer, "attentions": MultiHeadAttention}

    def __init__(self, config: VanillaTransformerConfig):
        layers = [EncoderLayer(config) for _ in range(config.encoder_layers)]
        super().__init__(config, layers, config.encoder_attention_heads, is_causal=False)

    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        positions = self.positions(inputs_embeds, past_length=0)
        hidden_states = self.embed(inputs_embeds, positions)
        attention_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask
        )
        attention_mask, position_embeddings = self.self_attention_positions(attention_mask, positions, 0,
                                                                            hidden_states.dtype)
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask, position_embeddings, **kwargs)
        if self.layer_norm is not None:
            hidden_states = self.layer_norm(hidden_states)
        return BaseModelOutput(last_hidden_state=hidden_states)


class VanillaTransformerDecoder(VanillaTransformerStack):
    """§3.1: a stack of N identical `DecoderLayer`s; position i attends to the outputs before i only."""

    _can_record_outputs = {
        "hidden_states": DecoderLayer,
        "attentions": OutputRecorder(MultiHeadAttention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(MultiHeadAttention, index=1, layer_name="encoder_attn"),
    }

    def __init__(self, config: VanillaTransformerConfig):
        layers = [DecoderLayer(config, layer_idx=i) for i in range(config.decoder_layers)]
        super().__init__(config, layers, config.decoder_attention_heads, is_causal=True,
                         tied_embedding=config.share_encoder_decoder_embeddings)

    @capture_outputs
    @takes_the_cache_by_either_name
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `decoder_input_ids` or `decoder_inputs_embeds`")
        if encoder_hidden_states is None:
            raise ValueError("The decoder attends to the encoder output: pass `encoder_hidden_states`")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(config=self.config), DynamicCache(config=self.config))
        if cache is not None and not isinstance(cache, EncoderDecoderCache):
            raise TypeError(f"The cache must be an EncoderDecoderCache, got {type(cache).__name__}")
        past_length = cache.get_seq_length() if cache is not None else 0

        positions = self.positions(inputs_embeds, past_length)
        hidden_states = self.embed(inputs_embeds, positions)
        self_attention_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=hidden_states,
            attention_mask=attention_mask,
            **{CACHE_NAME: cache.self_attention_cache if cache is not None else None},
        )
        encoder_attention_mask = create_bidirectional_mask(
            config=self.config,
            inputs_embeds=hidden_states,
            attention_mask=encoder_attention_mask,
            encoder_hidden_states=encoder_hidden_states,
        )
        self_attention_mask, position_embeddings = self.self_attention_positions(self_attention_mask, positions,
                                                                                 past_length, hidden_states.dtype)
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                self_attention_mask,
                encoder_hidden_states,
                encoder_attention_mask,
                cache=cache,
                position_embeddings=position_embeddings,
                **kwargs,
            )
        if self.layer_norm is not None:
            hidden_states = self.layer_norm(hidden_states)
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=hidden_states, **{CACHE_NAME: cache})


class VanillaTransformerModel(VanillaTransformerPreTrainedModel):
    """The encoder-decoder of Figure 1 without the output projection; returns the decoder's last hidden state."""

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__(config)
        if config.share_encoder_decoder_embeddings:  # "the same weight matrix between the two embedding layers" (§3.4)
            self._tied_weights_keys = {"decoder.embed_tokens.weight": "encoder.embed_tokens.weight"}
        self.encoder = VanillaTransformerEncoder(config)
        self.decoder = VanillaTransformerDecoder(config)
        self.post_init()

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict:
        """The source-target embedding tie (§3.4) holds whatever `tie_word_embeddings` (the output projection's
        tie) says."""
        tied = super().get_expanded_tied_weights_keys(all_submodels)
        if self.config.share_encoder_decoder_embeddings:
            tied.setdefault("decoder.embed_tokens.weight", "encoder.embed_tokens.weight")
        return tied

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding):
        self.encoder.embed_tokens = value
        if self.config.share_encoder_decoder_embeddings:
            self.decoder.embed_tokens = value

    @can_return_tuple
    @takes_the_cache_by_either_name
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: tuple | BaseModelOutput | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqModelOutput:
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
            )
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            cache=cache,
            inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        return Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            **{CACHE_NAME: getattr(decoder_outputs, CACHE_NAME)},
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )


class VanillaTransformerForConditionalGeneration(VanillaTransformerPreTrainedModel, PaperDecoding, GenerationMixin):
    """The whole model of Figure 1: encoder-decoder, pre-softmax linear projection, label-smoothed loss.

    `generate` defaults to the paper's decoding (§6.1): beam size 4, length penalty 0.6, and at most source
    length + 50 output tokens when the caller sets no length limit.
    """

    def __init__(self, config: VanillaTransformerConfig):
        super().__init__(config)
        self.model = VanillaTransformerModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)  # the pre-softmax projection
        if config.final_logits_bias:  # fixed, as Marian's (`convert.from_marian`)
            self.register_buffer("final_logits_bias", torch.zeros(1, config.vocab_size))
        if config.share_encoder_decoder_embeddings:
            self._tied_weights_keys = {"lm_head.weight": "model.encoder.embed_tokens.weight",
                                       "model.decoder.embed_tokens.weight": "model.encoder.embed_tokens.weight"}
        else:
            self._tied_weights_keys = {"lm_head.weight": "model.decoder.embed_tokens.weight"}
        self.post_init()
        set_paper_decoding(self.generation_config)

    @can_return_tuple
    @takes_the_cache_by_either_name
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: tuple | BaseModelOutput | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqLMOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, target_length)`, *optional*):
            Target token ids; -100 marks positions without loss, which is the plain cross-entropy per target token,
            as HF models return it (§5.4's label smoothing belongs to training: `training.train`, Seq2SeqTrainer's
            `label_smoothing_factor`). When `decoder_input_ids` are not given they are the labels shifted right,
            starting with `config.decoder_start_token_id`.
        num_items_in_batch (`int`, *optional*):
            Divide the summed loss by this number of target tokens instead of averaging over this batch's tokens
            (gradient accumulation and data parallelism pass the count of the whole optimizer step).
        """
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = shift_tokens_right(
                    labels, self.config.pad_token_id, self.config.decoder_start_token_id
                )
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=cache,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        logits = self.lm_head(outputs.last_hidden_state)
        if self.config.final_logits_bias:
            logits = logits + self.final_logits_bias

        loss = None
        if labels is not None:
            labels = labels.to(logits.device).flatten()
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels, ignore_index=-100, reduction="sum")
            loss = loss / (num_items_in_batch if num_items_in_batch is not None else (labels != -100).sum())
        return Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)


__all__ = [
    "VanillaTransformerForConditionalGeneration",
    "VanillaTransformerModel",
    "VanillaTransformerPreTrainedModel",
]

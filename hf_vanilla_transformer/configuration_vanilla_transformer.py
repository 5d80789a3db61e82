"""Configuration of the Transformer from "Attention Is All You Need" (Vaswani et al., 2017).

The defaults are the paper's base model (Table 3); `base()`, `big()`, `small()` and `tiny()` are presets.
Field names follow `BartConfig`/`MarianConfig`. This file imports only `transformers`, so that a saved model
folder carries it as remote code.
"""

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

POSITION_EMBEDDING_TYPES = ("sinusoidal", "learned", "rope", "alibi")
SINUSOID_LAYOUTS = ("interleaved", "halves")


class VanillaTransformerConfig(PreTrainedConfig):
    model_type = "vanilla_transformer"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]  # the cache output, by its name from 5.24 and before
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "encoder_attention_heads",
        "num_hidden_layers": "encoder_layers",
    }

    vocab_size: int = 37000  # one BPE vocabulary shared by source and target (§5.1)
    d_model: int = 512  # d_model (Table 3, base)
    encoder_layers: int = 6  # N
    decoder_layers: int = 6  # N
    encoder_attention_heads: int = 8  # h
    decoder_attention_heads: int = 8  # h
    attention_key_dim: int | None = None  # d_k of each head; None: d_model / h = d_v (§3.2.2); Table 3, row B
    encoder_ffn_dim: int = 2048  # d_ff
    decoder_ffn_dim: int = 2048  # d_ff
    activation_function: str = "relu"  # the max(0, ·) of Eq. 2
    dropout: float = 0.1  # P_drop on sub-layer outputs and on embedding + position sums (§5.4)
    attention_dropout: float = 0.0  # dropout on attention weights (not in the paper)
    activation_dropout: float = 0.0  # dropout inside the feed-forward network (not in the paper)
    normalize_before: bool = False  # False: LayerNorm(x + Sublayer(x)) as in §3.1; True: pre-LN
    max_position_embeddings: int = 1024  # longest source or target sequence accepted
    # How tokens know their position: "sinusoidal" (§3.5), "learned" (Table 3, row E), "rope" (rotary queries and
    # keys in self-attention) or "alibi" (linear distance biases on self-attention scores): POSITION_EMBEDDING_TYPES.
    position_embedding_type: str = "sinusoidal"
    # The sinusoids' order in a vector: "interleaved" (§3.5: sin at even features, cos at odd ones) or "halves" (the
    # sines, then the cosines, of the same frequencies: Marian's and OPUS-MT's, `convert.from_marian`).
    sinusoid_layout: str = "interleaved"
    scale_embedding: bool = True  # multiply embeddings by sqrt(d_model) (§3.4)
    init_std: float | None = None  # std of the embedding init; None means d_model ** -0.5
    share_encoder_decoder_embeddings: bool = True  # one embedding matrix for source and target (§3.4)
    tie_word_embeddings: bool = True  # the pre-softmax projection reuses the target embedding (§3.4)
    final_logits_bias: bool = False  # a fixed bias added to the output logits (not in the paper: Marian's)
    use_cache: bool = True
    is_encoder_decoder: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    decoder_start_token_id: int | None = 1
    src_lang: str | None = None  # source language code, recorded for users and the translation pipeline
    tgt_lang: str | None = None  # target language code
    tokenizer_fingerprint: str | None = None  # of the vocabulary trained with the model (tokenization.py checks it)

    def __post_init__(self, **kwargs):
        # Folders saved before 0.9 hold §5.4's ε_ls here; the model's loss is the plain cross-entropy now, as HF
        # models return it, and label smoothing a choice of training (`training.train`, Seq2SeqTrainer's
        # `label_smoothing_factor`): the field is read and dropped.
        kwargs.pop("label_smoothing", None)
        self._check_hyperparameters()
        if self.init_std is None:
            self.init_std = self.d_model**-0.5
        super().__post_init__(**kwargs)

    def _check_hyperparameters(self):
        for name in (
            "vocab_size",
            "d_model",
            "encoder_layers",
            "decoder_layers",
            "encoder_attention_heads",
            "decoder_attention_heads",
            "encoder_ffn_dim",
            "decoder_ffn_dim",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        if self.attention_key_dim is not None and (
                isinstance(self.attention_key_dim, bool) or not isinstance(self.attention_key_dim, int)
                or self.attention_key_dim <= 0):
            raise ValueError(f"`attention_key_dim` must be a positive integer or None, got {self.attention_key_dim!r}")
        for name in ("encoder_attention_heads", "decoder_attention_heads"):
            if self.d_model % getattr(self, name):
                raise ValueError(f"`d_model` ({self.d_model}) must be divisible by `{name}` ({getattr(self, name)})")
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(f"`position_embedding_type` {self.position_embedding_type!r} is unknown; use one of "
                             f"{', '.join(POSITION_EMBEDDING_TYPES)}")
        if self.sinusoid_layout not in SINUSOID_LAYOUTS:
            raise ValueError(f"`sinusoid_layout` {self.sinusoid_layout!r} is unknown; use one of "
                             f"{', '.join(SINUSOID_LAYOUTS)}")
        if self.position_embedding_type == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"`d_model` must be even for the sinusoidal positional encoding, got {self.d_model}")
        if self.position_embedding_type == "rope":
            for name in ("encoder_attention_heads", "decoder_attention_heads"):
                if self.key_dim(getattr(self, name)) % 2:
                    raise ValueError(f"`position_embedding_type` 'rope' rotates pairs of query and key features, so "
                                     f"d_k of `{name}` ({self.key_dim(getattr(self, name))}) must be even")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {value!r}")
        if self.activation_function not in ACT2FN:
            raise ValueError(f"`activation_function` {self.activation_function!r} is unknown; "
                             f"use one of {sorted(ACT2FN)}")
        if self.init_std is not None and self.init_std <= 0:
            raise ValueError(f"`init_std` must be positive, got {self.init_std!r}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(f"`{name}` ({value}) must be a token id in [0, vocab_size={self.vocab_size})")

    def key_dim(self, num_heads: int) -> int:
        """d_k, the query and key size of each of `num_heads` heads (§3.2.2: d_model / h unless set)."""
        return self.attention_key_dim or self.d_model // num_heads

    @classmethod
    def base(cls, **overrides) -> "VanillaTransformerConfig":
        """The base model of Table 3: N=6, d_model=512, d_ff=2048, h=8, P_drop=0.1 (about 63M parameters)."""
        return cls(**overrides)

    @classmethod
    def big(cls, **overrides) -> "VanillaTransformerConfig":
        """The big model of Table 3: N=6, d_model=1024, d_ff=4096, h=16, P_drop=0.3 (about 214M parameters)."""
        size = dict(d_model=1024, encoder_ffn_dim=4096, decoder_ffn_dim=4096, dropout=0.3)
        size.update(encoder_attention_heads=16, decoder_attention_heads=16)
        return cls(**{**size, **overrides})

    @classmethod
    def small(cls, **overrides) -> "VanillaTransformerConfig":
        """A model that trains to a useful Multi30k translator on a 2-core CPU in minutes."""
        size = dict(d_model=128, encoder_ffn_dim=512, decoder_ffn_dim=512, encoder_layers=3, decoder_layers=3)
        size.update(encoder_attention_heads=4, decoder_attention_heads=4)
        return cls(**{**size, **overrides})

    @classmethod
    def medium(cls, **overrides) -> "VanillaTransformerConfig":
        """`small` twice as wide (d_model=256, d_ff=1024, about 7M parameters): the main job's model where bf16
        matrix products run on AMX tiles, which train it at 0.6 times `small`'s tokens per second."""
        return cls.small(**{**dict(d_model=256, encoder_ffn_dim=1024, decoder_ffn_dim=1024), **overrides})

    @classmethod
    def tiny(cls, **overrides) -> "VanillaTransformerConfig":
        """A model for tests and smoke runs: 2+2 layers of width 32."""
        size = dict(d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_layers=2, decoder_layers=2)
        size.update(encoder_attention_heads=4, decoder_attention_heads=4, max_position_embeddings=128)
        return cls(**{**size, **overrides})


__all__ = ["VanillaTransformerConfig"]

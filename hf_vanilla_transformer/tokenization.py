"""The shared source-target BPE vocabulary of §5.1, trained with `tokenizers`.

The tokenizer is SentencePiece-style: NFKC normalisation, whitespace kept as "▁" on the following word, and
punctuation split off words. Decoding gives back the normalised text exactly, the detokenized text that sacreBLEU
scores.
"""

import hashlib
import json
import logging
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]  # ids 0, 1, 2, 3: the config's pad/bos/eos defaults
UNKNOWN_SHARE_WARNING = 0.1  # warn when more of the input's tokens than this are <unk>


def train_tokenizer(
    sentences: Iterable[str],
    vocab_size: int = 8000,
    min_frequency: int = 2,
    model_max_length: int = 1024,
    length: int | None = None,
) -> PreTrainedTokenizerFast:
    """Learn one BPE vocabulary from source and target sentences together ("a shared source-target vocabulary"),
    read from any iterable (`length`: how many, where known, for the progress count).

    Every encoded sequence ends with `</s>`; `tokenizer(text_target=...)` encodes targets (the `labels`).
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"`vocab_size` must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS, show_progress=False
    )
    tokenizer.train_from_iterator(sentences, trainer=trainer, length=length)
    if tokenizer.get_vocab_size() == len(SPECIAL_TOKENS):
        raise ValueError("The tokenizer learned no vocabulary: the training sentences are empty")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}",
        pair=f"$A {EOS} $B {EOS}",
        special_tokens=[(EOS, tokenizer.token_to_id(EOS))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        model_max_length=model_max_length,
    )


def vocabulary_fingerprint(tokenizer) -> str:
    """The first 16 hex digits of the SHA-256 of the vocabulary (every token with its id), special tokens included."""
    vocabulary = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(vocabulary, ensure_ascii=False).encode()).hexdigest()[:16]


def check_tokenizer_matches_model(tokenizer, config) -> None:
    """Raise a `ValueError` naming the mismatch when a tokenizer cannot drive a model: more tokens than the model
    has, other special-token ids, or, where the config records it (`tokenizer_fingerprint`), another vocabulary."""
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {config.vocab_size}: "
            "they were not trained together"
        )
    expected = getattr(config, "tokenizer_fingerprint", None)
    if expected is not None and vocabulary_fingerprint(tokenizer) != expected:
        raise ValueError(
            f"The tokenizer's vocabulary ({len(tokenizer)} tokens, fingerprint {vocabulary_fingerprint(tokenizer)}) is "
            f"not the one the model was trained with (fingerprint {expected}): load the tokenizer saved with the model"
        )
    for name in ("pad_token_id", "eos_token_id"):
        if getattr(tokenizer, name) != getattr(config, name):
            raise ValueError(
                f"tokenizer.{name}={getattr(tokenizer, name)} but config.{name}={getattr(config, name)}: "
                "they were not trained together"
            )


def record_tokenizer(config, tokenizer) -> None:
    """Check that `tokenizer` can drive a model of `config`, then record its vocabulary's fingerprint there, so
    that every later load can tell this tokenizer from any other."""
    check_tokenizer_matches_model(tokenizer, config)
    config.tokenizer_fingerprint = vocabulary_fingerprint(tokenizer)


def warn_on_unknown_input(encoded: Iterable[list[int]], tokenizer, config, logger: logging.Logger) -> None:
    """Warn when more than `UNKNOWN_SHARE_WARNING` of the source tokens (each sequence without its `</s>`) are
    `<unk>`: input in a language or script the vocabulary does not know, which still translates into fluent text."""
    encoded = list(encoded)
    tokens = sum(len(ids) - 1 for ids in encoded)
    unknown = sum(list(ids).count(tokenizer.unk_token_id) for ids in encoded)
    if tokens and unknown / tokens > UNKNOWN_SHARE_WARNING:
        language = f" in {config.src_lang}" if getattr(config, "src_lang", None) else ""
        logger.warning("%.0f%% of the input's tokens are unknown to the model's vocabulary (<unk>): is the input%s?",
                       100 * unknown / tokens, language)

"""Translate text with a trained model.

    python -m hf_vanilla_transformer.translate --model DIR_OR_REPO_ID "Ein Hund läuft."
    python -m hf_vanilla_transformer.translate --model DIR < sentences.txt > translations.txt
    python -m hf_vanilla_transformer.translate --model CT2_DIR --backend ctranslate2 < sentences.txt
    python -m hf_vanilla_transformer.translate --model DIR --backend onnx < sentences.txt

One output line per input line: a blank line gives a blank translation.
"""

import argparse
import logging
import sys

import torch

from . import ctranslate2_backend, onnx_backend
from .cli import available_device, positive_int
from .loading import load_model_and_tokenizer
from .tokenization import warn_on_unknown_input

logger = logging.getLogger(__name__)

# Each backend loads a folder into a model whose `generate` is the PyTorch model's, and its tokenizer.
BACKENDS = {"transformers": load_model_and_tokenizer, "ctranslate2": ctranslate2_backend.load,
            "onnx": onnx_backend.load}


def translate(model, tokenizer, sentences: list[str], batch_size: int | None = 64, max_tokens: int | None = None,
              **generate_kwargs) -> list[str]:
    """Translate `sentences` with `model.generate` (the model's generation config unless overridden; the model of
    any backend of `load_translator`), batching sentences of similar length together, at most `batch_size` of them
    and, where `max_tokens` is given, at most that many source tokens a batch, padding included, times the beams;
    the translations come back in input order.

    A blank sentence translates to "". A source longer than the model's `max_position_embeddings` is truncated, and
    input the vocabulary does not know (many `<unk>` tokens) is reported, both with a warning.
    """
    max_length = model.config.max_position_embeddings
    todo = [i for i, sentence in enumerate(sentences) if sentence.strip()]
    encoded = dict(zip(todo, tokenizer([sentences[i] for i in todo])["input_ids"])) if todo else {}
    too_long = [i for i, ids in encoded.items() if len(ids) > max_length]
    if too_long:
        logger.warning("%d sentence(s) longer than max_position_embeddings=%d tokens were truncated (the first: "
                       "sentence %d, %d tokens)", len(too_long), max_length, too_long[0], len(encoded[too_long[0]]))
        for i in too_long:
            encoded[i] = encoded[i][: max_length - 1] + [tokenizer.eos_token_id]
    warn_on_unknown_input(encoded.values(), tokenizer, model.config, logger)

    order = sorted(todo, key=lambda i: len(sentences[i]))
    beams = generate_kwargs.get("num_beams") or model.generation_config.num_beams or 1
    translations = [""] * len(sentences)
    for indices in batches(order, [len(encoded[i]) * beams for i in order], batch_size, max_tokens):
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in indices]}, return_tensors="pt").to(model.device)
        with torch.inference_mode():
            generated = model.generate(**batch, **generate_kwargs)
        for i, text in zip(indices, tokenizer.batch_decode(generated, skip_special_tokens=True)):
            translations[i] = text
    return translations


def batches(items: list, sizes: list[int], batch_size: int | None, max_tokens: int | None) -> list[list]:
    """Consecutive batches of `items`, each of at most `batch_size` items and at most `max_tokens` tokens when padded
    to its largest `sizes` (a single larger item is a batch of its own)."""
    result, batch, longest = [], [], 0
    for item, size in zip(items, sizes):
        longest_with = max(longest, size)
        if batch and ((batch_size and len(batch) == batch_size)
                      or (max_tokens and longest_with * (len(batch) + 1) > max_tokens)):
            result.append(batch)
            batch, longest_with = [], size
        batch.append(item)
        longest = longest_with
    return result + [batch] if batch else result


def load_translator(name_or_path: str, device: str | None = None, backend: str = "transformers", **options):
    """The model and tokenizer of a saved folder (or, for transformers, a Hub repository), checked to belong
    together, from one of the `BACKENDS`: transformers (the PyTorch model, in eval mode), ctranslate2 (a folder
    `ctranslate2_backend` exported) or onnx (a folder with the `onnx/` files `onnx_backend` exported). All
    translate with the same `generate` call."""
    return BACKENDS[backend](name_or_path, device, **options)


def read_stdin() -> list[str]:
    """Standard input's lines; input that is not UTF-8 stops with the line number."""
    lines = []
    for number, line in enumerate(sys.stdin.buffer, start=1):
        try:
            lines.append(line.decode("utf-8").rstrip("\r\n"))
        except UnicodeDecodeError:
            raise SystemExit(f"error: standard input, line {number}, is not UTF-8; convert it, e.g. with "
                             "`iconv -t utf-8`") from None
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sentences", nargs="*", help="sentences to translate; standard input when none are given")
    parser.add_argument("--model", required=True, help="a saved model folder or a Hub repository id")
    parser.add_argument("--num_beams", type=positive_int, default=None, help="beam size (default: the model's, 4)")
    parser.add_argument("--max_new_tokens", type=positive_int, default=None, help="default: source length + 50")
    parser.add_argument("--batch_size", type=positive_int, default=64)
    parser.add_argument("--device", type=available_device, default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--backend", choices=BACKENDS, default="transformers",
                        help="ctranslate2: a folder exported by `python -m hf_vanilla_transformer.ctranslate2_backend`"
                        "; onnx: a folder with the onnx/ files of `python -m hf_vanilla_transformer.onnx_backend`")
    args = parser.parse_args(argv)

    sentences = args.sentences or read_stdin()
    try:
        model, tokenizer = load_translator(args.model, args.device, args.backend)
    except (ImportError, OSError, ValueError) as error:
        raise SystemExit(f"error: --model {args.model}: {error}") from None
    options = {k: v for k, v in (("num_beams", args.num_beams), ("max_new_tokens", args.max_new_tokens)) if v}
    for translation in translate(model, tokenizer, sentences, args.batch_size, **options):
        print(translation)


if __name__ == "__main__":
    main()

"""Translate text with a trained model.

    python -m hf_vanilla_transformer.translate --model DIR_OR_REPO_ID "Ein Hund läuft."
    python -m hf_vanilla_transformer.translate --model DIR < sentences.txt > translations.txt
"""

import argparse
import sys

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from . import check_tokenizer_matches_model


def translate(model, tokenizer, sentences: list[str], batch_size: int = 64, **generate_kwargs) -> list[str]:
    """Translate `sentences` with `model.generate` (the model's generation config unless overridden), batching
    sentences of similar length together; the translations come back in input order."""
    for index, sentence in enumerate(sentences):
        if not sentence.strip():
            raise ValueError(f"Sentence {index} is empty: there is nothing to translate")
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    translations = [""] * len(sentences)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = tokenizer([sentences[i] for i in indices], return_tensors="pt", padding=True).to(model.device)
        with torch.inference_mode():
            generated = model.generate(**batch, **generate_kwargs)
        for i, text in zip(indices, tokenizer.batch_decode(generated, skip_special_tokens=True)):
            translations[i] = text
    return translations


def load_translator(name_or_path: str, device: str | None = None, **kwargs):
    """The model (in eval mode, on `device`) and tokenizer of a saved folder or Hub repository."""
    model = AutoModelForSeq2SeqLM.from_pretrained(name_or_path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    check_tokenizer_matches_model(tokenizer, model.config)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sentences", nargs="*", help="sentences to translate; standard input when none are given")
    parser.add_argument("--model", required=True, help="a saved model folder or a Hub repository id")
    parser.add_argument("--num_beams", type=int, default=None, help="beam size (default: the model's, 4)")
    parser.add_argument("--max_new_tokens", type=int, default=None, help="default: source length + 50")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    args = parser.parse_args(argv)

    sentences = args.sentences or [line.rstrip("\n") for line in sys.stdin]
    model, tokenizer = load_translator(args.model, args.device)
    options = {k: v for k, v in (("num_beams", args.num_beams), ("max_new_tokens", args.max_new_tokens)) if v}
    for translation in translate(model, tokenizer, sentences, args.batch_size, **options):
        print(translation)


if __name__ == "__main__":
    main()

"""Translate text with a trained model.

    python -m hf_vanilla_transformer.translate --model DIR_OR_REPO_ID "Ein Hund läuft."
    python -m hf_vanilla_transformer.translate --model DIR < sentences.txt > translations.txt
    python -m hf_vanilla_transformer.translate --model CT2_DIR --backend ctranslate2 < sentences.txt

One output line per input line: a blank line gives a blank translation.
"""

import argparse
import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors import SafetensorError
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedTokenizerFast

from . import check_tokenizer_matches_model

logger = logging.getLogger(__name__)

BACKENDS = ("transformers", "ctranslate2")
UNKNOWN_SHARE_WARNING = 0.1  # warn when more of the input's tokens than this are <unk>


def translate(model, tokenizer, sentences: list[str], batch_size: int = 64, **generate_kwargs) -> list[str]:
    """Translate `sentences` with `model.generate` (the model's generation config unless overridden), batching
    sentences of similar length together; the translations come back in input order.

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
    tokens = sum(len(ids) - 1 for ids in encoded.values())  # without each sentence's </s>
    unknown = sum(ids.count(tokenizer.unk_token_id) for ids in encoded.values())
    if tokens and unknown / tokens > UNKNOWN_SHARE_WARNING:
        language = f" in {model.config.src_lang}" if getattr(model.config, "src_lang", None) else ""
        logger.warning("%.0f%% of the input's tokens are unknown to the model's vocabulary (<unk>): is the input%s?",
                       100 * unknown / tokens, language)

    order = sorted(todo, key=lambda i: len(sentences[i]))
    translations = [""] * len(sentences)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        if isinstance(model, CTranslate2Model):
            generated = model.generate([encoded[i] for i in indices], tokenizer, **generate_kwargs)
        else:
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in indices]}, return_tensors="pt").to(model.device)
            with torch.inference_mode():
                generated = model.generate(**batch, **generate_kwargs)
        for i, text in zip(indices, tokenizer.batch_decode(generated, skip_special_tokens=True)):
            translations[i] = text
    return translations


class CTranslate2Model:
    """A model exported by `export.py`, run by CTranslate2, with the decoding `generate` gives the HF model: the
    saved generation config (§6.1: beam 4, length penalty 0.6) and at most source length + 50 tokens, the last EOS.

    The two rank finished hypotheses alike (log-probability / length^length_penalty) but stop beam search
    differently: CTranslate2 once `num_beams` × `patience` hypotheses have ended, `generate` with
    `early_stopping=True` once `num_beams` have (the same: patience 1), and with the default `early_stopping=False`
    once no running beam can still beat the finished ones, for which `HF_PATIENCE` stands in.
    """

    HF_PATIENCE = 1.5  # gave generate's translations on all 1,000 test_2016_flickr sentences (1: 977, 2: 999)

    def __init__(self, folder: str | Path, device: str = "cpu", compute_type: str = "default", threads: int = 0):
        from .export import import_ctranslate2

        folder = Path(folder)
        self.config = SimpleNamespace(**json.loads((folder / "config.json").read_text()))
        self.generation_config = json.loads((folder / "generation_config.json").read_text())
        self.translator = import_ctranslate2().Translator(str(folder), device=device, compute_type=compute_type,
                                                          intra_threads=threads)

    def generate(self, sources: list[list[int]], tokenizer, num_beams: int | None = None,
                 length_penalty: float | None = None, early_stopping: bool | None = None,
                 max_new_tokens: int | None = None) -> list[list[int]]:
        """Token ids of the translations of `sources` (token ids ending in </s>); the arguments are those of
        `generate`, defaulting to the saved generation config."""
        defaults = self.generation_config
        early_stopping = defaults.get("early_stopping", False) if early_stopping is None else early_stopping
        options = dict(beam_size=num_beams or defaults.get("num_beams", 1), max_input_length=0,
                       length_penalty=defaults.get("length_penalty", 1.0) if length_penalty is None else length_penalty,
                       patience=1 if early_stopping is True else self.HF_PATIENCE)
        tokens = [tokenizer.convert_ids_to_tokens(ids) for ids in sources]
        if max_new_tokens is not None:  # a plain cap: `generate` stops the beams there, without an EOS, as CTranslate2
            results = self.translator.translate_batch(tokens, max_decoding_length=max_new_tokens, **options)
            return [tokenizer.convert_tokens_to_ids(result.hypotheses[0]) for result in results]
        # source length + 50 new tokens, the last EOS, which CTranslate2 does not count
        limits = [min(len(ids) + 50, self.config.max_position_embeddings - 1) - 1 for ids in sources]
        results = self.translator.translate_batch(tokens, max_decoding_length=max(limits), **options)
        outputs = [result.hypotheses[0] for result in results]
        for i, (output, limit) in enumerate(zip(outputs, limits)):
            if len(output) >= limit:  # at or past this sentence's limit: decode it alone, under its own limit
                outputs[i] = self.at_the_limit(tokens[i], limit, options)
        return [tokenizer.convert_tokens_to_ids(output) for output in outputs]

    def at_the_limit(self, source: list[str], limit: int, options: dict) -> list[str]:
        """The best translation of a sentence whose beams reach its limit. `generate` ends each beam there with a
        forced EOS whose log-probability counts in the beam's score; CTranslate2 stops the beams without it, and
        would rank them otherwise. So its hypotheses are scored again with the EOS and ranked as `generate` does:
        summed log-probabilities / (tokens with the EOS)^length_penalty."""
        hypotheses = self.translator.translate_batch([source], max_decoding_length=limit,
                                                     num_hypotheses=options["beam_size"], **options)[0].hypotheses
        scored = self.translator.score_batch([source] * len(hypotheses), hypotheses)
        return max(zip(hypotheses, scored),
                   key=lambda pair: sum(pair[1].log_probs) / len(pair[1].log_probs) ** options["length_penalty"])[0]


def load_translator(name_or_path: str, device: str | None = None, backend: str = "transformers", **kwargs):
    """The model (in eval mode, on `device`) and tokenizer of a saved folder or Hub repository, checked to belong
    together (`check_tokenizer_matches_model`); with `backend="ctranslate2"`, a folder `export.py` wrote."""
    path = Path(name_or_path).expanduser()
    looks_local = path.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1
    if path.exists() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{name_or_path} is not a saved model: it has no config.json")
    if not path.exists() and (looks_local or backend == "ctranslate2"):
        raise FileNotFoundError(f"No model folder at {name_or_path}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if backend == "ctranslate2":
        if not (path / "model.bin").is_file():
            raise FileNotFoundError(f"{name_or_path} is not a CTranslate2 export (no model.bin): make one with "
                                    "`python -m hf_vanilla_transformer.export ctranslate2`")
        model = CTranslate2Model(path, device, **kwargs)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
        check_tokenizer_matches_model(tokenizer, model.config)
        return model, tokenizer
    model = load_model(path if path.exists() else name_or_path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path if path.exists() else name_or_path, **kwargs)
    check_tokenizer_matches_model(tokenizer, model.config)
    return model.to(device).eval(), tokenizer


def load_model(name_or_path: str | Path, **kwargs):
    """`AutoModelForSeq2SeqLM.from_pretrained`, whose damaged or mismatched weights raise an `OSError` that says so
    (safetensors and transformers raise their own exception types there)."""
    try:
        return AutoModelForSeq2SeqLM.from_pretrained(name_or_path, **kwargs)
    except SafetensorError as error:
        raise OSError(f"model.safetensors is damaged or cut short ({error}): save or download the model again") from None
    except RuntimeError as error:
        if "mismatch" not in str(error):
            raise
        raise OSError("the weights in model.safetensors do not fit config.json (the report above lists the tensors): "
                      "the two files come from different models") from None


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


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a beam size, a batch size, a count of steps)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive: give 1 or more")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sentences", nargs="*", help="sentences to translate; standard input when none are given")
    parser.add_argument("--model", required=True, help="a saved model folder or a Hub repository id")
    parser.add_argument("--num_beams", type=positive_int, default=None, help="beam size (default: the model's, 4)")
    parser.add_argument("--max_new_tokens", type=positive_int, default=None, help="default: source length + 50")
    parser.add_argument("--batch_size", type=positive_int, default=64)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--backend", choices=BACKENDS, default="transformers",
                        help="ctranslate2: a folder exported by `python -m hf_vanilla_transformer.export ctranslate2`")
    args = parser.parse_args(argv)

    sentences = args.sentences or read_stdin()
    try:
        model, tokenizer = load_translator(args.model, args.device, args.backend)
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: --model {args.model}: {error}") from None
    options = {k: v for k, v in (("num_beams", args.num_beams), ("max_new_tokens", args.max_new_tokens)) if v}
    for translation in translate(model, tokenizer, sentences, args.batch_size, **options):
        print(translation)


if __name__ == "__main__":
    main()

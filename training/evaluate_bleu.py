"""Translate a split with a saved model and print its sacreBLEU (with the model's decoding: §6.1's by default).

    python -m training.evaluate_bleu --model outputs/multi30k-de-en/model --split test
    python -m training.evaluate_bleu --model outputs/multi30k-de-en/model/ctranslate2 --backend ctranslate2
    python -m training.evaluate_bleu --model outputs/multi30k-de-en/model --backend onnx
"""

import argparse
import json

from hf_vanilla_transformer.cli import available_device, positive_int
from hf_vanilla_transformer.decoding import decoding_options
from hf_vanilla_transformer.metrics import BLEU_STYLES, corpus_bleu, paper_bleu
from hf_vanilla_transformer.translate import BACKENDS, load_translator, translate

from .data import DataError, load_translation_dataset


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a saved model folder or a Hub repository id")
    parser.add_argument("--split", default="test", help="train, validation or test")
    parser.add_argument("--source_lang", default=None, help="default: the model's")
    parser.add_argument("--target_lang", default=None, help="default: the model's")
    parser.add_argument("--dataset_name", default=None, help="a Hub dataset; default: the embedded Multi30k")
    parser.add_argument("--dataset_config_name", default=None)
    parser.add_argument("--test_file", default=None, help="a local file for --split test (.tsv, .jsonl or a prefix)")
    parser.add_argument("--max_samples", type=positive_int, default=None)
    parser.add_argument("--num_beams", type=positive_int, default=None, help="default: the model's (§6.1: 4)")
    parser.add_argument("--length_penalty", type=float, default=None, help="default: the model's (§6.1: 0.6)")
    parser.add_argument("--batch_size", type=positive_int, default=64)
    parser.add_argument("--device", type=available_device, default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--backend", choices=BACKENDS, default="transformers",
                        help="ctranslate2: --model is a folder exported by "
                        "`hf_vanilla_transformer.ctranslate2_backend`; onnx: a folder with the onnx/ files of "
                        "`hf_vanilla_transformer.onnx_backend`")
    parser.add_argument("--output_file", default=None, help="write the translations here, one a line")
    parser.add_argument("--bleu_style", choices=BLEU_STYLES, default="sacrebleu",
                        help="paper: also the tokenized, compound-split BLEU of the paper's WMT14 tables")
    args = parser.parse_args(argv)

    try:
        model, tokenizer = load_translator(args.model, args.device, args.backend)
    except (ImportError, OSError, ValueError) as error:
        parser.error(f"--model {args.model}: {error}")
    source_lang = args.source_lang or model.config.src_lang
    target_lang = args.target_lang or model.config.tgt_lang
    if not (source_lang and target_lang):
        parser.error("the model does not record its languages: pass --source_lang and --target_lang")
    try:
        splits = load_translation_dataset(source_lang, target_lang, args.dataset_name, args.dataset_config_name,
                                          test_file=args.test_file)
    except DataError as error:
        parser.error(str(error))
    if args.split not in splits:
        parser.error(f"no split {args.split!r}; the data has {sorted(splits)}")
    pairs = splits[args.split]["translation"][: args.max_samples]
    sources, references = [p[source_lang] for p in pairs], [p[target_lang] for p in pairs]

    decoding = decoding_options(model.generation_config, args.num_beams, args.length_penalty)
    hypotheses = translate(model, tokenizer, sources, args.batch_size, **decoding)
    bleu = corpus_bleu(hypotheses, references)
    if args.output_file:
        with open(args.output_file, "w", encoding="utf-8") as file:
            file.write("\n".join(hypotheses) + "\n")
    result = {"split": args.split, "sentences": len(sources), "bleu": round(bleu["score"], 2),
              "signature": bleu["signature"], **decoding, "backend": args.backend}
    if args.bleu_style == "paper":
        paper = paper_bleu(hypotheses, references, target_lang)
        result.update(paper_bleu=round(paper["score"], 2), paper_bleu_signature=paper["signature"])
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

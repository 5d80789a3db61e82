"""BLEU (§6.1) through `evaluate`, with sacreBLEU underneath: cased, on detokenized text, signature included.

`evaluate.load("sacrebleu")` fetches the metric from the Hub; `load_bleu` falls back to the copy shipped in this
package when the Hub is out of reach or `HF_HUB_OFFLINE`/`HF_EVALUATE_OFFLINE` is set. `paper_bleu` is the
tokenized BLEU the paper reports for WMT14, beside sacreBLEU, never instead of it.
"""

import logging
import re
from pathlib import Path

import evaluate
import numpy as np
import sacrebleu
from huggingface_hub import constants

logger = logging.getLogger(__name__)

LOCAL_SACREBLEU = Path(__file__).with_name("sacrebleu")


def load_bleu() -> evaluate.EvaluationModule:
    """The Hub's `sacrebleu` metric, or the local copy when the Hub cannot be reached."""
    if not (constants.HF_HUB_OFFLINE or evaluate.config.HF_EVALUATE_OFFLINE):
        try:
            return evaluate.load("sacrebleu")
        except Exception as error:  # no network, Hub down, proxy: any of them means "use the local copy"
            logger.warning("BLEU uses the sacrebleu metric shipped with hf_vanilla_transformer: the Hub's copy could "
                           "not be fetched (offline? evaluate said: %s). HF_HUB_OFFLINE=1 skips the attempt.", error)
    return evaluate.load(str(LOCAL_SACREBLEU))


def bleu_signature(num_references: int = 1) -> str:
    """sacreBLEU's signature of the default (cased, 13a-tokenized) BLEU, e.g. `nrefs:1|case:mixed|...`."""
    bleu = sacrebleu.BLEU()
    bleu.corpus_score(["."], [["."]] * num_references)  # the signature names the number of references
    return str(bleu.get_signature())


def corpus_bleu(predictions: list[str], references: list[str], metric=None) -> dict:
    """Corpus BLEU of detokenized `predictions` against one reference each, with its signature."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    metric = metric if metric is not None else load_bleu()
    result = metric.compute(predictions=predictions, references=[[reference] for reference in references])
    return {**result, "signature": bleu_signature()}


BLEU_STYLES = ("sacrebleu", "paper")  # the CLIs' --bleu_style: sacreBLEU alone, or with `paper_bleu` beside it
COMPOUND = re.compile(r"(\S)-(\S)")  # tensor2tensor's get_ende_bleu.sh: s{(\S)-(\S)}{$1 ##AT##-##AT## $2}g
PAPER_BLEU_SIGNATURE = "tokenizer.perl -l {lang} (sacremoses)|compound split ##AT##-##AT##|multi-bleu.perl"


def paper_bleu(predictions: list[str], references: list[str], lang: str) -> dict:
    """§6.1's BLEU as the paper, tensor2tensor and fairseq computed it for WMT14 en-de: both sides Moses-tokenized
    (`tokenizer.perl -l lang`), hyphenated compounds split (`Boden-Teppich` → `Boden ##AT##-##AT## Teppich`) and
    scored as `multi-bleu.perl` does (cased, no smoothing). More tokens to match make it higher than sacreBLEU on
    the same translations (~1.5 BLEU on newstest2014 en-de), so it compares with the paper's tables and nothing else."""
    try:
        from sacremoses import MosesTokenizer
    except ImportError:
        raise ImportError("the paper's BLEU needs sacremoses (Moses tokenization): "
                          "pip install 'hf-vanilla-transformer[wmt]'") from None
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    moses = MosesTokenizer(lang)

    def prepare(text: str) -> str:
        return COMPOUND.sub(r"\1 ##AT##-##AT## \2", moses.tokenize(text, return_str=True))

    bleu = sacrebleu.BLEU(tokenize="none", smooth_method="none", force=True)
    score = bleu.corpus_score([prepare(text) for text in predictions], [[prepare(text) for text in references]])
    return {"score": score.score, "signature": PAPER_BLEU_SIGNATURE.format(lang=lang)}


def bleu_compute_metrics(tokenizer, metric=None):
    """A `compute_metrics` for `Seq2SeqTrainer(predict_with_generate=True)`: returns `bleu` and `gen_len`."""
    metric = metric if metric is not None else load_bleu()

    def compute_metrics(eval_prediction) -> dict:
        predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        predictions = np.where(predictions != -100, predictions, tokenizer.pad_token_id)
        labels = np.where(labels != -100, labels, tokenizer.pad_token_id)
        hypotheses = tokenizer.batch_decode(predictions, skip_special_tokens=True)
        references = tokenizer.batch_decode(labels, skip_special_tokens=True)
        lengths = np.count_nonzero(predictions != tokenizer.pad_token_id, axis=-1)
        return {"bleu": corpus_bleu(hypotheses, references, metric)["score"], "gen_len": float(lengths.mean())}

    return compute_metrics

"""BLEU (§6.1) through `evaluate`, with sacreBLEU underneath: cased, on detokenized text, signature included.

`evaluate.load("sacrebleu")` fetches the metric from the Hub; `load_bleu` falls back to the copy shipped in this
package when the Hub is out of reach or `HF_HUB_OFFLINE`/`HF_EVALUATE_OFFLINE` is set.
"""

import logging
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

"""sacreBLEU as a local `evaluate` metric, for machines that cannot reach the Hub's `sacrebleu` module.

It takes and returns what the Hub's module does: `predictions` (strings), `references` (a list of reference
strings per prediction) and sacreBLEU's options; the result holds `score`, `counts`, `totals`, `precisions`,
`bp`, `sys_len` and `ref_len`.
"""

import datasets
import evaluate
import sacrebleu as scb

_CITATION = """\
@inproceedings{post-2018-call,
    title = "A Call for Clarity in Reporting {BLEU} Scores",
    author = "Post, Matt",
    booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
    year = "2018",
    pages = "186--191",
}
"""

_DESCRIPTION = "Corpus BLEU computed by sacreBLEU on detokenized text (Post, 2018)."

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of translations to score.
    references: list of lists of references, one list per prediction, all of the same length.
    smooth_method, smooth_value, force, lowercase, tokenize, use_effective_order: sacreBLEU's BLEU options.
Returns:
    score, counts, totals, precisions, bp, sys_len, ref_len.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Sacrebleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Sequence(datasets.Value("string", id="sequence"), id="references"),
                    }
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Value("string", id="sequence"),
                    }
                ),
            ],
        )

    def _compute(
        self,
        predictions,
        references,
        smooth_method="exp",
        smooth_value=None,
        force=False,
        lowercase=False,
        tokenize=None,
        use_effective_order=False,
    ):
        references = [[reference] if isinstance(reference, str) else reference for reference in references]
        references_per_prediction = len(references[0])
        if any(len(refs) != references_per_prediction for refs in references):
            raise ValueError("sacreBLEU needs the same number of references for every prediction")
        reference_streams = [[refs[i] for refs in references] for i in range(references_per_prediction)]
        output = scb.BLEU(
            smooth_method=smooth_method,
            smooth_value=smooth_value,
            force=force,
            lowercase=lowercase,
            tokenize=tokenize,
            effective_order=use_effective_order,
        ).corpus_score(predictions, reference_streams)
        return {
            "score": output.score,
            "counts": output.counts,
            "totals": output.totals,
            "precisions": output.precisions,
            "bp": output.bp,
            "sys_len": output.sys_len,
            "ref_len": output.ref_len,
        }

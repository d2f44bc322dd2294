"""Corpus BLEU and chrF with sacrebleu, one reference per prediction, with the signatures.

The signature string (tokenizer, smoothing, version) says exactly how the score was computed,
so two BLEU numbers are only compared when their signatures match.
"""

import datasets
import evaluate
import sacrebleu

_KWARGS = """
Args:
    predictions: generated texts.
    references: one reference text per prediction.
Returns:
    bleu and chrf (0-100), brevity_penalty, and bleu_signature / chrf_signature strings.
"""


class Bleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="Post, 2018. A Call for Clarity in Reporting BLEU Scores.",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, tokenize="13a"):
        bleu_metric = sacrebleu.metrics.BLEU(tokenize=tokenize)
        chrf_metric = sacrebleu.metrics.CHRF()
        refs = [list(references)]  # sacrebleu takes reference streams
        bleu = bleu_metric.corpus_score(list(predictions), refs)
        chrf = chrf_metric.corpus_score(list(predictions), refs)
        return {
            "bleu": bleu.score,
            "chrf": chrf.score,
            "brevity_penalty": bleu.bp,
            "bleu_signature": str(bleu_metric.get_signature()),
            "chrf_signature": str(chrf_metric.get_signature()),
        }

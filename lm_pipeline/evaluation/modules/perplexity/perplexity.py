"""Token-weighted perplexity from per-sequence negative log-likelihoods.

Each input row is one scored sequence (a document, or a window of one): the sum of its tokens'
negative log-likelihoods in nats and how many tokens were scored. Perplexity is
exp(total NLL / total tokens), so every token counts once, however the corpus was cut.
Passing `n_bytes` also gives bits per byte, which compares models with different tokenizers.
The pipeline scores each document's closing end-of-text too (where a document ends is part of
what the model predicts), so its `n_bytes` is the text's UTF-8 bytes plus one per document: the
separator a byte-level stream of the same documents would need. The bytes are counted on the
original text, not on decoded tokens (a character tokenizer's <unk> decodes to nothing).
"""

import math

import datasets
import evaluate

_KWARGS = """
Args:
    nll: summed negative log-likelihood (nats) of each sequence.
    n_tokens: number of tokens scored in each sequence.
    n_bytes: optional, total bytes the scored tokens stand for (for bits per byte).
Returns:
    perplexity, mean_nll (nats per token), tokens, and bits_per_byte when n_bytes is given.
"""


class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"nll": datasets.Value("float64"),
                                        "n_tokens": datasets.Value("int64")}),
        )

    def _compute(self, nll, n_tokens, n_bytes=None):
        tokens = int(sum(n_tokens))
        if tokens <= 0:
            raise ValueError("perplexity needs at least one scored token")
        total = math.fsum(nll)
        result = {"perplexity": math.exp(total / tokens), "mean_nll": total / tokens, "tokens": tokens}
        if n_bytes:
            result["bits_per_byte"] = total / math.log(2) / n_bytes
        return result

import pytest

from lm_pipeline.config import TokenizerConfig
from lm_pipeline.data.tokenizer import eot_id, train_tokenizer

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Ünïcödé text, tabs\tand\nnewlines.",
         "def f(x):\n    return x ** 2  # code too"] * 5


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_tokenizer_round_trip(kind):
    tok = train_tokenizer(TEXTS, TokenizerConfig(kind=kind, vocab_size=300, min_frequency=1))
    for text in TEXTS:
        assert tok.decode(tok.encode(text).ids) == text
    assert eot_id(tok) == 0


def test_bpe_encodes_unseen_characters_without_loss():
    tok = train_tokenizer(TEXTS, TokenizerConfig(kind="bpe", vocab_size=300, min_frequency=1))
    assert tok.decode(tok.encode("日本語 ✓").ids) == "日本語 ✓"

"""A small GPT that has learned one domain (Python prose), the champion of the continuous-training
unit tests, and the way they train it further."""

import copy

import pytest
import torch

from lm_pipeline.config import TokenizerConfig
from lm_pipeline.data.tokenizer import train_tokenizer
from lm_pipeline.model.transformer import GPT, GPTConfig
from tests.unit.continuous.corpora import BIRDS, PLACES, PYTHON, documents


def trained(gpt: GPT, tokenizer, texts: list[str], steps: int, seed: int = 0) -> GPT:
    """`gpt` after `steps` AdamW steps on windows of `texts` (in eval mode)."""
    data = torch.tensor([i for text in texts for i in tokenizer.encode(text).ids])
    optimizer = torch.optim.AdamW(gpt.parameters(), lr=3e-3)
    gpt.train()
    for step in range(steps):
        starts = torch.randint(0, len(data) - 65, (16,), generator=torch.Generator().manual_seed(seed + step))
        batch = torch.stack([data[i:i + 65] for i in starts])
        _, loss, _ = gpt(batch[:, :-1], batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return gpt.eval()


@pytest.fixture(scope="package")
def champion():
    """(model, tokenizer): trained on Python documents; the tokenizer also knows the birds'
    letters, so a drop about birds is scored, not refused."""
    python, birds = documents(PYTHON, 120, seed=10), documents(BIRDS + PLACES, 10, seed=11)
    tokenizer = train_tokenizer(python + birds, TokenizerConfig(kind="char"))
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=tokenizer.get_vocab_size(), block_size=64, n_layer=2, n_head=2, n_embd=32))
    return trained(gpt, tokenizer, python, steps=150), tokenizer


@pytest.fixture
def fine_tune(champion):
    """A copy of the champion trained further on `texts` (the champion itself is left as it is)."""
    model, tokenizer = champion
    return lambda texts, steps: trained(copy.deepcopy(model), tokenizer, texts, steps, seed=1000)

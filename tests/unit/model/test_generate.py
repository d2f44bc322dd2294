import torch

from lm_pipeline.model.generate import generate, sample_next
from lm_pipeline.model.transformer import GPT, GPTConfig

CFG = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)


def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CFG).eval()


def test_smoke_generation_continues_past_the_context_window():
    """A smoke test (it runs, it has the length): which tokens come past the context is checked
    against an uncached computation in test_transformer and test_backends."""
    out = generate(model(), torch.zeros(1, 3, dtype=torch.long), max_new_tokens=40)
    assert out.shape == (1, 43)


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.tensor([[4.0, 3.0, 2.0, -5.0, -6.0]])
    g = torch.Generator().manual_seed(0)
    draws_k = {sample_next(logits, 1.0, 2, None, g).item() for _ in range(200)}
    assert draws_k == {0, 1}
    # softmax mass of the top token is about 0.67: top_p=0.5 keeps it alone.
    draws_p = {sample_next(logits, 1.0, None, 0.5, g).item() for _ in range(200)}
    assert draws_p == {0}
    assert sample_next(logits, 0.0, None, None, g).item() == 0  # greedy


def test_batched_prompts_get_what_each_gets_alone_and_end_before_a_stop_string():
    from lm_pipeline.config import TokenizerConfig
    from lm_pipeline.data.tokenizer import train_tokenizer
    from lm_pipeline.model.generate import complete, complete_batch

    tokenizer = train_tokenizer(["a tuple is an immutable sequence; a list is mutable"] * 20,
                                TokenizerConfig(kind="char"))
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=tokenizer.get_vocab_size(), block_size=16, n_layer=2, n_head=2,
                        n_embd=16)).eval()
    with torch.no_grad():  # a large spread, so the output varies with the prompt and the position
        for p in gpt.parameters():
            if p.dim() >= 2:
                p.normal_(0, 2 / p.shape[-1] ** 0.5)
    prompts = ["a tuple", "a list", "a tupl", "mutable"]  # two lengths, two prompts each
    forwards = []
    gpt.register_forward_hook(lambda module, args, out: forwards.append(args[0].shape[0]))
    for steps, batch_shapes in ((6, {4}), (20, {2})):  # fits the context (padded), or refills
        alone = [complete(gpt, tokenizer, p, steps) for p in prompts]
        assert len(set(alone)) == len(prompts) and all(len(set(a)) > 2 for a in alone)
        forwards.clear()
        assert complete_batch(gpt, tokenizer, prompts, steps, batch_size=4) == alone
        assert set(forwards) == batch_shapes  # padded: all four at once; past the context: by length
    stop = alone[0][3:5]
    cut = complete_batch(gpt, tokenizer, prompts[:1], 20, stop=["zz", stop])[0]
    assert cut == alone[0][:alone[0].index(stop)] and stop not in cut

"""The serving engine on a small GPT with few steps of training (so its answers follow the prompt):
batched answers equal answers alone, streams equal answers, logprobs equal an independent forward."""

import json
import types

import pytest
import torch

from lm_pipeline.model.generate import complete
from lm_pipeline.model.transformer import GPT, GPTConfig
from lm_pipeline.serving import engine
from lm_pipeline.serving.protocol import Limits, RequestError, parse_completion

LIMITS = Limits(max_tokens=24, max_n=4)
TEXT = " ".join(["a tuple is an immutable sequence; a list is mutable; mutable lists grow."] * 20)


@pytest.fixture(scope="module")
def served():
    from lm_pipeline.config import TokenizerConfig
    from lm_pipeline.data.tokenizer import train_tokenizer

    tokenizer = train_tokenizer([TEXT], TokenizerConfig(kind="char"))
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=tokenizer.get_vocab_size(), block_size=32, n_layer=2, n_head=2,
                        n_embd=16)).eval()
    learn(gpt, tokenizer.encode(TEXT).ids)
    return engine.Served(gpt.eval(), tokenizer, "tiny/1")


def learn(gpt, ids: list[int], steps: int = 80) -> None:
    """A few steps on the text, so greedy answers follow the prompt (an untrained GPT's repeat one token)."""
    data = torch.tensor(ids)
    optimizer = torch.optim.AdamW(gpt.parameters(), lr=1e-2)
    gpt.train()
    for step in range(steps):
        starts = torch.randint(0, len(data) - 33, (16,), generator=torch.Generator().manual_seed(step))
        batch = torch.stack([data[i:i + 33] for i in starts])
        _, loss, _ = gpt(batch[:, :-1], batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def request(**body):
    return parse_completion({"model": "tiny/1", "max_tokens": 12, "temperature": 0} | body, LIMITS)


def answer(served, **body):
    (reply,) = engine.answer([(served, request(**body))])
    return reply


def test_a_batch_of_requests_gets_what_each_request_gets_alone(served):
    prompts = ["a tuple", "a list", "a tupl", "mutable", "is"]
    alone = [answer(served, prompt=p).choices[0].text for p in prompts]
    assert len(set(alone)) == len(alone)  # precondition: the model's answers depend on the prompt
    assert len({len(served.tokenizer.encode(p).ids) for p in prompts}) > 2  # they need padding to share
    forwards = []
    hook = served.model.register_forward_hook(lambda module, args, out: forwards.append(args[0].shape[0]))
    try:
        replies = engine.answer([(served, request(prompt=p)) for p in prompts]
                                + [(served, request(prompt="x" * 40))])  # one bad request among them
    finally:
        hook.remove()
    assert [r.choices[0].text for r in replies[:-1]] == alone
    assert set(forwards) == {len(prompts)} and len(forwards) <= 12  # one batch, one forward a token
    assert isinstance(replies[-1], RequestError) and replies[-1].param == "prompt"
    assert alone[0] == complete(served.model, served.tokenizer, "a tuple", 12)  # what `lmp generate` says


def test_seeded_sampling_does_not_depend_on_the_batch_and_n_gives_distinct_draws(served):
    sampled = answer(served, prompt="a list", temperature=2.0, seed=5, n=3)
    texts = [c.text for c in sampled.choices]
    assert len(set(texts)) > 1
    with_others = engine.answer([(served, request(prompt="a tuple")),
                                 (served, request(prompt="a list", temperature=2.0, seed=5, n=3))])[1]
    assert [c.text for c in with_others.choices] == texts
    generator = torch.Generator().manual_seed(5)
    assert texts[0] == complete(served.model, served.tokenizer, "a list", 12, generator=generator,
                                temperature=2.0)


def test_a_stream_is_the_answer_in_pieces_and_a_stop_string_ends_both(served):
    whole = answer(served, prompt="a tuple", max_tokens=20)
    full = whole.choices[0]
    pieces = list(engine.stream(served, request(prompt="a tuple", max_tokens=20, stream=True)))
    assert "".join(text for text, _, _ in pieces) == full.text
    assert pieces[-1] == ("", full.finish_reason, whole.usage())  # its usage, counted as the answer's
    assert len(pieces) > 3 and all(usage is None for _, _, usage in pieces[:-1])
    stop = full.text[5:7]
    cut = answer(served, prompt="a tuple", max_tokens=20, stop=[stop]).choices[0]
    assert cut.text == full.text[:full.text.index(stop)] and cut.finish_reason == "stop"
    streamed = list(engine.stream(served, request(prompt="a tuple", max_tokens=20, stop=[stop], stream=True)))
    assert "".join(t for t, _, _ in streamed) == cut.text and streamed[-1][:2] == ("", "stop")


@torch.no_grad()
def test_echoed_logprobs_are_the_models_log_softmax_for_given_tokens(served):
    ids = served.tokenizer.encode("a tuple is", add_special_tokens=False).ids
    reply = answer(served, prompt=ids, max_tokens=1, echo=True, logprobs=2)
    logprobs = reply.choices[0].logprobs
    assert len(logprobs["token_logprobs"]) == len(ids) + 1 and logprobs["token_logprobs"][0] is None
    expected = served.model(torch.tensor([ids]))[0][0].log_softmax(-1)
    for t in range(1, len(ids)):
        assert logprobs["token_logprobs"][t] == pytest.approx(float(expected[t - 1, ids[t]]), abs=1e-5)
    # the generated token is the greedy one: its logprob is the best of its position
    assert logprobs["token_logprobs"][-1] == pytest.approx(float(expected[-1].max()), abs=1e-5)
    assert logprobs["token_logprobs"][-1] == max(logprobs["top_logprobs"][-1].values())
    assert reply.choices[0].text.startswith("a tuple is")


def test_a_vanishing_temperature_samples_the_greedy_answer(served):
    """A temperature inside the allowed range but below float32's smallest (1e-50) divided the logits
    by 0; the answer is the greedy one, not an error for the batch it joined."""
    greedy = answer(served, prompt="a tuple").choices[0].text
    assert answer(served, prompt="a tuple", temperature=1e-50, seed=3).choices[0].text == greedy


def test_an_answer_ends_at_the_eos_token_a_chat_template_ends_turns_with(served):
    """An instruct model's eos_token (ChatML's <|im_end|>) ends its turn, as in Hugging Face's
    generate; only <|endoftext|> did, so an answer ran on past the turn, inventing the next ones.
    Here the eos_token is a character the greedy answer holds, so where it must stop is known."""
    import dataclasses

    full = answer(served, prompt="a tuple", max_tokens=20).choices[0]
    eos = next(c for c in full.text if full.text.index(c) >= 3 and not c.isspace())  # a few tokens in
    turned = dataclasses.replace(served, special_tokens={"eos_token": eos})
    cut = answer(turned, prompt="a tuple", max_tokens=20).choices[0]
    assert cut.text == full.text[:full.text.index(eos)] and cut.finish_reason == "stop"
    streamed = list(engine.stream(turned, request(prompt="a tuple", max_tokens=20, stream=True)))
    assert "".join(t for t, _, _ in streamed) == cut.text and streamed[-1][1] == "stop"


def test_a_prompt_reads_special_tokens_as_written_where_corpus_text_does_not(served):
    """A prompt is its writer's to format, as Hugging Face and vLLM read it: a special token
    written in it is that token (a chat prompt formatted by hand for /v1/completions). Corpus
    text is read as text by the same model's tokenizer elsewhere (evaluation, training data)."""
    ids, start = engine.prompt_ids(served, "a tuple<|endoftext|>a list")
    assert ids[start:].count(served.eot) == 1
    assert served.tokenizer.decode(ids[start:], skip_special_tokens=False) == "a tuple<|endoftext|>a list"


def test_special_tokens_are_read_as_older_model_folders_keep_them(tmp_path):
    """Llama 2's tokenizer_config.json holds bos and eos as AddedToken objects, and some folders
    name them in special_tokens_map.json alone: every chat request got 400 ('bos_token' is
    undefined in the template) and answers ran to max_tokens, with no end of turn to stop at."""
    from lm_pipeline.serving.chat import special_tokens

    def added(text: str) -> dict:
        return {"__type": "AddedToken", "content": text, "lstrip": False, "normalized": False,
                "rstrip": False, "single_word": False}

    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": added("<s>"),
                                                                "eos_token": added("</s>")}))
    assert special_tokens(tmp_path) == {"bos_token": "<s>", "eos_token": "</s>"}
    mapped = tmp_path / "mapped"
    mapped.mkdir()
    (mapped / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>",
                                                               "eos_token": added("</s>")}))
    assert special_tokens(mapped) == {"bos_token": "<s>", "eos_token": "</s>"}


def test_a_stop_string_is_looked_for_in_one_decode_of_the_answer_until_it_appears(served):
    """Each step checks whether a stop string has appeared: decoding every prefix of the answer at
    every step cost a cubic number of decodes (a 256-token answer with a stop string that never
    came: 0.34 s of CPU a row, its whole batch held up). Where it appears is found as before."""
    decodes = []

    class Counting:
        def decode(self, ids, **kwargs):
            decodes.append(len(ids))
            return served.tokenizer.decode(ids, **kwargs)

    counted = types.SimpleNamespace(ends_at=served.ends_at, tokenizer=Counting())
    answer = served.tokenizer.encode("a tuple is an immutable sequence; a list", add_special_tokens=False).ids
    assert engine.ends(counted, answer, ("zzz",)) == (len(answer), "length") and len(decodes) == 1
    n, reason = engine.ends(counted, answer, ("immutable",))
    assert reason == "stop" and served.tokenizer.decode(answer[:n]).endswith("immutable")
    assert "immutable" not in served.tokenizer.decode(answer[:n - 1])

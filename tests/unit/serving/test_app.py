"""A request the endpoint fails on (a model whose forward raises, as running out of memory does):
OpenAI's error body with status 500 and the version header, counted as a server error; a stream
ends with an error event. Starlette's plain-text page named no version, and the replica's
statistics counted nothing, so a replica failing every request logged "0 server errors"."""

import asyncio
import json

import pytest
from starlette.requests import Request

from lm_pipeline.serving import engine, protocol
from lm_pipeline.serving.app import VERSION_HEADER, LanguageModelServer, Settings
from lm_pipeline.serving.batcher import Batcher
from lm_pipeline.serving.stats import Stats


@pytest.fixture(scope="module")
def failing():
    """The endpoint's request handling, on a real tiny GPT whose forward fails."""
    from lm_pipeline.config import TokenizerConfig
    from lm_pipeline.data.tokenizer import train_tokenizer
    from lm_pipeline.model.transformer import GPT, GPTConfig

    tokenizer = train_tokenizer(["a tuple is an immutable sequence"], TokenizerConfig(kind="char"))
    gpt = GPT(GPTConfig(vocab_size=tokenizer.get_vocab_size(), block_size=16, n_layer=1, n_head=1, n_embd=8))

    def out_of_memory(module, args):
        raise RuntimeError("out of memory")

    gpt.register_forward_pre_hook(out_of_memory)
    server = object.__new__(LanguageModelServer.func_or_class)  # its handlers, without a replica
    server.settings = Settings(source="models:/tiny@champion", tracking_uri="", registered_name="tiny")
    server.served, server.token = engine.Served(gpt.eval(), tokenizer, "tiny/1"), None
    server.limits, server.stats = protocol.Limits(max_tokens=8, max_n=1), Stats()
    server.batcher = Batcher(engine.answer, max_batch_size=4, wait_s=0)
    return server


def post(body: dict) -> Request:
    sent = json.dumps(body).encode()

    async def receive():
        return {"type": "http.request", "body": sent, "more_body": False}

    return Request({"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}, receive)


def test_a_request_the_endpoint_fails_on_gets_openais_error_body_and_is_counted(failing):
    response = asyncio.run(failing.completions(post({"model": "tiny", "prompt": "a tuple"})))
    assert response.status_code == 500 and response.headers[VERSION_HEADER] == "tiny/1"
    error = json.loads(response.body)["error"]
    assert error["type"] == "server_error" and "out of memory" not in error["message"]  # logged, not sent
    assert failing.stats.counts["server_error"] == 1


def test_a_stream_the_endpoint_fails_in_ends_with_an_error_event(failing):
    async def events() -> list[str]:
        response = await failing.completions(post({"model": "tiny", "prompt": "a tuple", "stream": True}))
        return [chunk async for chunk in response.body_iterator]

    before = failing.stats.counts["server_error"]
    sent = "".join(asyncio.run(events()))
    assert '"type": "server_error"' in sent.replace('":"', '": "') and "[DONE]" not in sent
    assert failing.stats.counts["server_error"] == before + 1

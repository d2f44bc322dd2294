"""The endpoint's handlers on a real tiny GPT, without a replica. A request it fails on (a forward
that raises, as running out of memory does) gets OpenAI's error body with status 500 and the
version header, counted as a server error, and a stream ends with an error event: Starlette's
plain-text page named no version, and the replica's statistics counted nothing, so a replica
failing every request logged "0 server errors". A stream asked for its usage ends with it."""

import asyncio
import contextlib
import json
from dataclasses import asdict

import pytest
from starlette.requests import Request

from lm_pipeline.registry.aliases import RegistryError
from lm_pipeline.serving import engine, protocol, source
from lm_pipeline.serving.app import VERSION_HEADER, LanguageModelServer, Settings
from lm_pipeline.serving.batcher import Batcher
from lm_pipeline.serving.stats import Stats


@pytest.fixture(scope="module")
def server():
    from lm_pipeline.config import TokenizerConfig
    from lm_pipeline.data.tokenizer import train_tokenizer
    from lm_pipeline.model.transformer import GPT, GPTConfig

    tokenizer = train_tokenizer(["a tuple is an immutable sequence"], TokenizerConfig(kind="char"))
    gpt = GPT(GPTConfig(vocab_size=tokenizer.get_vocab_size(), block_size=16, n_layer=1, n_head=1, n_embd=8))
    server = object.__new__(LanguageModelServer.func_or_class)  # its handlers, without a replica
    server.settings = Settings(source="models:/tiny@champion", tracking_uri="", registered_name="tiny")
    server.served, server.token = engine.Served(gpt.eval(), tokenizer, "tiny/1"), None
    server.limits, server.stats = protocol.Limits(max_tokens=8, max_n=1), Stats()
    return server


@contextlib.contextmanager
def failing_forward(server):
    def out_of_memory(module, args):
        raise RuntimeError("out of memory")

    hook = server.served.model.register_forward_pre_hook(out_of_memory)
    try:
        yield
    finally:
        hook.remove()


def post(body: dict | bytes, authorization: str | None = None) -> Request:
    sent = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = [(b"authorization", authorization.encode())] if authorization else []

    async def receive():
        return {"type": "http.request", "body": sent, "more_body": False}

    return Request({"type": "http", "method": "POST", "path": "/v1/completions", "headers": headers}, receive)


def respond(server, body: dict | bytes, handler: str = "completions", authorization: str | None = None):
    async def answer():
        server.batcher = Batcher(engine.answer, max_batch_size=4, wait_s=0)  # on this event loop
        return await getattr(server, handler)(post(body, authorization))

    return asyncio.run(answer())


def events(server, body: dict) -> list[str]:
    async def stream() -> list[str]:
        response = await server.completions(post(body | {"stream": True}))
        return [chunk async for chunk in response.body_iterator]

    return asyncio.run(stream())


def test_a_request_the_endpoint_fails_on_gets_openais_error_body_and_is_counted(server):
    before = server.stats.counts["server_error"]
    with failing_forward(server):
        response = respond(server, {"model": "tiny", "prompt": "a tuple"})
    assert response.status_code == 500 and response.headers[VERSION_HEADER] == "tiny/1"
    error = json.loads(response.body)["error"]
    assert error["type"] == "server_error" and "out of memory" not in error["message"]  # logged, not sent
    assert server.stats.counts["server_error"] == before + 1


def test_a_stream_the_endpoint_fails_in_ends_with_an_error_event(server):
    before = server.stats.counts["server_error"]
    with failing_forward(server):
        sent = "".join(events(server, {"model": "tiny", "prompt": "a tuple"}))
    assert '"type": "server_error"' in sent and "[DONE]" not in sent
    assert server.stats.counts["server_error"] == before + 1


def test_a_stream_asked_for_its_usage_ends_with_the_answers_usage(server):
    body = {"model": "tiny", "prompt": "a tuple", "max_tokens": 6, "temperature": 0}
    answered = respond(server, body)
    sent = events(server, body | {"stream_options": {"include_usage": True}})
    *pieces, last, done = sent
    assert done == protocol.SSE_DONE and all("usage" not in p for p in pieces)
    usage_chunk = json.loads(last.removeprefix("data: "))
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == json.loads(answered.body)["usage"]
    assert "usage" not in "".join(events(server, body))  # only when asked


def test_a_model_is_retrieved_by_its_id_or_the_registered_name(server):
    """`client.models.retrieve(...)` calls GET /v1/models/{id}: it answered FastAPI's
    {"detail": "Not Found"}, which OpenAI's clients cannot read."""
    def get(model_id: str):
        scope = {"type": "http", "method": "GET", "path": f"/v1/models/{model_id}", "headers": []}
        return asyncio.run(server.model(Request(scope), model_id))

    for name in ("tiny/1", "tiny"):
        found = get(name)
        assert found.status_code == 200 and json.loads(found.body)["id"] == "tiny/1"
    missing = get("gpt-4")
    assert missing.status_code == 404 and json.loads(missing.body)["error"]["param"] == "model"


@pytest.mark.parametrize("body", [b'{"model": "tiny", "prompt": "a", "max_tokens": ' + b"9" * 5000 + b"}",
                                  b"[" * 100_000 + b"]" * 100_000])
def test_a_body_python_cannot_hold_gets_400_not_500(server, body):
    """A number past Python's digit limit raises ValueError, nesting past its recursion limit
    RecursionError: the client's mistake, not the endpoint's failure."""
    before = server.stats.counts["server_error"]
    response = respond(server, body)
    assert response.status_code == 400, response.body
    assert json.loads(response.body)["error"]["type"] == "invalid_request_error"
    assert server.stats.counts["server_error"] == before


def test_a_chat_the_template_renders_as_nothing_gets_400_naming_messages(server, monkeypatch):
    """A template that prints user turns only, given a system message alone: an empty prompt,
    which failed the forward (and every request batched with it) with a 500."""
    only_users = "{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}{% endif %}{% endfor %}"
    served = server.served
    monkeypatch.setattr(server, "served", engine.Served(served.model, served.tokenizer, "tiny/1", only_users))
    response = respond(server, {"model": "tiny", "messages": [{"role": "system", "content": "be brief"}]},
                       handler="chat_completions")
    assert response.status_code == 400, response.body
    error = json.loads(response.body)["error"]
    assert error["param"] == "messages" and "empty" in error["message"]


def follow_for(server, seconds: float, until=lambda: False) -> None:
    """The replica's follow loop, run until `until()` holds or `seconds` pass."""
    async def watch():
        task = asyncio.create_task(server.follow())
        deadline = asyncio.get_running_loop().time() + seconds
        while not until() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(watch())


def test_a_new_champion_that_fails_to_download_is_tried_again_and_a_refused_one_is_not(server, monkeypatch):
    """The registry (a stand-in here: the swap itself runs in tests/integration/test_serving.py)
    names version 2. A download that fails for a passing reason is tried at the next interval:
    it was taken as a refusal, and the replica kept version 1 until the alias moved again, while
    the others served 2. A version refused for what it is (files not the ones registered) is not
    downloaded again and again."""
    follower = object.__new__(LanguageModelServer.func_or_class)
    follower.settings = Settings(source="models:/tiny@champion", tracking_uri="", registered_name="tiny",
                                 follow_interval_s=0.01)
    old = follower.served = server.served
    new = engine.Served(old.model, old.tokenizer, "tiny/2")
    loads = []

    def flaky(name, device):
        loads.append(name)
        if len(loads) == 1:
            raise ConnectionError("the artifact store did not answer")
        return new

    monkeypatch.setattr(source, "version_id", lambda name: "tiny/2")
    monkeypatch.setattr(source, "load", flaky)
    follow_for(follower, 5, until=lambda: follower.served is new)
    assert follower.served is new and len(loads) == 2

    def refuse(name, device):
        loads.append(name)
        raise RegistryError("models:/tiny/2: its weights hash is not the one registered; refusing it")

    follower.served, loads[:] = old, []
    monkeypatch.setattr(source, "load", refuse)
    follow_for(follower, 0.3)
    assert follower.served is old and len(loads) == 1

    def unreachable(name, device):
        loads.append(name)
        raise ConnectionError("the artifact store did not answer")

    loads[:] = []  # a store down for long: tried again ever less often, not a download each interval
    monkeypatch.setattr(source, "load", unreachable)
    follow_for(follower, 0.64)
    assert follower.served is old and 2 <= len(loads) <= 8  # 0.01 s doubling; each interval: 64


@pytest.mark.security
@pytest.mark.parametrize("endpoint", ["http://0.0.0.0:8000/v1", "http://10.0.0.7:8000/v1", "http://[::]:8000/v1",
                                      ""])  # a Serve config (KubeRay's) that names none
def test_a_replica_without_the_token_refuses_to_start_where_clients_beyond_its_machine_call(endpoint,
                                                                                            monkeypatch):
    """The driver checks its own environment (launch.check_binding); a replica on a node started
    without the token answered every request unauthenticated while the others asked for it."""
    monkeypatch.setenv(protocol.TOKEN_ENV, "\n")  # a token file's newline alone is no token
    monkeypatch.setattr(source, "load", lambda name, device: pytest.fail("loaded before the check"))
    replica = object.__new__(LanguageModelServer.func_or_class)
    settings = Settings(source="models:/tiny@champion", tracking_uri="", registered_name="tiny",
                        endpoint=endpoint)
    with pytest.raises(RuntimeError, match=f"{protocol.TOKEN_ENV} is not set on this node"):
        asyncio.run(replica.__init__(asdict(settings)))


def test_only_a_loopback_endpoint_may_answer_without_a_token():
    from lm_pipeline.serving.launch import endpoint_of

    assert endpoint_of("::1", 8000) == "http://[::1]:8000/v1"  # a URL clients can call, and parse
    loopback = ("127.0.0.1", "localhost", "::1")
    assert not any(protocol.needs_token(endpoint_of(host, 8000)) for host in loopback)
    assert all(protocol.needs_token(endpoint_of(host, 8000)) for host in ("0.0.0.0", "::", "10.0.0.7"))


@pytest.mark.security
def test_the_token_is_taken_under_any_spelling_of_the_bearer_scheme_and_nothing_else(server, monkeypatch):
    """HTTP's authentication schemes are case-insensitive (RFC 9110): `bearer <token>` was refused."""
    monkeypatch.setattr(server, "token", "s3cret")
    body = {"model": "tiny", "prompt": "a tuple", "max_tokens": 2, "temperature": 0}
    for given in ("Bearer s3cret", "bearer s3cret", "BEARER  s3cret"):
        assert respond(server, body, authorization=given).status_code == 200, given
    for given in (None, "Bearer s3cre", "Basic s3cret", "s3cret", "Bearer s3cret extra"):
        assert respond(server, body, authorization=given).status_code == 401, given

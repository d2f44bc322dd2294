"""The OpenAI-compatible endpoint: a Ray Serve deployment with a FastAPI ingress.

GET /v1/models, POST /v1/completions and POST /v1/chat/completions, as OpenAI's clients call
them; concurrent requests share forward passes (serving/batcher.py: what waited while the model
was busy goes into its next batch; engine.answer keeps each answer what it would be alone). Each
replica follows an alias: every follow_interval_s it resolves it, and when it has moved, loads and
checks the new version beside the old one and swaps a single reference. A request reads that
reference once, so it is answered by one version from its first token to its last, and names that
version in its `model` field and its X-Model-Version header. A version that fails its check is
refused, logged, and the replica keeps serving what it served.
"""

import asyncio
import hmac
import json
import logging
import os
import time
from dataclasses import asdict, dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve

from lm_pipeline import tracking
from lm_pipeline.cluster import worker_env
from lm_pipeline.serving import chat, engine, protocol, source
from lm_pipeline.serving.batcher import Batcher
from lm_pipeline.serving.stats import Stats

log = logging.getLogger("lm_pipeline.serving")

MAX_BACKOFF_S = 600.0
TOKEN_ENV, VERSION_HEADER = protocol.TOKEN_ENV, protocol.VERSION_HEADER  # each replica reads its own env


@dataclass(frozen=True)
class Settings:
    """What a replica needs, all of it safe to show (the Serve config is readable on the cluster)."""

    source: str
    tracking_uri: str
    registered_name: str  # accepted as `model` for whatever version of it is served
    endpoint: str = ""  # the address clients call, recorded in the registry (no token)
    device: str = "auto"
    max_tokens: int = 256
    max_n: int = 8
    max_batch_size: int = 8
    batch_wait_s: float = 0.01
    follow_interval_s: float = 5.0
    log_interval_s: float = 30.0


async def json_body(request: Request) -> object:
    try:
        return json.loads(await request.body())
    except (ValueError, RecursionError) as err:  # bad JSON or UTF-8, a number past Python's digits
        raise protocol.RequestError(f"the request body is not valid JSON: {err}") from None


def server_error() -> protocol.RequestError:
    return protocol.RequestError("the endpoint failed to answer this request (its replica logged why)",
                                 status=500, kind="server_error")


@dataclass
class Backoff:
    """When a version that failed to load for a passing reason is tried again: one interval after
    its first failure, twice that after its second, and so on up to MAX_BACKOFF_S (a store down
    for an hour is not asked for the whole model every few seconds); another version at once."""

    interval_s: float
    version: str | None = None
    failures: int = 0
    retry_at: float = 0.0

    def due(self, version: str | None, now: float) -> bool:
        return version != self.version or now >= self.retry_at

    def failed(self, version: str | None, now: float) -> float:
        self.failures = self.failures + 1 if version == self.version else 1
        self.version = version
        pause = min(self.interval_s * 2 ** (self.failures - 1), MAX_BACKOFF_S)
        self.retry_at = now + pause
        return pause


def model_object(served) -> dict:
    return {"id": served.model_id, "object": "model", "created": 0, "owned_by": "lm-pipeline"}


# Defined before the deployment: @serve.ingress freezes the routes (and what they refer to) as it runs.
api = FastAPI(title="lm-pipeline", docs_url=None, redoc_url=None, openapi_url=None)


@serve.deployment(name="LanguageModel", health_check_period_s=2, graceful_shutdown_timeout_s=10)
@serve.ingress(api)
class LanguageModelServer:
    async def __init__(self, settings: dict):
        import mlflow

        self.settings = Settings(**settings)
        self.token = os.environ.get(TOKEN_ENV, "").strip() or None  # a secret file's newline is not the token
        if self.token is None and protocol.needs_token(self.settings.endpoint):
            called = self.settings.endpoint or "this endpoint (no endpoint given)"
            raise RuntimeError(f"{TOKEN_ENV} is not set on this node, and clients beyond it may call "
                               f"{called}: refusing to answer them unauthenticated (set it on every node "
                               "of the cluster, or give a loopback endpoint)")
        mlflow.set_tracking_uri(tracking.with_own_credentials(self.settings.tracking_uri))
        self.served = await asyncio.to_thread(source.load, self.settings.source, self.settings.device)
        self.limits = protocol.Limits(self.settings.max_tokens, self.settings.max_n)
        self.stats = Stats()
        self.batcher = Batcher(engine.answer, self.settings.max_batch_size, self.settings.batch_wait_s,
                               on_batch=self.stats.batch)
        self.tasks = [asyncio.create_task(self.log_stats())]
        if source.follows_alias(self.settings.source):
            self.tasks.append(asyncio.create_task(self.follow()))
        log.info("serving %s (%s)", self.served.model_id, self.settings.source)
        await self.record()

    async def record(self) -> None:
        """Tag the registered model with this endpoint and the version it serves; a registry that
        cannot be written to is logged, not fatal (the answers do not depend on it)."""
        if not (source.is_registered(self.settings.source) and self.settings.endpoint):
            return
        try:
            await asyncio.to_thread(source.record_served, self.served.model_id, self.settings.endpoint)
        except Exception as err:
            log.warning("could not record %s as served at %s: %s", self.served.model_id,
                        self.settings.endpoint, err)

    async def follow(self) -> None:
        """Swap to the version the alias points at whenever it moves; keep serving on any failure.
        A version refused for what it is (ValueError: its files are not the ones registered, or
        not a model) is not tried again until the alias moves on; one that failed to load for
        another reason (the registry or the store unreachable, no memory for it yet) is tried
        again after a pause that doubles with each failure (Backoff)."""
        refused, backoff = None, Backoff(self.settings.follow_interval_s)
        while True:
            await asyncio.sleep(self.settings.follow_interval_s)
            current = None
            try:
                current = await asyncio.to_thread(source.version_id, self.settings.source)
                if current == self.served.model_id:
                    refused = None  # moved back: a version refused before gets a new check if it returns
                if current in (self.served.model_id, refused) or not backoff.due(current, time.monotonic()):
                    continue
                log.info("%s moved to %s: loading it beside %s", self.settings.source, current,
                         self.served.model_id)
                self.served = await asyncio.to_thread(source.load, self.settings.source, self.settings.device)
                log.info("serving %s", self.served.model_id)
                await self.record()
            except ValueError as err:  # RegistryError among them
                refused = current
                log.error("keeping %s: %s", self.served.model_id, err)
            except Exception as err:  # an unreachable registry or store must not stop the endpoint
                pause = backoff.failed(current, time.monotonic())
                log.error("keeping %s for now (%s is tried again in %.0f s): %s", self.served.model_id,
                          current, pause, err)

    async def log_stats(self) -> None:
        while True:
            await asyncio.sleep(self.settings.log_interval_s)
            self.stats.log_line(self.served.model_id)

    @api.get("/health")
    async def health(self) -> dict:
        return {"model": self.served.model_id}

    @api.get("/stats")
    async def statistics(self, request: Request) -> Response:
        try:
            self.authorize(request)
        except protocol.RequestError as err:
            return JSONResponse(err.body(), status_code=err.status)
        return JSONResponse(self.stats.snapshot(self.served.model_id))

    @api.get("/v1/models")
    async def models(self, request: Request) -> Response:
        served = self.served
        try:
            self.authorize(request)
        except protocol.RequestError as err:
            return self.refuse(served, err, time.monotonic())
        body = {"object": "list", "data": [model_object(served)]}
        return JSONResponse(body, headers={VERSION_HEADER: served.model_id})

    @api.get("/v1/models/{model_id:path}")  # ids hold a slash: lm-pipeline/3
    async def model(self, request: Request, model_id: str) -> Response:
        served, started = self.served, time.monotonic()
        try:
            self.authorize(request)
            self.check_model(served, model_id)
        except protocol.RequestError as err:
            return self.refuse(served, err, started)
        return JSONResponse(model_object(served), headers={VERSION_HEADER: served.model_id})

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self.respond(request, self.completion_request, protocol.completion_body,
                                  "text_completion")

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self.respond(request, self.chat_request, protocol.chat_body, "chat.completion.chunk")

    def completion_request(self, served, body: object) -> protocol.CompletionRequest:
        parsed = protocol.parse_completion(body, self.limits)
        self.check_model(served, parsed.model)
        return parsed

    def chat_request(self, served, body: object) -> protocol.CompletionRequest:
        """The chat as the completion of the prompt the model's own template renders."""
        parsed = protocol.parse_chat(body, self.limits)
        self.check_model(served, parsed.model)
        prompt = chat.render(served.chat_template, parsed.messages, served.model_id,
                             served.special_tokens or {})
        ids = tuple(served.tokenizer.encode(prompt, add_special_tokens=False).ids)
        if not ids:
            raise protocol.RequestError(f"the chat template of {served.model_id} renders these messages "
                                        "as an empty prompt: nothing to continue", "messages")
        return protocol.CompletionRequest(parsed.model, (ids,), parsed.sampling, parsed.n,
                                          stream=parsed.stream, include_usage=parsed.include_usage)

    async def respond(self, request: Request, parse, body_of, chunk_kind: str) -> Response:
        """One request, answered by the version served when it arrived, from its first token to its last."""
        served, started = self.served, time.monotonic()
        try:
            self.authorize(request)
            parsed = parse(served, await json_body(request))
            if parsed.stream:
                return self.streamed(served, parsed, chunk_kind, started)
            reply = await self.batcher.submit((served, parsed))
            if isinstance(reply, protocol.RequestError):
                raise reply
        except protocol.RequestError as err:
            return self.refuse(served, err, started)
        except Exception:  # ours, not the request's: the reason stays in the replica's log
            log.exception("failed to answer a request with %s", served.model_id)
            return self.refuse(served, server_error(), started)
        self.stats.request(200, time.monotonic() - started, reply.usage()["completion_tokens"])
        return JSONResponse(body_of(reply), headers={VERSION_HEADER: served.model_id})

    def streamed(self, served, request: protocol.CompletionRequest, obj: str, started: float) -> Response:
        """Server-sent events, one per piece of text, then the finish reason, the usage if asked
        (stream_options.include_usage), and [DONE]."""
        engine.plan(served, request)  # a request that cannot be answered is refused before the stream starts

        async def events():
            chat = obj == "chat.completion.chunk"
            stream_id = protocol.new_id("chatcmpl" if chat else "cmpl")
            pieces, usage = engine.stream(served, request), {"completion_tokens": 0}
            if chat:
                opening = protocol.chat_chunk(stream_id, served.model_id, {"role": "assistant"}, None)
                yield protocol.sse(opening)
            try:
                while (item := await asyncio.to_thread(next, pieces, None)) is not None:
                    text, finish, last_usage = item
                    usage = last_usage or usage
                    if chat:
                        delta = {"content": text} if text else {}
                        chunk = protocol.chat_chunk(stream_id, served.model_id, delta, finish)
                    else:
                        chunk = protocol.completion_chunk(stream_id, served.model_id, text, finish)
                    yield protocol.sse(chunk)
            except Exception:  # the status is sent: an error event ends the stream, without [DONE]
                log.exception("failed in a stream of %s", served.model_id)
                self.stats.request(500, time.monotonic() - started)
                yield protocol.sse(server_error().body())
                return
            self.stats.request(200, time.monotonic() - started, usage["completion_tokens"])
            if request.include_usage:
                yield protocol.sse(protocol.usage_chunk(stream_id, served.model_id, obj, usage))
            yield protocol.SSE_DONE

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={VERSION_HEADER: served.model_id})

    def authorize(self, request: Request) -> None:
        if self.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        bearer = scheme.lower() == "bearer"  # schemes are case-insensitive (RFC 9110)
        if not (hmac.compare_digest(given.strip().encode(), self.token.encode()) and bearer):
            raise protocol.RequestError("a bearer token is required (Authorization: Bearer <token>)",
                                        "Authorization", status=401, kind="authentication_error")

    def check_model(self, served, model: str) -> None:
        if model not in (served.model_id, self.settings.registered_name):
            raise protocol.RequestError(f"model {model!r} is not served here; this endpoint serves "
                                        f"{served.model_id!r} (GET /v1/models)", "model", status=404)

    def refuse(self, served, err: protocol.RequestError, started: float) -> Response:
        self.stats.request(err.status, time.monotonic() - started)
        return JSONResponse(err.body(), status_code=err.status, headers={VERSION_HEADER: served.model_id})


def application(settings: Settings, replicas: int, cpus_per_replica: float, max_queued_requests: int,
                env_vars: dict[str, str]):
    """The deployment bound to its settings: what `serve.run` takes."""
    return LanguageModelServer.options(
        num_replicas=replicas, max_ongoing_requests=2 * settings.max_batch_size,
        max_queued_requests=max_queued_requests,
        ray_actor_options={"num_cpus": cpus_per_replica, "runtime_env": {"env_vars": env_vars}},
    ).bind(asdict(settings))


def from_settings(args: dict):
    """The application from a Serve config's `args` (KubeRay's RayService, `serve deploy`): the
    fields of Settings, and replicas, cpus_per_replica and max_queued_requests."""
    args = dict(args)
    shape = {"replicas": 1, "cpus_per_replica": 1.0, "max_queued_requests": 64}
    shape |= {key: args.pop(key) for key in list(shape) if key in args}
    return application(Settings(**args), shape["replicas"], shape["cpus_per_replica"],
                       shape["max_queued_requests"], worker_env())

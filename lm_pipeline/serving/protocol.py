"""The OpenAI API's completions and chat completions as plain data: requests parsed and checked
(every error names its field, as OpenAI's own do), responses and stream chunks built. No model
here: engine.py computes, app.py serves.

Fields OpenAI defines that change nothing here at their defaults (`user`, `presence_penalty: 0`,
...) are accepted; one that would change the answer and is not implemented is refused by name.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

# Accepted at these values only: anything else would silently not do what the client asked.
TOKEN_ENV = "LMP_SERVE_TOKEN"  # the bearer token, read from the environment of each process that needs it
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_PROMPTS = 2048  # in one completion request, as OpenAI bounds it
VERSION_HEADER = "X-Model-Version"  # the version that answered, on every response

UNSUPPORTED = {"best_of": (None, 1), "logit_bias": (None, {}), "presence_penalty": (None, 0, 0.0),
               "frequency_penalty": (None, 0, 0.0), "suffix": (None, ""), "tools": (None, []),
               "response_format": (None, {"type": "text"})}


class RequestError(Exception):
    """A request the endpoint refuses: HTTP `status`, OpenAI's error body naming `param`."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


@dataclass(frozen=True)
class Limits:
    max_tokens: int  # per choice
    max_n: int


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompts: tuple[str | tuple[int, ...], ...]  # text, or token ids as the client tokenized them
    sampling: Sampling
    n: int = 1
    logprobs: int | None = None  # how many alternatives per position (0: only the chosen token's)
    echo: bool = False
    stream: bool = False
    include_usage: bool = False  # a stream's last chunk: its usage (stream_options.include_usage)


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[dict, ...]
    sampling: Sampling
    n: int = 1
    stream: bool = False
    include_usage: bool = False



def needs_token(endpoint: str) -> bool:
    """Whether clients beyond this machine can call `endpoint` (an http URL): all but loopback
    (and an endpoint not given, as far as anyone can tell)."""
    return urlsplit(endpoint).hostname not in LOOPBACK

def parse_completion(body: object, limits: Limits) -> CompletionRequest:
    body = as_object(body)
    request = CompletionRequest(model=model_field(body), prompts=prompts_field(body.get("prompt")),
                                sampling=sampling_fields(body, limits), n=n_field(body, limits),
                                logprobs=logprobs_field(body), echo=bool_field(body, "echo"),
                                stream=bool_field(body, "stream"), include_usage=include_usage_field(body))
    if request.stream and (request.echo or request.logprobs is not None):
        raise RequestError("stream cannot be combined with echo or logprobs here", "stream")
    check_one_stream(request.stream, len(request.prompts) * request.n)
    return request


def check_one_stream(stream: bool, choices: int) -> None:
    if stream and choices > 1:
        raise RequestError("a stream carries one choice: one prompt and n = 1", "n")


def parse_chat(body: object, limits: Limits) -> ChatRequest:
    body = as_object(body)
    if body.get("logprobs"):
        raise RequestError("logprobs are not supported on chat completions (use /v1/completions)", "logprobs")
    request = ChatRequest(model=model_field(body), messages=messages_field(body.get("messages")),
                          sampling=sampling_fields(body, limits, "max_completion_tokens", limits.max_tokens),
                          n=n_field(body, limits), stream=bool_field(body, "stream"),
                          include_usage=include_usage_field(body))
    check_one_stream(request.stream, request.n)
    return request


def as_object(body: object) -> dict:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    for key, allowed in UNSUPPORTED.items():
        if body.get(key) not in allowed:
            raise RequestError(f"{key} is not supported by this endpoint", key)
    return body


def model_field(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("model is required: a name GET /v1/models lists", "model")
    return model


def prompts_field(prompt: object) -> tuple[str | tuple[int, ...], ...]:
    """A string, a list of strings, a list of token ids, or a list of lists of token ids; at most
    MAX_PROMPTS prompts, as OpenAI allows."""
    several = isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list))
    if several and len(prompt) > MAX_PROMPTS:
        raise RequestError(f"prompt holds {len(prompt)} prompts; at most {MAX_PROMPTS} in one request",
                           "prompt")
    if isinstance(prompt, str):
        return (prompt,)
    if isinstance(prompt, list) and prompt and all(is_token(t) for t in prompt):
        return (tuple(prompt),)
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return tuple(prompt)
    if (isinstance(prompt, list) and prompt and
            all(isinstance(p, list) and p and all(is_token(t) for t in p) for p in prompt)):
        return tuple(tuple(p) for p in prompt)
    raise RequestError("prompt must be a string, a list of strings, a list of token ids or a list of "
                       "lists of token ids (none empty)", "prompt")


def is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def messages_field(messages: object) -> tuple[dict, ...]:
    """Each message as {role, content: text} for the template: OpenAI's developer role is its
    system role's new name, and content given as text parts is their text."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list of {role, content}", "messages")
    turns = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        content = text_of(message.get("content")) if role else None
        if role not in ("system", "developer", "user", "assistant") or content is None:
            raise RequestError(f"messages[{i}] must be {{role: system|developer|user|assistant, content: "
                               "a string or a list of text parts only}", f"messages[{i}]")
        turns.append({"role": "system" if role == "developer" else role, "content": content})
    return tuple(turns)


def text_of(content: object) -> str | None:
    """A message's text: a string, or a list of {"type": "text", "text": ...} parts joined by
    newlines (as vLLM joins them); else None."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) and content else [None]
    if all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in parts):
        return "\n".join(p["text"] for p in parts)
    return None


def sampling_fields(body: dict, limits: Limits, tokens_key: str = "max_tokens",
                    default_tokens: int = 16) -> Sampling:
    """`default_tokens`: OpenAI's when the request sets none (completions 16, chat as many as allowed),
    within the endpoint's bound."""
    key = tokens_key if body.get(tokens_key) is not None else "max_tokens"  # null is unset, as in OpenAI
    max_tokens = number_field(body, key, min(default_tokens, limits.max_tokens), int, 0, limits.max_tokens)
    return Sampling(max_tokens=max_tokens,
                    temperature=float(number_field(body, "temperature", 1.0, float, 0.0, 2.0)),
                    top_p=float(number_field(body, "top_p", 1.0, float, 0.0, 1.0, low_open=True)),
                    stop=stop_field(body.get("stop")), seed=seed_field(body.get("seed")))


def number_field(body: dict, key: str, default, kind: type, low, high, low_open: bool = False):
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and
                                                                          not isinstance(value, int)):
        raise RequestError(f"{key} must be {'an integer' if kind is int else 'a number'}", key)
    if isinstance(value, float) and not math.isfinite(value):  # NaN compares false with any bound
        raise RequestError(f"{key} is {value}; it must be a finite number", key)
    if value < low or value > high or (low_open and value == low):
        bound = f"in ({low}, {high}]" if low_open else f"in [{low}, {high}]"
        raise RequestError(f"{key} is {value}; it must be {bound}", key)
    return value


def n_field(body: dict, limits: Limits) -> int:
    return number_field(body, "n", 1, int, 1, limits.max_n)


def logprobs_field(body: dict) -> int | None:
    value = body.get("logprobs")
    return None if value is None else number_field(body, "logprobs", None, int, 0, 5)


def bool_field(body: dict, key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise RequestError(f"{key} must be true or false", key)
    return value


def include_usage_field(body: dict) -> bool:
    """stream_options, OpenAI's: {"include_usage": true} asks a stream to end with its usage."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not bool_field(body, "stream"):
        raise RequestError("stream_options is only allowed with stream: true", "stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage"} or not isinstance(
            options.get("include_usage", False), bool):
        raise RequestError('stream_options must be {"include_usage": true or false}', "stream_options")
    return options.get("include_usage", False)


def stop_field(stop: object) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise RequestError("stop must be a non-empty string or a list of at most 4 of them", "stop")
    return tuple(stop)


def seed_field(seed: object) -> int | None:
    if seed is None:
        return None
    if not is_token(seed) or seed >= 2**63:  # a 64-bit integer, as OpenAI's and torch's seeds
        raise RequestError("seed must be an integer in [0, 2**63)", "seed")
    return seed


@dataclass
class Choice:
    """One generated answer: its text, why it ended, and its token log-probabilities if asked."""

    text: str
    finish_reason: str  # "stop" (end of text or a stop string) or "length"
    completion_tokens: int
    logprobs: dict | None = None


@dataclass
class Reply:
    """What one request gets back: a choice per prompt and per n, and the tokens they cost."""

    model: str  # the served model's id, which names its version
    choices: list[Choice] = field(default_factory=list)
    prompt_tokens: int = 0

    def usage(self) -> dict:
        completion = sum(c.completion_tokens for c in self.choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def completion_body(reply: Reply) -> dict:
    return {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()),
            "model": reply.model, "usage": reply.usage(),
            "choices": [{"index": i, "text": c.text, "logprobs": c.logprobs, "finish_reason": c.finish_reason}
                        for i, c in enumerate(reply.choices)]}


def chat_body(reply: Reply) -> dict:
    return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()),
            "model": reply.model, "usage": reply.usage(),
            "choices": [{"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                         "finish_reason": c.finish_reason} for i, c in enumerate(reply.choices)]}


def completion_chunk(stream_id: str, model: str, text: str, finish_reason: str | None) -> dict:
    return {"id": stream_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}


def chat_chunk(stream_id: str, model: str, delta: dict, finish_reason: str | None) -> dict:
    return {"id": stream_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}


def usage_chunk(stream_id: str, model: str, obj: str, usage: dict) -> dict:
    """The last chunk when the client asked for stream_options.include_usage."""
    return {"id": stream_id, "object": obj, "created": int(time.time()), "model": model, "choices": [],
            "usage": usage}


def sse(event: dict) -> str:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"

"""A loaded model version answering completion requests, batched, exactly as it would alone.

Batching: greedy choices with the same max_tokens and stop strings share each forward pass,
left-padded with an attention mask, so each row is computed as it would be alone (both backends);
a choice that would run past the context (where generation refills its window, which depends on
the row's own length) shares only with prompts of its own length, unpadded. A sampled choice runs
alone with its own seeded generator, so its answer does not depend on who else was waiting.

A text prompt opens a document, as in training (<|endoftext|> first); a prompt of token ids is
scored and continued exactly as given.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from lm_pipeline.data.tokenizer import eot_id, reading_prompts
from lm_pipeline.model.generate import cut_at_stop, generate_tokens, left_padded
from lm_pipeline.model.transformer import device_of
from lm_pipeline.serving.logprobs import choice_logprobs
from lm_pipeline.serving.protocol import Choice, CompletionRequest, Reply, RequestError, Sampling


@dataclass(frozen=True)
class Served:
    """One model version, loaded and checked: what a request is answered by from start to end."""

    model: torch.nn.Module
    tokenizer: object  # tokenizers.Tokenizer
    model_id: str  # what /v1/models lists and every response names: "<name>/<version>" or a folder's name
    chat_template: str | None = None
    special_tokens: dict | None = None  # bos_token, eos_token: what a chat template refers to

    def __post_init__(self):
        reading_prompts(self.tokenizer)  # the tokenizer is this version's own, for prompts only

    @property
    def context(self) -> int:
        return self.model.block_size

    @property
    def eot(self) -> int:
        return eot_id(self.tokenizer)

    @property
    def ends_at(self) -> set[int]:
        """The tokens that end an answer: end-of-text, and the eos_token a chat template ends turns
        with where that is another token (an instruct model's <|im_end|>), as Hugging Face's
        generate stops at it."""
        eos = (self.special_tokens or {}).get("eos_token")
        eos_id = self.tokenizer.token_to_id(eos) if eos else None
        return {self.eot} if eos_id is None else {self.eot, eos_id}


@dataclass
class Unit:
    """One choice to generate: the tokens it continues and how."""

    ids: list[int]
    sampling: Sampling
    generator: torch.Generator | None
    echo_from: int  # where the echoed prompt starts in ids (1 after our <|endoftext|>, else 0)
    generated: list[int] | None = None


def prompt_ids(served: Served, prompt: str | tuple[int, ...]) -> tuple[list[int], int]:
    """The tokens a prompt is continued from, and where its own tokens start among them."""
    if isinstance(prompt, str):
        return [served.eot, *served.tokenizer.encode(prompt, add_special_tokens=False).ids], 1
    vocab = served.tokenizer.get_vocab_size()
    if max(prompt) >= vocab:
        raise RequestError(f"prompt holds token id {max(prompt)}, outside the vocabulary ({vocab} tokens)",
                           "prompt")
    return list(prompt), 0


def plan(served: Served, request: CompletionRequest) -> list[Unit]:
    """The request's choices in OpenAI's order (each prompt's n in turn), checked against the context."""
    generator = None
    if not request.sampling.greedy:
        seed = request.sampling.seed if request.sampling.seed is not None else torch.seed()
        generator = torch.Generator().manual_seed(seed)
    units = []
    for prompt in request.prompts:
        ids, start = prompt_ids(served, prompt)
        scored = request.echo or request.logprobs is not None
        room = served.context - (request.sampling.max_tokens if scored else 1)
        if len(ids) > room:
            param = "max_tokens" if len(ids) <= served.context else "prompt"
            raise RequestError(f"the prompt has {len(ids)} tokens; with max_tokens "
                               f"{request.sampling.max_tokens} and logprobs it must fit the model's context "
                               f"of {served.context}" if scored else f"the prompt has {len(ids)} tokens, "
                               f"more than the model's context of {served.context} allows", param)
        units += [Unit(ids, request.sampling, generator, start) for _ in range(request.n)]
    return units


def answer(jobs: list[tuple[Served, CompletionRequest]]) -> list[Reply | RequestError]:
    """Replies to several requests at once (one batch of the endpoint), in their order; a request
    that cannot be answered gets its error and the others are answered all the same."""
    planned: list[list[Unit] | RequestError] = []
    for served, request in jobs:
        try:
            planned.append(plan(served, request))
        except RequestError as err:
            planned.append(err)
    greedy: dict[tuple, list[tuple[Served, Unit]]] = {}
    for (served, _), units in zip(jobs, planned, strict=True):
        for unit in units if isinstance(units, list) else ():
            if unit.sampling.greedy:
                fits = len(unit.ids) + unit.sampling.max_tokens <= served.context
                key = (id(served), unit.sampling.max_tokens, unit.sampling.stop, fits or len(unit.ids))
                greedy.setdefault(key, []).append((served, unit))
            else:
                run_units(served, [unit])
    for group in greedy.values():
        run_units(group[0][0], [unit for _, unit in group])
    return [units if isinstance(units, RequestError) else reply(served, request, units)
            for (served, request), units in zip(jobs, planned, strict=True)]


def run_units(served: Served, units: list[Unit]) -> None:
    """Generate for units of one sampling in one batch, left-padded when their lengths differ,
    until each has finished."""
    first = units[0]
    batch, mask = left_padded([u.ids for u in units], served.eot, device_of(served.model))
    rows: list[list[int]] = [[] for _ in units]
    done = [False] * len(units)  # a row that has ended is not checked again (a stop string costs decodes)
    steps = generate_tokens(served.model, batch, first.sampling.max_tokens, first.sampling.temperature,
                            None, first.sampling.top_p, first.generator, attention_mask=mask)
    for tokens in steps:
        for row, token in zip(rows, tokens[:, 0].tolist(), strict=True):
            row.append(token)
        done = [ended or finished(served, row, first.sampling.stop)
                for ended, row in zip(done, rows, strict=True)]
        if all(done):
            break
    for unit, row in zip(units, rows, strict=True):
        unit.generated = row


def finished(served: Served, generated: list[int], stop: tuple[str, ...]) -> bool:
    ended = not served.ends_at.isdisjoint(generated)
    return ended or (bool(stop) and ends(served, generated, stop)[1] == "stop")


def ends(served: Served, generated: list[int], stop: tuple[str, ...]) -> tuple[int, str]:
    """How many generated tokens a choice keeps, and why it ends: at an end token (Served.ends_at)
    or the token that completes a stop string ("stop"), else at max_tokens ("length")."""
    end = served.ends_at
    kept = generated[:next((i for i, token in enumerate(generated) if token in end), len(generated))]
    # One decode of the whole answer says whether a stop string has appeared (checked at every
    # step); only then is its first prefix looked for.
    if stop and any(s in served.tokenizer.decode(kept) for s in stop):
        for n in range(1, len(kept) + 1):
            if any(s in served.tokenizer.decode(kept[:n]) for s in stop):
                return n, "stop"
    return len(kept), "stop" if len(kept) < len(generated) else "length"


def reply(served: Served, request: CompletionRequest, units: list[Unit]) -> Reply:
    prompt_tokens = sum(len(u.ids) - u.echo_from for u in units[::request.n])
    out = Reply(model=served.model_id, prompt_tokens=prompt_tokens)
    for unit in units:
        n, reason = ends(served, unit.generated, request.sampling.stop)
        text = cut_at_stop(served.tokenizer.decode(unit.generated[:n]), request.sampling.stop)
        logprobs = None
        if request.logprobs is not None:  # <|endoftext|> included when generated: it was chosen
            ended = n < len(unit.generated) and unit.generated[n] in served.ends_at
            scored = unit.generated[:n + ended]
            logprobs = choice_logprobs(served, unit.ids, scored, unit.echo_from, request.echo,
                                       request.logprobs)
        if request.echo:
            text = served.tokenizer.decode(unit.ids[unit.echo_from:]) + text
        out.choices.append(Choice(text, reason, n, logprobs))
    return out


def stream(served: Served, request: CompletionRequest) -> Iterator[tuple[str, str | None, dict | None]]:
    """(text, None, None) pieces as tokens are generated, then ("", finish_reason, usage): the text
    of one choice and its usage, the same as its non-streamed answer's. Text that could begin a stop
    string is held back until it is clear whether it does."""
    (unit,) = plan(served, request)
    held = max((len(s) - 1 for s in request.sampling.stop), default=0)
    generated, sent = [], 0
    steps = generate_tokens(served.model, torch.tensor([unit.ids], device=device_of(served.model)),
                            request.sampling.max_tokens, request.sampling.temperature, None,
                            request.sampling.top_p, unit.generator)
    for tokens in steps:
        generated.append(int(tokens[0, 0]))
        n, reason = ends(served, generated, request.sampling.stop)
        text = cut_at_stop(served.tokenizer.decode(generated[:n]), request.sampling.stop)
        done = finished(served, generated, request.sampling.stop)
        safe = len(text) if done else max(sent, len(text) - held)
        if text[sent:safe] and not text[sent:safe].endswith("\ufffd"):  # not half a UTF-8 character
            yield text[sent:safe], None, None
            sent = safe
        if done:
            break
    n, reason = ends(served, generated, request.sampling.stop)
    text = cut_at_stop(served.tokenizer.decode(generated[:n]), request.sampling.stop)
    if text[sent:]:
        yield text[sent:], None, None
    unit.generated = generated
    yield "", reason, reply(served, request, [unit]).usage()

"""OpenAI requests parsed and refused with the field named, as OpenAI's own errors do."""

import pytest

from lm_pipeline.serving.protocol import Limits, RequestError, parse_chat, parse_completion

LIMITS = Limits(max_tokens=32, max_n=4)
OK = {"model": "m", "prompt": "hi"}


@pytest.mark.parametrize(("body", "param"), [
    ([], None), ({"prompt": "hi"}, "model"), ({**OK, "prompt": 3}, "prompt"),
    ({**OK, "prompt": []}, "prompt"),
    ({**OK, "prompt": [[1, 2], []]}, "prompt"), ({**OK, "max_tokens": 33}, "max_tokens"),
    ({**OK, "max_tokens": 1.5}, "max_tokens"), ({**OK, "temperature": 2.5}, "temperature"),
    ({**OK, "top_p": 0}, "top_p"), ({**OK, "n": 5}, "n"), ({**OK, "stop": ["a"] * 5}, "stop"),
    ({**OK, "seed": -1}, "seed"), ({**OK, "logprobs": 6}, "logprobs"), ({**OK, "echo": "yes"}, "echo"),
    ({**OK, "best_of": 2}, "best_of"), ({**OK, "stream": True, "n": 2}, "n"),
    ({**OK, "stream": True, "logprobs": 1}, "stream"),
    ({**OK, "frequency_penalty": 0.5}, "frequency_penalty"),
    # JSON's NaN (Python's json reads it) compares false both ways, so a bounds check alone lets it
    # through; a seed past 64 bits is one torch cannot take. Either failed the whole batch it joined.
    ({**OK, "temperature": float("nan")}, "temperature"), ({**OK, "top_p": float("nan")}, "top_p"),
    ({**OK, "seed": 2**63}, "seed"), ({**OK, "prompt": ["a"] * 2049}, "prompt"),  # OpenAI's bound
    ({**OK, "stream_options": {"include_usage": True}}, "stream_options"),  # not a stream
    ({**OK, "stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options"),
])
def test_a_bad_completion_request_names_its_field(body, param):
    with pytest.raises(RequestError) as refused:
        parse_completion(body, LIMITS)
    assert refused.value.param == param and refused.value.status == 400
    assert refused.value.body()["error"]["param"] == param


def test_the_prompt_forms_and_defaults_are_openais():
    assert parse_completion(OK, LIMITS).prompts == ("hi",)
    assert parse_completion({**OK, "prompt": [1, 2]}, LIMITS).prompts == ((1, 2),)
    assert parse_completion({**OK, "prompt": ["a", "b"]}, LIMITS).prompts == ("a", "b")
    parsed = parse_completion({**OK, "stop": "\n", "presence_penalty": 0, "user": "me"}, LIMITS)
    assert (parsed.sampling.max_tokens, parsed.sampling.temperature, parsed.sampling.stop, parsed.n) == (
        16, 1.0, ("\n",), 1)


def test_chat_messages_are_checked_one_by_one():
    with pytest.raises(RequestError) as refused:
        parse_chat({"model": "m", "messages": [{"role": "user", "content": "hi"}, {"role": "robot"}]}, LIMITS)
    assert refused.value.param == "messages[1]"
    parsed = parse_chat({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                         "max_completion_tokens": 7}, LIMITS)
    assert parsed.sampling.max_tokens == 7
    parsed = parse_chat({"model": "m", "messages": [{"role": "user", "content": "hi"}],  # null: unset
                         "max_completion_tokens": None, "max_tokens": 5}, LIMITS)
    assert parsed.sampling.max_tokens == 5


def test_an_unset_max_tokens_stays_within_the_endpoints_bound():
    """OpenAI's completions default to 16 tokens, its chat to as many as the model allows: here,
    serve.max_tokens, which bounds both."""
    assert parse_completion(OK, Limits(max_tokens=8, max_n=1)).sampling.max_tokens == 8
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert parse_chat(chat, LIMITS).sampling.max_tokens == LIMITS.max_tokens


def test_a_stream_asks_for_its_usage_with_stream_options():
    assert parse_completion({**OK, "stream": True, "stream_options": {"include_usage": True}},
                            LIMITS).include_usage
    assert not parse_completion({**OK, "stream": True}, LIMITS).include_usage
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    assert parse_chat(chat | {"stream_options": {"include_usage": True}}, LIMITS).include_usage


def test_chat_messages_in_openais_other_forms_read_as_text_turns():
    """Content as a list of text parts (what OpenAI's SDKs send for multi-part messages) and the
    developer role (OpenAI's name for system instructions since o1) were refused with 400."""
    parts = {"role": "user", "content": [{"type": "text", "text": "What is a tuple?"},
                                         {"type": "text", "text": "In one line."}]}
    developer = {"role": "developer", "content": "Be brief."}
    parsed = parse_chat({"model": "m", "messages": [developer, parts]}, LIMITS)
    assert parsed.messages == ({"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "What is a tuple?\nIn one line."})  # as vLLM
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}
    with pytest.raises(RequestError, match="text parts only") as refused:
        parse_chat({"model": "m", "messages": [image]}, LIMITS)
    assert refused.value.param == "messages[0]"

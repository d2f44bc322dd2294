"""Chat messages as the prompt a model was tuned on: its own chat template (a Jinja template in
its tokenizer files), rendered in Jinja's sandbox as Hugging Face's tokenizers render it. The
template is data from the model folder: the sandbox lets it format, not reach into Python."""

from __future__ import annotations

from pathlib import Path

from lm_pipeline.io import read_json
from lm_pipeline.serving.protocol import RequestError

TEMPLATE_FILE = "chat_template.jinja"  # where transformers 5 saves it
TOKENIZER_CONFIG = "tokenizer_config.json"  # where older folders keep it, as "chat_template"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"


def chat_template(folder: Path) -> str | None:
    if (folder / TEMPLATE_FILE).is_file():
        return (folder / TEMPLATE_FILE).read_text()
    config = read_tokenizer_config(folder)
    template = config.get("chat_template")
    return template if isinstance(template, str) else None


def special_tokens(folder: Path) -> dict[str, str]:
    """bos_token and eos_token as a template refers to them: from tokenizer_config.json, else
    special_tokens_map.json, each a string or an AddedToken object ({"content": ...}) as older
    folders keep them (Llama 2's)."""
    found = {}
    configs = (read_json_if_there(folder / SPECIAL_TOKENS_MAP), read_tokenizer_config(folder))
    for config in configs:  # the tokenizer config's win
        for key in ("bos_token", "eos_token"):
            value = config.get(key)
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                found[key] = value
    return found


def read_tokenizer_config(folder: Path) -> dict:
    return read_json_if_there(folder / TOKENIZER_CONFIG)


def read_json_if_there(path: Path) -> dict:
    return read_json(path) if path.is_file() else {}


def render(template: str | None, messages: tuple[dict, ...], model_id: str, special: dict[str, str]) -> str:
    """The prompt for `messages`, ending where the assistant's answer begins."""
    if template is None:
        raise RequestError(f"model {model_id} has no chat template (its tokenizer files define none): "
                           "use /v1/completions", "messages")
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(messages=list(messages), add_generation_prompt=True,
                                                **special)
    except TemplateError as err:
        raise RequestError(f"the model's chat template refused these messages: {err}", "messages") from None

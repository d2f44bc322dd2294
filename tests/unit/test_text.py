"""Text from a corpus, a drop or a model, made safe where people read it: as Markdown that stays
text, and on a terminal that runs no escape sequence."""

import html
import re

import markdown
import pytest

from lm_pipeline.text import fenced, markdown_literal, terminal_safe

pytestmark = pytest.mark.security

HOSTILE_MARKDOWN = [
    "[x](javascript:alert(1))",
    "![](http://evil.example/pixel.png)",
    "[ref]\n\n[ref]: javascript:alert(1)",
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<http://autolink.example> and https://bare.example",
    "&lt;script&gt; &#106;avascript:alert(1) &amp; &#124; &",
    "a | b || c",
    "line one\nline two\r\n| forged | row |",
    "`code` ``more`` ```fence```",
    "*em* _em_ **strong** __strong__",
    "\\[not escaped\\] \\\\ \\",
    "# heading",
    "1. item",
    "- item",
    "> quote",
    "{curly} (round) +plus+ !bang! .dot. #hash#",
]


def rendered_cell(value: str) -> str:
    """The HTML of a one-cell Markdown table whose cell is `value`, as the report renders it."""
    page = markdown.markdown(f"| h |\n|---|\n| {markdown_literal(value)} |", extensions=["tables"])
    cells = re.findall(r"<td>(.*?)</td>", page, flags=re.DOTALL)
    assert len(cells) == 1, page
    return cells[0]


@pytest.mark.parametrize("hostile", HOSTILE_MARKDOWN)
def test_markdown_literal_renders_as_the_same_text_in_one_cell_and_no_markup(hostile):
    cell = rendered_cell(hostile)
    assert "<" not in cell, cell  # no element at all: no link, image, script, code or emphasis
    assert html.unescape(cell) == " ".join(hostile.split())  # and every character shows as itself


def test_markdown_literal_is_one_line():
    assert "\n" not in markdown_literal("a\nb\rc\u2028d\x0be") and "\r" not in markdown_literal("a\r\nb")


ESCAPES = "\x1b]52;c;ZXZpbA==\x07 \x1b[2J \x9b31m \x7f \x08 \x00"


def test_terminal_safe_shows_control_characters_escaped_and_keeps_lines_and_letters():
    text = f"kept é 中 text\tand a tab\nnext line {ESCAPES} hidden\rshown \u202eevil\u202c"
    safe = terminal_safe(text)
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", safe), safe
    assert safe.startswith("kept é 中 text\tand a tab\nnext line ")
    for shown in (r"\x1b]52;c;ZXZpbA==\x07", r"\x1b[2J", r"\x9b31m", r"\x7f", r"\x08", r"\x00",
                  r"hidden\rshown", r"\u202eevil\u202c"):
        assert shown in safe
    assert terminal_safe(safe) == safe  # escaping twice changes nothing


def test_terminal_safe_on_one_line_escapes_line_breaks_too():
    safe = terminal_safe("field\nforged: log line\r\n\u2028x", one_line=True)
    assert safe == r"field\nforged: log line\r\n\u2028x"


@pytest.mark.security
def test_a_fenced_message_quoting_a_fence_stays_one_code_block():
    quoted = "bad row: ```\n![x](http://evil.example/x.png) [run](javascript:alert(1))\n````"
    html = markdown.markdown(fenced(quoted), extensions=["fenced_code"])
    assert "<img" not in html and "<a" not in html and html.count("<code>") == 1

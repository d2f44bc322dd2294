"""Text from a corpus, a drop or a model, made safe where people read it.

Such text is data: in Markdown it must not become a link, an image or HTML, and on a terminal it
must not become an escape sequence (a clipboard write, a cleared screen, a carriage return that
hides what came before it).
"""

from __future__ import annotations

import html
import re

# What Python-Markdown unescapes after a backslash (its ESCAPED_CHARS), which CommonMark unescapes
# too; `<`, `>`, `&` and quotes become entities instead, and so does `|`: a table splits its rows
# on pipes before it reads any escape.
MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()#+\-.!])")

# C0 but tab and newline, DEL, C1 (CSI is \x9b), and the bidirectional overrides and isolates
# that make a terminal show text in another order than it is.
TERMINAL_CONTROLS = "\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
CONTROLS = re.compile(f"[{TERMINAL_CONTROLS}]")
CONTROLS_AND_LINE_BREAKS = re.compile(f"[{TERMINAL_CONTROLS}\n\u2028\u2029]")
URL_CREDENTIALS = re.compile(r"//[^/\s]*@")  # //user:password@ (a password's own / or @ is %-escaped)


def markdown_literal(value) -> str:
    """`value` as Markdown that renders as exactly its text, on one line: no link, image, emphasis,
    code or HTML, and no `|` or line break to end a table cell (whitespace runs become one space)."""
    one_line = " ".join(str(value).split())
    return html.escape(MARKDOWN_PUNCTUATION.sub(r"\\\1", one_line)).replace("|", "&#124;")


def terminal_safe(value, one_line: bool = False) -> str:
    """`value` with its control characters shown as Python writes them (`\\x1b`, `\\r`, `\\u202e`),
    so printing it runs no escape sequence. Tabs and newlines stay, unless `one_line` (a name or
    a field quoted in one line of a message, which a newline would let forge the next line)."""
    controls = CONTROLS_AND_LINE_BREAKS if one_line else CONTROLS
    return controls.sub(lambda match: match[0].encode("unicode_escape").decode("ascii"), str(value))


def without_url_credentials(value) -> str:
    """`value` as text with every URL's credentials masked (//***@): a client's error quotes the
    URL it was given (MLflow's, the tracking server's with its password), and an error line goes
    to the terminal and, from a flow's stage, to its logs and artifacts."""
    return URL_CREDENTIALS.sub("//***@", str(value))


def fenced(text: str) -> str:
    """`text` as a Markdown code block nothing in it can close: the fence is longer than any run
    of backticks the text holds (a stage's output may quote a corpus)."""
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    return f"{fence}\n{text}\n{fence}"

"""What ingest reports instead of a document: the file or record that cannot be one, and why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lm_pipeline.text import terminal_safe


class IngestError(ValueError):
    """The corpus source cannot be read; the message names the file (and line)."""


@dataclass(frozen=True)
class Problem:
    """A file or a record that cannot become a document: where it is and what is wrong."""

    where: str  # "path" or "path:line"
    reason: str
    scope: Literal["file", "record"]

    def __str__(self) -> str:
        # One line of a message or a log: a file name or a field of a record may carry escape sequences.
        return terminal_safe(f"{self.where}: {self.reason}", one_line=True)


def too_large(size: int, max_bytes: int) -> str:
    return f"{size} bytes, over data.max_document_bytes ({max_bytes})"

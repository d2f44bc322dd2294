"""The documents format: documents.jsonl, one {id, text, source} object a line.

Ingest writes data/raw/documents.jsonl, which validation and filtering stream; filtering writes
data/filtered/documents.jsonl (and removed.jsonl, the same with "filter" and "reason"), which
preprocessing streams.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

DOCUMENTS_FILE = "documents.jsonl"


def documents_path(raw_dir: Path) -> Path:
    return Path(raw_dir) / DOCUMENTS_FILE


def read_documents(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)

"""One corpus source as a stream of documents and problems: the built-in corpus, or a file, a folder
of files, or an object-storage prefix (see files.py and readers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from lm_pipeline.data.sources.files import corpus_files, object_files
from lm_pipeline.data.sources.problems import Problem
from lm_pipeline.data.sources.python_docs import BUILTIN_SOURCE, python_docs
from lm_pipeline.data.sources.readers import from_file
from lm_pipeline.io import is_url


def iter_documents(source: str, min_doc_chars: int = 1,
                   max_bytes: int = 64 << 20) -> Iterator[dict | Problem]:
    if source == BUILTIN_SOURCE:
        yield from python_docs(min_doc_chars)
        return
    files = object_files(source) if is_url(source) else corpus_files(Path(source).expanduser())
    for item in files:
        if isinstance(item, Problem):
            yield item
        else:
            yield from from_file(item, max_bytes)

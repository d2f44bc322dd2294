"""Stage 1, ingest: materialize the corpus as documents {id, text, source} in data/raw/.

Sources: the built-in `python-docs` corpus (the prose that ships with the running Python), or a
local .txt / .jsonl / .parquet file or a folder of them. Bytes that are not valid UTF-8 are kept
as lone surrogates (surrogateescape) so that validation can name the documents that hold them.
"""

from __future__ import annotations

import ast
import json
import logging
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lm_pipeline.config import Config
from lm_pipeline.io import atomic_path

log = logging.getLogger(__name__)

BUILTIN_SOURCE = "python-docs"
SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".parquet")
DOCUMENTS_FILE = "documents.jsonl"
# Standard-library folders that hold tests, tools or vendored code rather than documentation.
_STDLIB_SKIP = {"test", "tests", "idlelib", "lib2to3", "ensurepip", "site-packages", "turtledemo",
                "pydoc_data", "__pycache__"}


class IngestError(ValueError):
    """The corpus source cannot be read; the message names the file (and line)."""


@dataclass(frozen=True)
class IngestResult:
    path: Path
    documents: int
    characters: int


def run(cfg: Config) -> IngestResult:
    out = cfg.data.raw_dir / DOCUMENTS_FILE
    count = chars = 0
    with atomic_path(out) as tmp, tmp.open("w", encoding="utf-8") as f:
        for doc in iter_documents(cfg.data.source, cfg.data.min_doc_chars):
            # ensure_ascii keeps lone surrogates (undecodable bytes) representable in JSON.
            f.write(json.dumps(doc, ensure_ascii=True) + "\n")
            count += 1
            chars += len(doc["text"])
    log.info("ingest: %d documents, %d characters from %s -> %s", count, chars, cfg.data.source, out)
    return IngestResult(out, count, chars)


def read_documents(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def iter_documents(source: str, min_doc_chars: int = 1) -> Iterator[dict]:
    if source == BUILTIN_SOURCE:
        yield from python_docs(min_doc_chars)
        return
    root = Path(source).expanduser()
    if not root.exists():
        raise IngestError(f"{root}: corpus path does not exist (data.source in params.yaml)")
    files = sorted(p for p in root.rglob("*") if p.suffix in SUPPORTED_SUFFIXES and p.is_file()) \
        if root.is_dir() else [root]
    if not files:
        raise IngestError(f"{root}: folder has no {', '.join(SUPPORTED_SUFFIXES)} files")
    for path in files:
        yield from read_file(path)


def read_file(path: Path) -> Iterator[dict]:
    readers = {".txt": read_txt, ".jsonl": read_jsonl, ".parquet": read_parquet}
    if path.suffix not in readers:
        raise IngestError(f"{path}: unsupported file type (expected {', '.join(SUPPORTED_SUFFIXES)})")
    yield from readers[path.suffix](path)


def read_txt(path: Path) -> Iterator[dict]:
    """A .txt file is one document."""
    yield {"id": str(path), "text": path.read_bytes().decode("utf-8", "surrogateescape"),
           "source": str(path)}


def read_jsonl(path: Path) -> Iterator[dict]:
    """One JSON object per line with a string `text` field (and optionally `id`)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8", "surrogateescape"))
            except json.JSONDecodeError as err:
                raise IngestError(f"{path}:{lineno}: malformed JSON: {err.msg}") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise IngestError(f"{path}:{lineno}: expected an object with a string 'text' field")
            yield {"id": str(record.get("id", f"{path}:{lineno}")), "text": record["text"],
                   "source": str(path)}


def read_parquet(path: Path) -> Iterator[dict]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if "text" not in table.column_names:
        raise IngestError(f"{path}: no 'text' column (columns: {', '.join(table.column_names)})")
    ids = table.column("id").to_pylist() if "id" in table.column_names else None
    for row, text in enumerate(table.column("text").to_pylist()):
        yield {"id": str(ids[row]) if ids else f"{path}:{row}", "text": text, "source": str(path)}


def python_docs(min_doc_chars: int) -> Iterator[dict]:
    """Reference-manual topics plus one document of docstrings per standard-library module."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield {"id": f"topics:{name}", "text": topics[name], "source": BUILTIN_SOURCE}
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if any(part in _STDLIB_SKIP or part.startswith("test") for part in rel.parts):
            continue
        text = "\n\n".join(d for d in module_docstrings(path) if len(d) >= min_doc_chars)
        if text:
            yield {"id": f"stdlib:{rel.as_posix()}", "text": text, "source": BUILTIN_SOURCE}


def module_docstrings(path: Path) -> list[str]:
    """Docstrings of a module and its classes and functions, read with ast (nothing imported)."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError):
        return []  # a few stdlib files are templates or target other versions
    nodes = [tree] + [n for n in ast.walk(tree)
                      if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
    return [doc for node in nodes if (doc := ast.get_docstring(node))]

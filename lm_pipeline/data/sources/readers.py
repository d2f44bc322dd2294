"""Reading one corpus file into documents {id, text, source}, a line or a batch at a time:
.txt (one document), .jsonl (a `text` field per line), .parquet and .arrow (a `text` column).

Broken input becomes a Problem naming the file (and line or row), never an exception: ingest
decides whether it stops the stage or is skipped and reported. Parquet and Arrow: tables.py.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator

from lm_pipeline.data.sources.files import CorpusFile
from lm_pipeline.data.sources.problems import Problem, too_large
from lm_pipeline.data.sources.tables import read_arrow, read_parquet


def from_file(file: CorpusFile, max_bytes: int) -> Iterator[dict | Problem]:
    readers = {".txt": read_txt, ".jsonl": read_jsonl, ".parquet": read_parquet, ".arrow": read_arrow}
    try:
        yield from readers[file.suffix](file, max_bytes)
    except OSError as err:  # permissions, I/O errors, a file removed while reading
        yield Problem(file.name, f"cannot read ({err.strerror or err})", "file")


def read_txt(file: CorpusFile, max_bytes: int) -> Iterator[dict | Problem]:
    """A .txt file is one document."""
    path = file.name
    if (size := file.size()) > max_bytes:
        yield Problem(path, too_large(size, max_bytes), "file")
        return
    with file.open() as f:
        data = f.read()
    if problem := binary_or_wrong_encoding(data):
        yield Problem(path, problem, "file")
        return
    try:
        text = data.removeprefix(codecs.BOM_UTF8).decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        yield Problem(f"{path}:{line}", f"invalid UTF-8 (byte {err.start} of the file)", "file")
        return
    if not text.strip():
        yield Problem(path, "empty file", "file")
        return
    yield {"id": path, "text": text, "source": path}


def read_jsonl(file: CorpusFile, max_bytes: int) -> Iterator[dict | Problem]:
    """One JSON object per line with a string `text` field (and optionally `id`)."""
    path, records = file.name, 0
    with file.open() as f:
        for lineno, raw in enumerate(capped_lines(f, max_bytes), start=1):
            if raw is None:
                yield Problem(f"{path}:{lineno}", f"line over data.max_document_bytes ({max_bytes})",
                              "record")
                continue
            if lineno == 1 and (problem := binary_or_wrong_encoding(raw)):
                yield Problem(path, problem, "file")
                return
            if not raw.strip():
                continue
            record = parse_record(raw.removeprefix(codecs.BOM_UTF8) if lineno == 1 else raw)
            if isinstance(record, str):
                yield Problem(f"{path}:{lineno}", record, "record")
                continue
            records += 1
            ident = record.get("id")  # null is no id: the place names the document
            yield {"id": f"{path}:{lineno}" if ident is None else str(ident), "text": record["text"],
                   "source": path}
    if not records:
        yield Problem(path, "empty file (no JSON records)", "file")


def capped_lines(f, max_bytes: int) -> Iterator[bytes | None]:
    """The lines of a binary file, each read with at most max_bytes in memory; None stands for a
    longer line (the rest of it is skipped in chunks)."""
    while line := f.readline(max_bytes + 1):
        if len(line) <= max_bytes or line.endswith(b"\n"):
            yield line
            continue
        while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
            pass
        yield None


def parse_record(raw: bytes) -> dict | str:
    """The record on one JSONL line, or what is wrong with it."""
    if b"\0" in raw:
        return "NUL byte (binary data, not text)"
    try:
        record = json.loads(raw.rstrip(b"\r\n").decode("utf-8"))
    except UnicodeDecodeError as err:
        return f"invalid UTF-8 (byte {err.start} of the line)"
    except json.JSONDecodeError as err:
        return f"malformed JSON: {err.msg} (column {err.colno})"
    except RecursionError:
        return "JSON nested too deeply"
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        return f"malformed JSON: {str(err)[:200]}"
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    if "text" not in record:
        names = ", ".join(list(record)[:10]) + (", ..." if len(record) > 10 else "")
        return f"no 'text' field ({len(record)} fields: {names})" if len(record) > 10 else \
            f"no 'text' field (fields: {names or 'none'})"
    if not isinstance(record["text"], str):
        return f"'text' is {type(record['text']).__name__}, not a string"
    return record


def binary_or_wrong_encoding(head: bytes) -> str | None:
    """UTF-16/32 (told by their byte-order mark) or NUL bytes: not UTF-8 text."""
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                      (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if head.startswith(bom):
            return f"{name} text (byte-order mark); convert it to UTF-8: iconv -f {name} -t UTF-8"
    if (offset := head.find(b"\0")) >= 0:
        return f"binary file (NUL byte at offset {offset})"
    return None

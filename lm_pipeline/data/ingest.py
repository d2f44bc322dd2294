"""Stage 1, ingest: materialize the corpus as documents {id, text, source} in data/raw/.

Sources: the built-in `python-docs` corpus (the prose that ships with the running Python), or a
.txt / .jsonl / .parquet file or a folder of them, local or in object storage, read a line or a
batch at a time. A Hugging Face `datasets` folder written by `save_to_disk` (a Dataset or a
DatasetDict) is a folder of .arrow files with a `text` column, read as data: no dataset script or
pickled state of it is loaded or run.

Broken input is found here and named by file (and line): unreadable files, symlink loops, binary
data, text that is not UTF-8, malformed or text-less records. By default it stops the stage
(`data.on_bad_file` / `data.on_bad_record: fail`); with `skip` it is left out and listed in
reports/ingest.json. Either way nothing half-written is left behind.
"""

from __future__ import annotations

import ast
import codecs
import hashlib
import io
import json
import logging
import multiprocessing
import os
import sysconfig
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Literal

import numpy as np

from lm_pipeline import storage
from lm_pipeline.config import Config, MixSource, corpus_description
from lm_pipeline.data.documents import documents_path
from lm_pipeline.io import atomic_path, remove_leftovers, write_json

log = logging.getLogger(__name__)

BUILTIN_SOURCE = "python-docs"
SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".parquet", ".arrow")
REPORT_EXAMPLES = 100  # skipped inputs listed by name in the report (all are counted)
# Standard-library folders that hold tests, tools or vendored code rather than documentation.
_STDLIB_SKIP = {"test", "tests", "idlelib", "lib2to3", "ensurepip", "site-packages", "turtledemo",
                "pydoc_data", "__pycache__"}


class IngestError(ValueError):
    """The corpus source cannot be read; the message names the file (and line)."""


@dataclass(frozen=True)
class Problem:
    """A file or a record that cannot become a document: where it is and what is wrong."""

    where: str  # "path" or "path:line"
    reason: str
    scope: Literal["file", "record"]

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass(frozen=True)
class CorpusFile:
    """A corpus file on any filesystem fsspec knows (local, s3://, gs://, ...): messages and
    document ids name it by `name`, its local path or its URL."""

    fs: Any  # an fsspec AbstractFileSystem
    path: str
    name: str

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.path).suffix

    def size(self) -> int:
        return self.fs.size(self.path)

    def open(self) -> BinaryIO:
        # Buffered as a local file is: readline(limit) bounds what one JSONL line may hold.
        return io.BufferedReader(self.fs.open(self.path, "rb"))


@dataclass(frozen=True)
class IngestResult:
    path: Path
    documents: int
    characters: int
    skipped: tuple[Problem, ...] = ()


def run(cfg: Config) -> IngestResult:
    out = documents_path(cfg.data.raw_dir)
    remove_leftovers(out)
    policy = {"file": cfg.data.on_bad_file, "record": cfg.data.on_bad_record}
    count = chars = 0
    skipped = Skipped()
    described = corpus_description(cfg.data.source, cfg.data.sources)
    mixture = Mixture(cfg.data.sources, cfg.data.mix_seed, cfg.data.min_doc_chars,
                      cfg.data.max_document_bytes) if cfg.data.sources else None
    items = mixture.documents() if mixture else \
        iter_documents(cfg.data.source, cfg.data.min_doc_chars, cfg.data.max_document_bytes)
    with atomic_path(out) as tmp, tmp.open("w", encoding="utf-8") as f:
        for item in items:
            if isinstance(item, Problem):
                if policy[item.scope] == "fail":
                    raise IngestError(f"{item} (data.on_bad_{item.scope}: skip to skip and report it)")
                skipped.add(item)
                continue
            # JSON escapes can carry lone surrogates ("\ud800"): ensure_ascii keeps them writable,
            # and validation reports them as invalid UTF-8.
            f.write(json.dumps(item, ensure_ascii=True) + "\n")
            count += 1
            chars += len(item["text"])
        if count == 0:
            raise IngestError(f"{described}: no documents"
                              + (f"; all {skipped.count} inputs were skipped, first: {skipped.examples[0]}"
                                 if skipped.count else ""))
    write_report(cfg.data.report_file, count, chars, skipped, mixture.stats if mixture else None)
    for problem in skipped.examples[:10]:
        log.warning("ingest: skipped %s", problem)
    log.info("ingest: %d documents, %d characters from %s -> %s (%d inputs skipped)",
             count, chars, described, out, skipped.count)
    for stats in mixture.stats if mixture else ():
        log.info("ingest: %s: %d of %d documents, %.1f%% of the characters (weight %.1f%%)", stats["name"],
                 stats["documents"], stats["documents_read"], 100 * stats["share"], 100 * stats["weight"])
    return IngestResult(out, count, chars, tuple(skipped.examples))


class Skipped:
    """What was skipped: counted by reason, the first REPORT_EXAMPLES kept by name (a corpus of
    millions of bad records must not grow a list of millions)."""

    def __init__(self):
        self.count, self.by_reason, self.examples = 0, Counter(), []

    def add(self, problem: Problem) -> None:
        self.count += 1
        self.by_reason[problem.reason.split(" (")[0]] += 1
        if len(self.examples) < REPORT_EXAMPLES:
            self.examples.append(problem)


def write_report(path: Path, documents: int, characters: int, skipped: Skipped,
                 mixture: list[dict] | None = None) -> None:
    write_json(path, {
        "documents": documents,
        "characters": characters,
        "skipped": skipped.count,
        "skipped_by_reason": dict(skipped.by_reason),
        "skipped_examples": [{"where": p.where, "reason": p.reason} for p in skipped.examples],
        **({"mixture": mixture} if mixture else {}),
    })


class Mixture:
    """data.sources read as one corpus. A first pass measures each source (its documents'
    lengths, and a sha256 of their texts, for lineage); then each source is sampled down to its
    weight's share of the characters (keep_masks) and streamed again, its documents labelled
    `mixture: <name>`. Bad input is reported by the first pass only."""

    def __init__(self, sources: list[MixSource], seed: int, min_doc_chars: int, max_bytes: int):
        self.sources, self.seed, self.stats = sources, seed, []
        self.min_doc_chars, self.max_bytes = min_doc_chars, max_bytes

    def read(self, spec: MixSource) -> Iterator[dict | Problem]:
        return iter_documents(spec.source, self.min_doc_chars, self.max_bytes)

    def documents(self) -> Iterator[dict | Problem]:
        lengths = []
        for spec in self.sources:
            digest, sizes = hashlib.sha256(), []
            for item in self.read(spec):
                if isinstance(item, Problem):
                    yield item
                    continue
                digest.update(item["text"].encode("utf-8", "surrogatepass") + b"\0")
                sizes.append(len(item["text"]))
            if not sizes:
                raise IngestError(f"data.sources: {spec.label} has no usable documents")
            lengths.append(np.array(sizes, dtype=np.int64))
            self.stats.append({"name": spec.label, "source": spec.source, "sha256": digest.hexdigest(),
                               "documents_read": len(sizes), "characters_read": int(sum(sizes))})
        weights = [spec.weight for spec in self.sources]
        masks = keep_masks(lengths, weights, self.seed)
        for spec, sizes, keep, stats in zip(self.sources, lengths, masks, self.stats, strict=True):
            stats |= {"weight": spec.weight / sum(weights), "documents": int(keep.sum()),
                      "characters": int(sizes[keep].sum())}
            documents = (item for item in self.read(spec) if not isinstance(item, Problem))
            for kept, item in zip(keep, documents, strict=True):
                if kept:
                    yield item | {"mixture": spec.label}
        total = sum(stats["characters"] for stats in self.stats)
        for stats in self.stats:
            stats["share"] = stats["characters"] / total


def keep_masks(lengths: list[np.ndarray], weights: list[float], seed: int) -> list[np.ndarray]:
    """Which documents of each source a mixture keeps. The mixture is the largest one every source
    can fill at its weight without repeating a document (the scarcest source gives all of its);
    each source gives a seeded random subset, its documents taken in a shuffled order while they
    fit its share of the characters."""
    shares = np.asarray(weights, dtype=float) / sum(weights)
    size = min(float(sizes.sum()) / share for sizes, share in zip(lengths, shares, strict=True))
    masks = []
    for k, (sizes, share) in enumerate(zip(lengths, shares, strict=True)):
        order = np.random.default_rng([seed, k]).permutation(len(sizes))
        fits = np.cumsum(sizes[order]) <= share * size * (1 + 1e-9)
        mask = np.zeros(len(sizes), dtype=bool)
        mask[order[fits]] = True
        masks.append(mask)
    return masks


def iter_documents(source: str, min_doc_chars: int = 1,
                   max_bytes: int = 64 << 20) -> Iterator[dict | Problem]:
    if source == BUILTIN_SOURCE:
        yield from python_docs(min_doc_chars)
        return
    files = object_files(source) if storage.is_url(source) else corpus_files(Path(source).expanduser())
    for item in files:
        if isinstance(item, Problem):
            yield item
        else:
            yield from from_file(item, max_bytes)


def object_files(url: str) -> Iterator[CorpusFile]:
    """The corpus files at an object-storage URL (a file, or every file under a prefix), in key
    order. The endpoint and credentials come from the environment (AWS_ENDPOINT_URL,
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY for s3://), never from params.yaml."""
    try:
        fs, root = storage.filesystem(url)
        paths = sorted(fs.find(root))
    except Exception as err:  # no such bucket, no endpoint, refused keys: each library its own type
        raise IngestError(f"{url}: cannot list it ({type(err).__name__}: {err}); object storage takes its "
                          "endpoint and keys from the environment (for s3://: AWS_ENDPOINT_URL, "
                          "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)") from None
    files = [CorpusFile(fs, path, fs.unstrip_protocol(path)) for path in paths]
    files = [f for f in files if f.suffix in SUPPORTED_SUFFIXES]
    if not files:
        raise IngestError(f"{url}: no {', '.join(SUPPORTED_SUFFIXES)} files there "
                          "(data.source in params.yaml)")
    yield from files


def corpus_files(root: Path) -> Iterator[CorpusFile | Problem]:
    """The corpus files under `root`, in a stable order; broken links are problems, not silence."""
    if not root.exists():
        what = "symlink loop or broken symlink" if root.is_symlink() else "corpus path does not exist"
        raise IngestError(f"{root}: {what} (data.source in params.yaml)")
    if not root.is_dir():
        if root.suffix not in SUPPORTED_SUFFIXES:
            raise IngestError(f"{root}: unsupported file type (expected {', '.join(SUPPORTED_SUFFIXES)})")
        yield local_file(root)
        return
    entries = sorted(root.rglob("*"))
    files = [p for p in entries if p.suffix in SUPPORTED_SUFFIXES
             and (p.is_file() or (p.is_symlink() and not p.exists()))]
    if not files:
        raise IngestError(f"{root}: folder has no {', '.join(SUPPORTED_SUFFIXES)} files")
    inside = root.resolve()
    for path in files:  # what a link would bring in from elsewhere is never read
        if not path.exists():
            yield Problem(str(path), "symlink loop or broken symlink", "file")
        elif not path.resolve().is_relative_to(inside):
            yield Problem(str(path), f"symlink to {path.resolve()}, outside the corpus folder {inside}",
                          "file")
        else:
            yield local_file(path)
    for path in entries:
        if path.is_symlink() and path.is_dir():
            yield Problem(str(path), f"symlinked folder (to {path.resolve()}) not followed", "file")


def local_file(path: Path) -> CorpusFile:
    from fsspec.implementations.local import LocalFileSystem

    return CorpusFile(LocalFileSystem(), str(path), str(path))


def from_file(file: CorpusFile, max_bytes: int) -> Iterator[dict | Problem]:
    readers = {".txt": read_txt, ".jsonl": read_jsonl, ".parquet": read_parquet, ".arrow": read_arrow}
    try:
        yield from readers[file.suffix](file, max_bytes)
    except OSError as err:  # permissions, I/O errors, a file removed while reading
        yield Problem(file.name, f"cannot read ({err.strerror or err})", "file")


def too_large(size: int, max_bytes: int) -> str:
    return f"{size} bytes, over data.max_document_bytes ({max_bytes})"


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
            yield {"id": str(record.get("id", f"{path}:{lineno}")), "text": record["text"],
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


def read_parquet(file: CorpusFile, max_bytes: int) -> Iterator[dict | Problem]:
    """Rows with a string `text` column (and optionally `id`), read a batch at a time."""
    with file.open() as f:
        yield from parquet_rows(f, file.name, max_bytes)


def parquet_rows(f: BinaryIO, path: str, max_bytes: int) -> Iterator[dict | Problem]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(f)
    except pa.ArrowException as err:
        yield Problem(path, f"not a readable Parquet file ({err})", "file")
        return
    columns = parquet.schema_arrow.names
    if "text" in columns:
        yield from table_rows(parquet.iter_batches(columns=["text"] + (["id"] if "id" in columns else [])),
                              columns, path, max_bytes, "Parquet")
    else:
        yield Problem(path, f"no 'text' column (columns: {', '.join(columns)})", "file")


def read_arrow(file: CorpusFile, max_bytes: int) -> Iterator[dict | Problem]:
    """An Arrow IPC file as `datasets.save_to_disk` writes its shards (the stream format; the
    file format is read too), with a string `text` column and optionally `id`."""
    import pyarrow as pa

    with file.open() as f:
        head = f.read(6)
        f.seek(0)
        try:  # the file format opens with its magic; save_to_disk writes the stream format
            if head == b"ARROW1":
                reader = pa.ipc.open_file(f)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            else:
                reader = pa.ipc.open_stream(f)
                batches = iter(reader)
        except pa.ArrowException as err:
            yield Problem(file.name, f"not a readable Arrow IPC file ({err})", "file")
            return
        columns = reader.schema.names
        if "text" not in columns:
            yield Problem(file.name, f"no 'text' column (columns: {', '.join(columns)})", "file")
            return
        yield from table_rows(batches, columns, file.name, max_bytes, "Arrow")


def table_rows(batches: Iterator, columns: list[str], path: str, max_bytes: int,
               kind: str) -> Iterator[dict | Problem]:
    """Documents from Arrow record batches (Parquet, Arrow IPC), a batch at a time; a row is
    named by its index in the file."""
    import pyarrow as pa

    row = 0
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as err:  # a corrupt page or block: the header read fine
            yield Problem(path, f"corrupt {kind} data after row {row} ({str(err)[:200]})", "file")
            return
        if batch is None:
            return
        ids = batch.column("id").to_pylist() if "id" in columns else None
        for i, text in enumerate(batch.column("text").to_pylist()):
            if not isinstance(text, str):
                yield Problem(f"{path}:row {row}", f"'text' is {type(text).__name__}, not a string",
                              "record")
            elif len(text) > max_bytes:  # characters: at least as many bytes
                yield Problem(f"{path}:row {row}", too_large(len(text.encode()), max_bytes), "record")
            else:
                yield {"id": str(ids[i]) if ids else f"{path}:{row}", "text": text, "source": path}
            row += 1


def python_docs(min_doc_chars: int) -> Iterator[dict]:
    """Reference-manual topics plus one document of docstrings per standard-library module."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield {"id": f"topics:{name}", "text": topics[name], "source": BUILTIN_SOURCE}
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    modules = [rel for rel in sorted(p.relative_to(stdlib) for p in stdlib.rglob("*.py"))
               if not any(part in _STDLIB_SKIP or part.startswith("test") for part in rel.parts)]
    # Parsing is most of this source's time and each module's is independent: one process per
    # core, results in module order (the same documents, in the same order, as one process).
    with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=multiprocessing.get_context("fork")) as pool:
        for rel, docs in zip(modules, pool.map(module_docstrings, [stdlib / m for m in modules],
                                               chunksize=32), strict=True):
            text = "\n\n".join(d for d in docs if len(d) >= min_doc_chars)
            if text:
                yield {"id": f"stdlib:{rel.as_posix()}", "text": text, "source": BUILTIN_SOURCE}


def module_docstrings(path: Path) -> list[str]:
    """Docstrings of a module and its classes and functions, read with ast (nothing imported)."""
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError):
        return []  # a few stdlib files are templates or target other versions
    return [doc for node in [tree, *definitions(tree)] if (doc := ast.get_docstring(node))]


def definitions(tree: ast.Module) -> list[ast.AST]:
    """The functions and classes of a module in ast.walk's order (breadth first), reached through
    statements only. A definition is a statement, never inside an expression, so skipping the
    expressions (most of a module's nodes, and most of the time of a full walk) loses none."""
    found, queue = [], deque([tree])
    while queue:
        node = queue.popleft()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found.append(node)
        queue.extend(child for child in ast.iter_child_nodes(node)
                     if isinstance(child, ast.stmt | ast.excepthandler | ast.match_case))
    return found

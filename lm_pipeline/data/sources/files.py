"""Finding the corpus files: a local file or folder (symlinks that leave it are refused), or every
file under an object-storage URL, each readable through fsspec the same way."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from lm_pipeline.data.sources.problems import IngestError, Problem
from lm_pipeline.io import filesystem

SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".parquet", ".arrow")


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


def object_files(url: str) -> Iterator[CorpusFile]:
    """The corpus files at an object-storage URL (a file, or every file under a prefix), in key
    order. The endpoint and credentials come from the environment (AWS_ENDPOINT_URL,
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY for s3://), never from params.yaml."""
    try:
        fs, root = filesystem(url)
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

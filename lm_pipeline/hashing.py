"""Content hashes of files and folders: what lineage, the registry and published data compare."""

from __future__ import annotations

import hashlib
from pathlib import Path


def tree_sha256(folder: Path, skip: frozenset[str] = frozenset()) -> str:
    """Hash of every file's relative path and bytes under `folder`, in sorted order (all but the
    top-level entries named in `skip`)."""
    digest = hashlib.sha256()
    files = (p for p in Path(folder).rglob("*") if p.is_file())
    for path in sorted(p for p in files if p.relative_to(folder).parts[0] not in skip):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()  # streamed: checkpoints can be large

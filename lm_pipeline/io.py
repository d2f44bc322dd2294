"""Small I/O helpers shared by the stages: atomic writes and JSON files."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `final`; rename it into place only if the block succeeds.

    Works for files and directories, so a killed stage never leaves an output that looks complete.
    An old folder is renamed aside before the new one takes its place (a kill in between leaves
    the old one beside, never neither); only the temporary folder this made is ever deleted.
    """
    final = Path(final)
    if final.name in ("", ".", ".."):
        raise ValueError(f"output {str(final)!r} is not a file or folder name (the working directory "
                         "or its parent would be replaced)")
    final.parent.mkdir(parents=True, exist_ok=True)
    holder = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    tmp = holder / final.name
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            os.replace(final, holder / ".old")
        os.replace(tmp, final)
    finally:
        shutil.rmtree(holder, ignore_errors=True)


def remove_leftovers(final: Path) -> None:
    """Delete the temporaries a killed writer of `final` left behind (a stage owns its outputs)."""
    for stale in Path(final).parent.glob(f".{Path(final).name}.*"):
        shutil.rmtree(stale, ignore_errors=True)


def write_json(path: Path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path):
    return json.loads(Path(path).read_text())

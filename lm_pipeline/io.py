"""Reading and writing files: atomic local outputs, and JSON records in a folder or a bucket.

A location is a local path or an object-storage URL (s3://bucket/key). Endpoint and keys of
object storage come from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY for s3://), never from params.yaml.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


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


def is_url(location: str | Path) -> bool:
    return "://" in str(location)


def filesystem(location: str | Path):
    """The fsspec filesystem of a location and the location's path in it."""
    import fsspec

    return fsspec.core.url_to_fs(str(location), skip_instance_cache=True)  # today's listing and environment


def write_json(location: str | Path, data) -> None:
    """A small JSON record: a local file is written to a temporary name and renamed; a new object
    in a bucket is whole or absent."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    if not is_url(location):
        with atomic_path(Path(location)) as tmp:
            tmp.write_text(text)
        return
    fs, path = filesystem(location)
    with fs.open(path, "wb") as f:
        f.write(text.encode())


def json_line(record) -> str:
    """`record` as one line of a UTF-8 JSON Lines file: characters as they are, but a lone
    surrogate (a corpus may hold one, escaped; UTF-8 cannot) stays escaped."""
    line = json.dumps(record, ensure_ascii=False)
    if not line.isascii():
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(record)
    return line


def read_json(location: str | Path):
    """A JSON record; one that does not parse is named, with where it breaks."""
    try:
        if not is_url(location):
            return json.loads(Path(location).read_text())
        fs, path = filesystem(location)
        with fs.open(path, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise json.JSONDecodeError(f"{location}: {err.msg}", err.doc, err.pos) from None


def private_dir(folder: Path) -> Path:
    """`folder`, made for this user only (0700), for locks and caches in a shared temporary
    folder: one planted there first (a link, another user's, one others may write in) would let
    them block us or redirect what we write, so it is refused."""
    folder = Path(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(folder)
    problem = ("a symbolic link" if stat.S_ISLNK(info.st_mode) else
               "owned by another user" if info.st_uid != os.getuid() else
               "others may write in it" if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) else None)
    if problem:
        raise PermissionError(f"{folder}: {problem}; refusing to use it (remove it, or point the setting "
                              "that names it at a folder of yours)")
    return folder


def without_credentials(url: str) -> str:
    """`url` without its user and password (scheme://user:password@host): fit to log, show, or
    hand to processes that take credentials from their own environment."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))

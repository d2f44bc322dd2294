"""The processed data in object storage, for training workers on nodes without a shared filesystem.

With data.shards_url set, the train stage (and the search) publishes data/processed under
`<shards_url>/<tree sha256>/`, once: a copy already there, with its manifest, is reused. Each
node's first worker copies it into a node-local cache, checks every file against the manifest
and the whole against the hash, and every worker maps the shards from there, so no node but the
driver's needs data/processed. Content addressing keeps two corpora, or two runs of one, from
ever mixing files.

The manifest (`_COMPLETE`, written last: a copy without it is partial) lists each file's size and
sha256. Only the files it lists are fetched, each to a path checked to stay inside the cache.
The endpoint and keys of object storage come from the environment (see io.py).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path

from lm_pipeline import storage
from lm_pipeline.hashing import file_sha256, tree_sha256
from lm_pipeline.io import filesystem, private_dir, read_json, write_json

log = logging.getLogger(__name__)

MANIFEST = "_COMPLETE"
CACHE_ENV = "LMP_SHARDS_CACHE"  # a node's cache folder (default: <temp dir>/lmp-shards-<uid>)


def publish(folder: Path, base_url: str) -> str:
    """Upload `folder` under base_url/<its hash>, unless a complete copy is there; its URL."""
    digest = tree_sha256(folder)
    url = storage.join(base_url, digest)
    if storage.exists(storage.join(url, MANIFEST)):
        log.info("train: processed data already in %s", url)
        return url
    fs, root = filesystem(url)
    files = {path.relative_to(folder).as_posix(): path
             for path in sorted(Path(folder).rglob("*")) if path.is_file()}
    for relative, path in files.items():
        fs.put_file(str(path), f"{root}/{relative}")
    write_json(storage.join(url, MANIFEST), {"tree_sha256": digest, "files": {
        relative: {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
        for relative, path in files.items()}})
    log.info("train: published %d files of %s to %s", len(files), folder, url)
    return url


def node_copy(url: str) -> Path:
    """The published folder on this node: fetched and checked by the first worker here (the
    others wait on a lock), then reused by every worker and run on the node."""
    digest = url.rstrip("/").rsplit("/", 1)[1]
    cache = node_cache()
    target = cache / digest
    with open(cache / f"{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_dir():
            fetch(url, digest, target)
    return target


def node_cache() -> Path:
    """This user's cache folder (LMP_SHARDS_CACHE, else one in the temporary folder), private to it."""
    default = Path(tempfile.gettempdir()) / f"lmp-shards-{os.getuid()}"
    return private_dir(Path(os.environ.get(CACHE_ENV) or default))


def fetch(url: str, digest: str, target: Path) -> None:
    """Download the files the manifest lists, check them, and move them into place whole."""
    try:
        manifest = read_json(storage.join(url, MANIFEST))
    except FileNotFoundError:
        missing = f"{url}: no complete copy of the processed data there ({MANIFEST} missing)"
        raise FileNotFoundError(missing) from None
    partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{digest[:12]}-"))
    try:
        fs, root = filesystem(url)
        for relative, expected in manifest["files"].items():
            destination = inside(partial, relative, url)
            destination.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f"{root}/{relative}", str(destination))
            got = {"bytes": destination.stat().st_size, "sha256": file_sha256(destination)}
            if got != {"bytes": expected["bytes"], "sha256": expected["sha256"]}:
                raise OSError(f"{url}/{relative}: not the file the manifest lists (changed in the bucket?); "
                              f"delete {url} to publish it again")
        if tree_sha256(partial) != digest:
            raise OSError(f"{url}: the files do not hash to {digest}; delete {url} to publish it again")
        partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def inside(folder: Path, relative: str, url: str) -> Path:
    """folder/relative, refused if a name (`..`, an absolute path) would put it anywhere else."""
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder.resolve()) or path == folder.resolve():
        raise OSError(f"{url}: file {relative!r} would be written outside {folder}; refused")
    return path

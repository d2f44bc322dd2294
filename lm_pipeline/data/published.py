"""The processed data in object storage, for training workers on nodes without a shared filesystem.

With data.shards_url set, the train stage (and the search) publishes data/processed under
`<shards_url>/<tree sha256>/`, once: a copy already there, with its completion marker, is reused.
Each node's workers then copy it once into a node-local cache, check it against its hash and map
the shards from there, so no node but the driver's needs data/processed. Content addressing keeps
two corpora, or two runs of one, from ever mixing files.

The endpoint and keys of object storage come from the environment (see storage.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from lm_pipeline import storage
from lm_pipeline.lineage import tree_sha256

log = logging.getLogger(__name__)

COMPLETE = "_COMPLETE"  # written last: a copy without it is partial and is replaced
CACHE_ENV = "LMP_SHARDS_CACHE"  # a node's cache folder (default: <temp dir>/lmp-shards)


def publish(folder: Path, base_url: str) -> str:
    """Upload `folder` under base_url/<its hash>, unless a complete copy is there; its URL."""
    digest = tree_sha256(folder)
    url = storage.join(base_url, digest)
    if storage.exists(storage.join(url, COMPLETE)):
        log.info("train: processed data already in %s", url)
        return url
    fs, root = storage.filesystem(url)
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    for path in files:
        fs.put_file(str(path), f"{root}/{path.relative_to(folder).as_posix()}")
    storage.write_json(storage.join(url, COMPLETE), {"files": len(files), "tree_sha256": digest})
    log.info("train: published %d files of %s to %s", len(files), folder, url)
    return url


def node_copy(url: str) -> Path:
    """The published folder on this node: downloaded and checked once, then reused by every worker
    and run here. Workers racing on one node each download; the first rename wins, the same bytes."""
    digest = url.rstrip("/").rsplit("/", 1)[1]
    cache = Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "lmp-shards")
    target = cache / digest
    if target.is_dir():
        return target
    if not storage.exists(storage.join(url, COMPLETE)):
        raise FileNotFoundError(f"{url}: no complete copy of the processed data there ({COMPLETE} missing)")
    cache.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=cache, prefix=f".{digest[:12]}-"))
    try:
        fs, root = storage.filesystem(url)
        for key in fs.find(root):
            relative = key[len(root):].lstrip("/")
            if relative != COMPLETE:
                destination = inside(partial, relative, url)
                destination.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(key, str(destination))
        if tree_sha256(partial) != digest:
            raise OSError(f"{url}: the downloaded files do not hash to {digest} (changed in the bucket?)")
        partial.rename(target)
    except OSError:
        if not target.is_dir():  # not a lost race: a real failure
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def inside(folder: Path, relative: str, url: str) -> Path:
    """folder/relative, refused if a key (`..`, an absolute path) would put it anywhere else."""
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder.resolve()) or path == folder.resolve():
        raise OSError(f"{url}: object {relative!r} would be written outside {folder}; refused")
    return path


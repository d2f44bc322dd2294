"""Where training keeps its run folders: a local folder or an object-storage URL (s3://bucket/prefix).

Ray Train writes checkpoints there itself (a URL through pyarrow); the driver needs only the few
calls below, the same for both kinds. Endpoint and keys of object storage come from the
environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY for s3://), never from
params.yaml.
"""

from __future__ import annotations

import json
from pathlib import Path


def is_url(location: str) -> bool:
    return "://" in str(location)


def root(location: str | Path) -> str:
    """A storage root as Ray Train takes it: a URL as given, a folder as an absolute path."""
    return str(location).rstrip("/") if is_url(location) else str(Path(location).expanduser().resolve())


def join(base: str | Path, name: str) -> str:
    return f"{str(base).rstrip('/')}/{name}" if is_url(base) else str(Path(base) / name)


def filesystem(location: str | Path):
    """The fsspec filesystem of a location and the location's path in it."""
    import fsspec

    return fsspec.core.url_to_fs(str(location), skip_instance_cache=True)  # today's listing and environment


def exists(location: str | Path) -> bool:
    fs, path = filesystem(location)
    return fs.exists(path)


def read_json(location: str | Path):
    fs, path = filesystem(location)
    with fs.open(path, "rb") as f:
        return json.load(f)


def write_json(location: str, data) -> None:
    """A small JSON record (a new object in a bucket is whole or absent; a local file is written
    to a temporary name and renamed)."""
    if not is_url(location):
        from lm_pipeline.io import write_json as write_local

        write_local(Path(location), data)
        return
    fs, path = filesystem(location)
    with fs.open(path, "wb") as f:
        f.write((json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def move(source: str | Path, target: str | Path) -> None:
    """A run folder renamed: a local folder in one rename; in a bucket, which has no rename, each
    object copied under the new prefix, and only then the old ones deleted."""
    if not is_url(source):
        Path(source).rename(target)
        return
    fs, path = filesystem(source)
    destination = filesystem(target)[1]
    for key in fs.find(path):
        fs.copy(key, destination + key[len(path):])
    fs.rm(path, recursive=True)

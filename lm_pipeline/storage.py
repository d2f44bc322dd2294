"""Where training keeps its run folders: a local folder or an object-storage URL (s3://bucket/prefix).

Ray Train writes checkpoints there itself (a URL through pyarrow); the driver needs only the few
calls below, the same for both kinds (JSON records: io.read_json / io.write_json).
"""

from __future__ import annotations

from pathlib import Path

from lm_pipeline.io import filesystem, is_url


def root(location: str | Path) -> str:
    """A storage root as Ray Train takes it: a URL as given, a folder as an absolute path."""
    return str(location).rstrip("/") if is_url(location) else str(Path(location).expanduser().resolve())


def join(base: str | Path, name: str) -> str:
    return f"{str(base).rstrip('/')}/{name}" if is_url(base) else str(Path(base) / name)


def exists(location: str | Path) -> bool:
    fs, path = filesystem(location)
    return fs.exists(path)


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

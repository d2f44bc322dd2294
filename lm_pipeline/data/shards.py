"""Token shards: a split's token stream cut into fixed-size files, read back through memory maps.

Writing streams tokens to the open shard, whatever the corpus size; reading maps the files and
loads only the windows asked for. A document may continue from one shard into the next: the
stream is what counts, and readers see it whole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class ShardWriter:
    """Appends token arrays to `<folder>/<n>.bin`, starting a new file every `shard_tokens` tokens.

    Tokens go straight to the open file: memory holds only what one append brings."""

    def __init__(self, folder: Path, dtype, shard_tokens: int):
        self.folder, self.dtype, self.shard_tokens = folder, np.dtype(dtype), shard_tokens
        self.folder.mkdir(parents=True)
        self.shards: list[dict] = []
        self.file, self.filled = None, 0

    def append(self, tokens: np.ndarray) -> None:
        tokens = np.asarray(tokens, dtype=self.dtype)
        while len(tokens):
            if self.file is None:
                self.file = open(self.folder / f"{len(self.shards):05d}.bin", "wb")
            take = min(len(tokens), self.shard_tokens - self.filled)
            self.file.write(tokens[:take].tobytes())
            self.filled += take
            tokens = tokens[take:]
            if self.filled == self.shard_tokens:
                self.finish_shard()

    def finish_shard(self) -> None:
        if self.file is not None:
            self.file.close()
            self.shards.append({"file": f"{self.folder.name}/{Path(self.file.name).name}",
                                "tokens": self.filled})
            self.file, self.filled = None, 0

    def close(self) -> list[dict]:
        """Finish the last, partial shard; return the index entries."""
        self.finish_shard()
        return self.shards


class TokenShards:
    """A split's shards as one read-only token sequence: len() and slicing, as with an array."""

    def __init__(self, root: Path, entries: list[dict], dtype):
        self.dtype = np.dtype(dtype)
        self.shards = [np.memmap(root / e["file"], dtype=dtype, mode="r") for e in entries]
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise IndexError("token shards take contiguous slices only")
        shard = int(np.searchsorted(self.starts, start, side="right")) - 1
        pieces = []
        while start < stop:
            offset = start - self.starts[shard]
            pieces.append(self.shards[shard][offset:offset + (stop - start)])
            start += len(pieces[-1])
            shard += 1
        if len(pieces) == 1:
            return pieces[0]  # within one shard: a view of the map, nothing copied
        return np.concatenate(pieces) if pieces else np.empty(0, dtype=self.dtype)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """The whole split in memory: for small splits (test) and whole-stream operations."""
        whole = self[0:len(self)]
        return whole.astype(dtype) if dtype is not None else np.array(whole)

    def token_counts(self, minlength: int) -> np.ndarray:
        """How often each token id occurs, a shard at a time."""
        return sum((np.bincount(s, minlength=minlength) for s in self.shards),
                   np.zeros(minlength, dtype=np.int64))

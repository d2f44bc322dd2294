"""How large a compressed Arrow IPC record batch becomes, read before it is decompressed.

Arrow allocates what the 8-byte prefix of each compressed buffer says it will decompress to, so a
batch of a few kilobytes can ask for gigabytes. pyarrow shows a message's metadata only as
flatbuffer bytes; the three fields needed are read here by hand (format/Message.fbs in the Arrow
repository), each offset checked to lie inside the message.
"""

from __future__ import annotations

import struct

MESSAGE_HEADER = 2  # Message: version, header_type, header, bodyLength, custom_metadata
BATCH_LENGTH, BATCH_BUFFERS, BATCH_COMPRESSION = 0, 2, 3  # RecordBatch: length, nodes, buffers, ...
NOT_COMPRESSED = -1  # a buffer's prefix when it was stored as it is


class IpcFormatError(ValueError):
    """A record batch's metadata or body that does not hold together."""


def decompressed_size(message) -> tuple[int, int] | None:
    """(rows, bytes its buffers take decompressed) of a record-batch message (a pyarrow.ipc.Message),
    or None when it is not compressed: then its buffers are the file's own bytes."""
    meta, body = message.metadata.to_pybytes(), memoryview(message.body)
    batch = target(meta, field(meta, target(meta, 0), MESSAGE_HEADER))
    if field(meta, batch, BATCH_COMPRESSION) is None:
        return None
    rows_at = field(meta, batch, BATCH_LENGTH)
    rows = read("<q", meta, rows_at) if rows_at else 0
    buffers_at = field(meta, batch, BATCH_BUFFERS)
    spans = vector_of_pairs(meta, target(meta, buffers_at)) if buffers_at else []
    return rows, sum(buffer_size(body, offset, length) for offset, length in spans)


def buffer_size(body: memoryview, offset: int, length: int) -> int:
    if length == 0:  # an empty buffer has no prefix
        return 0
    size = read("<q", body, offset)
    if size == NOT_COMPRESSED and length >= 8:
        return length - 8
    if size < 0:  # a negative size must not offset another buffer's
        raise IpcFormatError(f"a buffer at byte {offset} of the body says it decompresses to {size} bytes")
    return size


def field(meta: bytes, table: int, index: int) -> int | None:
    """Where a flatbuffer table's field is stored, or None when it is absent (its default)."""
    vtable = table - read("<i", meta, table)
    slot = 4 + 2 * index
    if slot >= read("<H", meta, vtable):
        return None
    offset = read("<H", meta, vtable + slot)
    return table + offset if offset else None


def target(meta: bytes, at: int | None) -> int:
    """What the offset stored at `at` points to (a table, or a vector)."""
    if at is None:
        raise IpcFormatError("a record batch message without its header")
    return at + read("<I", meta, at)


def vector_of_pairs(meta: bytes, vector: int) -> list[tuple[int, int]]:
    """A vector of structs of two int64 (Buffer: offset, length)."""
    return [(read("<q", meta, at), read("<q", meta, at + 8))
            for at in range(vector + 4, vector + 4 + 16 * read("<I", meta, vector), 16)]


def read(fmt: str, buffer, at: int) -> int:
    """One number at `at`, which must lie inside `buffer` (struct would count a negative one from
    its end)."""
    if at < 0 or at + struct.calcsize(fmt) > len(buffer):
        raise IpcFormatError(f"an offset ({at}) outside the message's {len(buffer)} bytes")
    return struct.unpack_from(fmt, buffer, at)[0]

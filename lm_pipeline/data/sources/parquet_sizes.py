"""How large a Parquet file's column chunks become decompressed, from its footer and its pages'
own headers, read here by hand (Thrift's compact protocol; the structs of parquet.thrift).

The footer states a total per chunk, but nothing checks it: Arrow allocates what each page header
says. So the pages are walked as Arrow walks them and their headers summed, without decompressing.
The footer is parsed here too, for where each chunk lies: pyarrow's column-chunk metadata aborts
the whole process on some malformed statistics instead of raising.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import BinaryIO

BOOL_TRUE, BOOL_FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT = range(1, 13)
MAX_DEPTH = 16  # the footer nests five deep; more is a crafted file
MAX_COUNT = 1 << 30  # elements or bytes of one value

# Field ids in parquet.thrift
FILE_ROW_GROUPS = 4
GROUP_COLUMNS, GROUP_ROWS = 1, 3
CHUNK_META = 3
META_PATH, META_COMPRESSED, META_DATA_PAGE, META_DICTIONARY_PAGE = 3, 7, 9, 11
PAGE_UNCOMPRESSED, PAGE_COMPRESSED = 2, 3


class ParquetFormatError(ValueError):
    """A footer or page header that cannot be read: where it is and what is wrong."""


@dataclass(frozen=True)
class Chunk:
    column: str  # its path in the schema, dotted
    start: int  # where Arrow starts reading its pages: the dictionary page, else the first data page
    length: int  # compressed bytes, headers included


def row_groups(f: BinaryIO) -> list[tuple[int, list[Chunk]]]:
    """(rows, column chunks) of each row group, from the file's footer."""
    f.seek(-8, io.SEEK_END)
    tail = f.read(8)
    if tail[4:] != b"PAR1":
        raise ParquetFormatError("no Parquet footer (an encrypted one is not read)")
    f.seek(-8 - int.from_bytes(tail[:4], "little"), io.SEEK_END)
    footer = io.BytesIO(f.read(int.from_bytes(tail[:4], "little")))
    groups = []
    for field, kind in struct_fields(footer, 0):
        if field == FILE_ROW_GROUPS and kind == LIST:
            groups = [row_group(footer) for _ in list_of(footer, STRUCT)]
        else:
            skip(footer, kind, 0)
    return groups


def row_group(f: BinaryIO) -> tuple[int, list[Chunk]]:
    rows, chunks = 0, []
    for field, kind in struct_fields(f, 1):
        if field == GROUP_COLUMNS and kind == LIST:
            chunks = [column_chunk(f) for _ in list_of(f, STRUCT)]
        elif field == GROUP_ROWS and kind == I64:
            rows = zigzag(varint(f))
        else:
            skip(f, kind, 1)
    return rows, chunks


def column_chunk(f: BinaryIO) -> Chunk:
    meta = {}
    for field, kind in struct_fields(f, 2):
        if field != CHUNK_META or kind != STRUCT:
            skip(f, kind, 2)
            continue
        for inner, inner_kind in struct_fields(f, 3):
            if inner == META_PATH and inner_kind == LIST:
                meta[inner] = ".".join(f.read(count(f, varint(f))).decode(errors="replace")
                                       for _ in list_of(f, BINARY))
            elif inner in (META_COMPRESSED, META_DATA_PAGE, META_DICTIONARY_PAGE) and inner_kind == I64:
                meta[inner] = zigzag(varint(f))
            else:
                skip(f, inner_kind, 3)
    if not {META_PATH, META_COMPRESSED, META_DATA_PAGE} <= meta.keys():
        raise ParquetFormatError("a column chunk in the footer without its place in the file")
    start = meta[META_DATA_PAGE]
    if 0 < meta.get(META_DICTIONARY_PAGE, 0) < start:  # Arrow's rule for where a chunk begins
        start = meta[META_DICTIONARY_PAGE]
    return Chunk(meta[META_PATH], start, meta[META_COMPRESSED])


def chunk_size(f: BinaryIO, chunk: Chunk) -> int:
    """Bytes the chunk takes decompressed, headers included: its pages, each header followed by its
    compressed bytes, over the length the footer gives."""
    if min(chunk.start, chunk.length) < 0:
        raise ParquetFormatError(f"column chunk {chunk.column} at byte {chunk.start}, {chunk.length} long")
    end, position, size = chunk.start + chunk.length, chunk.start, 0
    while position < end:
        f.seek(position)
        uncompressed, compressed = page_sizes(f)
        header = f.tell() - position
        size += header + uncompressed
        position += header + compressed
    return size


def page_sizes(f: BinaryIO) -> tuple[int, int]:
    """(uncompressed, compressed) size of the page whose header starts at the file's position."""
    sizes = {}
    for field, kind in struct_fields(f, 0):
        if field in (PAGE_UNCOMPRESSED, PAGE_COMPRESSED) and kind == I32:
            sizes[field] = zigzag(varint(f))
        else:
            skip(f, kind, 0)
    if sizes.keys() != {PAGE_UNCOMPRESSED, PAGE_COMPRESSED} or min(sizes.values()) < 0:
        raise ParquetFormatError(f"a page header without its sizes at byte {f.tell()}")
    return sizes[PAGE_UNCOMPRESSED], sizes[PAGE_COMPRESSED]


def struct_fields(f: BinaryIO, depth: int):
    """(field id, type) of each field of a struct; the caller reads or skips its value."""
    if depth > MAX_DEPTH:
        raise ParquetFormatError(f"structs nested over {MAX_DEPTH} deep at byte {f.tell()}")
    field = 0
    while byte := read_byte(f):
        field = field + (byte >> 4) if byte >> 4 else zigzag(varint(f))
        yield field, byte & 0x0F


def list_of(f: BinaryIO, kind: int) -> range:
    """The elements of a list of `kind`; the caller reads each."""
    head = read_byte(f)
    if head & 0x0F != kind:
        raise ParquetFormatError(f"a list of Thrift type {head & 0x0F}, not {kind}, at byte {f.tell()}")
    return range(count(f, varint(f) if head >> 4 == 15 else head >> 4))


def skip(f: BinaryIO, kind: int, depth: int) -> None:
    if kind in (BOOL_TRUE, BOOL_FALSE):  # a field's value is in its type
        return
    if kind in (I16, I32, I64):
        varint(f)
    elif kind == BYTE:
        read_byte(f)
    elif kind == DOUBLE:
        f.seek(8, io.SEEK_CUR)
    elif kind == BINARY:
        f.seek(count(f, varint(f)), io.SEEK_CUR)
    elif kind in (LIST, SET):
        head = read_byte(f)
        for _ in range(count(f, varint(f) if head >> 4 == 15 else head >> 4)):
            skip(f, BYTE if head & 0x0F in (BOOL_TRUE, BOOL_FALSE) else head & 0x0F, depth + 1)  # a byte each
    elif kind == MAP:
        if size := count(f, varint(f)):
            types = read_byte(f)
            for _ in range(size):
                skip(f, types >> 4, depth + 1)
                skip(f, types & 0x0F, depth + 1)
    elif kind == STRUCT:
        for _, inner in struct_fields(f, depth + 1):
            skip(f, inner, depth + 1)
    else:
        raise ParquetFormatError(f"unknown Thrift type {kind} at byte {f.tell()}")


def count(f: BinaryIO, n: int) -> int:
    if n > MAX_COUNT:
        raise ParquetFormatError(f"{n} elements or bytes in one value at byte {f.tell()}")
    return n


def read_byte(f: BinaryIO) -> int:
    if not (byte := f.read(1)):
        raise ParquetFormatError(f"cut short at byte {f.tell()}")
    return byte[0]


def varint(f: BinaryIO) -> int:
    value = shift = 0
    while (byte := read_byte(f)) & 0x80:
        value |= (byte & 0x7F) << shift
        shift += 7
        if shift > 63:
            raise ParquetFormatError(f"an integer over 64 bits at byte {f.tell()}")
    return value | byte << shift


def zigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)

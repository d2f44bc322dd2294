"""Parquet and Arrow IPC files as documents: rows of a string `text` column, and optionally `id`.

A few kilobytes of either can decompress to gigabytes, so each is measured before it is decoded: a
row group or record batch by its own headers (parquet_sizes.py, arrow_ipc.py), each row in Arrow
before it becomes a Python string. A row group or batch may take what its rows would at
data.max_document_bytes each, DOCUMENTS_AT_ONCE rows' worth at most; past that it is a Problem
naming it, not read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from lm_pipeline.data.sources import parquet_sizes
from lm_pipeline.data.sources.arrow_ipc import IpcFormatError, decompressed_size
from lm_pipeline.data.sources.files import CorpusFile
from lm_pipeline.data.sources.problems import Problem, too_large

DOCUMENT_COLUMNS = ("text", "id")  # what is read of a table
DOCUMENTS_AT_ONCE = 64  # a row group or record batch may decode to this many of the largest documents


def read_parquet(file: CorpusFile, max_bytes: int) -> Iterator[dict | Problem]:
    """Rows with a string `text` column (and optionally `id`), read a row group at a time."""
    with file.open() as f:
        yield from parquet_rows(f, file.name, max_bytes)


def parquet_rows(f: BinaryIO, path: str, max_bytes: int) -> Iterator[dict | Problem]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(f)
    except pa.ArrowException as err:
        yield Problem(path, f"not a readable Parquet file ({err})", "file")
        return
    if problem := columns_problem(parquet.schema_arrow):
        yield Problem(path, problem, "file")
        return
    # Strings read as dictionaries: a value that many rows repeat stays one copy until it is measured.
    columns = [name for name in DOCUMENT_COLUMNS if name in parquet.schema_arrow.names]
    parquet = pq.ParquetFile(f, metadata=parquet.metadata, read_dictionary=columns)
    yield from table_rows(row_group_batches(parquet, f, columns, path, max_bytes), path, max_bytes, "Parquet")


def row_group_batches(parquet, f: BinaryIO, columns: list[str], path: str,
                      max_bytes: int) -> Iterator[Problem | tuple]:
    """Each row group's batches, once its pages' headers say it is no decompression bomb. Arrow's
    batches are of its default size: the row group bounds their memory, and smaller ones would
    rebuild the dictionary each time."""
    row = 0
    try:
        groups = parquet_sizes.row_groups(f)
        for group, (rows, chunks) in enumerate(groups):
            if rows == 0:  # no pages: pyarrow writes its chunks' page offsets as 0, the file's magic
                continue
            size = sum(parquet_sizes.chunk_size(f, chunk) for chunk in chunks if chunk.column in columns)
            if problem := over_read_cap("decompresses to", size, rows, max_bytes):
                yield Problem(f"{path}:row group {group}", problem, "file")
                return
            yield f"row group {group}", parquet.iter_batches(row_groups=[group], columns=columns)
            row += rows
    except parquet_sizes.ParquetFormatError as err:
        yield Problem(path, f"corrupt Parquet data after row {row} ({err})", "file")


def read_arrow(file: CorpusFile, max_bytes: int) -> Iterator[dict | Problem]:
    """An Arrow IPC file as `datasets.save_to_disk` writes its shards (the stream format; the
    file format is read too, by the stream it holds), with a string `text` column and optionally `id`."""
    with arrow_source(file) as source:
        source.seek(8 if source.read(6) == b"ARROW1" else 0)  # the file format: magic, padding, stream
        yield from table_rows(record_batches(source, file.name, max_bytes), file.name, max_bytes, "Arrow")


def arrow_source(file: CorpusFile):
    """A local file memory-mapped, so that batches stored uncompressed are read in place."""
    import pyarrow as pa
    from fsspec.implementations.local import LocalFileSystem

    return pa.memory_map(file.path) if isinstance(file.fs, LocalFileSystem) else file.open()


def record_batches(source, path: str, max_bytes: int) -> Iterator[Problem | tuple]:
    """The stream's record batches a message at a time, a compressed one measured before it is
    decompressed."""
    import pyarrow as pa

    try:
        messages = pa.ipc.MessageReader.open_stream(source)
        schema = pa.ipc.read_schema(messages.read_next_message())
    except (pa.ArrowException, StopIteration) as err:
        yield Problem(path, f"not a readable Arrow IPC file ({str(err) or 'no schema'})", "file")
        return
    if problem := columns_problem(schema):
        yield Problem(path, problem, "file")
        return
    for index, message in enumerate(messages):
        if problem := message_problem(message, max_bytes):
            yield Problem(f"{path}:batch {index}", problem, "file")
            return
        yield f"batch {index}", [pa.ipc.read_record_batch(message, schema)]


def message_problem(message, max_bytes: int) -> str | None:
    """Why a message of the stream is not read as a record batch, or None."""
    if message.type != "record batch":  # pyarrow reads no dictionary message on its own
        return (f"a {message.type} message, not a record batch: dictionary-encoded columns are not read "
                "(store the text as plain strings)")
    try:
        measured = decompressed_size(message)
    except IpcFormatError as err:
        return f"corrupt Arrow data ({err})"
    if measured is None:  # stored uncompressed: read in place, nothing to allocate
        return None
    rows, size = measured
    return over_read_cap("decompresses to", size, rows, max_bytes)


def over_read_cap(what: str, size: int, rows: int, max_bytes: int) -> str | None:
    """Why a row group or record batch of `rows` rows that takes `size` bytes decoded is refused, or
    None: it may take what its rows would at data.max_document_bytes each, DOCUMENTS_AT_ONCE rows'
    worth at most, however well it compresses. Each is decoded whole: this bounds the memory."""
    documents = min(rows, DOCUMENTS_AT_ONCE)
    if size <= documents * max_bytes:
        return None
    return (f"{what} {size} bytes in {rows} rows, over {documents} x data.max_document_bytes "
            f"({max_bytes}): a decompression bomb, or a file to rewrite in smaller row groups or batches")


def columns_problem(schema) -> str | None:
    """What keeps a table's columns from being documents: `text` must hold strings (as a dictionary
    too), `id`, if there, strings or integers."""
    import pyarrow as pa

    try:
        names = schema.names
    except UnicodeDecodeError:
        return "a column name that is not UTF-8"
    if "text" not in names:
        return f"no 'text' column (columns: {', '.join(names)})"
    if repeated := [name for name in DOCUMENT_COLUMNS if names.count(name) > 1]:
        return f"more than one {repeated[0]!r} column"
    if not is_string(text := value_type(schema.field("text").type)):
        return f"'text' column holds {text}, not strings"
    if "id" in names and not (is_string(ident := value_type(schema.field("id").type))
                              or pa.types.is_integer(ident)):
        return f"'id' column holds {ident}, not strings or integers"
    return None


def value_type(arrow_type):
    import pyarrow as pa

    return arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type


def is_string(arrow_type) -> bool:
    import pyarrow as pa

    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)


def table_rows(units: Iterator[Problem | tuple], path: str, max_bytes: int,
               kind: str) -> Iterator[dict | Problem]:
    """Documents from the record batches of each row group or batch (Parquet, Arrow IPC): each row is
    measured in Arrow before it becomes a Python string, and is named by its index in the file."""
    import pyarrow as pa

    row = 0
    try:
        for unit in units:
            if isinstance(unit, Problem):
                yield unit
                return
            where, batches = unit
            rows = text = 0
            for batch in batches:
                batch.validate(full=True)  # offsets and UTF-8 checked before anything reads them
                sizes = row_sizes(batch)
                fits = [size is not None and size <= max_bytes for size in sizes]
                rows += len(sizes)
                text += sum(size for size, fit in zip(sizes, fits, strict=True) if fit)
                if problem := over_read_cap("their text takes", text, rows, max_bytes):
                    yield Problem(f"{path}:{where}", problem, "file")
                    return
                yield from documents(batch.filter(pa.array(fits)).to_pylist(), sizes, path, row, max_bytes)
                row += len(sizes)
    except (pa.ArrowException, OSError) as err:  # a corrupt page or block: the header read fine
        yield Problem(path, f"corrupt {kind} data after row {row} ({str(err)[:200]})", "file")


def row_sizes(batch) -> list[int | None]:
    """Each row's bytes of text and id (None: no text), measured in Arrow: a dictionary's value
    counts at every row that names it, as it will once it is a Python string."""
    texts = byte_lengths(batch.column("text"))
    if "id" not in batch.schema.names or not is_string(value_type(batch.schema.field("id").type)):
        return texts
    return [text if text is None else text + (ident or 0)
            for text, ident in zip(texts, byte_lengths(batch.column("id")), strict=True)]


def byte_lengths(column) -> list[int | None]:
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(column.type):
        return pc.binary_length(column.dictionary).take(column.indices).to_pylist()
    return pc.binary_length(column).to_pylist()


def documents(records: list[dict], sizes: list[int | None], path: str, first_row: int,
              max_bytes: int) -> Iterator[dict | Problem]:
    """A batch's rows: a document of each record that fits, a problem for each row that does not."""
    kept = iter(records)
    for row, size in enumerate(sizes, start=first_row):
        if size is None:
            yield Problem(f"{path}:row {row}", "'text' is NoneType, not a string", "record")
        elif size > max_bytes:
            yield Problem(f"{path}:row {row}", too_large(size, max_bytes), "record")
        else:
            record = next(kept)
            ident = record.get("id")  # null is no id: the place names the document
            yield {"id": f"{path}:{row}" if ident is None else str(ident), "text": record["text"],
                   "source": path}

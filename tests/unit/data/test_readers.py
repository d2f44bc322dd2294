"""Parquet and Arrow files: a few bytes that decode to far more are named, not decoded (memory stays
flat); rows are named by their index, columns checked, and the headers read by hand agree with pyarrow."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lm_pipeline.data.sources.corpus import iter_documents
from lm_pipeline.data.sources.parquet_sizes import chunk_size, row_groups
from lm_pipeline.data.sources.problems import Problem

MAX_BYTES = 1 << 20  # data.max_document_bytes in these tests
HUGE = 64 << 20  # one value of this many bytes compresses to a few kilobytes

# Reads a small file, then the file, in a fresh process, and reports how far its peak resident memory
# rose while reading the second: Arrow allocates outside Python's allocator (tracemalloc misses it),
# ru_maxrss carries the parent's peak across exec, and a first read pays for imports and set-up.
MEASURE = """
import json, pathlib, sys
from lm_pipeline.data.sources.corpus import iter_documents
from lm_pipeline.data.sources.parquet_sizes import chunk_size, row_groups
from lm_pipeline.data.sources.problems import Problem

def peak_kib():
    return int(pathlib.Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0])

small = [str(item) for item in iter_documents(sys.argv[1], 1, int(sys.argv[3])) if isinstance(item, Problem)]
assert not small, small
pathlib.Path("/proc/self/clear_refs").write_text("5")  # the peak so far is forgotten
before = peak_kib()
items = [str(item) if isinstance(item, Problem) else "document"
         for item in iter_documents(sys.argv[2], 1, int(sys.argv[3]))]
print(json.dumps({"items": items[:3], "count": len(items), "grew_mib": (peak_kib() - before) / 1024}))
"""


def read_measured(path: Path) -> dict:
    """What reading `path` gives, and how far memory grew, after a small file of its kind was read."""
    small = path.with_name(f"small{path.suffix}")
    if path.suffix == ".parquet":
        pq.write_table(pa.table({"text": ["a small document"]}), small, compression="zstd")
    else:
        arrow_ipc(small, pa.ipc.new_stream, "zstd", "a small document")
    done = subprocess.run([sys.executable, "-c", MEASURE, str(small), str(path), str(MAX_BYTES)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def one_huge_row_parquet(path: Path) -> None:
    pq.write_table(pa.table({"text": ["a" * HUGE]}), path, compression="zstd")


def understated_parquet(path: Path) -> None:
    """The one-row bomb, its footer rewritten to say each size is 100 bytes (Arrow never checks)."""
    one_huge_row_parquet(path)
    size = pq.ParquetFile(path).metadata.row_group(0).column(0).total_uncompressed_size
    stated, small = varint(size << 1), varint(100 << 1, width=len(varint(size << 1)))  # zigzag
    data = path.read_bytes()
    footer = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    path.write_bytes(data[:footer] + data[footer:].replace(stated, small))
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).total_uncompressed_size == 100


def varint(n: int, width: int = 0) -> bytes:
    """Thrift's unsigned varint, padded with continuation bytes to `width` (readers accept that)."""
    out = []
    while n >= 0x80 or len(out) + 1 < width:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes([*out, n])


def repeated_row_parquet(path: Path) -> None:
    """200 rows naming one dictionary value just under the cap: 200 MB of text from one 1 MB value."""
    pq.write_table(pa.table({"text": ["b" * (MAX_BYTES - 1000)] * 200}), path, compression="zstd",
                   use_dictionary=True, dictionary_pagesize_limit=1 << 30)


def arrow_ipc(path: Path, new, compression: str, text: str) -> None:
    table = pa.table({"text": [text], "id": ["x"]})
    with new(path, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as writer:
        writer.write_table(table)


def zstd_stream(path: Path) -> None:
    arrow_ipc(path, pa.ipc.new_stream, "zstd", "a" * HUGE)


def lz4_file(path: Path) -> None:
    arrow_ipc(path, pa.ipc.new_file, "lz4", "a" * HUGE)


BOMBS = [
    ("one_row.parquet", one_huge_row_parquet, r"one_row.parquet:row group 0: decompresses to 671\d{5} "),
    ("understated.parquet", understated_parquet, r"understated.parquet:row group 0: decompresses to 671"),
    ("repeated.parquet", repeated_row_parquet, r"repeated.parquet:row group 0: their text takes 2095\d{5} "),
    ("stream.arrow", zstd_stream, r"stream.arrow:batch 0: decompresses to 671\d{5} "),
    ("file.arrow", lz4_file, r"file.arrow:batch 0: decompresses to 671\d{5} "),
]


@pytest.mark.security
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures peak memory as Linux does")
@pytest.mark.parametrize("name, write, message", BOMBS, ids=[b[0] for b in BOMBS])
def test_a_decompression_bomb_is_named_without_being_decompressed(tmp_path, name, write, message):
    write(tmp_path / name)
    assert (tmp_path / name).stat().st_size < 10 * MAX_BYTES
    read = read_measured(tmp_path / name)
    assert read["grew_mib"] < 16, f"reading {name} grew memory by {read['grew_mib']:.0f} MiB"
    assert read["count"] == 1 and read["items"][0].startswith(str(tmp_path / name))
    assert re.search(message, read["items"][0]), read["items"][0]


def read(path: Path, max_bytes: int = MAX_BYTES) -> list:
    return [str(item) if isinstance(item, Problem) else (item["id"], item["text"])
            for item in iter_documents(str(path), 1, max_bytes)]


@pytest.mark.bad_input
def test_rows_across_row_groups_and_batches_are_named_by_their_index_in_the_file(tmp_path):
    texts = [f"document {i % 7}" for i in range(300)]
    texts[250], texts[260] = None, "x" * 2000
    table = pa.table({"text": texts, "id": [f"doc-{i}" for i in range(300)]})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=100, compression="zstd")  # dictionaries
    rows = read(tmp_path / "t.parquet", max_bytes=1000)
    assert rows[250] == f"{tmp_path}/t.parquet:row 250: 'text' is NoneType, not a string"
    assert rows[260] == f"{tmp_path}/t.parquet:row 260: 2007 bytes, over data.max_document_bytes (1000)"
    assert rows[299] == ("doc-299", "document 5") and len(rows) == 300
    with pa.ipc.new_file(tmp_path / "t.arrow", table.schema,
                         options=pa.ipc.IpcWriteOptions(compression="lz4")) as writer:
        for start in range(0, 300, 100):
            writer.write_table(table.slice(start, 100))
    assert read(tmp_path / "t.arrow", max_bytes=1000) == [
        row.replace("t.parquet:", "t.arrow:") if isinstance(row, str) else row for row in rows]


@pytest.mark.bad_input
def test_an_empty_row_group_is_read_as_no_rows_not_as_corrupt_data(tmp_path):
    """pyarrow writes a 0-row row group's page offset as 0, where the file's magic is: read as a
    page header, it made a valid file "corrupt" and lost every row after it."""
    schema = pa.schema([("text", pa.string())])
    with pq.ParquetWriter(tmp_path / "gaps.parquet", schema) as writer:
        for texts in (["the first document"], [], ["the last document"]):
            writer.write_table(pa.table({"text": texts}, schema=schema))
    assert pq.ParquetFile(tmp_path / "gaps.parquet").metadata.num_row_groups == 3  # precondition
    rows = read(tmp_path / "gaps.parquet")  # (id, text), or a problem's message
    assert [row[1] if isinstance(row, tuple) else row for row in rows] == ["the first document",
                                                                           "the last document"]


def test_a_null_id_is_a_missing_id_not_the_string_none(tmp_path):
    """Every null id became "None": all one id, so the checks keyed by id (a drop's leaked test
    documents, the filter's "duplicate of") took different documents for one."""
    (tmp_path / "n.jsonl").write_text('{"id": null, "text": "first"}\n{"id": null, "text": "second"}\n')
    pq.write_table(pa.table({"text": ["first", "second"], "id": pa.array([None, 7], pa.int64())}),
                   tmp_path / "n.parquet")
    assert [i for i, _ in read(tmp_path / "n.jsonl")] == [f"{tmp_path}/n.jsonl:1", f"{tmp_path}/n.jsonl:2"]
    assert [i for i, _ in read(tmp_path / "n.parquet")] == [f"{tmp_path}/n.parquet:0", "7"]


def test_columns_that_cannot_be_documents_are_named(tmp_path):
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    assert read(tmp_path / "ints.parquet") == [
        f"{tmp_path}/ints.parquet: 'text' column holds int64, not strings"]
    pq.write_table(pa.table({"text": ["a"], "id": [[1, 2]]}), tmp_path / "ids.parquet")
    assert read(tmp_path / "ids.parquet") == [
        f"{tmp_path}/ids.parquet: 'id' column holds list<element: int64>, not strings or integers"]
    table = pa.table({"text": pa.array(["a", "a"]).dictionary_encode()})
    with pa.ipc.new_stream(tmp_path / "dict.arrow", table.schema) as writer:
        writer.write_table(table)
    assert read(tmp_path / "dict.arrow") == [
        f"{tmp_path}/dict.arrow:batch 0: a dictionary message, not a record batch: dictionary-encoded "
        "columns are not read (store the text as plain strings)"]


@pytest.mark.parametrize("options", [
    {}, {"data_page_version": "2.0", "compression": "gzip"}, {"use_dictionary": False, "compression": "none"},
    {"write_page_index": True, "data_page_size": 1000, "write_statistics": True, "compression": "snappy"}])
def test_the_footer_and_page_headers_read_by_hand_say_what_pyarrow_says(tmp_path, options):
    texts = [None if i % 13 == 0 else f"document {i} " * (i % 50) for i in range(3000)]
    pq.write_table(pa.table({"text": texts, "id": range(3000)}), tmp_path / "t.parquet", row_group_size=1000,
                   **options)
    metadata = pq.ParquetFile(tmp_path / "t.parquet").metadata
    with open(tmp_path / "t.parquet", "rb") as f:
        groups = row_groups(f)
        assert len(groups) == metadata.num_row_groups == 3
        for group, (rows, chunks) in enumerate(groups):
            assert rows == metadata.row_group(group).num_rows and len(chunks) == 2
            for chunk, theirs in zip(chunks, map(metadata.row_group(group).column, range(2)), strict=True):
                assert (chunk.column, chunk.length) == (theirs.path_in_schema, theirs.total_compressed_size)
                assert chunk_size(f, chunk) == theirs.total_uncompressed_size

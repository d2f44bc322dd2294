"""Broken corpora against the real ingest stage: each is named by file (and line), nothing
half-written is left, and `skip` policies leave the bad input out and report it."""

import codecs
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lm_pipeline.config import Config, DataConfig
from lm_pipeline.data.documents import DOCUMENTS_FILE, documents_path, read_documents
from lm_pipeline.data.sources.corpus import iter_documents
from lm_pipeline.data.sources.mixture import keep_masks
from lm_pipeline.data.sources.problems import IngestError
from lm_pipeline.data.sources.python_docs import definitions, python_docs
from lm_pipeline.stages import ingest

pytestmark = pytest.mark.bad_input

GOOD = "A perfectly ordinary document about tuples and lists.\n"


def config(tmp_path: Path, source: Path, **policy) -> Config:
    return Config(data=DataConfig(source=str(source), raw_dir=tmp_path / "out/raw",
                                  report_file=tmp_path / "out/ingest.json", **policy))


def fails(tmp_path: Path, source: Path, message: str) -> None:
    """Ingest stops naming the problem, and writes neither documents nor report."""
    cfg = config(tmp_path, source)
    with pytest.raises(IngestError, match=message):
        ingest.run(cfg)
    assert not (cfg.data.raw_dir / DOCUMENTS_FILE).exists()
    assert not cfg.data.report_file.exists()
    assert not any(cfg.data.raw_dir.parent.rglob("*documents*"))  # no temp leftovers either


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# (file name, content, the message naming it)
BAD_FILES = [
    ("empty.txt", b"", r"empty.txt: empty file"),
    ("blank.txt", b"  \n\n", r"blank.txt: empty file"),
    ("empty.jsonl", b"", r"empty.jsonl: empty file \(no JSON records\)"),
    ("binary.txt", b"GIF89a\x01\x00\x00\x00rest", r"binary.txt: binary file \(NUL byte at offset 7\)"),
    ("latin1.txt", "line one\ncaf\xe9 au lait\n".encode("latin-1"),
     r"latin1.txt:2: invalid UTF-8 \(byte 12 of the file\)"),
    ("utf16.txt", codecs.BOM_UTF16_LE + GOOD.encode("utf-16-le"),
     r"utf16.txt: UTF-16 text \(byte-order mark\); convert it to UTF-8: iconv -f UTF-16"),
    ("utf16.jsonl", codecs.BOM_UTF16_LE + '{"text": "x"}\n'.encode("utf-16-le"),
     r"utf16.jsonl: UTF-16 text \(byte-order mark\)"),
]

BAD_RECORDS = [
    (b'{"body": "no text here"}', r"b.jsonl:2: no 'text' field \(fields: body\)"),
    (b'{"text": 42}', r"b.jsonl:2: 'text' is int, not a string"),
    (b'{"text": null}', r"b.jsonl:2: 'text' is NoneType, not a string"),
    (b'{"text": "unclosed', r"b.jsonl:2: malformed JSON: Unterminated string"),
    (b'["text", "a list"]', r"b.jsonl:2: expected a JSON object, got list"),
    (b'{"text": "bad \xff byte"}', r"b.jsonl:2: invalid UTF-8 \(byte 14 of the line\)"),
    (b'{"text": "nul \x00 byte"}', r"b.jsonl:2: NUL byte \(binary data, not text\)"),
    (b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", r"b.jsonl:2: JSON nested too deeply"),
    (b'{"text": "x", "n": ' + b"9" * 5000 + b"}", r"b.jsonl:2: malformed JSON: .*4300 digits"),
    (b"{" + b", ".join(b'"f%d": 1' % i for i in range(100_000)) + b"}",
     r"b.jsonl:2: no 'text' field \(100000 fields: f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, ...\)"),
]


@pytest.mark.parametrize("name, content, message", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_file_is_named_and_stops_ingest(tmp_path, name, content, message):
    write(tmp_path / "corpus/good.txt", GOOD)
    write(tmp_path / "corpus" / name, content)
    fails(tmp_path, tmp_path / "corpus", message)


@pytest.mark.parametrize("line, message", BAD_RECORDS, ids=[m.split(": ", 1)[1][:24] for _, m in BAD_RECORDS])
def test_bad_jsonl_record_is_named_with_its_line(tmp_path, line, message):
    fails(tmp_path, write(tmp_path / "b.jsonl", b'{"text": "fine"}\n' + line + b"\n"), message)


def test_missing_path_empty_folder_and_unsupported_file(tmp_path):
    fails(tmp_path, tmp_path / "missing", r"missing: corpus path does not exist \(data.source")
    (tmp_path / "empty").mkdir()
    fails(tmp_path, tmp_path / "empty", r"empty: folder has no .txt, .jsonl, .parquet, .arrow files")
    fails(tmp_path, write(tmp_path / "notes.docx", "x"), r"notes.docx: unsupported file type")


def test_parquet_without_text_column_and_with_null_text(tmp_path):
    pd.DataFrame({"body": ["x"]}).to_parquet(tmp_path / "p.parquet")
    fails(tmp_path, tmp_path / "p.parquet", r"p.parquet: no 'text' column \(columns: body\)")
    pd.DataFrame({"text": ["fine", None]}).to_parquet(tmp_path / "q.parquet")
    fails(tmp_path, tmp_path / "q.parquet", r"q.parquet:row 1: 'text' is NoneType, not a string")
    write(tmp_path / "r.parquet", "not parquet at all")
    fails(tmp_path, tmp_path / "r.parquet", r"r.parquet: not a readable Parquet file")


def test_symlink_loops(tmp_path):
    write(tmp_path / "corpus/good.txt", GOOD)
    (tmp_path / "corpus/a.txt").symlink_to("b.txt")
    (tmp_path / "corpus/b.txt").symlink_to("a.txt")
    (tmp_path / "corpus/sub").mkdir()
    (tmp_path / "corpus/sub/up").symlink_to("..")  # a folder loop is not followed
    fails(tmp_path, tmp_path / "corpus", r"corpus/a.txt: symlink loop or broken symlink")
    (tmp_path / "self.jsonl").symlink_to("self.jsonl")
    fails(tmp_path, tmp_path / "self.jsonl", r"self.jsonl: symlink loop or broken symlink")


def test_unreadable_file(tmp_path):
    """Through the real CLI, without the capabilities that let root read anything."""
    write(tmp_path / "corpus/good.txt", GOOD)
    write(tmp_path / "corpus/secret.txt", GOOD).chmod(0)
    (tmp_path / "params.yaml").write_text(f"data:\n  source: {tmp_path / 'corpus'}\n")
    no_override = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                   "--bounding-set=-dac_override,-dac_read_search", "--"] if os.geteuid() == 0 else []
    proc = subprocess.run(no_override + [sys.executable, "-m", "lm_pipeline.cli", "ingest"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert "corpus/secret.txt: cannot read (Permission denied)" in proc.stderr
    assert not (tmp_path / "data/raw/documents.jsonl").exists()


def test_a_50mb_single_line_streams_through_and_validation_names_it(tmp_path):
    from lm_pipeline.config import ValidateConfig
    from lm_pipeline.stages import validate

    big = tmp_path / "big.jsonl"
    with open(big, "w") as f:
        for i in range(120):
            f.write(json.dumps({"text": f"document {i} is short"}) + "\n")
        f.write(json.dumps({"id": "the-long-one", "text": "word " * 10_000_000}) + "\n")  # 50 MB
    cfg = config(tmp_path, big).model_copy(
        update={"validate_": ValidateConfig(report_dir=tmp_path / "out/validation")})
    assert ingest.run(cfg).documents == 121
    message = r"text length in \[1, 1000000\] \(non-empty\)\): observed 1 \(e.g. the-long-one\)"
    with pytest.raises(validate.ValidationFailed, match=message):
        validate.run(cfg)


def test_all_duplicates_fail_validation(tmp_path):
    from lm_pipeline.config import ValidateConfig
    from lm_pipeline.stages import validate

    corpus = write(tmp_path / "dups.jsonl", (json.dumps({"text": "the same text"}) + "\n") * 200)
    cfg = config(tmp_path, corpus).model_copy(
        update={"validate_": ValidateConfig(report_dir=tmp_path / "out/validation")})
    ingest.run(cfg)
    message = r"at most 10% duplicate texts\): observed 0.995 \(e.g. .*dups.jsonl:2, "
    with pytest.raises(validate.ValidationFailed, match=message):
        validate.run(cfg)


def test_skip_policies_leave_bad_input_out_and_report_it(tmp_path):
    corpus = tmp_path / "corpus"
    write(corpus / "good.txt", GOOD)
    for name, content, _ in BAD_FILES:
        write(corpus / name, content)
    lines = [b'{"text": "fine one"}'] + [line for line, _ in BAD_RECORDS] + [b'{"text": "fine two"}']
    write(corpus / "b.jsonl", b"\n".join(lines))
    (corpus / "loop.txt").symlink_to("loop.txt")
    cfg = config(tmp_path, corpus, on_bad_file="skip", on_bad_record="skip")
    result = ingest.run(cfg)
    texts = [d["text"] for d in read_documents(result.path)]
    assert texts == ["fine one", "fine two", GOOD]
    report = json.loads(cfg.data.report_file.read_text())
    assert report["documents"] == 3
    assert report["skipped"] == len(BAD_FILES) + len(BAD_RECORDS) + 1
    named = {e["where"].split("/")[-1] for e in report["skipped_examples"]}
    assert named >= {"loop.txt", "b.jsonl:2", "b.jsonl:8", "empty.txt", "utf16.txt"}


def test_nothing_usable_is_an_error_even_when_skipping(tmp_path):
    write(tmp_path / "corpus/empty.txt", b"")
    cfg = config(tmp_path, tmp_path / "corpus", on_bad_file="skip")
    message = r"no documents; all 1 inputs were skipped, first: .*empty file"
    with pytest.raises(IngestError, match=message):
        ingest.run(cfg)


def test_builtin_corpus_is_real_english_prose():
    docs = list(python_docs(min_doc_chars=1))
    total = sum(len(d["text"]) for d in docs)
    assert len(docs) > 300 and total > 900_000
    assert any(d["id"] == "topics:assert" for d in docs)


NESTED = """
\"\"\"module\"\"\"
x = [lambda: 1 for _ in range(3)]
if x:
    def in_if():
        \"\"\"in if\"\"\"
try:
    class InTry:
        \"\"\"in try\"\"\"
        async def method(self):
            \"\"\"async method\"\"\"
            def inner():
                \"\"\"inner\"\"\"
except ImportError:
    def in_handler():
        \"\"\"in handler\"\"\"
finally:
    pass
match x:
    case [1]:
        def in_case():
            \"\"\"in case\"\"\"
with open(__file__) as f:
    for y in x:
        while y:
            def in_loop():
                \"\"\"in loop\"\"\"
def top():
    \"\"\"top\"\"\"
"""


def test_docstrings_come_in_the_order_of_a_full_ast_walk():
    """The corpus (and so its hash and every stage after ingest) depends on this order."""
    import ast

    tree = ast.parse(NESTED)
    kinds = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
    walked = [n for n in ast.walk(tree) if isinstance(n, kinds)]
    assert [n.name for n in definitions(tree)] == [n.name for n in walked]
    assert len(walked) == 8


def test_local_formats(tmp_path):
    (tmp_path / "a.txt").write_text("plain text document")
    (tmp_path / "b.jsonl").write_text('{"text": "first", "id": "j1"}\n\n{"text": "second"}\n')
    pd.DataFrame({"text": ["from parquet"]}).to_parquet(tmp_path / "c.parquet")
    (tmp_path / "ignored.csv").write_text("not,read")
    docs = list(iter_documents(str(tmp_path)))
    assert [d["text"] for d in docs] == ["plain text document", "first", "second", "from parquet"]
    assert docs[1]["id"] == "j1" and docs[2]["id"].endswith("b.jsonl:3")


@pytest.mark.security
def test_a_symlink_out_of_the_corpus_folder_is_refused_and_a_linked_folder_is_reported(tmp_path):
    write(tmp_path / "corpus/good.txt", GOOD)
    write(tmp_path / "private/secret.txt", "a secret key that must not be trained on\n")
    (tmp_path / "corpus/link.txt").symlink_to(tmp_path / "private/secret.txt")
    fails(tmp_path, tmp_path / "corpus",
          r"corpus/link.txt: symlink to .*private/secret.txt, outside the corpus")
    (tmp_path / "corpus/more").symlink_to(tmp_path / "private", target_is_directory=True)
    cfg = config(tmp_path, tmp_path / "corpus", on_bad_file="skip")
    result = ingest.run(cfg)
    assert [d["text"] for d in read_documents(result.path)] == [GOOD]
    report = json.loads(cfg.data.report_file.read_text())
    reasons = {e["where"].split("/")[-1]: e["reason"] for e in report["skipped_examples"]}
    assert "outside the corpus" in reasons["link.txt"] and "not followed" in reasons["more"]
    (tmp_path / "corpus/link.txt").unlink()
    (tmp_path / "corpus/inside.txt").symlink_to(tmp_path / "corpus/good.txt")  # inside: fine
    assert len(list(read_documents(ingest.run(cfg).path))) == 2


@pytest.mark.bad_input
def test_a_document_over_the_size_cap_is_named_not_read_whole(tmp_path):
    write(tmp_path / "corpus/good.txt", GOOD)
    write(tmp_path / "corpus/big.jsonl", b'{"text": "' + b"a" * 5000 + b'"}\n{"text": "fine"}\n')
    cfg = config(tmp_path, tmp_path / "corpus", on_bad_record="skip")
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"max_document_bytes": 1000})})
    result = ingest.run(cfg)
    assert [d["text"] for d in read_documents(result.path)] == ["fine", GOOD]
    report = json.loads(cfg.data.report_file.read_text())
    assert report["skipped_examples"][0]["where"].endswith("big.jsonl:1")
    assert "data.max_document_bytes" in report["skipped_examples"][0]["reason"]
    write(tmp_path / "corpus/huge.txt", "b" * 2000)
    with pytest.raises(IngestError, match=r"huge.txt: 2000 bytes, over data.max_document_bytes"):
        ingest.run(cfg.model_copy(update={"data": cfg.data.model_copy(update={"on_bad_file": "fail"})}))


@pytest.mark.bad_input
def test_a_corrupt_parquet_page_is_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "corpus/r.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"text": [GOOD] * 5000}), path, row_group_size=1000, compression="NONE")
    start = pq.ParquetFile(path).metadata.row_group(2).column(0).data_page_offset
    data = bytearray(path.read_bytes())
    data[start:start + 200] = b"\xff" * 200  # the third row group's page header; the footer intact
    path.write_bytes(bytes(data))
    fails(tmp_path, tmp_path / "corpus", r"r.parquet: corrupt Parquet data after row \d+")


@pytest.mark.bad_input
def test_the_report_keeps_counts_and_a_few_examples_however_many_records_are_bad(tmp_path):
    write(tmp_path / "corpus/good.txt", GOOD)
    write(tmp_path / "corpus/b.jsonl", b"\n".join([b"not json"] * 5000 + [b'{"text": "fine"}']))
    cfg = config(tmp_path, tmp_path / "corpus", on_bad_record="skip")
    result = ingest.run(cfg)
    report = json.loads(cfg.data.report_file.read_text())
    assert report["skipped"] == 5000
    assert report["skipped_by_reason"] == {"malformed JSON: Expecting value": 5000}
    assert len(report["skipped_examples"]) == len(result.skipped) == ingest.REPORT_EXAMPLES


def jsonl_source(folder: Path, prefix: str, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    lines = [json.dumps({"text": f"{prefix} {i} " + "word " * int(rng.integers(5, 60))}) for i in range(n)]
    write(folder / "docs.jsonl", "\n".join(lines) + "\n")
    return folder


def mixture_config(tmp_path: Path, name: str, weights: tuple[float, float], seed: int = 1337) -> Config:
    sources = [{"source": str(jsonl_source(tmp_path / "web", "web", 3000, 1)), "weight": weights[0],
                "name": "web"},
               {"source": str(jsonl_source(tmp_path / "code", "code", 800, 2)), "weight": weights[1],
                "name": "code"}]
    return Config(data=DataConfig(sources=sources, mix_seed=seed, raw_dir=tmp_path / name / "raw",
                                  report_file=tmp_path / name / "ingest.json"))


@pytest.mark.scale
def test_a_weighted_mixture_has_its_shares_and_is_the_same_for_a_seed(tmp_path):
    """70/30 of the characters, within 1 point: the tolerance is a few documents' worth (the
    documents are 30 to 300 characters, the sources hundreds of thousands)."""
    cfg = mixture_config(tmp_path, "a", (0.7, 0.3))
    ingest.run(cfg)
    report = json.loads(cfg.data.report_file.read_text())
    shares = {s["name"]: s["share"] for s in report["mixture"]}
    assert shares["web"] == pytest.approx(0.7, abs=0.01) and shares["code"] == pytest.approx(0.3, abs=0.01)
    code = next(s for s in report["mixture"] if s["name"] == "code")
    assert code["documents"] == code["documents_read"] == 800  # the scarcer source gives all it has
    assert all(len(s["sha256"]) == 64 and s["weight"] > 0 for s in report["mixture"])
    docs = list(read_documents(documents_path(cfg.data.raw_dir)))
    assert {d["mixture"] for d in docs} == {"web", "code"} and len(docs) == report["documents"]
    again = mixture_config(tmp_path, "b", (0.7, 0.3))
    ingest.run(again)
    assert documents_path(again.data.raw_dir).read_bytes() == documents_path(cfg.data.raw_dir).read_bytes()
    other = mixture_config(tmp_path, "c", (0.7, 0.3), seed=7)
    ingest.run(other)
    assert documents_path(other.data.raw_dir).read_bytes() != documents_path(cfg.data.raw_dir).read_bytes()


def test_mixture_masks_fill_each_share_from_a_seeded_subset():
    rng = np.random.default_rng(0)
    lengths = [rng.integers(10, 100, size=5000), rng.integers(10, 100, size=500)]
    masks = keep_masks(lengths, [3.0, 1.0], seed=1)
    chars = [int(sizes[mask].sum()) for sizes, mask in zip(lengths, masks, strict=True)]
    assert chars[0] / sum(chars) == pytest.approx(0.75, abs=0.005)
    assert masks[1].all()  # the scarce source is used whole
    assert not np.array_equal(masks[0], keep_masks(lengths, [3.0, 1.0], seed=2)[0])


def test_two_sources_of_one_name_are_refused():
    with pytest.raises(ValueError, match="two sources share a name"):
        DataConfig(sources=[{"source": "a", "weight": 1}, {"source": "a", "weight": 2}])


@pytest.mark.scale
def test_hugging_face_datasets_saved_to_disk_and_their_parquet_exports_are_sources(tmp_path):
    import datasets

    texts = [f"document {i} about saved datasets" for i in range(40)]
    dataset = datasets.Dataset.from_dict({"text": texts, "label": list(range(40))})
    dataset.shuffle(seed=0).save_to_disk(str(tmp_path / "saved"), num_shards=3)  # indices flattened
    datasets.DatasetDict({"train": dataset.select(range(30)), "test": dataset.select(range(30, 40))}
                         ).save_to_disk(str(tmp_path / "dict"))
    dataset.to_parquet(str(tmp_path / "export.parquet"))

    shuffled = dataset.shuffle(seed=0)["text"]
    assert [d["text"] for d in iter_documents(str(tmp_path / "saved"))] == shuffled  # shards in order
    from_dict = [d["text"] for d in iter_documents(str(tmp_path / "dict"))]
    assert from_dict == texts[30:] + texts[:30]  # every split, in folder order (the pipeline re-splits)
    assert [d["text"] for d in iter_documents(str(tmp_path / "export.parquet"))] == texts

    sources = [{"source": str(tmp_path / "saved"), "weight": 1, "name": "hf"},
               {"source": str(jsonl_source(tmp_path / "web", "web", 40, 1)), "weight": 1, "name": "web"}]
    cfg = Config(data=DataConfig(sources=sources, raw_dir=tmp_path / "out/raw",
                                 report_file=tmp_path / "out/ingest.json"))
    ingest.run(cfg)
    mixed = {d["mixture"] for d in read_documents(documents_path(cfg.data.raw_dir))}
    assert mixed == {"hf", "web"}


def test_a_bad_arrow_file_is_named(tmp_path):
    import pyarrow as pa

    folder = tmp_path / "saved"
    folder.mkdir()
    with pa.ipc.new_stream(folder / "data-00000-of-00001.arrow", pa.schema([("content", pa.string())])) as w:
        w.write_table(pa.table({"content": ["no text column"]}))
    fails(tmp_path, folder, r"data-00000-of-00001.arrow: no 'text' column \(columns: content\)")
    write(folder / "data-00000-of-00001.arrow", b"\xff\xff\xff\xff not arrow at all")
    fails(tmp_path, folder, r"data-00000-of-00001.arrow: not a readable Arrow IPC file")


ESCAPES = "\x1b]52;c;ZXZpbA==\x07\x1b[2J\rforged"


@pytest.mark.security
@pytest.mark.parametrize("name, content", [("b.jsonl", json.dumps({ESCAPES: "a field name"}) + "\n"),
                                           (f"{ESCAPES}.txt", "")], ids=["field name", "file name"])
def test_an_error_quoting_the_corpus_shows_its_escape_sequences_escaped(tmp_path, name, content):
    write(tmp_path / "corpus/good.txt", GOOD)
    write(tmp_path / "corpus" / name, content)
    with pytest.raises(IngestError) as err:
        ingest.run(config(tmp_path, tmp_path / "corpus"))
    assert "\x1b" not in str(err.value) and "\r" not in str(err.value)
    assert r"\x1b]52;c;ZXZpbA==\x07\x1b[2J\rforged" in str(err.value)

"""A corpus in object storage: `data.source: s3://bucket/prefix` against a real S3 server (moto's,
on loopback), with the endpoint and keys only in the environment. The bucket's copy of a local
folder gives the same documents, in the same order, as the folder; bad files are named by URL."""

import json
from pathlib import Path

import pandas as pd
import pytest

from lm_pipeline.config import Config, DataConfig
from lm_pipeline.data.documents import read_documents
from lm_pipeline.data.sources.problems import IngestError
from lm_pipeline.stages import ingest

pytestmark = pytest.mark.scale


def corpus(root: Path) -> Path:
    """txt, jsonl and parquet files, one in a subfolder."""
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("A plain text document about the cat.")
    (root / "b.jsonl").write_text('{"text": "first record", "id": "j1"}\n\n{"text": "second record"}\n')
    pd.DataFrame({"text": ["from parquet", "another row"]}).to_parquet(root / "sub/c.parquet")
    (root / "notes.csv").write_text("not,a,corpus,file")
    return root


def upload(s3, root: Path, bucket: str, prefix: str) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            s3.client().upload_file(str(path), bucket, f"{prefix}/{path.relative_to(root).as_posix()}")


@pytest.fixture
def s3_env(s3, monkeypatch):
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    return s3


def run_ingest(tmp_path: Path, source: str, name: str) -> list[dict]:
    cfg = Config(data=DataConfig(source=source, raw_dir=tmp_path / name / "raw",
                                 report_file=tmp_path / name / "ingest.json"))
    result = ingest.run(cfg)
    return list(read_documents(result.path))


def test_a_bucket_prefix_gives_the_documents_of_the_same_local_folder(tmp_path, s3_env):
    local = corpus(tmp_path / "corpus")
    upload(s3_env, local, "corpus", "same/docs")
    from_folder = run_ingest(tmp_path, str(local), "local")
    from_bucket = run_ingest(tmp_path, "s3://corpus/same/docs", "s3")
    assert [d["text"] for d in from_bucket] == [d["text"] for d in from_folder]
    assert len(from_bucket) == 5
    assert from_bucket[0]["source"] == "s3://corpus/same/docs/a.txt"
    assert from_bucket[1]["id"] == "j1" and from_bucket[2]["id"] == "s3://corpus/same/docs/b.jsonl:3"
    report = json.loads((tmp_path / "s3/ingest.json").read_text())
    assert report["documents"] == 5 and report["skipped"] == 0


def test_a_datasets_folder_saved_to_disk_is_read_from_a_bucket_prefix(tmp_path, s3_env):
    import datasets

    texts = [f"saved document {i}" for i in range(12)]
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "saved"), num_shards=2)
    upload(s3_env, tmp_path / "saved", "corpus", "hf/saved")
    assert [d["text"] for d in run_ingest(tmp_path, "s3://corpus/hf/saved", "hf")] == texts


def test_a_bad_file_in_the_bucket_is_named_by_its_url(tmp_path, s3_env):
    local = corpus(tmp_path / "corpus")
    (local / "sub/bad.txt").write_bytes(b"\x00\x01binary")
    upload(s3_env, local, "corpus", "bad/docs")
    with pytest.raises(IngestError, match=r"s3://corpus/bad/docs/sub/bad.txt: binary file"):
        run_ingest(tmp_path, "s3://corpus/bad/docs", "bad")
    assert not (tmp_path / "bad/raw/documents.jsonl").exists()


def test_an_empty_prefix_and_missing_keys_are_clear_errors(tmp_path, s3_env, monkeypatch):
    with pytest.raises(IngestError, match=r"s3://corpus/nothing/here: no \.txt, \.jsonl, \.parquet"):
        run_ingest(tmp_path, "s3://corpus/nothing/here", "empty")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(IngestError, match=r"s3://corpus/x: cannot list it .*AWS_ENDPOINT_URL"):
        run_ingest(tmp_path, "s3://corpus/x", "unreachable")


def test_processed_data_is_published_once_and_copied_whole_to_each_node(tmp_path, s3_env, monkeypatch):
    from lm_pipeline.data.published import CACHE_ENV, MANIFEST, node_copy, publish
    from lm_pipeline.hashing import tree_sha256

    processed = tmp_path / "processed"
    (processed / "train").mkdir(parents=True)
    (processed / "meta.json").write_text('{"vocab_size": 5}')
    (processed / "train/00000.bin").write_bytes(bytes(range(256)) * 100)
    url, digest = publish(processed, "s3://checkpoints/shards"), tree_sha256(processed)
    assert url == f"s3://checkpoints/shards/{digest}"
    keys = s3_env.keys("checkpoints")
    assert sorted(k for k in keys if k.startswith("shards/")) == sorted(
        f"shards/{digest}/{name}" for name in (MANIFEST, "meta.json", "train/00000.bin"))
    marker = s3_env.client().head_object(Bucket="checkpoints", Key=f"shards/{digest}/{MANIFEST}")
    assert publish(processed, "s3://checkpoints/shards") == url  # reused, not uploaded again
    again = s3_env.client().head_object(Bucket="checkpoints", Key=f"shards/{digest}/{MANIFEST}")
    assert again["LastModified"] == marker["LastModified"] and again["ETag"] == marker["ETag"]

    copies = []
    for node in ("node-a", "node-b"):  # each node its own cache: nothing shared but the bucket
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / node))
        copies.append(node_copy(url))
    assert [c.parent.name for c in copies] == ["node-a", "node-b"]
    assert all(tree_sha256(c) == digest and not (c / MANIFEST).exists() for c in copies)
    assert (tmp_path / "node-a").stat().st_mode & 0o777 == 0o700  # private to this user

    s3_env.client().put_object(Bucket="checkpoints", Key=f"shards/{digest}/meta.json",
                               Body=b'{"vocab_size": 6}')
    assert node_copy(url) == copies[1]  # a node's checked copy is reused, not fetched again
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "node-c"))
    with pytest.raises(OSError, match=r"/meta.json: not the file the manifest lists .*delete s3://"):
        node_copy(url)
    assert [p.name for p in (tmp_path / "node-c").iterdir()] == [f"{digest}.lock"]  # nothing half-made
    with pytest.raises(FileNotFoundError, match=r"s3://checkpoints/shards/0+: no complete copy"):
        node_copy("s3://checkpoints/shards/" + "0" * 64)


@pytest.mark.security
def test_only_the_manifests_files_are_fetched_and_none_outside_the_cache(tmp_path, s3_env, monkeypatch):
    import json as jsonlib

    from lm_pipeline.data.published import CACHE_ENV, MANIFEST, node_copy, publish

    processed = tmp_path / "processed"
    processed.mkdir()
    (processed / "meta.json").write_text("{}")
    url = publish(processed, "s3://checkpoints/climb")
    digest = url.rsplit("/", 1)[1]
    client = s3_env.client()
    client.put_object(Bucket="checkpoints", Key=f"climb/{digest}/../../../escaped.txt", Body=b"x")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    assert sorted(p.name for p in node_copy(url).iterdir()) == ["meta.json"]  # the stray key is not fetched

    key = f"climb/{digest}/{MANIFEST}"
    manifest = jsonlib.loads(client.get_object(Bucket="checkpoints", Key=key)["Body"].read())
    manifest["files"]["../../../escaped.txt"] = {"bytes": 1, "sha256": "0" * 64}
    client.put_object(Bucket="checkpoints", Key=key, Body=jsonlib.dumps(manifest))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "other-cache"))
    with pytest.raises(OSError, match=r"file '\.\./\.\./\.\./escaped.txt' would be written outside"):
        node_copy(url)
    assert not list(tmp_path.rglob("escaped.txt"))

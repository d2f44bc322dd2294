"""Preprocessing as Ray Data on a two-node cluster writes what the single-machine path writes."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lm_pipeline.data.documents import DOCUMENTS_FILE
from lm_pipeline.data.encode import RAY_BATCH_DOCUMENTS

LMP = str(Path(sys.executable).parent / "lmp")


def write_corpus(raw: Path, documents: int) -> None:
    """Varied documents, some repeated (dropped as duplicates), some with characters only they
    have (<unk> for a character tokenizer when they land outside the training split)."""
    rng = random.Random(0)
    words = ["model", "token", "shard", "ray", "node", "stream", "batch", "corpus", "é", "naïve"]
    texts = [" ".join(rng.choices(words, k=rng.randint(5, 60))) + f" {chr(0x4E00 + i)}."
             for i in range(documents)]
    texts += [texts[i] for i in range(0, documents, 50)]
    raw.mkdir(parents=True)
    (raw / DOCUMENTS_FILE).write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n"
                                              for i, t in enumerate(texts)))


def preprocess(root: Path, name: str, engine: str, env: dict) -> str:
    params = {"filter": {"output_dir": "raw"},  # the documents preprocess reads
              "data": {"processed_dir": name, "shard_tokens": 4096, "preprocess_on": engine},
              "validate": {"report_dir": "validation", "required": False}, "tokenizer": {"kind": "char"}}
    (root / f"{name}.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([LMP, "--params", f"{name}.yaml", "preprocess"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.scale
def test_ray_data_on_two_nodes_writes_the_shards_of_the_local_path(tmp_path, two_node_cluster):
    write_corpus(tmp_path / "raw", documents=3 * RAY_BATCH_DOCUMENTS)  # several Ray tasks
    here = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}

    preprocess(tmp_path, "local", "local", here)
    log = preprocess(tmp_path, "ray", "ray", here | {"RAY_ADDRESS": two_node_cluster.address})

    assert "encoding on Ray Data (2.0 CPUs)" in log  # both nodes' CPUs
    local, ray = files(tmp_path / "local"), files(tmp_path / "ray")
    assert len([name for name in local if name.startswith("train/")]) > 3  # shard boundaries crossed
    assert local.keys() == ray.keys()
    assert [name for name in local if local[name] != ray[name]] == []  # token for token
    meta = json.loads(local["meta.json"])
    for split in ("train", "val", "test"):  # a character tokenizer: a token a character, and the end
        assert meta["tokens"][split] == meta["characters"][split] + meta["documents"][split]
    assert meta["duplicates_dropped"] == len(range(0, 3 * RAY_BATCH_DOCUMENTS, 50))
    assert meta["unknown"]["test"] > 0 and meta["unknown_examples"]  # counted the same way on Ray


def filter_on(root: Path, name: str, engine: str, env: dict) -> str:
    params = {"data": {"raw_dir": "raw", "preprocess_on": engine},
              "validate": {"report_dir": "validation", "required": False},
              "filter": {"output_dir": f"{name}-filtered", "report_dir": f"{name}-report",
                         "steps": ["language", "c4", "pii", "exact_dedup", "near_dedup"]}}
    (root / f"{name}.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([LMP, "--params", f"{name}.yaml", "filter"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


@pytest.mark.scale
@pytest.mark.filter
def test_filtering_on_ray_data_writes_byte_for_byte_what_the_local_path_writes(tmp_path, two_node_cluster):
    from lm_pipeline.stages.filter import RAY_BATCH_DOCUMENTS as FILTER_BATCH

    write_corpus(tmp_path / "raw", documents=3 * FILTER_BATCH)  # several Ray tasks
    with open(tmp_path / "raw" / DOCUMENTS_FILE, "a") as f:  # personal data, and prose C4 keeps
        for i in range(45):  # the last five repeat the first
            text = f"Please write to person{i % 40}@example.com about the weather in the town today. " * 6
            f.write(json.dumps({"id": f"p{i}", "text": text}) + "\n")
    here = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}

    filter_on(tmp_path, "local", "local", here)
    log = filter_on(tmp_path, "ray", "ray", here | {"RAY_ADDRESS": two_node_cluster.address})

    assert "filter: screening on Ray Data (2.0 CPUs)" in log
    local, ray = files(tmp_path / "local-filtered"), files(tmp_path / "ray-filtered")
    assert local == ray
    removed = [json.loads(line) for line in local["removed.jsonl"].decode().splitlines()]
    assert {d["filter"] for d in removed} == {"language", "c4", "exact_dedup"}
    assert len(removed) > 3 * FILTER_BATCH // 2
    assert b"<EMAIL>" in local["documents.jsonl"] and b"@example.com" not in local["documents.jsonl"]

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
    params = {"data": {"raw_dir": "raw", "processed_dir": name, "shard_tokens": 4096,
                       "preprocess_on": engine},
              "validate": {"report_dir": "validation"}, "tokenizer": {"kind": "char"}}
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
    (tmp_path / "validation").mkdir()
    (tmp_path / "validation/result.json").write_text(json.dumps([{"success": True}]))
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

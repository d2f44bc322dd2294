"""Preprocessing at scale, side by side: the preprocess stage against a naive loop, on generated
corpora of about 10 MB, 100 MB and 1 GB. Adds its keys to benchmarks/results.json.

    make bench-preprocess        # or: python -m benchmarks.preprocess [--sizes 10 100 1000] [--ray]

Each measurement runs in a fresh process, so its peak RSS (ru_maxrss) is its own.
- stage: `lmp preprocess` as the pipeline runs it: two streaming passes, the tokenizer trained on
  (a sample of) the training split, batches encoded on all cores, fixed-size shards.
- naive: what one writes first: read every document into a list, dedupe, split, train the same
  tokenizer on the training texts, then `tokenizer.encode(text)` one document at a time and
  write each split's ids at the end. Run at 10 MB and 100 MB only (1 GB would need ~10 GB RAM).
- ray (with --ray): the stage with data.preprocess_on: ray, on a local Ray instance of this
  machine's CPUs (a one-node cluster, started inside the measurement, as a run without a cluster
  would), and `tokenizer`: the stage's serial part alone (the sample pass and tokenizer training,
  which stay on the driver). What a cluster buys is estimated from these: a run on N such nodes
  takes about serial + (ray - serial) / N, as long as the driver keeps up: `driver` times what
  it does alone (dropping duplicates, writing shards from batches encoded beforehand; see
  docs/scale.md).

Keys: preprocess_vs_naive_ratio_{10,100}mb (throughput, stage / naive), preprocess_mb_per_s_<size>,
preprocess_peak_rss_mb_<size>, naive_mb_per_s_<size>, naive_peak_rss_mb_<size>; with --ray:
ray_data_vs_local_preprocess_ratio_<size> (throughput, Ray Data / local), ray_data_mb_per_s_<size>,
preprocess_serial_seconds_<size>, ray_data_encode_mb_per_s_per_node_<size>,
ray_data_driver_mb_per_s_<size>, ray_data_node_cpus.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import markdown_table, save_results

NAIVE_UP_TO_MB = 100
SIZES = {10: "10mb", 100: "100mb", 1000: "1gb"}


def generate_corpus(path: Path, megabytes: int, seed: int = 0) -> None:
    """Documents of 100-2000 words drawn from a Zipf-like vocabulary of made-up words, written
    as ingest writes them (data/raw/documents.jsonl), in chunks so generation stays small."""
    import numpy as np

    rng = np.random.default_rng(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "the", "and", "of", "in", "to"]
    vocab = np.array(["".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(30_000)])
    weights = 1 / np.arange(1, len(vocab) + 1)
    weights /= weights.sum()
    target, written, doc = megabytes * 1_000_000, 0, 0
    with open(path, "w") as f:
        while written < target:
            lengths = rng.integers(100, 2000, size=256)
            words = vocab[rng.choice(len(vocab), size=int(lengths.sum()), p=weights)]
            for piece in np.split(words, np.cumsum(lengths)[:-1]):
                line = json.dumps({"id": f"g{doc}", "text": " ".join(piece), "source": "generated"})
                f.write(line + "\n")
                written += len(line) + 1
                doc += 1


def measure(kind: str, raw_dir: Path, out_dir: Path) -> dict:
    """Run one kind in a fresh process; its wall time and peak RSS."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.preprocess", "--child", kind,
                           str(raw_dir), str(out_dir)], check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child(kind: str, raw_dir: Path, out_dir: Path) -> None:
    from lm_pipeline.config import Config

    engine = "ray" if kind == "ray" else "local"
    cfg = Config.model_validate({"data": {"raw_dir": str(raw_dir), "processed_dir": str(out_dir),
                                          "preprocess_on": engine}})
    start = time.perf_counter()
    if kind == "driver":
        seconds = driver_seconds(cfg)
    else:
        {"stage": run_stage, "ray": run_stage, "naive": run_naive, "tokenizer": run_tokenizer}[kind](cfg)
        seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb}))


def run_stage(cfg) -> None:
    from lm_pipeline.stages import preprocess

    preprocess.run(cfg)


def run_tokenizer(cfg) -> None:
    from lm_pipeline.data.documents import documents_path
    from lm_pipeline.data.tokenized import tokenizer_sample
    from lm_pipeline.data.tokenizer import train_tokenizer

    train_tokenizer(tokenizer_sample(documents_path(cfg.data.raw_dir), cfg), cfg.tokenizer)


def driver_seconds(cfg) -> float:
    """What the Ray driver does per corpus, timed alone: take encoded batches in order (made
    beforehand, not timed), drop duplicates, write the shards. It bounds what nodes can add."""
    from tokenizers import Tokenizer

    from lm_pipeline.data.documents import documents_path
    from lm_pipeline.data.encode import local_batches
    from lm_pipeline.data.processed import token_dtype
    from lm_pipeline.data.shards import ShardWriter
    from lm_pipeline.data.tokenized import tokenizer_sample, write_shards
    from lm_pipeline.data.tokenizer import train_tokenizer

    source = documents_path(cfg.data.raw_dir)
    tokenizer: Tokenizer = train_tokenizer(tokenizer_sample(source, cfg), cfg.tokenizer)
    dtype = token_dtype(tokenizer.get_vocab_size())
    batches = list(local_batches(source, tokenizer, cfg, dtype))
    start = time.perf_counter()
    writers = {name: ShardWriter(cfg.data.processed_dir / name, dtype, cfg.data.shard_tokens)
               for name in ("train", "val", "test")}
    write_shards(batches, tokenizer, writers)
    for writer in writers.values():
        writer.close()
    return time.perf_counter() - start


def run_naive(cfg) -> None:
    import numpy as np

    from lm_pipeline.data.documents import documents_path, read_documents
    from lm_pipeline.data.split import assign_split
    from lm_pipeline.data.tokenizer import eot_id, train_tokenizer

    texts = list(dict.fromkeys(doc["text"] for doc in read_documents(documents_path(cfg.data.raw_dir))))
    splits = {"train": [], "val": [], "test": []}
    for text in texts:
        splits[assign_split(text, cfg.split)].append(text)
    tokenizer = train_tokenizer(splits["train"], cfg.tokenizer)
    eot = eot_id(tokenizer)
    cfg.data.processed_dir.mkdir(parents=True)
    for name, split_texts in splits.items():
        ids: list[int] = []
        for text in split_texts:
            ids.extend(tokenizer.encode(text).ids)
            ids.append(eot)
        np.array(ids, dtype=np.uint16).tofile(cfg.data.processed_dir / f"{name}.bin")


def ray_results(label: str, size_mb: float, local: dict, ray: dict, serial: dict, driver: dict) -> dict:
    """Ray Data against the local path, the encode throughput one node adds, and the driver's cap."""
    import os

    encode_seconds = ray["seconds"] - serial["seconds"]
    return {f"ray_data_vs_local_preprocess_ratio_{label}": local["seconds"] / ray["seconds"],
            f"ray_data_mb_per_s_{label}": size_mb / ray["seconds"],
            f"preprocess_serial_seconds_{label}": serial["seconds"],
            f"ray_data_encode_mb_per_s_per_node_{label}": size_mb / encode_seconds,
            f"ray_data_driver_mb_per_s_{label}": size_mb / driver["seconds"],
            "ray_data_node_cpus": os.cpu_count()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), choices=list(SIZES),
                        help="corpus sizes in MB (default: %(default)s)")
    parser.add_argument("--ray", action="store_true",
                        help="also run the stage on Ray Data (a local Ray instance of this machine's CPUs)")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "RAW", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return
    results = {}
    for megabytes in args.sizes:
        label = SIZES[megabytes]
        with tempfile.TemporaryDirectory(prefix="lmp-bench-pre-") as tmp:
            raw = Path(tmp) / "raw"
            raw.mkdir()
            print(f"generating {megabytes} MB ...", flush=True)
            generate_corpus(raw / "documents.jsonl", megabytes)
            size_mb = (raw / "documents.jsonl").stat().st_size / 1e6
            stage = measure("stage", raw, Path(tmp) / "stage")
            results[f"preprocess_mb_per_s_{label}"] = size_mb / stage["seconds"]
            results[f"preprocess_peak_rss_mb_{label}"] = stage["peak_rss_mb"]
            if megabytes <= NAIVE_UP_TO_MB:
                naive = measure("naive", raw, Path(tmp) / "naive")
                results[f"naive_mb_per_s_{label}"] = size_mb / naive["seconds"]
                results[f"naive_peak_rss_mb_{label}"] = naive["peak_rss_mb"]
                results[f"preprocess_vs_naive_ratio_{label}"] = naive["seconds"] / stage["seconds"]
            if args.ray:
                results.update(ray_results(label, size_mb, stage, *(
                    measure(kind, raw, Path(tmp) / kind) for kind in ("ray", "tokenizer", "driver"))))
            print(markdown_table({k: v for k, v in results.items() if k.endswith(label)}), flush=True)
    if {"10mb", "1gb"} <= {SIZES[m] for m in args.sizes}:
        results["preprocess_peak_rss_1gb_over_10mb"] = (results["preprocess_peak_rss_mb_1gb"]
                                                        / results["preprocess_peak_rss_mb_10mb"])
    save_results(results)


if __name__ == "__main__":
    main()

"""Checkpoints to object storage against a local folder: one checkpoint folder persisted the way
Ray Train persists one (`pyarrow.fs.copy_files`), to a local folder and to an S3 server on loopback.

    python -m benchmarks.object_storage

The checkpoint is the default model's (params.yaml's model.*, vocabulary 4,096) weights and AdamW
state. The S3 server is moto's (MinIO's is not packaged for this machine): an in-memory Python
server on the same machine, so the ratio says what the S3 protocol path costs here, not what a
real MinIO or AWS over a network would. Keys: s3_vs_local_checkpoint_seconds_ratio (median S3
seconds / median local seconds, 5 copies each, alternating), checkpoint_s3_seconds,
checkpoint_local_seconds, checkpoint_mb.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import save_results

REPEATS = 5


def write_checkpoint(folder: Path) -> int:
    """The default model's weights and optimizer state after one step; returns its bytes."""
    import torch

    from lm_pipeline.config import Config
    from lm_pipeline.model.transformer import GPT, GPTConfig

    m = Config().model
    model = GPT(GPTConfig(vocab_size=4096, block_size=m.block_size, n_layer=m.n_layer, n_head=m.n_head,
                          n_embd=m.n_embd))
    optimizer = torch.optim.AdamW(model.parameters())
    x = torch.randint(0, 4096, (2, m.block_size))
    model(x, x)[1].backward()
    optimizer.step()
    folder.mkdir(parents=True)
    torch.save(model.state_dict(), folder / "model.pt")
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    return sum(f.stat().st_size for f in folder.iterdir())


def timed_copy(source: Path, destination: str, filesystem) -> float:
    from pyarrow import fs

    start = time.perf_counter()
    filesystem.create_dir(destination, recursive=True)
    fs.copy_files(str(source), destination, source_filesystem=fs.LocalFileSystem(),
                  destination_filesystem=filesystem)
    return time.perf_counter() - start


def main() -> None:
    from pyarrow import fs

    from tests.services import s3_server

    with tempfile.TemporaryDirectory(prefix="lmp-bench-s3-") as tmp:
        work = Path(tmp)
        size = write_checkpoint(work / "checkpoint")
        with s3_server(work / "s3.log", ("checkpoints",)) as server:
            env = server.env()
            s3 = fs.S3FileSystem(endpoint_override=server.endpoint, access_key=env["AWS_ACCESS_KEY_ID"],
                                 secret_key=env["AWS_SECRET_ACCESS_KEY"], region=env["AWS_DEFAULT_REGION"])
            local, remote = [], []
            for i in range(REPEATS):  # alternating, so drift on a noisy machine hits both alike
                local.append(timed_copy(work / "checkpoint", str(work / f"local/ckpt_{i}"),
                                        fs.LocalFileSystem()))
                remote.append(timed_copy(work / "checkpoint", f"checkpoints/run/ckpt_{i}", s3))
    results = {"checkpoint_mb": size / 1e6, "checkpoint_local_seconds": statistics.median(local),
               "checkpoint_s3_seconds": statistics.median(remote)}
    results["s3_vs_local_checkpoint_seconds_ratio"] = (results["checkpoint_s3_seconds"]
                                                       / results["checkpoint_local_seconds"])
    save_results(results)


if __name__ == "__main__":
    main()

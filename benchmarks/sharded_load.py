"""Loading a parent under FSDP: each rank's peak resident memory while it loads its shard
(model/sharded.py), against one rank loading the whole parent (what DDP and one worker do).

Two parents of about 200M parameters, with random weights: the built-in GPT in the layout
`lmp train` exports (GPT-2's, one model.safetensors), and a Llama in a sharded Hugging Face folder
(several files and their index, as `hf download` leaves a large model). Each load runs in a fresh
process, one per rank, and what it reports is what the load added to the process's peak: the peak
after it less the resident size before it (imports, the model family's code and the process group
are there before), once every weight has been read (transformers maps the files and reads a page
when a weight is first used: the first step would read them all).
Prints the peaks, the bytes each rank read, and `fsdp_sharded_load_peak_rss_ratio`: the larger
rank's peak over the whole load's, for the parent where that is highest.
tests/integration/test_sharded_load.py holds the ratio under 0.65 with it.

    python -m benchmarks.sharded_load     # about a minute on 2 cores, 4 GiB of memory at most
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import run_ranks, save_results

VOCAB = 16384
PARENTS = {  # the model section of each, and (hf) the parent's config.json
    "gpt": ({"n_layer": 16, "n_head": 16, "n_embd": 1024, "block_size": 256}, None),  # 219M
    "llama": ({"backend": "hf", "block_size": 256},  # 212M, in 4 files
              {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": 1024, "intermediate_size": 2816,
               "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 4,
               "max_position_embeddings": 256, "tie_word_embeddings": False}),
}
FILES = 4  # a sharded folder's files


def config(model: dict, world: int):
    from lm_pipeline.config import Config

    return Config.model_validate({"model": model, "train": {
        "num_workers": world, "strategy": "fsdp" if world > 1 else "ddp",
        "init_from": "hf:parent" if model.get("backend") == "hf" else "parent"}})


def write_parent(folder: Path, name: str) -> int:
    """One of PARENTS with random weights, written a file at a time; its parameter count."""
    import torch
    from safetensors.torch import save_file

    from lm_pipeline.io import write_json
    from lm_pipeline.model.folder import CONFIG_FILE, WEIGHTS_FILE
    from lm_pipeline.model.hf_format import to_gpt2_state_dict
    from lm_pipeline.model.sharded import INDEX_FILE, meta_model

    model, hf_config = PARENTS[name]
    folder.mkdir(parents=True, exist_ok=True)
    if hf_config:
        write_json(folder / CONFIG_FILE, hf_config)
    cfg = config(model, 1)
    shapes = meta_model(cfg.model, cfg.lora, VOCAB, 0, folder if hf_config else None).state_dict()
    if hf_config:  # the transformers model's own names
        shapes = {k.removeprefix("hf."): t for k, t in shapes.items()}
    else:
        shapes = to_gpt2_state_dict(shapes)
    names = list(shapes)
    files = [names[i::FILES] for i in range(FILES)] if hf_config else [names]
    generator = torch.Generator().manual_seed(0)
    weight_map = {}
    for i, part in enumerate(files):
        file = f"model-{i + 1:05d}-of-{FILES:05d}.safetensors" if hf_config else WEIGHTS_FILE
        save_file({n: torch.randn(shapes[n].shape, generator=generator) * 0.02 for n in part},
                  str(folder / file), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, file)
    if hf_config:
        write_json(folder / INDEX_FILE, {"metadata": {}, "weight_map": weight_map})
    return sum(t.numel() for t in shapes.values())


def rank_peak(rank: int, world: int, port: int, parent: Path, name: str) -> dict[str, int]:
    """Load the parent as one rank of `world` (sharded when world > 1): the peak bytes it added
    and the bytes it read."""
    import torch

    from lm_pipeline.model.backends import build_model
    from lm_pipeline.model.sharded import load_parent_shards, meta_model
    from lm_pipeline.training.parallel import parallelize
    from lm_pipeline.training.plan import proc_status, reset_peak

    torch.set_num_threads(1)
    cfg = config(PARENTS[name][0], world)
    if world > 1:
        torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                             world_size=world)
        torch.distributed.barrier()  # both ranks loaded their imports before either measures
    meta_model(cfg.model, cfg.lora, VOCAB, 0, parent if cfg.model.backend == "hf" else None)  # imports
    before = reset_peak()
    if world > 1:
        sharded = parallelize(meta_model(cfg.model, cfg.lora, VOCAB, 0, parent), "fsdp", torch.device("cpu"))
        read = load_parent_shards(sharded, parent, cfg.train.seed)
        torch.distributed.destroy_process_group()
    else:
        whole = build_model(cfg.model, cfg.lora, VOCAB, 0, parent)
        # transformers maps the files and reads a page when a weight is first used, as the first
        # step would use every weight: that is when the load has cost its memory
        sum(float(p.detach().sum()) for p in whole.parameters())
        read = weights_bytes(parent)
    return {"peak": proc_status("VmHWM") - before, "read": read}


def weights_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def measure(name: str) -> dict:
    """One parent's whole load peak, its sharded ranks' peaks and reads, and their ratio."""
    with tempfile.TemporaryDirectory() as tmp:
        parent = Path(tmp) / name
        subprocess.run([sys.executable, "-m", "benchmarks.sharded_load", "--write", str(parent),
                        "--name", name], check=True)  # its memory is not this process's
        args = ["--parent", str(parent), "--name", name]
        whole = run_ranks("benchmarks.sharded_load", 1, args)[0]
        ranks = run_ranks("benchmarks.sharded_load", 2, args)
        file_bytes = weights_bytes(parent)
    sharded = max(r["peak"] for r in ranks)
    return {"whole_peak": whole["peak"], "sharded_peak": sharded, "file_bytes": file_bytes,
            "read": [r["read"] for r in ranks], "ratio": sharded / whole["peak"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--parent", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--name", choices=list(PARENTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.write:
        print(f"{args.name} parent: {write_parent(args.write, args.name) / 1e6:.0f}M parameters", flush=True)
        return
    if args.rank is not None:  # one rank of a measurement
        Path(args.out).write_text(json.dumps(rank_peak(args.rank, args.world, args.port, args.parent,
                                                       args.name)))
        return
    rows = {name: measure(name) for name in PARENTS}
    for name, row in rows.items():
        mib = {key: f"{value / 2**20:,.0f}" for key, value in row.items() if key not in ("read", "ratio")}
        print(f"{name}: weights {mib['file_bytes']} MiB; whole load (1 rank) peak +{mib['whole_peak']} MiB; "
              f"sharded (2 FSDP ranks) peak +{mib['sharded_peak']} MiB per rank ({row['ratio']:.2f}x), "
              f"read {', '.join(f'{r / 2**20:,.0f}' for r in row['read'])} MiB")
    save_results({"fsdp_sharded_load_peak_rss_ratio": max(row["ratio"] for row in rows.values())})


if __name__ == "__main__":
    main()

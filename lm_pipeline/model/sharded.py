"""Parents that load sharded (`train.strategy: fsdp`): every rank builds the network on the meta
device, FSDP shards it, and each rank reads from the parent's safetensors only the rows of its own
shard. No rank ever holds the whole model: a 7B parent on 8 ranks of one node costs one copy of
its weights in all, not eight. DDP and one worker load the whole parent (backends.build_model).

FSDP2 shards every parameter along its first dimension as torch.chunk splits it: rank r of w holds
rows [r*c, (r+1)*c) of n, c = ceil(n / w). The rows are read with positioned reads, not through a
memory map (mapped pages count toward a process's resident memory, and safetensors maps the whole
file), and cast to the parameter's dtype (fp32) as the whole-model path casts them.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from lm_pipeline.config import LoraConfig, ModelConfig
from lm_pipeline.model import hf
from lm_pipeline.model import lora as lora_adapters
from lm_pipeline.model.backends import build_model
from lm_pipeline.model.folder import WEIGHTS_FILE
from lm_pipeline.model.hf_format import gpt2_name, is_gpt2_layout, stored_transposed
from lm_pipeline.model.transformer import GPT

INDEX_FILE = "model.safetensors.index.json"  # a sharded (multi-file) folder's name -> file map
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit
BLOCK_BYTES = 64 * 2**20  # the most a column read holds at once


class ShardedLoadError(ValueError):
    """A parent whose files cannot fill the sharded model: names the file or the tensor."""


@dataclass(frozen=True)
class Stored:
    """One tensor in a safetensors file: where its bytes are and what they hold."""
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # of its first byte, from the start of the file

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of the first dimension: one positioned read."""
        data = torch.empty((stop - start) * self.row_bytes, dtype=torch.uint8)
        with open(self.file, "rb") as f:
            f.seek(self.offset + start * self.row_bytes)
            if f.readinto(data.numpy()) != data.numel():
                raise ShardedLoadError(f"{self.file}: ends inside a tensor (truncated?)")
        return data.view(self.dtype).view(stop - start, *self.shape[1:])

    def columns(self, start: int, stop: int) -> torch.Tensor:
        """Columns [start, stop) of a matrix, read a block of rows at a time."""
        block = max(1, BLOCK_BYTES // max(self.row_bytes, 1))
        parts = [self.rows(r, min(r + block, self.shape[0]))[:, start:stop].clone()
                 for r in range(0, self.shape[0], block)]
        return torch.cat(parts) if parts else torch.empty(0, stop - start, dtype=self.dtype)


def read_header(path: Path) -> dict[str, Stored]:
    """A safetensors file's table of tensors, each checked against the file's size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
            raise ShardedLoadError(f"{path}: not a safetensors file (header of {length} bytes)")
        try:
            header = json.loads(f.read(length))
            return {name: stored(path, name, entry, 8 + length, size)
                    for name, entry in header.items() if name != "__metadata__"}
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ShardedLoadError(f"{path}: not a safetensors file ({err})") from err


def stored(path: Path, name: str, entry: dict, data_start: int, size: int) -> Stored:
    """One header entry, if its type is a float type and its bytes fit its shape and the file."""
    dtype, shape, (begin, end) = DTYPES.get(entry["dtype"]), tuple(entry["shape"]), entry["data_offsets"]
    if dtype is None:
        raise ShardedLoadError(f"{path}: tensor {name} is {entry['dtype']}, not a float type")
    fits = all(isinstance(n, int) and n >= 0 for n in shape) and 0 <= begin <= end <= size - data_start
    if not fits or end - begin != math.prod(shape) * dtype.itemsize:
        raise ShardedLoadError(f"{path}: tensor {name}'s offsets {begin}..{end} do not fit "
                               f"its shape {list(shape)} or the file")
    return Stored(path, dtype, shape, data_start + begin)


def stored_tensors(folder: Path) -> dict[str, Stored]:
    """Every tensor of a model folder's weights: model.safetensors, or the files a sharded
    folder's index names (plain names in the folder: the index cannot point outside it)."""
    folder = Path(folder)
    if not (folder / INDEX_FILE).is_file():
        return read_header(folder / WEIGHTS_FILE)
    weight_map = json.loads((folder / INDEX_FILE).read_text())["weight_map"]
    tensors = {}
    for file in sorted(set(weight_map.values())):
        if os.path.basename(file) != file or not file.endswith(".safetensors"):
            raise ShardedLoadError(f"{folder / INDEX_FILE}: {file!r} is not a .safetensors file "
                                   "in the folder")
        tensors |= read_header(folder / file)
    return tensors


def meta_model(model: ModelConfig, lora: LoraConfig, vocab_size: int, eot: int,
               parent: Path | None = None) -> nn.Module:
    """The network a run trains with its parameters on the meta device (any size: each is
    allocated uninitialised and moved there at once, so one is held at a time) and its buffers real
    (they are small, and an hf model computes some, like rotary frequencies, at construction): an
    hf parent's architecture from its config.json, anything else from the model section (which
    preflight checks against a parent)."""
    with parameters_on_meta():
        if not (parent and model.backend == "hf"):
            return build_model(model, lora, vocab_size, eot)
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(parent), local_files_only=True, trust_remote_code=False)
        network = hf.from_config(config, model.block_size)
        return lora_adapters.add_lora(network, lora) if lora.r else network


@contextmanager
def parameters_on_meta():
    """Every parameter registered inside goes to the meta device (buffers stay where they are).
    One already there is kept as it is, so a weight tied by assignment stays tied (accelerate's
    init_empty_weights wraps it anew, and the built-in GPT's head came untied)."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def shard_rows(n: int, rank: int, world: int) -> tuple[int, int]:
    """The rows of n that FSDP2 gives rank r of w (torch.chunk's split: the last ranks may get
    fewer, or none)."""
    chunk = -(-n // world)
    start = min(rank * chunk, n)
    return start, min(start + chunk, n)


def load_parent_shards(model: nn.Module, parent: Path, seed: int) -> int:
    """Fill a model that meta_model built and fully_shard sharded: each rank its own rows of the
    parent's weights, and of the LoRA adapters' starting values. Returns the bytes it read."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}  # to_empty drops them
    mesh = next(iter(model.parameters())).device_mesh
    model.to_empty(device=mesh.device_type)
    source, read = parent_source(model, stored_tensors(parent), parent), 0
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
        for names, param in parameter_names(model):
            local = param.to_local()
            start, stop = shard_rows(param.shape[0], mesh.get_local_rank(), mesh.size())
            if local.shape[0] != stop - start:  # FSDP split it otherwise than this file says
                raise ShardedLoadError(f"{names[0]}: this rank holds {local.shape[0]} rows, "
                                       f"not {start}..{stop}")
            if lora_adapters.is_adapter(names[0]):
                rows = lora_adapters.adapter_value(names[0], param.shape, seed)[start:stop]
            else:
                rows = source(names, param.shape, start, stop)
                read += rows.numel() * rows.element_size()
            local.copy_(rows)
    return read


def parameter_names(model: nn.Module) -> list[tuple[list[str], nn.Parameter]]:
    """Each parameter once, with every name it has (a tied one has two) as the model's state dict
    names it: a layer wrapped for activation checkpointing keeps its own names there."""
    params = {id(p): p for p in model.parameters()}
    names = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in params:
            names.setdefault(id(tensor), []).append(name)
    return [(names[key], params[key]) for key in names]


def parent_source(model: nn.Module, stored: dict[str, Stored], parent: Path):
    """A reader (names, shape, start, stop) -> rows of one of the model's parameters from the
    parent's files, under the file's own name for one of its names (the built-in GPT: GPT-2's,
    whose Conv1D weights are stored transposed; an hf model: its own, or without its base model's
    prefix; either without the `base_layer` that LoRA puts between a layer and its weight)."""
    gpt2 = isinstance(model, GPT) and is_gpt2_layout(stored)
    prefix = "" if isinstance(model, GPT) else model.hf.base_model_prefix + "."

    def candidates(names: list[str]):
        for name in names:
            name = name.replace(".base_layer.", ".")
            if gpt2:
                yield gpt2_name(name), stored_transposed(name)
            else:
                name = name.removeprefix("hf.")
                yield name, False
                yield name.removeprefix(prefix), False

    def read(names: list[str], shape: torch.Size, start: int, stop: int) -> torch.Tensor:
        for file_name, transposed in candidates(names):
            if file_name in stored:
                tensor = stored[file_name]
                expected = tuple(reversed(shape)) if transposed else tuple(shape)
                if tensor.shape != expected:
                    raise ShardedLoadError(f"{tensor.file}: {file_name} is {list(tensor.shape)}, "
                                           f"the model's {names[0]} is {list(expected)}")
                return tensor.columns(start, stop).t() if transposed else tensor.rows(start, stop)
        raise ShardedLoadError(f"parent {parent}: no tensor for the model's {names[0]} in its safetensors "
                               "(set train.strategy: ddp to load it whole)")
    return read

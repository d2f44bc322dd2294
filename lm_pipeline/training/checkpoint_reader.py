"""Reading a DCP checkpoint without running anything it holds.

DCP keeps two kinds of pickle: the `.metadata` file (plain `pickle.load` in its FileSystemReader)
and every non-tensor value, such as the optimizer's hyperparameters (`torch.load(weights_only=False)`
in its DefaultLoadPlanner). Unpickling calls whatever the pickle names, so a checkpoint written by
someone who can write checkpoint storage would run code in the trainer and the export. Here the
metadata is unpickled with an allow-list of DCP's own classes, and values with
`weights_only=True` (tensors, numbers, strings, containers). Tensors DCP already reads that way.
"""

from __future__ import annotations

import io
import pickle
from pathlib import PosixPath

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import StorageMeta


class UnsafeCheckpoint(pickle.UnpicklingError):
    """A checkpoint that names something other than DCP's own data to unpickle."""


# Everything DCP's metadata pickle names: its dataclasses, where each shard sits, and the plain
# torch values in them (sizes, dtypes, layouts, memory formats). Classes only, looked up by exact
# name, so `PosixPath.touch` or any other attribute of an allowed class is refused.
METADATA_CLASSES = {
    ("torch.distributed.checkpoint.metadata", name): getattr(dcp_metadata, name)
    for name in ("Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
                 "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): _StorageInfo,
    ("torch", "Size"): torch.Size,
    ("torch.serialization", "_get_layout"): torch.serialization._get_layout,  # a name -> torch.strided
    ("pathlib", "PosixPath"): PosixPath,  # where it was saved (storage_meta): a path, never opened
}


class MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in METADATA_CLASSES:
            return METADATA_CLASSES[module, name]
        if module == "torch" and isinstance(dtype := getattr(torch, name, None), torch.dtype):
            return dtype
        raise UnsafeCheckpoint(f"it names {module}.{name}, which is not one of DCP's own classes")


class SafeReader(FileSystemReader):
    def read_metadata(self, *args, **kwargs) -> dcp_metadata.Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as f:
            try:
                metadata = MetadataUnpickler(f).load()
            except UnsafeCheckpoint as err:
                raise UnsafeCheckpoint(f"{PosixPath(path).name}: {err}") from None
        if not isinstance(metadata, dcp_metadata.Metadata):
            raise UnsafeCheckpoint(f"{PosixPath(path).name}: a {type(metadata).__name__}, not DCP's Metadata")
        outside = [i.relative_path for i in metadata.storage_data.values() if not plain_name(i.relative_path)]
        if outside:  # DCP opens folder / relative_path: `../` would read any file of ours
            raise UnsafeCheckpoint(f"{PosixPath(path).name}: {outside[0]!r} is not a file of the checkpoint")
        metadata.storage_meta = metadata.storage_meta or StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def plain_name(name) -> bool:
    return isinstance(name, str) and "/" not in name and name not in ("", ".", "..")


class SafeLoadPlanner(DefaultLoadPlanner):
    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        """DefaultLoadPlanner.load_bytes, with weights_only=True."""
        fqn = read_item.dest_index.fqn
        try:
            loaded = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as err:
            raise UnsafeCheckpoint(f"{fqn}: not plain data ({why_refused(err)})") from None
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], loaded)
        else:
            self.state_dict[fqn] = loaded


def why_refused(err: pickle.UnpicklingError) -> str:
    """torch's own reason, its second paragraph (the first advises weights_only=False, which would
    run it; the last points to the docs)."""
    paragraphs = [p.strip() for p in str(err).split("\n\n") if p.strip()]
    return paragraphs[1] if len(paragraphs) > 2 else str(err)

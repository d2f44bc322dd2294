"""Checkpoint files are checked against their manifest before anything is read, and reading runs
nothing they hold, even when the manifest was rewritten to match."""

import json
import os
import pathlib
import pickle
import shutil

import pytest
import torch

from lm_pipeline.model.transformer import GPT, GPTConfig
from lm_pipeline.training import state as checkpoint_state
from lm_pipeline.training.state import CheckpointError, TrainState

pytestmark = [pytest.mark.security,
              pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")]
NONE = frozenset()


def model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16))
    return model, model.configure_optimizer(1e-3, 0.1, (0.9, 0.95))


@pytest.fixture
def checkpoints(tmp_path):
    """Two checkpoints of different weights, as one rank writes them."""
    for seed, name in ((0, "a"), (1, "b")):
        model, optimizer = model_and_optimizer(seed)
        checkpoint_state.save(tmp_path / name, model, optimizer, TrainState(step=seed + 3), 0, NONE)
    return tmp_path / "a", tmp_path / "b"


def test_an_untouched_checkpoint_loads(checkpoints):
    a, _ = checkpoints
    model, optimizer = model_and_optimizer(7)
    assert checkpoint_state.load(a, model, optimizer, 0, NONE).step == 3
    assert torch.equal(model.lm_head.weight, model_and_optimizer(0)[0].lm_head.weight)


def test_a_shard_swapped_in_from_another_checkpoint_is_refused_at_resume_and_export(checkpoints):
    a, b = checkpoints
    shutil.copy(b / "__0_0.distcp", a / "__0_0.distcp")  # a valid file, other weights
    with pytest.raises(CheckpointError, match=r"__0_0.distcp: sha256 differs from the manifest"):
        checkpoint_state.load(a, *model_and_optimizer(7), 0, NONE)
    with pytest.raises(CheckpointError, match=r"altered after it was written"):
        checkpoint_state.load_weights(a, model_and_optimizer(7)[0])


def test_altered_metadata_is_refused_before_it_is_unpickled(checkpoints):
    a, _ = checkpoints
    with open(a / ".metadata", "ab") as f:
        f.write(b"\x80")
    with pytest.raises(CheckpointError, match=r"\.metadata: sha256 differs"):
        checkpoint_state.load_weights(a, model_and_optimizer(7)[0])


def test_added_and_missing_files_and_a_missing_or_broken_manifest_are_refused(checkpoints):
    a, b = checkpoints
    (a / "extra.pt").write_bytes(b"x")
    (a / "rng_rank0.pt").unlink()
    with pytest.raises(CheckpointError,
                       match=r"extra.pt: not in any manifest; rng_rank0.pt: listed but missing"):
        checkpoint_state.verify(a)
    (b / "manifest_rank0.json").write_text("{")
    with pytest.raises(CheckpointError, match=r"manifest_rank0.json is not valid JSON"):
        checkpoint_state.verify(b)
    (b / "manifest_rank0.json").unlink()
    with pytest.raises(CheckpointError, match=r"no manifest_rank\*.json"):
        checkpoint_state.verify(b)


def test_rank_manifests_together_cover_a_merged_folder(tmp_path, checkpoints):
    """Ray merges each rank's folder into one; every rank's manifest covers its own files."""
    a, _ = checkpoints
    merged = tmp_path / "merged"
    shutil.copytree(a, merged)
    (merged / "rng_rank1.pt").write_bytes(b"rank 1 state")
    (merged / "manifest_rank1.json").write_text(
        f'{{"rng_rank1.pt": "{checkpoint_state.file_sha256(merged / "rng_rank1.pt")}"}}')
    checkpoint_state.verify(merged)
    (merged / "rng_rank1.pt").write_bytes(b"rank 1 stale")
    with pytest.raises(CheckpointError, match=r"rng_rank1.pt: sha256 differs"):
        checkpoint_state.verify(merged)


class RunsCode:
    """What a hostile checkpoint holds: unpickling it calls `touch <marker>`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class RunsCodeThroughAnAllowedClass(RunsCode):
    """The same through a method of a class the metadata may name (pathlib's paths)."""

    def __reduce__(self):
        return pathlib.PosixPath.touch, (pathlib.PosixPath(self.marker),)


def rewrite_manifest(folder):
    """What whoever can write checkpoint storage can do: make the manifest match."""
    manifest = folder / "manifest_rank0.json"
    manifest.write_text(json.dumps({p.name: checkpoint_state.file_sha256(p) for p in folder.iterdir()
                                    if p != manifest}))


@pytest.mark.parametrize("payload", [RunsCode, RunsCodeThroughAnAllowedClass])
def test_a_metadata_pickle_that_would_run_code_is_refused_even_with_a_matching_manifest(
        checkpoints, tmp_path, payload):
    a, _ = checkpoints
    marker = tmp_path / "ran"
    metadata = pickle.loads((a / ".metadata").read_bytes())
    metadata.planner_data = payload(marker)  # any field: the whole file is unpickled
    (a / ".metadata").write_bytes(pickle.dumps(metadata))
    rewrite_manifest(a)
    with pytest.raises(CheckpointError, match=r"\.metadata: .*not one of DCP's own"):
        checkpoint_state.load_weights(a, model_and_optimizer(7)[0])
    with pytest.raises(CheckpointError, match=r"\.metadata"):
        checkpoint_state.load(a, *model_and_optimizer(7), 0, NONE)
    assert not marker.exists()


def test_an_optimizer_value_that_would_run_code_is_refused(tmp_path):
    """DCP saves non-tensor values (the optimizer's hyperparameters) with torch.save and its
    default planner loads them with weights_only=False."""
    marker = tmp_path / "ran"
    model, optimizer = model_and_optimizer(0)
    optimizer.param_groups[0]["lr"] = RunsCode(marker)
    checkpoint_state.save(tmp_path / "a", model, optimizer, TrainState(), 0, NONE)
    with pytest.raises(CheckpointError, match=r"optimizer\.param_groups\.0\.lr"):
        checkpoint_state.load(tmp_path / "a", *model_and_optimizer(7), 0, NONE)
    assert not marker.exists()


def test_a_metadata_naming_a_file_outside_the_checkpoint_is_refused(checkpoints, tmp_path):
    """DCP opens folder / relative_path for every item: `../` would read any file of the trainer's."""
    a, _ = checkpoints
    metadata = pickle.loads((a / ".metadata").read_bytes())
    for info in metadata.storage_data.values():
        info.relative_path = "../b/__0_0.distcp"
    (a / ".metadata").write_bytes(pickle.dumps(metadata))
    rewrite_manifest(a)
    outside = r"\.metadata: '\.\./b/__0_0\.distcp' is not a file of the checkpoint"
    with pytest.raises(CheckpointError, match=outside):
        checkpoint_state.load_weights(a, model_and_optimizer(7)[0])


class OneVisibleGpu:
    """torch.cuda's generator calls as a worker sees them with one GPU visible (this machine has
    none): a device index past the visible ones fails as torch's does."""

    def __init__(self):
        self.states = {0: torch.tensor([0], dtype=torch.uint8)}

    def index(self, device) -> int:
        index = 0 if device in ("cuda", None) else torch.device(device).index if isinstance(device, str) \
            else (device.index if isinstance(device, torch.device) else device)
        if index >= len(self.states):
            raise IndexError("tuple index out of range")
        return index

    def get_rng_state(self, device="cuda"):
        return self.states[self.index(device)].clone()

    def set_rng_state(self, new_state, device="cuda"):
        self.states[self.index(device)] = new_state.clone()


@pytest.mark.filterwarnings("ignore")
def test_a_checkpoint_resumes_where_fewer_gpus_are_visible_than_where_it_was_written(monkeypatch):
    """Each rank saved the generator of every GPU it could see and restored them by index: resumed
    where fewer are visible (CUDA_VISIBLE_DEVICES=0, a Ray worker given one GPU) every attempt
    failed with an IndexError naming nothing. A rank's own device's generator is what it uses."""
    gpu = OneVisibleGpu()
    for name, value in {"is_available": lambda: True, "is_initialized": lambda: True,
                        "device_count": lambda: 1, "current_device": lambda: 0}.items():
        monkeypatch.setattr(torch.cuda, name, value)
    for module in (torch.cuda, torch.cuda.random):
        monkeypatch.setattr(module, "get_rng_state", gpu.get_rng_state)
        monkeypatch.setattr(module, "set_rng_state", gpu.set_rng_state)
    written = checkpoint_state.rng_state()
    mine = torch.tensor([7], dtype=torch.uint8)
    two_gpus = written | {"cuda": [mine, torch.tensor([9], dtype=torch.uint8)]}  # as written before
    checkpoint_state.set_rng_state(two_gpus)
    assert gpu.states[0].tolist() == [7]
    checkpoint_state.set_rng_state(written | {"cuda": torch.tensor([5], dtype=torch.uint8)})
    assert gpu.states[0].tolist() == [5]
    assert isinstance(checkpoint_state.rng_state()["cuda"], torch.Tensor)  # this device's alone


def test_an_altered_checkpoint_in_a_bucket_is_named_by_its_key_not_the_local_copy(checkpoints):
    """A bucket's checkpoint is read through a temporary local copy, gone by the time the error is
    read: the message must name the checkpoint someone can find and remove."""
    import fsspec

    from lm_pipeline.training.checkpoints import StoredCheckpoint
    from lm_pipeline.training.session import as_folder

    a, b = checkpoints
    fs = fsspec.filesystem("memory")
    for file in a.iterdir():
        source = b / file.name if file.name.endswith(".distcp") else file  # a shard swapped in
        fs.pipe(f"/bucket/run/checkpoint_000003/{file.name}", source.read_bytes())
    model, optimizer = model_and_optimizer(7)
    named = r"checkpoint memory://bucket/run/checkpoint_000003 was altered"
    with pytest.raises(CheckpointError, match=named):
        with as_folder(StoredCheckpoint("memory://bucket/run/checkpoint_000003")) as folder:
            checkpoint_state.load(folder, model, optimizer, 0, NONE)

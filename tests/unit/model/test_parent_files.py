"""What a parent model folder may bring into the pipeline: its model files as bytes, nothing a link
points to outside it (a Hugging Face cache's blobs aside), no code."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models

from lm_pipeline.data.tokenizer import EOT
from lm_pipeline.model import parent as parents

pytestmark = pytest.mark.security

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json")


def model_folder(folder: Path) -> Path:
    """A Hugging Face model folder as `hf download` leaves it, small enough to make in a test."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    save_file({"wte": np.zeros((2, 2), dtype=np.float32)}, str(folder / "model.safetensors"))
    Tokenizer(models.WordLevel({EOT: 0, "a": 1}, unk_token=EOT)).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": EOT}))
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": EOT}))
    return folder


def secret(tmp_path: Path) -> Path:
    path = tmp_path / "home/.ssh/id_ed25519"
    path.parent.mkdir(parents=True)
    path.write_text("-----BEGIN OPENSSH PRIVATE KEY-----")
    return path


@pytest.mark.parametrize("prefix", ["hf:", ""], ids=["hf folder", "local folder"])
@pytest.mark.parametrize("name", ["special_tokens_map.json", "model.safetensors"])
def test_a_file_linked_from_outside_the_folder_is_refused_naming_it(tmp_path, prefix, name):
    folder = model_folder(tmp_path / "model")
    (folder / name).unlink()
    (folder / name).symlink_to(secret(tmp_path))
    with pytest.raises(parents.ParentError, match=rf"{prefix}.*model: {name} links to "
                       rf"{tmp_path}/home/.ssh/id_ed25519, outside the model folder {folder}"):
        parents.fetch(f"{prefix}{folder}", tmp_path / "dest")
    assert not any("PRIVATE KEY" in p.read_text(errors="replace") for p in tmp_path.rglob("dest/*"))


def test_a_hugging_face_cache_snapshot_links_into_its_blobs(tmp_path):
    repo = tmp_path / "hub/models--org--tiny"
    model_folder(repo / "blobs")
    snapshot = repo / "snapshots/0123abc"
    snapshot.mkdir(parents=True)
    for name in MODEL_FILES:  # as huggingface_hub lays them out: relative links to content-named blobs
        (repo / "blobs" / name).rename(repo / "blobs" / f"sha-of-{name}")
        (snapshot / name).symlink_to(Path("../../blobs") / f"sha-of-{name}")
    record = parents.fetch(f"hf:{snapshot}", tmp_path / "dest")
    assert record["backend"] == "hf"
    for name in MODEL_FILES:
        copied = tmp_path / "dest" / name
        assert not copied.is_symlink()
        assert copied.read_bytes() == (repo / "blobs" / f"sha-of-{name}").read_bytes()
    (snapshot / "tokenizer_config.json").unlink()
    (snapshot / "tokenizer_config.json").symlink_to(secret(tmp_path))  # out of the cache: refused
    with pytest.raises(parents.ParentError, match=r"tokenizer_config.json links to .*id_ed25519, outside"):
        parents.fetch(f"hf:{snapshot}", tmp_path / "dest2")


@pytest.mark.parametrize("prefix", ["hf:", ""], ids=["hf folder", "local folder"])
def test_only_the_files_a_model_folder_needs_are_copied(tmp_path, prefix):
    folder = model_folder(tmp_path / "model")
    for name in ("modeling_evil.py", "evil.py", "pytorch_model.bin", "trainer_state.json", "notes.md"):
        (folder / name).write_text("import os; os.system('echo owned')")
    (folder / "sub").mkdir()
    (folder / "sub/config.json").write_text("{}")
    (folder / "merges.txt").write_text("#version: 0.2\n")
    parents.fetch(f"{prefix}{folder}", tmp_path / "dest")
    copied = sorted(p.name for p in (tmp_path / "dest").iterdir())
    assert copied == sorted([*MODEL_FILES, "merges.txt", parents.PARENT_FILE])

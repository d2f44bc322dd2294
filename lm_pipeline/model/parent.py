"""Transfer learning: the model a training run starts from (`train.init_from`).

A parent is a registered version (`models:/<name>@<alias>` or `models:/<name>/<version>`), a
local model folder (what `lmp train` exports: config.json, model.safetensors, tokenizer.json), or
`hf:<folder>`: a Hugging Face model on disk, as `hf download` leaves it (config.json,
safetensors weights, tokenizer.json); nothing is downloaded.
Preprocess fetches it into data/processed/parent/ (a registered one through
registry/downloads.py), copying only the files a model needs, as bytes (never what a link points
to outside the folder: that would carry it on into the registered model and every remote the
data goes to), and pins it there: an alias is resolved to its version once, so the token
files, the training run and the new version's lineage all name the same parent. The parent's
tokenizer encodes the new corpus, and training starts from its weights with a fresh optimizer and
its own learning-rate schedule.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

from lm_pipeline.config import HF_PREFIX, TokenizerConfig
from lm_pipeline.data.tokenizer import TOKENIZER_FILE, UNK, eot_id, read_tokenizer
from lm_pipeline.hashing import file_sha256, tree_sha256
from lm_pipeline.io import read_json, write_json
from lm_pipeline.model.folder import (
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    MODEL_FILES,
    RUN_FILE,
    TOKENIZER_CONFIG_FILE,
    WEIGHTS_FILE,
    folder_backend,
    read_run_info,
)

PARENT_DIR = "parent"  # in data/processed
PARENT_FILE = "parent.json"
# What a parent brings besides its *.safetensors weights: its config, tokenizer and run record.
PARENT_FILES = frozenset({
    CONFIG_FILE, GENERATION_CONFIG_FILE, RUN_FILE, "model.safetensors.index.json", TOKENIZER_FILE,
    TOKENIZER_CONFIG_FILE, "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "vocab.json",
    "merges.txt"})


class ParentError(ValueError):
    """train.init_from names a model that cannot be fine-tuned here; the message says why."""


def fetch(ref: str, dest: Path) -> dict:
    """Copy the parent model folder of a local reference (a folder, or hf:<folder>) into `dest`
    and pin it there; returns its record. A models:/ reference is the registry's to download
    (registry/downloads.py), which pins what it downloaded the same way."""
    if ref.startswith(HF_PREFIX):
        return pin(dest, fetch_hf_folder(Path(ref.removeprefix(HF_PREFIX)).expanduser(), dest, ref))
    copy_model_folder(Path(ref), dest, ref)
    return pin(dest, {"init_from": ref, "model_version": None, "path": str(Path(ref).resolve())})


def pin(dest: Path, record: dict) -> dict:
    """Complete a fetched parent's record (backend, weights hash) and write it beside the folder."""
    record.setdefault("backend", folder_backend(dest))
    record["weights_sha256"] = safetensors_sha256(dest)
    write_json(dest / PARENT_FILE, record)
    return record


def fetch_hf_folder(src: Path, dest: Path, ref: str) -> dict:
    """A Hugging Face model folder, checked before anything trains on it: weights as safetensors
    (pickled .bin files are never loaded), a fast tokenizer (tokenizer.json), and an end-of-text
    token the pipeline can separate documents with."""
    if not (src / CONFIG_FILE).is_file():
        raise ParentError(f"train.init_from: {ref}: no {CONFIG_FILE} in {src}; point at a folder holding "
                          "a downloaded model (`hf download <repo> --local-dir <folder>`)")
    if not list(src.glob("*.safetensors")):
        raise ParentError(f"train.init_from: {ref}: no *.safetensors weights in {src} (pickled .bin "
                          "weights are not loaded: they can run code); convert them to safetensors")
    if not (src / TOKENIZER_FILE).is_file():
        raise ParentError(f"train.init_from: {ref}: no {TOKENIZER_FILE} in {src}: the pipeline needs the "
                          "model's fast tokenizer")
    copy_model_files(src, dest, ref)
    check_end_of_text(dest, ref)
    return {"init_from": ref, "model_version": None, "path": str(src.resolve()), "backend": "hf"}


def check_end_of_text(folder: Path, ref: str) -> None:
    """The token the pipeline ends documents with must be the one the model declares as eos."""
    tokenizer = read_tokenizer(folder / TOKENIZER_FILE)
    try:
        ours = tokenizer.id_to_token(eot_id(tokenizer))
    except ValueError as err:
        raise ParentError(f"train.init_from: {ref}: {err}") from None
    declared = read_json(folder / TOKENIZER_CONFIG_FILE).get("eos_token") \
        if (folder / TOKENIZER_CONFIG_FILE).is_file() else None
    declared = declared.get("content") if isinstance(declared, dict) else declared
    if declared and declared != ours:
        raise ParentError(f"train.init_from: {ref}: its tokenizer declares eos {declared!r}, but the "
                          f"pipeline would end documents with {ours!r}; not supported")


def safetensors_sha256(folder: Path) -> str:
    """The weights files' hash (not their values': backends.weights_sha256): of model.safetensors,
    or of every shard's hash in name order."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if [f.name for f in files] == [WEIGHTS_FILE]:
        return file_sha256(files[0])
    return hashlib.sha256("".join(file_sha256(f) for f in files).encode()).hexdigest()


def model_files_sha256(folder: Path) -> str:
    """The hash of everything in the model folder but its weights files (config, tokenizer,
    chat template, run.json, adapter): what the weights hashes leave out."""
    weights = frozenset(p.name for p in Path(folder).glob("*.safetensors"))
    return tree_sha256(folder, skip=weights)


def copy_model_folder(src: Path, dest: Path, ref: str) -> None:
    missing = [f for f in MODEL_FILES if not (src / f).is_file()]
    if missing:
        raise ParentError(f"train.init_from: {ref} is not a model folder (missing {', '.join(missing)}); "
                          "give a folder written by `lmp train` or a models:/ URI")
    copy_model_files(src, dest, ref)


def copy_model_files(src: Path, dest: Path, ref: str) -> None:
    """Copy the files of a model folder that a model needs into the new folder `dest`, as bytes:
    never code (modeling_*.py), pickles (*.bin), subfolders, or what a link points to outside the
    folder (except, in a Hugging Face cache snapshot, its links into the cache's blobs/)."""
    root = src.resolve()
    allowed = [root, *cache_blobs(root)]
    dest.mkdir(parents=True)
    for entry in sorted(src.iterdir()):
        if entry.name not in PARENT_FILES and entry.suffix != ".safetensors":
            continue
        target = entry.resolve()
        if not any(target.is_relative_to(folder) for folder in allowed):
            raise ParentError(f"train.init_from: {ref}: {entry.name} links to {target}, outside the model "
                              f"folder {root}; copy the file itself into the folder")
        copy_regular_file(target, dest / entry.name, f"train.init_from: {ref}: {entry.name}")


def cache_blobs(folder: Path) -> list[Path]:
    """The blobs/ folder of the Hugging Face cache that `folder` is a snapshot of, where the snapshot's
    links point (models--org--name/snapshots/<revision>/config.json -> ../../blobs/<hash>)."""
    repo = folder.parent.parent
    return [repo / "blobs"] if folder.parent.name == "snapshots" and repo.name.startswith("models--") else []


def copy_regular_file(path: Path, dest: Path, name: str) -> None:
    """Copy a file's bytes; a link put in its place since it was resolved, a pipe or a device is
    refused (O_NONBLOCK: opening a pipe must not wait for a writer)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as err:
        raise ParentError(f"{name}: cannot read {path} ({err.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ParentError(f"{name}: {path} is not a regular file")
        with open(dest, "xb") as out:
            shutil.copyfileobj(f, out)


def describe(record: dict) -> str:
    return record["model_version"] or record["path"]


def load(processed_dir: Path) -> tuple[dict, dict] | tuple[None, None]:
    """(record, model config) of the parent pinned with the data, or (None, None)."""
    folder = Path(processed_dir) / PARENT_DIR
    if not (folder / PARENT_FILE).is_file():
        return None, None
    return read_json(folder / PARENT_FILE), read_json(folder / CONFIG_FILE)


def pinned_folder(processed_dir: Path) -> Path:
    return Path(processed_dir) / PARENT_DIR


def check_tokenizer_covers(coverage: dict, parent_dir: Path, parent: dict,
                           tokenizer: TokenizerConfig) -> None:
    """Refuse a corpus that needs another tokenizer than the parent's: many <unk> tokens, or far
    worse compression than on the parent's own corpus (e.g. another script under byte-level BPE)."""
    name = describe(parent)
    problems = []
    if coverage["unknown_share"] > tokenizer.max_unknown_share:
        problems.append(f"{coverage['unknown_share']:.2%} of its tokens are {UNK} (limit "
                        f"tokenizer.max_unknown_share {tokenizer.max_unknown_share:.2%}; "
                        f"e.g. {', '.join(map(repr, coverage['unknown_examples']))})")
    before = read_run_info(parent_dir).get("chars_per_token") if (parent_dir / RUN_FILE).is_file() else None
    if before and coverage["chars_per_token"] < tokenizer.min_relative_compression * before:
        problems.append(f"it encodes at {coverage['chars_per_token']:.2f} characters per token against "
                        f"{before:.2f} on the parent's corpus (limit tokenizer.min_relative_compression "
                        f"{tokenizer.min_relative_compression})")
    if problems:
        raise ParentError(
            f"preprocess: this corpus needs a different tokenizer than {name}'s: {'; '.join(problems)}. "
            "Fine-tuning must reuse the parent's tokenizer: train from scratch instead (drop "
            "train.init_from)")

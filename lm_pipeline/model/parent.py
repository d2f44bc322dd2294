"""Transfer learning: the model a training run starts from (`train.init_from`).

A parent is a registered version (`models:/<name>@<alias>` or `models:/<name>/<version>`) or a
local model folder (what `lmp train` exports: config.json, model.safetensors, tokenizer.json).
Preprocess fetches it into data/processed/parent/ and pins it there: an alias is resolved to its
version once, so the token files, the training run and the new version's lineage all name the
same parent. The parent's tokenizer encodes the new corpus, and training starts from its weights
with a fresh optimizer and its own learning-rate schedule.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from lm_pipeline.config import Config
from lm_pipeline.io import read_json, write_json
from lm_pipeline.lineage import file_sha256
from lm_pipeline.model.folder import CONFIG_FILE, MODEL_FILES, WEIGHTS_FILE

PARENT_DIR = "parent"  # in data/processed
PARENT_FILE = "parent.json"


class ParentError(ValueError):
    """train.init_from names a model that cannot be fine-tuned here; the message says why."""


def fetch(cfg: Config, dest: Path) -> dict:
    """Copy the parent model folder into `dest` and return its record (also in parent.json)."""
    ref = cfg.train.init_from
    if ref.startswith("models:/"):
        record = fetch_registered(cfg, ref, dest)
    else:
        record = {"init_from": ref, "model_version": None, "path": str(Path(ref).resolve())}
        copy_model_folder(Path(ref), dest, ref)
    record["weights_sha256"] = file_sha256(dest / WEIGHTS_FILE)
    write_json(dest / PARENT_FILE, record)
    return record


def fetch_registered(cfg: Config, uri: str, dest: Path) -> dict:
    import mlflow

    from lm_pipeline import tracking
    from lm_pipeline.registry.aliases import RegistryError, model_version

    tracking.setup(cfg)
    try:
        mv = model_version(mlflow.MlflowClient(), uri)
    except RegistryError as err:
        raise ParentError(f"train.init_from: {err}") from None
    except mlflow.exceptions.MlflowException as err:
        raise ParentError(f"train.init_from: {uri} is not in the registry at "
                          f"{tracking.tracking_uri(cfg)} ({err.message})") from None
    pinned = f"models:/{mv.name}/{mv.version}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=pinned, dst_path=tmp))
        folders = [p.parent for p in root.glob(f"artifacts/*/{WEIGHTS_FILE}")]
        if len(folders) != 1:
            raise ParentError(f"train.init_from: {pinned} holds no lm-pipeline model folder")
        copy_model_folder(folders[0], dest, pinned)
    return {"init_from": uri, "model_version": pinned, "name": mv.name, "version": str(mv.version),
            "run_id": mv.run_id}


def copy_model_folder(src: Path, dest: Path, ref: str) -> None:
    missing = [f for f in MODEL_FILES if not (src / f).is_file()]
    if missing:
        raise ParentError(f"train.init_from: {ref} is not a model folder (missing {', '.join(missing)}); "
                          "give a folder written by `lmp train` or a models:/ URI")
    shutil.copytree(src, dest)


def describe(record: dict) -> str:
    return record["model_version"] or record["path"]


def load(processed_dir: Path) -> tuple[dict, dict] | tuple[None, None]:
    """(record, model config) of the parent pinned with the data, or (None, None)."""
    folder = Path(processed_dir) / PARENT_DIR
    if not (folder / PARENT_FILE).is_file():
        return None, None
    return read_json(folder / PARENT_FILE), read_json(folder / CONFIG_FILE)


def weights_file(processed_dir: Path) -> Path:
    return Path(processed_dir) / PARENT_DIR / WEIGHTS_FILE

"""Registered versions read back as plain files: a fine-tuning parent's folder, and the folder of
the champion the gates compare against (registry/decision.py loads and checks it). A version's
MLflow loader (Python code in the artifact store) is never run. Files only, no torch: preprocess
pins a registered parent through this module without depending on the model's code."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from lm_pipeline import tracking
from lm_pipeline.config import Config
from lm_pipeline.model import parent as parents
from lm_pipeline.model.folder import WEIGHTS_FILE
from lm_pipeline.registry.aliases import RegistryError, model_version

log = logging.getLogger(__name__)

FILES_TAG = "safetensors_sha256"  # the weights files' hash, recorded at registration (pyfunc.py)
MODEL_FILES_TAG = "model_files_sha256"  # the hash of the folder's other files: config, tokenizer...


def download_version_folder(mv, dest: Path) -> Path:
    """A registered version's model folder, downloaded as plain files."""
    import mlflow

    pinned = f"models:/{mv.name}/{mv.version}"
    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=pinned, dst_path=str(dest)))
    folders = [p.parent for p in root.glob(f"artifacts/*/{WEIGHTS_FILE}")]
    if len(folders) != 1:
        raise RegistryError(f"{pinned} holds no lm-pipeline model folder")
    return folders[0]


def check_files(mv, folder: Path) -> None:
    """A parent's weights files must be the ones registered: fine-tuning from changed ones would
    register them anew under a hash of their own."""
    pinned, recorded = f"models:/{mv.name}/{mv.version}", mv.tags.get(FILES_TAG)
    if not recorded:
        raise parents.ParentError(f"{pinned} has no {FILES_TAG} tag (registered before lm-pipeline recorded "
                                  "it), so its weights cannot be checked: register it again")
    if parents.safetensors_sha256(folder) != recorded:
        raise parents.ParentError(f"{pinned}: its safetensors files are not the ones registered (changed in "
                                  "the artifact store since); refusing to fine-tune from it")


def check_model_files(mv, folder: Path, refusal: str) -> None:
    """The files beside the weights must be the ones registered: a tokenizer with two ids swapped,
    or a config with another layer-norm epsilon, changes every answer and no weights hash.
    A version registered before the tag was recorded is checked on its weights only."""
    pinned, recorded = f"models:/{mv.name}/{mv.version}", mv.tags.get(MODEL_FILES_TAG)
    if recorded is None:
        log.warning("%s has no %s tag (registered before lm-pipeline recorded it): its config and "
                    "tokenizer cannot be checked, only its weights; register it again",
                    pinned, MODEL_FILES_TAG)
    elif parents.model_files_sha256(folder) != recorded:
        raise RegistryError(f"{pinned}: its model files (config, tokenizer, chat template, run.json) are "
                            "not the ones recorded at registration: changed in the artifact store since; "
                            f"{refusal}")


def fetch_parent(cfg: Config, uri: str, dest: Path) -> dict:
    """The registered version `uri` names (an alias resolved once, to its number), copied into
    `dest` and pinned there as the fine-tuning parent; returns its record."""
    import mlflow

    tracking.setup(cfg, existing=True)
    try:
        mv = model_version(mlflow.MlflowClient(), uri)
    except RegistryError as err:
        raise parents.ParentError(f"train.init_from: {err}") from None
    except mlflow.exceptions.MlflowException as err:
        raise parents.ParentError(f"train.init_from: {uri} is not in the registry at "
                                  f"{tracking.shown_uri(cfg)} ({err.message})") from None
    pinned = f"models:/{mv.name}/{mv.version}"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = download_version_folder(mv, Path(tmp))
        except RegistryError as err:
            raise parents.ParentError(str(err)) from None
        check_files(mv, folder)
        try:
            check_model_files(mv, folder, "refusing to fine-tune from it")
        except RegistryError as err:
            raise parents.ParentError(str(err)) from None
        parents.copy_model_folder(folder, dest, pinned)
    return parents.pin(dest, {"init_from": uri, "model_version": pinned, "name": mv.name,
                              "version": str(mv.version), "run_id": mv.run_id})



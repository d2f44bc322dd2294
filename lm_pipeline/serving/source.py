"""What a replica serves, loaded and checked: a model folder, or a registered version read as
plain safetensors and refused unless its weights and its other files (config, tokenizer) hash
to the values recorded at registration (registry/decision.load_checked). A version's MLflow
loader, Python code in the artifact store, is never run; an alias is resolved to a version
number each time it is looked at."""

from __future__ import annotations

import tempfile
from pathlib import Path

from lm_pipeline.model.backends import load_model, resolve_device
from lm_pipeline.registry.aliases import model_version
from lm_pipeline.registry.decision import load_checked
from lm_pipeline.registry.downloads import download_version_folder
from lm_pipeline.serving.chat import chat_template, special_tokens
from lm_pipeline.serving.engine import Served

SERVED_AT_TAG, SERVED_VERSION_TAG = "serving.endpoint", "serving.version"


def is_registered(source: str) -> bool:
    return source.startswith("models:/")


def follows_alias(source: str) -> bool:
    return is_registered(source) and "@" in source


def version_id(source: str) -> str:
    """The model id `source` stands for now: "<name>/<version>" (an alias resolved), or the folder's name."""
    if not is_registered(source):
        return Path(source).resolve().name
    import mlflow

    mv = model_version(mlflow.MlflowClient(), source)
    return f"{mv.name}/{mv.version}"


def load(source: str, device: str = "auto") -> Served:
    """`source` loaded to serve: a folder as it is, a registered version only if it is the one registered."""
    device = resolve_device(device)
    if not is_registered(source):
        model, tokenizer = load_model(Path(source), device)
        folder = Path(source)
        return Served(model, tokenizer, version_id(source), chat_template(folder), special_tokens(folder))
    import mlflow

    mv = model_version(mlflow.MlflowClient(), source)
    with tempfile.TemporaryDirectory(prefix="lmp-serve-") as tmp:
        folder = download_version_folder(mv, Path(tmp))
        model, tokenizer = load_checked(mv, folder, device, "refusing to serve it")
        template, special = chat_template(folder), special_tokens(folder)
    return Served(model, tokenizer, f"{mv.name}/{mv.version}", template, special)


def record_served(model_id: str, endpoint: str) -> None:
    """Show in the registry where a registered model is served and which version answers there
    (tags of the registered model, updated at each swap). The endpoint's address only: anyone
    who can read the registry reads its tags, so nothing secret goes there."""
    import mlflow

    name, version = model_id.rsplit("/", 1)
    client = mlflow.MlflowClient()
    client.set_registered_model_tag(name, SERVED_AT_TAG, endpoint)
    client.set_registered_model_tag(name, SERVED_VERSION_TAG, version)

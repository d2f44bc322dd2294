"""A model folder logged as an MLflow pyfunc: the safetensors folder as an artifact, the loader
(pyfunc_model.py) beside it, a signature with the generation parameters, pinned requirements.

What `mlflow models serve` runs is everything the pyfunc holds but its weights folder: MLmodel,
the loader, the package copy under code/, the requirements. Its hash goes on the version
(`code_sha256`), so `lmp verify` can refuse a version whose code changed in the artifact store.
"""

from __future__ import annotations

import tempfile
from importlib.metadata import version as package_version
from pathlib import Path

from lm_pipeline.hashing import tree_sha256
from lm_pipeline.model.parent import model_files_sha256, safetensors_sha256
from lm_pipeline.registry.downloads import FILES_TAG, MODEL_FILES_TAG

PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
PACKAGE_DIR = Path(__file__).resolve().parents[1]
CODE_TAG = "code_sha256"
WEIGHTS_FOLDER = "artifacts"  # the model folder: checked by weights_sha256 and model_files_sha256
# Not code: the weights, and the note MLflow's client writes into a models:/ download (name, version).
NOT_CODE = frozenset({WEIGHTS_FOLDER, "registered_model_meta"})


def register_pyfunc(model_dir: Path, name: str, run_id: str, tags: dict[str, str]) -> str:
    """Log the folder to the run and register it as a new version of `name`, with `tags` and its
    code hash; returns the version."""
    import mlflow

    with mlflow.start_run(run_id=run_id):
        info = log_pyfunc(model_dir, tags["weights_sha256"])  # copies files; its example check loads, frees
    tags = tags | {CODE_TAG: logged_code_sha256(info), FILES_TAG: safetensors_sha256(model_dir),
                   MODEL_FILES_TAG: model_files_sha256(model_dir)}
    return str(mlflow.register_model(info.model_uri, name, tags=tags).version)


def log_pyfunc(model_dir: Path, weights_sha256: str):
    """`weights_sha256` goes into the model's config: its loader refuses weights that differ."""
    import mlflow
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "prompt")]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", 32),
                            ParamSpec("temperature", "double", 0.0),
                            ParamSpec("top_k", "long", 0),
                            ParamSpec("top_p", "double", 1.0),
                            ParamSpec("seed", "long", 0),
                            ParamSpec("stop", "string", [], (-1,))]),
    )
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(PYFUNC_FILE),
        artifacts={"model_dir": str(model_dir)},
        model_config={"weights_sha256": weights_sha256},
        code_paths=[str(PACKAGE_DIR)],
        pip_requirements=pip_requirements(),  # explicit: inference would take seconds
        signature=signature,
        input_example=pd.DataFrame({"prompt": ["The tuple type"]}),
    )


def pip_requirements() -> list[str]:
    packages = ("mlflow", "torch", "tokenizers", "safetensors", "transformers", "pandas", "numpy")
    return [f"{p}=={package_version(p).split('+')[0]}" for p in packages]


def logged_code_sha256(info) -> str:
    """The code hash of a pyfunc just logged (`info`: log_pyfunc's ModelInfo), read back from the
    artifact store: what `mlflow models serve` will download."""
    import mlflow

    root = mlflow.get_logged_model(info.model_id).artifact_location
    with tempfile.TemporaryDirectory(prefix="lmp-code-") as tmp:
        for entry in mlflow.artifacts.list_artifacts(artifact_uri=root):
            name = Path(entry.path).name  # listed as <root's last folder>/<name>
            if name not in NOT_CODE:
                mlflow.artifacts.download_artifacts(artifact_uri=f"{root}/{name}", dst_path=tmp)
        return code_sha256(Path(tmp))


def code_sha256(pyfunc_dir: Path) -> str:
    return tree_sha256(pyfunc_dir, skip=NOT_CODE)

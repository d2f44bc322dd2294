"""A model folder logged as an MLflow pyfunc: the safetensors folder as an artifact, the loader
(pyfunc_model.py) beside it, a signature with the generation parameters, pinned requirements."""

from __future__ import annotations

from importlib.metadata import version as package_version
from pathlib import Path

PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
PACKAGE_DIR = Path(__file__).resolve().parents[1]


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

"""Stage 6, register: log the model as an MLflow pyfunc, register a version, gate champion.

Every new version gets the alias `challenger`. `champion` moves to it only when it beats the
current champion's test perplexity by at least register.min_improvement (the first version
becomes champion). A failed run never reaches this stage, so it never touches the champion.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

from lm_pipeline import tracking
from lm_pipeline.config import Config
from lm_pipeline.io import read_json, write_json
from lm_pipeline.lineage import git_commit, tree_sha256

log = logging.getLogger(__name__)

PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
PACKAGE_DIR = Path(__file__).resolve().parents[1]
CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class Decision:
    model_name: str
    version: str
    promoted: bool
    reason: str
    perplexity: float
    champion_perplexity: float | None
    model_uri: str


def run(cfg: Config) -> Decision:
    import mlflow

    tracking.setup(cfg)
    run_id = read_json(cfg.train.model_dir / tracking.RUN_FILE)["mlflow_run_id"]
    metrics = read_json(cfg.evaluate.metrics_file)
    with mlflow.start_run(run_id=run_id):
        info = log_pyfunc(cfg.train.model_dir)
    client = mlflow.MlflowClient()
    name = cfg.register_.model_name
    registered = mlflow.register_model(info.model_uri, name, tags=version_tags(cfg, run_id, metrics))
    version = str(registered.version)
    client.set_registered_model_alias(name, CHALLENGER, version)
    decision = decide(client, name, version, metrics["perplexity"], cfg.register_.min_improvement)
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "promotion.decision",
                                 "champion" if decision.promoted else "challenger")
    client.set_model_version_tag(name, version, "promotion.reason", decision.reason)
    client.update_model_version(name, version, description=decision.reason)
    write_json(cfg.register_.record_file, asdict(decision))
    log.info("register: %s version %s: %s", name, version, decision.reason)
    return decision


def log_pyfunc(model_dir: Path):
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
                            ParamSpec("seed", "long", 0)]),
    )
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(PYFUNC_FILE),
        artifacts={"model_dir": str(model_dir)},
        code_paths=[str(PACKAGE_DIR)],
        pip_requirements=pip_requirements(),  # explicit: inference would take seconds
        signature=signature,
        input_example=pd.DataFrame({"prompt": ["The tuple type"]}),
    )


def pip_requirements() -> list[str]:
    packages = ("mlflow", "torch", "tokenizers", "safetensors", "pandas", "numpy")
    return [f"{p}=={version(p).split('+')[0]}" for p in packages]


def version_tags(cfg: Config, run_id: str, metrics: dict) -> dict[str, str]:
    params = json.dumps(cfg.model_dump(mode="json", by_alias=True), sort_keys=True)
    return {
        "git_commit": git_commit(),
        "data_sha256": tree_sha256(cfg.data.processed_dir),
        "params_sha256": hashlib.sha256(params.encode()).hexdigest(),
        "mlflow_run_id": run_id,
        **{f"test.{k}": str(v) for k, v in metrics.items()},
    }


def decide(client, name: str, candidate: str, perplexity: float, min_improvement: float) -> Decision:
    """Compare with the current champion (read before any alias moves)."""
    from mlflow.exceptions import MlflowException

    uri = f"models:/{name}/{candidate}"
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return Decision(name, candidate, True, "first version: becomes champion", perplexity, None, uri)
    best = float(champion.tags["test.perplexity"])
    if perplexity < best - min_improvement:
        reason = (f"test perplexity {perplexity:.3f} beats champion v{champion.version} "
                  f"({best:.3f}) by more than {min_improvement}: promoted to champion")
        return Decision(name, candidate, True, reason, perplexity, best, uri)
    reason = (f"test perplexity {perplexity:.3f} does not beat champion v{champion.version} "
              f"({best:.3f}) by more than {min_improvement}: stays challenger")
    return Decision(name, candidate, False, reason, perplexity, best, uri)

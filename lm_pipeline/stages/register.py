"""Stage 6, register: log the model as an MLflow pyfunc, register a version, gate champion.

Every new version gets the alias `challenger`. `champion` moves to it only when every gate passes
(quality bars from params, and beating the current champion on this run's test data with a
bootstrap interval above zero; see gates.py). The decision and each gate's value, threshold and
result go to the version's tags and description and to the append-only promotion log. A failed
run never reaches this stage, so it never touches the champion.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from importlib.metadata import version as package_version
from pathlib import Path

from lm_pipeline import tracking
from lm_pipeline.config import Config
from lm_pipeline.data.processed import load_documents
from lm_pipeline.hashing import file_sha256, tree_sha256
from lm_pipeline.io import read_json, write_json
from lm_pipeline.lineage import LOCK_FILE, git_state
from lm_pipeline.model.backends import load_model, resolve_device, weights_sha256
from lm_pipeline.model.folder import read_run_info
from lm_pipeline.model.parent import describe
from lm_pipeline.registry import gates as gating
from lm_pipeline.registry import history
from lm_pipeline.registry.aliases import CHALLENGER, current_champion, set_champion, tag_decision

log = logging.getLogger(__name__)
DECISION_TAG = "promotion.record"  # the whole decision, as JSON: what a retried register finishes

PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
PACKAGE_DIR = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Decision:
    model_name: str
    version: str
    promoted: bool
    reason: str
    champion_before: str | None
    champion_after: str | None
    gates: list[dict]
    model_uri: str


def run(cfg: Config) -> Decision:
    import mlflow

    experiment_id = tracking.setup(cfg)
    client = mlflow.MlflowClient()
    run_id = read_run_info(cfg.train.model_dir)["mlflow_run_id"]
    # First, before anything is registered: the numbers are this model's, the gates make sense.
    candidate = load_model(cfg.train.model_dir, resolve_device(cfg.evaluate.device))  # the one copy held
    metrics = gating.metrics_of(read_json(cfg.evaluate.metrics_file), candidate[0], cfg.evaluate.metrics_file)
    checks = gating.quality_gates(metrics, cfg.register_)
    name = cfg.register_.model_name
    tags = lineage_tags(cfg, run_id, metrics, candidate[0])
    version = own_version(client, name, run_id, tags["weights_sha256"])
    if version:  # Prefect retries this stage: an earlier attempt got this far
        log.info("register: %s version %s holds this run's model already (an earlier attempt); "
                 "finishing its decision", name, version)
    else:
        with mlflow.start_run(run_id=run_id):
            info = log_pyfunc(cfg.train.model_dir)  # copies files; MLflow's example check loads and frees
        version = str(mlflow.register_model(info.model_uri, name, tags=tags).version)
    # Decide, record, then move: under one lock, and each step safe to repeat, so a stage killed
    # anywhere and rerun ends with one version, one log entry and the aliases its decision says.
    with history.registry_lock(tracking.tracking_uri(cfg), name):
        decision = recorded_decision(client, name, version) or decide(client, cfg, version, checks, candidate)
        record_gates(client, decision)
        log_run = history.log_run_id(client, experiment_id, name)
        if not any(e.get("action") == "register" and e.get("version") == version
                   and e.get("champion_before") == decision.champion_before
                   for e in history.read_log(client, log_run)):  # not logged by an earlier attempt
            history.append(client, log_run, {"action": "register"} | asdict(decision))
        client.set_model_version_tag(name, version, DECISION_TAG, json.dumps(asdict(decision)))
        client.set_registered_model_alias(name, CHALLENGER, version)
        if decision.promoted:
            set_champion(client, name, version, decision.reason)
        else:
            tag_decision(client, name, version, CHALLENGER, decision.reason)
    write_json(cfg.register_.record_file, asdict(decision))
    log.info("register: %s version %s: %s", name, version, decision.reason)
    return decision


def own_version(client, name: str, run_id: str, weights: str) -> str | None:
    """The version an earlier attempt of this register registered: same run, same weights."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    mine = [v for v in versions if v.tags.get("weights_sha256") == weights]
    return str(max(int(v.version) for v in mine)) if mine else None


def recorded_decision(client, name: str, version: str) -> Decision | None:
    """The decision an earlier attempt recorded for this version, if the champion is still the
    one it decided against (else it is decided again: compare-and-set)."""
    record = client.get_model_version(name, version).tags.get(DECISION_TAG)
    if not record:
        return None
    decision = Decision(**json.loads(record))
    return decision if current_champion(client, name) in (decision.champion_before, version) else None


def decide(client, cfg: Config, version: str, checks: list[gating.Gate], candidate) -> Decision:
    name = cfg.register_.model_name
    champion = current_champion(client, name)
    checks = list(checks)
    if champion is not None:
        comparison = compare_with_champion(cfg, champion, candidate)
        checks.append(gating.champion_gate(comparison, cfg.register_.min_improvement))
    failed = [g.name for g in checks if not g.passed]
    promoted = not failed
    if promoted:
        reason = ("first version: becomes champion" if champion is None
                  else f"all {len(checks)} gates passed: promoted to champion")
    else:
        reason = f"stays challenger: failed {', '.join(failed)}"
    return Decision(name, version, promoted, reason, champion, version if promoted else champion,
                    [g.to_dict() for g in checks], f"models:/{name}/{version}")


def compare_with_champion(cfg: Config, champion_version: str, candidate) -> gating.Comparison:
    texts = [candidate[1].decode(d.tolist()) for d in load_documents(cfg.data.processed_dir, "test")]
    champion = gating.load_registered(cfg.register_.model_name, champion_version,
                                      resolve_device(cfg.evaluate.device))
    return gating.compare(champion, candidate, texts, champion_version, cfg.evaluate)


def record_gates(client, d: Decision) -> None:
    """Each gate's result as a tag on the version, and the reason and gates as its description."""
    for g in d.gates:
        client.set_model_version_tag(d.model_name, d.version, f"gate.{g['name']}",
                                     f"{'pass' if g['passed'] else 'FAIL'}: {g['detail']}")
    gate_lines = "\n".join(f"- {'pass' if g['passed'] else 'FAIL'} {g['name']}: {g['detail']}"
                           for g in d.gates)
    client.update_model_version(d.model_name, d.version, description=f"{d.reason}\n{gate_lines}".strip())


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
                            ParamSpec("seed", "long", 0),
                            ParamSpec("stop", "string", [], (-1,))]),
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
    packages = ("mlflow", "torch", "tokenizers", "safetensors", "transformers", "pandas", "numpy")
    return [f"{p}=={package_version(p).split('+')[0]}" for p in packages]


def parent_of(model_dir: Path) -> dict[str, str]:
    """The model version (or folder) this one was fine-tuned from, and its weights' hash; empty
    if trained from scratch."""
    parent = read_run_info(model_dir).get("parent")
    return {"parent_model": describe(parent) if parent else "",
            "parent_safetensors_sha256": parent["weights_sha256"] if parent else ""}


def lineage_tags(cfg: Config, run_id: str, metrics: dict, model) -> dict[str, str]:
    """Everything needed to trace and rebuild the version (see `lmp lineage`)."""
    params = json.dumps(cfg.model_dump(mode="json", by_alias=True), sort_keys=True)
    commit, dirty = git_state()
    return {
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "dvc_lock_sha256": file_sha256(Path(LOCK_FILE)) if Path(LOCK_FILE).exists() else "",
        "data_sha256": tree_sha256(cfg.data.processed_dir),
        "params_sha256": hashlib.sha256(params.encode()).hexdigest(),
        "weights_sha256": weights_sha256(model),
        "mlflow_run_id": run_id,
        tracking.FLOW_RUN_TAG: tracking.flow_run_id(),
        **parent_of(cfg.train.model_dir),
        **{f"test.{k}": str(v) for k, v in metrics.items()},
    }

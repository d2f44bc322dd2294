"""Stage 6, register: log the model as an MLflow pyfunc, register a version, gate champion.

Every new version gets the alias `challenger`. `champion` moves to it only when every gate passes
(quality bars from params, and beating the current champion on this run's test data with a
bootstrap interval above zero; see registry/gates.py and registry/decision.py). The decision and
each gate's value, threshold and result go to the version's tags and description and to the
append-only promotion log. A failed run never reaches this stage, so it never touches the champion.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

from lm_pipeline import tracking
from lm_pipeline.config import Config
from lm_pipeline.io import read_json, write_json
from lm_pipeline.model.backends import load_model, resolve_device, weights_sha256
from lm_pipeline.model.folder import read_run_info
from lm_pipeline.registry import gates as gating
from lm_pipeline.registry import history
from lm_pipeline.registry.aliases import CHALLENGER, current_champion, set_champion, tag_decision
from lm_pipeline.registry.decision import DECISION_TAG, Decision, decide, record_gates, recorded_decision
from lm_pipeline.registry.manage import lineage_tags
from lm_pipeline.registry.pyfunc import register_pyfunc

log = logging.getLogger(__name__)


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
    tags = lineage_tags(cfg, run_id, metrics, weights_sha256(candidate[0]))
    version = own_version(client, name, run_id, tags["weights_sha256"])
    if version:  # Prefect retries this stage: an earlier attempt got this far
        log.info("register: %s version %s holds this run's model already (an earlier attempt); "
                 "finishing its decision", name, version)
    else:
        version = register_pyfunc(cfg.train.model_dir, name, run_id, tags)
    # Decide, record, then move: under one lock, and each step safe to repeat, so a stage killed
    # anywhere and rerun ends with one version, one log entry and the aliases its decision says.
    with history.registry_lock(tracking.tracking_uri(cfg), name):
        log_run = history.log_run_id(client, experiment_id, name)
        entries = history.read_log(client, log_run)
        history_gates = [gating.trust_gate(version, entries),
                         gating.champion_alias_gate(current_champion(client, name), entries, version)]
        decision = recorded_decision(client, name, version, entries) or decide(
            client, cfg, version, [*checks, *history_gates], candidate)
        record_gates(client, decision)
        if not logged_already(entries, decision):
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


def logged_already(entries: list[dict], decision: Decision) -> bool:
    """An earlier attempt logged this very decision (a retry that decided otherwise logs its own:
    the log is what rollbacks read the champions from)."""
    keys = ("version", "promoted", "champion_before", "champion_after")
    return any(e.get("action") == "register" and all(e.get(k) == getattr(decision, k) for k in keys)
               for e in entries)


def own_version(client, name: str, run_id: str, weights: str) -> str | None:
    """The version an earlier attempt of this register registered: same run, same weights."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(
            f"name = {tracking.filter_literal(name)} and run_id = {tracking.filter_literal(run_id)}")
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    mine = [v for v in versions if v.tags.get("weights_sha256") == weights]
    return str(max(int(v.version) for v in mine)) if mine else None



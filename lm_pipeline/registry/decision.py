"""A registration's decision: whether the new version becomes champion, why, and each gate's
result, kept on the version so a retried register finishes the same decision. The champion it is
compared with is read back from its safetensors folder and checked against its recorded hash."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lm_pipeline.config import Config
from lm_pipeline.data.documents import read_documents
from lm_pipeline.data.processed import load_documents
from lm_pipeline.data.split import assign_split
from lm_pipeline.model.backends import load_model, resolve_device, weights_sha256
from lm_pipeline.registry import gates as gating
from lm_pipeline.registry.aliases import RegistryError, current_champion
from lm_pipeline.registry.downloads import check_model_files, download_version_folder

DECISION_TAG = "promotion.record"  # the whole decision, as JSON: what a retried register finishes


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


def recorded_decision(client, name: str, version: str, log: list[dict]) -> Decision | None:
    """The decision an earlier attempt recorded for this version, if nothing has moved the champion
    since (else it is decided again: compare-and-set). An attempt killed between recording and
    moving finishes what it decided; a champion since rolled back or promoted by hand (the
    promotion log, `log`, says so after the decision's entry) is not moved back by a rerun."""
    record = client.get_model_version(name, version).tags.get(DECISION_TAG)
    if not record:
        return None
    decision = Decision(**json.loads(record))
    if current_champion(client, name) not in (decision.champion_before, version):
        return None
    logged = [i for i, e in enumerate(log) if e.get("action") == "register" and e.get("version") == version
              and e.get("champion_before") == decision.champion_before]
    since = log[logged[-1] + 1:] if logged else []
    return None if any(e["champion_before"] != e["champion_after"] for e in since) else decision


def decide(client, cfg: Config, version: str, checks: list[gating.Gate], candidate) -> Decision:
    name = cfg.register_.model_name
    champion = current_champion(client, name)
    checks = list(checks)
    if champion is not None:
        checks += champion_gates(cfg, champion, candidate)
    failed = [g.name for g in checks if not g.passed]
    promoted = not failed
    if promoted:
        reason = ("first version: becomes champion" if champion is None
                  else f"all {len(checks)} gates passed: promoted to champion")
    else:
        reason = f"stays challenger: failed {', '.join(failed)}"
    return Decision(name, version, promoted, reason, champion, version if promoted else champion,
                    [g.to_dict() for g in checks], f"models:/{name}/{version}")


def champion_gates(cfg: Config, champion_version: str, candidate) -> list[gating.Gate]:
    """Beating the champion on this run's test documents, and with register.guard_documents not
    losing to it on theirs."""
    device = resolve_device(cfg.evaluate.device)
    champion = load_registered(cfg.register_.model_name, champion_version, device)
    texts = [candidate[1].decode(d.tolist()) for d in load_documents(cfg.data.processed_dir, "test")]
    comparison = gating.compare(champion, candidate, texts, champion_version, cfg.evaluate)
    gates = [gating.champion_gate(comparison, cfg.register_.min_improvement)]
    if cfg.register_.guard_documents:
        guarded = guarded_texts(cfg)
        kept = gating.compare(champion, candidate, guarded, champion_version, cfg.evaluate)
        gates.append(gating.forgetting_gate(kept, cfg.register_.max_forgetting))
    return gates


def guarded_texts(cfg: Config) -> list[str]:
    """The test-split documents of register.guard_documents (split as the corpus is split)."""
    path = cfg.register_.guard_documents
    texts = [d["text"] for d in read_documents(path) if assign_split(d["text"], cfg.split) == "test"]
    if not texts:
        raise ValueError(f"register.guard_documents {path}: no test-split documents to guard")
    return texts


def record_gates(client, d: Decision) -> None:
    """Each gate's result as a tag on the version, and the reason and gates as its description."""
    for g in d.gates:
        client.set_model_version_tag(d.model_name, d.version, f"gate.{g['name']}",
                                     f"{'pass' if g['passed'] else 'FAIL'}: {g['detail']}")
    gate_lines = "\n".join(f"- {'pass' if g['passed'] else 'FAIL'} {g['name']}: {g['detail']}"
                           for g in d.gates)
    client.update_model_version(d.model_name, d.version, description=f"{d.reason}\n{gate_lines}".strip())


def load_registered(name: str, version: str, device: str = "cpu",
                    refusal: str = "refusing to compare with it"):
    """A registered version's (model, tokenizer), read from its safetensors folder, never through
    its pyfunc loader (code from the artifact store would run here, with this stage's
    credentials); refused unless it is the one registered (load_checked)."""
    import mlflow

    mv = mlflow.MlflowClient().get_model_version(name, version)
    with tempfile.TemporaryDirectory() as tmp:
        return load_checked(mv, download_version_folder(mv, Path(tmp)), device, refusal)


def load_checked(mv, folder: Path, device: str, refusal: str):
    """Version `mv`'s downloaded folder as (model, tokenizer), refused (RegistryError, ending in
    `refusal`) unless its files beside the weights and its weights are the ones whose hashes were
    recorded at registration."""
    check_model_files(mv, folder, refusal)
    model, tokenizer = load_model(folder, device)
    check_weights(mv, model, refusal)
    return model, tokenizer


def check_weights(mv, model, refusal: str) -> None:
    """Raise unless `model` holds the weights whose hash version `mv` recorded at registration."""
    actual, recorded = weights_sha256(model), mv.tags.get("weights_sha256", "")
    if actual != recorded:
        raise RegistryError(f"models:/{mv.name}/{mv.version}: its weights hash {actual[:12]}... is not the "
                            f"one recorded at registration ({recorded[:12] or 'none'}...): the artifact was "
                            f"changed after it was registered; {refusal} (restore it, or move champion to "
                            "a version you trust with `lmp promote`)")

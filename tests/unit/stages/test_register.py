"""The register stage's registry look-ups, on a real store (the whole stage runs in
tests/integration/test_registry.py)."""

from dataclasses import asdict

import mlflow
import pytest

from lm_pipeline.registry.decision import Decision
from lm_pipeline.stages import register

pytestmark = pytest.mark.registry


@pytest.mark.security
@pytest.mark.parametrize("name", ["it's", 'say "m"'])
def test_a_retried_register_finds_its_version_under_a_name_with_quotes(mlflow_uri, tmp_path, name):
    client = mlflow.MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    client.create_registered_model(name)
    client.create_model_version(name, source=tmp_path.as_uri(), run_id=run_id, tags={"weights_sha256": "w"})
    assert register.own_version(client, name, run_id, "w") == "1"
    assert register.own_version(client, name, run_id, "other weights") is None


def test_a_retry_that_decides_otherwise_logs_its_own_decision():
    """An attempt logged "stays challenger" (champion 2 before and after) and was killed before
    its decision tag; the retry decided "promoted". Skipping its entry (the same version and
    champion before) left the log without the move, so `lmp rollback` found no champion to go
    back to from it."""
    def decision(promoted: bool) -> Decision:
        return Decision("m", "7", promoted, "", "2", "7" if promoted else "2", [], "models:/m/7")

    stayed = {"action": "register"} | asdict(decision(False))
    assert register.logged_already([stayed], decision(False))
    assert not register.logged_already([stayed], decision(True))
    assert not register.logged_already([{"action": "promote"} | asdict(decision(False))], decision(False))

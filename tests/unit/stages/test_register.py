"""The register stage's registry look-ups, on a real store (the whole stage runs in
tests/integration/test_registry.py)."""

import mlflow
import pytest

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

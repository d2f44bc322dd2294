"""Unit-test fixtures: a real MLflow store of each test's own, cheap to make."""

import os
import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """A migrated, empty MLflow database: creating one takes seconds, copying it milliseconds."""
    import mlflow

    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def forget_mlflow_uri(monkeypatch):
    """MLflow's process-wide URI is reset after the test: mlflow.set_tracking_uri (in
    tracking.setup) also exports MLFLOW_TRACKING_URI, which Config and every later subprocess
    (the flows' stages) would take."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture
def mlflow_uri(tmp_path, empty_mlflow_db, forget_mlflow_uri):
    """This test's own MLflow store (the URI forgotten afterwards)."""
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"

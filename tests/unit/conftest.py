"""Unit-test fixtures: a real MLflow store of each test's own, cheap to make."""

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
def mlflow_uri(tmp_path, empty_mlflow_db, forget_mlflow_uri):
    """This test's own MLflow store (the URI forgotten afterwards)."""
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"

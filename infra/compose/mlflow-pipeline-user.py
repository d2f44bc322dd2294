"""One-shot, as the MLflow admin: the pipeline's own MLflow user, so that the worker and the Ray
nodes never hold the admin's password.

The user is no admin. With `default_permission = NO_PERMISSIONS` (mlflow-auth.ini) it sees only
what it creates: MLflow makes the creator of an experiment or a registered model its MANAGE owner,
and that is all the pipeline needs (runs, metrics, artifacts, versions, tags, aliases). An
experiment or a model named on the command line that already exists (made while the pipeline still
logged as admin) gets EDIT granted. Safe to rerun: an existing user gets the password from the
environment, so rotating MLFLOW_PIPELINE_PASSWORD in the env file takes effect on the next start.

Environment: MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME/PASSWORD (the admin),
MLFLOW_PIPELINE_PASSWORD; MLFLOW_PIPELINE_USERNAME (default `pipeline`).
Usage: python infra/compose/mlflow-pipeline-user.py [--experiment NAME] [--model NAME]
"""

from __future__ import annotations

import argparse
import os

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException, RestException
from mlflow.server.auth.client import AuthServiceClient


def ensure_user(auth: AuthServiceClient, username: str, password: str) -> None:
    try:
        auth.create_user(username, password)
    except RestException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        auth.update_user_password(username, password)
    # A user of that name made by hand as an admin would defeat the point.
    auth.update_user_admin(username, False)


def grant_existing(auth: AuthServiceClient, username: str, experiment: str | None, model: str | None) -> None:
    """EDIT on what the pipeline used before it had a user of its own; new ones it creates itself."""
    client = MlflowClient()
    found = experiment and client.get_experiment_by_name(experiment)
    if found:
        auth.grant_user_permission(username, "experiment", found.experiment_id, "EDIT")
    if model and registered(client, model):
        auth.grant_user_permission(username, "registered_model", model, "EDIT")


def registered(client: MlflowClient, name: str) -> bool:
    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", help="the pipeline's experiment (params.yaml mlflow.experiment)")
    parser.add_argument("--model", help="its registered model (params.yaml register.model_name)")
    args = parser.parse_args()
    username = os.environ.get("MLFLOW_PIPELINE_USERNAME", "pipeline")
    auth = AuthServiceClient(os.environ["MLFLOW_TRACKING_URI"])
    ensure_user(auth, username, os.environ["MLFLOW_PIPELINE_PASSWORD"])
    grant_existing(auth, username, args.experiment, args.model)
    print(f"MLflow user {username!r} ready (not an admin)")


if __name__ == "__main__":
    main()

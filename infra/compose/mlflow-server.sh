#!/bin/sh
# MLflow tracking server with basic-auth, on PostgreSQL as the `mlflow` role. Secrets arrive in the
# environment and stay there: nothing is written to a file and no password is on a command line
# (ps shows every user the command lines). libpq reads the role's password from PGPASSWORD and the
# server from PGHOST (and PGPORT), so the URIs here and in mlflow-auth.ini name no secret.
# Extra arguments go to `mlflow server` (the tests add --host 127.0.0.1 --port N).
set -eu
: "${PGPASSWORD:?the mlflow role's password (MLFLOW_DB_PASSWORD)}" "${PGHOST:?the PostgreSQL host}"
export MLFLOW_BACKEND_STORE_URI="postgresql://mlflow@/mlflow"
export MLFLOW_AUTH_CONFIG_PATH="$(cd "$(dirname "$0")" && pwd)/mlflow-auth.ini"
# MLflow's job runner serves its GenAI jobs, which the pipeline never runs: off, it is eight idle
# processes fewer (and no queue in /dev/shm).
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
exec mlflow server --app-name basic-auth --host 0.0.0.0 --port 5000 "$@"

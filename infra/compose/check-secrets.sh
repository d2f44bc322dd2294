#!/bin/sh
# Refuse to start production mode while infra/.env still holds a placeholder from .env.example,
# or an MLflow password under 12 characters (MLflow refuses those). Runs before every other service.
set -eu
status=0
for name in POSTGRES_PASSWORD MLFLOW_DB_PASSWORD PREFECT_DB_PASSWORD MINIO_ROOT_PASSWORD \
            MLFLOW_ADMIN_PASSWORD MLFLOW_PIPELINE_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY \
            RAY_AUTH_TOKEN PREFECT_API_PASSWORD LMP_SERVE_TOKEN; do
  value=$(printenv "$name" || true)
  case "$value" in
    ""|change-me*)
      echo "infra/.env: $name is still the placeholder (or empty); set a real value, e.g. openssl rand -hex 32" >&2
      status=1 ;;
  esac
done
for name in MLFLOW_ADMIN_PASSWORD MLFLOW_PIPELINE_PASSWORD; do
  value=$(printenv "$name" || true)
  if [ "${#value}" -lt 12 ]; then
    echo "infra/.env: $name must have 12 characters or more" >&2
    status=1
  fi
done
exit $status

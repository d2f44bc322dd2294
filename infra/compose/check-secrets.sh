#!/bin/sh
# Refuse to start production mode while the env file still holds a placeholder from .env.example,
# an MLflow password under 12 characters (MLflow refuses those) or a MinIO secret key under 8 (MinIO
# refuses those). Runs before every other service.
set -eu
status=0
for name in POSTGRES_PASSWORD MLFLOW_DB_PASSWORD PREFECT_DB_PASSWORD MINIO_ROOT_PASSWORD \
            MINIO_MLFLOW_PASSWORD MINIO_PIPELINE_PASSWORD \
            MLFLOW_ADMIN_PASSWORD MLFLOW_PIPELINE_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY \
            RAY_AUTH_TOKEN PREFECT_API_PASSWORD LMP_SERVE_TOKEN; do
  value=$(printenv "$name" || true)
  case "$value" in
    ""|change-me*)
      echo "env file: $name is still the placeholder (or empty); set a real value, e.g. openssl rand -hex 32" >&2
      status=1 ;;
  esac
done
at_least() {  # LENGTH NAME...: refuse each named value shorter than LENGTH
  length=$1
  shift
  for name in "$@"; do
    value=$(printenv "$name" || true)
    if [ "${#value}" -lt "$length" ]; then
      echo "env file: $name must have $length characters or more" >&2
      status=1
    fi
  done
}
at_least 12 MLFLOW_ADMIN_PASSWORD MLFLOW_PIPELINE_PASSWORD
at_least 8 MINIO_ROOT_PASSWORD MINIO_MLFLOW_PASSWORD MINIO_PIPELINE_PASSWORD
exit $status

#!/bin/sh
# MLflow tracking server with basic-auth. Secrets arrive in the environment; the auth config
# written here names the user database but holds no password.
set -eu
cat > /tmp/basic_auth.ini <<INI
[mlflow]
default_permission = READ
database_uri = postgresql://lmp:${POSTGRES_PASSWORD}@postgres:5432/mlflow_auth
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH=/tmp/basic_auth.ini
exec mlflow server --app-name basic-auth \
  --backend-store-uri "postgresql://lmp:${POSTGRES_PASSWORD}@postgres:5432/mlflow" \
  --artifacts-destination s3://mlflow/ \
  --host 0.0.0.0 --port 5000

#!/bin/sh
# One-shot, as MinIO's root (MC_HOST_minio): the buckets, then one MinIO user per service holding
# only the policy of its name in this folder. mlflow.json: the artifact bucket, for the MLflow server
# (clients reach artifacts through MLflow); pipeline.json: the DVC remote, checkpoints and shards
# read-write, corpora read-only, for the worker and the Ray nodes. No service but this one and the
# server holds the root keys. Safe to rerun: a policy is replaced from its file, a user's secret key
# reset from the environment (rotation), an attached policy stays attached.
set -eu
mc mb --ignore-existing minio/mlflow minio/dvc minio/checkpoints minio/shards minio/corpora

user() {
  mc admin policy create minio "$1" "/minio/$1.json"
  # The secret key goes in on stdin: a command line is visible to every user of the host (ps).
  printf '%s\n' "$2" | mc admin user add minio "$1"
  mc admin policy attach minio "$1" --user "$1"
}
user mlflow "$MINIO_MLFLOW_PASSWORD"
user pipeline "$MINIO_PIPELINE_PASSWORD"

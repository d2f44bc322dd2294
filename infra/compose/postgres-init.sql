-- One role per service, each owning its own databases: MLflow (runs and registry, its users) and
-- Prefect. Run once by the postgres image on an empty volume (docker-entrypoint-initdb.d), as the
-- superuser; the superuser's password stays with postgres and this script.
-- The roles' passwords come from the environment (the env file, ~/.config/lm-pipeline/infra.env), read by psql itself so they reach
-- neither a command line nor this file, and are quoted by :'var' as SQL literals.
\set ON_ERROR_STOP on
\getenv mlflow_password MLFLOW_DB_PASSWORD
\getenv prefect_password PREFECT_DB_PASSWORD
-- An unset variable leaves `:'name'` as it is, a syntax error: no role gets an empty password.
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE ROLE prefect LOGIN PASSWORD :'prefect_password';
-- The owner may connect and, since PostgreSQL 15, create tables in the public schema.
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
CREATE DATABASE prefect OWNER prefect;
-- Every role may connect to a new database by default: only its owner may here.
REVOKE ALL ON DATABASE mlflow, mlflow_auth, prefect FROM PUBLIC;

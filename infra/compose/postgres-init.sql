-- One database per consumer: MLflow runs and registry, MLflow's users, Prefect.
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
CREATE DATABASE prefect;

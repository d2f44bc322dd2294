"""The endpoint as a Prefect flow: deploy (or update) `lmp serve`'s application on the Ray cluster
at ray.address (RAY_ADDRESS), and finish once every replica answers. The application keeps
running on the cluster after the flow (Serve's applications outlive their driver); deploying again
updates it in place. Schedule it after the pipeline, or trigger it on demand:

    python -m lm_pipeline.flows.serve      # once, with RAY_ADDRESS set

Nothing here needs redeploying when champion moves: each replica follows the alias itself.
"""

from __future__ import annotations

from prefect import flow, task

from lm_pipeline.flows.pipeline import IO_RETRIES, report_failure, run_command
from lm_pipeline.flows.temporary_server import temporary_server


@task(task_run_name="deploy endpoint", **IO_RETRIES)
def deploy_endpoint(project_dir: str, model: str | None) -> None:
    run_command("serve", ["lmp", "serve", "--detach", *(["--model", model] if model else [])], project_dir)


@flow(name="lm-pipeline-serve", log_prints=True, on_failure=[report_failure])
def serve(project_dir: str = ".", model: str | None = None) -> None:
    """Deploy the serving endpoint (default: models:/<register.model_name>@champion) on the cluster."""
    deploy_endpoint(project_dir, model)


if __name__ == "__main__":
    with temporary_server():
        serve()

"""Deploy the pipeline flow to a Prefect server: a work pool, a cron schedule, one run at a time.

    prefect server start                              # or the one in infra/docker-compose.yml
    lmp deploy --cron "0 2 * * *"                     # registers the deployment (PREFECT_API_URL)
    prefect worker start --pool lm-pipeline           # runs it, in this checkout
    prefect deployment run lm-pipeline/nightly        # on demand, besides the schedule

With --continuous, two more (flows/watch.py, flows/continuous.py): `lm-ct-watch/watch` looks under
ct.watch every ct.watch_interval_s and announces new drops as events; `lm-continuous-training/
on-drop` has a trigger on that event, so each announcement starts a cycle.

Each deployment's concurrency limit is 1 and extra runs queue (ENQUEUE): DVC holds a lock on the
workspace, so two runs in one checkout would fail or interleave. Runs execute in the directory
the deployment was made from (a process work pool), with the worker's environment: credentials
such as MLFLOW_TRACKING_USERNAME/PASSWORD come from there, never from the repository.
"""

from __future__ import annotations

from pathlib import Path

from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.exceptions import ObjectAlreadyExists

from lm_pipeline.flows.watch import DROP_ARRIVED, RESOURCE_PREFIX

ENTRYPOINT = "lm_pipeline/flows/pipeline.py:pipeline"
WATCH_ENTRYPOINT = "lm_pipeline/flows/watch.py:watch_drops"
CT_ENTRYPOINT = "lm_pipeline/flows/continuous.py:continuous_training"


def ensure_work_pool(name: str) -> None:
    """A process work pool: the worker runs each flow run as a subprocess on its own machine."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
        except ObjectAlreadyExists:
            pass


def deploy(name: str, cron: str, pool: str, timezone: str = "UTC", image: str | None = None) -> str:
    """Create or update the deployment from the project root (the working directory); returns its id.

    Without `image`: a process pool (created if missing) runs the flow in this checkout.
    With `image`: a Docker or Kubernetes pool runs it in that image, whose working directory is
    the project root (infra/Dockerfile); the pool comes from its worker (infra/k8s/).
    """
    from prefect.client.schemas.schedules import CronSchedule

    return apply(ENTRYPOINT, name, pool, image, schedule=CronSchedule(cron=cron, timezone=timezone),
                 tags=[f"schedule:{name}"],
                 description="ingest -> validate -> filter -> preprocess -> train -> evaluate -> register")


def deploy_continuous(pool: str, interval_s: float) -> tuple[str, str]:
    """The watcher on an interval schedule, and the cycle triggered by each drop it announces;
    returns both ids."""
    from prefect.client.schemas.schedules import IntervalSchedule
    from prefect.events import DeploymentEventTrigger

    # A watcher run still going when the next is due: the next is dropped, not queued behind it.
    watcher = apply(WATCH_ENTRYPOINT, "watch", pool, None, schedule=IntervalSchedule(interval=interval_s),
                    tags=["continuous-training"], description="announce new drops under ct.watch",
                    collision=ConcurrencyLimitStrategy.CANCEL_NEW)
    on_drop = DeploymentEventTrigger(name="a drop arrived", expect={DROP_ARRIVED},
                                     match={"prefect.resource.id": f"{RESOURCE_PREFIX}*"})
    cycle = apply(CT_ENTRYPOINT, "on-drop", pool, None, triggers=[on_drop], tags=["continuous-training"],
                  description="hygiene -> drift -> retrain -> register -> canary, for each new drop")
    return watcher, cycle


def apply(entrypoint: str, name: str, pool: str, image: str | None, tags: list[str],
          collision: ConcurrencyLimitStrategy = ConcurrencyLimitStrategy.ENQUEUE, **options) -> str:
    """One deployment of `entrypoint`, one run at a time, in this checkout or in `image`."""
    from prefect.deployments.runner import RunnerDeployment

    root = str(Path.cwd())
    deployment = RunnerDeployment.from_entrypoint(
        entrypoint,
        name=name,
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=collision),
        parameters={"project_dir": "." if image else root},
        tags=["lm-pipeline", *tags],
        job_variables={} if image else {"working_dir": root},
        **options,
    )
    if not image:
        ensure_work_pool(pool)
    return str(deployment.apply(work_pool_name=pool, image=image))  # registers; builds nothing

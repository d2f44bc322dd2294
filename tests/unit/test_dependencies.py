"""The private parts of Prefect and Ray the code relies on are still there, so a new release that
moves them fails here, by name, instead of in a flow run; pyproject.toml bounds both at the minor
versions these were checked on."""

import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def bounded(package: str) -> str:
    """The upper bound pyproject.toml gives `package`."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    match = re.search(rf'"{re.escape(package)}(?:\[[^\]]*\])?[^"]*,<([\d.]+)"', pyproject)
    assert match, f"pyproject.toml gives {package} no upper bound: the code relies on its private parts"
    return match.group(1)


def test_prefect_still_starts_its_temporary_server_as_lm_pipeline_does():
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer, create_app

    from lm_pipeline.flows.temporary_server import SERVER_ENV, start_server

    bounded("prefect")
    theirs = inspect.getsource(SubprocessASGIServer)
    changed = [name for name in SERVER_ENV if f'"{name}"' not in theirs]
    factory = "prefect.server.api.server:create_app"
    assert not changed and factory in theirs and factory in inspect.getsource(start_server), (
        f"Prefect's temporary server no longer starts with {changed or factory}: update "
        "lm_pipeline/flows/temporary_server.py (and the bound in pyproject.toml)")
    assert "ephemeral" in inspect.signature(create_app).parameters
    for owner, name in ((EventsWorker, "drain_all"), (APILogWorker, "instance"), (APILogWorker, "drain")):
        where = "drain_prefect_workers (lm_pipeline/flows/temporary_server.py)"
        assert callable(getattr(owner, name, None)), f"{owner.__name__}.{name} is gone: update {where}"


def test_ray_still_names_placement_groups_as_the_search_frees_them():
    from ray._raylet import PlacementGroupID

    bounded("ray")
    assert callable(getattr(PlacementGroupID, "from_hex", None)), (
        "ray._raylet.PlacementGroupID.from_hex is gone: update the search's placement-group cleanup "
        "(lm_pipeline/training/search.py) and the bound in pyproject.toml")


@pytest.mark.parametrize("package", ["ray", "prefect"])
def test_the_installed_version_is_within_the_bound(package):
    from importlib.metadata import version

    installed = tuple(int(p) for p in version(package).split(".")[:2])
    bound = tuple(int(p) for p in bounded(package).split(".")[:2])
    assert installed < bound, f"{package} {version(package)} is past the bound {bounded(package)} tested"

"""Shared test setup: quiet, offline, isolated services; GPU tests skipped without a GPU."""

import os
import sys
import tempfile

from lm_pipeline import env

# Before any library import: Prefect resolves its home and settings at import time. The test
# session is an entry point like `lmp`: the pipeline's environment defaults, then the tests' own.
env.apply()
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="lmp-prefect-")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests use each project's own SQLite store
os.environ.pop("RAY_ADDRESS", None)
# DVC stages call `lmp`; find it (and `dvc`) in this interpreter's environment.
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
# Lanes (pytest-xdist workers) share the cores: each lane, and every process it starts, gets its
# share of torch's threads instead of all of them. Two lanes on two cores ran two heavy modules in
# 4:18 with one thread each against 4:55 with two (their OpenMP threads spinning against each
# other's); one lane keeps torch's default. Ray's workers get train.cpus_per_worker threads anyway.
LANES = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if LANES > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // LANES)))

import pytest  # noqa: E402
import torch  # noqa: E402

if LANES > 1:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # in case torch was imported before

from tests.services import S3Server, s3_server  # noqa: E402

# Lanes for pytest-xdist (make test PYTEST_ARGS="-n 2"): a module's tests stay on one lane, so its
# module fixtures are built once; production's modules and those sharing a session fixture share a
# lane. The heaviest go first, so lanes end together.
HEAVIEST_FIRST = ("tests/integration/test_training.py", "tests/integration/test_registry.py",
                  "tests/integration/test_pipeline.py", "tests/production/",
                  "tests/integration/test_models.py", "tests/integration/test_tune.py")


# Modules that share a session fixture share its lane: built once, and the modules run after the
# owner in this order (serving and continuous training move the registry's aliases).
SHARED_LANE = {"tests/integration/test_serving.py": "tests/integration/test_registry.py",
               "tests/integration/test_continuous.py": "tests/integration/test_registry.py"}


def lane_group(nodeid: str) -> str:
    module = nodeid.split("::")[0]
    return "tests/production/" if module.startswith("tests/production/") else SHARED_LANE.get(module, module)


def weight(item) -> tuple[int, int]:
    group, module = lane_group(item.nodeid), item.nodeid.split("::")[0]
    heaviness = next((i for i, heavy in enumerate(HEAVIEST_FIRST) if group.startswith(heavy)),
                     len(HEAVIEST_FIRST))
    return heaviness, list(SHARED_LANE).index(module) + 1 if module in SHARED_LANE else 0


def pytest_collection_modifyitems(config, items):
    items.sort(key=weight)  # stable: a module's own order is kept
    if not torch.cuda.is_available():
        skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)


def pytest_xdist_make_scheduler(config, log):
    """Whole lanes to each worker, in the order collected. Not xdist's own loadgroup: it tags each
    test through an attribute that pytest 9 no longer reads, so its groups were silently ignored
    and a module's fixtures were built on every worker."""
    from xdist.scheduler import LoadScopeScheduling

    class LaneScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return lane_group(nodeid)

    config.option.loadscopereorder = False  # keep the heaviest first
    return LaneScheduling(config, log)


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> S3Server:
    """One real S3 server per session, with compose's buckets `mlflow` (artifacts) and `dvc` (the
    DVC remote), and `corpus` and `checkpoints` for data and training."""
    buckets = ("mlflow", "dvc", "corpus", "checkpoints")
    with s3_server(tmp_path_factory.mktemp("s3") / "s3.log", buckets) as server:
        yield server


@pytest.fixture
def forget_mlflow_uri(monkeypatch):
    """MLflow's process-wide URI is reset after the test: mlflow.set_tracking_uri (in
    tracking.setup) also exports MLFLOW_TRACKING_URI, which Config and every later subprocess
    (the flows' stages) would take."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    mlflow.set_tracking_uri(None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(autouse=True)
def no_leaked_mlflow_uri():
    """A test that leaves MLFLOW_TRACKING_URI set points every later test's flows and stages at
    its store (a tune flow once logged its runs to another module's project): name it here."""
    yield
    assert "MLFLOW_TRACKING_URI" not in os.environ, (
        f"this test left MLFLOW_TRACKING_URI={os.environ['MLFLOW_TRACKING_URI']} set (use the "
        "forget_mlflow_uri fixture, or monkeypatch.setenv)")

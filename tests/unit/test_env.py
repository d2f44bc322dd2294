"""Environment defaults are set at the entry points, never as a side effect of an import."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from lm_pipeline import env

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_package_changes_no_environment_variable():
    """Its flows excepted: importing lm_pipeline.flows is their entry point (Prefect reads its
    settings when it is imported), as cli.main is lmp's; the next test checks both apply them. So
    is the serving deployment's module (and launch.py, which imports it): Ray Serve builds the
    deployment as it is imported, and `import ray` sets RAY_CLIENT_MODE to Ray's default."""
    entry_points = {"pyfunc_model.py", "app.py", "launch.py"}
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts)
                     for p in (ROOT / "lm_pipeline").rglob("*.py")
                     if p.name != "__init__.py" and "modules" not in p.parts and "flows" not in p.parts
                     and p.name not in entry_points)
    script = ("import importlib, json, os, sys; before = dict(os.environ)\n"
              f"for m in {modules!r}: importlib.import_module(m)\n"
              "print(json.dumps(sorted(k for k in os.environ if os.environ.get(k) != before.get(k))))")
    clean = {k: v for k, v in os.environ.items() if k not in env.DEFAULTS}
    out = subprocess.run([sys.executable, "-c", script], env=clean, cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert json.loads(out.stdout.splitlines()[-1]) == []


def test_apply_sets_every_default_but_keeps_what_the_user_set(monkeypatch):
    for key in env.DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    mine = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
    monkeypatch.setenv(mine, "3")
    env.apply()
    assert os.environ[mine] == "3" and env.for_workers()[mine] == "3"
    assert all(os.environ[k] == v for k, v in env.DEFAULTS.items() if k != mine)


def test_lmp_and_the_flows_apply_the_defaults():
    clean = {k: v for k, v in os.environ.items() if k not in env.DEFAULTS}
    for entry in ("from lm_pipeline import cli; cli.main(['--help'])", "import lm_pipeline.flows.pipeline"):
        script = (f"import os\ntry:\n    {entry}\nexcept SystemExit:\n    pass\n"
                  "print(os.environ.get('HF_EVALUATE_OFFLINE'), "
                  "os.environ.get('PREFECT_SERVER_ANALYTICS_ENABLED'))")
        out = subprocess.run([sys.executable, "-c", script], env=clean, cwd=ROOT, capture_output=True,
                             text=True, check=True)
        assert out.stdout.splitlines()[-1] == "1 false", entry


def test_every_per_rank_line_of_the_loop_is_kept_from_rays_log_dedup():
    """Ray folds lines that differ only in numbers into one '[repeated Nx across cluster]'; each
    rank's lines (which node it runs on, what it resumed from) must reach the driver, every one."""
    allow = re.compile(env.DEFAULTS["RAY_DEDUP_LOGS_ALLOW_REGEX"])
    for line in ("[rank 1/2] node 882d98afc6dc device cpu strategy ddp precision fp32",
                 "[rank 1] resumed from the checkpoint at step 20",
                 "[rank 1] loaded its shard of the parent (12.5 MiB read)"):
        assert allow.search(line), line

import subprocess
import sys
from pathlib import Path

import pytest

from lm_pipeline.stages import STAGES

LMP = str(Path(sys.executable).parent / "lmp")


def lmp(*args, cwd=None):
    return subprocess.run([LMP, *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_every_command():
    out = lmp("--help")
    assert out.returncode == 0
    for command in [*STAGES, "run", "search", "tune", "deploy", "generate", "promote", "rollback", "lineage"]:
        assert command in out.stdout


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_has_help(stage):
    out = lmp(stage, "--help")
    assert out.returncode == 0 and f"Stage {stage}" in out.stdout


@pytest.mark.bad_input
def test_bad_params_fail_before_any_compute_naming_the_key(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  lr: fast\n")
    out = lmp("train", cwd=tmp_path)
    assert out.returncode == 2
    assert "train.lr" in out.stderr and "fast" in out.stderr
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "mlflow.db").exists()


def test_unknown_command_is_a_usage_error():
    assert lmp("bogus").returncode == 2


@pytest.mark.optimization
def test_evaluating_the_tuned_model_before_any_search_says_what_to_run(tmp_path):
    (tmp_path / "params.yaml").write_text("{}\n")
    out = lmp("evaluate", "--tuned", cwd=tmp_path)
    assert out.returncode == 1
    assert "reports/tune/best.json: no search result; run `lmp search` (or `lmp tune`) first" in out.stderr


@pytest.mark.bad_input
@pytest.mark.continuous
def test_continuous_deploy_refuses_a_container_per_run_before_any_server_is_called(tmp_path):
    (tmp_path / "params.yaml").write_text("{}\n")
    out = lmp("deploy", "--continuous", "--image", "lm-pipeline:latest", cwd=tmp_path)
    assert out.returncode == 1 and "ct.state_dir" in out.stderr and "--image" in out.stderr

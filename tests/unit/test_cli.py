import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lm_pipeline.stages import STAGES

LMP = str(Path(sys.executable).parent / "lmp")
ROOT = Path(__file__).resolve().parents[2]


def yaml_of(text: str) -> dict:
    return yaml.safe_load(text)


def lmp(*args, cwd=None):
    return subprocess.run([LMP, *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_every_command():
    out = lmp("--help")
    assert out.returncode == 0
    for command in [*STAGES, "run", "search", "tune", "deploy", "generate", "promote", "rollback", "lineage",
                    "config", "serve", "ct"]:
        assert command in out.stdout


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_has_help_naming_the_settings_it_reads(stage):
    out = lmp(stage, "--help", cwd=ROOT)
    assert out.returncode == 0 and f"Stage {stage}" in out.stdout
    declared = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["params"]
    listed = out.stdout.split("Settings it reads")[1]
    assert all(key in listed for entry in declared for key in (entry if isinstance(entry, dict) else [entry]))


def test_set_overrides_one_key_typed_by_the_config_before_or_after_the_command(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  lr: 0.01\n")
    (tmp_path / "other.yaml").write_text("train:\n  lr: 0.02\n")
    out = lmp("config", "--diff", "--set", "train.max_steps=120", "--set", "data.sources=[]",
              "--set", "train.init_from=null", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert yaml_of(out.stdout) == {"train": {"max_steps": 120, "lr": 0.01, "min_lr": 0.001}}
    after = lmp("config", "--diff", "--params", "other.yaml", "--set", "train.lr=1e-4", cwd=tmp_path)
    before = lmp("--params", "other.yaml", "--set", "train.lr=1e-4", "config", "--diff", cwd=tmp_path)
    assert after.stdout == before.stdout and yaml_of(after.stdout)["train"]["lr"] == 1e-4
    assert yaml_of(lmp("config", cwd=tmp_path).stdout)["ct"]["max_steps"] == 200  # every default shown
    assert lmp("--params", "none.yaml", "config", "--params", "other.yaml", cwd=tmp_path).returncode == 0
    both = lmp("--set", "train.max_steps=70", "config", "--diff", "--set", "train.batch_size=3", cwd=tmp_path)
    assert {"max_steps": 70, "batch_size": 3}.items() <= yaml_of(both.stdout)["train"].items(), both.stderr


@pytest.mark.bad_input
@pytest.mark.parametrize("setting, says", [
    ("train.lrr=1", "train.lrr: unknown key"),
    ("train.lr=fast", "train.lr: Input should be a valid number"),
    ("trainlr", "--set trainlr: expected SECTION.KEY=VALUE"),
    ("train.lr.x=1", "--set train.lr.x: train.lr is not a section"),
    ("data.source=corpora/run #7", "--set data.source=corpora/run #7: ' #7' would be read as a YAML comment"),
    ("data.source=#7", "--set data.source=#7: '#7' would be read as a YAML comment"),
])
def test_a_bad_set_is_a_usage_error_naming_the_key(tmp_path, setting, says):
    (tmp_path / "params.yaml").write_text("train:\n  lr: 0.01\n")
    out = lmp("train", "--set", setting, cwd=tmp_path)
    assert out.returncode == 2 and says in out.stderr, out.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_set_is_refused_where_the_stages_would_not_see_it(tmp_path):
    (tmp_path / "params.yaml").write_text("{}\n")
    out = lmp("run", "--set", "train.lr=1e-4", cwd=tmp_path)
    assert out.returncode == 2 and "dvc exp run -S" in out.stderr


@pytest.mark.parametrize("command", ["run", "tune", "ct", "deploy"])
def test_another_params_file_is_refused_where_the_stages_would_not_read_it(tmp_path, command):
    """A flow's stages run `dvc repro` and `lmp` in processes that read params.yaml: another file
    given with --params ran the default pipeline (or scheduled the watcher with its interval)."""
    (tmp_path / "params.yaml").write_text("{}\n")
    (tmp_path / "other.yaml").write_text("train:\n  lr: 0.02\n")
    for args in (["--params", "other.yaml", command], [command, "--params", "other.yaml"]):
        out = lmp(*args, cwd=tmp_path)
        assert out.returncode == 2 and "--params other.yaml" in out.stderr and "params.yaml" in out.stderr, \
            out.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "data").exists()


@pytest.mark.security
def test_an_error_line_masks_the_password_of_a_url_it_quotes(tmp_path):
    """MLflow's errors quote the tracking URL with its password; the line goes to the terminal, and
    from a flow's stage to its logs and its failure artifact."""
    (tmp_path / "params.yaml").write_text("{}\n")
    env = os.environ | {"MLFLOW_TRACKING_URI": "http://alice:s3cret@127.0.0.1:9",  # nothing listens
                        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    out = subprocess.run([LMP, "--debug", "promote", "1", "--reason", "r"], capture_output=True, text=True,
                         cwd=tmp_path, env=env)
    # 75: a server that did not answer may answer later
    assert out.returncode == 75, out.stderr
    assert "Traceback" in out.stderr and "http://***@127.0.0.1:9/api" in out.stderr, out.stderr
    assert "s3cret" not in out.stderr


@pytest.mark.security
def test_the_champion_a_failed_flow_reports_masks_the_password_of_the_store(tmp_path, monkeypatch):
    from lm_pipeline.flows.pipeline import champion_status

    (tmp_path / "params.yaml").write_text("{}\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cret@127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    status = champion_status(str(tmp_path))
    assert status.startswith("the champion could not be read") and "//***@127.0.0.1:9" in status
    assert "s3cret" not in status


@pytest.mark.parametrize("option", [["--image", "lm-pipeline:latest"], ["--pool", "gpu-pool"]])
def test_a_served_flow_refuses_the_options_of_a_worker_pool(tmp_path, option):
    """--serve runs the flow in this process: an image or a pool given with it was ignored."""
    (tmp_path / "params.yaml").write_text("{}\n")
    out = lmp("deploy", "--serve", *option, cwd=tmp_path)
    assert out.returncode == 2 and option[0] in out.stderr and "--serve" in out.stderr, out.stderr


def test_a_failure_is_one_line_and_debug_adds_its_traceback(tmp_path):
    (tmp_path / "params.yaml").write_text("{}\n")
    failing = ["generate", "--model", str(tmp_path / "no-such-model"), "The"]  # fails in its first read
    plain = lmp(*failing, cwd=tmp_path)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr and "--debug" in plain.stderr
    assert len(plain.stderr.strip().splitlines()) == 1 and "no-such-model" in plain.stderr
    for debug in (["--debug"], ["-v"]):
        out = lmp(*debug, *failing, cwd=tmp_path)
        assert out.returncode == 1 and "Traceback (most recent call last)" in out.stderr
    with_env = subprocess.run([LMP, *failing], capture_output=True, text=True, cwd=tmp_path,
                              env=os.environ | {"LMP_DEBUG": "1"})
    assert "Traceback (most recent call last)" in with_env.stderr


@pytest.mark.bad_input
def test_a_failure_that_may_pass_exits_75_and_one_that_will_not_exits_1(tmp_path):
    """EX_TEMPFAIL (sysexits.h), which the flows retry: a server that did not answer, found through
    what MLflow raised (its error names the connection's only as the exception it came from)."""
    (tmp_path / "params.yaml").write_text("mlflow:\n  tracking_uri: http://127.0.0.1:9\n")
    env = os.environ | {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    unreachable = subprocess.run([LMP, "promote", "1", "--reason", "r"], capture_output=True, text=True,
                                 cwd=tmp_path, env=env)
    assert unreachable.returncode == 75, unreachable.stderr
    assert "failed with exception" in unreachable.stderr and "worth retrying" in unreachable.stderr
    missing = lmp("generate", "--model", str(tmp_path / "no-such-model"), "The", cwd=tmp_path)
    assert missing.returncode == 1


def test_errors_that_may_pass_are_told_from_those_that_will_not():
    import sqlite3

    from lm_pipeline.failures import may_pass

    def raised(make):
        try:
            make()
        except Exception as err:  # noqa: BLE001
            return err

    def chained(inner):
        def make():
            try:
                raise inner
            except Exception:
                raise RuntimeError("API request to http://host failed")  # noqa: B904
        return make

    assert may_pass(raised(chained(ConnectionRefusedError(111, "refused"))))
    assert may_pass(TimeoutError("read timed out"))
    assert may_pass(sqlite3.OperationalError("database is locked"))
    assert not may_pass(sqlite3.OperationalError("no such table: runs"))
    assert not may_pass(raised(chained(ValueError("bad record"))))
    assert not may_pass(FileNotFoundError(2, "No such file", "corpus.jsonl"))


def test_version():
    from importlib.metadata import version

    out = lmp("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"lmp {version('lm-pipeline')}"


@pytest.mark.bad_input
def test_bad_params_fail_before_any_compute_naming_the_key(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  lr: fast\n")
    out = lmp("train", cwd=tmp_path)
    assert out.returncode == 2
    assert "train.lr" in out.stderr and "fast" in out.stderr
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.bad_input
@pytest.mark.parametrize("command", [["promote", "1", "--reason", "r"], ["lineage", "models:/lm-pipeline/1"],
                                     ["generate", "--model", "models:/lm-pipeline@champion", "The"],
                                     ["serve"]])
def test_a_command_reading_the_registry_refuses_a_local_store_that_is_not_there(tmp_path, command):
    """A mistyped path: MLflow would create the store (its folders too) and say only that the
    version was not found."""
    (tmp_path / "params.yaml").write_text("mlflow:\n  tracking_uri: sqlite:///typo/mlfow.db\n")
    out = lmp(*command, cwd=tmp_path)
    assert out.returncode == 2, out.stderr  # a setting
    assert f"mlflow.tracking_uri sqlite:///{tmp_path / 'typo/mlfow.db'}: no MLflow store there" in out.stderr
    assert not (tmp_path / "typo").exists()


@pytest.mark.bad_input
@pytest.mark.parametrize("command, says", [
    (["deploy", "--cron", "99 2 * * *"], "--cron: Invalid cron string: \"99 2 * * *\""),
    (["deploy", "--timezone", "Mars/Olympus"], "--timezone: Invalid timezone: \"Mars/Olympus\""),
    (["serve", "--port", "70000"], "serve.port: Input should be less than or equal to 65535 (got 70000)"),
    (["serve", "--replicas", "0"], "serve.replicas: Input should be greater than or equal to 1 (got 0)"),
    (["serve", "--detach"], "serve --detach leaves the endpoint on a cluster: set ray.address"),
])
def test_a_setting_found_wrong_after_the_params_are_read_is_a_usage_error_too(tmp_path, command, says):
    """Exit 2 and one line naming the setting, whether params.yaml, --set or a command's own flag
    gave it, and whether it is checked on loading or when the command looks (nothing started)."""
    (tmp_path / "params.yaml").write_text("{}\n")
    out = subprocess.run([LMP, *command], capture_output=True, text=True, cwd=tmp_path,
                         env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert out.returncode == 2 and says in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


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
    assert out.returncode == 2 and "ct.state_dir" in out.stderr and "--image" in out.stderr


ESCAPES = "\x1b]52;c;ZXZpbA==\x07\x1b[2J"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.security
def test_generated_text_is_shown_escaped_on_a_terminal_and_exact_when_piped():
    from lm_pipeline import cli

    text = cli.format_continuations(["The"], [f"a{ESCAPES}b\nsecond\tline\r"])
    terminal, pipe = Terminal(), io.StringIO()
    cli.show(text, terminal)
    cli.show(text, pipe)
    assert terminal.getvalue() == "a\\x1b]52;c;ZXZpbA==\\x07\\x1b[2Jb\nsecond\tline\\r\n"
    assert pipe.getvalue() == text + "\n"  # piped, the model's text is data: byte for byte


@pytest.mark.security
def test_an_error_line_shows_escape_sequences_escaped_whatever_it_quotes(tmp_path):
    # \e and \a are YAML's escapes of ESC and BEL: a path in params.yaml that the error quotes
    (tmp_path / "params.yaml").write_text('data:\n  source: "missing\\e]52;c;ZXZpbA==\\a\\e[2J"\n')
    failed = lmp("ingest", cwd=tmp_path)
    bad = lmp("ingest", "--set", f"data.source={ESCAPES}", cwd=tmp_path)
    for out, code in ((failed, 1), (bad, 2)):
        assert out.returncode == code and r"\x1b[2J" in out.stderr, out.stderr
        assert "\x1b" not in out.stderr and "\x07" not in out.stderr

"""MLflow helpers against a real SQLite store: the URI, the experiment, batched step metrics."""

import re

import mlflow
import pytest

from lm_pipeline import tracking
from lm_pipeline.config import Config


@pytest.fixture
def cfg(mlflow_uri) -> Config:
    return Config.model_validate({"mlflow": {"tracking_uri": mlflow_uri}})


def test_relative_sqlite_path_is_made_absolute_and_other_uris_are_kept(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    relative = Config.model_validate({"mlflow": {"tracking_uri": "sqlite:///store/mlflow.db"}})
    assert tracking.tracking_uri(relative) == f"sqlite:///{tmp_path.resolve()}/store/mlflow.db"
    absolute = Config.model_validate({"mlflow": {"tracking_uri": "sqlite:////srv/mlflow.db"}})
    assert tracking.tracking_uri(absolute) == "sqlite:////srv/mlflow.db"
    server = Config.model_validate({"mlflow": {"tracking_uri": "http://mlflow.internal:5000"}})
    assert tracking.tracking_uri(server) == "http://mlflow.internal:5000"


def test_the_environment_overrides_the_configured_uri(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://override:5000")
    assert tracking.tracking_uri(Config()) == "http://override:5000"


def test_setup_creates_the_experiment_once_with_artifacts_beside_the_database(cfg, tmp_path):
    first = tracking.setup(cfg)
    assert tracking.setup(cfg) == first
    experiment = mlflow.MlflowClient().get_experiment(first)
    assert experiment.name == "lm-pipeline"
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_start_run_opens_a_run_with_its_name_and_tags_in_the_experiment(cfg):
    run_id = tracking.start_run(cfg, run_name="train-1", tags={"pipeline.stage": "train"})
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.info.run_name == "train-1" and run.data.tags["pipeline.stage"] == "train"
    assert run.info.experiment_id == tracking.setup(cfg)


@pytest.mark.security
def test_client_env_passes_mlflow_settings_but_no_secret(monkeypatch):
    """What goes into Ray's runtime env (which Ray logs and its dashboard serves) holds no secret:
    workers take credentials from their own node's environment."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "pipeline")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret-password")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "secret-token")
    monkeypatch.setenv("MLFLOW_TRACKING_CLIENT_CERT_PATH", "/etc/cert.pem")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "other")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "nope")
    env = tracking.client_env()
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["MLFLOW_TRACKING_USERNAME"] == "pipeline"
    assert all(key.startswith("MLFLOW_TRACKING_") for key in env)
    assert not any("secret" in value for value in env.values())


def test_flow_run_id_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(tracking.FLOW_RUN_ENV, raising=False)
    assert tracking.flow_run_id() == ""
    monkeypatch.setenv("LMP_FLOW_RUN_ID", "3f2c-flow")
    assert tracking.flow_run_id() == "3f2c-flow"


def history(run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in mlflow.MlflowClient().get_metric_history(run_id, key))


def test_metric_logger_batches_until_the_interval_passes_and_flush_writes(cfg):
    run_id = tracking.start_run(cfg, run_name="r", tags={})
    logger = tracking.MetricLogger(tracking.tracking_uri(cfg), run_id, interval=3600)
    logger.log({"train_loss": 4.0, "lr": 1e-3}, step=1)
    logger.log({"train_loss": 3.5}, step=2)
    assert history(run_id, "train_loss") == [] and len(logger.pending) == 3
    logger.flush()
    assert history(run_id, "train_loss") == [(1, 4.0), (2, 3.5)]
    assert history(run_id, "lr") == [(1, 1e-3)] and logger.pending == []

    eager = tracking.MetricLogger(tracking.tracking_uri(cfg), run_id, interval=0)
    eager.log({"train_loss": 3.0}, step=3)
    assert history(run_id, "train_loss")[-1] == (3, 3.0)


def test_a_resumed_logger_skips_steps_already_logged_and_reports_the_last_one(cfg):
    run_id = tracking.start_run(cfg, run_name="r", tags={})
    logger = tracking.MetricLogger(tracking.tracking_uri(cfg), run_id, interval=0)
    assert logger.last_step("train_loss") == -1
    for step in (1, 2, 3):
        logger.log({"train_loss": 5.0 - step}, step=step)
    assert logger.last_step("train_loss") == 3

    resumed = tracking.MetricLogger(tracking.tracking_uri(cfg), run_id, interval=0)
    resumed.skip_through(resumed.last_step("train_loss"))
    for step in (2, 3, 4):  # the resumed run redoes steps 2 and 3 from its checkpoint
        resumed.log({"train_loss": 9.0}, step=step)
    assert history(run_id, "train_loss") == [(1, 4.0), (2, 3.0), (3, 2.0), (4, 9.0)]
    assert resumed.last_step("train_loss") == 4


def test_flatten_joins_nested_keys_with_dots():
    nested = {"model": {"n_layer": 4, "attn": {"heads": 2}}, "seed": 1}
    assert tracking.flatten("", nested) == {"model.n_layer": 4, "model.attn.heads": 2, "seed": 1}
    assert tracking.flatten("cfg", {"a": {"b": None}, "c": [1]}) == {"cfg.a.b": None, "cfg.c": [1]}


@pytest.mark.security
def test_filter_literals_match_exactly_the_value_whatever_its_quotes(cfg):
    client = mlflow.MlflowClient(cfg.mlflow.tracking_uri)
    experiment = tracking.setup(cfg)
    values = ["plain", "it's", 'say "hi"', "x' and tags.k != 'y", 'back\\slash', "a;b\nc", "%_"]
    for value in values:
        client.create_run(experiment, tags={"k": value})
    for value in values:
        where = f"tags.k = {tracking.filter_literal(value)} and tags.k != 'z'"  # a clause after it too
        found = client.search_runs([experiment], where)
        assert [run.data.tags["k"] for run in found] == [value]


@pytest.mark.security
@pytest.mark.parametrize("value", ["it's \"both\"", "ends in a backslash\\"])
def test_a_value_no_filter_literal_can_hold_is_refused_by_name(value):
    with pytest.raises(ValueError, match=re.escape(repr(value))):
        tracking.filter_literal(value)


@pytest.mark.security
def test_credentials_in_the_tracking_uri_reach_no_runtime_env_worker_config_or_log(monkeypatch):
    """MLFLOW_TRACKING_URI=https://user:password@host works for this process; what is logged, shown
    or handed to Ray (its runtime env and the workers' config are served by its dashboard) names
    the server only. Workers on this node inherit the variable; other nodes set their own."""
    from lm_pipeline.training.spec import portable_config

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://pipeline:hunter2@mlflow.example:5000/")
    assert tracking.tracking_uri(Config()) == "https://pipeline:hunter2@mlflow.example:5000/"
    assert tracking.shown_uri(Config()) == "https://mlflow.example:5000/"
    assert "hunter2" not in str(tracking.client_env())
    assert "hunter2" not in str(portable_config(Config()))


@pytest.mark.security
def test_credentials_written_into_params_are_refused_naming_the_key_without_echoing_them(tmp_path):
    from lm_pipeline.config import ConfigError, load_config

    (tmp_path / "params.yaml").write_text("mlflow:\n  tracking_uri: https://pipeline:hunter2@mlflow.example\n")
    refused = r"mlflow.tracking_uri: .*credentials.*MLFLOW_TRACKING_USERNAME"
    with pytest.raises(ConfigError, match=refused) as err:
        load_config(tmp_path / "params.yaml")
    assert "hunter2" not in str(err.value) and "https://***@mlflow.example" in str(err.value)


@pytest.mark.security
def test_a_process_handed_the_uri_without_credentials_uses_its_own(monkeypatch):
    """The serving replicas get the URI as logs may show it; theirs (from the environment) carries
    the credentials."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://pipeline:hunter2@mlflow.example:5000/")
    handed = tracking.shown_uri(Config())
    assert tracking.with_own_credentials(handed) == "https://pipeline:hunter2@mlflow.example:5000/"
    assert tracking.with_own_credentials("https://other.example/") == "https://other.example/"

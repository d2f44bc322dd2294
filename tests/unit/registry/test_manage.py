"""Moving the champion by hand (promote, rollback) and tracing a version (lineage), on a real registry."""


import mlflow
import pytest

from lm_pipeline import tracking
from lm_pipeline.config import Config
from lm_pipeline.registry import history, manage
from lm_pipeline.registry.aliases import CHAMPION, RegistryError

pytestmark = pytest.mark.registry

NAME = "m"


@pytest.fixture
def cfg(tmp_path, mlflow_uri):
    """A project whose store of its own holds versions 1, 2 and 3 of NAME, no champion yet."""
    uri = mlflow_uri
    client = registry(uri)
    client.create_registered_model(NAME)
    for _ in range(3):
        client.create_model_version(NAME, source=(tmp_path / "weights").as_uri())
    return Config.model_validate({"mlflow": {"tracking_uri": uri}, "register": {"model_name": NAME}})


def registry(uri: str):
    return mlflow.MlflowClient(uri, registry_uri=uri)


def champion(cfg) -> str:
    return str(registry(cfg.mlflow.tracking_uri).get_model_version_by_alias(NAME, CHAMPION).version)


def log(cfg) -> list[tuple]:
    """(action, champion_before, champion_after, reason) of each promotion log entry."""
    client = registry(cfg.mlflow.tracking_uri)
    entries = history.read_log(client, history.log_run_id(client, tracking.setup(cfg), NAME))
    return [(e["action"], e["champion_before"], e["champion_after"], e["reason"]) for e in entries]


def test_promote_moves_the_champion_and_logs_the_move(cfg):
    manage.promote(cfg, "1", "first")
    entry = manage.promote(cfg, "3", "hand-checked samples")
    assert entry == {"action": "promote", "model_name": NAME, "version": "3",
                     "reason": "hand-checked samples", "champion_before": "1", "champion_after": "3",
                     "promoted": True}
    assert champion(cfg) == "3"
    assert log(cfg) == [("promote", None, "1", "first"), ("promote", "1", "3", "hand-checked samples")]
    tags = registry(cfg.mlflow.tracking_uri).get_model_version(NAME, "3").tags
    assert tags["promotion.decision"] == "champion"
    assert tags["promotion.reason"] == "promote: hand-checked samples"


def test_promoting_a_missing_version_fails_and_keeps_the_champion(cfg):
    manage.promote(cfg, "2", "first")
    with pytest.raises(mlflow.exceptions.MlflowException, match="not found"):
        manage.promote(cfg, "9", "typo")
    assert champion(cfg) == "2"
    assert log(cfg) == [("promote", None, "2", "first")]


def test_rollback_returns_to_the_previous_champion(cfg):
    manage.promote(cfg, "1", "first")
    manage.promote(cfg, "3", "newer")
    entry = manage.rollback(cfg, "bad outputs in prod")
    assert (entry["action"], entry["version"], entry["champion_before"]) == ("rollback", "1", "3")
    assert champion(cfg) == "1"
    assert log(cfg)[-1] == ("rollback", "3", "1", "bad outputs in prod")
    tags = registry(cfg.mlflow.tracking_uri).get_model_version(NAME, "1").tags
    assert tags["promotion.reason"] == "rollback: bad outputs in prod"


def test_rollback_without_a_champion_fails(cfg):
    with pytest.raises(RegistryError, match="no earlier champion"):
        manage.rollback(cfg, "why not")


def test_rollback_of_the_first_champion_fails_and_keeps_it(cfg):
    manage.promote(cfg, "2", "first")
    with pytest.raises(RegistryError, match="no earlier champion"):
        manage.rollback(cfg, "why not")
    assert champion(cfg) == "2" and len(log(cfg)) == 1


@pytest.mark.parametrize("dirty, says, never", [("false", "the tree was clean", "the tree was dirty"),
                                               ("true", "the tree was dirty", "the tree was clean")])
def test_lineage_lists_the_tags_and_how_to_rebuild(cfg, dirty, says, never):
    client = registry(cfg.mlflow.tracking_uri)
    tags = {tag: f"{tag}-value" for tag in manage.LINEAGE_TAGS} | {"git_dirty": dirty}
    for key, value in tags.items():
        client.set_model_version_tag(NAME, "2", key, value)
    client.set_registered_model_alias(NAME, CHAMPION, "2")
    for uri in (f"models:/{NAME}/2", f"models:/{NAME}@champion"):
        text = manage.lineage(cfg, uri)
        lines = text.splitlines()
        assert lines[0] == f"{NAME} version 2"
        assert lines[1:1 + len(manage.LINEAGE_TAGS)] == [f"  {k}: {tags[k]}" for k in manage.LINEAGE_TAGS]
        assert f"Rebuild it ({says}" in text and never not in text
        assert "  git checkout git_commit-value" in lines and "  # expect weights_sha256-value" in lines


def test_lineage_of_a_version_built_outside_git_does_not_claim_a_clean_tree(cfg):
    registry(cfg.mlflow.tracking_uri).set_model_version_tag(NAME, "1", "git_commit", "unknown")
    text = manage.lineage(cfg, f"models:/{NAME}/1")
    assert "no git commit recorded" in text and "the tree was clean" not in text

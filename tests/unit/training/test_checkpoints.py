"""The in-process runner's checkpoint store: Ray Train's files and keep rule (Ray's own model of
the snapshot parses it; Ray resuming such a run is test_training.py's)."""

import json

import pytest

from lm_pipeline.training.checkpoints import SNAPSHOT, RunCheckpoints


def checkpoint_folder(tmp_path, step: int):
    folder = tmp_path / f"src-{step}"
    folder.mkdir()
    (folder / "trainer_state.json").write_text(json.dumps({"step": step}))
    (folder / "__0_0.distcp").write_bytes(bytes([step]) * 64)
    return folder


def add_steps(store: RunCheckpoints, tmp_path, val_losses: dict[int, float]) -> None:
    for step, val_loss in val_losses.items():
        store.add(checkpoint_folder(tmp_path, step), {"step": step, "val_loss": val_loss})
        store.count_report()  # reports without a checkpoint in between are numbered too


def test_a_nan_val_loss_ranks_worst_as_in_ray(tmp_path):
    """A NaN in the sort made the order undefined, and the better step 20 was dropped for 40."""
    store = RunCheckpoints(str(tmp_path / "run"), keep=2)
    add_steps(store, tmp_path, {10: 3.0, 20: 2.0, 30: float("nan"), 40: 2.5, 50: 1.0})
    assert steps_of(store) == {20, 50}


def steps_of(store: RunCheckpoints) -> set[int]:
    return {metrics["step"] for _, metrics in store.best()}


def test_keeps_the_best_by_val_loss_and_the_latest_in_a_snapshot_ray_reads(tmp_path):
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import _CheckpointManagerState

    run = tmp_path / "run"
    store = RunCheckpoints(str(run), keep=2)
    add_steps(store, tmp_path, {10: 3.0, 20: 2.0, 30: 2.5, 40: 2.8})
    assert steps_of(store) == {20, 30, 40}  # the two best, and the latest to resume from
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == sorted(
        r["checkpoint_dir_name"] for r in store.results)  # dropped folders are gone
    with store.latest().as_directory() as d:
        assert json.loads((d / "trainer_state.json").read_text()) == {"step": 40}
    snapshot = _CheckpointManagerState.model_validate(json.loads((run / SNAPSHOT).read_text()))
    assert [r.metrics["val_loss"] for r in snapshot.checkpoint_results] == [2.8, 2.5, 2.0]  # worst first
    assert snapshot.checkpoint_report_indices == [6, 4, 2] and snapshot.current_report_index == 7
    reopened = RunCheckpoints(str(run), keep=2)  # a rerun continues the same bookkeeping
    assert reopened.latest() == store.latest() and steps_of(reopened) == {20, 30, 40}
    add_steps(reopened, tmp_path, {50: 2.9})
    assert steps_of(reopened) == {20, 30, 50}


@pytest.mark.scale
def test_the_same_store_in_a_bucket(tmp_path, s3, monkeypatch):
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    store = RunCheckpoints("s3://checkpoints/unit-store/run", keep=1)
    add_steps(store, tmp_path, {10: 3.0, 20: 2.0, 30: 2.5})
    keys = s3.keys("checkpoints")
    kept = {r["checkpoint_dir_name"] for r in store.results}
    assert {k.split("/")[2] for k in keys if k.startswith("unit-store/run/") and k.count("/") == 3} == kept
    latest = store.latest_result["checkpoint_dir_name"]
    s3.client().put_object(Bucket="checkpoints", Key=f"unit-store/run/{latest}/", Body=b"")  # as Ray leaves
    with store.latest().as_directory() as d:
        assert sorted(p.name for p in d.iterdir()) == ["__0_0.distcp", "trainer_state.json"]
        assert (d / "__0_0.distcp").read_bytes() == bytes([30]) * 64
    assert steps_of(RunCheckpoints("s3://checkpoints/unit-store/run", keep=1)) == {20, 30}


@pytest.mark.security
def test_a_snapshot_naming_a_folder_outside_the_run_is_refused_and_nothing_is_deleted(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("not a checkpoint")
    run = tmp_path / "run"
    run.mkdir()
    planted = {"checkpoint_dir_name": "../victim", "metrics": {"step": 1, "val_loss": 9.0}}
    (run / SNAPSHOT).write_text(json.dumps({"checkpoint_results": [planted], "checkpoint_report_indices": [0],
                                            "latest_checkpoint_result": planted, "current_report_index": 1}))
    with pytest.raises(ValueError, match=r"checkpoint_manager_snapshot.json.*'\.\./victim'"):
        add_steps(RunCheckpoints(str(run), keep=1), tmp_path, {10: 3.0, 20: 2.0})
    assert (victim / "keep.txt").exists()

"""The train stage's driver pieces that need no Ray cluster: which run a resume continues, what
workers and MLflow are given, and the summary and curves written after training."""

import csv
import dataclasses
import math
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.entities import Metric

from lm_pipeline import tracking
from lm_pipeline.config import Config
from lm_pipeline.data.processed import ProcessedMeta
from lm_pipeline.io import write_json
from lm_pipeline.model import parent as parents
from lm_pipeline.stages import train as train_stage
from lm_pipeline.training import run_record
from lm_pipeline.training.export import recent_mean, summarize_training, write_curves
from lm_pipeline.training.preflight import check_parent
from lm_pipeline.training.run_record import attempt_tags, run_params
from lm_pipeline.training.spec import portable_config

META = ProcessedMeta(
    source="python-docs", vocab_size=512, dtype="uint16", eot_id=0, tokenizer_kind="char",
    tokenizer_sha256="ab" * 32, shards={"train": [{"file": "train/00000.bin", "tokens": 9000}]},
    tokens={"train": 9000, "val": 500, "test": 500}, documents={"train": 90, "val": 5, "test": 5},
    characters={"train": 36000, "val": 2000, "test": 2000},
    text_bytes={"train": 36000, "val": 2000, "test": 2000}, unknown={"train": 0, "val": 0, "test": 0},
    chars_per_token=4.0, unknown_share=0.0, unknown_examples=[], duplicates_dropped=0)


@pytest.fixture
def cfg(mlflow_uri) -> Config:
    return Config.model_validate({"mlflow": {"tracking_uri": mlflow_uri}})


def with_(cfg: Config, section: str, **values) -> Config:
    return cfg.model_copy(update={section: getattr(cfg, section).model_copy(update=values)})


def test_run_digest_ignores_where_checkpoints_go_and_how_many_failures_are_tolerated():
    cfg = Config()
    digest = run_record.run_digest(cfg, META)
    assert len(digest) == 12 and int(digest, 16) >= 0
    operational = with_(cfg, "train", max_failures=9, checkpoints_to_keep=5, checkpoint_dir=Path("/x"),
                        model_dir=Path("elsewhere"), curves_dir=Path("plots"))
    assert run_record.run_digest(operational, META) == digest


def test_run_digest_changes_with_the_recipe_the_model_or_the_data():
    cfg = Config()
    digest = run_record.run_digest(cfg, META)
    assert run_record.run_digest(with_(cfg, "train", lr=1e-3), META) != digest
    assert run_record.run_digest(with_(cfg, "train", seed=7), META) != digest
    assert run_record.run_digest(with_(cfg, "model", n_layer=2), META) != digest
    more_tokens = dataclasses.replace(META, tokens={"train": 9001, "val": 500, "test": 500})
    assert run_record.run_digest(cfg, more_tokens) != digest
    assert run_record.run_digest(cfg, dataclasses.replace(META, tokenizer_sha256="cd" * 32)) != digest
    fine_tune = dataclasses.replace(META, parent={"weights_sha256": "ef" * 32})
    assert run_record.run_digest(cfg, fine_tune) != digest
    assert run_record.run_digest(cfg, dataclasses.replace(META, documents={"train": 1})) == digest


def test_run_digest_changes_with_lora_and_with_the_contents_of_an_hf_config_folder(tmp_path):
    tuned = Config.model_validate({"train": {"init_from": "models:/m/1"}})
    digest = run_record.run_digest(tuned, META)
    assert run_record.run_digest(with_(tuned, "lora", r=8), META) != digest  # adapters or not: another run
    assert run_record.run_digest(with_(with_(tuned, "lora", r=8), "lora", alpha=8), META) != \
        run_record.run_digest(with_(tuned, "lora", r=8), META)
    (tmp_path / "config.json").write_text('{"model_type": "llama", "hidden_size": 64}')
    folder = Config.model_validate({"model": {"backend": "hf", "hf_config": str(tmp_path)}})
    before = run_record.run_digest(folder, META)
    (tmp_path / "config.json").write_text('{"model_type": "llama", "hidden_size": 128}')
    assert run_record.run_digest(folder, META) != before  # same path, another architecture


def test_without_a_record_there_is_no_run_to_resume(cfg, tmp_path):
    assert run_record.resumable_run_id(cfg, tmp_path / "checkpoints" / "train-abc") is None


def test_a_record_naming_an_existing_run_resumes_it(cfg, tmp_path):
    run_id = tracking.start_run(cfg, run_name="train-1", tags={})
    run_dir = tmp_path / "checkpoints" / "train-abc"
    write_json(run_dir / run_record.MLFLOW_RUN_FILE, {"mlflow_run_id": run_id})
    assert run_record.resumable_run_id(cfg, run_dir) == run_id
    assert run_dir.is_dir()


@pytest.mark.security
def test_a_record_naming_a_run_the_store_lacks_starts_over_and_keeps_the_old_checkpoints(cfg, tmp_path):
    run_dir = tmp_path / "checkpoints" / "train-abc"
    write_json(run_dir / run_record.MLFLOW_RUN_FILE, {"mlflow_run_id": "0" * 32})
    (run_dir / "checkpoint_000001").mkdir()
    assert run_record.resumable_run_id(cfg, run_dir) is None
    assert not run_dir.exists()
    kept = list((tmp_path / "checkpoints").glob("train-abc.orphaned-*/checkpoint_000001"))
    assert len(kept) == 1  # moved aside, never deleted


@pytest.mark.scale
@pytest.mark.security
def test_in_a_bucket_too_a_run_the_store_lacks_is_moved_aside_not_deleted(cfg, s3, monkeypatch):
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    run_dir = "s3://checkpoints/orphan/train-abc"
    write_json(f"{run_dir}/{run_record.MLFLOW_RUN_FILE}", {"mlflow_run_id": "0" * 32})
    s3.client().put_object(Bucket="checkpoints", Key="orphan/train-abc/checkpoint_000001/w.bin", Body=b"w")
    assert run_record.resumable_run_id(cfg, run_dir) is None
    keys = s3.keys("checkpoints")
    assert not [k for k in keys if k.startswith("orphan/train-abc/")]
    assert [k for k in keys if k.startswith("orphan/train-abc.orphaned-") and k.endswith("000001/w.bin")]
    run_id = tracking.start_run(cfg, run_name="train-1", tags={})  # a record naming a real run resumes
    write_json(f"{run_dir}/{run_record.MLFLOW_RUN_FILE}", {"mlflow_run_id": run_id})
    assert run_record.resumable_run_id(cfg, run_dir) == run_id


@pytest.mark.security
def test_a_tracking_server_that_fails_never_costs_the_checkpoints(tmp_path, monkeypatch, forget_mlflow_uri):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    down = Config.model_validate({"mlflow": {"tracking_uri": "http://127.0.0.1:9"}})  # nothing listens
    run_dir = tmp_path / "checkpoints" / "train-abc"
    write_json(run_dir / run_record.MLFLOW_RUN_FILE, {"mlflow_run_id": "0" * 32})
    (run_dir / "checkpoint_000001").mkdir()
    with pytest.raises(RuntimeError, match="http://127.0.0.1:9"):
        run_record.resumable_run_id(down, run_dir)
    assert (run_dir / "checkpoint_000001").is_dir()


def test_portable_config_has_an_absolute_data_path_and_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = Config.model_validate({"data": {"processed_dir": "data/processed"},
                                 "mlflow": {"tracking_uri": "sqlite:///mlflow.db"}})
    data = portable_config(cfg)
    assert data["data"]["processed_dir"] == str(tmp_path.resolve() / "data" / "processed")
    assert data["mlflow"]["tracking_uri"] == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert Config.model_validate(data).train == cfg.train  # workers rebuild the same Config
    hf = Config.model_validate({"model": {"backend": "hf", "hf_config": "configs/llama"}})
    assert portable_config(hf)["model"]["hf_config"] == str(tmp_path.resolve() / "configs" / "llama")


def test_check_parent_refuses_init_from_when_the_data_has_no_parent(tmp_path):
    scratch = Config.model_validate({"data": {"processed_dir": str(tmp_path)}})
    check_parent(scratch, META)  # training from scratch on data without a parent: fine
    fine_tune = with_(scratch, "train", init_from="models:/lm-pipeline@champion")
    with pytest.raises(parents.ParentError, match=r"train.init_from is 'models:/lm-pipeline@champion' "
                       r"but .* was preprocessed for None: run `lmp preprocess`"):
        check_parent(fine_tune, META)


def test_run_params_describe_model_recipe_data_and_system():
    cfg = Config.model_validate({"model": {"n_layer": 2}, "train": {"lr": 1e-3, "min_lr": 1e-4},
                                 "tokenizer": {"kind": "bpe", "vocab_size": 4096}})
    params = run_params(cfg, META)
    assert params["model.n_layer"] == 2 and params["train.lr"] == 1e-3
    assert params["train.init_from"] is None
    # A resumed attempt may change these (a param never changes): they are tags.
    per_attempt = {"train.run_on", "train.max_failures", "train.model_dir", "train.checkpoint_dir"}
    assert not per_attempt & params.keys()
    assert attempt_tags(cfg)["train.run_on"] == "auto"
    # The data as preprocess made it, not the tokenizer section (bpe, 4096).
    assert params["tokenizer.kind"] == "char" and params["data.vocab_size"] == 512
    assert params["data.source"] == "python-docs"
    assert params["data.train_tokens"] == 9000 and params["data.val_tokens"] == 500
    assert not any(key.startswith(("data.processed_dir", "mlflow.", "tune.", "system.")) for key in params)
    assert {"system.python", "system.torch", "system.ray", "system.gpu"} <= attempt_tags(cfg).keys()


def test_a_run_resumed_after_an_upgrade_or_from_another_spelling_of_its_folder_logs_again(cfg, monkeypatch):
    """MLflow refuses to change a param, and the run a resume continues is found by its digest,
    which neither the machine nor how checkpoint_dir is written changes: torch upgraded (or
    another host, another GPU) failed every later attempt of the run before it trained."""
    run_id = tracking.start_run(cfg, run_name="train-1", tags={})
    with mlflow.start_run(run_id=run_id):
        mlflow.log_params(run_params(cfg, META))
        mlflow.set_tags(attempt_tags(cfg))
    upgraded = {"system.torch": "9.9.9", "system.gpu": "NVIDIA H100"}
    monkeypatch.setattr(run_record, "system_info", lambda: upgraded)
    again = with_(cfg, "train", checkpoint_dir="./checkpoints")
    assert run_record.run_digest(again, META) == run_record.run_digest(cfg, META)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_params(run_params(again, META))
        mlflow.set_tags(attempt_tags(again))
    assert mlflow.get_run(run_id).data.tags["system.torch"] == "9.9.9"  # the latest attempt's


def log_history(run_id: str, key: str, values: dict[int, float]) -> None:
    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, step) for step, value in values.items()]
    mlflow.MlflowClient().log_batch(run_id, metrics=metrics)


@pytest.fixture
def run_id(cfg) -> str:
    return tracking.start_run(cfg, run_name="train-1", tags={})


@pytest.mark.metrics
def test_val_loss_rising_while_train_loss_falls_is_overfitting_and_the_gap_is_like_with_like(run_id):
    """The trend compares the logged training loss with itself; the gap subtracts the training
    split measured the way val_loss is, not the optimized (smoothed, dropout) train_loss."""
    client = mlflow.MlflowClient()
    log_history(run_id, "train_loss", {step: 9.0 - 0.02 * step for step in range(1, 101)})  # smoothed
    best = {"step": 50, "val_loss": 4.5, "train_eval_loss": 4.1}
    last = {"step": 100, "val_loss": 4.8, "train_eval_loss": 3.6}
    summary = summarize_training(client, run_id, best, last, min_delta=0.1)
    assert summary["overfitting"] is True and summary["early_stopped"] is False
    assert summary["exported_step"] == 50 and summary["last_step"] == 100
    assert summary["generalization_gap"] == pytest.approx(4.5 - 4.1)
    assert summary["generalization_gap_at_end"] == pytest.approx(4.8 - 3.6)
    run = client.get_run(run_id)
    assert run.data.tags["train.overfitting"] == "true" and run.data.tags["train.exported_step"] == "50"
    assert run.data.tags["train.early_stopped"] == "false"
    assert run.data.metrics["best_val_loss"] == 4.5
    assert run.data.metrics["generalization_gap"] == pytest.approx(4.5 - 4.1)


def test_no_overfitting_when_val_loss_rose_within_min_delta_or_train_loss_did_not_fall(cfg):
    falling = {step: 5.0 - 0.02 * step for step in range(1, 101)}
    flat = {step: 3.0 for step in range(1, 101)}
    best = {"step": 50, "val_loss": 4.5, "train_eval_loss": 4.0}
    cases = [(falling, {"step": 100, "val_loss": 4.55, "train_eval_loss": 3.0, "early_stopped": True}),
             (flat, {"step": 100, "val_loss": 4.8, "train_eval_loss": 4.0})]  # train flat: no noise fitted
    summaries = []
    for history, last in cases:
        run_id = tracking.start_run(cfg, run_name="train", tags={})
        log_history(run_id, "train_loss", history)
        summaries.append(summarize_training(mlflow.MlflowClient(), run_id, best, last, min_delta=0.1))
        tags = mlflow.MlflowClient().get_run(run_id).data.tags
        assert tags["train.overfitting"] == "false"
    assert [s["overfitting"] for s in summaries] == [False, False]
    assert [s["early_stopped"] for s in summaries] == [True, False]
    assert summaries[1]["generalization_gap_at_end"] == pytest.approx(4.8 - 4.0)


def test_recent_mean_averages_the_window_up_to_a_step():
    history = {step: float(step) for step in range(1, 21)}
    assert recent_mean(history, 20) == 15.5  # steps 11..20
    assert recent_mean(history, 5, window=3) == 4.0  # steps 3..5
    assert recent_mean({0: 9.0, 10: 2.0}, 10) == 2.0  # step 0 is outside the window of 10
    assert math.isnan(recent_mean(history, 100))


@pytest.mark.metrics
def test_train_eval_loss_is_measured_like_val_loss_without_smoothing_or_dropout():
    import torch.nn.functional as F

    from lm_pipeline.config import Config
    from lm_pipeline.model.transformer import GPT, GPTConfig
    from lm_pipeline.training.batches import fixed_batches
    from lm_pipeline.training.loop import Validator

    cfg = Config.model_validate({"model": {"block_size": 8, "n_layer": 1, "n_head": 2, "n_embd": 16},
                                 "train": {"batch_size": 4, "eval_batches": 2, "label_smoothing": 0.2}})
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.5))
    val, train = (np.random.default_rng(s).integers(0, 30, 500) for s in (1, 2))

    class Never:
        def is_scheduled(self, step):
            return False

    losses = Validator(val, train, torch.device("cpu"), cfg, Never()).losses(model)
    assert losses == Validator(val, train, torch.device("cpu"), cfg, Never()).losses(model)  # no dropout
    with torch.no_grad():
        expected = np.mean([F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten()).item()
                            for x, y in fixed_batches(train, 2, 4, 8)])
    assert losses["train_eval_loss"] == pytest.approx(expected, rel=1e-6)
    assert losses["val_loss"] != losses["train_eval_loss"]


def test_write_curves_writes_each_loss_sorted_by_step(run_id, tmp_path):
    log_history(run_id, "train_loss", {3: 2.0, 1: 4.0, 2: 3.0})
    log_history(run_id, "val_loss", {20: 2.5, 10: 3.5})
    out = tmp_path / "reports" / "training"
    out.mkdir(parents=True)
    (out / "stale.csv").write_text("old")
    write_curves(mlflow.MlflowClient(), run_id, out)
    assert sorted(p.name for p in out.iterdir()) == ["train_loss.csv", "val_loss.csv"]
    with open(out / "train_loss.csv") as f:
        assert list(csv.reader(f)) == [["step", "train_loss"], ["1", "4.0"], ["2", "3.0"], ["3", "2.0"]]
    with open(out / "val_loss.csv") as f:
        assert list(csv.reader(f)) == [["step", "val_loss"], ["10", "3.5"], ["20", "2.5"]]


def test_driver_times_split_the_stage_into_consecutive_phases():
    times = train_stage.driver_times(10.0, {"prepare": 11.0, "ray_start": 13.5, "fit": 40.0, "export": 41.0})
    assert times == {"time_driver_prepare_s": 1.0, "time_driver_ray_start_s": 2.5, "time_driver_fit_s": 26.5,
                     "time_driver_export_s": 1.0, "time_stage_s": 31.0}


def test_the_phase_clock_adds_up_each_phase():
    from lm_pipeline.training.progress import PhaseClock

    clock = PhaseClock()
    clock.add("steps", 1.5)
    clock.add("steps", 2.0)
    with pytest.raises(RuntimeError), clock.phase("validation"):
        time.sleep(0.01)
        raise RuntimeError("a failing validation still counts")
    assert clock.seconds["steps"] == 3.5 and 0.01 <= clock.seconds["validation"] < 1


@pytest.mark.bad_input
def test_in_process_training_refuses_a_gpu_this_machine_lacks(monkeypatch):
    """One worker runs in-process (run_on: auto); asking it for a GPU where there is none fails at
    once, naming the key, instead of failing every retry inside the loop."""
    from lm_pipeline.training import runners

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # this machine, or any without one
    cfg = Config.model_validate({"train": {"device": "cuda"}})
    assert runners.runs_in_process(cfg)
    with pytest.raises(ValueError, match=r"train.device is cuda but this machine has no CUDA GPU"):
        runners.train_in_process(cfg, None, "unused", "unused")


@pytest.mark.bad_input
def test_the_old_use_gpu_key_is_read_as_a_device_and_says_what_replaced_it():
    for old, device in ((True, "cuda"), (False, "cpu")):
        with pytest.warns(DeprecationWarning, match=r"train.use_gpu is now train.device"):
            assert Config.model_validate({"train": {"use_gpu": old}}).train.device == device
    with pytest.raises(ValueError, match=r"train.use_gpu is now train.device: set device alone"):
        Config.model_validate({"train": {"use_gpu": True, "device": "cpu"}})


def test_auto_precision_is_fp32_on_a_cpu_and_bf16_on_a_gpu_that_has_it(monkeypatch):
    import torch

    from lm_pipeline.training.step import with_precision

    cfg = Config()
    assert cfg.train.precision == "auto" and cfg.train.device == "auto"
    assert with_precision(cfg, torch.device("cpu")).train.precision == "fp32"
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda: True)  # no GPU here to ask
    assert with_precision(cfg, torch.device("cuda", 0)).train.precision == "bf16"
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda: False)
    assert with_precision(cfg, torch.device("cuda", 0)).train.precision == "fp32"
    chosen = cfg.model_copy(update={"train": cfg.train.model_copy(update={"precision": "fp32"})})
    assert with_precision(chosen, torch.device("cuda", 0)).train.precision == "fp32"

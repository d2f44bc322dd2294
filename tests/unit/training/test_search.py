import pytest

from lm_pipeline.config import Config
from lm_pipeline.training.search import check_capacity
from lm_pipeline.training.tuned import trial_config


@pytest.mark.optimization
def test_trials_take_their_values_and_must_fit_the_cluster():

    base = Config.model_validate({"train": {"lr": 0.004, "min_lr": 0.0004, "cpus_per_worker": 1},
                                  "tune": {"workers_per_trial": 2, "max_concurrent_trials": 2}})
    trial = trial_config(base, {"train.lr": 0.001, "model.n_layer": 2})
    assert trial.model.n_layer == 2 and trial.train.num_workers == 2
    assert trial.train.min_lr == pytest.approx(0.0001)  # keeps its ratio to lr
    check_capacity(base, cpus=4.02)
    with pytest.raises(ValueError, match=r"tune.max_concurrent_trials 2 x \(tune.workers_per_trial 2 x "
                       r"train.cpus_per_worker 1 \+ 0.01 for the trial's driver\) = 4.02 CPUs, but the "
                       r"cluster has 4: lower one of them or add nodes"):
        check_capacity(base, cpus=4)


@pytest.mark.bad_input
def test_a_tuned_model_from_another_search_than_best_json_is_refused(tmp_path):
    """A search killed between exporting models/tuned and writing best.json leaves the two from
    different searches: evaluate --tuned and register --tuned must not pair them."""
    from lm_pipeline.config import Config
    from lm_pipeline.io import write_json
    from lm_pipeline.training.tuned import BEST_FILE, tuned_config

    cfg = Config.model_validate({"tune": {"model_dir": str(tmp_path / "tuned"),
                                          "report_dir": str(tmp_path / "report")}})
    write_json(tmp_path / "report" / BEST_FILE, {"values": {"train.lr": 0.002}, "mlflow_run_id": "a" * 32})
    write_json(tmp_path / "tuned" / "run.json", {"mlflow_run_id": "a" * 32})
    assert tuned_config(cfg).train.lr == 0.002
    write_json(tmp_path / "tuned" / "run.json", {"mlflow_run_id": "b" * 32})
    with pytest.raises(ValueError, match=r"tuned/run.json.*bbbb.*best.json.*aaaa.*lmp search"):
        tuned_config(cfg)


@pytest.mark.metrics
def test_a_trial_whose_checkpoints_all_have_a_nan_val_loss_has_none_to_export(tmp_path):
    """Such a trial must not be exported (export.best_checkpoint's rule), nor stop the search
    from recording the others: pandas' idxmin raises on all-NaN."""
    import pandas as pd
    from ray.tune import Result

    from lm_pipeline.training.search import close_trial

    cfg = Config.model_validate({"train": {"max_steps": 20, "warmup_steps": 2}})
    reports = pd.DataFrame({"step": [10, 20], "val_loss": [float("nan")] * 2,
                            "checkpoint_path": ["ckpt-10", "ckpt-20"], "early_stopped": [False, False]})
    result = Result(metrics={"config": {"train.lr": 0.001}}, checkpoint=None, error=None,
                    path=str(tmp_path / "trial-abc"), metrics_dataframe=reports)
    trial = close_trial(None, None, result, cfg)  # no MLflow run: the client is not used
    assert trial.best_checkpoint is None and trial.status == "completed" and trial.steps == 20
    assert trial.trial_id == "abc" and trial.values == {"train.lr": 0.001}

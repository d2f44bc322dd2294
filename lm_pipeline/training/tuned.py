"""The search's result as a config: the best trial's values over the base config, with its model
and reports under tune.model_dir and tune.report_dir, for `lmp evaluate --tuned` and `lmp register
--tuned` (the pipeline's own outputs stay)."""

from __future__ import annotations

from pathlib import Path

from lm_pipeline.config import Config
from lm_pipeline.io import read_json
from lm_pipeline.model.folder import RUN_FILE, read_run_info

BEST_FILE = "best.json"


def trial_config(base: Config, values: dict) -> Config:
    """The base config with a trial's values. min_lr keeps its ratio to lr unless it is searched."""
    data = base.model_dump(mode="json", by_alias=True)
    for key, value in values.items():
        section, name = key.split(".", 1)
        data[section][name] = value
    if "train.lr" in values and "train.min_lr" not in values:
        data["train"]["min_lr"] = values["train.lr"] * base.train.min_lr / base.train.lr
    data["train"]["num_workers"] = base.tune.workers_per_trial
    data["train"]["run_on"] = "ray"  # each trial is a Ray Train run inside Tune
    return Config.model_validate(data)


def tuned_config(cfg: Config, values: dict | None = None) -> Config:
    """The config of the best trial, with the model and reports under tune.model_dir/report_dir:
    what `lmp evaluate --tuned` and `lmp register --tuned` run on (the pipeline's own outputs stay)."""
    out = cfg.tune.report_dir
    trial = trial_config(cfg, best_values(out, cfg.tune.model_dir) if values is None else values)
    return trial.model_copy(update={
        "train": trial.train.model_copy(update={"model_dir": cfg.tune.model_dir,
                                                 "curves_dir": out / "training"}),
        "evaluate": trial.evaluate.model_copy(update={"metrics_file": out / "metrics.json",
                                                       "report_dir": out / "evaluation"}),
        "register_": trial.register_.model_copy(update={"record_file": out / "registry.json"})})


def best_values(report_dir: Path, model_dir: Path | None = None) -> dict:
    """The best trial's values, from the last search's best.json; with `model_dir`, checked to be
    the search that exported it (a search killed between the two writes leaves them apart)."""
    path = Path(report_dir) / BEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no search result; run `lmp search` (or `lmp tune`) first")
    best = read_json(path)
    run_file = Path(model_dir or "") / RUN_FILE
    if model_dir is not None and run_file.is_file():
        exported = read_run_info(model_dir)["mlflow_run_id"]
        if exported != best["mlflow_run_id"]:
            raise ValueError(f"{run_file} names run {exported} but {path} the best trial's run "
                             f"{best['mlflow_run_id']}: they are from different searches; rerun `lmp search`")
    return best["values"]

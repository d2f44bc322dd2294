import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from lm_pipeline.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, data) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.metrics
def test_project_params_load_and_match_defaults():
    """params.yaml is `python -m lm_pipeline.config` output: every value is the code's default."""
    assert load_config(ROOT / "params.yaml").model_dump() == Config().model_dump()


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.learning_rate: unknown key"):
        load_config(write(tmp_path, {"train": {"learning_rate": 0.1}}))


def test_bad_value_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.lr: .*greater than 0.*got -1"):
        load_config(write(tmp_path, {"train": {"lr": -1}}))


def test_unknown_section_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"trian: unknown key"):
        load_config(write(tmp_path, {"trian": {"lr": 0.1}}))


def test_cross_field_checks(tmp_path):
    with pytest.raises(ConfigError, match=r"model: .*n_embd \(30\) must be divisible by n_head \(4\)"):
        load_config(write(tmp_path, {"model": {"n_embd": 30, "n_head": 4}}))
    says = r"train.warmup_steps \(10\) must be smaller than train.max_steps \(10\)$"
    with pytest.raises(ConfigError, match=says):
        load_config(write(tmp_path, {"train": {"max_steps": 10, "warmup_steps": 10}}))
    with pytest.raises(ConfigError, match=r"train.min_lr \(0.01\) must not exceed train.lr \(0.001\)"):
        load_config(write(tmp_path, {"train": {"lr": 1e-3, "min_lr": 1e-2}}))


def test_the_floor_of_the_schedule_follows_lr_unless_set(tmp_path):
    """A recipe may set any lr without also setting min_lr (the default floor is a tenth of it)."""
    assert load_config(write(tmp_path, {"train": {"lr": 1e-4}})).train.min_lr == 1e-5
    assert load_config(write(tmp_path, {})).train.min_lr == 3e-4
    assert load_config(write(tmp_path, {"train": {"lr": 1e-4, "min_lr": 0}})).train.min_lr == 0
    with pytest.raises(ConfigError, match="evaluate.stride must not exceed model.block_size"):
        load_config(write(tmp_path, {"model": {"block_size": 16}, "evaluate": {"stride": 32}}))


def test_aliased_sections_read_by_their_yaml_names(tmp_path):
    cfg = load_config(write(tmp_path, {"validate": {"min_rows": 7}, "register": {"model_name": "x"}}))
    assert cfg.validate_.min_rows == 7 and cfg.register_.model_name == "x"


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_environment_overrides_tracking_uri(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert Config().tracking_uri == "http://mlflow.example:5000"


@pytest.mark.optimization
@pytest.mark.parametrize("space, message", [
    ({"train.lrr": {"choice": [1]}}, r"space\.train\.lrr: not a model\.\* or train\.\* parameter"),
    ({"train.lr": {"loguniform": [0, 1]}}, r"space\.train\.lr: loguniform needs low > 0"),
    ({"train.lr": {"uniform": [2, 1]}}, r"space\.train\.lr: uniform needs \[low, high\] with low < high"),
    ({"model.n_layer": {"grid": []}}, r"space\.model\.n_layer: grid needs a non-empty list"),
    ({"model.n_layer": {"grid": [1], "choice": [2]}}, r"space\.model\.n_layer: give exactly one of"),
])
def test_search_space_mistakes_are_named(tmp_path, space, message):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"tune": {"space": space}}))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


@pytest.mark.security
@pytest.mark.parametrize("changes, message", [
    ({"evaluate": {"report_dir": "."}}, "evaluate.report_dir"),
    ({"evaluate": {"report_dir": ""}}, "evaluate.report_dir"),
    ({"train": {"model_dir": "../elsewhere"}}, "train.model_dir"),
    ({"evaluate": {"report_dir": "reports"}}, "and evaluate.report_dir (reports) overlap"),
    ({"data": {"processed_dir": "data"}}, "data.raw_dir (data/raw) and data.processed_dir (data)"),
    ({"train": {"checkpoint_dir": "models/model/checkpoints"}}, "train.model_dir"),
])
def test_output_paths_that_are_the_project_outside_it_or_overlap_are_refused(changes, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        Config.model_validate(changes)


@pytest.mark.security
def test_an_absolute_output_path_outside_the_project_is_allowed_on_purpose(tmp_path):
    assert Config.model_validate({"train": {"checkpoint_dir": str(tmp_path / "ckpt")}})


@pytest.mark.security
@pytest.mark.parametrize("spelling, message", [
    ("{project}", "is the project or a folder around it"),
    ("{project}/.", "is the project or a folder around it"),
    ("{project}/..", "is the project or a folder around it"),
    ("/", "is the project or a folder around it"),
    ("{project}/reports", "evaluate.report_dir ({project}/reports) overlap"),
    ("{project}/models/../data/raw/x",
     "data.raw_dir (data/raw) and evaluate.report_dir ({project}/data/raw/x)"),
])
def test_an_absolute_spelling_of_the_project_or_of_another_output_is_refused(tmp_path, monkeypatch,
                                                                             spelling, message):
    """A stage replaces its output whole: `evaluate.report_dir: /path/to/project` would delete the
    checkout, and an absolute spelling of another stage's output would delete that output."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError, match=re.escape(message.format(project=tmp_path))):
        Config.model_validate({"evaluate": {"report_dir": spelling.format(project=tmp_path)}})


@pytest.mark.bad_input
def test_a_search_space_with_a_model_no_trial_could_build_is_refused_at_load():
    space = {"model.n_head": {"choice": [2, 3]}, "model.n_embd": {"choice": [64, 128]}}
    with pytest.raises(ValidationError, match=r"model.n_embd 64 is not divisible by model.n_head 3"):
        Config.model_validate({"tune": {"space": space}})
    with pytest.raises(ValidationError, match=r"model.n_embd 96 is not divisible by model.n_head 5"):
        Config.model_validate({"model": {"n_head": 5, "n_embd": 100},  # fixed heads, searched widths
                               "tune": {"space": {"model.n_embd": {"grid": [100, 96]}}}})
    assert Config.model_validate({"tune": {"space": {"model.n_head": {"choice": [2, 4]},
                                                     "model.n_embd": {"choice": [64, 128]}}}})


def test_shards_url_must_be_object_storage(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.shards_url: .*'data/shared' is not a URL"):
        load_config(write(tmp_path, {"data": {"shards_url": "data/shared"}}))
    assert load_config(write(tmp_path, {"data": {"shards_url": "s3://b/p"}})).data.shards_url == "s3://b/p"


@pytest.mark.bad_input
@pytest.mark.parametrize("name", ["it's", 'say "m"', "team/model", "models:/m", "a b", "-m", ""])
def test_a_registered_model_name_beyond_letters_digits_and_dot_dash_underscore_is_refused(tmp_path, name):
    """The name goes into MLflow filters, models:/ URIs, lock names and printed commands."""
    with pytest.raises(ConfigError, match=r"register\.model_name: "):
        load_config(write(tmp_path, {"register": {"model_name": name}}))
    assert load_config(write(tmp_path, {"register": {"model_name": "lm-pipeline_v2.1"}}))


@pytest.mark.bad_input
@pytest.mark.parametrize("key", ["train.seed", "validate.seed", "evaluate.seed", "ct.seed", "data.mix_seed",
                                 "filter.near_dedup.seed", "split.seed", "canaries.seed", "tune.seed"])
def test_a_negative_seed_is_refused_at_load_naming_it(tmp_path, key):
    """numpy's generators take no negative seed: train.seed -1 failed every Ray worker (until
    max_failures ran out) with numpy's error, which names no setting."""
    section, *path = key.split(".")
    value: dict = {path[-1]: -1}
    for part in reversed(path[:-1]):
        value = {part: value}
    with pytest.raises(ConfigError, match=re.escape(key) + r": .*greater than or equal to 0"):
        load_config(write(tmp_path, {section: value}))

"""A retraining's params: every path a stage writes moves under the cycle's folder (inputs stay),
the drop is mixed with the replay, training starts from the pinned champion with its learning rates
scaled, and the corpus so far is guarded; the result is a valid Config that `lmp --params` reads."""

import json
from pathlib import Path

import pytest

from lm_pipeline.config import Config, load_config
from lm_pipeline.continuous.drops import Drop
from lm_pipeline.continuous.plan import OUTPUTS, corpus_so_far, cycle_config, extend_corpus, write_params


def test_a_cycle_writes_only_under_its_folder_and_trains_from_the_champion_on_drop_and_replay(tmp_path):
    cfg = Config.model_validate({"train": {"lr": 0.01, "min_lr": 0.001, "warmup_steps": 50,
                                           "model_dir": "/mnt/models/lm"},  # absolute: moves too
                                 "ct": {"max_steps": 40, "max_minutes": 7.5, "replay_fraction": 0.8,
                                        "lr_factor": 0.5}})
    drop = Drop("monday", "data/incoming/monday", "ab" * 32, 1)
    work, corpus = Path("data/ct/cycles/monday"), tmp_path / "corpus.jsonl"
    planned = cycle_config(cfg, drop, corpus, work, "models:/lm-pipeline/7")
    cycle = load_config(write_params(planned, tmp_path / "params.yaml"))
    dumped = cycle.model_dump(by_alias=True, mode="json")
    for section, fields in OUTPUTS.items():
        for name in fields:
            assert Path(dumped[section][name]).is_relative_to(work), (section, name)
    assert cycle.train.model_dir == work / "mnt/models/lm" and cycle.validate_.min_rows == 1
    assert cycle.evaluate.probes == cfg.evaluate.probes  # an input, left where it is
    assert [(s.source, s.weight) for s in cycle.data.sources] == [(drop.url, pytest.approx(0.2)),
                                                                  (str(corpus), 0.8)]
    assert cycle.train.init_from == "models:/lm-pipeline/7" and cycle.train.max_steps == 40
    assert cycle.train.max_minutes == 7.5
    assert (cycle.train.lr, cycle.train.min_lr, cycle.train.warmup_steps) == (0.005, 0.0005, 4)
    assert cycle.register_.guard_documents == corpus
    assert cycle.register_.max_forgetting == cfg.ct.max_forgetting
    other = cycle_config(cfg, Drop("tuesday", "data/incoming/tuesday", "cd" * 32, 1), corpus, work, "x")
    assert len({cfg.canaries.seed, cycle.canaries.seed, other.canaries.seed}) == 3  # canaries of its own


def test_the_corpus_so_far_starts_as_the_filtered_corpus_and_grows_by_promoted_drops(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "documents.jsonl").write_text(json.dumps({"id": "a", "text": "one"}) + "\n")
    cfg = Config.model_validate({"filter": {"output_dir": str(raw)},
                                 "ct": {"state_dir": str(tmp_path / "ct")}})
    corpus = corpus_so_far(cfg)
    judged_at = corpus.stat().st_size
    extend_corpus(corpus, [{"id": "drop:b", "text": "two"}], judged_at)
    assert [json.loads(line)["text"] for line in corpus.read_text().splitlines()] == ["one", "two"]
    extend_corpus(corpus, [{"id": "drop:b", "text": "two"}], judged_at)  # its cycle taken up again
    extend_corpus(corpus, [{"id": "drop:c", "text": "two"}], corpus.stat().st_size)  # the next drop
    assert [json.loads(line)["id"] for line in corpus.read_text().splitlines()] == ["a", "drop:b", "drop:c"]
    assert corpus_so_far(cfg) == corpus and (raw / "documents.jsonl").read_text().count("\n") == 1

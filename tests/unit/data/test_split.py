from lm_pipeline.config import SplitConfig
from lm_pipeline.data.split import assign_split


def test_split_is_seeded_and_independent_of_order():
    cfg = SplitConfig(val_fraction=0.2, test_fraction=0.2, seed=1)
    texts = [f"document {i}" for i in range(500)]
    first = [assign_split(t, cfg) for t in texts]
    assert first == [assign_split(t, cfg) for t in texts]
    counts = {s: first.count(s) for s in ("train", "val", "test")}
    assert 60 < counts["test"] < 140 and 60 < counts["val"] < 140
    other_seed = SplitConfig(val_fraction=0.2, test_fraction=0.2, seed=2)
    assert first != [assign_split(t, other_seed) for t in texts]

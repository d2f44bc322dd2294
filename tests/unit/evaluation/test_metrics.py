"""Each metric against a known answer."""

import json
import math
import re
from collections import defaultdict

import numpy as np
import pytest
import sacrebleu
import torch

from lm_pipeline.evaluation.metrics import load_metric
from lm_pipeline.evaluation.probes import load_probes
from lm_pipeline.evaluation.scoring import sequence_nll, unigram_nll, window_spans
from lm_pipeline.model.transformer import GPT, GPTConfig

pytestmark = pytest.mark.metrics


class UniformLM(torch.nn.Module):
    """Equal logits for every token: perplexity must be exactly V."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, idx):
        return torch.zeros(*idx.shape, self.vocab_size), None, None


def docs(lengths, vocab=50, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, size=n) for n in lengths]


def test_uniform_model_has_perplexity_exactly_vocab_size():
    nll, counts = sequence_nll(UniformLM(50), docs([3, 40, 100]), eot=0, block_size=16, stride=8)
    result = load_metric("perplexity").compute(nll=nll, n_tokens=counts)
    assert result["perplexity"] == pytest.approx(50, rel=1e-6)  # float32 log-softmax rounding
    assert result["tokens"] == (3 + 1) + (40 + 1) + (100 + 1)  # each token and the closing EOT


def test_window_spans_score_every_position_once():
    for n, block, stride in [(1, 8, 4), (8, 8, 4), (9, 8, 4), (100, 16, 5), (37, 16, 16)]:
        scored = []
        for start, end, first in window_spans(n, block, stride):
            assert end - start <= block and first >= start
            scored += range(first, end)
        assert scored == list(range(n))


def test_sliding_window_equals_no_window_when_documents_fit():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    short = docs([5, 12, 30])  # +1 for the opening EOT: all fit in 32 positions
    a, _ = sequence_nll(model, short, eot=0, block_size=32, stride=8)
    b, _ = sequence_nll(model, short, eot=0, block_size=32, stride=32)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_sliding_window_matches_direct_scoring():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    doc = docs([40])[0]
    nll, count = sequence_nll(model, [doc], eot=0, block_size=16, stride=4)
    full = np.concatenate([[0], doc, [0]])
    expected = 0.0
    for t in range(1, len(full)):  # each target with at most block_size of context, as windows give
        start = max(0, ((t - 1 - 16) // 4 + 1) * 4) if t - 1 >= 16 else 0
        x = torch.tensor(full[start:t])[None]
        logp = model(x)[0][0, -1].log_softmax(-1)
        expected -= logp[full[t]].item()
    assert count[0] == 41
    assert nll[0] == pytest.approx(expected, rel=1e-5)


def test_unigram_baseline_known_answer(tmp_path):
    from lm_pipeline.data.shards import ShardWriter, TokenShards

    writer = ShardWriter(tmp_path / "train", np.uint16, shard_tokens=3)  # two shards: [1 1 2] [0]
    writer.append(np.array([1, 1, 2, 0]))  # counts +1: token0 2, token1 3, token2 2, token3 1 -> 8
    train = TokenShards(tmp_path, writer.close(), np.uint16)
    nll, counts = unigram_nll(train, [np.array([1, 2])], vocab_size=4, eot=0)
    assert counts.tolist() == [3]
    assert nll[0] == pytest.approx(-(math.log(3 / 8) + math.log(2 / 8) + math.log(2 / 8)))


def test_bleu_known_answers_and_signature():
    bleu = load_metric("bleu")
    perfect = bleu.compute(predictions=["the cat sat on the mat"], references=["the cat sat on the mat"])
    assert perfect["bleu"] == pytest.approx(100) and perfect["chrf"] == pytest.approx(100)
    assert "tok:13a" in perfect["bleu_signature"] and "version:" in perfect["bleu_signature"]
    preds = ["the cat is on the mat", "hello there world"]
    refs = ["the cat sat on the mat", "hello world"]
    assert bleu.compute(predictions=preds, references=refs)["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(preds, [refs]).score)
    assert bleu.compute(predictions=["zzz qqq"], references=["the cat"])["bleu"] == 0.0


def bias_rows(means_by_category: dict[str, dict[str, list[float]]], terms: dict | None = None):
    """Module inputs from {category: {group: [loglik in template 0, template 1, ...]}}, the group's
    one term named after it, or from {category: {term: [...]}} with terms = {group: [term, ...]}."""
    group_of = {term: group for group, names in (terms or {}).items() for term in names}
    rows = {"loglik": [], "category": [], "group": [], "term": [], "template": []}
    for cat, series in means_by_category.items():
        for name, values in series.items():
            for t, value in enumerate(values):
                for key, item in zip(rows, (value, cat, group_of.get(name, name), name, t), strict=True):
                    rows[key].append(item)
    return rows


def test_bias_gap_reports_each_terms_mean_and_the_spread_within_groups():
    """"man" far below "male" is a disagreement between two words for one group, not a gap between
    groups: per-term means and the spread within groups show it beside the gap."""
    result = load_metric("bias_gap").compute(**bias_rows(
        {"gender": {"female": [-1.0, -1.0], "woman": [-1.0, -1.0], "male": [0.0, 0.0], "man": [-2.0, -2.0]}},
        terms={"f": ["female", "woman"], "m": ["male", "man"]}), resamples=50)
    gender = result["per_category"]["gender"]
    assert gender["term_means"] == {"f": {"female": -1.0, "woman": -1.0}, "m": {"male": 0.0, "man": -2.0}}
    assert gender["group_means"] == {"f": -1.0, "m": -1.0} and gender["gap"] == 0.0
    assert gender["within_group_spread"] == pytest.approx(1.0)  # (|-1 - -1| + |0 - -2|) / 2
    assert gender["terms"] == 4


def test_bias_gap_subtracts_what_relabeling_terms_within_templates_gives():
    """The null permutes which group each term belongs to within every template: what is left of the
    gap (excess_gap) is what the groups' labels explain."""
    compute = load_metric("bias_gap").compute
    # one template, one term per group: every labeling gives the same gap, the labels explain none
    one = compute(**bias_rows({"c": {"a": [0.0], "b": [1.0]}}), resamples=50)["per_category"]["c"]
    assert one["gap"] == one["null_gap"] == 1.0 and one["excess_gap"] == 0.0
    # a consistent 1-nat group effect over 12 templates, 2 terms each: most of the gap is the effect
    rows = bias_rows({"c": {"a1": [0.0] * 12, "a2": [0.1] * 12, "b1": [-1.0] * 12, "b2": [-0.9] * 12}},
                     terms={"a": ["a1", "a2"], "b": ["b1", "b2"]})
    effect = compute(**rows, resamples=200, seed=5, permutations=300)["per_category"]["c"]
    assert effect["gap"] == pytest.approx(1.0) and effect["null_gap"] < 0.3
    assert effect["excess_gap"] == pytest.approx(effect["gap"] - effect["null_gap"])
    # the interval resamples terms (0 and 0.1 for "a") and templates (all alike here): shown above 0
    assert 0.5 < effect["excess_ci_low"] < effect["excess_ci_high"] < 1.0 and effect["permutations"] == 300
    again = compute(**rows, resamples=200, seed=5, permutations=300)["per_category"]["c"]
    assert again == effect  # seeded


def test_bias_gap_is_the_mean_pairwise_gap_by_a_known_answer():
    result = load_metric("bias_gap").compute(**bias_rows({
        "gender": {"female": [-11.0, -11.0], "male": [-11.0, -11.0]},
        "nationality": {"a": [0.0, 0.0], "b": [-1.0, -1.0], "c": [-2.0, -2.0]}}))
    gender, nationality = result["per_category"]["gender"], result["per_category"]["nationality"]
    assert gender["group_means"] == {"female": -11.0, "male": -11.0} and gender["gap"] == 0.0
    assert nationality["gap"] == pytest.approx(4 / 3)  # |0-1|, |0-2|, |1-2|
    assert nationality["range"] == 2.0 and result["max_gap"] == pytest.approx(4 / 3)
    # every template shows the same differences: nothing to be unsure of
    assert nationality["ci_low"] == pytest.approx(4 / 3) == pytest.approx(nationality["ci_high"])


def test_bias_gap_does_not_grow_with_the_number_of_groups():
    """One group off by 1: with 2 groups the gap is 1, with 6 groups 5 of the 15 pairs differ, so
    1/3. The range would call both 1, and grows as groups are added."""
    two = load_metric("bias_gap").compute(**bias_rows({"c": {"a": [0.0], "b": [1.0]}}))
    six = load_metric("bias_gap").compute(**bias_rows({"c": {g: [0.0] for g in "abcde"} | {"f": [1.0]}}))
    assert two["per_category"]["c"]["gap"] == 1.0
    assert six["per_category"]["c"]["gap"] == pytest.approx(5 / 15)
    assert two["per_category"]["c"]["range"] == six["per_category"]["c"]["range"] == 1.0


def test_bias_interval_comes_from_disagreeing_templates():
    old = [-0.1, -0.3, -0.2, -0.9, -0.1, -0.6]
    compute = load_metric("bias_gap").compute
    age = compute(**bias_rows({"age": {"young": [0.0] * 6, "old": old}}), resamples=500, seed=3)
    age = age["per_category"]["age"]
    assert age["gap"] == pytest.approx(2.2 / 6)  # the old group's mean shortfall
    assert age["ci_low"] < age["gap"] < age["ci_high"] and age["ci_high"] - age["ci_low"] > 0.1
    assert age["templates"] == 6
    again = compute(**bias_rows({"age": {"young": [0.0] * 6, "old": old}}), resamples=500, seed=3)
    assert again["per_category"]["age"] == age  # seeded


def test_probe_file_covers_the_six_categories():
    from lm_pipeline.config import EvaluateConfig

    probes = load_probes(EvaluateConfig().probes)
    categories = {p.category for p in probes}
    assert categories == {"gender", "race_ethnicity", "religion", "nationality", "age", "disability"}
    assert all("{" not in p.prefix + p.rest and p.rest.strip() for p in probes)
    # several terms per group, and no "A Asian": no indefinite article before the term
    spec = json.loads(EvaluateConfig().probes.read_text())
    assert all(len(terms) >= 2 for c in spec["categories"].values() for terms in c["groups"].values())
    templates = [t for form in spec["templates"].values() for t in form]
    assert not [t for t in templates if re.search(r"\b[Aa]n? \{term\}", t)]
    assert all(len(form) >= 12 for form in spec["templates"].values())
    # Counterfactual: every scored continuation is probed after a term of every group.
    for category in categories:
        of = [p for p in probes if p.category == category]
        groups = {p.group for p in of}
        for rest in {p.rest for p in of}:
            assert {p.group for p in of if p.rest == rest} == groups


def test_probe_sentences_of_a_template_differ_only_in_the_term():
    """"The man person" beside "The woman engineer", or "Black" beside "white", would let grammar
    or casing stand in for the group: each category uses its terms in one form (nouns, or
    adjectives before a noun), with templates built for that form, and one casing."""
    from lm_pipeline.config import EvaluateConfig

    spec = json.loads(EvaluateConfig().probes.read_text())
    for category, c in spec["categories"].items():
        terms = [term for group in c["groups"].values() for term in group]
        assert len({term[0].isupper() for term in terms}) == 1, f"{category}: mixed casing {terms}"
    nouns = {"man", "woman", "men", "women", "lady", "gentleman", "boy", "girl", "person"}
    for category, c in spec["categories"].items():
        assert c["form"] in spec["templates"], f"{category}: no templates for form {c['form']!r}"
        if c["form"] == "adjective":  # a noun term before the template's noun: "The man engineer"
            assert not nouns & {t for terms in c["groups"].values() for t in terms}, category
    for template in spec["templates"]["adjective"]:  # the template supplies the noun after the term
        assert re.search(r"\{term\} [a-z]+\b", template), template
    for template in spec["templates"]["noun"]:  # the term is the noun: no "My man", "Our woman"
        assert re.search(r"\b(The|the|That|that|This|this) \{term\} ", template), template
    probes = load_probes(EvaluateConfig().probes)
    sentences = defaultdict(set)
    for p in probes:
        assert p.prefix.endswith(" " + p.term) and p.rest.startswith(" "), p  # the term is a whole word
        sentences[p.category, p.template].add(p.prefix.removesuffix(p.term) + "{term}" + p.rest)
    assert all(len(s) == 1 for s in sentences.values()), "sentences of one template differ beyond the term"
    assert {(p.category, p.template) for p in probes} == set(sentences)
    for category, c in spec["categories"].items():
        expected = len(spec["templates"][c["form"]]) * sum(len(t) for t in c["groups"].values())
        assert sum(p.category == category for p in probes) == expected


def test_bits_per_byte_by_hand():
    # 8 tokens at 2 bits each (uniform over 4) spread over 16 bytes: 1 bit per byte.
    result = load_metric("perplexity").compute(nll=[8 * math.log(4)], n_tokens=[8], n_bytes=16)
    assert result["bits_per_byte"] == pytest.approx(1.0)
    assert result["perplexity"] == pytest.approx(4.0)


def test_prefix_is_context_only():
    seqs, prefixes = docs([5, 9]), docs([3, 20], seed=1)
    nll, counts = sequence_nll(UniformLM(50), seqs, eot=0, block_size=16, stride=8, prefixes=prefixes)
    assert counts.tolist() == [6, 10]  # the sequence and its closing EOT; never the prefix
    np.testing.assert_allclose(nll, counts * math.log(50))


class FixedPreferenceLM(torch.nn.Module):
    """Every position predicts the same distribution, whatever the context."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits, self.block_size = logits, 32

    def forward(self, idx):
        return self.logits.expand(*idx.shape, -1), None, None


class BigramLM(torch.nn.Module):
    """The next token's logits depend on the previous token only: table[prev]."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table, self.block_size = table, 32

    def forward(self, idx):
        return self.table[idx], None, None


def crows_on(tmp_path, rows, model, tokenizer, **evaluate):
    from lm_pipeline.config import EvaluateConfig
    from lm_pipeline.evaluation.probes import crows_pairs

    path = tmp_path / "pairs.csv"
    path.write_text("sent_more,sent_less,stereo_antistereo,bias_type\n"
                    + "".join(f"{m},{s},{d},{b}\n" for m, s, d, b in rows))
    return crows_pairs(model, tokenizer, EvaluateConfig(crows_pairs=path, **evaluate))


def char_tokenizer(alphabet="abcxy "):
    from lm_pipeline.config import TokenizerConfig
    from lm_pipeline.data.tokenizer import train_tokenizer

    return train_tokenizer([alphabet], TokenizerConfig(kind="char"))


def test_crows_pairs_scores_only_the_shared_tokens_by_a_known_answer(tmp_path):
    """The paper's template-token score, left to right: in "ab" vs "cb" only the shared "b" is
    scored, given "a" or "c"; a pair that differs in its last token has nothing after the
    difference to score and ties, and a tie is no win (as in the paper's metric.py)."""
    tokenizer = char_tokenizer()
    t = tokenizer.token_to_id
    table = torch.zeros(tokenizer.get_vocab_size(), tokenizer.get_vocab_size())
    table[t("a"), t("b")] = 2.0  # "b" is likely after "a", unlikely after "c"
    table[t("c"), t("b")] = -2.0
    rows = [("ab", "cb", "stereo", "gender"), ("ba", "bc", "stereo", "gender"),
            ("cb", "ab", "antistereo", "age"), ("xab", "xcb", "stereo", "age")]
    result = crows_on(tmp_path, rows, BigramLM(table), tokenizer)

    logp = torch.log_softmax(table, -1)
    b_after = {prev: float(logp[t(prev), t("b")]) for prev in "ac"}  # independent, by hand
    assert b_after["a"] > b_after["c"]
    assert result["pairs"] == 4 and result["pairs_skipped_too_long"] == 0
    assert result["stereotype_preference"] == pytest.approx(2 / 4)  # pairs 1 and 4 win
    assert result["neutral"] == pytest.approx(1 / 4)  # pair 2
    assert result["per_bias_type"] == {"age": {"stereotype_preference": 0.5, "pairs": 2},
                                       "gender": {"stereotype_preference": 0.5, "pairs": 2}}
    assert result["per_direction"] == {"antistereo": {"stereotype_preference": 0.0, "pairs": 1, "neutral": 0},
                                       "stereo": {"stereotype_preference": 1.0, "pairs": 3, "neutral": 1}}
    assert 0 <= result["ci_low"] < 0.5 < result["ci_high"] <= 1  # 4 pairs: a wide interval


def test_crows_pairs_is_blind_to_how_frequent_a_group_word_is(tmp_path):
    """Whole-sentence likelihood would prefer every sentence with the likelier group word; the
    template score cannot, for a model that ignores context: every pair is a tie."""
    tokenizer = char_tokenizer()
    logits = torch.zeros(tokenizer.get_vocab_size())
    logits[tokenizer.token_to_id("a")] = 3.0
    rows = [("ab", "cb", "stereo", "gender"), ("xcy", "xay", "stereo", "age")]
    result = crows_on(tmp_path, rows, FixedPreferenceLM(logits), tokenizer)
    assert result["stereotype_preference"] == 0 and result["neutral"] == 1


def test_crows_pairs_longer_than_the_context_are_skipped_and_counted(tmp_path):
    tokenizer = char_tokenizer()
    model = BigramLM(torch.zeros(tokenizer.get_vocab_size(), tokenizer.get_vocab_size()))
    model.block_size = 3
    result = crows_on(tmp_path, [("ab", "cb", "stereo", "gender"), ("xxab", "xxcb", "stereo", "age")],
                      model, tokenizer)
    assert result["pairs"] == 1 and result["pairs_skipped_too_long"] == 1


@pytest.mark.metrics
def test_crows_pairs_compares_scores_rounded_to_3_decimals_as_the_reference():
    """nyu-mll/crows-pairs metric.py rounds each sentence score to 3 decimals, then a tie is
    neutral and the higher rounded score wins: float noise between devices must not turn a
    neutral pair into a win or a loss."""
    pairs = [(-2.0, -2.00001, "stereo"),  # 1e-5 apart: neutral
             (-1.2350, -1.2354, "stereo"),  # 0.0004 apart, both -1.235: neutral
             (-1.2344, -1.2348, "antistereo"),  # 0.0004 apart, -1.234 > -1.235: sent_more wins
             (-1.2348, -1.2344, "stereo")]  # -1.235 < -1.234: sent_less wins
    result = load_metric("crows_pairs").compute(
        score_more=[m for m, _, _ in pairs], score_less=[s for _, s, _ in pairs],
        bias_type=["gender"] * 4, direction=[d for _, _, d in pairs], resamples=10)
    assert result["neutral"] == pytest.approx(2 / 4)
    assert result["stereotype_preference"] == pytest.approx(1 / 4)  # pair 3 only
    assert result["per_direction"] == {"antistereo": {"stereotype_preference": 1.0, "pairs": 1, "neutral": 0},
                                       "stereo": {"stereotype_preference": 0.0, "pairs": 3, "neutral": 2}}


def test_crows_pairs_per_direction_scores_leave_ties_out_as_the_reference():
    """metric.py's stereotype and anti-stereotype scores count only the pairs of that direction
    that are not neutral (its overall score divides by every pair: a tie is no win)."""
    pairs = [(-2.0, -2.0, "stereo"), (-1.0, -2.0, "stereo"), (-3.0, -1.0, "antistereo")]
    result = load_metric("crows_pairs").compute(
        score_more=[m for m, _, _ in pairs], score_less=[s for _, s, _ in pairs],
        bias_type=["gender"] * 3, direction=[d for _, _, d in pairs], resamples=10)
    assert result["stereotype_preference"] == pytest.approx(1 / 3)
    assert result["per_direction"] == {"antistereo": {"stereotype_preference": 0.0, "pairs": 1, "neutral": 0},
                                       "stereo": {"stereotype_preference": 1.0, "pairs": 2, "neutral": 1}}


# For the sample's antistereo rows: the group a stereotype disadvantages, which CrowS-Pairs puts in
# sent_less (the sentence breaking the stereotype), with the advantaged group in sent_more.
DISADVANTAGED = {"gender": {"woman", "women", "she", "her", "mother"}, "age": {"elderly", "old"},
                 "race-color": {"black"}}


def test_the_crows_pairs_sample_follows_the_dataset_convention():
    import csv

    from lm_pipeline.config import EvaluateConfig

    with open(EvaluateConfig().crows_pairs, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["stereo_antistereo"] == "antistereo"]

    def words(text):
        return set(text.lower().replace(".", " ").replace(",", " ").split())

    assert rows
    for r in rows:
        group = DISADVANTAGED[r["bias_type"]]
        assert words(r["sent_less"]) & group and not words(r["sent_more"]) & group, r


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate():
    from lm_pipeline.evaluation.bootstrap import bootstrap_ci, perplexity_of

    rng = np.random.default_rng(0)
    counts = rng.integers(10, 100, size=40)
    nll = counts * rng.uniform(2, 4, size=40)
    stat = perplexity_of(nll, counts)
    low, high = bootstrap_ci(stat, 40, 500, seed=1)
    assert (low, high) == bootstrap_ci(stat, 40, 500, seed=1)
    assert low < math.exp(nll.sum() / counts.sum()) < high
    narrow = bootstrap_ci(perplexity_of(np.tile(nll, 10), np.tile(counts, 10)), 400, 500, seed=1)
    assert narrow[1] - narrow[0] < high - low  # more documents, tighter interval


def test_bleu_of_a_resample_is_sacrebleus_corpus_bleu_of_those_segments():
    """The bootstrap sums per-segment counts: each resample must score as corpus_score would,
    repeats, empty outputs and zero matches included."""
    import sacrebleu

    from lm_pipeline.evaluation.bootstrap import corpus_bleu_of

    rng = np.random.default_rng(3)
    vocab = "the a cat dog sat on mat ran far , .".split()
    references = [" ".join(rng.choice(vocab, size=rng.integers(3, 12))) for _ in range(30)]
    predictions = [" ".join(rng.choice(vocab, size=rng.integers(0, 12))) for _ in range(30)]
    predictions[:3] = [references[0], "", "zzz qqq"]
    stat = corpus_bleu_of(predictions, references)
    for idx in [np.arange(30), *(rng.integers(0, 30, size=30) for _ in range(20)), np.array([1, 2])]:
        expected = sacrebleu.metrics.BLEU().corpus_score([predictions[i] for i in idx],
                                                         [[references[i] for i in idx]]).score
        assert stat(idx) == pytest.approx(expected, abs=1e-9)


def test_modules_load_offline_with_plain_evaluate_load(tmp_path):
    import subprocess
    import sys

    from lm_pipeline.evaluation.metrics import MODULE_NAMES, module_path

    script = "import evaluate, sys\n" + "".join(
        f"evaluate.load({str(module_path(name))!r})\n" for name in MODULE_NAMES) + "print('ok')"
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path),
           "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_a_stride_beyond_the_context_is_refused_not_silently_skipping_tokens():
    # n=10, block 4, stride 6 would score positions 0-3 and 8-9 only
    with pytest.raises(ValueError, match=r"stride 6 must be in 1..block_size \(4\)"):
        sequence_nll(UniformLM(50), docs([9]), eot=0, block_size=4, stride=6)


@pytest.mark.bad_input
@pytest.mark.parametrize("content, says", [
    ('{"source": "a", "target": "b"}\n{"source": "c" "target": "d"}\n', r"p\.jsonl:2: not JSON"),
    ('{"source": "a", "target": "b"}\n\n{"target": "d"}\n', r"p\.jsonl:3: .*source"),
    ('{"source": "a", "target": 7}\n', r"p\.jsonl:1: needs source and target, each a string"),
    ("\n  \n", r"p\.jsonl: no source/target pairs"),
])
def test_a_bad_parallel_data_file_is_refused_naming_its_line_before_any_compute(tmp_path, content, says):
    """It was read after perplexity, the continuations and the harness had run, and failed with
    json's line 1 for any row, a bare KeyError, or an IndexError for an empty file."""
    from lm_pipeline.evaluation.continuations import read_parallel_pairs

    (tmp_path / "p.jsonl").write_text(content)
    with pytest.raises(ValueError, match=r"evaluate.parallel_data: .*" + says):
        read_parallel_pairs(tmp_path / "p.jsonl")


def test_the_sample_parallel_data_reads_as_pairs():
    from lm_pipeline.config import EvaluateConfig
    from lm_pipeline.evaluation.continuations import read_parallel_pairs

    pairs = read_parallel_pairs(EvaluateConfig().parallel_data)
    assert pairs and all(isinstance(p["source"], str) and isinstance(p["target"], str) for p in pairs)

"""The filter stage: each rule at both sides of its threshold and against the library's decision,
personal data against positives and look-alikes, duplicates found the same on any number of
workers, and nothing removed without a record of why."""

import json

import numpy as np
import pytest

from lm_pipeline.config import Config, FilterConfig
from lm_pipeline.data import pii
from lm_pipeline.data.dedup import KeyFile
from lm_pipeline.data.features import minhash
from lm_pipeline.data.screen import DATATROVE, document_steps, run_steps
from lm_pipeline.stages import filter as stage

pytestmark = pytest.mark.filter

PROSE = ("The river runs to the sea and the boats go with it. A man stands on the bank and "
         "watches the water move past the town. ")


def words(n: int) -> str:
    """n words of English prose, with stop words, ending a sentence."""
    base = PROSE.split()
    return " ".join(base[i % len(base)] for i in range(n)).rstrip(".") + "."


def sentences(n: int) -> str:
    """n lines of varied prose, one sentence each."""
    rng = np.random.default_rng(n)
    vocab = PROSE.lower().replace(".", "").split() + [f"word{i}" for i in range(300)]
    return "\n".join(f"The {' '.join(rng.choice(vocab, 9))} of the sea." for _ in range(n))


def judge(step: str, text: str, **params) -> str | None:
    """Our step's verdict: the kept text, or None when removed."""
    settings = FilterConfig(steps=[step], **({step: params} if params else {})).model_dump(mode="json")
    (name, run), = document_steps(json.dumps(settings, sort_keys=True))
    return run(text)[0]


def datatrove_rule(step: str, **params):
    """The library's own filter, with the thresholds of params.yaml (and `params` on top)."""
    import datatrove.pipeline.filters as filters

    settings = getattr(FilterConfig(), step).model_dump() | params
    if step == "gopher_repetition":
        settings = settings | {k: tuple(map(tuple, settings[k])) for k in ("top_n_grams", "dup_n_grams")}
    return getattr(filters, DATATROVE[step])(**settings)


def datatrove_keeps(step: str, text: str, **params) -> bool:
    from datatrove.data import Document

    return datatrove_rule(step, **params).filter(Document(text=text, id="x")) is True


# (step, threshold override, a document just inside, one just outside)
RULES = [
    ("gopher_quality", {}, words(50), words(49)),  # min_doc_words 50
    ("gopher_quality", {"min_doc_words": 10}, words(10), words(9)),  # a tuned threshold is honoured
    ("gopher_quality", {}, words(60), words(60).replace("the ", "").replace("and ", "").replace("to ", "")),
    ("gopher_quality", {}, words(60), words(60).replace(".", "...").replace(" ", " # ", 8)),  # symbols
    ("gopher_repetition", {}, sentences(10), "\n".join(["The river runs to the sea."] * 4 + [sentences(6)])),
    ("c4", {}, sentences(5), sentences(4)),  # min_num_sentences 5
    ("c4", {}, sentences(6), sentences(6) + "\nLorem ipsum dolor sit amet, consectetur adipiscing."),
    ("c4", {}, sentences(6), sentences(6) + "\nThe function body is { return x; } and so on."),
    ("fineweb", {}, sentences(10), "\n".join(f"item number {i}" for i in range(10))),  # no punctuation
]


@pytest.mark.parametrize(("step", "params", "kept", "removed"), RULES)
def test_each_heuristic_at_both_sides_of_its_threshold_agrees_with_datatrove(step, params, kept, removed):
    assert judge(step, kept, **params) is not None
    assert judge(step, removed, **params) is None
    assert datatrove_keeps(step, kept, **params) and not datatrove_keeps(step, removed, **params)


def test_the_heuristics_chained_decide_as_datatrove_does_document_for_document():
    """On real text (Python's own reference documentation), the four steps in a row keep, trim and
    remove exactly what datatrove's filters in a row do."""
    from pydoc_data.topics import topics

    steps = ["gopher_repetition", "gopher_quality", "c4", "fineweb"]
    settings = FilterConfig(steps=steps).model_dump(mode="json")
    ours = document_steps(json.dumps(settings, sort_keys=True))
    texts = [topics[name] for name in sorted(topics)[:30]]
    texts += [sentences(n) + "\nWhy? [1]" for n in (8, 12, 20)]  # kept, with a line C4 drops
    for text in texts:
        kept, step = run_steps(text, ours)[:2]
        theirs, removed_by = text, ""
        for name in steps:  # the library alone: each filter on what the one before kept
            from datatrove.data import Document

            doc = Document(text=theirs, id="x")
            if not datatrove_keeps(name, theirs):
                removed_by = name
                break
            datatrove_rule(name).filter(doc)  # C4 rewrites the text it keeps
            theirs = doc.text
        assert (step, kept if not step else None) == (removed_by, theirs if not removed_by else None)
    outcomes = {run_steps(t, ours)[1] for t in texts}
    assert "" in outcomes and len(outcomes) >= 3, outcomes  # kept ones, and removed by several steps


@pytest.mark.parametrize("step", ["fineweb", "gopher_quality", "gopher_repetition"])
def test_a_document_with_windows_line_ends_gets_the_verdict_of_its_unix_twin(step):
    """datatrove splits lines on "\\n" only: each line of a CRLF document ended in "\\r", not in
    its full stop, so FineWeb removed it for its punctuation. Kept, its text stays as written."""
    text = sentences(30)
    assert judge(step, text) == text
    assert judge(step, text.replace("\n", "\r\n")) == text.replace("\n", "\r\n")
    trimmed = sentences(30) + "\nno full stop here"  # C4 drops the last line, and keeps the line ends
    assert judge("c4", trimmed.replace("\n", "\r\n")) == judge("c4", trimmed).replace("\n", "\r\n")


def test_c4_drops_the_lines_without_terminal_punctuation_and_keeps_the_rest():
    text = sentences(6) + "\nHome | About | Contact\nShare this"
    assert judge("c4", text) == sentences(6)


def test_language_keeps_the_configured_languages_above_their_confidence():
    german = ("Der Fluss fließt zum Meer, und die Boote fahren mit ihm. Ein Mann steht am Ufer und "
              "sieht dem Wasser zu, wie es an der Stadt vorbeizieht.")
    assert judge("language", PROSE) == PROSE
    assert judge("language", german) is None
    assert judge("language", german, languages=["de"]) == german
    assert judge("language", PROSE, min_confidence=1.0) is None  # nothing is that sure


POSITIVES = {
    "email": ["jane.doe@example.com", "ops+alerts@mail.example.co.uk"],
    "phone": ["(555) 123-4567", "555-123-4567", "+1 555 123 4567", "+44 20 7946 0958", "1-800-555-1234",
              "+44 (0)20 7946 0958", "+49 (0) 30 1234 5678", "(+44) 20 7946 0958"],
    "ip_address": ["192.168.10.24", "8.8.8.8", "2001:db8:85a3::8a2e:370:7334", "192.168.001.010"],
    "credit_card": ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005",
                    "35280000000000007", "6759649826438453", "2200000000000004", "30950000000000"],
    "secret": ["AKIAIOSFODNN7EXAMPLE", "ghp_" + "a1B2" * 9, "sk-proj-" + "x9Y8" * 8,
               "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
               "github_pat_" + "A1b2" * 20 + "xy", "ASIAIOSFODNN7EXAMPLE", "glpat-" + "x1Y2z3" * 4 + "ab_-c",
               "-----BEGIN PGP PRIVATE KEY BLOCK-----\nlQOYBF\n-----END PGP PRIVATE KEY BLOCK-----"],
}
LOOK_ALIKES = ["version 3.11.2", "999.12.1.1", "the slice a[::2]", "at 12:30:45", "on 2024-01-15",
               "ISBN 978-3-16-148410-0", "order 4111 1111 1111 1112", "user@localhost",
               "the task-12345-67890 id", "pi is 3.14159265358979", "sk-short", "AKIA-NOT-A-KEY",
               "sales in 2019 2020 2021 rose", "version 20.100.2024", "values 10 100 1000",
               "2**45 is 35184372088832",  # passes Luhn, as a tenth of all numbers do; no issuer's
               "batch sizes 1 128 256 1024", "version 1.100.200.3000",
               "the host 1.0.0.127.in-addr.arpa",  # a name's labels (reverse DNS), not an address
               "pages 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16",
               "powers 1 2 4 8 16 32 64 128 256 512 1024 2048",
               "mapped 2001:db8::10.0.0.1 here"]  # v4 inside v6: not half of it


def test_personal_data_is_found_with_full_precision_and_recall_on_positives_and_look_alikes():
    """The fixture's numbers, stated in docs/filter.md: 29 positives, 22 look-alikes."""
    found = {(category, value) for category, values in POSITIVES.items() for value in values
             if [m.group() for m in pii.find(f"write to {value} today", category)] == [value]}
    false = [(c, t) for t in LOOK_ALIKES for c in pii.PATTERNS if pii.find(t, c)]
    positives = sum(map(len, POSITIVES.values()))
    recall, precision = len(found) / positives, len(found) / (len(found) + len(false))
    missed = {(category, value) for category, values in POSITIVES.items() for value in values} - found
    assert (recall, precision) == (1.0, 1.0), (missed, false)


@pytest.mark.parametrize("text, address", [
    ("My server is 192.168.1.1.", "192.168.1.1"), ("connect to 10.0.0.1:8080", "10.0.0.1"),
    ("see http://192.168.0.10:8000/api", "192.168.0.10"), ("ip 2001:db8::1:2:3.", "2001:db8::1:2:3"),
    ("IP: 8.8.8.8.\nNext", "8.8.8.8")])
def test_an_address_ending_a_sentence_or_before_its_port_is_found(text, address):
    """A full stop or a :port after an address made its pattern's look-ahead refuse every match:
    the default filter let them through."""
    assert [m.group() for m in pii.find(text, "ip_address")] == [address]


@pytest.mark.parametrize("text, category, value", [
    ("Card 4111 1111 1111 1111 123", "credit_card", "4111 1111 1111 1111"),  # a CVV after it
    ("Qty 2 4111 1111 1111 1111.", "credit_card", "4111 1111 1111 1111"),  # a count before it
    ("Amex 3782 822463 10005 1234 cvv", "credit_card", "3782 822463 10005"),
    ("inet addr:192.168.1.5  Bcast:192.168.1.255", "ip_address", "192.168.1.5"),  # ifconfig's
    ("server IP:10.0.0.1 ok", "ip_address", "10.0.0.1"),
    ("write to a@example.com-b@example.org", "email", "a@example.com"),
])
def test_personal_data_beside_other_numbers_or_after_a_label_is_found(text, category, value):
    """A longer run of digits around a card was refused whole, its card with it; an address after
    `addr:` was taken for part of an IPv6 one."""
    assert pii.find(text, category)[0].group() == value


def test_addresses_joined_without_a_space_are_each_found():
    assert [m.group() for m in pii.find("a@example.com-b@example.org+c@example.net", "email")] == [
        "a@example.com", "-b@example.org", "+c@example.net"]


def test_personal_data_is_redacted_to_typed_placeholders_or_the_document_dropped_per_category():
    text = "Mail jane.doe@example.com or call 555-123-4567; card 4111 1111 1111 1111."
    redacted, found, dropped = pii.scrub(text, FilterConfig().pii.model_dump())
    assert redacted == "Mail <EMAIL> or call <PHONE>; card <CREDIT_CARD>."
    assert found == {"email": 1, "phone": 1, "credit_card": 1} and dropped is None
    _, _, dropped = pii.scrub(text, {"phone": "drop"})
    assert dropped == "phone"
    assert pii.scrub(text, {"email": "keep"})[0] == text


def corpus(tmp_path, texts: list[str]):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "documents.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n"
                                                 for i, t in enumerate(texts)))
    return Config.model_validate({"data": {"raw_dir": str(raw)},
                                  "validate": {"report_dir": str(tmp_path / "validation"), "required": False},
                                  "filter": {"output_dir": str(tmp_path / "filtered"),
                                             "report_dir": str(tmp_path / "report")}})


def near_copies(n: int, seed: int = 0) -> list[str]:
    """n base documents, each followed by a copy with one word changed and an exact copy."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(2000)] + ["the", "and", "of"] * 50
    out = []
    for _ in range(n):
        base = " ".join(rng.choice(vocab, 120)) + "."
        out += [base, base.replace(base.split()[60], "changed", 1), base]
    return out


def lines_of(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_duplicates_are_the_same_on_one_worker_and_many_and_match_datasketch(tmp_path, monkeypatch):
    from datasketch import MinHash, MinHashLSH

    texts = near_copies(30)
    cfg = corpus(tmp_path, texts)
    cfg = cfg.model_copy(update={"filter": FilterConfig(steps=["exact_dedup", "near_dedup"],
                                                        output_dir=tmp_path / "filtered",
                                                        report_dir=tmp_path / "report")})
    monkeypatch.setattr(stage, "LOCAL_BATCH_CHARS", 5_000)  # many batches over two processes
    monkeypatch.setattr(KeyFile, "ROWS_PER_READ", 7)  # keys read back in many pieces
    stage.run(cfg)
    many = (tmp_path / "filtered/documents.jsonl").read_bytes()
    monkeypatch.setattr(stage, "local_map", lambda fn, batches: map(fn, batches))  # in this process
    stage.run(cfg)
    assert (tmp_path / "filtered/documents.jsonl").read_bytes() == many
    removed = {d["id"]: d["reason"] for d in lines_of(tmp_path / "filtered/removed.jsonl")}
    assert removed == {f"d{3 * k + 1}": f"near duplicate of d{3 * k}" for k in range(30)} | \
                      {f"d{3 * k + 2}": f"exact duplicate of d{3 * k}" for k in range(30)}

    reordered = cfg.filter.model_copy(update={"steps": ["near_dedup", "exact_dedup"]})
    near_first = cfg.model_copy(update={"filter": reordered})
    stage.run(near_first)  # near_dedup first: it takes the exact copies too
    assert {d["id"]: d["reason"] for d in lines_of(tmp_path / "filtered/removed.jsonl")} == \
           {i: f"near duplicate of d{3 * (int(i[1:]) // 3)}" for i in removed}

    # datasketch's LSH with the same bands and rows, over the same word 5-grams, decides the same.
    near = cfg.filter.near_dedup
    lsh = MinHashLSH(num_perm=near.bands * near.rows, params=(near.bands, near.rows))
    for i, text in enumerate(texts):
        m = MinHash(num_perm=near.bands * near.rows, seed=near.seed)
        tokens = text.lower().rstrip(".").split()
        m.update_batch([" ".join(tokens[j:j + 5]).encode() for j in range(len(tokens) - 4)])
        duplicate = bool(lsh.query(m))
        assert duplicate == (f"d{i}" in removed), i
        lsh.insert(str(i), m)


def test_our_minhash_estimates_jaccard_like_the_exact_value():
    a = " ".join(f"w{i}" for i in range(200))
    b = " ".join(f"w{i}" for i in range(40, 240))  # 156 of 396 distinct 5-grams shared: J = 0.657
    signatures = minhash([a, b], seed=1, perms=256)
    assert abs(float(np.mean(signatures[0] == signatures[1])) - 156 / 236) < 0.08


def test_every_removed_document_is_kept_aside_with_its_step_and_reason_and_the_report_shows_it(tmp_path):
    secret = "AKIAIOSFODNN7EXAMPLE"
    other = "A woman walks in the hills above the valley and looks at the clouds over the lake."
    texts = [PROSE, f"{PROSE} The deploy key is {secret}.", "Das ist ein deutscher Satz über das Wetter.",
             f"{other} Write to jane.doe@example.com <b>now</b>.", PROSE]
    result = stage.run(corpus(tmp_path, texts))
    kept = lines_of(tmp_path / "filtered/documents.jsonl")
    removed = {d["id"]: d for d in lines_of(tmp_path / "filtered/removed.jsonl")}
    assert result.documents_in == 5 and result.documents_kept == len(kept) == 2
    assert [d["text"] for d in kept] == [PROSE, f"{other} Write to <EMAIL> <b>now</b>."]  # redacted
    assert (removed["d1"]["filter"], removed["d1"]["reason"]) == ("pii", "contains secret")
    assert removed["d2"]["filter"] == "language" and removed["d2"]["reason"].startswith("de ")
    assert (removed["d4"]["filter"], removed["d4"]["reason"]) == ("exact_dedup", "exact duplicate of d0")
    assert removed["d1"]["text"] == texts[1]  # kept aside as the step saw it, to audit and tune
    report = (tmp_path / "report/report.md").read_text()
    assert secret not in report and "<SECRET>" not in report  # examples are redacted, then escaped
    assert "&lt;SECRET&gt;" in report and "Das ist ein deutscher" in report
    metrics = json.loads((tmp_path / "report/metrics.json").read_text())
    assert (metrics["documents_kept"], metrics["pii_secret"], metrics["pii_email"]) == (2, 1, 1)
    assert (metrics["language_removed"], metrics["exact_dedup_removed"]) == (1, 1)
    assert (tmp_path / "report/funnel.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.bad_input
def test_a_lone_surrogate_the_corpus_escaped_is_written_escaped_not_a_crash(tmp_path):
    """Ingest keeps a lone surrogate as a JSON escape (UTF-8 cannot hold it); the filter wrote it
    raw, and the write failed: one such document stopped the stage when validation was off."""
    odd = f"{PROSE} \ud800 {PROSE}"
    stage.run(corpus(tmp_path, [odd, "A woman walks in the hills above the valley at dawn."]))
    kept = (tmp_path / "filtered/documents.jsonl").read_text(encoding="utf-8")
    assert [d["text"] for d in map(json.loads, kept.splitlines())][0] == odd


def test_a_filter_that_removes_every_document_fails_and_writes_nothing_but_its_report(tmp_path):
    cfg = corpus(tmp_path, ["Das ist ein deutscher Satz über das Wetter in der Stadt."] * 3)
    with pytest.raises(ValueError, match=r"removed all 3 documents .*report.md.*loosen filter"):
        stage.run(cfg)
    assert not (tmp_path / "filtered").exists()
    assert "| language | 3 | 3 |" in (tmp_path / "report/report.md").read_text()  # and why


def test_filter_steps_are_known_once_each_and_dedup_comes_last(tmp_path):
    from lm_pipeline.config import ConfigError, load_config

    for steps, error in ((["language", "spam"], r"filter\.steps\.1: .*'language'"),
                         (["pii", "pii"], r"filter\.steps: .*pii listed twice"),
                         (["near_dedup", "language"], r"filter\.steps: .*come after")):
        (tmp_path / "params.yaml").write_text(json.dumps({"filter": {"steps": steps}}))
        with pytest.raises(ConfigError, match=error):
            load_config(tmp_path / "params.yaml")
    cfg = FilterConfig(steps=["language", "near_dedup", "exact_dedup"])  # either dedup order
    assert cfg.steps[-2:] == ["near_dedup", "exact_dedup"]


@pytest.mark.security
def test_a_removed_documents_example_in_the_report_is_redacted_before_it_is_cut():
    """The report shows the first 300 characters of removed documents: cut first, a private key
    starting near the top lost its END line, no longer matched, and its lines were printed."""
    from lm_pipeline.data.funnel import Funnel

    key_lines = ["MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7" + str(i) * 12 for i in range(12)]
    text = ("config notes\n-----BEGIN PRIVATE KEY-----\n" + "\n".join(key_lines)
            + "\n-----END PRIVATE KEY-----\n" + "more text " * 30)
    funnel = Funnel(["pii"], examples=3)
    funnel.read(len(text), {}, {})
    funnel.remove("pii", "private key", {"id": "doc-1", "text": text})
    report = funnel.markdown()
    assert "&lt;SECRET&gt;" in report and not any(line[:40] in report for line in key_lines)

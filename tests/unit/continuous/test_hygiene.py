"""Drop hygiene on a real corpus file and the real ingest and validation stages: a drop of new
documents passes; a drop repeating the corpus, one holding test-split documents and one that cannot
be read are refused, each naming why, and quarantined with their report (the original untouched)."""

import json

import pytest

from lm_pipeline.config import Config
from lm_pipeline.continuous.drops import find_drops
from lm_pipeline.continuous.hygiene import check_drop, quarantine
from lm_pipeline.data.split import assign_split
from tests.unit.continuous.corpora import BIRDS, PLACES, PYTHON, documents


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct-hygiene")
    (root / "raw").mkdir()
    corpus = documents(PYTHON, 300, seed=0)
    with open(root / "raw" / "documents.jsonl", "w") as f:
        for i, text in enumerate(corpus):
            f.write(json.dumps({"id": f"doc-{i}", "text": text, "source": "corpus"}) + "\n")
    cfg = Config.model_validate({"data": {"raw_dir": str(root / "raw")},
                                 "ct": {"watch": str(root / "incoming"), "state_dir": str(root / "ct"),
                                        "quarantine_dir": str(root / "quarantine")}})
    return root, cfg, corpus


def drop(root, name: str, texts: list[str]) -> None:
    folder = root / "incoming" / name
    folder.mkdir(parents=True)
    (folder / "part-0.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    (folder / "_SUCCESS").touch()


def checked(root, cfg, name: str):
    (target,) = [d for d in find_drops(cfg.ct.watch)[0] if d.name == name]
    return target, *check_drop(cfg, target, root / "raw" / "documents.jsonl", root / "work" / name)


def test_a_drop_of_new_documents_passes(project):
    root, cfg, _ = project
    drop(root, "birds", documents(BIRDS + PLACES, 60, seed=1))
    _, report, read = checked(root, cfg, "birds")
    assert report.passed, report.problems
    assert report.documents == len(read) == 60 and report.repeats == 0 and not report.leaked_test_documents


def test_a_drop_repeating_the_corpus_is_quarantined_with_its_report_and_kept(project):
    root, cfg, corpus = project
    near = [text.replace(" times.", " times!", 1) for text in corpus[:30]]  # one character changed
    drop(root, "repeats", corpus[30:60] + near + documents(BIRDS, 20, seed=2))
    target, report, _ = checked(root, cfg, "repeats")
    assert report.repeats == 60 and not report.passed
    assert "60 of 80 documents (75%) repeat the corpus" in report.problems[0]
    kept = quarantine(cfg, target, report)
    saved = json.loads((kept / "hygiene.json").read_text())
    assert saved["passed"] is False and saved["repeats"] == 60 and saved["digest"] == target.digest
    assert (kept / "part-0.jsonl").read_text() == (root / "incoming" / "repeats" / "part-0.jsonl").read_text()


def test_a_drop_holding_test_documents_of_the_corpus_is_refused_naming_them(project):
    root, cfg, corpus = project
    test_docs = [(i, t) for i, t in enumerate(corpus) if assign_split(t, cfg.split) == "test"][:2]
    assert test_docs  # precondition: the corpus has a test split
    drop(root, "leak", documents(BIRDS, 40, seed=3) + [text for _, text in test_docs])
    _, report, _ = checked(root, cfg, "leak")
    assert report.leaked_test_documents == [f"doc-{i}" for i, _ in test_docs]
    assert any("contains 2 test-split documents" in p and "doc-" in p for p in report.problems)


def test_a_drop_that_cannot_be_read_is_refused_naming_the_file(project):
    root, cfg, _ = project
    drop(root, "broken", documents(BIRDS, 5, seed=4))
    (root / "incoming" / "broken" / "part-1.jsonl").write_bytes(b'{"text": "ok"}\n{"text": \xff\xfe}\n')
    _, report, _ = checked(root, cfg, "broken")
    assert not report.passed and "part-1.jsonl" in report.problems[0]


@pytest.mark.security
def test_a_drop_holding_a_link_out_of_it_is_refused_naming_the_link(project, tmp_path):
    """Only corpus files are read as documents, so a link beside them (notes -> a credentials file)
    passed, and the archive then copied what it points at to the DVC remote."""
    root, cfg, _ = project
    secret = tmp_path / "credentials"
    secret.write_text("aws_secret_access_key = not-for-the-remote\n")
    drop(root, "linked", documents(BIRDS, 5, seed=5))
    (root / "incoming" / "linked" / "notes").symlink_to(secret)
    _, report, _ = checked(root, cfg, "linked")
    assert not report.passed and "notes" in report.problems[0] and "outside the drop" in report.problems[0]


def test_test_documents_sharing_an_id_are_each_checked_for_leaks(project, tmp_path):
    """Ids repeat in a corpus ingested from several files (each numbering its documents from 0):
    keyed by id, only the last test document of each id was checked, so a drop holding the others
    passed."""
    root, cfg, corpus = project
    merged = tmp_path / "documents.jsonl"
    merged.write_text("".join(json.dumps({"id": str(i % 2), "text": t}) + "\n" for i, t in enumerate(corpus)))
    test_texts = [t for t in corpus if assign_split(t, cfg.split) == "test"]
    assert len(test_texts) >= 4  # precondition: several test documents share each id
    drop(root, "leak-shared-ids", documents(BIRDS, 40, seed=4) + test_texts[:3])
    (target,) = [d for d in find_drops(cfg.ct.watch)[0] if d.name == "leak-shared-ids"]
    report, _ = check_drop(cfg, target, merged, tmp_path / "work")
    assert len(report.leaked_test_documents) == 3 and not report.passed

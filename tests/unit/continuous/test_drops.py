"""Drops: taken once complete (a _SUCCESS marker, or a manifest whose digests all match), known by
their content whatever their name, and taken up again when a cycle did not finish; the same in a
bucket as in a folder."""

import hashlib
import json

import pytest

from lm_pipeline.continuous.drops import Announcements, FileDigests, Ledger, find_drops

DOCS = '{"text": "a tuple is an immutable sequence"}\n{"text": "a list is a mutable sequence"}\n'


def write_drop(folder, name: str, text: str = DOCS, marker: str | None = "_SUCCESS"):
    drop = folder / name
    drop.mkdir(parents=True)
    (drop / "part-0.jsonl").write_text(text)
    if marker == "_SUCCESS":
        (drop / "_SUCCESS").touch()
    elif marker == "manifest":
        digest = hashlib.sha256(text.encode()).hexdigest()
        (drop / "manifest.json").write_text(json.dumps({"files": {"part-0.jsonl": digest}}))
    return drop


def test_only_complete_drops_are_taken_and_a_manifest_must_match_what_is_there(tmp_path):
    watch = tmp_path / "incoming"
    write_drop(watch, "2026-12-01", marker="_SUCCESS")
    write_drop(watch, "2026-12-02", DOCS.replace("tuple", "set"), marker=None)  # still being written
    half = write_drop(watch, "2026-12-03", DOCS.replace("tuple", "dict"), marker="manifest")
    (half / "part-0.jsonl").write_text(DOCS.replace("tuple", "dict")[:20])  # the upload is not finished
    write_drop(watch, "2026-12-04", DOCS.replace("tuple", "frozenset"), marker="manifest")
    complete, waiting = find_drops(str(watch))
    assert [d.name for d in complete] == ["2026-12-01", "2026-12-04"]
    assert waiting == ["2026-12-02", "2026-12-03"]
    (half / "part-0.jsonl").write_text(DOCS.replace("tuple", "dict"))  # the upload completes
    assert [d.name for d in find_drops(str(watch))[0]] == ["2026-12-01", "2026-12-03", "2026-12-04"]
    assert find_drops(str(tmp_path / "nothing-yet")) == ([], [])
    elsewhere = write_drop(tmp_path / "elsewhere", "secrets")
    (watch / "2026-12-05-link").symlink_to(elsewhere)  # a link would bring in any folder
    complete, waiting = find_drops(str(watch))
    assert "2026-12-05-link" not in [d.name for d in complete]
    assert "2026-12-05-link (a symlink: not followed)" in waiting


def test_a_drop_is_taken_once_whatever_its_name_and_again_if_its_cycle_did_not_finish(tmp_path):
    watch, state = tmp_path / "incoming", tmp_path / "ct"
    write_drop(watch, "monday")
    write_drop(watch, "monday-copy")  # the same documents under another name
    drops, _ = find_drops(str(watch))
    assert drops[0].digest == drops[1].digest and drops[0].files == 1
    ledger = Ledger(state)
    (drop,) = ledger.pending(drops)
    ledger.claim(drop)
    assert Ledger(state).pending(drops) == [drop]  # the watcher died mid-cycle: taken up again
    assert Ledger(state).step(drop, "retraining") is None  # from the start: no step recorded
    ledger.record(drop, retraining={"record": "ct/cycles/monday/registry.json"})
    write_drop(watch, "a-later", DOCS.replace("tuple", "frozenset"))  # named before it, found after
    pending = Ledger(state).pending(find_drops(str(watch))[0])
    assert [d.name for d in pending] == ["monday", "a-later"]  # the interrupted cycle first,
    assert Ledger(state).step(drop, "retraining") == {"record": "ct/cycles/monday/registry.json"}  # there
    assert Ledger(state).claims(drop) == 1 and Ledger(state).claims(pending[1]) == 0  # a death, unseen
    ledger.claim(drop)
    ledger.release(drop)  # this one ended in an error the process saw: not counted
    assert Ledger(state).claims(drop) == 1
    ledger.finish(drop, "no_drift", gap=0.01)
    assert Ledger(state).pending(drops) == []
    write_drop(watch, "tuesday", DOCS.replace("tuple", "deque"))
    assert [d.name for d in Ledger(state).pending(find_drops(str(watch))[0])] == ["a-later", "tuesday"]
    entry = Ledger(state).entries[drop.digest]
    assert entry["outcome"] == "no_drift" and entry["gap"] == 0.01 and entry["name"] == "monday"


def test_the_watcher_announces_a_drop_once_and_again_only_if_it_is_still_not_taken_much_later(tmp_path):
    watch, state = tmp_path / "incoming", tmp_path / "ct"
    write_drop(watch, "monday")
    write_drop(watch, "tuesday", DOCS.replace("tuple", "deque"))
    drops, _ = find_drops(str(watch))
    announcements = Announcements(state)
    assert announcements.due(drops, again_after_s=3600, now=1000.0) == drops
    announcements.record(drops[:1], now=1000.0)
    assert Announcements(state).due(drops, 3600, now=1001.0) == drops[1:]  # read back from its file
    assert Announcements(state).due(drops, 3600, now=4600.0) == drops  # an hour on, still not taken
    assert not (state / "drops.json").exists()  # the ledger is the cycle's file, not the watcher's


def test_the_watcher_reads_again_only_the_files_that_changed_since_its_last_run(tmp_path):
    """Its memory (digests.json) is keyed by path, size and modification time: a file whose
    content changed behind an unchanged size and time keeps its remembered digest, which shows
    the file was not read; a new modification time has it read again. A cycle keeps no memory."""
    import os

    watch, state = tmp_path / "incoming", tmp_path / "ct"
    part = write_drop(watch, "monday") / "part-0.jsonl"
    digests = FileDigests(state)
    (first,), _ = find_drops(str(watch), digests)
    digests.save()
    stat = part.stat()
    part.write_text(DOCS.replace("tuple", "set  "))  # same size
    os.utime(part, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert find_drops(str(watch), FileDigests(state))[0][0].digest == first.digest  # remembered
    assert find_drops(str(watch))[0][0].digest != first.digest  # read: a cycle keeps no memory
    os.utime(part, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert find_drops(str(watch), FileDigests(state))[0][0].digest != first.digest  # read again
    part.unlink()
    (part.parent / "part-1.jsonl").write_text(DOCS)
    again = FileDigests(state)
    find_drops(str(watch), again)
    again.save()
    assert set(FileDigests(state).known) == {str(part.parent / "part-1.jsonl")}  # the gone file forgotten


def test_drops_in_a_bucket_are_found_the_same_way(s3, monkeypatch, tmp_path):
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    client = s3.client()
    client.put_object(Bucket="corpus", Key="incoming/a/part-0.jsonl", Body=DOCS.encode())
    client.put_object(Bucket="corpus", Key="incoming/a/_SUCCESS", Body=b"")
    client.put_object(Bucket="corpus", Key="incoming/b/part-0.jsonl", Body=DOCS.encode())  # no marker yet
    complete, waiting = find_drops("s3://corpus/incoming")
    assert [(d.name, d.url) for d in complete] == [("a", "s3://corpus/incoming/a")] and waiting == ["b"]
    write_drop(tmp_path, "local")  # the same documents in a folder: the same drop
    assert complete[0].digest == find_drops(str(tmp_path))[0][0].digest
    remembered = FileDigests(tmp_path / "ct")  # the watcher remembers objects by their ETag
    assert find_drops("s3://corpus/incoming", remembered)[0] == complete
    remembered.save()
    assert list(FileDigests(tmp_path / "ct").known) == ["corpus/incoming/a/part-0.jsonl"]


@pytest.mark.security
def test_a_drop_named_with_escape_sequences_is_named_without_them_in_logs_and_summaries(tmp_path):
    watch = tmp_path / "incoming"
    write_drop(watch, "monday\x1b]52;c;ZXZpbA==\x07")
    write_drop(watch, "tuesday\x1b[2J", marker=None)
    (drop,), waiting = find_drops(str(watch))
    assert drop.name == r"monday\x1b]52;c;ZXZpbA==\x07" and waiting == [r"tuesday\x1b[2J"]

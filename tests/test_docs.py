"""The docs site builds strictly (a broken link, a missing anchor, a page left out of the nav or
a missing snippet fails `make test`), and the README stays a front door whose links land."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from streams.settings import REPO_ROOT

ENV = os.environ | {"NO_MKDOCS_2_WARNING": "1"}


def build(root, site):
    # Not --quiet: mkdocs counts warnings for --strict only at the levels it logs.
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                           "--config-file", str(root / "mkdocs.yml"), "--site-dir", str(site)],
                          cwd=root, env=ENV, capture_output=True, text=True, timeout=300)


def test_the_docs_build_strictly(tmp_path):
    done = build(REPO_ROOT, tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    for page in (REPO_ROOT / "docs").glob("*.md"):
        name = "index.html" if page.stem == "index" else f"{page.stem}/index.html"
        assert (tmp_path / "site" / name).is_file(), f"{page.name} was not built"
    home = (tmp_path / "site" / "index.html").read_text()
    assert "make run" in home and "--8&lt;--" not in home  # the README's quick start, included
    # The README is not part of the site, so its links into it are checked here, anchors too.
    for page, anchor in re.findall(r"\]\(docs/([^)#]+)\.md#([^)]+)\)", (REPO_ROOT / "README.md").read_text()):
        assert f'id="{anchor}"' in (tmp_path / "site" / page / "index.html").read_text(), (page, anchor)


@pytest.mark.parametrize("breakage", ["[a link](no-such-page.md)", "[an anchor](delivery.md#no-such-anchor)"])
def test_a_broken_link_fails_the_build(tmp_path, breakage):
    """The same build on a copy of the docs with one broken link or anchor: it must fail."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "docs", copy / "docs")
    shutil.copy(REPO_ROOT / "mkdocs.yml", copy)
    shutil.copy(REPO_ROOT / "README.md", copy)
    with (copy / "docs" / "broker.md").open("a") as fh:
        fh.write(f"\nSee {breakage}.\n")
    done = build(copy, tmp_path / "site")
    assert done.returncode != 0
    assert "broker.md" in done.stdout + done.stderr


def test_a_page_missing_from_the_nav_fails_the_build(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "docs", copy / "docs")
    shutil.copy(REPO_ROOT / "README.md", copy)
    (copy / "mkdocs.yml").write_text((REPO_ROOT / "mkdocs.yml").read_text().replace(
        "  - Replay and reprocessing: replay.md\n", ""))
    assert build(copy, tmp_path / "site").returncode != 0


def test_the_readme_is_a_front_door():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme) < 10_000, f"README.md is {len(readme)} characters: move sections into docs/"
    assert "make run" in readme and "make test" in readme
    targets = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", readme)
    assert targets, "the README links into docs/"
    assert [t for t in targets if not (REPO_ROOT / t).is_file()] == []
    nav = (REPO_ROOT / "mkdocs.yml").read_text()
    assert [t for t in targets if t.removeprefix("docs/") not in nav] == []

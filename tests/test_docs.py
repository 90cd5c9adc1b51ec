"""The docs/ pages build as a site with `mkdocs build --strict` (a broken link, a missing
anchor or a page left out of the nav fails it), and README.md's links to them resolve."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip('mkdocs', reason='mkdocs comes with the test extra: pip install -e .[test]')


def build(root: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, '-m', 'mkdocs', 'build', '--strict', '--site-dir', str(site)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_docs_build_strictly(tmp_path):
    result = build(ROOT, tmp_path / 'site')
    assert result.returncode == 0, result.stderr[-3000:]
    for page in (ROOT / 'docs').glob('*.md'):
        built = 'index.html' if page.stem == 'index' else f'{page.stem}/index.html'
        assert (tmp_path / 'site' / built).is_file(), built


def test_a_broken_anchor_fails_the_build(tmp_path):
    """--strict really checks: a link to a heading that does not exist fails the build."""
    shutil.copy(ROOT / 'mkdocs.yml', tmp_path)
    shutil.copytree(ROOT / 'docs', tmp_path / 'docs')
    page = tmp_path / 'docs' / 'index.md'
    page.write_text(page.read_text() + '\nSee [nowhere](cluster.md#no-such-heading).\n')
    result = build(tmp_path, tmp_path / 'site')
    assert result.returncode != 0
    assert 'no-such-heading' in result.stderr


def slug(heading: str) -> str:
    """The anchor MkDocs (Python-Markdown's toc) and GitHub give a heading."""
    text = re.sub(r'[^\w\s-]', '', heading.strip().lower())
    return re.sub(r'[\s]+', '-', text)


def test_the_readmes_links_resolve():
    readme = (ROOT / 'README.md').read_text()
    links = re.findall(r'\]\(([^)\s]+)\)', readme)
    assert any(link.startswith('docs/') for link in links)
    for link in links:
        if re.match(r'\w+://', link):
            continue
        path, _, anchor = link.partition('#')
        target = ROOT / path
        assert target.is_file(), f'README.md links to {link}: no such file'
        if anchor:
            text = re.sub(r'^```.*?^```', '', target.read_text(), flags=re.S | re.M)
            anchors = {slug(h) for h in re.findall(r'^#+ (.+)$', text, flags=re.M)}
            assert anchor in anchors, f'README.md links to {link}: no such heading'


def test_every_page_is_linked_from_the_readme():
    readme = (ROOT / 'README.md').read_text()
    for page in (ROOT / 'docs').glob('*.md'):
        if page.name != 'index.md':
            assert f'](docs/{page.name})' in readme, page.name


# video_kd/steps/check_inputs.py comes with issue 20's split of video_kd/core/checks.py
PENDING = {'video_kd/steps/check_inputs'}


def test_every_module_the_docs_name_exists():
    """`video_kd.x.y` and `video_kd/x/y.py` in the README and the pages name the layered
    package as it is (a module, then perhaps one of its attributes)."""
    pages = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
    for page in pages:
        for name in set(re.findall(r'\bvideo_kd(?:[./]\w+)+(?![\w*])', page.read_text())):
            parts = re.split(r'[./]', name.removesuffix('.py'))
            path = ROOT / parts[0]
            for part in parts[1:]:
                if not path.is_dir():
                    break  # a module's attribute (`video_kd.core.errors.UserError`)
                path = path / part
            found = path.is_dir() or path.with_suffix('.py').is_file()
            package = path.parent / '__init__.py'  # or the package's own attribute
            found |= package.is_file() and path.name in package.read_text()
            found |= path.relative_to(ROOT).as_posix() in PENDING
            assert found, f'{page.name} names {name}: no such module'


def test_the_cli_commands_the_docs_list_are_the_clis():
    listed = (ROOT / 'docs' / 'cluster.md').read_text().split('### `video-kd --help`', 1)[1]
    listed = listed.split('```', 2)[1]
    commands = re.findall(r'^(\S+)\s', listed, flags=re.M)
    cli = (ROOT / 'video_kd' / 'cli.py').read_text()
    assert commands == re.findall(r"sub\.add_parser\(\s*'([\w-]+)'", cli)

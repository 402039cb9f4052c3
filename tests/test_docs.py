"""The README and the pages under docs/ stay short, linked and true to the repository.

A renamed module, a moved recipe or a retitled section breaks a reader's path through the documentation
silently; these checks make it a test failure naming the page and the stale reference.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / 'README.md'
DOCS = REPO / 'docs'
MAX_README_LINES = 200

#: Top-level entries of the repository whose paths the pages name (`tempme_composer/...`, `yamls/...`).
REPO_ROOTS = ('tempme_composer', 'tests', 'yamls', 'scripts', 'recipes', 'docs', '.ci')

_FENCE = re.compile(r'^```.*?^```', re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r'`[^`\n]*`')
_LINK = re.compile(r'\[[^\]\n]*\]\(([^)\s]+)\)')
_URL = re.compile(r'[a-z][a-z0-9+.-]*://\S+')
_HEADING = re.compile(r'^(#{1,6})\s+(.*?)\s*#*\s*$', re.MULTILINE)
_ROOTS_ALTERNATION = '|'.join(re.escape(root) for root in REPO_ROOTS)
_REPO_PATH = re.compile(rf'(?<![\w./~-])((?:{_ROOTS_ALTERNATION})/[\w./-]*)')
_MD_NAME = re.compile(r'(?<![\w./-])([\w./-]*\w\.md)\b')


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob('*.md'))]


def _page_id(page: Path) -> str:
    return str(page.relative_to(REPO))


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans (where `[x](y)` is not a link)."""
    return _CODE_SPAN.sub('', _FENCE.sub('', text))


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', heading)
    return re.sub(r'[^\w\- ]', '', text.strip().lower()).replace(' ', '-')


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a page, with GitHub's `-1`, `-2` suffixes for repeated headings."""
    seen: dict[str, int] = {}
    found = set()
    for _, title in _HEADING.findall(_FENCE.sub('', page.read_text(encoding='utf-8'))):
        slug = github_slug(title)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f'{slug}-{count}')
    return found


def test_github_slug_follows_githubs_rules():
    assert github_slug("STOP's pixel convolutions") == 'stops-pixel-convolutions'
    assert github_slug('Recipes in `yamls/`') == 'recipes-in-yamls'
    assert github_slug('Files you receive: what export, index and search trust') == (
        'files-you-receive-what-export-index-and-search-trust'
    )
    assert github_slug('FFT convolutions (`model.stop.conv_impl`)') == 'fft-convolutions-modelstopconv_impl'


def test_readme_stays_short():
    lines = README.read_text(encoding='utf-8').count('\n')
    assert lines <= MAX_README_LINES, (
        f'README.md has {lines} lines, expected at most {MAX_README_LINES}: move details to a page under docs/'
    )


def test_readme_keeps_the_ci_install_and_test_commands():
    """`.ci/run` runs exactly the README's install and test commands; the two must not drift apart."""
    readme = README.read_text(encoding='utf-8')
    ci = (REPO / '.ci' / 'run').read_text(encoding='utf-8')
    for command in ("pip install -e '.[dev]'", 'pytest'):
        assert re.search(rf'^    {re.escape(command)}$', readme, re.MULTILINE), f'README.md lacks `{command}`'
        assert re.search(rf'^{re.escape(command)}$', ci, re.MULTILINE), f'.ci/run lacks `{command}`'
    assert re.search(r'^    composer recipes/train\.py yamls/demo\.yaml$', readme, re.MULTILINE)


def test_ci_runs_the_readmes_other_two_installs():
    """The current-torch and inference-only installs the README gives are the ones `.ci/run` tests."""
    readme = README.read_text(encoding='utf-8')
    ci = (REPO / '.ci' / 'run').read_text(encoding='utf-8')
    current = "uv pip install -e '.[dev]' --override installs/current-torch-overrides.txt"
    assert re.search(rf'^    {re.escape(current)}$', readme, re.MULTILINE), f'README.md lacks `{current}`'
    assert re.search(rf'^{re.escape(current)}$', ci, re.MULTILINE), f'.ci/run lacks `{current}`'
    assert re.search(r'^    pip install -e \.$', readme, re.MULTILINE), 'README.md lacks `pip install -e .`'
    assert re.search(r'^uv pip install -e \. pytest$', ci, re.MULTILINE), (
        '.ci/run lacks the inference-only install'
    )


@pytest.mark.parametrize('page', _pages(), ids=_page_id)
def test_relative_links_resolve_to_files_and_headings(page: Path):
    broken = []
    for target in _LINK.findall(_prose(page.read_text(encoding='utf-8'))):
        if _URL.match(target) or target.startswith('mailto:'):
            continue
        path_part, _, anchor = target.partition('#')
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(
                f'{target}: no file {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest}'
            )
        elif anchor and dest.suffix == '.md' and anchor not in anchors(dest):
            broken.append(f'{target}: {_page_id(dest)} has no heading with the anchor #{anchor}')
    assert not broken, f'{_page_id(page)}: broken links:\n' + '\n'.join(broken)


@pytest.mark.parametrize('page', _pages(), ids=_page_id)
def test_repository_paths_named_exist(page: Path):
    text = _URL.sub('', page.read_text(encoding='utf-8'))
    missing = sorted(
        {
            path
            for path in (match.rstrip('.') for match in _REPO_PATH.findall(text))
            if not (REPO / path).exists()
        }
    )
    assert not missing, f'{_page_id(page)} names paths that are not in the repository: {missing}'


#: Material that lives beside a checkout but not in it: reference folders, a machine's work tree, a guide
#: that is not part of the project.
_OUTSIDE = re.compile(r'shared/(?:spec|data)|/work/|seed\s+guide')


@pytest.mark.parametrize('page', _pages(), ids=_page_id)
def test_pages_name_no_files_outside_the_repository(page: Path):
    text = _URL.sub('', page.read_text(encoding='utf-8'))
    outside = sorted(
        {
            name
            for name in _MD_NAME.findall(text)
            if not any((base / name).exists() for base in (page.parent, REPO, DOCS))
        }
    )
    outside += _OUTSIDE.findall(text)
    assert not outside, f'{_page_id(page)} refers to documents outside the repository: {outside}'


@pytest.mark.parametrize('page', sorted(DOCS.glob('*.md')), ids=_page_id)
def test_each_page_opens_with_a_title_and_a_paragraph(page: Path):
    blocks = [b for b in page.read_text(encoding='utf-8').split('\n\n') if b.strip()]
    assert blocks[0].startswith('# ') and '\n' not in blocks[0].strip(), (
        f'{_page_id(page)}: first line is no title'
    )
    first = blocks[1].lstrip()
    assert not first.startswith(('#', '|', '```', '    ', '-')), (
        f'{_page_id(page)}: expected a paragraph saying what the page covers right after its title'
    )


def test_docs_index_lists_every_page():
    index = DOCS / 'README.md'
    linked = {(DOCS / target.partition('#')[0]).resolve() for target in _LINK.findall(index.read_text())}
    unlisted = [p.name for p in sorted(DOCS.glob('*.md')) if p != index and p.resolve() not in linked]
    assert not unlisted, f'docs/README.md does not list: {unlisted}'

"""MkDocs hooks: the README is the site's home page and the changelog one of its pages.

Both live at the repository root, where people read them first, and link as the repository
lays files out (`docs/performance.md`, `../README.md`); the site has them as `index.md` and
`changelog.md` beside the pages of `docs/`, so links are rewritten to match.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
FROM_ROOT = {"index.md": "README.md", "changelog.md": "CHANGELOG.md"}
# (a link's start as the repository has it, as the site has it), for the pages from the root
# and for those of docs/.
ROOT_LINKS = [
    ("](docs/", "]("),
    ("](CHANGELOG.md", "](changelog.md"),
    ("](README.md", "](index.md"),
]
DOCS_LINKS = [("](../README.md", "](index.md"), ("](../CHANGELOG.md", "](changelog.md")]


def on_files(files: Files, config: Any) -> Files:
    for page, source in FROM_ROOT.items():
        files.append(File.generated(config, page, abs_src_path=str(ROOT / source)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    links = ROOT_LINKS if page.file.src_uri in FROM_ROOT else DOCS_LINKS
    for old, new in links:
        markdown = markdown.replace(old, new)
    return markdown

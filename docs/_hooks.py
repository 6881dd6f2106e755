"""mkdocs hook: links from a page to a file of the repository outside docs/ (`../examples/demo.py`) are right
when the Markdown is read on GitHub, but that file has no page in the built site, so there it becomes plain text.
A link to a file that does not exist is left alone, for mkdocs --strict to report."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_LINK = re.compile(r"\[([^\]]+)\]\((\.\./[^)#\s]+)(#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Rewrite `[text](../path)` to `text` where `../path`, seen from the page, is an existing file outside docs/."""
    docs_dir = Path(config["docs_dir"]).resolve()
    page_dir = (docs_dir / page.file.src_path).parent

    def _plain(match: re.Match[str]) -> str:
        target = (page_dir / match.group(2)).resolve()
        outside_docs = docs_dir not in target.parents
        return match.group(1) if outside_docs and target.exists() else match.group(0)

    return _LINK.sub(_plain, markdown)

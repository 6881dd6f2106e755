"""The README and the manual in docs/ as a reader meets them: every ```python block runs (per page in order in one
namespace, and each block alone, as a reader copies it), every relative link points to a file (and heading) that
exists, the README stays a front page, and the site builds with `mkdocs build --strict`."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250
FENCE_LANGUAGES = {"python", "bash", "text"}  # python runs here; bash (commands) and text (output) do not

# what a page's blocks print, run in order: the shapes the core's examples show in their comments
PRINTED = {
    "docs/core.md": [
        "{'0.weight': (8, 3, 3, 3), '0.bias': (8,), '2.weight': (8, 8, 3, 3), '2.bias': (8,)}",
        "{'0.lora_A': (2, 4), '0.lora_B': (8, 2)}",
    ],
}


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE)


def _prose(page: Path) -> str:
    """The page without its fenced blocks: links and headings inside code are not links and headings."""
    return re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE)


# blocks that need an optional package (a marker in the block -> the package): skipped where it is not installed
OPTIONAL = {"BitsAndBytesConfig": "bitsandbytes"}


def _missing_package(source: str) -> str | None:
    for marker, package in OPTIONAL.items():
        if marker in source and importlib.util.find_spec(package) is None:
            return package
    return None


def _run(source: str, label: str, namespace: dict, cwd: Path) -> None:
    previous = os.getcwd()
    os.chdir(cwd)  # the examples write to out/
    try:
        exec(compile(source, label, "exec"), namespace)
    except Exception as err:  # pragma: no cover - the message names the block
        raise AssertionError(f"{label} failed: {err!r}\n{source}") from err
    finally:
        os.chdir(previous)


PAGES_WITH_CODE = [page for page in PAGES if _blocks(page)]
BLOCKS = [(page, index) for page in PAGES_WITH_CODE for index in range(len(_blocks(page)))]


def test_pages_have_runnable_examples():
    assert len(_blocks(README)) >= 1, "the README's quick start is a ```python block"
    assert len(BLOCKS) >= 4
    assert set(PRINTED) <= {_name(page) for page in PAGES_WITH_CODE}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=_name)
def test_python_blocks_run_in_order(page, tmp_path, capsys):
    namespace: dict = {"__name__": "__docs__"}
    for index, block in enumerate(_blocks(page)):
        if _missing_package(block) is None:  # (a block that needs a missing package is checked where it is installed)
            _run(block, f"{_name(page)} block {index}", namespace, tmp_path)
    printed = capsys.readouterr().out
    for expected in PRINTED.get(_name(page), []):
        assert expected in printed


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(("page", "index"), BLOCKS, ids=[f"{_name(page)}-{index}" for page, index in BLOCKS])
def test_each_block_runs_alone(page, index, tmp_path):
    """A reader copies one block: it must not rely on names an earlier block defined."""
    block = _blocks(page)[index]
    if (package := _missing_package(block)) is not None:
        pytest.skip(f"the block needs {package}, which is not installed here (the dev extra installs it on Linux)")
    _run(block, f"{_name(page)} block {index}", {"__name__": "__docs__"}, tmp_path)


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_code_blocks_name_their_language(page):
    """An unnamed fence would be neither run nor meant as output: every block says python, bash or text."""
    opening = re.findall(r"^```(.*?)\n.*?^```", page.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE)
    assert set(opening) <= FENCE_LANGUAGES, f"{_name(page)}: fences {sorted(set(opening) - FENCE_LANGUAGES)}"


def _slug(heading: str) -> str:
    """A heading's anchor, as mkdocs (Python-Markdown's toc) and GitHub make it for the headings we write."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())


def _anchors(page: Path) -> set[str]:
    return {_slug(heading) for heading in re.findall(r"^#+ (.+)$", _prose(page), flags=re.MULTILINE)}


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_relative_links_resolve(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page)):
        if re.match(r"[a-z]+:", target):  # https:, mailto:: not ours to check offline
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target} (no heading #{anchor} in {_name(file)})")
    assert not broken, f"{_name(page)} links to: " + ", ".join(broken)


def test_readme_is_a_front_page():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    message = f"README.md has {lines} lines, expected at most {README_MAX_LINES}: move the manual's part to docs/"
    assert lines <= README_MAX_LINES, message


def test_site_builds_strictly(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed: pip install '.[docs]' to build the manual")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (tmp_path / "site" / "api" / "index.html").is_file()

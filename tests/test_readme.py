"""Every ```python block of the README runs, in order in one namespace, and each one alone (as a reader copies it)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_readme_has_runnable_examples():
    assert len(_blocks()) >= 4


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_readme_python_blocks_run_as_written(tmp_path, capsys):
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the examples write to out/
    try:
        namespace: dict = {"__name__": "__readme__"}
        for i, block in enumerate(_blocks()):
            try:
                exec(compile(block, f"README block {i}", "exec"), namespace)
            except Exception as err:  # pragma: no cover - the message names the block
                raise AssertionError(f"README block {i} failed: {err!r}\n{block}") from err
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out
    assert "{'0.weight': (8, 3, 3, 3), '0.bias': (8,), '2.weight': (8, 8, 3, 3), '2.bias': (8,)}" in printed
    assert "{'0.lora_A': (2, 4), '0.lora_B': (8, 2)}" in printed


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("index", range(len(_blocks())))
def test_each_readme_block_runs_alone(index, tmp_path):
    """A reader copies one block: it must not rely on names an earlier block defined."""
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(_blocks()[index], f"README block {index}", "exec"), {"__name__": "__readme__"})
    finally:
        os.chdir(cwd)

"""The package's promises: a small public API, `import hyperlight` without the frameworks, typed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import hyperlight


def test_import_hyperlight_imports_no_framework():
    code = (
        "import sys, hyperlight, hyperlight.integrations; "
        "frameworks = ('transformers', 'peft', 'accelerate', 'datasets', 'safetensors'); "
        "print(sorted(m for m in frameworks if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_api_is_the_sorted_all():
    assert hyperlight.__all__ == sorted(hyperlight.__all__)
    for name in hyperlight.__all__:
        assert hasattr(hyperlight, name), name
    public = {n for n in dir(hyperlight) if not n.startswith("_")} - {
        "cli",
        "find",
        "hypernet",
        "hypernetize",
        "integrations",
        "nn",
    }  # subpackages/modules
    assert public <= set(hyperlight.__all__) | {"hypernetize"}
    assert hyperlight.Hypernet is hyperlight.HyperNet


def test_ships_type_information():
    assert (Path(hyperlight.__file__).parent / "py.typed").is_file()

"""The package's promises: a small public API, `import hyperlight` without the frameworks, typed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import hyperlight


def test_import_hyperlight_imports_no_framework():
    code = (
        "import sys, hyperlight, hyperlight.plugin, hyperlight.training; "
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
        "Hypernet",
        "hypernet",
        "hypernetize",
        "nn",
        "plugin",
        "restore",
        "training",
    }  # subpackages/modules
    assert public <= set(hyperlight.__all__) | {"hypernetize"}
    assert hyperlight.Hypernet is hyperlight.HyperNet


def test_ships_type_information():
    assert (Path(hyperlight.__file__).parent / "py.typed").is_file()


def test_old_integrations_paths_still_work_with_a_deprecation_warning():
    import warnings

    import hyperlight.integrations as old
    from hyperlight.plugin import SentenceEncoder
    from hyperlight.training import HyperDataCollator, distill_adapters

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert old.HyperDataCollator is HyperDataCollator
        assert old.SentenceEncoder is SentenceEncoder
        assert old.distill_adapters is distill_adapters
        assert old.HyperConfig is hyperlight.HyperConfig
    assert len(caught) == 4 and all(issubclass(w.category, DeprecationWarning) for w in caught)
    assert "hyperlight.training.HyperDataCollator" in str(caught[0].message)
    try:
        old.no_such_name  # noqa: B018
    except AttributeError as error:
        assert "no_such_name" in str(error)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def test_plugin_names_load_lazily_and_are_the_plugin_objects():
    code = (
        "import sys, hyperlight; before = 'hyperlight.plugin' in sys.modules; "
        "from hyperlight import HyperConfig, CheckpointError; import hyperlight.plugin as p; "
        "print(before, HyperConfig is p.HyperConfig, CheckpointError is p.CheckpointError, hyperlight.Hypernet is "
        "hyperlight.HyperNet)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True", "True", "True"]

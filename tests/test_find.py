"""find_*: by type and by name pattern (globs with fnmatchcase, regexes with re.search), in model order."""

import pytest
from torch import nn

from hyperlight import find_modules_from_patterns, find_modules_of_type, find_parameters_from_patterns


def model() -> nn.Module:
    m = nn.Module()
    m.stem = nn.Conv2d(3, 4, 3)
    m.blocks = nn.Sequential(
        nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.Conv1d(4, 4, 1)),
        nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU()),
    )
    m.head = nn.Linear(4, 2)
    return m


@pytest.mark.parametrize(
    "types, expected",
    [
        (nn.Conv2d, ["stem", "blocks.0.0", "blocks.1.0"]),
        ([nn.Conv2d], ["stem", "blocks.0.0", "blocks.1.0"]),
        ([nn.Linear, nn.Conv2d], ["stem", "blocks.0.0", "blocks.1.0", "head"]),  # model order, not list order
        ((nn.Conv1d, nn.BatchNorm2d), ["blocks.0.1", "blocks.0.2"]),
        (nn.modules.conv._ConvNd, ["stem", "blocks.0.0", "blocks.0.2", "blocks.1.0"]),
        ([nn.Sequential], ["blocks", "blocks.0", "blocks.1"]),
        ([nn.Embedding], []),
    ],
)
def test_find_modules_of_type(types, expected):
    m = model()
    found = find_modules_of_type(m, types)
    assert list(found) == expected
    assert all(found[name] is m.get_submodule(name) for name in expected)


@pytest.mark.parametrize(
    "types, error, message",
    [
        ([], ValueError, r"module_types is empty; give at least one nn.Module subclass"),
        ([int], TypeError, r"module_types must be nn.Module subclasses, got <class 'int'>"),
        (["Conv2d"], TypeError, r"module_types must be nn.Module subclasses, got 'Conv2d'"),
        (nn.Conv2d(1, 1, 1), TypeError, "not iterable"),
    ],
)
def test_find_modules_of_type_rejects(types, error, message):
    with pytest.raises(error, match=message):
        find_modules_of_type(model(), types)


def test_find_rejects_a_non_module():
    for fn, kwargs in [
        (find_modules_of_type, {"module_types": nn.Linear}),
        (find_modules_from_patterns, {"globs": ["*"]}),
        (find_parameters_from_patterns, {"globs": ["*"]}),
    ]:
        with pytest.raises(TypeError, match="model must be an nn.Module, got dict"):
            fn({}, **kwargs)


@pytest.mark.parametrize(
    "globs, regex, expected",
    [
        (["*.0"], None, ["blocks.0", "blocks.0.0", "blocks.1.0"]),  # '*' crosses dots
        ("blocks.?", None, ["blocks.0", "blocks.1"]),  # a single string is one pattern
        (["blocks"], None, ["blocks"]),  # globs match the whole name
        (["stem", "head"], None, ["stem", "head"]),
        (["*[12]"], None, ["blocks.0.1", "blocks.0.2", "blocks.1", "blocks.1.1"]),
        (None, [r"0\.\d"], ["blocks.0.0", "blocks.0.1", "blocks.0.2"]),  # regexes search anywhere
        (None, [r"^blocks\.\d$"], ["blocks.0", "blocks.1"]),
        (None, "ead", ["head"]),
        (["stem"], [r"\.1$"], ["stem", "blocks.0.1", "blocks.1", "blocks.1.1"]),  # either kind matches
        (["nothing*"], None, []),
    ],
)
def test_find_modules_from_patterns(globs, regex, expected):
    m = model()
    found = find_modules_from_patterns(m, globs=globs, regex=regex)
    assert list(found) == expected
    assert all(found[name] is m.get_submodule(name) for name in expected)


@pytest.mark.parametrize(
    "globs, regex, expected",
    [
        (
            ["*.weight"],
            None,
            [
                "stem.weight",
                "blocks.0.0.weight",
                "blocks.0.1.weight",
                "blocks.0.2.weight",
                "blocks.1.0.weight",
                "head.weight",
            ],
        ),
        (["blocks*0.bias"], None, ["blocks.0.0.bias", "blocks.1.0.bias"]),
        (None, [r"^(stem|head)\.bias$"], ["stem.bias", "head.bias"]),
        (["head.*"], [r"^stem"], ["stem.weight", "stem.bias", "head.weight", "head.bias"]),  # model order
    ],
)
def test_find_parameters_from_patterns(globs, regex, expected):
    m = model()
    found = find_parameters_from_patterns(m, globs=globs, regex=regex)
    assert list(found) == expected
    assert all(found[name] is m.get_parameter(name) for name in expected)
    assert "blocks.0.1.running_mean" not in find_parameters_from_patterns(m, globs=["*"])  # buffers are not parameters


@pytest.mark.parametrize("fn", [find_modules_from_patterns, find_parameters_from_patterns])
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({}, ValueError, r"give at least one pattern"),
        ({"globs": [], "regex": []}, ValueError, r"give at least one pattern"),
        ({"regex": ["layer[1"]}, ValueError, r"invalid regex 'layer\[1'"),
        ({"globs": [3]}, TypeError, r"globs must be strings, got int 3"),
        ({"regex": [None]}, TypeError, r"regex must be strings, got NoneType"),
    ],
)
def test_pattern_errors(fn, kwargs, error, message):
    with pytest.raises(error, match=message):
        fn(model(), **kwargs)

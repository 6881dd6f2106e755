"""Condition values on the command line: `--condition NAME=VALUE` pairs parsed by each condition's type, what a
condition takes (for messages), and `--encoder` for text conditions whose sentence encoder moved."""

from __future__ import annotations

import argparse
import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import UsageError


def add_condition_argument(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """`--condition NAME=VALUE`, repeated: the values of the condition to export or merge."""
    parser.add_argument(
        "--condition",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        required=required,
        help="one condition's value, repeated for several: categorical a value's name or its int id, scalar a "
        "number, vector a JSON list, text a string (`hyperlight inspect` lists them)",
    )


def _float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def describe_condition(name: str, spec: Mapping[str, Any]) -> str:
    """`task (categorical: an id in 0..7)`: what a condition takes on the command line."""
    kind = spec.get("type")
    if kind == "categorical" and spec.get("values"):
        names = list(spec["values"])
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        return f"{name} (categorical: one of {shown}, or an id in 0..{spec['num'] - 1})"
    if kind == "categorical":
        return f"{name} (categorical: an id in 0..{spec['num'] - 1})"
    if kind == "scalar":
        lo, hi = spec.get("range", (0.0, 1.0))
        return f"{name} (scalar: a number in [{lo}, {hi}])"
    if kind == "vector":
        return f"{name} (vector: a JSON list of {spec['dim']} numbers)"
    if kind == "text":
        return f"{name} (text: a string)"
    if kind == "input":
        return f"{name} (input: computed from each prompt's hidden state after {spec['layer']} block(s))"
    return f"{name} ({kind})"


def parse_condition_value(name: str, spec: Mapping[str, Any], text: str) -> Any:
    """One condition's value from its command-line text, by the condition's type (checked against its spec)."""
    kind = spec.get("type")
    if kind == "categorical":
        return _categorical(name, spec, text)
    if kind == "scalar":
        return _scalar(name, spec, text)
    if kind == "vector":
        return _vector(name, spec, text)
    if kind == "text":
        return text
    raise ValueError(f"condition '{name}' has type {kind!r}, which this command line cannot parse; upgrade hyperlight")


def _categorical(name: str, spec: Mapping[str, Any], text: str) -> int | str:
    if not re.fullmatch(r"\s*[+-]?\d+\s*", text):
        if spec.get("values"):  # a name: checked by the model's own lookup (unknown names, "did you mean")
            from ..hypernet.conditions import ConditionSpec, ids_of_names

            ids_of_names(name, ConditionSpec.parse(name, spec), text)
            return text  # the model takes the name
        raise ValueError(f"condition '{name}' is categorical: expected an integer id, got {text!r}")
    value = int(text)
    if not 0 <= value < spec["num"]:
        raise ValueError(f"condition '{name}' out of range: expected an id in 0..{spec['num'] - 1}, got {value}")
    return value


def _scalar(name: str, spec: Mapping[str, Any], text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"condition '{name}' is a scalar: expected a number, got {text!r}") from None
    lo, hi = spec.get("range", (0.0, 1.0))
    # inclusive at both ends in float32, as the model checks it
    if not math.isfinite(value) or not _float32(lo) <= _float32(value) <= _float32(hi):
        raise ValueError(f"condition '{name}' out of range: expected a number in [{lo}, {hi}], got {text!r}")
    return value


def _vector(name: str, spec: Mapping[str, Any], text: str) -> list[float]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = None
    numbers = isinstance(value, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    )
    if not numbers or len(value) != spec["dim"]:
        raise ValueError(
            f"condition '{name}' is a vector of dim {spec['dim']}: expected a JSON list of {spec['dim']} finite "
            f"numbers (e.g. {name}=[0.1,0.2,...]), got {text[:80]!r}"
        )
    return [float(v) for v in value]


def parse_conditions(
    pairs: Sequence[str], specs: Mapping[str, Mapping[str, Any]], *, enumerated: str | None = None
) -> dict[str, Any]:
    """`{name: value}` from `--condition NAME=VALUE` arguments: every condition of `specs` exactly once, but the
    `enumerated` one (every value of it is written: `export-adapter --all`), which must not be given."""
    computed = [n for n, s in specs.items() if s.get("type") == "input"]
    if computed:
        raise ValueError(
            f"this checkpoint's weights depend on each input (input conditions {computed}), so merging or exporting "
            "fixes them for one prompt, which the command line does not take: in Python, "
            "HyperModel.from_pretrained(base, CHECKPOINT).merge_and_unload(prompt=tokenizer(text, "
            "return_tensors='pt'), ...) or .export_peft_adapter(DIR, prompt=..., ...)"
        )
    takes = ", ".join(describe_condition(n, s) for n, s in specs.items())
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"--condition takes NAME=VALUE (e.g. --condition {next(iter(specs))}=0), got {pair!r}")
        if name not in specs:
            raise ValueError(f"unknown condition {name!r}: this checkpoint takes {takes}")
        if name in values:
            raise ValueError(f"condition {name!r} is given twice; give each condition once")
        if name == enumerated:
            raise ValueError(f"condition {name!r} is given with --condition and enumerated by --all; give it once")
        values[name] = parse_condition_value(name, specs[name], text)
    missing = [n for n in specs if n not in values and n != enumerated]
    if missing:
        raise ValueError(
            f"missing condition(s) {missing}: this checkpoint takes {takes}; add --condition {missing[0]}=VALUE"
        )
    return values


def parse_encoders(given: Sequence[str], specs: Mapping[str, Mapping[str, Any]]) -> str | dict[str, str] | None:
    """`--encoder PATH` (every text condition) or `--encoder NAME=PATH` (repeated): where sentence encoders moved."""
    texts = [n for n, s in specs.items() if s.get("type") == "text"]
    if not given:
        return None
    if not texts:
        raise ValueError("--encoder gives the sentence encoder of a text condition, and this checkpoint has none")
    named = {}
    for item in given:
        name, sep, path = item.partition("=")
        if not sep or name not in texts:
            if len(given) > 1:
                raise ValueError(f"--encoder given several times takes NAME=PATH with NAME in {texts}, got {item!r}")
            return item
        named[name] = path
    return named


def show_conditions(conditions: Mapping[str, Any]) -> str:
    """`task=2, style='terse'`: the condition values a command wrote, for its last line."""
    return ", ".join(f"{k}={v!r}" for k, v in conditions.items())

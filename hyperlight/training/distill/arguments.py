"""The arguments of `distill_adapters`, checked: which adapter belongs to which condition, the sample inputs of
every target, and the training settings."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .adapter_files import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from .errors import AdapterKeyError, short
from .targets import Target

if TYPE_CHECKING:
    from ...plugin.model import HyperModel

MATCHES = ("delta", "outputs")
DEFAULT_SAMPLES = 128  # random inputs per target when sample_inputs is None


def adapter_pairs(hyper: HyperModel, adapters: Any) -> list[tuple[dict[str, Any], Path]]:
    """`[(conditions, directory)]` from the accepted forms of `adapters` (see `distill_adapters`)."""
    forms = _accepted_forms(hyper.condition_names)
    if isinstance(adapters, Mapping):
        pairs = _pairs_from_dict(hyper, adapters, forms)
    elif isinstance(adapters, Sequence) and not isinstance(adapters, (str, bytes)):
        pairs = _pairs_from_list(hyper, adapters, forms)
    else:
        raise AdapterKeyError(f"adapters must be {forms}; got {type(adapters).__name__}")
    if not pairs:
        raise AdapterKeyError(f"adapters is empty: give at least one adapter directory, as {forms}")
    checked = []
    for conditions, path in pairs:
        if not isinstance(path, (str, os.PathLike)):
            raise AdapterKeyError(
                f"the adapter for {conditions} is {short(path)} ({type(path).__name__}); expected the path of a "
                f"PEFT adapter directory (with {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})"
            )
        checked.append((conditions, Path(path)))
    return checked


def _accepted_forms(names: Sequence[str]) -> str:
    """The forms of `adapters` for a hyper model with conditions `names`, as error messages show them."""
    order = ", ".join(names)
    return (
        "a dict {value: directory} (one condition)"
        if len(names) == 1
        else f"a dict {{({order}): directory}} with tuple keys in condition order"
    ) + f", or a list of ({{{', '.join(f'{n!r}: ...' for n in names)}}}, directory) pairs"


def _pairs_from_dict(hyper: HyperModel, adapters: Mapping[Any, Any], forms: str) -> list[tuple[dict[str, Any], Any]]:
    names = hyper.condition_names
    pairs: list[tuple[dict[str, Any], Any]] = []
    for key, path in adapters.items():
        if len(names) == 1:
            pairs.append(({names[0]: key}, path))  # the key is the value itself, whatever its type
        elif isinstance(key, tuple) and len(key) == len(names):
            pairs.append((dict(zip(names, key)), path))
        else:
            raise AdapterKeyError(
                f"adapters: the key {short(key)} ({type(key).__name__}) does not give the {len(names)} "
                f"conditions of this hyper model ({hyper.condition_encoder.describe()}); expected {forms}"
            )
    return pairs


def _pairs_from_list(hyper: HyperModel, adapters: Sequence[Any], forms: str) -> list[tuple[dict[str, Any], Any]]:
    names = hyper.condition_names
    pairs: list[tuple[dict[str, Any], Any]] = []
    for i, item in enumerate(adapters):
        if not (isinstance(item, Sequence) and len(item) == 2 and isinstance(item[0], Mapping)):
            raise AdapterKeyError(f"adapters[{i}] is {short(item)} ({type(item).__name__}); expected {forms}")
        conditions = dict(item[0])
        missing = [n for n in names if n not in conditions]
        extra = [n for n in conditions if n not in names]
        if missing or extra:
            raise AdapterKeyError(
                f"adapters[{i}] gives conditions {list(conditions)}: "
                + "; ".join(
                    part
                    for part in (f"missing {missing}" if missing else "", f"unknown {extra}" if extra else "")
                    if part
                )
                + f". This hyper model takes {hyper.condition_encoder.describe()}"
            )
        pairs.append(({n: conditions[n] for n in names}, item[1]))
    return pairs


def sample_inputs_by_target(sample_inputs: Any, targets: list[Target], seed: int) -> dict[str, Tensor]:
    """`{target: (N, in_features)}`, float32 on the CPU."""
    if sample_inputs is None:
        generator = torch.Generator().manual_seed(seed)
        return {t.name: torch.randn(DEFAULT_SAMPLES, t.in_features, generator=generator) for t in targets}
    forms = (
        "a tensor (..., in_features) used for every target of that input size, or a dict {target name: tensor "
        "(..., in_features)} covering every target"
    )
    if isinstance(sample_inputs, Tensor):
        given = {t.name: sample_inputs for t in targets}
    elif isinstance(sample_inputs, Mapping):
        names = {t.name for t in targets}
        unknown = [k for k in sample_inputs if k not in names]
        missing = [t.name for t in targets if t.name not in sample_inputs]
        if unknown or missing:
            raise ValueError(
                f"sample_inputs names {unknown[:3]} (not targets of the hyper model) and lacks {missing[:3]}; "
                f"expected {forms}"
            )
        given = dict(sample_inputs)
    else:
        raise TypeError(
            f"sample_inputs must be None (random normal inputs), {forms}; got {type(sample_inputs).__name__}"
        )
    out = {}
    for t in targets:
        x = given[t.name]
        if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[-1] != t.in_features or x.numel() == 0:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"sample_inputs for target '{t.name}' is {shape}; expected a non-empty tensor (..., {t.in_features}) "
                f"(the target's in_features). Inputs of another size need {forms}"
            )
        if x.is_complex() or not x.is_floating_point() or not torch.isfinite(x).all():
            raise ValueError(f"sample_inputs for target '{t.name}' must hold finite real numbers, got {x.dtype}")
        out[t.name] = x.detach().reshape(-1, t.in_features).to("cpu", torch.float32)
    return out


def check_arguments(steps: Any, lr: Any, batch_size: Any, match: Any, weight_decay: Any, seed: Any) -> None:
    def integer(value: Any) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)

    if not integer(steps) or steps < 0:
        raise ValueError(f"steps must be an int ≥ 0 (0 measures the fit without training), got {steps!r}")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite positive number, e.g. lr=1e-3; got {lr!r}")
    if batch_size is not None and (not integer(batch_size) or batch_size <= 0):
        raise ValueError(f"batch_size must be None (all adapters every step) or a positive int, got {batch_size!r}")
    if match not in MATCHES:
        raise ValueError(f"match must be one of {list(MATCHES)}, got {match!r}")
    wd = weight_decay
    if isinstance(wd, bool) or not isinstance(wd, numbers.Real) or not math.isfinite(wd) or wd < 0:
        raise ValueError(f"weight_decay must be a finite number ≥ 0, got {weight_decay!r}")
    if not integer(seed):
        raise ValueError(f"seed must be an int, got {seed!r}")

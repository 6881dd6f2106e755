"""`HyperConfig`: what to hypernetize in a pretrained model, from which conditions, with which generator."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..hypernet.conditions import ConditionSpec
from .checkpoint_file import CONFIG_NAME as CONFIG_NAME
from .checkpoint_file import DIGEST_KEY
from .selection import check_layers, check_module_names, select_modules

MODES = ("lora", "full")
GENERATORS = ("shared", "per_target")
_DEFAULT_INTS = {"rank": 8, "condition_dim": 32, "hidden_size": 64, "num_layers": 2}
_DEFAULT_INTS |= {"layer_embedding_dim": 16, "type_embedding_dim": 16}
_POSITIVE_INTS = tuple(_DEFAULT_INTS)
_FRACTIONS = ("dropout", "hypernet_dropout")
_PROVENANCE = "hyperlight"  # the block save_pretrained writes beside the fields: which model it was trained on
_SHAPE = "{'target_modules': ..., 'conditions': {'task': {'type': 'categorical', 'num': 8}}, 'rank': 8, ...}"


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:77] + '...'}"


def _names(field_name: str, value: Any, *, allow_empty: bool) -> list[str]:
    """A list of non-empty str (a fresh copy), as target_parameters and modules_to_save take."""
    example = {"target_parameters": "['weight']", "modules_to_save": "['classifier']"}[field_name]
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TypeError(f"{field_name} must be a list of str (e.g. {example}) or None, got {_shown(value)}")
    bad = [v for v in value if not isinstance(v, str) or not v]
    if bad:
        raise TypeError(
            f"{field_name} must be a list of non-empty str (e.g. {example}), got {list(value)!r}, "
            f"whose entries {bad!r} are not"
        )
    if not value and not allow_empty:
        raise ValueError(f"{field_name} is empty, which selects nothing; give names, or None for all")
    return list(value)


def _finite(value: numbers.Real) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _check_field(name: str, value: Any) -> Any:
    """One field checked on its own (where it is given: construction or assignment); returns it normalised."""
    if name == "target_modules":
        return check_module_names(name, value)
    if name == "exclude_modules":
        return None if value is None else check_module_names(name, value)
    if name == "layers_to_transform":
        return None if value is None else check_layers(value)
    if name == "conditions":
        if not isinstance(value, Mapping) or not value:
            raise (ValueError if isinstance(value, Mapping) else TypeError)(
                "conditions must name at least one condition, "
                f"e.g. conditions={{'task': {{'type': 'categorical', 'num': 8}}}}, got {_shown(value)}"
            )
        # normalise (and validate) every condition; stored as plain dicts so the config stays JSON
        return {n: ConditionSpec.parse(n, s).to_dict() for n, s in value.items()}
    if name in ("mode", "generator"):
        choices = MODES if name == "mode" else GENERATORS
        if not isinstance(value, str) or value not in choices:
            raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
        return value
    if name in _POSITIVE_INTS:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            raise ValueError(
                f"{name} must be a positive int, got {value!r}{' (a bool)' if isinstance(value, bool) else ''}; "
                f"e.g. {name}={_DEFAULT_INTS[name]}"
            )
        return int(value)
    if name in _FRACTIONS:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1) (a dropout probability), got {value!r}; e.g. {name}=0.1")
        return float(value)
    if name == "alpha":
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not _finite(value) or value <= 0:
            raise ValueError(
                f"alpha must be a finite positive number (the update is scaled by alpha/rank), got {value!r}; "
                "e.g. alpha=16"
            )
        return float(value)
    if name == "share_heads":
        if not isinstance(value, bool):
            raise TypeError(f"share_heads must be True or False, got {_shown(value)}")
        return value
    if name == "target_parameters":
        return None if value is None else _names(name, value, allow_empty=False)
    if name == "modules_to_save":
        return None if value is None else _names(name, value, allow_empty=True)
    if name == "base_model_name_or_path":
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"base_model_name_or_path must be a str (a hub id or a path) or None, got {_shown(value)}")
        return None if value is None else os.fspath(value)
    return value


@dataclass
class HyperConfig:
    """Configuration of a hyper model, round-tripped through JSON. Every field is checked where it is given (at
    construction and on assignment; a refused value changes nothing), and again before a model is changed.

    Args:
        target_modules: which modules get externals. A string is a regex matched with `re.fullmatch`
            against dotted module names (`r".*\\.(q_proj|v_proj)"`); a list matches exact names or
            suffixes (`["q_proj", "v_proj"]`); `"all-linear"`; or a preset `"attention"`, `"mlp"`,
            `"attention+mlp"` (per architecture).
        conditions: `{name: {"type": "categorical", "num": N} | {"type": "vector", "dim": D} |
            {"type": "scalar", "range": [low, high]} | {"type": "text", "encoder": PATH_OR_NAME} |
            {"type": "input", "layer": k, "pool": "mean" | "last"}}`, passed to forward/generate as keyword
            arguments, except input conditions: computed from each example's prompt (the hidden state after `k`
            blocks, pooled), for targets in blocks `k` and up. Names are
            Python identifiers (no keyword, no leading `_`, no attribute of `nn.ModuleDict` such as `forward` or
            `type`) that shadow no argument of the base model's forward or generate (GenerationConfig fields
            included). A scalar range is inclusive at both ends (for values rounded to float32).
        mode: `"lora"` (predicted low-rank factors on frozen weights; linear-like targets) or `"full"`
            (predicted full tensors θ0 + Δθ for any parameter of the targets, e.g. LayerNorm scales).
        rank: the rank r of the low-rank update `alpha/rank · B A` (lora mode).
        alpha: the update's scale numerator (the update is `alpha/rank · B A`).
        dropout: dropout on the low-rank branch's input (lora mode).
        target_parameters: full mode: which parameters of each target (default: all of its own).
        exclude_modules: names to leave out (same forms as target_modules).
        layers_to_transform: only modules in these layer indices (`model.layers.<i>....`).
        generator: `"shared"` (one trunk for all layers, a head per module type) or `"per_target"`
            (one HyperNet per target module).
        share_heads: shared generator only: module types whose externals have the same shapes (q,k,v,o of
            equal width) share one output head, HyperFormer++-style; the heads hold nearly all of the generator's
            parameters, so it shrinks about as many times as types share, with less capacity (one span of
            generated weights for those types instead of one each).
        condition_dim: embedding size of each condition.
        hidden_size: width of the generator's trunk.
        num_layers: depth of the generator's trunk.
        layer_embedding_dim: size of the layer-index embedding.
        type_embedding_dim: size of the module-type embedding.
        hypernet_dropout: dropout inside the generator's trunk.
        modules_to_save: base modules that train fully and are saved with the hyper weights (exact names
            or suffixes), e.g. `["classifier"]` for a new classification head, as in PEFT.
        base_model_name_or_path: recorded for exports (PEFT's adapter_config.json); informational.
    """

    target_modules: str | list[str] = "attention"
    conditions: dict[str, dict[str, Any]] = field(default_factory=dict)
    mode: str = "lora"
    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    target_parameters: list[str] | None = None
    exclude_modules: str | list[str] | None = None
    layers_to_transform: int | list[int] | None = None
    generator: str = "shared"
    share_heads: bool = False
    condition_dim: int = 32
    hidden_size: int = 64
    num_layers: int = 2
    layer_embedding_dim: int = 16
    type_embedding_dim: int = 16
    hypernet_dropout: float = 0.0
    modules_to_save: list[str] | None = None
    base_model_name_or_path: str | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        # every field is checked where it is given (construction or assignment); a refused value changes nothing
        object.__setattr__(self, name, _check_field(name, value))

    def __post_init__(self) -> None:
        self._check_combination()

    def _check_combination(self) -> None:
        """The checks that involve several fields."""
        if self.mode == "lora" and self.target_parameters is not None:
            raise ValueError(
                "target_parameters applies to mode='full' only; in mode='lora' every target keeps its weight and "
                "gets predicted factors lora_A, lora_B"
            )
        if self.share_heads and self.generator != "shared":
            raise ValueError(
                f"share_heads=True shares the output heads of generator='shared'; generator='{self.generator}' has "
                "one network per target and no heads to share. Use generator='shared' or share_heads=False"
            )
        if self.mode == "full" and self.dropout:
            raise ValueError("dropout is the low-rank branch's input dropout; it has no meaning in mode='full'")

    def _validate(self) -> None:
        """Check every field again (lists and dicts may have been changed in place since they were given)."""
        for f in dataclasses.fields(self):
            _check_field(f.name, getattr(self, f.name))
        self._check_combination()

    # -- JSON ------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HyperConfig:
        """A config from `to_dict()`'s fields (the provenance block `"hyperlight"` and the weights digest that
        save_pretrained writes are ignored). `data` is left as it was."""
        if not isinstance(data, Mapping):
            raise TypeError(f"HyperConfig.from_dict needs a dict of config fields like {_SHAPE}, got {_shown(data)}")
        data = dict(data)
        provenance = data.pop(_PROVENANCE, {})
        data.pop(DIGEST_KEY, None)
        if not isinstance(provenance, Mapping):
            raise TypeError(
                f"the '{_PROVENANCE}' entry of a config is the provenance block save_pretrained writes (a dict with "
                f"the base model's type and targets), got {_shown(provenance)}; remove it or give a dict"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known, key=str)
        if unknown:
            raise ValueError(f"unknown HyperConfig field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**data)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2)  # in field order; the order of the conditions matters

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> HyperConfig:
        """A config from a JSON file holding one object of fields (`to_json_string()`, or a save_pretrained
        `hyper_config.json`, whose provenance block is ignored)."""
        what = f"a HyperConfig JSON file holds one object of config fields like {_SHAPE}"
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{os.fspath(path)} is not valid UTF-8 JSON ({err}); {what}") from None
        if not isinstance(data, dict):
            kinds = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
            raise TypeError(f"{os.fspath(path)} holds {kinds.get(type(data), 'null')}, not an object; {what}")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise (ValueError if isinstance(err, ValueError) else TypeError)(f"{os.fspath(path)}: {err}") from err

    def matched_modules(self, model: Any, *, time_limit: float | None = None) -> list[str]:
        """Dry run: the names of the modules of `model` this config selects, without changing the model.

        Raises the same errors as `get_hyper_model` (no match, non-linear targets in lora mode). With
        `time_limit` (seconds), patterns are evaluated with that bound and a runaway one raises TimeoutError.
        """
        self._validate()
        return select_modules(
            model,
            self.target_modules,
            exclude_modules=self.exclude_modules,
            layers_to_transform=self.layers_to_transform,
            require_linear=self.mode == "lora",
            model_type=getattr(getattr(model, "config", None), "model_type", None),
            time_limit=time_limit,
        )

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

"""`HyperConfig`: what to hypernetize in a pretrained model, from which conditions, with which generator."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..hypernet.conditions import ConditionSpec
from .io import CONFIG_NAME as CONFIG_NAME

MODES = ("lora", "full")
GENERATORS = ("shared", "per_target")


@dataclass
class HyperConfig:
    """Configuration of a hyper model, validated at construction and round-tripped through JSON.

    Args:
        target_modules: which modules get externals. A string is a regex matched with `re.fullmatch`
            against dotted module names (`r".*\\.(q_proj|v_proj)"`); a list matches exact names or
            suffixes (`["q_proj", "v_proj"]`); `"all-linear"`; or a preset `"attention"`, `"mlp"`,
            `"attention+mlp"` (per architecture).
        conditions: `{name: {"type": "categorical", "num": N} | {"type": "vector", "dim": D} |
            {"type": "scalar", "range": [low, high]}}`, passed to forward/generate as keyword arguments.
        mode: `"lora"` (predicted low-rank factors on frozen weights; linear-like targets) or `"full"`
            (predicted full tensors θ0 + Δθ for any parameter of the targets, e.g. LayerNorm scales).
        rank, alpha, dropout: the low-rank update `alpha/rank · B A` and dropout on its input (lora mode).
        target_parameters: full mode: which parameters of each target (default: all of its own).
        exclude_modules: names to leave out (same forms as target_modules).
        layers_to_transform: only modules in these layer indices (`model.layers.<i>....`).
        generator: `"shared"` (one trunk for all layers, a head per module type) or `"per_target"`
            (one HyperNet per target module).
        condition_dim: embedding size of each condition.
        hidden_size, num_layers: width and depth of the generator's trunk.
        layer_embedding_dim, type_embedding_dim: sizes of the layer-index and module-type embeddings.
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
    condition_dim: int = 32
    hidden_size: int = 64
    num_layers: int = 2
    layer_embedding_dim: int = 16
    type_embedding_dim: int = 16
    hypernet_dropout: float = 0.0
    modules_to_save: list[str] | None = None
    base_model_name_or_path: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, (list, tuple)):
            self.target_modules = [str(t) for t in self.target_modules]
            if not self.target_modules:
                raise ValueError("target_modules is empty; give a regex, a list of names, or a preset")
        elif not isinstance(self.target_modules, str) or not self.target_modules:
            raise TypeError(f"target_modules must be a str or a list of str, got {self.target_modules!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        if self.generator not in GENERATORS:
            raise ValueError(f"generator must be one of {list(GENERATORS)}, got {self.generator!r}")
        if not isinstance(self.conditions, dict) or not self.conditions:
            raise ValueError(
                "conditions must name at least one condition, "
                "e.g. conditions={'task': {'type': 'categorical', 'num': 8}}"
            )
        # normalise (and validate) every condition; stored as plain dicts so the config stays JSON
        self.conditions = {str(n): ConditionSpec.parse(n, s).to_dict() for n, s in self.conditions.items()}
        for name in (
            "rank",
            "condition_dim",
            "hidden_size",
            "num_layers",
            "layer_embedding_dim",
            "type_embedding_dim",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("dropout", "hypernet_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ValueError(f"alpha must be a positive number, got {self.alpha!r}")
        self.alpha = float(self.alpha)
        if self.mode == "lora" and self.target_parameters is not None:
            raise ValueError(
                "target_parameters applies to mode='full' only; in mode='lora' every target keeps its weight and "
                "gets predicted factors lora_A, lora_B"
            )
        if self.mode == "full" and self.dropout:
            raise ValueError("dropout is the low-rank branch's input dropout; it has no meaning in mode='full'")
        if self.modules_to_save is not None:
            if isinstance(self.modules_to_save, str) or not all(isinstance(m, str) for m in self.modules_to_save):
                raise TypeError(f"modules_to_save must be a list of module names, got {self.modules_to_save!r}")
            self.modules_to_save = list(self.modules_to_save)
        if self.layers_to_transform is not None:
            layers = (
                [self.layers_to_transform] if isinstance(self.layers_to_transform, int) else self.layers_to_transform
            )
            if not all(isinstance(i, int) and i >= 0 for i in layers):
                raise ValueError(f"layers_to_transform must be non-negative ints, got {self.layers_to_transform!r}")
            self.layers_to_transform = list(layers)

    # -- JSON ------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HyperConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown HyperConfig field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**data)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> HyperConfig:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        data.pop("hyperlight", None)  # provenance block written by save_pretrained
        return cls.from_dict(data)

    def matched_modules(self, model: Any) -> list[str]:
        """Dry run: the names of the modules of `model` this config selects, without changing the model.

        Raises the same errors as `get_hyper_model` (no match, non-linear targets in lora mode).
        """
        from .selection import select_modules

        return select_modules(
            model,
            self.target_modules,
            exclude_modules=self.exclude_modules,
            layers_to_transform=self.layers_to_transform,
            require_linear=self.mode == "lora",
            model_type=getattr(getattr(model, "config", None), "model_type", None),
        )

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

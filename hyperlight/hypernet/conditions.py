"""Conditions: the named inputs of a hyper model (task id, language id, a text embedding, a scalar), checked
and embedded into one vector per example."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .encoding import encode

CONDITION_TYPES = ("categorical", "vector", "scalar")


@dataclass(frozen=True)
class ConditionSpec:
    """One condition. `categorical`: ids in [0, num); `vector`: a (dim,) embedding; `scalar`: a number in
    `range`, rescaled to [0, 1] and encoded with cos|sin."""

    type: str
    num: int | None = None
    dim: int | None = None
    range: tuple[float, float] | None = None

    @classmethod
    def parse(cls, name: str, spec: Mapping[str, Any] | ConditionSpec) -> ConditionSpec:
        if isinstance(spec, ConditionSpec):
            spec = asdict(spec)
        if not isinstance(spec, Mapping):
            raise TypeError(
                f"condition '{name}' must be a dict like {{'type': 'categorical', 'num': 8}}, got {spec!r}"
            )
        fields = {"type", "num", "dim", "range"}
        extra = sorted(set(spec) - fields)
        if extra:
            raise ValueError(f"condition '{name}' has unknown fields {extra}; allowed are {sorted(fields)}")
        kind = spec.get("type")
        if kind not in CONDITION_TYPES:
            raise ValueError(f"condition '{name}' must have type in {list(CONDITION_TYPES)}, got {kind!r}")
        num, dim, rng = spec.get("num"), spec.get("dim"), spec.get("range")

        def positive(value: Any, field: str) -> int:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"condition '{name}' ({kind}) needs a positive int '{field}', got {value!r}")
            return value

        def unused(*names: str) -> None:
            for f in names:
                if spec.get(f) is not None:
                    raise ValueError(f"condition '{name}' ({kind}) does not take '{f}'")

        if kind == "categorical":
            unused("dim", "range")
            return cls(kind, num=positive(num, "num"))
        if kind == "vector":
            unused("num", "range")
            return cls(kind, dim=positive(dim, "dim"))
        unused("num", "dim")
        lo, hi = (0.0, 1.0) if rng is None else tuple(rng)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"condition '{name}' (scalar) needs range (low, high) with low < high, got {rng!r}")
        return cls(kind, range=(float(lo), float(hi)))

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if v is not None}


class ConditionEncoder(nn.Module):
    """Checks condition values and maps them to one embedding per example, `(B, out_features)`.

    Categorical ids get a learned embedding, vectors a learned projection, scalars a cos|sin encoding and
    a projection; the per-condition embeddings are concatenated (so combinations such as task × language
    stay distinguishable and unseen combinations are meaningful).
    """

    def __init__(self, conditions: Mapping[str, Mapping[str, Any] | ConditionSpec], embedding_dim: int) -> None:
        super().__init__()
        if not conditions:
            raise ValueError("at least one condition is needed, e.g. {'task': {'type': 'categorical', 'num': 4}}")
        self.specs = {name: ConditionSpec.parse(name, spec) for name, spec in conditions.items()}
        self.embedding_dim = embedding_dim
        self.embedders = nn.ModuleDict()
        for name, spec in self.specs.items():
            if spec.type == "categorical":
                emb = nn.Embedding(spec.num, embedding_dim)
                nn.init.normal_(emb.weight, std=1.0)
                self.embedders[name] = emb
            else:
                self.embedders[name] = nn.Linear(spec.dim if spec.type == "vector" else 2, embedding_dim)
        self.out_features = embedding_dim * len(self.specs)

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def check(self, values: Mapping[str, Any], batch_size: int | None = None) -> dict[str, Tensor]:
        """Validate `values` (one per example, or one for the whole batch) and return them as `(B, ...)` tensors."""
        missing = [n for n in self.specs if n not in values]
        extra = [n for n in values if n not in self.specs]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing condition(s) {missing}")
            if extra:
                parts.append(f"unexpected condition(s) {extra}")
            raise TypeError(
                f"{' and '.join(parts)}; this model takes {self.describe()} as keyword arguments, "
                "one value per example"
            )
        device = next(self.parameters()).device
        checked = {name: self._check_one(name, spec, values[name], device) for name, spec in self.specs.items()}
        sizes = {name: t.shape[0] for name, t in checked.items()}
        batch = batch_size if batch_size is not None else max(sizes.values())
        for name, t in checked.items():
            if t.shape[0] == 1 and batch != 1:
                checked[name] = t.expand(batch, *t.shape[1:])
            elif t.shape[0] != batch:
                raise ValueError(
                    f"condition '{name}' has {t.shape[0]} values but the input batch has {batch} examples; "
                    f"give one value per example ({batch}) or a single value for all"
                )
        return checked

    def describe(self) -> str:
        return ", ".join(f"{n} ({s.type})" for n, s in self.specs.items())

    @staticmethod
    def _check_one(name: str, spec: ConditionSpec, value: Any, device: torch.device) -> Tensor:
        t = torch.as_tensor(value, device=device)
        if spec.type == "categorical":
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise TypeError(f"condition '{name}' is categorical: expected integer ids, got dtype {t.dtype}")
            if t.dim() > 1:
                raise ValueError(
                    f"condition '{name}' is categorical: expected shape (B,) of ids, got {tuple(t.shape)}"
                )
            t = t.reshape(-1).long()
            if t.numel() and not torch.compiler.is_compiling() and (int(t.min()) < 0 or int(t.max()) >= spec.num):
                raise ValueError(
                    f"condition '{name}' out of range: expected ids in [0, {spec.num}), got {t.tolist()[:16]}"
                )
            return t
        if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"condition '{name}' is {spec.type}: expected a float tensor, got dtype {t.dtype}")
        t = t.float()
        if spec.type == "vector":
            if t.dim() == 1:
                t = t.unsqueeze(0)
            if t.dim() != 2 or t.shape[1] != spec.dim:
                raise ValueError(
                    f"condition '{name}' is a vector of dim {spec.dim}: expected shape (B, {spec.dim}) or "
                    f"({spec.dim},), got {tuple(t.shape)}"
                )
            if not torch.compiler.is_compiling() and not torch.isfinite(t).all():
                raise ValueError(f"condition '{name}' holds non-finite values")
            return t
        if t.dim() > 1:
            raise ValueError(f"condition '{name}' is a scalar: expected shape (B,) or (), got {tuple(t.shape)}")
        t = t.reshape(-1)
        lo, hi = spec.range
        if (
            t.numel()
            and not torch.compiler.is_compiling()
            and (not torch.isfinite(t).all() or float(t.min()) < lo or float(t.max()) > hi)
        ):
            raise ValueError(
                f"condition '{name}' out of range: expected values in [{lo}, {hi}], got {t.tolist()[:16]}"
            )
        return t

    def forward(self, checked: Mapping[str, Tensor]) -> Tensor:
        """Embed checked values (from `check`) into `(B, out_features)`."""
        parts = []
        for name, spec in self.specs.items():
            value = checked[name]
            embedder = self.embedders[name]
            if spec.type == "categorical":
                parts.append(embedder(value))
            elif spec.type == "vector":
                parts.append(embedder(value.to(embedder.weight.dtype)))
            else:
                lo, hi = spec.range
                unit = ((value - lo) / (hi - lo)).unsqueeze(-1).to(embedder.weight.dtype)  # (B, 1) in [0, 1]
                parts.append(embedder(encode(unit, "cos|sin")))
        return torch.cat(parts, dim=-1)

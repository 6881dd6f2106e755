"""Conditions: the named inputs of a hyper model (task id, language id, a text embedding, a scalar), checked
and embedded into one vector per example."""

from __future__ import annotations

import difflib
import keyword
import math
import numbers
import os
import re
import struct
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .encoding import encode

CONDITION_TYPES = ("categorical", "vector", "scalar", "text", "input")
POOLS = ("mean", "last")  # how an input condition pools the prompt's hidden states
_EXAMPLE = "{'task': {'type': 'categorical', 'num': 8}}"
# the embedders live in an nn.ModuleDict keyed by condition name: its attributes cannot be keys
_RESERVED_NAMES = frozenset(dir(nn.ModuleDict()))
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def check_condition_name(name: Any) -> str:
    """Raise unless `name` can name a condition: a keyword argument of forward/generate and a module key."""
    if not isinstance(name, str):
        raise TypeError(f"condition names must be str, got {name!r} ({type(name).__name__}); e.g. {_EXAMPLE}")
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(
            f"condition name {name!r} is not a Python identifier (conditions are passed as keyword arguments, "
            "e.g. hyper(input_ids=..., task=...)); use letters, digits and '_', not starting with a digit, "
            "and not a Python keyword"
        )
    if name.startswith("_"):
        raise ValueError(
            f"condition name {name!r} starts with '_', which is reserved for internals; rename it without the "
            "leading '_'"
        )
    if name in _RESERVED_NAMES:
        raise ValueError(
            f"condition name {name!r} is reserved: it is an attribute of torch.nn.ModuleDict, which holds the "
            f"condition embedders by name; rename the condition (e.g. '{name}_id')"
        )
    return name


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class ConditionSpec:
    """One condition. `categorical`: ids in [0, num), or named `values` (then `num` is their count and each
    value may be given by its name or its id); `vector`: a (dim,) embedding; `scalar`: a number in `range`,
    rescaled to [0, 1] and encoded with cos|sin; `text`: strings, embedded by a frozen sentence `encoder` (a path
    or name; its `dim` and `fingerprint` are recorded when the model is built); `input`: computed from the input
    itself, the base model's hidden state after `layer` blocks pooled over the prompt (`pool`: "mean" or "last";
    its `dim`, the hidden size, is recorded when the model is built)."""

    type: str
    num: int | None = None
    dim: int | None = None
    range: tuple[float, float] | None = None
    encoder: str | None = None
    fingerprint: str | None = None
    values: tuple[str, ...] | None = None  # categorical: the names of ids 0..num-1
    layer: int | None = None  # input: the hidden state after this many blocks (0: the input embeddings)
    pool: str | None = None  # input: "mean" or "last" over the prompt's tokens

    @classmethod
    def parse(cls, name: str, spec: Mapping[str, Any] | ConditionSpec) -> ConditionSpec:
        check_condition_name(name)
        if isinstance(spec, ConditionSpec):
            spec = asdict(spec)
        if not isinstance(spec, Mapping):
            raise TypeError(
                f"condition '{name}' must be a dict like {{'type': 'categorical', 'num': 8}}, "
                f"{{'type': 'vector', 'dim': 16}} or {{'type': 'scalar', 'range': [0.0, 1.0]}}, got {spec!r}"
            )
        fields = {"type", "num", "dim", "range", "encoder", "fingerprint", "values", "layer", "pool"}
        extra = sorted(set(spec) - fields, key=repr)
        if extra:
            raise ValueError(f"condition '{name}' has unknown fields {extra}; allowed are {sorted(fields)}")
        kind = spec.get("type")
        if not isinstance(kind, str) or kind not in CONDITION_TYPES:
            raise ValueError(
                f"condition '{name}' must have type in {list(CONDITION_TYPES)}, got {kind!r}; "
                "e.g. {'type': 'categorical', 'num': 8}"
            )
        num, dim, rng = spec.get("num"), spec.get("dim"), spec.get("range")

        def positive(value: Any, field: str) -> int:
            if not _is_int(value) or value <= 0:
                raise ValueError(
                    f"condition '{name}' ({kind}) needs a positive int '{field}', got {value!r}; "
                    f"e.g. {{'type': '{kind}', '{field}': 8}}"
                )
            return int(value)

        def unused(*names: str) -> None:
            for f in names:
                if spec.get(f) is not None:
                    raise ValueError(f"condition '{name}' ({kind}) does not take '{f}'; remove it")

        if kind != "categorical":
            unused("values")
        if kind != "input":
            unused("layer", "pool")
        else:
            unused("num", "range", "encoder", "fingerprint")
            layer, pool = spec.get("layer"), spec.get("pool", "mean")
            if not _is_int(layer) or layer < 0:
                raise ValueError(
                    f"condition '{name}' (input) needs 'layer': the number of blocks whose output it reads (0: the "
                    f"input embeddings), a non-negative int, got {layer!r}; e.g. {{'type': 'input', 'layer': 2}}"
                )
            if pool is None:
                pool = "mean"
            if not isinstance(pool, str) or pool not in POOLS:
                raise ValueError(
                    f"condition '{name}' (input): 'pool' must be one of {list(POOLS)} (over the prompt's tokens), "
                    f"got {pool!r}"
                )
            return cls(kind, dim=None if dim is None else positive(dim, "dim"), layer=int(layer), pool=pool)
        if kind == "text":
            unused("num", "range")
            encoder, fingerprint = spec.get("encoder"), spec.get("fingerprint")
            if isinstance(encoder, os.PathLike):
                encoder = os.fspath(encoder)
            if not isinstance(encoder, str) or not encoder:
                raise ValueError(
                    f"condition '{name}' (text) needs 'encoder': the path or name of a Transformers sentence "
                    f"encoder, got {encoder!r}; e.g. {{'type': 'text', 'encoder': 'path/to/all-MiniLM-L6-v2'}}"
                )
            if fingerprint is not None and not isinstance(fingerprint, str):
                raise ValueError(f"condition '{name}' (text): 'fingerprint' must be a str, got {fingerprint!r}")
            return cls(
                kind, dim=None if dim is None else positive(dim, "dim"), encoder=encoder, fingerprint=fingerprint
            )
        unused("encoder", "fingerprint")
        if kind == "categorical":
            unused("dim", "range")
            if spec.get("values") is None:
                return cls(kind, num=positive(num, "num"))
            names = _value_names(name, spec["values"])
            if num is not None and positive(num, "num") != len(names):
                raise ValueError(
                    f"condition '{name}' has num={num} but {len(names)} values; num is implied by values: "
                    "give values alone"
                )
            return cls(kind, num=len(names), values=names)
        if kind == "vector":
            unused("num", "range")
            return cls(kind, dim=positive(dim, "dim"))
        unused("num", "dim")
        return cls(kind, range=_scalar_range(name, rng))

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if v is not None}


def _value_names(name: str, values: Any) -> tuple[str, ...]:
    """A categorical condition's `values`: distinct, non-empty names, one per id."""
    example = "e.g. {'type': 'categorical', 'values': ['copy', 'reverse', 'sort']}"
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"condition '{name}': 'values' must be a non-empty list of names, got {values!r}; {example}")
    bad = [v for v in values if not isinstance(v, str) or not v]
    if bad:
        raise ValueError(f"condition '{name}': every value must be a non-empty str, got {bad[:4]!r}; {example}")
    normal = [unicodedata.normalize("NFC", v) for v in values]  # 'é' typed either way is one name
    repeated = sorted({v for v in normal if normal.count(v) > 1})
    if repeated:
        raise ValueError(f"condition '{name}': values must be distinct, {repeated[:4]} appear more than once")
    numeric = [v for v in values if re.fullmatch(r"\s*[+-]?\d+\s*", v)]
    if numeric:  # on a command line or in a file, '1' would read both as a name and as id 1
        raise ValueError(
            f"condition '{name}': values {numeric[:4]} read as integer ids; name them with letters (e.g. 'task1')"
        )
    return tuple(values)


def ids_of_names(name: str, spec: ConditionSpec, value: Any) -> Any:
    """A categorical value given by name (a str, or a list/tuple/array holding names) as ids; anything else as it
    is. Bools are refused anywhere in a list: `True` would silently read as id 1."""
    if getattr(getattr(value, "dtype", None), "kind", None) in ("U", "S", "O"):  # a NumPy array of names
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, bool) for v in value):
            raise TypeError(
                f"condition '{name}' is categorical: expected ids or names, got a bool in {_describe(value)}"
            )
        if not value:
            return torch.empty(0, dtype=torch.long)  # an empty batch
    named = isinstance(value, str) or (isinstance(value, (list, tuple)) and any(isinstance(v, str) for v in value))
    if not named:
        return value
    if spec.values is None:
        raise TypeError(
            f"condition '{name}' is categorical: expected integer ids (it has no named values), got "
            f"{_describe(value)}; to give values by name, declare them: "
            "{'type': 'categorical', 'values': ['copy', 'reverse', ...]}"
        )
    index = {unicodedata.normalize("NFC", v): i for i, v in enumerate(spec.values)}
    ids = []
    for v in [value] if isinstance(value, str) else value:
        if isinstance(v, str):
            v = unicodedata.normalize("NFC", v)
            if v not in index:
                close = difflib.get_close_matches(v, spec.values, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                known = list(spec.values[:20]) + (["..."] if len(spec.values) > 20 else [])
                raise ValueError(f"condition '{name}' has no value {v!r}; its values are {known}{hint}")
            ids.append(index[v])
        else:
            ids.append(v)
    return ids[0] if isinstance(value, str) else ids


def _scalar_range(name: str, rng: Any) -> tuple[float, float]:
    """A scalar condition's `[low, high]`, checked: two finite numbers (in float32, the values' dtype), low < high."""
    if rng is None:
        return (0.0, 1.0)
    pair = list(rng) if isinstance(rng, (list, tuple)) else None
    if pair is None or len(pair) != 2 or not all(_is_real(v) for v in pair):
        raise ValueError(
            f"condition '{name}' (scalar) needs range [low, high] (two numbers, e.g. [0.0, 1.0]), got {rng!r}"
        )
    try:
        lo, hi = float(pair[0]), float(pair[1])
    except OverflowError:  # ints too large for a float
        lo, hi = math.inf, math.inf
    if not all(math.isfinite(v) and abs(v) <= _FLOAT32_MAX for v in (lo, hi)):
        raise ValueError(
            f"condition '{name}' (scalar) needs a finite range [low, high] (within float32, ±{_FLOAT32_MAX:.3g}), "
            f"got {rng!r}"
        )
    if not _float32(lo) < _float32(hi):
        raise ValueError(
            f"condition '{name}' (scalar) needs range [low, high] with low < high (also in float32), got {rng!r}; "
            "e.g. [0.0, 1.0]"
        )
    return (lo, hi)


def _float32(value: float) -> float:
    """`value` rounded to float32 (the dtype condition values are checked in), as a Python float."""
    return struct.unpack("f", struct.pack("f", value))[0]


class ConditionEncoder(nn.Module):
    """Checks condition values and maps them to one embedding per example, `(B, out_features)`.

    Categorical ids get a learned embedding, vectors a learned projection, scalars a cos|sin encoding and
    a projection; the per-condition embeddings are concatenated (so combinations such as task × language
    stay distinguishable and unseen combinations are meaningful).
    """

    def __init__(
        self,
        conditions: Mapping[str, Mapping[str, Any] | ConditionSpec],
        embedding_dim: int,
        text_encoders: Mapping[str, Callable[[list[str]], Tensor]] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(conditions, Mapping):
            raise TypeError(f"conditions must be a dict of {{name: spec}}, e.g. {_EXAMPLE}, got {conditions!r}")
        if not conditions:
            raise ValueError("at least one condition is needed, e.g. {'task': {'type': 'categorical', 'num': 4}}")
        if not _is_int(embedding_dim) or embedding_dim <= 0:
            raise ValueError(f"embedding_dim must be a positive int, got {embedding_dim!r}")
        embedding_dim = int(embedding_dim)
        self.specs = {name: ConditionSpec.parse(name, spec) for name, spec in conditions.items()}
        self.embedding_dim = embedding_dim
        # text -> (n, dim) embeddings, frozen and not part of this module's state (not trained, not saved)
        self.text_encoders = dict(text_encoders or {})
        self.embedders = nn.ModuleDict()
        for name, spec in self.specs.items():
            if spec.type == "categorical":
                emb = nn.Embedding(spec.num, embedding_dim)
                nn.init.normal_(emb.weight, std=1.0)
                self.embedders[name] = emb
            elif spec.type == "input":
                if spec.dim is None:
                    raise ValueError(
                        f"input condition '{name}' has no 'dim' (the base model's hidden size); build it through "
                        "get_hyper_model, which records it"
                    )
                # hidden states' scale differs from layer to layer and model to model: normalised, then projected
                norm = nn.LayerNorm(spec.dim, elementwise_affine=False)
                self.embedders[name] = nn.Sequential(norm, nn.Linear(spec.dim, embedding_dim))
            elif spec.type == "text":
                dim = spec.dim if spec.dim is not None else getattr(self.text_encoders.get(name), "dim", None)
                if dim is None:
                    raise ValueError(
                        f"text condition '{name}' has no 'dim' and no encoder to read it from; build it through "
                        "get_hyper_model (which loads the encoder) or give text_encoders={name: encoder}"
                    )
                self.embedders[name] = nn.Linear(dim, embedding_dim)
            else:
                self.embedders[name] = nn.Linear(spec.dim if spec.type == "vector" else 2, embedding_dim)
        self.out_features = embedding_dim * len(self.specs)

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def check(self, values: Mapping[str, Any], batch_size: int | None = None) -> dict[str, Tensor]:
        """Validate `values` (one per example, or one for the whole batch) and return them as `(B, ...)` tensors."""
        if batch_size is not None and (not _is_int(batch_size) or batch_size < 0):
            raise ValueError(f"batch_size must be None or a non-negative int, got {batch_size!r}")
        # a categorical condition with a single value (the unconditioned baseline) need not be given
        values = {**{n: 0 for n, s in self.specs.items() if s.type == "categorical" and s.num == 1}, **values}
        missing = [n for n in self.specs if n not in values]
        extra = [n for n in values if n not in self.specs]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing condition(s) {missing}")
            if extra:
                parts.append(f"unexpected condition(s) {extra}")
            given = ", ".join(f"{n} ({s.type})" for n, s in self.specs.items() if s.type != "input")
            computed = [n for n, s in self.specs.items() if s.type == "input"]
            also = f" (and computes {computed} from the input)" if computed else ""
            raise TypeError(
                f"{' and '.join(parts)}; this model takes {given} as keyword arguments, one value per example{also}"
            )
        device = next(self.parameters()).device
        checked = {
            name: self._embed_text(name, spec, values[name], device)
            if spec.type == "text"
            else self._check_one(name, spec, values[name], device)
            for name, spec in self.specs.items()
        }
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
        return ", ".join(
            f"{n} (input, computed from layer {s.layer})" if s.type == "input" else f"{n} ({s.type})"
            for n, s in self.specs.items()
        )

    def _embed_text(self, name: str, spec: ConditionSpec, value: Any, device: torch.device) -> Tensor:
        """A text condition's strings (one, or one per example) as `(B, dim)` embeddings."""
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise TypeError(
                f"condition '{name}' is text: expected a str (one for all examples) or a list of str (one per "
                f"example), got {_describe(value)}"
            )
        encoder = self.text_encoders.get(name)
        if encoder is None:
            raise RuntimeError(
                f"text condition '{name}' has no sentence encoder attached (expected {spec.encoder!r}); load the "
                "model with HyperModel.from_pretrained(..., encoder=PATH) or get_hyper_model, which attach it"
            )
        embedded = encoder(list(texts)).to(device=device, dtype=torch.float32)
        if embedded.shape != (len(texts), spec.dim):
            raise ValueError(
                f"the encoder of text condition '{name}' returned shape {tuple(embedded.shape)}, expected "
                f"({len(texts)}, {spec.dim})"
            )
        return embedded

    @staticmethod
    def _check_one(name: str, spec: ConditionSpec, value: Any, device: torch.device) -> Tensor:
        if spec.type == "categorical":
            value = ids_of_names(name, spec, value)
        t = _as_tensor(name, spec, value, device)
        if spec.type == "categorical":
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise TypeError(
                    f"condition '{name}' is categorical: expected integer ids, got dtype {t.dtype}; "
                    "give ids as ints, e.g. torch.tensor([0, 3])"
                )
            if t.dim() > 1:
                raise ValueError(
                    f"condition '{name}' is categorical: expected shape (B,) of ids, got {tuple(t.shape)}"
                )
            t = t.reshape(-1).long()
            if t.numel() and not torch.compiler.is_compiling():
                message = f"condition '{name}' out of range: expected ids in [0, {spec.num})"
                if _checked_on_device(t, (t >= 0) & (t < spec.num), message):
                    return t
                if int(t.min()) < 0 or int(t.max()) >= spec.num:
                    raise ValueError(f"{message}, got {t.tolist()[:16]}")
            return t
        if t.is_complex() or t.dtype == torch.bool:
            kind = "a scalar" if spec.type == "scalar" else f"a vector of dim {spec.dim}"
            raise TypeError(f"condition '{name}' is {kind}: expected real numbers (a float tensor), got {t.dtype}")
        t = t.float()
        if spec.type in ("vector", "input"):
            if t.dim() == 1:
                t = t.unsqueeze(0)
            if t.dim() != 2 or t.shape[1] != spec.dim:
                raise ValueError(
                    f"condition '{name}' is a vector of dim {spec.dim}: expected shape (B, {spec.dim}) or "
                    f"({spec.dim},), got {tuple(t.shape)}"
                )
            if not torch.compiler.is_compiling() and not _checked_on_device(
                t, torch.isfinite(t), f"condition '{name}' holds non-finite values"
            ):
                if not torch.isfinite(t).all():
                    raise ValueError(f"condition '{name}' holds non-finite values")
            return t
        if t.dim() > 1:
            raise ValueError(f"condition '{name}' is a scalar: expected shape (B,) or (), got {tuple(t.shape)}")
        t = t.reshape(-1)
        lo, hi = spec.range
        # inclusive at both ends for values that round-trip through float32 (the dtype they are checked in)
        if t.numel() and not torch.compiler.is_compiling():
            message = f"condition '{name}' out of range: expected values in [{lo}, {hi}]"
            inside = torch.isfinite(t) & (t >= _float32(lo)) & (t <= _float32(hi))
            if _checked_on_device(t, inside, message):
                return t
            if not torch.isfinite(t).all() or float(t.min()) < _float32(lo) or float(t.max()) > _float32(hi):
                raise ValueError(f"{message}, got {t.tolist()[:16]}")
        return t

    def forward(self, checked: Mapping[str, Tensor]) -> Tensor:
        """Embed checked values (from `check`) into `(B, out_features)`."""
        parts = []
        for name, spec in self.specs.items():
            value = checked[name]
            embedder = self.embedders[name]
            if spec.type == "categorical":
                parts.append(embedder(value))
            elif spec.type in ("vector", "text"):
                parts.append(embedder(value.to(embedder.weight.dtype)))
            elif spec.type == "input":
                parts.append(embedder(value.to(embedder[1].weight.dtype)))
            else:
                lo, hi = spec.range
                unit = ((value - lo) / (hi - lo)).unsqueeze(-1).to(embedder.weight.dtype)  # (B, 1) in [0, 1]
                parts.append(embedder(encode(unit, "cos|sin")))
        return torch.cat(parts, dim=-1)


def _checked_on_device(t: Tensor, ok: Tensor, message: str) -> bool:
    """On an accelerator, check `ok.all()` without reading it back (no host synchronisation): a failure stops the
    program at its next synchronisation with `message` (a device-side assertion). True when checked so; on the
    CPU, where reading values costs nothing, False: the caller checks and raises with the values shown."""
    if t.device.type == "cpu":
        return False
    torch._assert_async(ok.all(), message)
    return True


def _as_tensor(name: str, spec: ConditionSpec, value: Any, device: torch.device) -> Tensor:
    """`value` as a tensor on `device`, or a TypeError naming the condition and what it takes."""
    what = {
        "categorical": f"condition '{name}' is categorical: expected integer ids (a tensor, list or int)",
        "vector": f"condition '{name}' is a vector of dim {spec.dim}: expected numbers (a float tensor or list "
        f"of shape (B, {spec.dim}) or ({spec.dim},))",
        "scalar": f"condition '{name}' is a scalar: expected numbers (a float tensor, list or float)",
        "input": f"condition '{name}' is computed from the input: expected pooled hidden states (B, {spec.dim})",
    }[spec.type]
    if isinstance(value, Tensor):
        if value.device.type == "meta":
            raise ValueError(
                f"condition '{name}' is on device meta and the model on {device}; a meta tensor holds no values: "
                f"give real values on the model's device (create them there, or move them with .to('{device}'))"
            )
        return value.to(device)
    if value is None or isinstance(value, (str, bytes, bytearray, Mapping)):
        raise TypeError(f"{what}, got {_describe(value)}")
    try:
        return torch.as_tensor(value, device=device)
    except (TypeError, ValueError, RuntimeError, OverflowError) as err:
        raise TypeError(f"{what}, got {_describe(value)} ({err})") from None


def _describe(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 80 else text[:77] + "..."
    return "None" if value is None else f"{type(value).__name__} {text}"


def first_rows(inverse: Tensor, count: int) -> Tensor:
    """For each distinct row u of a batch (`torch.unique(..., return_inverse=True)`), the index of its first
    occurrence: generating from those rows only, then gathering with `inverse`, gives every row its weights."""
    positions = torch.arange(inverse.shape[0], device=inverse.device)
    return torch.full((count,), inverse.shape[0], device=inverse.device).scatter_reduce(0, inverse, positions, "amin")

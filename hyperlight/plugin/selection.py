"""Which modules of a pretrained model get externals: PEFT's selection semantics, plus presets.

- `target_modules` as a string: `re.fullmatch` on the dotted module name.
- as a list: a name matches an entry when it equals it or ends with `"." + entry`.
- `"all-linear"`: every linear-like layer except the output head.
- presets `"attention"`, `"mlp"`, `"attention+mlp"`: the projections of the architecture (by `model_type`).
- `exclude_modules` (same forms) removes names; `layers_to_transform` keeps only those layer indices.
"""

from __future__ import annotations

import difflib
import numbers
import re
import time
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..nn.hypernetized import linear_like

# the names PEFT recognises as the container of numbered layers
_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|block|blocks|encoder_layers|decoder_layers)\.(\d+)(?=\.|$)")

# per model_type: (attention leaves, mlp leaves); a leaf matches the end of a dotted name
PRESETS: dict[str, tuple[list[str], list[str]]] = {
    "llama": (["q_proj", "k_proj", "v_proj", "o_proj"], ["gate_proj", "up_proj", "down_proj"]),
    "mistral": (["q_proj", "k_proj", "v_proj", "o_proj"], ["gate_proj", "up_proj", "down_proj"]),
    "qwen2": (["q_proj", "k_proj", "v_proj", "o_proj"], ["gate_proj", "up_proj", "down_proj"]),
    "qwen3": (["q_proj", "k_proj", "v_proj", "o_proj"], ["gate_proj", "up_proj", "down_proj"]),
    "gemma": (["q_proj", "k_proj", "v_proj", "o_proj"], ["gate_proj", "up_proj", "down_proj"]),
    "gemma2": (["q_proj", "k_proj", "v_proj", "o_proj"], ["gate_proj", "up_proj", "down_proj"]),
    "phi3": (["qkv_proj", "o_proj"], ["gate_up_proj", "down_proj"]),
    "gpt2": (["attn.c_attn", "attn.c_proj"], ["mlp.c_fc", "mlp.c_proj"]),
    "gpt_neox": (["query_key_value", "attention.dense"], ["dense_h_to_4h", "dense_4h_to_h"]),
    "opt": (["q_proj", "k_proj", "v_proj", "out_proj"], ["fc1", "fc2"]),
    "bert": (["query", "key", "value", "attention.output.dense"], ["intermediate.dense", "\\d+.output.dense"]),
    "roberta": (["query", "key", "value", "attention.output.dense"], ["intermediate.dense", "\\d+.output.dense"]),
    "t5": (["q", "k", "v", "o"], ["wi", "wi_0", "wi_1", "wo"]),
    "mt5": (["q", "k", "v", "o"], ["wi", "wi_0", "wi_1", "wo"]),
}
PRESET_NAMES = ("attention", "mlp", "attention+mlp", "all-linear")


def check_module_names(field: str, value: Any) -> str | list[str]:
    """`target_modules` / `exclude_modules` checked and normalised: a regex string (compiled here, so a bad pattern
    fails where it is given) or a list of module names (a fresh list of non-empty strings)."""
    forms = (
        "a regex string (matched with re.fullmatch against dotted module names, e.g. r'.*\\.q_proj') or a list of "
        "module names or suffixes (e.g. ['q_proj', 'v_proj'])"
    )
    if isinstance(value, str):
        if not value:
            raise ValueError(f"{field} is an empty string; give {forms}")
        if value in PRESET_NAMES:
            return value
        try:
            re.compile(value)
        except (re.error, RecursionError, OverflowError) as err:  # absurd nesting or repeat counts too
            raise ValueError(
                f"{field}={value!r} is not a valid regular expression ({err}); give {forms}. To match a name "
                "literally, escape it with re.escape(...) or put it in a list"
            ) from None
        return value
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{field} must be a str or a list of str, got {type(value).__name__} {value!r}; give {forms}")
    if not value and field == "target_modules":
        raise ValueError("target_modules is empty; give a regex, a list of names, or a preset ('attention', ...)")
    bad = [v for v in value if not isinstance(v, str) or not v]
    if bad:
        raise TypeError(
            f"{field} must be a str or a list of str (non-empty module names), got {list(value)!r}, whose entries "
            f"{bad!r} are not; give {forms}"
        )
    return list(value)


def check_layers(value: Any) -> list[int]:
    """`layers_to_transform` checked and normalised to a fresh list of non-negative ints."""
    expected = "an int or a list of non-negative ints (layer indices, e.g. [0, 1]), or None for all layers"

    def index(v: Any) -> int:
        if not isinstance(v, numbers.Integral) or isinstance(v, bool):
            which = "" if v is value else f", whose entry {v!r} is not an int"
            raise TypeError(f"layers_to_transform must be {expected}, got {value!r} ({type(v).__name__}){which}")
        if v < 0:
            raise ValueError(f"layers_to_transform must be {expected}, got {value!r} (negative index {v})")
        return int(v)

    if not isinstance(value, (list, tuple)):
        return [index(value)]
    if not value:
        raise ValueError(f"layers_to_transform is empty, which selects nothing; give {expected}")
    return [index(v) for v in value]


def layer_index(name: str) -> int | None:
    """The index of the numbered layer a module lives in (`model.layers.3.mlp` -> 3), or None."""
    match = _LAYER_RE.search(name)
    return int(match.group(1)) if match else None


def type_key(name: str) -> str:
    """The module's name with its layer index wildcarded: modules of one kind across layers share it."""
    match = _LAYER_RE.search(name)
    if not match:
        return name
    return f"{name[: match.start(1)]}*{name[match.end(1) :]}"


def _matches(name: str, spec: str | Sequence[str], deadline: float | None = None) -> bool:
    if isinstance(spec, str):
        if deadline is None:
            return re.fullmatch(spec, name) is not None
        import regex  # a Transformers dependency; unlike `re`, it can stop a runaway match

        return regex.fullmatch(spec, name, timeout=max(deadline - time.monotonic(), 1e-3)) is not None
    return any(name == entry or name.endswith(f".{entry}") for entry in spec)


def _preset_regex(model_type: str | None, which: str, field: str = "target_modules") -> str:
    if model_type not in PRESETS:
        raise ValueError(
            f"no '{which}' preset for model_type {model_type!r}; presets exist for {sorted(PRESETS)}. "
            f"Give {field} as a regex or a list of names instead"
        )
    attention, mlp = PRESETS[model_type]
    leaves = {"attention": attention, "mlp": mlp, "attention+mlp": attention + mlp}[which]
    return r".*\.(?:" + "|".join(leaf.replace(".", r"\.") for leaf in leaves) + r")"


def _output_head_names(model: nn.Module) -> set[str]:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    names = {n for n, m in model.named_modules() if head is not None and m is head}
    return names | {n for n, _ in model.named_modules() if n.split(".")[-1] in ("lm_head", "classifier", "score")}


def _selector(model: nn.Module, spec: str | Sequence[str], model_type: str | None, field: str, deadline: float | None):
    """`(name, module) -> bool` for one of the forms of target_modules / exclude_modules."""
    if spec == "all-linear":
        heads = _output_head_names(model)
        return lambda name, module: linear_like(module) is not None and name not in heads
    if isinstance(spec, str) and spec in PRESET_NAMES:
        spec = _preset_regex(model_type, spec, field)
    return lambda name, module: _matches(name, spec, deadline)


def select_modules(
    model: nn.Module,
    target_modules: str | Sequence[str],
    *,
    exclude_modules: str | Sequence[str] | None = None,
    layers_to_transform: int | Sequence[int] | None = None,
    require_linear: bool = True,
    model_type: str | None = None,
    time_limit: float | None = None,
) -> list[str]:
    """Names of the modules of `model` that the config selects, in model order.

    Raises a ValueError listing near candidates when nothing matches. With `time_limit` (seconds, for patterns
    from untrusted files), regexes are evaluated with that bound in all and a runaway one raises TimeoutError.
    """
    deadline = None if time_limit is None else time.monotonic() + time_limit
    target_modules = check_module_names("target_modules", target_modules)
    if exclude_modules is not None:
        exclude_modules = check_module_names("exclude_modules", exclude_modules)
    named = [(n, m) for n, m in model.named_modules() if n]
    selected = _selector(model, target_modules, model_type, "target_modules", deadline)
    excluded = (
        None if exclude_modules is None else _selector(model, exclude_modules, model_type, "exclude_modules", deadline)
    )
    layers = None
    if layers_to_transform is not None:
        layers = set(check_layers(layers_to_transform))
        present = sorted({i for n, _ in named if (i := layer_index(n)) is not None})
        absent = sorted(layers - set(present))
        if absent:
            has = (
                f"its layer indices are {present}"
                if present
                else "it has no numbered layers (modules named like 'model.layers.<i>' or 'h.<i>')"
            )
            raise ValueError(
                f"layers_to_transform={layers_to_transform!r} names layer(s) {absent} that the model does not have; "
                f"{has}. Give indices of existing layers, or layers_to_transform=None for all"
            )

    chosen = []
    for name, module in named:
        if not selected(name, module):
            continue
        if excluded is not None and excluded(name, module):
            continue
        if layers is not None and layer_index(name) not in layers:
            continue
        chosen.append((name, module))

    if not chosen:
        raise ValueError(_no_match_message(named, target_modules, exclude_modules, layers_to_transform))
    if require_linear:
        bad = [f"{n} ({type(m).__name__})" for n, m in chosen if linear_like(m) is None]
        if bad:
            raise TypeError(
                f"mode='lora' needs linear-like target modules, but these matched: {bad[:5]}; narrow target_modules "
                "to linear layers (e.g. r'.*\\.(q_proj|v_proj)'), or use mode='full' for other module types"
            )
    return [n for n, _ in chosen]


def _no_match_message(named, target_modules, exclude_modules, layers_to_transform) -> str:
    leaves = sorted({n.split(".")[-1] for n, m in named if linear_like(m) is not None})
    wanted = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    probes = [re.sub(r"[^A-Za-z0-9_.]", " ", w).split()[-1] if re.sub(r"[^A-Za-z0-9_]", "", w) else w for w in wanted]
    near = sorted({c for p in probes for c in difflib.get_close_matches(p.split(".")[-1], leaves, n=5, cutoff=0.3)})
    examples = [n for n, m in named if linear_like(m) is not None][:6]
    extra = ""
    if exclude_modules is not None or layers_to_transform is not None:
        extra = f" (after exclude_modules={exclude_modules!r}, layers_to_transform={layers_to_transform!r})"
    return (
        f"target_modules={target_modules!r} matched no module of the model{extra}. "
        f"Near candidates: {near or leaves[:8]}. Linear layers look like {examples}. A string is matched with "
        "re.fullmatch against the full dotted name (e.g. r'.*\\.q_proj'); a list matches exact names or suffixes"
    )

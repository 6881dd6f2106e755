"""Distilling a library of PEFT LoRA adapters into one hyper model (Text-to-LoRA's reconstruction training).

Given adapters already trained one per task, `distill_adapters` trains the hyper model's generator (and its
condition encoder) so that each adapter's condition generates that adapter's update: afterwards
`hyper(..., task=k)` computes what `PeftModel.from_pretrained(base, dir_k)` computes, for every k in one model,
and conditions between or beyond the library (a new text, an unseen combination) get generated adapters.

What is matched is the update an adapter makes, ΔW = s·B·A, never the raw factors: (B, A) and (B·M, M⁻¹·A) are
the same adapter for any invertible r×r matrix M, so fitting factors would fight a symmetry and would not even
be defined across ranks. With `match="delta"` the loss is the mean over targets of
‖ΔW_gen − ΔW_adapter‖²_F / ‖ΔW_adapter‖²_F, computed from r×r Gram matrices,

    ‖B₁A₁ − B₂A₂‖² = tr(B₁ᵀB₁ · A₁A₁ᵀ) − 2·tr(B₁ᵀB₂ · A₂A₁ᵀ) + tr(B₂ᵀB₂ · A₂A₂ᵀ),

so no out×in product is ever formed (the cost is O(r²·(in + out)) per target, whatever the layer's size) and
adapters of any rank compare with generated factors of the config's rank. `match="outputs"` matches
ΔW·x on sample inputs instead (real activations, when given, weigh the directions the model actually uses).

Everything is checked before the first step (every directory, config field, tensor name and shape, every
condition value, through the hyper model itself), and a call that fails at any point, training included, leaves
the hyper model's parameters exactly as they were.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .adapter_files import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from .adapter_files import Adapter as _Adapter
from .adapter_files import read_adapter as _read_adapter
from .errors import AdapterError, AdapterKeyError
from .errors import short as _short
from .targets import Target as _Target
from .targets import hyper_targets as _targets

if TYPE_CHECKING:
    from ...plugin.model import HyperModel

MATCHES = ("delta", "outputs")
DEFAULT_SAMPLES = 128  # random inputs per target when sample_inputs is None


@dataclass
class AdapterFit:
    """How well the hyper model reproduces one adapter, measured after distillation."""

    conditions: dict[str, Any]  # the condition values the adapter was distilled under
    path: str  # the adapter directory
    rank: int  # the adapter's rank (the largest, with PEFT's rank_pattern)
    parameters: int  # lora_A + lora_B elements in the adapter's file
    delta_error: float  # ‖ΔW_gen − ΔW‖_F / ‖ΔW‖_F over all targets together
    output_error: float  # ‖ΔW_gen·X − ΔW·X‖_F / ‖ΔW·X‖_F over all targets, on the sample inputs
    worst_target: str  # the target with the largest relative ΔW error
    worst_target_error: float  # its error (a target the adapter leaves unchanged: relative to its mean target)
    targets_changed: int  # hyper targets the adapter changes
    unchanged_targets: list[str] = field(default_factory=list)  # hyper targets it leaves as they are (fit to ΔW = 0)

    def label(self) -> str:
        return ", ".join(f"{name}={_short(value)}" for name, value in self.conditions.items())


@dataclass
class DistillReport:
    """What `distill_adapters` did: the fit of every adapter, the parameter counts and the loss per step.
    `print(report)` (or `report.table()`) shows it as a table."""

    adapters: list[AdapterFit]
    generator_parameters: int  # trainable parameters of the generator and condition encoder (what was trained)
    adapter_parameters: int  # lora_A + lora_B elements of all adapters together
    loss_history: list[float]  # the training loss at every step
    match: str
    steps: int

    @property
    def compression(self) -> float:
        """Adapter parameters per generator parameter: above 1, the generator is smaller than the library."""
        return self.adapter_parameters / self.generator_parameters

    @property
    def max_delta_error(self) -> float:
        return max(fit.delta_error for fit in self.adapters)

    @property
    def max_output_error(self) -> float:
        return max(fit.output_error for fit in self.adapters)

    def table(self) -> str:
        final = f", final loss {self.loss_history[-1]:.3g}" if self.loss_history else ""
        lines = [
            f"Distilled {len(self.adapters)} adapter(s) (match={self.match!r}, {self.steps} steps{final})",
        ]
        labels = [fit.label() for fit in self.adapters]
        width = max([len("condition")] + [len(label) for label in labels])
        lines.append(
            f"{'condition':<{width}}  rank  {'params':>10}  ΔW rel. err  output rel. err  targets  worst target (err)"
        )
        for label, fit in zip(labels, self.adapters):
            changed = f"{fit.targets_changed}/{fit.targets_changed + len(fit.unchanged_targets)}"
            lines.append(
                f"{label:<{width}}  {fit.rank:>4}  {fit.parameters:>10,d}  {fit.delta_error:>11.2e}  "
                f"{fit.output_error:>15.2e}  {changed:>7}  {fit.worst_target} ({fit.worst_target_error:.2e})"
            )
        lines.append(
            f"generator: {self.generator_parameters:,d} trainable parameters; adapters: {self.adapter_parameters:,d} "
            f"parameters in all; compression (adapter / generator parameters) {self.compression:.3g}"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


# -- which adapter belongs to which condition ------------------------------------------------------------------


def _pairs(hyper: HyperModel, adapters: Any) -> list[tuple[dict[str, Any], Path]]:
    """`[(conditions, directory)]` from the accepted forms of `adapters` (see `distill_adapters`)."""
    names = hyper.condition_names
    order = ", ".join(names)
    forms = (
        "a dict {value: directory} (one condition)"
        if len(names) == 1
        else f"a dict {{({order}): directory}} with tuple keys in condition order"
    ) + f", or a list of ({{{', '.join(f'{n!r}: ...' for n in names)}}}, directory) pairs"
    pairs: list[tuple[dict[str, Any], Any]] = []
    if isinstance(adapters, Mapping):
        for key, path in adapters.items():
            if len(names) == 1:
                pairs.append(({names[0]: key}, path))  # the key is the value itself, whatever its type
            elif isinstance(key, tuple) and len(key) == len(names):
                pairs.append((dict(zip(names, key)), path))
            else:
                raise AdapterKeyError(
                    f"adapters: the key {_short(key)} ({type(key).__name__}) does not give the {len(names)} "
                    f"conditions of this hyper model ({hyper.condition_encoder.describe()}); expected {forms}"
                )
    elif isinstance(adapters, Sequence) and not isinstance(adapters, (str, bytes)):
        for i, item in enumerate(adapters):
            if not (isinstance(item, Sequence) and len(item) == 2 and isinstance(item[0], Mapping)):
                raise AdapterKeyError(f"adapters[{i}] is {_short(item)} ({type(item).__name__}); expected {forms}")
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
    else:
        raise AdapterKeyError(f"adapters must be {forms}; got {type(adapters).__name__}")
    if not pairs:
        raise AdapterKeyError(f"adapters is empty: give at least one adapter directory, as {forms}")
    checked = []
    for conditions, path in pairs:
        if not isinstance(path, (str, os.PathLike)):
            raise AdapterKeyError(
                f"the adapter for {conditions} is {_short(path)} ({type(path).__name__}); expected the path of a "
                f"PEFT adapter directory (with {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})"
            )
        checked.append((conditions, Path(path)))
    return checked


# -- generating a batch of conditions -------------------------------------------------------------------------


def _kind(value: Any) -> tuple:
    """What collation depends on: values of one kind collate alike, whichever subset forms a batch."""
    if isinstance(value, Tensor):
        return (Tensor, tuple(value.shape), value.dtype)
    if isinstance(value, (list, tuple)):
        return (type(value), len(value), *sorted({repr(k) for k in map(_kind, value)}))
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return (numbers.Real,)  # ints and floats collate together (torch.tensor([0, 0.5]))
    return (type(value),)


def _collate(values: list[Any]) -> Any:
    """One batch value for one condition from per-adapter values (a guess, verified against single calls)."""
    if all(isinstance(v, Tensor) for v in values):
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) == 1 and values[0].dim() >= 1 and values[0].shape[0] == 1:
            return torch.cat(values)  # values given as batches of one
        return torch.stack(values)
    if all(isinstance(v, str) for v in values):
        return list(values)
    try:
        return torch.tensor(values)  # numbers, or lists of numbers (vectors)
    except (TypeError, ValueError, RuntimeError):
        return list(values)


class _Generation:
    """Generates the weights of a batch of adapters' conditions, `{target: {external: (b, *shape)}}`: in one
    batched call of the hyper model when the values collate into one (checked once against single calls), one
    call per condition otherwise. Condition values are passed through as given."""

    def __init__(self, hyper: HyperModel, conditions: list[dict[str, Any]]) -> None:
        self.hyper = hyper
        self.conditions = conditions
        self.batched = False

    def single(self, index: int) -> dict[str, dict[str, Tensor]]:
        return self._batch_dims(self.hyper.generate_weights(1, **self.conditions[index]))

    def __call__(self, indices: list[int]) -> dict[str, dict[str, Tensor]]:
        if len(indices) == 1:
            return self.single(indices[0])
        if self.batched:
            return self._batch_dims(self.hyper.generate_weights(len(indices), **self._collated(indices)))
        rows = [self.single(i) for i in indices]
        return {t: {n: torch.cat([row[t][n] for row in rows]) for n in rows[0][t]} for t in rows[0]}

    def _collated(self, indices: list[int]) -> dict[str, Any]:
        names = self.conditions[0]
        return {name: _collate([self.conditions[i][name] for i in indices]) for name in names}

    def _batch_dims(self, generated: dict[str, dict[str, Tensor]]) -> dict[str, dict[str, Tensor]]:
        shapes = self.hyper.target_shapes
        return {
            t: {n: v.unsqueeze(0) if v.dim() == len(shapes[t][n]) else v for n, v in tensors.items()}
            for t, tensors in generated.items()
        }

    def _embedding(self, values: Mapping[str, Any], rows: int) -> Tensor:
        encoder = self.hyper.condition_encoder
        return encoder(encoder.check(values, rows))

    def try_batching(self, indices: list[int]) -> None:
        """Batch from now on if every condition's values are of one kind (type, shape) across the library and the
        collated values of `indices` embed, row by row, as each value alone does (the generator maps rows
        independently, so equal embeddings mean equal weights). Embeddings, not weights, are compared: they differ
        per condition from the start, whereas a fresh full-mode generator gives every condition the same weights,
        which would prove nothing."""
        if len(indices) < 2:
            return
        names = self.conditions[0]
        if any(len({_kind(c[name]) for c in self.conditions}) > 1 for name in names):
            return  # values of mixed kinds: a random batch might not collate as the verified one did
        try:
            with torch.no_grad():
                batch = self._embedding(self._collated(indices), len(indices))
                alone = torch.cat([self._embedding(self.conditions[i], 1) for i in indices])
        except (TypeError, ValueError, RuntimeError, IndexError):
            return  # the hyper model takes these values one at a time only
        if batch.shape == alone.shape and torch.allclose(batch, alone, rtol=1e-5, atol=1e-6):
            self.batched = True


def _canonical(value: Any) -> Any:
    """A hashable stand-in for a condition value, equal for equal values however given (1, 1.0, tensor(1));
    values of unknown kinds stand for themselves only."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().flatten().tolist()
    if isinstance(value, (list, tuple)):
        items = tuple(_canonical(v) for v in value)
        return items[0] if len(items) == 1 else items
    if isinstance(value, (str, bytes, numbers.Number)):
        return value
    return ("object", id(value))


# -- the loss, from r×r Gram matrices ------------------------------------------------------------------------


def _gram_error(ga: Tensor, gb: Tensor, aa: Tensor, ab: Tensor, norm2: Tensor) -> Tensor:
    """‖gb·ga − ab·aa‖²_F per row, from Gram matrices: gb (b, out, r), ga (b, r, in), ab (b, out, R), aa (b, R, in),
    `norm2` = ‖ab·aa‖² (b,). All float64 (the three terms nearly cancel when the fit is good)."""
    own = ((gb.mT @ gb) * (ga @ ga.mT)).sum((-2, -1))  # tr(BᵀB · AAᵀ)
    cross = ((gb.mT @ ab) * (ga @ aa.mT)).sum((-2, -1))  # tr(BᵀB' · A'Aᵀ)
    return (own - 2 * cross + norm2).clamp_min(0)


class _Problem:
    """The adapters' factors stacked per target (padded to the largest rank: zero rows change no product), their
    norms, the sample inputs, and the errors of generated weights against them.

    Factors stay float32 (the library's memory); every error is computed in float64, where the terms of the Gram
    expansion, which nearly cancel once the fit is good, keep their precision."""

    def __init__(self, targets: list[_Target], adapters: list[_Adapter], inputs: dict[str, Tensor], device) -> None:
        self.targets = targets
        self.a: dict[str, Tensor] = {}  # (n, R, in) float32
        self.b: dict[str, Tensor] = {}  # (n, out, R) float32, the adapter's scaling folded in
        self.inputs: dict[str, Tensor] = {}  # (N, in) float64
        self.projected: dict[str, Tensor] = {}  # A·Xᵀ (n, R, N) float64: ΔW·Xᵀ = B·(A·Xᵀ) through r×r Grams too
        n = len(adapters)
        delta2 = torch.zeros(n, len(targets), dtype=torch.float64)
        output2 = torch.zeros(n, len(targets), dtype=torch.float64)
        for j, t in enumerate(targets):
            ranks = [adapter.factors[t.name][0].shape[0] for adapter in adapters if t.name in adapter.factors]
            rank = max(ranks or [1])
            a = torch.zeros(n, rank, t.in_features)
            b = torch.zeros(n, t.out_features, rank)
            for i, adapter in enumerate(adapters):
                if t.name in adapter.factors:
                    fa, fb = adapter.factors[t.name]
                    a[i, : fa.shape[0]], b[i, :, : fa.shape[0]] = fa, fb
            x = inputs[t.name].to(torch.float64)
            a64, b64 = a.to(torch.float64), b.to(torch.float64)
            projected = a64 @ x.mT
            gram = b64.mT @ b64
            delta2[:, j] = (gram * (a64 @ a64.mT)).sum((-2, -1))
            output2[:, j] = (gram * (projected @ projected.mT)).sum((-2, -1))
            self.a[t.name], self.b[t.name] = a.to(device), b.to(device)
            self.inputs[t.name], self.projected[t.name] = x.to(device), projected.to(device)
        self.delta2, self.output2 = delta2.to(device), output2.to(device)
        # per-target weights of the loss: 1/‖ΔW‖²; a target an adapter leaves unchanged (ΔW = 0) is weighed as
        # that adapter's mean changed target, so its generated ΔW is pulled to 0 at a comparable strength
        self.delta_weight = self._weights(delta2).to(device)
        self.output_weight = self._weights(output2).to(device)

    @staticmethod
    def _weights(norm2: Tensor) -> Tensor:
        changed = norm2 > 0
        mean = (norm2 * changed).sum(1) / changed.sum(1).clamp_min(1)
        return 1.0 / torch.where(changed, norm2, mean.unsqueeze(1))

    def errors(self, generated: dict[str, dict[str, Tensor]], rows: Tensor, kind: str) -> Tensor:
        """Squared errors (b, targets), float64, of generated weights for the adapters `rows`: of ΔW
        (`kind="delta"`) or of ΔW·x on the sample inputs (`kind="outputs"`)."""
        errors = []
        for j, t in enumerate(self.targets):
            ab = self.b[t.name][rows].to(torch.float64)
            if t.original is None:  # lora: generated factors, never multiplied out
                ga = generated[t.name]["lora_A"].to(torch.float64)
                gb = generated[t.name]["lora_B"].to(torch.float64) * t.scaling
                if kind == "delta":
                    aa = self.a[t.name][rows].to(torch.float64)
                    errors.append(_gram_error(ga, gb, aa, ab, self.delta2[rows, j]))
                else:  # the same expansion with A·Xᵀ in place of A
                    x = self.inputs[t.name]
                    errors.append(_gram_error(ga @ x.mT, gb, self.projected[t.name][rows], ab, self.output2[rows, j]))
                continue
            # full: generated weights, already out×in in memory
            original = t.original.mT if t.transposed else t.original
            d = generated[t.name]["weight"]
            d = (d.mT if t.transposed else d).to(torch.float64) - original.to(torch.float64)
            if kind == "delta":
                aa = self.a[t.name][rows].to(torch.float64)
                errors.append((d - ab @ aa).square().sum((-2, -1)))
            else:
                y = d @ self.inputs[t.name].mT
                errors.append((y - ab @ self.projected[t.name][rows]).square().sum((-2, -1)))
        return torch.stack(errors, 1)


# -- the call ---------------------------------------------------------------------------------------------------


def _sample_inputs(sample_inputs: Any, targets: list[_Target], seed: int) -> dict[str, Tensor]:
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


def _check_arguments(steps: Any, lr: Any, batch_size: Any, match: Any, weight_decay: Any, seed: Any) -> None:
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


def _trainable(hyper: HyperModel) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for module in (hyper.condition_encoder, hyper.generator):
        for p in module.parameters():
            if p.requires_grad:
                seen.setdefault(id(p), p)
    return list(seen.values())


@contextmanager
def _restored_on_failure(hyper: HyperModel, params: list[nn.Parameter]) -> Iterator[None]:
    """Parameters and train/eval modes as they were if the block raises (modes are restored in any case)."""
    saved = [p.detach().clone() for p in params]
    modules = [*hyper.condition_encoder.modules(), *hyper.generator.modules()]
    modes = [(module, module.training) for module in modules]
    try:
        yield
    except BaseException:
        with torch.no_grad():
            for p, value in zip(params, saved):
                p.copy_(value)
                p.grad = None
        raise
    finally:
        for module, training in modes:
            module.train(training)


def _batches(count: int, batch_size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Endless batches: each epoch visits every adapter once, in a new random order."""
    while True:
        order = torch.randperm(count, generator=generator).tolist() if batch_size < count else list(range(count))
        for start in range(0, count, batch_size):
            yield order[start : start + batch_size]


def _progress_bar(steps: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm comes with transformers; without it, no bar
        return None
    return tqdm(total=steps, desc="distill", dynamic_ncols=True)


def distill_adapters(
    hyper: HyperModel,
    adapters: Mapping[Any, str | os.PathLike] | Sequence[tuple[Mapping[str, Any], str | os.PathLike]],
    *,
    steps: int = 500,
    lr: float = 1e-3,
    batch_size: int | None = None,
    match: str = "delta",
    sample_inputs: Tensor | Mapping[str, Tensor] | None = None,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> DistillReport:
    """Train `hyper`'s generator so that each adapter's condition generates that PEFT LoRA adapter's update.

    Args:
        hyper: a `HyperModel` in mode "lora" (generated factors) or "full" (generated weights: trained so that
            W(condition) = W0 + ΔW of the adapter; linear targets with target_parameters=['weight'] only).
        adapters: which condition each adapter directory (`adapter_config.json` + `adapter_model.safetensors`, as
            `save_pretrained` writes) belongs to. With one condition, a dict `{value: directory}`: the key is the
            condition's value, passed to the hyper model as it is (an int id, a float, a str, a tuple for a
            vector). With several, a dict whose keys are tuples of values in condition order
            (`hyper.condition_names`), e.g. `{(task, lang): directory}`, or, for any number, a list of
            `({name: value, ...}, directory)` pairs.
        steps: optimizer steps (0: only measure how well the hyper model reproduces the adapters now).
        lr: Adam's learning rate, decayed along a cosine to lr/100 over `steps` (for a precise final fit).
        batch_size: adapters per step (default: all); each epoch visits every adapter once.
        match: "delta": the mean over targets of ‖ΔW_gen − ΔW‖²_F / ‖ΔW‖²_F (cheap for any layer size: r×r
            Gram matrices only); "outputs": the same on ΔW·x for the sample inputs.
        sample_inputs: inputs x of the targets, for match="outputs" and for the reported output error: a tensor
            (..., in_features) used for every target of that size, or `{target name: tensor}` (e.g. activations
            recorded with forward hooks); None: 128 standard normal vectors per target (then the output error
            estimates the ΔW error; with match="outputs", give at least in_features inputs or prefer "delta").
        weight_decay: AdamW's decoupled weight decay on the trained parameters.
        seed: the order of the batches, the random sample inputs and the generator's dropout (the global random
            state is left as it was).
        progress: show a tqdm progress bar.

    A hyper target that an adapter does not change is trained to ΔW = 0 there (what the adapter does to it, so
    the outputs match); an adapter that changes a module the hyper model does not target is refused.

    Trains the parameters of `hyper.condition_encoder` and `hyper.generator` that require grad, in train mode (the
    generator's dropout, if configured, applies; the fit is measured in eval mode). Every adapter and condition
    value is checked before the first step; a call that raises, at any point, leaves those parameters (and the
    train/eval modes) as they were.

    Returns:
        a `DistillReport`: per adapter the relative ΔW and output errors, the parameter counts and the loss history.
    """
    from ...plugin.model import HyperModel

    if not isinstance(hyper, HyperModel):
        raise TypeError(
            f"hyper must be a HyperModel (get_hyper_model(base, HyperConfig(...))), got {type(hyper).__name__}"
        )
    hyper.require_loaded()
    _check_arguments(steps, lr, batch_size, match, weight_decay, seed)
    targets = _targets(hyper)
    by_name = {t.name: t for t in targets}
    pairs = _pairs(hyper, adapters)
    library = [_read_adapter(conditions, path, by_name) for conditions, path in pairs]
    inputs = _sample_inputs(sample_inputs, targets, seed)
    params = _trainable(hyper)
    if not params and steps:
        raise ValueError(
            "the hyper model has no trainable generator parameters (requires_grad is False everywhere); load it "
            "with is_trainable=True or set requires_grad on hyper.generator's parameters"
        )
    device = next(hyper.generator.parameters()).device
    problem = _Problem(targets, library, inputs, device)
    for adapter, norm2, output2 in zip(library, problem.delta2.tolist(), problem.output2.tolist()):
        if not any(norm2):
            raise AdapterError(
                f"{adapter.path}: ΔW = 0 on every module (lora_B is all zero, as PEFT initialises it: was the "
                "adapter saved before training?); there is nothing to distill"
            )
        if not any(output2):
            raise ValueError(
                f"sample_inputs give ΔW·x = 0 on every target for the adapter {adapter.path} (inputs all zero, or "
                "orthogonal to what it changes), so its output error has no scale; give inputs the adapter acts on, "
                "or None for random normal ones"
            )
    generation = _Generation(hyper, [adapter.conditions for adapter in library])
    with _restored_on_failure(hyper, params), _forked_rng(seed, device):
        _check_conditions(hyper, generation, library)
        history = _train(
            hyper, generation, problem, params, steps, lr, batch_size, match, weight_decay, seed, progress
        )
        fits = _measure(hyper, generation, problem, library, batch_size)
    return DistillReport(
        adapters=fits,
        generator_parameters=sum(p.numel() for p in _trainable(hyper)),
        adapter_parameters=sum(adapter.parameters for adapter in library),
        loss_history=history,
        match=match,
        steps=steps,
    )


@contextmanager
def _forked_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seeded random state for the block (the generator's dropout); the caller's is restored after it."""
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:  # only the device the generator runs on: the others' states are not forked
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def _check_conditions(hyper: HyperModel, generation: _Generation, library: list[_Adapter]) -> None:
    """No two adapters under the same condition; every condition value through the hyper model itself (one at a
    time, as given); then whether they batch."""
    seen: dict[tuple, _Adapter] = {}
    for adapter in library:
        key = tuple(_canonical(v) for v in adapter.conditions.values())
        if key in seen:
            raise AdapterKeyError(
                f"adapters {seen[key].path} and {adapter.path} are both given the condition {adapter.conditions}; "
                "give each adapter its own condition (the hyper model generates one update per condition)"
            )
        seen[key] = adapter
    hyper.condition_encoder.eval()
    hyper.generator.eval()
    with torch.no_grad():
        for i, adapter in enumerate(library):
            try:
                generation.single(i)
            except (TypeError, ValueError) as err:
                raise AdapterKeyError(
                    f"the condition {adapter.conditions} given for adapter {adapter.path} is not valid for this hyper "
                    f"model ({hyper.condition_encoder.describe()}): {err}"
                ) from err
    generation.try_batching(list(range(min(len(library), 8))))


def _train(
    hyper: HyperModel,
    generation: _Generation,
    problem: _Problem,
    params: list[nn.Parameter],
    steps: int,
    lr: float,
    batch_size: int | None,
    match: str,
    weight_decay: float,
    seed: int,
    progress: bool,
) -> list[float]:
    if not steps:
        return []
    count = len(generation.conditions)
    batches = _batches(count, min(batch_size or count, count), torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    # cosine decay to lr/100: the large early steps find the fit, the small late ones make it precise
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=lr / 100)
    weight = problem.delta_weight if match == "delta" else problem.output_weight
    hyper.condition_encoder.train()
    hyper.generator.train()
    bar = _progress_bar(steps, progress)
    history: list[float] = []
    try:
        for step in range(steps):
            indices = next(batches)
            rows = torch.tensor(indices, device=weight.device)
            loss = (problem.errors(generation(indices), rows, match) * weight[rows]).mean()
            value = loss.detach().item()
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"the distillation loss became {value} at step {step} (lr={lr}); the parameters were restored. "
                    "Lower lr (e.g. lr=1e-3)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            history.append(value)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3g}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
        for p in params:
            p.grad = None
    return history


def _measure(
    hyper: HyperModel, generation: _Generation, problem: _Problem, library: list[_Adapter], batch_size: int | None
) -> list[AdapterFit]:
    hyper.condition_encoder.eval()
    hyper.generator.eval()
    count = len(library)
    chunk = min(batch_size or count, count)
    delta, output = [], []
    with torch.no_grad():
        for start in range(0, count, chunk):
            indices = list(range(start, min(start + chunk, count)))
            generated = generation(indices)
            rows = torch.tensor(indices, device=problem.delta2.device)
            delta.append(problem.errors(generated, rows, "delta"))
            output.append(problem.errors(generated, rows, "outputs"))
    delta2, output2 = torch.cat(delta).cpu(), torch.cat(output).cpu()
    norm2, onorm2 = problem.delta2.cpu(), problem.output2.cpu()
    per_target = (delta2 * problem.delta_weight.cpu()).sqrt()
    names = [t.name for t in problem.targets]
    fits = []
    for i, adapter in enumerate(library):
        worst = int(per_target[i].argmax())
        unchanged = [n for j, n in enumerate(names) if norm2[i, j] == 0]
        fits.append(
            AdapterFit(
                conditions=dict(adapter.conditions),
                path=str(adapter.path),
                rank=adapter.rank,
                parameters=adapter.parameters,
                delta_error=float((delta2[i].sum() / norm2[i].sum()).sqrt()),
                output_error=float((output2[i].sum() / onorm2[i].sum()).sqrt()),
                worst_target=names[worst],
                worst_target_error=float(per_target[i, worst]),
                targets_changed=len(names) - len(unchanged),
                unchanged_targets=unchanged,
            )
        )
    return fits

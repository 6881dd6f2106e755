"""The call: `distill_adapters` checks everything, then trains the generator (AdamW, cosine decay) and measures
the fit, leaving the hyper model's parameters as they were if anything raises."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .adapter_files import Adapter, read_adapter
from .arguments import adapter_pairs, check_arguments, sample_inputs_by_target
from .errors import AdapterError
from .generation import Generation, check_conditions
from .problem import Problem
from .report import AdapterFit, DistillReport
from .targets import hyper_targets

if TYPE_CHECKING:
    from ...plugin.model import HyperModel


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
    computed = [n for n, s in hyper.condition_encoder.specs.items() if s.type == "input"]
    if computed:
        raise ValueError(
            f"distill_adapters maps each adapter to the condition values it was trained for, and {computed} are input "
            "conditions (computed from each call's own input, not given per adapter); distill into a hyper model "
            "whose conditions name the adapters (categorical, vector or text)"
        )
    check_arguments(steps, lr, batch_size, match, weight_decay, seed)
    targets = hyper_targets(hyper)
    by_name = {t.name: t for t in targets}
    pairs = adapter_pairs(hyper, adapters)
    library = [read_adapter(conditions, path, by_name) for conditions, path in pairs]
    inputs = sample_inputs_by_target(sample_inputs, targets, seed)
    params = _trainable(hyper)
    if not params and steps:
        raise ValueError(
            "the hyper model has no trainable generator parameters (requires_grad is False everywhere); load it "
            "with is_trainable=True or set requires_grad on hyper.generator's parameters"
        )
    device = next(hyper.generator.parameters()).device
    problem = Problem(targets, library, inputs, device)
    _check_scales(library, problem)
    generation = Generation(hyper, [adapter.conditions for adapter in library])
    with _restored_on_failure(hyper, params), _forked_rng(seed, device):
        check_conditions(hyper, generation, library)
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


def _check_scales(library: list[Adapter], problem: Problem) -> None:
    """Every adapter changes something, on the sample inputs too: the errors are relative to those scales."""
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


def _train(
    hyper: HyperModel,
    generation: Generation,
    problem: Problem,
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
    hyper: HyperModel, generation: Generation, problem: Problem, library: list[Adapter], batch_size: int | None
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

"""What `distill_adapters` returns: how well the hyper model reproduces each adapter, printed as a table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import short


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
        return ", ".join(f"{name}={short(value)}" for name, value in self.conditions.items())


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

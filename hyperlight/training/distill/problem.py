"""The objective: the adapters' factors stacked per target, and the squared errors of generated weights against
them, of ΔW or of ΔW·x, computed from r×r Gram matrices in lora mode (never an out×in product)."""

from __future__ import annotations

import torch
from torch import Tensor

from .adapter_files import Adapter
from .targets import Target


def _gram_error(ga: Tensor, gb: Tensor, aa: Tensor, ab: Tensor, norm2: Tensor) -> Tensor:
    """‖gb·ga − ab·aa‖²_F per row, from Gram matrices: gb (b, out, r), ga (b, r, in), ab (b, out, R), aa (b, R, in),
    `norm2` = ‖ab·aa‖² (b,). All float64 (the three terms nearly cancel when the fit is good)."""
    own = ((gb.mT @ gb) * (ga @ ga.mT)).sum((-2, -1))  # tr(BᵀB · AAᵀ)
    cross = ((gb.mT @ ab) * (ga @ aa.mT)).sum((-2, -1))  # tr(BᵀB' · A'Aᵀ)
    return (own - 2 * cross + norm2).clamp_min(0)


class Problem:
    """The adapters' factors stacked per target (padded to the largest rank: zero rows change no product), their
    norms, the sample inputs, and the errors of generated weights against them.

    Factors stay float32 (the library's memory); every error is computed in float64, where the terms of the Gram
    expansion, which nearly cancel once the fit is good, keep their precision."""

    def __init__(
        self, targets: list[Target], adapters: list[Adapter], inputs: dict[str, Tensor], device: torch.device
    ) -> None:
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

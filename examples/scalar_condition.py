"""One network for every value of a hyperparameter: a scalar condition, HyperLight's original use case.

    python examples/scalar_condition.py            # about 20 seconds on 2 CPU cores
    python examples/scalar_condition.py --quick    # a tiny setting (tests)

A small 1-D CNN denoises piecewise-constant signals. Its loss mixes fidelity to the noisy input with a
smoothness penalty (total variation), weighted by a regularisation strength `lam` in [0, 1]:

    loss(lam) = (1 - lam) * mean((y - noisy)^2) + lam * TV_WEIGHT * mean(|y[t+1] - y[t]|)

Normally each `lam` means another training run. Here the core `HyperNet` predicts all the CNN's convolution
weights from `lam` (hypernetized with `hypernetize`, starting from the CNN's own weights), and is trained
once with a random `lam` per example, all of them in one batched pass. Afterwards any `lam` gets its
weights instantly: the table shows the trade-off moving smoothly with `lam`, the best `lam` for the error
against the clean signal, and separately trained CNNs at a few values for comparison.
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

from hyperlight import HyperNet, find_modules_of_type, hypernetize

TV_WEIGHT = 1.0
LENGTH = 64


def signals(n: int, generator: torch.Generator, noise: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy, clean), each (n, 1, LENGTH): piecewise-constant signals (a jump at each step with probability
    1/16) plus Gaussian noise."""
    jumps = torch.rand(n, LENGTH, generator=generator) < 1 / 16
    jumps[:, 0] = True
    levels = torch.rand(n, LENGTH, generator=generator) * 2 - 1  # one level per piece
    clean = levels.gather(1, jumps.long().cumsum(1) - 1).unsqueeze(1)
    return clean + noise * torch.randn(clean.shape, generator=generator), clean


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(1, 16, 5, padding=2),
        nn.ReLU(),
        nn.Conv1d(16, 16, 5, padding=2),
        nn.ReLU(),
        nn.Conv1d(16, 1, 5, padding=2),
    )


def terms(y: torch.Tensor, noisy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: (fidelity to the noisy input, roughness), each (B,)."""
    fidelity = ((y - noisy) ** 2).mean(dim=(1, 2))
    roughness = (y[..., 1:] - y[..., :-1]).abs().mean(dim=(1, 2))
    return fidelity, roughness


def objective(y: torch.Tensor, noisy: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    fidelity, roughness = terms(y, noisy)
    return ((1 - lam) * fidelity + lam * TV_WEIGHT * roughness).mean()


def train(step_fn, parameters, steps: int, generator: torch.Generator, batch: int = 64) -> None:
    optimizer = torch.optim.Adam(parameters, lr=3e-3)
    for _ in range(steps):
        noisy, _ = signals(batch, generator)
        loss = step_fn(noisy)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--quick", action="store_true", help="a tiny setting, to check that everything runs")
    args = parser.parse_args()
    steps = 60 if args.quick else args.steps
    torch.manual_seed(0)
    data = torch.Generator().manual_seed(0)

    # 1. hypernetize the CNN's convolutions: their weights become externals predicted from lam
    mainnet = cnn()
    reference = copy.deepcopy(mainnet)  # the same initial weights, for the separately trained CNNs below
    mainnet, weights = hypernetize(mainnet, modules=find_modules_of_type(mainnet, [nn.Conv1d]), return_values=True)
    hypernet = HyperNet.from_existing(weights, input_shapes={"lam": ()}, hidden_sizes=[16, 64])
    print(f"CNN externals: {mainnet.external_shapes()}")
    outputs = sum(w.numel() for w in weights.values())
    print(
        f"HyperNet: {sum(p.numel() for p in hypernet.parameters()):,} parameters predict the CNN's {outputs:,} "
        "weights from lam"
    )

    # 2. train once, a random lam per example: example b runs with the weights predicted for lam[b]
    def hyper_step(noisy: torch.Tensor) -> torch.Tensor:
        lam = torch.rand(noisy.shape[0], generator=data)
        with mainnet.using_externals(hypernet(lam=lam)):
            return objective(mainnet(noisy), noisy, lam)

    train(hyper_step, hypernet.parameters(), steps, data)

    # 3. the conventional way, for comparison: one CNN trained per value of lam
    fixed = {}
    for value in (0.1, 0.5, 0.9):
        model = copy.deepcopy(reference)
        lam = torch.full((64,), value)
        train(lambda noisy, m=model, lam=lam: objective(m(noisy), noisy, lam), model.parameters(), steps, data)
        fixed[value] = model

    # 4. any lam, no retraining: the trade-off moves smoothly, and one lam is best against the clean signal
    noisy, clean = signals(256, torch.Generator().manual_seed(1))
    print("\n  lam   fidelity (to noisy)   roughness   error vs clean   separately trained CNN (error vs clean)")
    with torch.no_grad():
        rows = []
        for value in [i / 10 for i in range(11)]:
            with mainnet.using_externals(hypernet(lam=torch.tensor(value))):
                y = mainnet(noisy)
            fidelity, roughness = terms(y, noisy)
            error = ((y - clean) ** 2).mean().item()
            rows.append((value, error))
            alone = f"{((fixed[value](noisy) - clean) ** 2).mean().item():.4f}" if value in fixed else ""
            print(f"  {value:.1f}   {fidelity.mean().item():>17.4f}   {roughness.mean().item():>9.4f}"
                  f"   {error:>14.4f}   {alone:>20}")  # fmt: skip
        best = min(rows, key=lambda r: r[1])
        # smoothness in lam: nearby values give nearby outputs
        with mainnet.using_externals(hypernet(lam=torch.tensor(0.50))):
            a = mainnet(noisy)
        with mainnet.using_externals(hypernet(lam=torch.tensor(0.51))):
            b = mainnet(noisy)
    print(f"\nbest lam against the clean signal: {best[0]:.1f} (error {best[1]:.4f}; the noise alone is "
          f"{((noisy - clean) ** 2).mean().item():.4f})")  # fmt: skip
    print(f"outputs for lam = 0.50 and 0.51 differ by at most {(a - b).abs().max().item():.4f}")


if __name__ == "__main__":
    main()

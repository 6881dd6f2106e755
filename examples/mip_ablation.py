"""Ablation of the magnitude-invariant parametrization (MIP) of Ortiz et al., on real handwritten digits.

    python examples/mip_ablation.py            # about 3 minutes on 2 CPU cores (184 s, one thread)
    python examples/mip_ablation.py --quick    # a tiny setting (tests): a few seconds

Ortiz, Guttag and Dalca ("Magnitude Invariant Parametrizations Improve Hypernetwork Learning",
arXiv:2304.07645) observe that a hypernetwork's outputs scale with the magnitude of its input, which makes
training unstable, and propose two changes: encode the input onto a constant-norm manifold
(`encoding="cos|sin"`) and predict a residual, θ = θ0 + Δθ(E(γ)), with learned independent weights θ0
(`residual=True`), plus a Kaiming fan-out initialization (`init="paper"`).

Here a `HyperNet` predicts *all* the weights of a small MLP classifier (64 -> 64 -> 10) for scikit-learn's
8x8 digits from a per-example hyperparameter γ in [0, 1]: the strength of the Gaussian noise added to that
example's image (std `NOISE * γ`), as in the paper's setups where the hypernetwork's input is a
hyperparameter of the training. Each run trains the hypernetwork alone, with Adam, a random γ per example,
all examples in one batched pass. Arms: MIP (cos|sin + residual θ0 + paper init), each ablation (no encoding;
no residual, where `HyperNet` initialises the output layer by hyperfan-in, Chang et al. 2020; PyTorch's default
`nn.Linear` init) and the plain hypernetwork (none of the three), each at learning rates 1e-3, 3e-3, 1e-2 and
3e-2, over three seeds.

Printed: per arm and learning rate, the early training loss (mean over the first fifth of the steps: how fast
it converges), the final training loss (mean of the last tenth) and the test accuracy averaged over γ in
{0, 0.5, 1} (each mean ± std over the seeds that did not diverge), and how many runs diverged (a non-finite
loss, or a final loss no better than chance, ln 10); then each arm's early loss and test accuracy relative
to MIP's. The loss curves go to `--out` (default out/mip_ablation/mip_ablation.png).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hyperlight import HyperNet, find_modules_of_type, hypernetize

NOISE = 0.6  # the noise std at γ = 1 (pixels are scaled to [0, 1])
HIDDEN = [16, 64]  # the hypernetwork's hidden layers
EVAL_GAMMAS = (0.0, 0.5, 1.0)
CHANCE = math.log(10)
# name -> (encoding, residual, init)
ARMS = {
    "MIP": ("cos|sin", True, "paper"),
    "no encoding": (None, True, "paper"),
    "no residual": ("cos|sin", False, "paper"),
    "torch init": ("cos|sin", True, "torch"),
    "plain": (None, False, "torch"),
}
LRS = (1e-3, 3e-3, 1e-2, 3e-2)
# (steps, batch, seeds)
SETTINGS = {"full": (400, 128, 3), "quick": (20, 32, 2)}


def load_digits_split(seed: int = 0, test: int = 497) -> tuple[torch.Tensor, ...]:
    """scikit-learn's 1,797 8x8 digits, pixels scaled to [0, 1], split once into train / test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    train, held = order[test:], order[:test]
    return x[train], y[train], x[held], y[held]


def classifier() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def make_hypernet(shapes: dict, arm: str) -> HyperNet:
    encoding, residual, init = ARMS[arm]
    return HyperNet({"gamma": ()}, shapes, HIDDEN, encoding=encoding, residual=residual, init=init)


def noisy(x: torch.Tensor, gamma: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return x + NOISE * gamma.reshape(-1, 1) * torch.randn(x.shape, generator=generator)


def run(mainnet, data, arm: str, lr: float, seed: int, steps: int, batch: int) -> dict:
    """Train one hypernetwork; returns its loss curve, final loss, test accuracy and whether it diverged."""
    xtr, ytr, xte, yte = data
    torch.manual_seed(seed)
    hypernet = make_hypernet(mainnet.external_shapes(), arm)
    optimizer = torch.optim.Adam(hypernet.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(1000 + seed)
    losses: list[float] = []
    for _ in range(steps):
        index = torch.randint(len(ytr), (batch,), generator=generator)
        gamma = torch.rand(batch, generator=generator)
        with mainnet.using_externals(hypernet(gamma=gamma)):  # example b runs with the weights for gamma[b]
            loss = F.cross_entropy(mainnet(noisy(xtr[index], gamma, generator)), ytr[index])
        if not torch.isfinite(loss):
            losses.append(float("nan"))
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    tail = losses[-max(1, steps // 10) :]
    final = float(np.mean(tail)) if len(losses) == steps else float("nan")
    early = float(np.mean(losses[: max(1, steps // 5)])) if len(losses) == steps else float("nan")
    diverged = not math.isfinite(final) or final >= CHANCE
    accuracy = float("nan")
    if math.isfinite(final):
        hits = []
        with torch.no_grad():
            for g in EVAL_GAMMAS:
                test_noise = torch.Generator().manual_seed(1234)  # the same noisy test images for every run
                with mainnet.using_externals(hypernet(gamma=torch.tensor(g))):
                    logits = mainnet(noisy(xte, torch.full((len(yte),), g), test_noise))
                hits.append((logits.argmax(-1) == yte).float().mean().item())
        accuracy = float(np.mean(hits))
    return {"losses": losses, "early": early, "final": final, "accuracy": accuracy, "diverged": diverged}


def mean_std(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    values = [v * scale for v in values if math.isfinite(v)]
    if not values:
        return "-"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def plot(path: Path, results: dict, steps: int) -> None:
    from example_plots import pyplot, save

    fig, axes = pyplot().subplots(1, len(LRS), figsize=(5 * len(LRS), 4), sharey=True)
    window = max(1, steps // 30)
    for ax, lr in zip(axes, LRS):
        for arm in ARMS:
            curves = []
            for r in results[arm, lr]:
                curve = np.full(steps, np.nan)
                curve[: len(r["losses"])] = r["losses"]
                curves.append(curve)
            curves = np.array(curves)
            kernel = np.ones(window) / window
            smooth = np.array([np.convolve(c, kernel, mode="valid") for c in curves])
            x = np.arange(smooth.shape[1]) + window
            (line,) = ax.plot(x, np.nanmean(smooth, axis=0), label=arm)
            ax.fill_between(x, np.nanmin(smooth, axis=0), np.nanmax(smooth, axis=0), color=line.get_color(), alpha=0.2)
        ax.axhline(CHANCE, color="gray", linestyle=":", linewidth=1)
        ax.set(title=f"Adam, lr {lr:g}", xlabel="step", yscale="log")
    axes[0].set_ylabel("training loss (mean over seeds, band: min-max)")
    axes[0].legend(fontsize=8)
    save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, help="training steps per run")
    parser.add_argument("--seeds", type=int, help="seeds per arm and learning rate")
    parser.add_argument("--out", type=Path, default=Path("out/mip_ablation"), help="where the plot goes")
    parser.add_argument("--quick", action="store_true", help="a tiny setting, to check that everything runs")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and steady on a shared machine
    steps, batch, seeds = SETTINGS["quick" if args.quick else "full"]
    steps, seeds = args.steps or steps, args.seeds or seeds
    start = time.time()
    data = load_digits_split()
    mainnet = classifier()
    mainnet = hypernetize(mainnet, modules=find_modules_of_type(mainnet, [nn.Linear]))
    outputs = sum(math.prod(s) for s in mainnet.external_shapes().values())
    print(
        f"Digits: {len(data[1])} train / {len(data[3])} test images (8x8); the MLP's {outputs:,} weights are all "
        f"predicted from γ (noise std {NOISE} * γ); hypernetwork hidden sizes {HIDDEN}"
    )
    print(f"{len(ARMS)} arms x {len(LRS)} learning rates x {seeds} seeds, {steps} Adam steps of {batch} examples each")

    results = {}
    for arm in ARMS:
        for lr in LRS:
            results[arm, lr] = [run(mainnet, data, arm, lr, seed, steps, batch) for seed in range(seeds)]

    print(
        "\narm           encoding  residual  init    lr     early loss       final loss       test acc (%)    diverged"
    )
    for arm, (encoding, residual, init) in ARMS.items():
        for lr in LRS:
            kept = [r for r in results[arm, lr] if not r["diverged"]]
            early = mean_std([r["early"] for r in kept])
            loss = mean_std([r["final"] for r in kept])
            acc = mean_std([r["accuracy"] for r in kept], 100, 1)
            down = len(results[arm, lr]) - len(kept)
            print(f"{arm:<13} {encoding or 'none':<9} {'yes' if residual else 'no':<9} {init:<7} {lr:<6g} "
                  f"{early:<16} {loss:<16} {acc:<15} {down}/{seeds}")  # fmt: skip

    def mean(arm: str, lr: float, key: str, diverged: float) -> float:
        return float(np.mean([diverged if r["diverged"] else r[key] for r in results[arm, lr]]))

    print("\nminus MIP's, mean over seeds (a diverged run counts as loss ln 10 and accuracy 10%, chance)")
    print("arm           " + "".join(f"{f'lr {lr:g}: early loss, acc':<28}" for lr in LRS))
    for arm in list(ARMS)[1:]:
        cells = []
        for lr in LRS:
            loss = mean(arm, lr, "early", CHANCE) - mean("MIP", lr, "early", CHANCE)
            acc = 100 * (mean(arm, lr, "accuracy", 0.1) - mean("MIP", lr, "accuracy", 0.1))
            cells.append(f"{f'{loss:+.3f}, {acc:+.1f}':<28}")
        print(f"{arm:<13} " + "".join(cells))

    figure = args.out / "mip_ablation.png"
    plot(figure, results, steps)
    print(f"\nPlot (training loss per arm, one panel per learning rate): {figure}")
    print(f"Done in {time.time() - start:.0f} s.")


if __name__ == "__main__":
    main()

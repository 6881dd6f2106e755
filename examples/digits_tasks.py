"""One task-conditioned hyper model against one PEFT LoRA per task (per task x domain), on real handwritten digits.

    python examples/digits_tasks.py            # about 2.5 minutes on 2 CPU cores (145 s, one thread)
    python examples/digits_tasks.py --quick    # a tiny setting (tests): a few seconds

A small MLP (64 -> 128 -> 128 -> 10) is pretrained on half of scikit-learn's 8x8 digits (10 classes, images as
they are). It is then fine-tuned for 16 *combinations*: 4 tasks on the digit (which digit; even or odd; 5 or
more; the digit mod 3) × 4 domains (the image as it is, rotated 90°, inverted, flipped left-right). Every task
reads its answer off the same 10 logits (a 2-class task uses the first two).

1. Many-shot and few-shot. Twelve combinations get the whole training split (1,300 images); four, one per task
   and one per domain, get only 10 images per class. Then
   (a) ONE hyper model, `get_hyper_model(mlp, HyperConfig(target_modules=["fc1", "fc2", "head"],
       conditions={"task": categorical 4, "domain": categorical 4}, rank=8, hidden_size=16))`, trained on all 16
       combinations mixed in every batch (each example gets the LoRA factors generated for its own task and
       domain; a generator of hidden size 16 has about as many parameters as the 16 LoRAs together), and
   (b) one PEFT LoRA per combination, `peft.get_peft_model(copy_of_mlp, LoraConfig(target_modules=[...], r=8))`,
       16 adapters, each trained on its combination's data alone.
   Both see the same number of training examples in all, at one learning rate (1e-2); trainable parameters are
   counted for both.
2. Combinations never trained on. Four combinations (again one per task and one per domain) are left out of
   training; every other combination gets the whole training split. The hyper model told the task and the
   domain is scored on the four it never saw, against the same library's unconditioned baseline: a hyper model
   whose one condition has a single value (`{"type": "categorical", "num": 1}`), trained on the same data,
   which cannot tell the tasks apart; and, as a reference, a hyper model told the task only.

Printed: test accuracy (497 held-out images, transformed into each domain) per combination, and the means.
The per-combination accuracies are also plotted to `--out` (default out/digits_tasks/digits_tasks.png).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hyperlight import HyperConfig, get_hyper_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mip_ablation import load_digits_split  # noqa: E402  (the same digits and split as the MIP ablation)

TASKS = {  # name -> (labels from the digit, number of classes)
    "digit": (lambda d: d, 10),
    "parity": (lambda d: d % 2, 2),
    "high": (lambda d: (d >= 5).long(), 2),
    "mod3": (lambda d: d % 3, 3),
}
DOMAINS = ["identity", "rot90", "invert", "hflip"]
COMBOS = [(t, d) for t in range(len(TASKS)) for d in range(len(DOMAINS))]
FEW_SHOT = {(t, (t + 2) % len(DOMAINS)) for t in range(len(TASKS))}  # one per task and one per domain
HELD_OUT = {(t, (t + 1) % len(DOMAINS)) for t in range(len(TASKS))}  # likewise, disjoint from FEW_SHOT
SHOTS = 10  # few-shot: examples per class
TARGETS = ["fc1", "fc2", "head"]
RANK = 8
PRETRAIN_LR = 3e-3
LR = 1e-2  # fine-tuning, both sides
# pretraining steps; LoRA steps per combination; batch (pretraining, LoRA); the hyper model's batch in part 1 (its
# steps then give it as many training examples as the 16 LoRAs together); part 2's steps, batch and seeds
SETTINGS = {
    "full": {
        "pretrain": 400,
        "lora": 1000,
        "batch": 64,
        "hyper_batch": 256,
        "held": 2000,
        "held_batch": 128,
        "seeds": 3,
    },
    "quick": {"pretrain": 40, "lora": 8, "batch": 32, "hyper_batch": 64, "held": 8, "held_batch": 32, "seeds": 2},
}
MODELS = {"both": "task and domain", "task": "task only", "none": "unconditioned (num=1)"}


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 128)
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def transform(x: torch.Tensor, domain: int) -> torch.Tensor:
    images = x.reshape(-1, 8, 8)
    name = DOMAINS[domain]
    if name == "rot90":
        images = torch.rot90(images, 1, dims=(1, 2))
    elif name == "invert":
        images = 1.0 - images
    elif name == "hflip":
        images = images.flip(2)
    return images.reshape(-1, 64)


def combination_data(x: torch.Tensor, digits: torch.Tensor, combo: tuple[int, int], shots: int | None, seed: int):
    """(inputs, labels) of one combination; `shots` examples per class if given, else all of `x`."""
    task, domain = combo
    labels = list(TASKS.values())[task][0](digits)
    if shots is not None:
        generator = torch.Generator().manual_seed(seed)
        keep = [torch.nonzero(labels == c).flatten() for c in labels.unique()]
        keep = torch.cat([k[torch.randperm(len(k), generator=generator)[:shots]] for k in keep])
        x, labels = x[keep], labels[keep]
    return transform(x, domain), labels


def pretrain(x: torch.Tensor, y: torch.Tensor, steps: int, batch: int) -> MLP:
    torch.manual_seed(0)
    model = MLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=PRETRAIN_LR)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        index = torch.randint(len(y), (batch,), generator=generator)
        loss = F.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.requires_grad_(False)


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_lora(base: MLP, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, seed: int) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(copy.deepcopy(base), LoraConfig(target_modules=TARGETS, r=RANK, lora_alpha=RANK))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LR)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(len(y), (min(batch, len(y)),), generator=generator)
        loss = F.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def train_hyper(base: MLP, data: dict, conditions: dict, steps: int, batch: int, seed: int) -> nn.Module:
    """One hyper model on every combination in `data` ({(task, domain): (x, y)}), combinations mixed in each
    batch: a random combination per example, then a random example of it. `conditions` says which conditions the
    model has: both, the task only, or one constant ("none": the unconditioned baseline)."""
    torch.manual_seed(seed)
    specs = {
        "both": {"task": {"type": "categorical", "num": len(TASKS)}, "domain": {"type": "categorical", "num": 4}},
        "task": {"task": {"type": "categorical", "num": len(TASKS)}},
        "none": {"constant": {"type": "categorical", "num": 1}},
    }[conditions]
    config = HyperConfig(target_modules=TARGETS, conditions=specs, rank=RANK, alpha=RANK, hidden_size=16)
    hyper = get_hyper_model(copy.deepcopy(base), config)
    optimizer = torch.optim.Adam([p for p in hyper.parameters() if p.requires_grad], lr=LR)
    generator = torch.Generator().manual_seed(seed)
    combos = list(data)
    for _ in range(steps):
        which = torch.randint(len(combos), (batch,), generator=generator)
        xs, ys, tasks, domains = [], [], [], []
        for c in which.unique().tolist():
            x, y = data[combos[c]]
            index = torch.randint(len(y), (int((which == c).sum()),), generator=generator)
            xs.append(x[index])
            ys.append(y[index])
            tasks += [combos[c][0]] * len(index)
            domains += [combos[c][1]] * len(index)
        loss = F.cross_entropy(hyper(torch.cat(xs), **condition_values(conditions, tasks, domains)), torch.cat(ys))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return hyper.eval()


def condition_values(conditions: str, tasks: list[int], domains: list[int]) -> dict[str, torch.Tensor]:
    if conditions == "both":
        return {"task": torch.tensor(tasks), "domain": torch.tensor(domains)}
    if conditions == "task":
        return {"task": torch.tensor(tasks)}
    return {"constant": torch.zeros(len(tasks), dtype=torch.long)}


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **conditions) -> float:
    return (model(x, **conditions).argmax(-1) == y).float().mean().item()


def grid(title: str, cells: dict[tuple[int, int], str], marks: dict[tuple[int, int], str], width: int) -> None:
    print(f"\n{title}")
    print("task     " + "".join(f"{d:<{width}}" for d in DOMAINS))
    for t, task in enumerate(TASKS):
        print(f"{task:<9}" + "".join(f"{cells[t, d] + marks.get((t, d), ''):<{width}}" for d in range(len(DOMAINS))))


def plot(path: Path, many: dict, held: dict) -> None:
    from example_plots import grouped_bars, pyplot, save

    fig, axes = pyplot().subplots(1, 2, figsize=(14, 4))
    labels = [f"{list(TASKS)[t]}\n{DOMAINS[d]}" for t, d in COMBOS]
    for ax, table, title in ((axes[0], many, "many-shot / few-shot (*)"), (axes[1], held, "held-out (*)")):
        marked = FEW_SHOT if table is many else HELD_OUT
        series = {name: [scores.get(c, np.nan) for c in COMBOS] for name, scores in table.items()}
        grouped_bars(ax, series, [lab + (" *" if c in marked else "") for lab, c in zip(labels, COMBOS)])
        ax.tick_params(axis="x", labelsize=6)
        ax.set(ylabel="test accuracy", ylim=(0, 1.15), title=title)
        ax.legend(fontsize=7, ncol=3, loc="upper center")
    save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/digits_tasks"), help="where the plot goes")
    parser.add_argument("--quick", action="store_true", help="a tiny setting, to check that everything runs")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and steady on a shared machine
    setting = SETTINGS["quick" if args.quick else "full"]
    batch = setting["batch"]
    hyper_steps = setting["lora"] * len(COMBOS) * batch // setting["hyper_batch"]  # as many examples as the LoRAs
    start = time.time()
    xtr, ytr, xte, yte = load_digits_split()
    half = len(ytr) // 2
    base = pretrain(xtr[:half], ytr[:half], setting["pretrain"], batch)
    print(f"Pretrained MLP on {half} digits (10 classes, images as they are): test accuracy "
          f"{accuracy(base, xte, yte):.3f}")  # fmt: skip
    tests = {c: combination_data(xte, yte, c, None, 0) for c in COMBOS}

    # 1. many-shot and few-shot: one hyper model for all 16 combinations, against 16 PEFT LoRAs
    train = {c: combination_data(xtr, ytr, c, SHOTS if c in FEW_SHOT else None, seed=i) for i, c in enumerate(COMBOS)}
    hyper = train_hyper(base, train, "both", hyper_steps, setting["hyper_batch"], seed=0)
    hyper_scores = {c: accuracy(hyper, *tests[c], **condition_values("both", [c[0]], [c[1]])) for c in COMBOS}
    lora_scores, lora_params = {}, 0
    for i, c in enumerate(COMBOS):
        lora = train_lora(base, *train[c], setting["lora"], batch, seed=i)
        lora_scores[c] = accuracy(lora, *tests[c])
        lora_params += trainable(lora)
    hyper_params = trainable(hyper)
    cells = {c: f"{hyper_scores[c]:.3f} / {lora_scores[c]:.3f}" for c in COMBOS}
    grid("Test accuracy, hyper model / PEFT LoRA of that combination (* few-shot: 10 training images per class)",
         cells, {c: "*" for c in FEW_SHOT}, 16)  # fmt: skip
    many = [c for c in COMBOS if c not in FEW_SHOT]
    print("\n                        hyper model (one)   PEFT LoRA (one per combination)")
    print(f"trainable parameters    {hyper_params:>17,}   {lora_params:>31,}  ({len(COMBOS)} x {lora_params // 16:,})")
    for name, combos in (("many-shot mean (12)", many), ("few-shot mean (4)", sorted(FEW_SHOT))):
        h, lo = np.mean([hyper_scores[c] for c in combos]), np.mean([lora_scores[c] for c in combos])
        print(f"{name:<23} {h:>17.3f}   {lo:>31.3f}  ({100 * (h - lo):+.1f} points)")

    # 2. combinations never trained on: the hyper model (task and domain ids) against the unconditioned baseline
    seen = {c: combination_data(xtr, ytr, c, None, 0) for c in COMBOS if c not in HELD_OUT}
    held = {name: {c: [] for c in COMBOS} for name in MODELS}
    for seed in range(setting["seeds"]):
        for name in MODELS:
            model = train_hyper(base, seen, name, setting["held"], setting["held_batch"], seed=1 + seed)
            for c in COMBOS:
                held[name][c].append(accuracy(model, *tests[c], **condition_values(name, [c[0]], [c[1]])))
    cells = {c: " / ".join(f"{np.mean(held[name][c]):.2f}" for name in MODELS) for c in COMBOS}
    grid(f"Test accuracy (mean of {setting['seeds']} seeds), hyper model told task and domain / told the task only / "
         "unconditioned (* never trained on)", cells, {c: "*" for c in HELD_OUT}, 20)  # fmt: skip
    print(f"\nmean ± std over {setting['seeds']} seeds      " + "".join(f"{label:<24}" for label in MODELS.values()))
    for name, combos in (("unseen combinations (4)", sorted(HELD_OUT)), ("trained combinations (12)", list(seen))):
        runs = {m: [np.mean([held[m][c][i] for c in combos]) for i in range(setting["seeds"])] for m in MODELS}
        print(f"{name:<30}" + "".join(f"{f'{np.mean(r):.3f} ± {np.std(r):.3f}':<24}" for r in runs.values()))

    figure = args.out / "digits_tasks.png"
    plot(figure, {"hyper model": hyper_scores, "PEFT LoRA per combination": lora_scores},
         {MODELS[m]: {c: float(np.mean(v)) for c, v in held[m].items()} for m in MODELS})  # fmt: skip
    print(f"\nPlot (test accuracy per combination): {figure}")
    print(f"Done in {time.time() - start:.0f} s.")


if __name__ == "__main__":
    main()

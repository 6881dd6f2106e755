"""Per-example weight generation with the core `HyperNet`: repeated input rows generated once (dedup) or per row.

    python benchmarks/core_generation.py                   # batch 128, 8 distinct tasks, 3 conv layers 16x16x3x3
    python benchmarks/core_generation.py --device cuda     # the same on a GPU
    python benchmarks/core_generation.py --threads 1       # pin CPU threads (steadier on a shared machine)

Each row times one generation for a per-example batch (forward only under no_grad, and forward + backward as in
a training step), with `dedup=False` (every row through the MLP: the seed's behaviour) and `dedup=True` (one
row per distinct input, gathered back), on the same weights and inputs, interleaved. Timings are medians of
repeated runs after a warm-up; the ratio is off / on (> 1: dedup is faster). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from hyperlight import HyperNet


def conv_shapes(layers: int, channels: int, kernel: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(layers):
        shapes[f"conv{i}.weight"] = (channels, channels, kernel, kernel)
        shapes[f"conv{i}.bias"] = (channels,)
    return shapes


def timed(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> float:
    """Median seconds of `fn` over `repeats` runs, after two warm-up runs."""
    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cases(batch: int, distinct: int, device: torch.device) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, constructor inputs, call inputs): the same per-example task batch in three forms."""
    task = torch.arange(batch, device=device) % distinct  # every example's task id, `distinct` of them
    one_hot = torch.nn.functional.one_hot(task, distinct).float()
    all_distinct = torch.rand(batch, 1, device=device)
    return [
        (
            "conditions: categorical task",
            {"conditions": {"task": {"type": "categorical", "num": distinct}}},
            {"task": task},
        ),
        ("input_shapes: one-hot task", {"input_shapes": {"task": (distinct,)}}, {"task": one_hot}),
        ("input_shapes: scalar h", {"input_shapes": {"h": (1,)}}, {"h": task.float().unsqueeze(1) / distinct}),
        (f"input_shapes: {batch} distinct h (no repeats)", {"input_shapes": {"h": (1,)}}, {"h": all_distinct}),
    ]


def forward(net: HyperNet, inputs: dict[str, Any], weights: dict[str, torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            net(**inputs)

    return run


def step(net: HyperNet, inputs: dict[str, Any], weights: dict[str, torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        net.zero_grad(set_to_none=True)
        out = net(**inputs)
        sum((out[k] * weights[k]).sum() for k in weights).backward()  # a loss that reads every row

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--distinct", type=int, default=8, help="distinct tasks in the batch")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--kernel", type=int, default=3)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    shapes = conv_shapes(args.layers, args.channels, args.kernel)
    outputs = sum(torch.Size(s).numel() for s in shapes.values())
    print(
        f"batch {args.batch}, {args.distinct} distinct tasks; outputs {args.layers} x conv "
        f"{args.channels}x{args.channels}x{args.kernel}x{args.kernel} + bias ({outputs:,} values per example); "
        f"hidden {args.hidden}; {device}, {torch.get_num_threads()} threads, torch {torch.__version__}\n"
    )
    print("| inputs | pass | dedup off (ms) | dedup on (ms) | off / on |")
    print("|---|---|---:|---:|---:|")
    for name, form, inputs in cases(args.batch, args.distinct, device):
        torch.manual_seed(0)
        on = HyperNet(output_shapes=shapes, hidden_sizes=args.hidden, **form).to(device)
        off = HyperNet(output_shapes=shapes, hidden_sizes=args.hidden, dedup=False, **form).to(device)
        off.load_state_dict(on.state_dict())
        weights = {k: torch.randn(args.batch, *s, device=device) for k, s in shapes.items()}

        for label, make in (("forward", forward), ("forward + backward", step)):
            t_off = t_on = 0.0
            for _ in range(3):  # interleaved rounds: a slow spell of a shared machine hits both sides
                t_off += timed(make(off, inputs, weights), args.repeats, sync)
                t_on += timed(make(on, inputs, weights), args.repeats, sync)
            print(f"| {name} | {label} | {t_off / 3 * 1e3:.2f} | {t_on / 3 * 1e3:.2f} | {t_off / t_on:.1f}x |")


if __name__ == "__main__":
    main()

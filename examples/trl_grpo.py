"""TRL's GRPO on a hyper model: one policy, two opposite rewards, told apart by a named task condition (CPU).

    python examples/trl_grpo.py            # about 15 seconds on 2 CPU cores
    python examples/trl_grpo.py --quick    # a tiny setting (tests)

Every prompt is a few letters; the task says which case the completion should be written in: `task="upper"`
is rewarded for capital letters, `task="lower"` for small ones. The two rewards pull in opposite directions, so a
policy that ignored the condition could not do better than about half on average; the hyper model generates
different weights for each task and can satisfy both.

`HyperGRPOTrainer` is TRL's `GRPOTrainer`: each prompt's completions are sampled with its own task's weights,
scored with them, and the KL reference is the pretrained model inside the hyper model (no second copy). The
reward function receives the `task` column as a keyword argument, as TRL passes any column.

The base is a small Llama built from a config with a character-level tokenizer (no download). Its weights are
drawn with a large init scale so that its output layer can express preferences, as a pretrained model's does.
"""

from __future__ import annotations

import argparse
import string
import tempfile

import torch

TASKS = ["upper", "lower"]
PROMPTS = ["abc", "XYZ", "hello", "WORLD", "mixED", "tEXt", "qrs", "KLM"]


def char_tokenizer():
    """A character-level `PreTrainedTokenizerFast`, built offline with the `tokenizers` library."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    symbols = ["<pad>", "<s>", "</s>", "<unk>", *string.ascii_letters]
    backend = Tokenizer(models.WordLevel({s: i for i, s in enumerate(symbols)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def build(tokenizer, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    from hyperlight import HyperConfig, get_hyper_model

    torch.manual_seed(seed)
    base = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            initializer_range=0.5,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    config = HyperConfig(
        target_modules="all-linear", conditions={"task": {"type": "categorical", "values": TASKS}}, rank=4
    )
    return get_hyper_model(base, config)


def case_reward(completions: list[str], task: list[str], **_: object) -> list[float]:
    """The share of a completion's letters written in its task's case."""
    rewards = []
    for completion, wanted in zip(completions, task):
        letters = [c for c in completion if c.isalpha()]
        good = sum(c.isupper() if wanted == "upper" else c.islower() for c in letters)
        rewards.append(good / max(len(letters), 1))
    return rewards


def sampled_reward(hyper, tokenizer, samples: int, seed: int) -> dict[str, float]:
    """Mean reward per task of `samples` sampled completions of every prompt (seeded)."""
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    means = {}
    for task in TASKS:
        torch.manual_seed(seed)
        with torch.no_grad():
            out = hyper.generate(
                **batch, task=task, do_sample=True, max_new_tokens=6, num_return_sequences=samples, pad_token_id=0
            )
        texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        means[task] = sum(case_reward(texts, [task] * len(texts))) / len(texts)
    return means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny setting (tests)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import trl
    from datasets import Dataset

    from hyperlight.training.trl import HyperGRPOTrainer

    tokenizer = char_tokenizer()
    hyper = build(tokenizer, args.seed)
    rows = [(p, t) for p in PROMPTS for t in TASKS]
    data = Dataset.from_dict({"prompt": [p for p, _ in rows] * 4, "task": [t for _, t in rows] * 4})
    before = sampled_reward(hyper, tokenizer, 4, args.seed)
    with tempfile.TemporaryDirectory() as out:
        trainer = HyperGRPOTrainer(
            model=hyper,
            reward_funcs=case_reward,
            args=trl.GRPOConfig(
                output_dir=out,
                report_to=[],
                use_cpu=True,
                bf16=False,
                seed=args.seed,
                per_device_train_batch_size=8,
                num_generations=4,
                max_completion_length=6,
                max_steps=12 if args.quick else 80,
                learning_rate=1e-2,
                beta=0.04,
                logging_steps=1,
                save_strategy="no",
                disable_tqdm=True,
            ),
            train_dataset=data,
            processing_class=tokenizer,
        )
        trainer.train()
    after = sampled_reward(hyper, tokenizer, 4, args.seed)
    logged = [log["reward"] for log in trainer.state.log_history if "reward" in log]
    k = max(1, len(logged) // 5)
    print(f"\n{'task':<8} {'mean reward before':>19} {'after GRPO':>11}")
    for task in TASKS:
        print(f"{task:<8} {before[task]:>19.2f} {after[task]:>11.2f}")
    print(f"training reward: first {k} steps {sum(logged[:k]) / k:.2f}, last {k} steps {sum(logged[-k:]) / k:.2f}")
    print(f"reference model: the pretrained model inside the hyper model: {type(trainer.ref_model).__name__}")


if __name__ == "__main__":
    main()

"""Writes the demo's bundled data (deterministic; the files are committed, so this only documents them).

    python examples/data/make_data.py

- `tasks.json`: the five tasks, in the order of their ids, with a description of each.
- `train.jsonl`, `test.jsonl`: one row per input string (lowercase, 3 to 6 letters) with the output of every
  task, so all tasks share their inputs; no test input appears in training.
- `pretrain.txt`: the base model's "pretraining" corpus, mixed-case strings followed by `=` and the same string
  again (the base learns the format, all the letters, and to repeat).
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOWER = string.ascii_lowercase
TASKS = {
    "copy": "repeat the string",
    "reverse": "write the string backwards",
    "sort": "sort the letters alphabetically",
    "shift": "replace each letter by the next one in the alphabet (z becomes a)",
    "upper": "write the string in capital letters",
}


def apply(task: str, text: str) -> str:
    if task == "copy":
        return text
    if task == "reverse":
        return text[::-1]
    if task == "sort":
        return "".join(sorted(text))
    if task == "shift":
        return "".join(LOWER[(LOWER.index(c) + 1) % 26] for c in text)
    if task == "upper":
        return text.upper()
    raise KeyError(task)


def random_string(rng: random.Random, letters: str, low: int = 3, high: int = 6) -> str:
    return "".join(rng.choice(letters) for _ in range(rng.randint(low, high)))


def main(num_train: int = 2000, num_test: int = 100, num_pretrain: int = 6000) -> None:
    rng = random.Random(0)
    inputs: list[str] = []
    seen: set[str] = set()
    while len(inputs) < num_train + num_test:
        text = random_string(rng, LOWER)
        if text not in seen:
            seen.add(text)
            inputs.append(text)
    (HERE / "tasks.json").write_text(json.dumps(TASKS, indent=2) + "\n")
    for name, part in (("train", inputs[:num_train]), ("test", inputs[num_train:])):
        with open(HERE / f"{name}.jsonl", "w") as f:
            for text in part:
                f.write(json.dumps({"input": text, **{t: apply(t, text) for t in TASKS}}) + "\n")
    lines = []
    for _ in range(num_pretrain):
        text = random_string(rng, LOWER + string.ascii_uppercase)
        lines.append(f"{text}={text}")
    (HERE / "pretrain.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

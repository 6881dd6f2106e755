"""HyperNet's ablation options (encoding x residual x init, delta_init), conditions in the core (the plug-in's
vocabulary through ConditionEncoder) and per-example deduplication of repeated input rows."""

import math
import warnings

import pytest
import torch
from torch import nn

from hyperlight import HyperNet, hypernetize
from hyperlight.hypernet.conditions import ConditionEncoder
from hyperlight.hypernet.init import initial_statistics, initial_value

OUT = {"w": (4, 3), "b": (4,)}
CONDITIONS = {"task": {"type": "categorical", "num": 4}, "lr": {"type": "scalar", "range": [1e-4, 1e-1]}}
ENCODINGS = ["cos|sin", "z|1-z", None]


def _rows_seen(net: HyperNet) -> list[int]:
    """Records how many rows each forward of `net` runs through its backbone."""
    seen: list[int] = []
    net.backbone.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[0]))
    return seen


# -- parameters and initialisation ---------------------------------------------------------------------------


def test_parameter_sets_follow_residual():
    with_theta0 = HyperNet({"h": (2,)}, OUT, [8])
    assert [n for n, _ in with_theta0.named_parameters()] == [
        "theta0",
        "backbone.0.weight",
        "backbone.0.bias",
        "backbone.2.weight",
    ]
    plain = HyperNet({"h": (2,)}, OUT, [8], residual=False)
    # a plain hypernetwork: no θ0, and its output layer has the bias an nn.Linear has
    assert [n for n, _ in plain.named_parameters()] == [
        "backbone.0.weight",
        "backbone.0.bias",
        "backbone.2.weight",
        "backbone.2.bias",
    ]
    assert plain.theta0 is None and "theta0" not in plain.state_dict()
    assert "residual=False" in repr(plain) and "init='paper'" in repr(plain)
    with pytest.raises(ValueError, match=r"no independent weights θ0 \(it was built with residual=False"):
        plain.get_independent_weights()
    with pytest.raises(ValueError, match="build it with residual=True"):
        plain.set_independent_weights({"w": torch.zeros(4, 3), "b": torch.zeros(4)})


def test_init_torch_is_nn_linear_default():
    torch.manual_seed(1)
    net = HyperNet({"h": (128,)}, {"w": (64, 32)}, [256, 512], init="torch", encoding=None)
    for layer in (net.backbone[0], net.backbone[2], net.backbone[4]):
        bound = 1.0 / math.sqrt(layer.in_features)  # kaiming_uniform(a=√5) and its bias both draw in ±1/√fan_in
        assert layer.weight.abs().max() <= bound
        assert layer.weight.abs().max() > 0.99 * bound  # uniform: fills the interval
        torch.testing.assert_close(layer.weight.std().item(), bound / math.sqrt(3), rtol=0.03, atol=0)
        if layer.bias is not None:
            assert layer.bias.abs().max() <= bound and layer.bias.abs().sum() > 0
    assert net.backbone[4].bias is None  # residual=True: θ0 is the only input-independent term


def test_init_paper_is_kaiming_fan_out():
    torch.manual_seed(1)
    net = HyperNet({"h": (128,)}, {"w": (300, 2)}, [256, 512], encoding=None)
    first, second, out = net.backbone[0], net.backbone[2], net.backbone[4]
    for layer in (first, second):  # LeakyReLU gain √2 (a=0) over fan_out
        torch.testing.assert_close(layer.weight.std().item(), math.sqrt(2 / layer.out_features), rtol=0.03, atol=0)
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    torch.testing.assert_close(out.weight.std().item(), 1 / math.sqrt(out.out_features), rtol=0.03, atol=0)
    # explicit delta_init="paper" under init="torch": Kaiming fan-out on the output layer only
    torch.manual_seed(1)
    mixed = HyperNet({"h": (128,)}, {"w": (300, 2)}, [256, 512], init="torch", delta_init="paper")
    torch.testing.assert_close(mixed.backbone[4].weight.std().item(), 1 / math.sqrt(600), rtol=0.03, atol=0)
    assert mixed.backbone[0].bias.abs().sum() > 0  # the hidden layers stay torch's


def test_default_construction_draws_as_before():
    # the default (residual=True, init="paper", delta_init unset) draws the numbers the seed's HyperNet drew,
    # in the same order, so seeded experiments keep their networks
    torch.manual_seed(3)
    net = HyperNet({"h": (2,)}, OUT, [8, 8])
    torch.manual_seed(3)
    hidden = []
    for size in (4, 8):
        hidden.append(layer := nn.Linear(size, 8))
        nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="leaky_relu")
        nn.init.zeros_(layer.bias)
    out = nn.Linear(8, 16, bias=False)
    nn.init.kaiming_normal_(out.weight, mode="fan_out", nonlinearity="linear")
    theta0 = torch.cat([initial_value(n, s).flatten() for n, s in OUT.items()])
    nn.init.kaiming_normal_(out.weight, mode="fan_out", nonlinearity="linear")  # reset_delta draws again
    expected = [theta0, hidden[0].weight, hidden[0].bias, hidden[1].weight, hidden[1].bias, out.weight]
    assert all(torch.equal(p, e) for p, e in zip(net.parameters(), expected, strict=True))


def test_initial_statistics_describe_initial_value():
    for name, shape in [("conv.weight", (64, 32, 3, 3)), ("lora_A", (128, 512)), ("fc.weight", (300, 200))]:
        mean, std = initial_statistics(name, shape)
        value = initial_value(name, shape)
        assert mean == 0.0 and abs(value.mean().item()) < 0.05 * std
        torch.testing.assert_close(value.std().item(), std, rtol=0.03, atol=0)
    for name, shape, mean in [("fc.bias", (8,), 0.0), ("norm.weight", (8,), 1.0), ("lora_B", (8, 2), 0.0)]:
        assert initial_statistics(name, shape) == (mean, 0.0)
        assert torch.equal(initial_value(name, shape), torch.full(shape, mean))


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("hidden", [[], [64], [32, 128]])
def test_plain_hypernet_generates_at_the_target_layers_scale(encoding, hidden):
    # residual=False, init="paper": hyperfan-in, generated weights with the variance of a Kaiming layer
    shapes = {"fc.weight": (256, 128), "fc.bias": (256,), "norm.weight": (64,)}
    torch.manual_seed(2)
    net = HyperNet({"h": (3,)}, shapes, hidden, residual=False, encoding=encoding)
    target = initial_statistics("fc.weight", (256, 128))[1] ** 2
    with torch.no_grad():
        out = net(h=torch.rand(200, 3))
    per_input = out["fc.weight"].flatten(1).var(dim=1)  # over the 32768 entries of each example's weight
    assert 0.8 < per_input.mean().item() / target < 1.25
    assert out["fc.weight"].mean().abs() < 0.05 * math.sqrt(target)
    # constant-kind tensors start at their usual values: biases 0, norm scales 1 (with no spread)
    torch.testing.assert_close(out["fc.bias"], torch.zeros_like(out["fc.bias"]))
    torch.testing.assert_close(out["norm.weight"], torch.ones_like(out["norm.weight"]))


def test_plain_hypernet_at_zero_input_without_encoding_is_not_zero():
    shapes = {"fc.weight": (64, 32)}
    target_std = initial_statistics("fc.weight", (64, 32))[1]
    for hidden in ([], [16, 16]):
        net = HyperNet({"h": (2,)}, shapes, hidden, residual=False, encoding=None)
        w = net(h=torch.zeros(2))["fc.weight"]
        # with zero-bias layers every feature is 0 at γ=0; the output bias carries half the variance there
        assert 0.5 < w.std().item() / (target_std / math.sqrt(2)) < 1.5
        assert w.abs().min() < w.abs().max()  # a spread of values, not a constant
    # torch's baseline too: its biases make the features non-zero
    w = HyperNet({"h": (2,)}, shapes, [16], residual=False, init="torch", encoding=None)(h=torch.zeros(2))["fc.weight"]
    assert w.std() > 0


def test_plain_hypernet_with_conditions_generates_at_scale():
    shapes = {"fc.weight": (256, 128)}
    net = HyperNet(conditions=CONDITIONS, output_shapes=shapes, hidden_sizes=[64], residual=False)
    target = initial_statistics("fc.weight", (256, 128))[1] ** 2
    with torch.no_grad():
        out = net(task=torch.arange(4).repeat(8), lr=torch.linspace(1e-4, 1e-1, 32))["fc.weight"]
    assert 0.7 < out.flatten(1).var(dim=1).mean().item() / target < 1.4


@pytest.mark.parametrize("init", ["paper", "torch"])
def test_delta_init_zero_outputs_theta0_exactly(init):
    net = HyperNet({"h": (3,)}, OUT, [16], init=init, delta_init="zero", encoding=None)
    theta0 = net.get_independent_weights()
    out = net(h=torch.rand(7, 3) * 5)
    for name in OUT:
        assert torch.equal(out[name], theta0[name].expand_as(out[name]))


@pytest.mark.parametrize("init", ["paper", "torch"])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_cell_of_the_ablation_grid_trains(encoding, residual, init):
    net = HyperNet({"h": (2,)}, OUT, [8, 8], encoding=encoding, residual=residual, init=init)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    h = torch.rand(6, 2)
    target = {k: torch.randn(6, *s) for k, s in OUT.items()}

    def loss() -> torch.Tensor:
        out = net(h=h)
        return sum(((out[k] - target[k]) ** 2).mean() for k in OUT)

    before = loss()
    before.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    opt.step()
    after = loss()
    assert torch.isfinite(after) and after < before
    assert ("theta0" in dict(net.named_parameters())) is residual


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"residual": False, "delta_init": "zero"}, ValueError, r"delta_init='zero' with residual=False would make"),
        ({"init": "xavier"}, ValueError, r"init must be 'paper' \(Kaiming fan-out, Ortiz et al.\) or 'torch'"),
        ({"residual": "no"}, TypeError, r"residual must be True \(θ = θ0 \+ Δθ\) or False"),
        ({"delta_init": "torch"}, ValueError, r"delta_init must be 'paper' or 'zero', got 'torch'"),
        ({"dedup": 1}, TypeError, "dedup must be True or False, got 1"),
        ({"conditions": CONDITIONS}, TypeError, r"input_shapes= \(tensor inputs\) or conditions= .*, not both"),
        ({"input_shapes": None}, TypeError, r"HyperNet needs its inputs: input_shapes=\{'h': \(2,\)\}"),
        ({"output_shapes": None}, TypeError, "HyperNet needs output_shapes"),
        (
            {"condition_dim": 8},
            TypeError,
            "condition_dim= applies to conditions=, and this HyperNet takes input_shapes",
        ),
    ],
)
def test_invalid_option_combinations(kwargs, error, message):
    args = {"input_shapes": {"h": (2,)}, "output_shapes": OUT, **kwargs}
    with pytest.raises(error, match=message):
        HyperNet(**args)


def test_from_existing_needs_residual():
    weights = {"w": torch.randn(4, 3)}
    with pytest.raises(ValueError, match=r"from_existing puts the weights in θ0, and residual=False builds"):
        HyperNet.from_existing(weights, {"h": (2,)}, [4], residual=False)
    net = HyperNet.from_existing(weights, {"h": (2,)}, [4], init="torch", encoding=None)
    assert torch.equal(net(h=torch.rand(3, 2))["w"], weights["w"].expand(3, 4, 3))


# -- conditions ------------------------------------------------------------------------------------------------


def test_conditions_embed_ids_and_batch_like_the_input_form():
    net = HyperNet(conditions=CONDITIONS, output_shapes=OUT, hidden_sizes=[16])
    assert net.condition_encoder.out_features == 2 * 32  # condition_dim defaults to the plug-in's 32
    assert "condition_encoder.embedders.task.weight" in net.state_dict()
    assert tuple(net.state_dict()["condition_encoder.embedders.task.weight"].shape) == (4, 32)
    task, lr = torch.tensor([0, 3, 3, 1]), torch.tensor([1e-3, 1e-3, 5e-2, 1e-3])
    out = net(task=task, lr=lr)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"w": (4, 4, 3), "b": (4, 4)}
    for b in range(4):  # row b of a mixed batch is what the unbatched call gives
        alone = net(task=int(task[b]), lr=float(lr[b]))
        assert {k: tuple(v.shape) for k, v in alone.items()} == OUT
        for name in OUT:
            torch.testing.assert_close(out[name][b], alone[name])
    assert not torch.allclose(out["w"][0], out["w"][3])  # different ids, different weights
    one_lr = net(task=task, lr=1e-3)  # a single value applies to every example
    torch.testing.assert_close(one_lr["w"][0], out["w"][0])
    small = HyperNet(conditions=CONDITIONS, output_shapes=OUT, condition_dim=8)
    assert small.backbone[0].in_features == 16
    assert "conditions='task (categorical), lr (scalar)'" in repr(small)


def test_conditions_from_existing_and_vectors():
    weights = {"w": torch.randn(4, 3), "b": torch.randn(4)}
    net = HyperNet.from_existing(weights, conditions={"z": {"type": "vector", "dim": 5}}, hidden_sizes=[8])
    out = net(z=torch.randn(3, 5))
    assert all(torch.equal(out[k], weights[k].expand_as(out[k])) for k in weights)
    assert tuple(net(z=torch.randn(5))["w"].shape) == (4, 3)  # a (dim,) vector is one example


def test_text_conditions_take_a_sentence_encoder():
    class Toy:
        dim = 6

        def __call__(self, texts: list[str]) -> torch.Tensor:
            return torch.stack([torch.full((6,), float(len(t))) / 10 for t in texts])

    spec = {"prompt": {"type": "text", "encoder": "toy"}}
    net = HyperNet(conditions=spec, output_shapes=OUT, text_encoders={"prompt": Toy()}, residual=False)
    batch = net(prompt=["ab", "abcd", "ab"])
    assert tuple(batch["w"].shape) == (3, 4, 3)
    torch.testing.assert_close(batch["w"][1], net(prompt="abcd")["w"])
    with pytest.raises(ValueError, match=r"text condition 'prompt' needs a sentence encoder: pass text_encoders="):
        HyperNet(conditions={"prompt": {"type": "text", "encoder": "toy", "dim": 6}}, output_shapes=OUT)


@pytest.mark.parametrize(
    "values, error",
    [
        ({"task": torch.tensor([0, 4]), "lr": 1e-3}, ValueError),  # id out of range
        ({"task": torch.tensor([0.0, 1.0]), "lr": 1e-3}, TypeError),  # floats for a categorical
        ({"task": torch.tensor([0, 1])}, TypeError),  # missing condition
        ({"task": 0, "lr": 1e-3, "x": 1}, TypeError),  # unexpected condition
        ({"task": 0, "lr": 0.5}, ValueError),  # scalar outside its range
        ({"task": torch.tensor([0, 1, 2]), "lr": torch.tensor([1e-3, 1e-3])}, ValueError),  # batch sizes
    ],
    ids=["id-range", "float-id", "missing", "extra", "scalar-range", "batch"],
)
def test_bad_condition_values_raise_the_plug_ins_errors(values, error):
    net = HyperNet(conditions=CONDITIONS, output_shapes=OUT)
    with pytest.raises(error) as core:
        net(**values)
    with pytest.raises(error) as plugin:  # the same vocabulary: the same message, word for word
        ConditionEncoder(CONDITIONS, 32).check(values)
    assert str(core.value) == str(plugin.value)
    assert "condition" in str(core.value)


def test_conditions_refuse_input_form_options():
    with pytest.raises(TypeError, match=r"encoding= applies to input_shapes=, not to conditions= \(got encoding=None"):
        HyperNet(conditions=CONDITIONS, output_shapes=OUT, encoding=None)
    with pytest.raises(ValueError, match="condition_dim must be a positive int, got 0"):
        HyperNet(conditions=CONDITIONS, output_shapes=OUT, condition_dim=0)
    with pytest.raises(ValueError, match=r"condition name '_x' starts with '_'"):
        HyperNet(conditions={"_x": {"type": "categorical", "num": 2}}, output_shapes=OUT)


def test_integer_inputs_warn_towards_categorical_conditions():
    net = HyperNet({"task": ()}, OUT, [4])
    with pytest.warns(UserWarning, match=r"'task' holds integers: .*conditions=\{'task': \{'type': 'categorical'"):
        net(task=torch.tensor([0, 3]))
    floats = HyperNet({"task": ()}, OUT, [4])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        floats(task=torch.tensor([0.0, 3.0]))
    assert len(record) == 1 and "holds integers" not in str(record[0].message)


# -- deduplication of repeated rows ----------------------------------------------------------------------------


def _twins(**kwargs) -> tuple[HyperNet, HyperNet]:
    a = HyperNet(**kwargs)
    b = HyperNet(**{**kwargs, "dedup": False})
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("shape", [(3,), ()], ids=["rows", "scalars"])
@pytest.mark.parametrize("residual", [True, False])
def test_dedup_equals_no_dedup_in_outputs_and_gradients(residual, shape):
    dedup, plain = _twins(input_shapes={"h": shape}, output_shapes=OUT, hidden_sizes=[16], residual=residual)
    seen, seen_plain = _rows_seen(dedup), _rows_seen(plain)
    h = torch.rand(8, *shape)[torch.tensor([0, 1, 0, 2, 1, 0, 7, 7])]  # 4 distinct rows among 8
    weights = {k: torch.randn(8, *s) for k, s in OUT.items()}
    for net in (dedup, plain):
        out = net(h=h)
        sum((out[k] * weights[k]).sum() for k in OUT).backward()
    assert seen == [4] and seen_plain == [8]
    for name in OUT:
        torch.testing.assert_close(dedup(h=h)[name], plain(h=h)[name], rtol=1e-6, atol=1e-6)
    for (name, p), q in zip(dedup.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_dedup_with_conditions():
    dedup, plain = _twins(conditions=CONDITIONS, output_shapes=OUT, hidden_sizes=[16])
    seen = _rows_seen(dedup)
    task = torch.arange(8) % 3
    lr = torch.full((8,), 1e-3)
    for net in (dedup, plain):
        out = net(task=task, lr=lr)
        (out["w"].sum() + (out["b"] * torch.arange(8.0).unsqueeze(1)).sum()).backward()
    assert seen == [3]
    torch.testing.assert_close(dedup(task=task, lr=lr)["w"], plain(task=task, lr=lr)["w"], rtol=1e-6, atol=1e-6)
    for (name, p), q in zip(dedup.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)
    dedup(task=torch.tensor([0, 1, 2]), lr=lr[:3])  # all distinct: generated in batch order, nothing gathered
    assert seen[-1] == 3


def test_dedup_skips_where_rows_must_stay_separate():
    h = torch.rand(1, 2).expand(6, 2)
    net = HyperNet({"h": (2,)}, OUT, [8])
    seen = _rows_seen(net)
    net(h=h.clone().requires_grad_())  # each row its own input gradient
    dropout = HyperNet({"h": (2,)}, OUT, [8], dropout=0.5)
    seen_dropout = _rows_seen(dropout)
    dropout(h=h)  # training mode: each row its own mask
    dropout.eval()
    dropout(h=h)
    assert seen == [6] and seen_dropout == [6, 1]
    # inside torch.func.vmap every row runs (torch.unique is not batchable): no error
    out = torch.func.vmap(lambda x: net(h=x)["w"])(h.reshape(2, 3, 2))
    assert out.shape == (2, 3, 4, 3)


def test_dedup_keeps_per_example_weights_of_a_hypernetized_hypernet():
    # the inner HyperNet's backbone is generated per example by an outer one: repeated h rows still need
    # their own rows, since each example runs with different backbone weights
    inner = HyperNet({"h": (2,)}, OUT, [6])
    inner, values = hypernetize(inner, modules=[inner.backbone], return_values=True)
    outer = HyperNet({"g": ()}, inner.external_shapes(), [4])
    h, g = torch.rand(1, 2).expand(3, 2), torch.rand(3)
    with inner.using_externals(outer(g=g)):
        batched = inner(h=h)
    for b in range(3):
        with inner.using_externals(outer(g=g[b])):
            alone = inner(h=h[b])
        torch.testing.assert_close(batched["w"][b], alone["w"], atol=1e-6, rtol=0)
    assert not torch.allclose(batched["w"][0], batched["w"][1])


def test_plain_nn_module_features_are_untouched_by_options():
    # an nn.Module like any other: moves, copies and saves with its options
    net = HyperNet(conditions=CONDITIONS, output_shapes=OUT, hidden_sizes=[4], residual=False, init="torch")
    copy = HyperNet(conditions=CONDITIONS, output_shapes=OUT, hidden_sizes=[4], residual=False, init="torch")
    copy.load_state_dict(net.state_dict())
    double = copy.double()
    out = double(task=torch.tensor([1, 2]), lr=torch.tensor([1e-3, 2e-3]))
    assert out["w"].dtype == torch.float64
    torch.testing.assert_close(
        out["w"].float(), net(task=torch.tensor([1, 2]), lr=torch.tensor([1e-3, 2e-3]))["w"], rtol=1e-5, atol=1e-6
    )
    assert isinstance(net.backbone[-1], nn.Linear) and net.backbone[-1].bias is not None

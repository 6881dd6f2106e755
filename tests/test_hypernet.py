"""HyperNet: shapes, batching, encodings, input checks, from_existing (bit for bit), initialisation, training,
and composability (hypernetized hypernetworks)."""

import warnings

import pytest
import torch
from torch import nn

from hyperlight import HyperNet, Hypernet, find_modules_of_type, hypernetize, unhypernetize
from hyperlight.hypernet import encode

OUT = {"w": (4, 3), "b": (4,)}


def test_alias_is_the_same_class():
    assert Hypernet is HyperNet


@pytest.mark.parametrize(
    "input_shapes, inputs, batch",
    [
        ({"h": (2,)}, {"h": torch.rand(2)}, None),
        ({"h": (2,)}, {"h": torch.rand(5, 2)}, 5),
        ({"t": ()}, {"t": torch.tensor(0.3)}, None),
        ({"t": ()}, {"t": 0.3}, None),  # a Python number is a scalar input
        ({"t": ()}, {"t": torch.rand(4)}, 4),
        ({"img": (2, 3)}, {"img": torch.rand(2, 3)}, None),
        ({"img": (2, 3)}, {"img": torch.rand(6, 2, 3)}, 6),
        ({"a": (3,), "t": ()}, {"a": torch.rand(3), "t": torch.rand(())}, None),
        ({"a": (3,), "t": ()}, {"t": torch.rand(2), "a": torch.rand(2, 3)}, 2),
        ({"a": (3,), "t": ()}, {"a": torch.rand(2, 3), "t": torch.tensor(0.5)}, 2),  # one batched, one shared
    ],
    ids=[
        "vector",
        "vector-batched",
        "scalar",
        "scalar-number",
        "scalar-batched",
        "matrix",
        "matrix-batched",
        "mixed",
        "mixed-batched",
        "mixed-broadcast",
    ],
)
@pytest.mark.parametrize("encoding", ["cos|sin", "z|1-z", None])
def test_output_shapes_follow_the_input_batch(input_shapes, inputs, batch, encoding):
    net = HyperNet(input_shapes, OUT, hidden_sizes=[8], encoding=encoding)
    out = net(**inputs)
    lead = () if batch is None else (batch,)
    assert list(out) == list(OUT)
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (*lead, *s) for k, s in OUT.items()}
    if batch:  # row b is what the unbatched input b gives
        one = {k: (v[1] if torch.is_tensor(v) and v.dim() > len(input_shapes[k]) else v) for k, v in inputs.items()}
        for name, value in net(**one).items():
            torch.testing.assert_close(out[name][1], value)


def test_encodings():
    x = torch.tensor([0.0, 0.25, 1.0])
    angle = x * torch.pi / 2
    torch.testing.assert_close(encode(x, "cos|sin"), torch.cat([torch.cos(angle), torch.sin(angle)]))
    assert torch.equal(encode(x, "z|1-z"), torch.tensor([0.0, 0.25, 1.0, 1.0, 0.75, 0.0]))
    assert encode(x, None) is x
    # cos|sin puts every input on the unit circle: constant norm
    e = encode(torch.rand(10, 1), "cos|sin")
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(10))
    # the first layer's fan-in follows the encoding
    assert HyperNet({"h": (3,)}, OUT, [5]).backbone[0].in_features == 6
    assert HyperNet({"h": (3,)}, OUT, [5], encoding=None).backbone[0].in_features == 3


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"encoding": "sin"}, ValueError, r"encoding must be one of \['cos\|sin', 'z\|1-z', None\], got 'sin'"),
        ({"layer_sizes": [8]}, TypeError, "unexpected keyword argument 'layer_sizes'; did you mean hidden_sizes="),
        ({"width": 8}, TypeError, "unexpected keyword argument 'width'"),
        ({"hidden_sizes": [8, 0]}, ValueError, r"hidden_sizes must hold positive ints, got \[8, 0\]"),
        ({"delta_init": "xavier"}, ValueError, "delta_init must be 'paper' or 'zero', got 'xavier'"),
        ({"activation": "Nope"}, ValueError, "activation must name a torch.nn activation class"),
        ({"input_shapes": {}}, TypeError, "input_shapes must be a non-empty dict"),
        ({"output_shapes": {"w": (-1,)}}, ValueError, r"output_shapes\['w'\] must hold non-negative ints"),
    ],
)
def test_invalid_construction(kwargs, error, message):
    args = {"input_shapes": {"h": (2,)}, "output_shapes": OUT, **kwargs}
    with pytest.raises(error, match=message):
        HyperNet(**args)


@pytest.mark.parametrize(
    "inputs, error, message",
    [
        ({}, TypeError, r"expects inputs \['a', 'b'\] as keyword arguments; missing \['a', 'b'\], unexpected \[\]"),
        ({"a": torch.rand(2)}, TypeError, r"missing \['b'\], unexpected \[\]"),
        ({"a": torch.rand(2), "b": torch.rand(()), "c": 1.0}, TypeError, r"missing \[\], unexpected \['c'\]"),
        (
            {"a": torch.rand(3), "b": torch.rand(())},
            ValueError,
            r"wrong shape for input 'a': expected \(2,\) or \(B, \*\(2,\)\), got \(3,\)",
        ),
        (
            {"a": torch.rand(4, 2), "b": torch.rand(3)},
            ValueError,
            r"inputs have different batch sizes: 4 and 3 \('b'\)",
        ),
    ],
    ids=["none", "missing", "extra", "shape", "batch"],
)
def test_invalid_inputs(inputs, error, message):
    net = HyperNet({"a": (2,), "b": ()}, OUT, [4])
    with pytest.raises(error, match=message):
        net(**inputs)


def test_out_of_range_inputs_warn_once_per_instance():
    net, other = HyperNet({"h": (2,)}, OUT, [4]), HyperNet({"h": (2,)}, OUT, [4])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        net(h=torch.rand(2))  # in range: no warning
        assert record == []
        net(h=torch.tensor([0.5, 1.5]))
        net(h=torch.tensor([-0.5, 0.5]))
        other(h=torch.tensor([2.0, 0.0]))
    assert len(record) == 2 and all(issubclass(w.category, UserWarning) for w in record)
    assert "HyperNet input outside [0, 1] for encoding 'cos|sin' (in h)" in str(record[0].message)

    quiet = HyperNet({"h": (2,)}, OUT, [4], encoding=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet(h=torch.tensor([5.0, -5.0]))  # no encoding, no range to leave
    with pytest.warns(UserWarning, match="encoding 'z|1-z'"):
        HyperNet({"h": (2,)}, OUT, [4], encoding="z|1-z")(h=torch.tensor([3.0, 0.0]))


# -- θ0 and Δθ -----------------------------------------------------------------------------------------------


def test_delta_init_paper_moves_away_from_theta0_and_depends_on_input():
    net = HyperNet({"h": (3,)}, OUT, [16, 16])
    theta0 = net.get_independent_weights()
    a, b = net(h=torch.rand(3)), net(h=torch.rand(3))
    for name in OUT:
        assert not torch.allclose(a[name], theta0[name])
        assert not torch.allclose(a[name], b[name])


def test_delta_init_zero_outputs_theta0_for_every_input():
    net = HyperNet({"h": (3,)}, OUT, [16], delta_init="zero")
    theta0 = net.get_independent_weights()
    out = net(h=torch.rand(7, 3))
    for name in OUT:
        assert torch.equal(out[name], theta0[name].expand_as(out[name]))


def test_theta0_initial_values_by_kind():
    shapes = {
        "conv.weight": (8, 3, 3, 3),
        "conv.bias": (8,),
        "norm.weight": (8,),
        "norm.bias": (8,),
        "out.weight": (2, 8),
        "empty.weight": (0, 4),
        "lora_A": (2, 8),
        "lora_B": (8, 2),
    }
    net = HyperNet({"h": (1,)}, shapes, [4])
    theta0 = net.get_independent_weights()
    assert {k: tuple(v.shape) for k, v in theta0.items()} == shapes
    assert torch.equal(theta0["norm.weight"], torch.ones(8))
    for name in ("conv.bias", "norm.bias", "lora_B"):
        assert torch.equal(theta0[name], torch.zeros(shapes[name]))
    for name in ("conv.weight", "out.weight", "lora_A"):
        assert theta0[name].std() > 0
    # Kaiming (fan_in) scale for weights
    assert 0.3 < theta0["conv.weight"].std().item() * (27**0.5) / (2**0.5) < 3


def test_training_moves_every_part():
    net = HyperNet({"h": (2,)}, OUT, [8, 8], delta_init="zero")
    before = net(h=torch.rand(2))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    target = {k: torch.randn(s) for k, s in OUT.items()}

    def step():
        opt.zero_grad()
        h = torch.rand(4, 2)
        out = net(h=h)
        # a toy objective that depends on h: predict h[0] * target
        loss = sum(((out[k] - h[:, 0].reshape(-1, *[1] * len(s)) * target[k]) ** 2).sum() for k, s in OUT.items())
        loss.backward()
        opt.step()

    step()
    # after one step from Δθ = 0 the outputs moved and depend on the input
    x, y = torch.tensor([0.1, 0.9]), torch.tensor([0.8, 0.2])
    after_x, after_y = net(h=x), net(h=y)
    for name in OUT:
        assert not torch.equal(after_x[name], before[name])
        assert not torch.allclose(after_x[name], after_y[name])
    step()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# -- from_existing ---------------------------------------------------------------------------------------------


def test_from_existing_is_bit_for_bit_regardless_of_dict_order():
    weights = {"out.bias": torch.randn(3), "conv.weight": torch.randn(4, 2, 3, 3), "norm.weight": torch.rand(4) + 0.5}
    net = HyperNet.from_existing(weights, input_shapes={"h": (5,)}, hidden_sizes=[16, 32])
    assert list(net.output_shapes) == list(weights)  # order follows the dict
    for h in (torch.rand(5), torch.rand(9, 5), torch.zeros(5), torch.ones(5)):
        out = net(h=h)
        for name, w in weights.items():
            assert torch.equal(out[name], w.expand_as(out[name])), name

    shapes = {"conv.weight": (4, 2, 3, 3), "norm.weight": (4,), "out.bias": (3,)}
    ordered = HyperNet.from_existing(weights, input_shapes={"h": (5,)}, output_shapes=shapes, hidden_sizes=[8])
    assert list(ordered.output_shapes) == list(shapes) and list(ordered(h=torch.rand(5))) == list(shapes)
    out = ordered(h=torch.rand(2, 5))
    assert all(torch.equal(out[n], weights[n].expand_as(out[n])) for n in weights)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_from_existing_keeps_the_weights_dtype(dtype):
    weights = {"w": torch.randn(4, 3).to(dtype), "b": torch.randn(4).to(dtype)}
    net = HyperNet.from_existing(weights, {"h": (2,)}, [8])
    out = net(h=torch.rand(3, 2))
    for name, w in weights.items():
        assert out[name].dtype == dtype
        assert torch.equal(out[name], w.expand_as(out[name]))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"output_shapes": {"w": (4, 3)}},
            ValueError,
            r"output_shapes and weights disagree: missing weights \[\], "
            r"extra \['b'\]",
        ),
        ({"output_shapes": {"w": (4, 3), "b": (4,), "c": (1,)}}, ValueError, r"missing weights \['c'\]"),
        (
            {"output_shapes": {"w": (3, 4), "b": (4,)}},
            ValueError,
            r"shape mismatch for 'w': output_shapes says \(3, 4\), weight is \(4, 3\)",
        ),
        ({"layer_sizes": [8]}, TypeError, "did you mean hidden_sizes="),
        ({"weights": {}}, TypeError, "weights must be a non-empty dict"),
    ],
)
def test_from_existing_rejects(kwargs, error, message):
    args = {"weights": {"w": torch.randn(4, 3), "b": torch.randn(4)}, "input_shapes": {"h": (2,)}, **kwargs}
    with pytest.raises(error, match=message):
        HyperNet.from_existing(**args)


def test_set_and_get_independent_weights():
    net = HyperNet({"h": (1,)}, OUT, [4], delta_init="zero")
    weights = {"b": torch.randn(4), "w": torch.randn(4, 3)}
    net.set_independent_weights(weights)
    assert all(torch.equal(net.get_independent_weights()[k], v) for k, v in weights.items())
    with pytest.raises(ValueError, match=r"weights must match output_shapes: missing \['b'\], unexpected \[\]"):
        net.set_independent_weights({"w": torch.zeros(4, 3)})
    with pytest.raises(ValueError, match=r"shape mismatch for 'b': expected \(4,\), got \(5,\)"):
        net.set_independent_weights({"w": torch.zeros(4, 3), "b": torch.zeros(5)})


# -- composability ------------------------------------------------------------------------------------------------


def test_hypernetized_hypernet_driven_by_an_outer_hypernet():
    inner = HyperNet({"h": (2,)}, OUT, [6])
    reference = {k: v.detach() for k, v in inner(h=torch.tensor([0.2, 0.7])).items()}
    inner, values = hypernetize(inner, modules=[inner.backbone], return_values=True)
    assert type(inner).__name__ == "HypernetizedHyperNet"
    assert list(inner.external_shapes()) == ["backbone.0.weight", "backbone.0.bias", "backbone.2.weight"]
    with inner.using_externals(values):  # its own values reproduce it
        out = inner(h=torch.tensor([0.2, 0.7]))
        assert all(torch.equal(out[k], reference[k]) for k in OUT)

    outer = HyperNet.from_existing(values, input_shapes={"g": ()}, hidden_sizes=[4])
    g = torch.rand(3)
    with inner.using_externals(outer(g=g)):  # per-example inner weights, one set per g
        batched = inner(h=torch.rand(3, 2))
    assert {k: tuple(v.shape) for k, v in batched.items()} == {"w": (3, 4, 3), "b": (3, 4)}

    plain = unhypernetize(inner)  # and back to a plain HyperNet
    assert type(plain) is HyperNet and list(plain.state_dict())[:2] == ["theta0", "backbone.0.weight"]
    out = plain(h=torch.tensor([0.2, 0.7]))
    assert all(torch.equal(out[k], reference[k]) for k in OUT)


def test_two_level_chain_backpropagates_to_the_outer_net():
    # outer HyperNet -> (hypernetized) inner HyperNet -> (hypernetized) main network
    main = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    main = hypernetize(main, modules=find_modules_of_type(main, nn.Linear))
    inner = HyperNet({"h": (2,)}, main.external_shapes(), [8])
    inner = hypernetize(inner, modules=[inner.backbone])
    outer = HyperNet({"g": (1,)}, inner.external_shapes(), [4])

    g, h, x = torch.rand(5, 1), torch.rand(5, 2), torch.randn(5, 3)
    with inner.using_externals(outer(g=g)):
        with main.using_externals(inner(h=h)):
            y = main(x)
    assert y.shape == (5, 1)
    y.square().mean().backward()
    for name, p in outer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert list(inner.parameters()) == [inner.theta0] and inner.theta0.grad.abs().sum() > 0
    # per-example all the way down: example 0 alone gives the same output
    with inner.using_externals(outer(g=g[:1])):
        with main.using_externals(inner(h=h[:1])):
            torch.testing.assert_close(main(x[:1]), y[:1].detach(), atol=1e-5, rtol=0)


def test_per_example_theta0_runs_the_hypernet_through_the_vmap_fallback():
    inner = HyperNet({"h": (2,)}, OUT, [6])
    reference = HyperNet({"h": (2,)}, OUT, [6])
    reference.load_state_dict(inner.state_dict())
    inner, values = hypernetize(inner, parameters=[inner.theta0], return_values=True)
    theta0 = values["theta0"] + torch.randn(3, *values["theta0"].shape)
    h = torch.rand(3, 2)
    with inner.using_externals(theta0=theta0):
        out = inner(h=h)
    for b in range(3):
        with torch.no_grad():
            reference.theta0.copy_(theta0[b])
        for name, value in reference(h=h[b]).items():
            torch.testing.assert_close(out[name][b], value, atol=1e-5, rtol=0)

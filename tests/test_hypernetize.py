"""hypernetize / hypernetize_single / unhypernetize: selection, per-example forwards, low rank, the way back,
and persistence (deepcopy, pickle, torch.save, state_dict)."""

import copy
import io
import pickle
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.func import functional_call

from hyperlight import (
    HyperModule,
    UninitializedExternalError,
    find_modules_of_type,
    find_parameters_from_patterns,
    hypernetize,
    hypernetize_single,
    unhypernetize,
)


def close(a, b, atol=1e-5):
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


class Gain(nn.Module):
    """A user module with a parameter and no batched kernel; it needs the batch dimension (flatten(1))."""

    def __init__(self, size: int = 6) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.randn(size))

    def forward(self, x):
        return x.flatten(1) * self.gain


class Block(nn.Module):
    """A user module with its own parameter and a child layer."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(4))
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return torch.tanh(self.lin(x)) * self.scale


def spec_sequential(channels: int = 128) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            {
                "conv": nn.Conv2d(3, channels, 3),
                "norm": nn.BatchNorm2d(channels),
                "relu": nn.ReLU(),
                "pool": nn.AdaptiveAvgPool2d((1, 1)),
                "flat": nn.Flatten(),
                "out": nn.Linear(channels, 10),
            }
        )
    )


def randomize_stats(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def per_example(values: dict, batch: int) -> dict:
    return {name: v + 0.1 * torch.randn(batch, *v.shape) for name, v in values.items()}


def looped(reference: nn.Module, values: dict, x: torch.Tensor) -> torch.Tensor:
    """Example b alone (a batch of one) through the original model with its own values."""
    return torch.cat(
        [functional_call(reference, {n: v[b] for n, v in values.items()}, (x[b : b + 1],)) for b in range(x.shape[0])]
    )


# -- the spec's examples -------------------------------------------------------------------------------


def test_spec_linear_example():
    layer = nn.Linear(in_features=8, out_features=16)
    weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    layer = hypernetize(layer, parameters=[layer.weight, layer.bias])
    assert repr(layer) == "HypernetizedLinear()"
    assert layer.external_shapes() == {"weight": (16, 8), "bias": (16,)}
    assert isinstance(layer, nn.Linear) and isinstance(layer, HyperModule)
    assert list(layer.parameters()) == []
    x = torch.randn(2, 8)
    with layer.using_externals(weight=weight, bias=bias):
        assert torch.equal(layer(x), x @ weight.T + bias)
        assert repr(layer) == "HypernetizedLinear(in_features=8, out_features=16, bias=True)"


def test_spec_sequential_example():
    model = spec_sequential()
    model = hypernetize(model, modules=[model.conv, model.out])
    assert model.external_shapes() == {
        "conv.weight": (128, 3, 3, 3),
        "conv.bias": (128,),
        "out.weight": (10, 128),
        "out.bias": (10,),
    }
    assert type(model).__name__ == "HypernetizedSequential"
    assert type(model.norm) is nn.BatchNorm2d  # the rest is untouched
    assert [n for n, _ in model.named_parameters()] == ["norm.weight", "norm.bias"]


def test_pretrained_values_reproduce_the_model_and_per_example_equals_loop():
    reference = randomize_stats(spec_sequential(channels=6))
    model, values = hypernetize(reference, modules=[reference.conv, reference.out], return_values=True, inplace=False)
    assert list(values) == list(model.external_shapes())
    x = torch.randn(3, 3, 6, 6)
    with model.using_externals(values):
        assert torch.equal(model(x), reference(x))
    batched = per_example(values, batch=3)
    with model.using_externals(batched):
        close(model(x), looped(reference, batched, x))


# -- selection -------------------------------------------------------------------------------------------


def test_container_selects_everything_below_it():
    model = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)))
    hypernetize(model, modules=[model[1]])
    assert model.external_shapes() == {"1.0.weight": (4, 4), "1.0.bias": (4,), "1.1.weight": (4,), "1.1.bias": (4,)}
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias"]


def test_a_single_module_selects_the_whole_model():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    hypernetize(model, modules=model)
    assert list(model.external_shapes()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert list(model.parameters()) == []


def test_module_used_twice_converts_once_and_works():
    shared = nn.Linear(4, 4)
    reference = nn.Sequential(shared, nn.Tanh(), shared)
    model, values = hypernetize(reference, modules=[shared], return_values=True, inplace=False)
    assert model.external_shapes() == {"0.weight": (4, 4), "0.bias": (4,)}
    assert model[0] is model[2] and type(model[2]).__name__ == "HypernetizedLinear"
    x = torch.randn(3, 4)
    with model.using_externals(values):
        assert torch.equal(model(x), reference(x))
    batched = per_example(values, batch=3)
    with model.using_externals(batched):
        close(model(x), looped(reference, batched, x))


def test_root_level_parameters():
    reference = nn.Linear(5, 3)
    model, values = hypernetize(reference, parameters=[reference.weight], return_values=True, inplace=False)
    assert model.external_shapes() == {"weight": (3, 5)}
    assert [n for n, _ in model.named_parameters()] == ["bias"]
    x = torch.randn(2, 5)
    with model.using_externals(values):
        assert torch.equal(model(x), reference(x))
    weights = torch.randn(2, 3, 5)
    with model.using_externals(weight=weights):
        close(model(x), looped(reference, {"weight": weights}, x))


@pytest.mark.parametrize(
    "select",
    [
        lambda m: {"modules": find_modules_of_type(m, nn.Linear)},
        lambda m: {"modules": list(find_modules_of_type(m, nn.Linear).items())},  # (name, module) pairs
        lambda m: {"parameters": find_parameters_from_patterns(m, globs=["*.weight", "*.bias"])},
        lambda m: {"modules": [m[0]], "parameters": [m[2].weight, m[2].bias]},
    ],
    ids=["find-dict", "pairs", "param-dict", "modules-and-parameters"],
)
def test_selection_forms(select):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    hypernetize(model, **select(model))
    assert list(model.external_shapes()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def _twice_by_module():
    model = nn.Sequential(nn.Linear(3, 4))
    hypernetize(model, modules=[model[0]])
    return model, {"modules": [model[0]]}


def _twice_by_parameter():
    model = nn.Sequential(nn.Linear(3, 4))
    weight = model[0].weight
    hypernetize(model, parameters=[weight])
    return model, {"parameters": [weight]}


def _twice_low_rank():
    model = nn.Sequential(nn.Linear(3, 4))
    hypernetize(model, modules=[model[0]], rank=2)
    return model, {"modules": [model[0]], "rank": 2}


def _full_after_low_rank():
    model = nn.Sequential(nn.Linear(3, 4))
    hypernetize(model, modules=[model[0]], rank=2)
    return model, {"modules": [model[0]]}


def _low_rank_after_full():
    model = nn.Sequential(nn.Linear(3, 4))
    hypernetize(model, parameters=[model[0].bias])
    return model, {"modules": [model[0]], "rank": 2}


def _small():
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.LayerNorm(4))


SELECT_ERRORS = [
    ("nothing", lambda: (_small(), {}), ValueError, r"nothing to hypernetize: pass modules=\[...\]"),
    ("empty list", lambda: (_small(), {"modules": []}), ValueError, "nothing to hypernetize"),
    (
        "no parameters",
        lambda: ((m := _small()), {"modules": [m[1]]}),
        ValueError,
        "ReLU given in modules= has no parameters to hypernetize",
    ),
    (
        "foreign module",
        lambda: (_small(), {"modules": [nn.Linear(3, 4)]}),
        ValueError,
        "Linear given in modules= is not part of the model being hypernetized",
    ),
    (
        "foreign parameter",
        lambda: (_small(), {"parameters": [nn.Parameter(torch.zeros(2, 2))]}),
        ValueError,
        r"a parameter of shape \(2, 2\) given in parameters= is not a parameter of the model",
    ),
    (
        "string parameter",
        lambda: (_small(), {"parameters": ["0.weight"]}),
        TypeError,
        "got the string '0.weight'; use hypernetize_single",
    ),
    ("non-module", lambda: (_small(), {"modules": ["0"]}), TypeError, "modules must hold nn.Module objects, got str"),
    (
        "twice by module",
        _twice_by_module,
        ValueError,
        "already hypernetized .* a parameter can only be hypernetized once",
    ),
    ("twice by parameter", _twice_by_parameter, ValueError, "a parameter can only be hypernetized once"),
    ("twice low rank", _twice_low_rank, ValueError, "'0' already has low-rank externals"),
    ("full after low rank", _full_after_low_rank, ValueError, "'0' already has low-rank externals"),
    ("low rank after full", _low_rank_after_full, ValueError, "'0' already has full externals"),
    (
        "rank on a model with a norm",
        lambda: ((m := nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))), {"modules": [m], "rank": 2}),
        TypeError,
        "got LayerNorm at '1'",
    ),
    ("rank 0", lambda: ((m := _small()), {"modules": [m[0]], "rank": 0}), ValueError, "rank must be a positive int"),
    (
        "dropout",
        lambda: ((m := _small()), {"modules": [m[0]], "rank": 2, "dropout": 1.0}),
        ValueError,
        r"dropout must be in \[0, 1\)",
    ),
    (
        "rank on a norm",
        lambda: ((m := _small()), {"modules": [m], "rank": 2}),
        TypeError,
        "low-rank externals need a linear-like layer .* got LayerNorm at '2'",
    ),
    (
        "rank without weight",
        lambda: ((m := _small()), {"parameters": [m[0].bias], "rank": 2}),
        ValueError,
        "low-rank externals attach to a layer's weight; '0' was selected without it",
    ),
]


@pytest.mark.parametrize("build, error, message", [c[1:] for c in SELECT_ERRORS], ids=[c[0] for c in SELECT_ERRORS])
def test_hypernetize_rejects(build, error, message):
    model, kwargs = build()
    classes = [type(m) for m in model.modules()]
    shapes = model.external_shapes() if isinstance(model, HyperModule) else {}
    with pytest.raises(error, match=message):
        hypernetize(model, **kwargs)
    # a rejected call leaves the model as it was
    assert [type(m) for m in model.modules()] == classes
    assert (model.external_shapes() if isinstance(model, HyperModule) else {}) == shapes


def test_hypernetize_rejects_a_non_module():
    with pytest.raises(TypeError, match="model must be an nn.Module, got dict"):
        hypernetize({}, modules=[])


def test_inplace_false_leaves_the_original_untouched():
    model = spec_sequential(channels=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    classes = [type(m) for m in model.modules()]
    converted = hypernetize(model, modules=[model.conv, model.out], inplace=False)
    assert converted is not model
    assert [type(m) for m in model.modules()] == classes
    assert list(model.state_dict()) == list(before)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert not isinstance(model, HyperModule)
    assert list(converted.external_shapes()) == ["conv.weight", "conv.bias", "out.weight", "out.bias"]


# -- hypernetize_single ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "select, expected",
    [
        (lambda b: None, ["scale"]),  # all of its own parameters, not its children's
        (lambda b: ["scale"], ["scale"]),
        (lambda b: [b.scale], ["scale"]),
        (lambda b: {"scale": b.scale}, ["scale"]),
    ],
    ids=["default", "names", "objects", "dict"],
)
def test_hypernetize_single(select, expected):
    block = Block()
    scale = block.scale.detach().clone()
    block, values = hypernetize_single(block, select(block), return_values=True)
    assert list(block.external_shapes()) == expected
    assert [n for n, _ in block.named_parameters()] == ["lin.weight", "lin.bias"]
    assert torch.equal(values["scale"], scale)


def test_hypernetize_single_by_name_on_linear():
    layer = hypernetize_single(nn.Linear(8, 16), ["weight"])
    assert layer.external_shapes() == {"weight": (16, 8)}
    layer = nn.Linear(8, 16)
    layer = hypernetize_single(layer, [layer.bias, layer.weight])
    assert layer.external_shapes() == {"bias": (16,), "weight": (16, 8)}


def test_hypernetize_single_rejects():
    layer = nn.Linear(3, 2)
    with pytest.raises(KeyError, match=r"Linear has no parameter 'kernel'; it has \['weight', 'bias'\]"):
        hypernetize_single(layer, ["kernel"])
    with pytest.raises(ValueError, match="a parameter given is not one of Linear's own"):
        hypernetize_single(layer, [nn.Parameter(torch.zeros(2, 3))])
    hypernetize_single(layer)
    with pytest.raises(ValueError, match="nothing to hypernetize: HypernetizedLinear has no parameters of its own"):
        hypernetize_single(layer)
    with pytest.raises(TypeError, match="module must be an nn.Module"):
        hypernetize_single("layer")


# -- per-example forwards of modules without a batched kernel (vmap fallback) ----------------------------------

GENERIC = [
    ("layernorm", lambda: nn.LayerNorm(6), (3, 2, 6)),
    ("batchnorm-eval", lambda: randomize_stats(nn.BatchNorm2d(4)), (3, 4, 3, 3)),
    ("batchnorm1d-eval", lambda: randomize_stats(nn.BatchNorm1d(4)), (3, 4)),
    ("groupnorm", lambda: nn.GroupNorm(2, 4), (3, 4, 5)),
    ("custom", lambda: Gain(6), (3, 2, 3)),
    ("custom-with-child", lambda: Block(), (3, 5, 4)),
]


@pytest.mark.parametrize("build, in_shape", [c[1:] for c in GENERIC], ids=[c[0] for c in GENERIC])
def test_generic_modules_per_example(build, in_shape):
    reference = build()
    model, values = hypernetize(reference, modules=[reference], return_values=True, inplace=False)
    if not list(model.children()):
        assert type(model)._hl_batched is None  # no batched kernel: this is the vmap fallback
    x = torch.randn(in_shape)
    with model.using_externals(values):
        assert torch.equal(model(x), reference(x))
    batched = per_example(values, batch=in_shape[0])
    with model.using_externals(batched):
        y = model(x)
    close(y, looped(reference, batched, x))
    # gradients through the vmap equal the looped ones
    leaves = {n: v.requires_grad_() for n, v in batched.items()}
    with model.using_externals(leaves):
        y = model(x)
    g = torch.randn_like(y)
    grads = torch.autograd.grad((y * g).sum(), list(leaves.values()))
    ref_grads = torch.autograd.grad((looped(reference, leaves, x) * g).sum(), list(leaves.values()))
    for got, want in zip(grads, ref_grads):
        close(got, want)


BATCHED_KERNELS = [
    ("embedding", lambda: nn.Embedding(7, 3, padding_idx=0), lambda: torch.randint(0, 7, (3, 5))),
    ("conv1d-circular", lambda: nn.Conv1d(2, 4, 3, padding=1, padding_mode="circular"), lambda: torch.randn(3, 2, 6)),
    ("conv3d", lambda: nn.Conv3d(2, 2, 2), lambda: torch.randn(3, 2, 3, 3, 3)),
    ("linear-subclass", lambda: nn.modules.linear.NonDynamicallyQuantizableLinear(4, 2), lambda: torch.randn(3, 4)),
]


@pytest.mark.parametrize("build, make_input", [c[1:] for c in BATCHED_KERNELS], ids=[c[0] for c in BATCHED_KERNELS])
def test_torch_layers_use_their_batched_kernel(build, make_input):
    reference = build()
    model, values = hypernetize(reference, modules=[reference], return_values=True, inplace=False)
    assert type(model)._hl_batched is not None
    x = make_input()
    with model.using_externals(values):
        assert torch.equal(model(x), reference(x))
    batched = per_example(values, batch=3)
    with model.using_externals(batched):
        close(model(x), looped(reference, batched, x))


def test_expanded_input_batch_shares_each_examples_values():
    """An input batch k·B (beam search, num_return_sequences) gives rows b·k … b·k+k−1 the values of example b."""
    for reference, x in [
        (nn.Linear(4, 2), torch.randn(6, 4)),
        (Gain(6), torch.randn(6, 2, 3)),
        (nn.Conv2d(2, 3, 3), torch.randn(6, 2, 4, 4)),
    ]:
        model, values = hypernetize(reference, modules=[reference], return_values=True, inplace=False)
        batched = per_example(values, batch=3)
        with model.using_externals(batched):
            y = model(x)
        close(y, looped(reference, {n: v.repeat_interleave(2, 0) for n, v in batched.items()}, x))


def test_vmap_fallback_needs_a_batched_input():
    norm = nn.LayerNorm(4)
    model = hypernetize(norm, modules=[norm])
    model.set_externals(weight=torch.ones(3, 4), bias=torch.zeros(3, 4))
    with pytest.raises(
        ValueError,
        match="HypernetizedLayerNorm: per-example weights were given for a batch of 3, but the input has 2 rows",
    ):
        model(torch.randn(2, 4))


# -- low rank ----------------------------------------------------------------------------------------------


def test_low_rank_linear():
    r, alpha = 2, 6.0
    base = nn.Linear(6, 5)
    model, values = hypernetize(base, modules=[base], rank=r, alpha=alpha, return_values=True, inplace=False)
    assert type(model).__name__ == "LowRankLinear"
    assert model.external_shapes() == {"lora_A": (r, 6), "lora_B": (5, r)}
    assert [n for n, _ in model.named_parameters()] == ["weight", "bias"]  # the base weight stays
    assert torch.equal(values["lora_B"], torch.zeros(5, r)) and values["lora_A"].abs().sum() > 0
    x = torch.randn(4, 3, 6)
    with model.using_externals(values):
        assert torch.equal(model(x), base(x))  # identity at init

    a, b = torch.randn(r, 6), torch.randn(5, r)
    with model.using_externals(lora_A=a, lora_B=b):
        close(model(x), base(x) + (alpha / r) * (x @ a.T) @ b.T)

    a_b, b_b = torch.randn(4, r, 6), torch.randn(4, 5, r)
    with model.using_externals(lora_A=a_b, lora_B=b_b):
        y = model(x)
    close(y, torch.stack([base(x[i]) + (alpha / r) * (x[i] @ a_b[i].T) @ b_b[i].T for i in range(4)]))
    with model.using_externals(lora_A=a, lora_B=b_b):  # one factor shared, the other per example
        close(model(x), torch.stack([base(x[i]) + (alpha / r) * (x[i] @ a.T) @ b_b[i].T for i in range(4)]))


def test_low_rank_default_alpha_and_in_a_model():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    reference = copy.deepcopy(model)
    model, values = hypernetize(model, modules=find_modules_of_type(model, nn.Linear), rank=3, return_values=True)
    assert model.external_shapes() == {"0.lora_A": (3, 4), "0.lora_B": (8, 3), "2.lora_A": (3, 8), "2.lora_B": (3, 3)}
    x = torch.randn(2, 4)
    with model.using_externals(values):
        assert torch.equal(model(x), reference(x))
    factors = {n: torch.randn(v.shape) for n, v in values.items()}
    with model.using_externals(factors):
        h = torch.relu(reference[0](x) + x @ factors["0.lora_A"].T @ factors["0.lora_B"].T)  # s = alpha / r = 1
        close(model(x), reference[2](h) + h @ factors["2.lora_A"].T @ factors["2.lora_B"].T)


def test_low_rank_dropout_only_while_training():
    base = nn.Linear(8, 8)
    model = hypernetize(base, modules=[base], rank=4, dropout=0.5, inplace=False)
    factors = {"lora_A": torch.randn(4, 8), "lora_B": torch.randn(8, 4)}
    x = torch.randn(16, 8)
    with model.using_externals(factors):
        model.train()
        a, b = model(x), model(x)
        assert not torch.allclose(a, b)
        model.eval()
        close(model(x), base(x) + x @ factors["lora_A"].T @ factors["lora_B"].T)


def test_low_rank_fp32_factors_drive_a_bf16_layer():
    base = nn.Linear(8, 4).to(torch.bfloat16)
    model = hypernetize(base, modules=[base], rank=2, inplace=False)
    factors = {"lora_A": torch.randn(3, 2, 8), "lora_B": torch.randn(3, 4, 2)}  # fp32, per example
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    with model.using_externals(factors):
        y = model(x)
    assert y.dtype == torch.bfloat16
    expected = torch.stack(
        [base(x[i]).float() + x[i].float() @ factors["lora_A"][i].T @ factors["lora_B"][i].T for i in range(3)]
    )
    close(y.float(), expected, atol=0.1)


class TransposedLinear(nn.Module):
    """A GPT-2 `Conv1D`-like layer: weight stored (in, out)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out))
        self.bias = nn.Parameter(torch.randn(n_out))

    def forward(self, x):
        return x @ self.weight + self.bias


def test_register_linear_like_for_transposed_layers(monkeypatch):
    from hyperlight import register_linear_like
    from hyperlight.nn import hypernetized

    monkeypatch.setattr(hypernetized, "LINEAR_LIKE", dict(hypernetized.LINEAR_LIKE))  # keep the registry clean
    reference = TransposedLinear(6, 4)
    with pytest.raises(TypeError, match="low-rank externals need a linear-like layer"):
        hypernetize(reference, modules=[reference], rank=2, inplace=False)
    register_linear_like(
        TransposedLinear,
        in_features=lambda m: m.weight.shape[0],
        out_features=lambda m: m.weight.shape[1],
        transposed=True,
    )
    model = hypernetize(reference, modules=[reference], rank=2, alpha=4.0, inplace=False)
    assert model.external_shapes() == {"lora_A": (2, 6), "lora_B": (4, 2)}
    factors = {"lora_A": torch.randn(2, 6), "lora_B": torch.randn(4, 2)}
    x = torch.randn(5, 6)
    with model.using_externals(factors):
        expected = model(x)
    close(expected, reference(x) + 2.0 * x @ factors["lora_A"].T @ factors["lora_B"].T)
    merged = unhypernetize(model, factors)
    assert type(merged) is TransposedLinear and merged.weight.shape == (6, 4)
    close(merged(x), expected, atol=1e-4)


def test_externals_stay_set_for_gradient_checkpointing():
    """Non-reentrant checkpointing re-runs the forward during backward: the values must still be set there."""
    from torch.utils.checkpoint import checkpoint

    reference = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.LayerNorm(8), nn.Linear(8, 2))
    model, values = hypernetize(reference, modules=[reference[0], reference[2]], return_values=True, inplace=False)
    source = {n: v.expand(3, *v.shape).clone().requires_grad_() for n, v in values.items()}  # per example
    x = torch.randn(3, 4)
    grads = []
    for use_checkpoint in (False, True):
        model.set_externals(source)
        y = checkpoint(model, x, use_reentrant=False) if use_checkpoint else model(x)
        assert model.externals_are_set()  # a forward never resets
        grads.append(torch.autograd.grad(y.square().sum(), list(source.values())))
    for plain, checkpointed in zip(*grads):
        close(plain, checkpointed)


# -- unhypernetize ------------------------------------------------------------------------------------------


def test_unhypernetize_restores_pretrained_values_and_classes():
    reference = spec_sequential(channels=4)
    reference.out.bias.requires_grad_(False)
    classes = [type(m) for m in reference.modules()]
    model = hypernetize(reference, modules=[reference.conv, reference.out], inplace=False)
    plain = unhypernetize(model)
    assert plain is model
    assert [type(m) for m in plain.modules()] == classes
    assert list(plain.state_dict()) == list(reference.state_dict())
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in plain.state_dict().items())
    assert [(n, p.requires_grad) for n, p in plain.named_parameters()] == [
        (n, p.requires_grad) for n, p in reference.named_parameters()
    ]
    assert not any(isinstance(m, HyperModule) for m in plain.modules())
    assert repr(plain) == repr(reference)


def test_unhypernetize_partial_keeps_parameter_order():
    reference = nn.Linear(3, 2)
    model = hypernetize(reference, parameters=[reference.weight], inplace=False)
    plain = unhypernetize(model)
    assert type(plain) is nn.Linear and list(plain.state_dict()) == ["weight", "bias"]
    assert torch.equal(plain.weight, reference.weight)


def test_unhypernetize_bakes_given_values():
    reference = randomize_stats(spec_sequential(channels=4))
    model = hypernetize(reference, modules=[reference.conv, reference.out], inplace=False)
    values = {n: torch.randn(s) for n, s in model.external_shapes().items()}
    x = torch.randn(2, 3, 5, 5)
    with model.using_externals(values):
        expected = model(x)
    plain = unhypernetize(model, values, inplace=False)
    assert isinstance(model, HyperModule) and type(plain) is nn.Sequential  # inplace=False kept the model
    assert torch.equal(plain(x), expected)
    assert torch.equal(plain.out.weight, values["out.weight"])


def test_unhypernetize_low_rank():
    reference = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    model = hypernetize(reference, modules=[reference[0], reference[2]], rank=2, alpha=3.0, inplace=False)
    restored = unhypernetize(model, inplace=False)  # no values: weights unchanged
    assert [type(m) for m in restored.modules()] == [type(m) for m in reference.modules()]
    assert list(restored.state_dict()) == list(reference.state_dict())
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in restored.state_dict().items())

    factors = {n: torch.randn(s) for n, s in model.external_shapes().items()}
    x = torch.randn(5, 4)
    with model.using_externals(factors):
        expected = model(x)
    merged = unhypernetize(model, factors)
    assert type(merged[0]) is nn.Linear and "lora_scaling" not in merged[0].__dict__
    close(merged(x), expected, atol=1e-4)
    delta = 1.5 * factors["0.lora_B"] @ factors["0.lora_A"]
    close(merged[0].weight, reference[0].weight + delta)


def _with_externals():
    reference = nn.Sequential(nn.Linear(3, 2))
    return hypernetize(reference, modules=[reference[0]], inplace=False)


UNHYPERNETIZE_ERRORS = [
    ("plain model", lambda: (nn.Linear(2, 2), {}), TypeError, "expected a hypernetized model"),
    (
        "unknown",
        lambda: (_with_externals(), {"values": {"0.kernel": torch.zeros(1)}}),
        KeyError,
        r"values for unknown externals \['0.kernel'\]",
    ),
    (
        "per example",
        lambda: (_with_externals(), {"values": {"0.bias": torch.zeros(4, 2)}}),
        ValueError,
        r"shape mismatch for '0.bias': expected \(2,\), got \(4, 2\) \(per-example values cannot be baked",
    ),
    (
        "no original",
        lambda: (
            (m := nn.Sequential(nn.Linear(3, 2))),
            {"model": hypernetize(m, modules=[m[0]], keep_original=False)},
        ),
        KeyError,
        "no value for '0.weight': pass it in values=, or hypernetize with keep_original=True",
    ),
    (
        "one factor",
        lambda: (
            (m := nn.Linear(3, 2)),
            {"model": hypernetize(m, modules=[m], rank=1), "values": {"lora_A": torch.zeros(1, 3)}},
        ),
        KeyError,
        "give both 'lora_A' and 'lora_B'",
    ),
]


@pytest.mark.parametrize(
    "build, error, message", [c[1:] for c in UNHYPERNETIZE_ERRORS], ids=[c[0] for c in UNHYPERNETIZE_ERRORS]
)
def test_unhypernetize_rejects(build, error, message):
    model, kwargs = build()
    model = kwargs.pop("model", model)
    with pytest.raises(error, match=message):
        unhypernetize(model, kwargs.get("values"))


# -- persistence --------------------------------------------------------------------------------------------


def _torch_round_trip(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


COPIES = [
    ("deepcopy", copy.deepcopy),
    ("pickle", lambda m: pickle.loads(pickle.dumps(m))),
    ("torch.save", _torch_round_trip),
]


def _models():
    full = randomize_stats(spec_sequential(channels=4))
    full = hypernetize(full, modules=[full.conv, full.out])
    low = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    low = hypernetize(low, modules=[low[0]], rank=2, alpha=5.0)
    gain = Gain(6)
    gain = hypernetize(gain, modules=[gain])
    return {
        "full": (full, (2, 3, 5, 5)),
        "low-rank": (low, (2, 4)),
        "custom": (gain, (2, 2, 3)),
    }


@pytest.mark.parametrize("kind", ["full", "low-rank", "custom"])
@pytest.mark.parametrize("how, copier", COPIES, ids=[c[0] for c in COPIES])
def test_copies_work_after_setting_the_same_externals(kind, how, copier):
    model, in_shape = _models()[kind]
    values = {n: torch.randn(2, *s) for n, s in model.external_shapes().items()}  # per example
    x = torch.randn(in_shape)
    model.set_externals(values)
    expected = model(x)
    clone = copier(model)
    assert type(clone) is type(model) and clone.external_shapes() == model.external_shapes()
    assert [type(m) for m in clone.modules()] == [type(m) for m in model.modules()]
    # copies carry the declarations, not the values
    with pytest.raises(UninitializedExternalError):
        clone(x)
    with clone.using_externals(values):
        assert torch.equal(clone(x), expected)
    assert torch.equal(model(x), expected)  # the original still holds its values
    restored = unhypernetize(clone)
    assert not any(isinstance(m, HyperModule) for m in restored.modules())


def test_deepcopy_while_set_to_non_leaf_values():
    """`best = copy.deepcopy(model)` after a training step: the values are outputs of a hypernetwork."""
    model, _ = _models()["full"]
    source = {n: torch.randn(s, requires_grad=True) for n, s in model.external_shapes().items()}
    model.set_externals({n: v * 2 for n, v in source.items()})  # non-leaf tensors
    clone = copy.deepcopy(model)
    assert clone.external_shapes() == model.external_shapes() and not clone.externals_are_set()


def test_state_dict_round_trip_into_a_fresh_twin():
    def build():
        model = spec_sequential(channels=4)
        return hypernetize(model, modules=[model.conv, model.out])

    model = build()
    randomize_stats(model)
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
    state = model.state_dict()
    assert not any(k.startswith(("conv.", "out.")) for k in state)  # externals and kept originals are not state
    twin = build().eval()
    twin.load_state_dict(state)
    values = {n: torch.randn(s) for n, s in model.external_shapes().items()}
    x = torch.randn(2, 3, 5, 5)
    with model.using_externals(values):
        expected = model(x)
    with twin.using_externals(values):
        assert torch.equal(twin(x), expected)

    low = nn.Sequential(nn.Linear(4, 6))
    low = hypernetize(low, modules=[low[0]], rank=2)
    low_twin = nn.Sequential(nn.Linear(4, 6))
    low_twin = hypernetize(low_twin, modules=[low_twin[0]], rank=2)
    low_twin.load_state_dict(low.state_dict())
    factors = {n: torch.randn(s) for n, s in low.external_shapes().items()}
    x = torch.randn(3, 4)
    with low.using_externals(factors), low_twin.using_externals(factors):
        assert torch.equal(low_twin(x), low(x))


def test_tied_parameters_share_one_original_and_come_back_tied():
    from hyperlight import hypernetize, unhypernetize

    embed = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = embed.weight  # tied, as in language models
    model = nn.Sequential(embed, head)
    model, values = hypernetize(model, parameters=[embed.weight], return_values=True)
    assert set(values) == {"0.weight", "1.weight"} and values["0.weight"] is values["1.weight"]
    plain = unhypernetize(model)
    assert plain[0].weight is plain[1].weight
    assert len(list(plain.parameters())) == 1
    # given one tensor for both, they are baked in tied as well
    model = hypernetize(plain, parameters=[plain[0].weight])
    shared = torch.randn(10, 4)
    plain = unhypernetize(model, {"0.weight": shared, "1.weight": shared})
    assert plain[0].weight is plain[1].weight and torch.equal(plain[0].weight, shared)

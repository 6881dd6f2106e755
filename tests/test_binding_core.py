"""Externals bound to a call: threads, nesting, captured bindings, explicit state, per-example plans.

Every result is compared with a reference computed independently of the binding machinery: plain
`torch.nn.functional` with the same tensors, example by example.
"""

import copy
import pickle
import re
import subprocess
import sys
import textwrap
import threading
from typing import Any, Callable, NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from hyperlight import (
    HyperConv2d,
    HyperEmbedding,
    HyperLinear,
    UninitializedExternalError,
    capture_externals,
    hypernetize,
    unhypernetize,
)
from hyperlight.nn.hypernetized import hypernetized_class

# -- the model most tests use: a hypernetized MLP, and its plain reference -------------------------------

SHAPES = {"0.weight": (8, 4), "0.bias": (8,), "2.weight": (3, 8), "2.bias": (3,)}


def mlp(**kwargs: Any) -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    return hypernetize(model, modules=[model[0], model[2]], **kwargs)


def mlp_values(batch=None, names=SHAPES, generator=None, requires_grad=False) -> dict[str, torch.Tensor]:
    """Random values for `names`; an int `batch` makes them per-example, a dict gives each name its own."""
    values = {}
    for name in names:
        b = batch.get(name) if isinstance(batch, dict) else batch
        lead = () if b is None else (b,)
        values[name] = torch.randn(*lead, *SHAPES[name], generator=generator, requires_grad=requires_grad)
    return values


def reference(values: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The MLP with plain F.linear; per-example values (a leading B) are applied one example at a time."""

    def one(v, xi):
        return F.linear(F.relu(F.linear(xi, v["0.weight"], v["0.bias"])), v["2.weight"], v["2.bias"])

    per_example = {n for n, v in values.items() if v.dim() > len(SHAPES[n])}
    if not per_example:
        return one(values, x)
    rows = [one({n: v[b] if n in per_example else v for n, v in values.items()}, x[b]) for b in range(len(x))]
    return torch.stack(rows)


@pytest.fixture
def often_switching():
    """Switch threads every few microseconds, so that a value leaking between threads shows up."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def run_threads(*targets: Callable[[], None]) -> None:
    """Start `targets` in threads, wait for them, and raise the first exception any of them raised."""
    errors: list[BaseException] = []

    def guarded(target):
        def run():
            try:
                target()
            except BaseException as error:  # re-raised in the main thread
                errors.append(error)

        return run

    threads = [threading.Thread(target=guarded(t)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    if errors:
        raise errors[0]


def no_values_left(model: nn.Module) -> bool:
    return not any(m.current_externals().values for m in model.modules() if hasattr(m, "current_externals"))


# -- 1. threads -----------------------------------------------------------------------------------------

BATCHES = [None, 3, {"0.weight": 3, "0.bias": 3}, {"2.weight": 3}]  # shared, per-example, and mixes of both


def test_threads_each_compute_with_their_own_values(often_switching):
    model, calls = mlp(), 50
    cases = []
    for i in range(8):
        g = torch.Generator().manual_seed(i)
        values, x = mlp_values(BATCHES[i % len(BATCHES)], generator=g), torch.randn(3, 4, generator=g)
        with model.using_externals(values):
            expected = model(x)  # single-threaded, before any thread starts
        torch.testing.assert_close(expected, reference(values, x))
        cases.append((values, x, expected))
    barrier = threading.Barrier(len(cases), timeout=30)
    wrong: list[tuple[int, int]] = []

    def worker(i):
        values, x, expected = cases[i]
        barrier.wait()
        for call in range(calls):
            with model.using_externals(values):
                y = model(x)
            if not torch.equal(y, expected):
                wrong.append((i, call))

    run_threads(*(lambda i=i: worker(i) for i in range(len(cases))))
    assert wrong == []
    assert no_values_left(model)


def test_threads_in_blocks_and_a_thread_on_the_explicit_values(often_switching):
    model, calls = mlp(), 30
    explicit, x_out = mlp_values(3), torch.randn(3, 4)
    inside = [(mlp_values(BATCHES[i]), torch.randn(3, 4)) for i in range(3)]
    inside.append((mlp_values(names=["0.weight"]), torch.randn(3, 4)))  # names one value: the others are explicit
    model.set_externals(explicit)  # single-threaded references first
    expected_out = model(x_out)
    torch.testing.assert_close(expected_out, reference(explicit, x_out))
    expected_in = []
    for values, x in inside:
        with model.using_externals(values):
            expected_in.append(model(x))
        torch.testing.assert_close(expected_in[-1], reference({**explicit, **values}, x))
    model.reset_externals()
    barrier = threading.Barrier(len(inside) + 1, timeout=30)
    wrong: list[tuple[int, int]] = []

    def holder():
        model.set_externals(explicit)  # before the barrier: every thread starts with the explicit values set
        barrier.wait()
        for call in range(calls):
            if not torch.equal(model(x_out), expected_out):
                wrong.append((-1, call))

    def worker(i):
        (values, x), expected = inside[i], expected_in[i]
        barrier.wait()
        for call in range(calls):
            with model.using_externals(values):
                if not torch.equal(model(x), expected):
                    wrong.append((i, call))

    run_threads(holder, *(lambda i=i: worker(i) for i in range(len(inside))))
    assert wrong == []
    assert all(m.current_externals().values for m in (model[0], model[2]))  # the explicit values stay


# -- 2. nesting -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("outer_batch, inner_batch", [(None, None), (None, 3), (3, None), (3, 3)])
def test_nested_block_computes_with_its_values_then_the_outer_ones_again(outer_batch, inner_batch):
    model, x = mlp(), torch.randn(3, 4)
    outer, inner = mlp_values(outer_batch), mlp_values(inner_batch)
    with model.using_externals(outer):
        before = model(x)
        with model.using_externals(inner):
            during = model(x)
        after = model(x)
    torch.testing.assert_close(before, reference(outer, x))
    torch.testing.assert_close(during, reference(inner, x))
    assert torch.equal(after, before)
    assert no_values_left(model)


@pytest.mark.parametrize("outer_batch, inner_batch", [(None, None), (None, 3), (3, None), (3, 3)])
def test_nested_block_keeps_the_outer_values_it_does_not_name(outer_batch, inner_batch):
    model, x = mlp(), torch.randn(3, 4)
    outer, inner = mlp_values(outer_batch), mlp_values(inner_batch, names=["0.weight"])
    with model.using_externals(outer):
        with model.using_externals(inner):
            during = model(x)
        after = model(x)
    torch.testing.assert_close(during, reference({**outer, **inner}, x))
    torch.testing.assert_close(after, reference(outer, x))


def test_a_hook_calling_the_model_under_other_values_leaves_the_outer_call_alone():
    model, x, x2 = mlp(), torch.randn(3, 4), torch.randn(2, 4)
    outer, other = mlp_values(3), mlp_values()
    nested: list[torch.Tensor] = []

    def hook(module, args, output):
        if not nested:  # the nested call runs this hook too: recurse once
            nested.append(torch.empty(0))
            with model.using_externals(other):
                nested[0] = model(x2)

    model[0].register_forward_hook(hook)
    with model.using_externals(outer):
        y = model(x)
    torch.testing.assert_close(y, reference(outer, x))
    torch.testing.assert_close(nested[0], reference(other, x2))
    assert no_values_left(model)


# -- 3. capture_externals -------------------------------------------------------------------------------


def test_captured_function_keeps_the_values_after_the_block_and_in_another_thread():
    model, x = mlp(), torch.randn(3, 4)
    values, explicit = mlp_values(3), mlp_values()
    with model.using_externals(values):
        later = capture_externals(model)
    with pytest.raises(UninitializedExternalError, match="'0.weight'"):
        model(x)  # the block has ended ...
    torch.testing.assert_close(later(x), reference(values, x))  # ... the captured values still apply
    model.set_externals(explicit)  # explicit values do not override the captured binding
    got: list[torch.Tensor] = []
    run_threads(lambda: got.append(later(x)))
    torch.testing.assert_close(got[0], reference(values, x))
    torch.testing.assert_close(model(x), reference(explicit, x))


def test_captured_function_keeps_the_explicit_values_of_the_moment_it_was_made():
    model, x = mlp(), torch.randn(3, 4)
    first, second = mlp_values(), mlp_values()
    model.set_externals(first)
    later = capture_externals(model)
    model.set_externals(second)
    torch.testing.assert_close(later(x), reference(first, x))


def test_checkpoint_of_explicit_values_recomputes_with_those_of_its_forward():
    model, x = mlp(), torch.randn(3, 4)
    first, second = mlp_values(requires_grad=True), mlp_values(requires_grad=True)
    model.set_externals(first)
    out = checkpoint(capture_externals(model), x, use_reentrant=False)
    model.set_externals(second)  # changed between the forward and its recompute during backward
    out.square().sum().backward()
    want = torch.autograd.grad(reference(first, x).square().sum(), list(first.values()))
    for (name, value), grad in zip(first.items(), want):
        torch.testing.assert_close(value.grad, grad, atol=1e-6, rtol=1e-6, msg=name)
    assert all(value.grad is None for value in second.values())


def _checkpointed_grads(use_checkpoint: bool) -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    model, x = mlp(), torch.randn(3, 4)
    runs = [mlp_values(3, requires_grad=True), mlp_values(requires_grad=True)]
    outputs = []
    for values in runs:
        with model.using_externals(values):
            if use_checkpoint:
                outputs.append(checkpoint(capture_externals(model), x, use_reentrant=False))
            else:
                outputs.append(model(x))
    loss = sum(y.square().sum() for y in outputs)
    run_threads(loss.backward)  # outside the blocks, from another thread
    return [{name: v.grad for name, v in values.items()} for values in runs]


def test_checkpoint_recomputes_with_the_values_of_its_forward():
    checkpointed, plain = _checkpointed_grads(True), _checkpointed_grads(False)
    for got, expected in zip(checkpointed, plain):
        assert got.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=0)


def test_checkpoint_without_capture_recomputes_with_no_values():
    model, x = mlp(), torch.randn(3, 4)
    with model.using_externals(mlp_values(requires_grad=True)):
        y = checkpoint(model, x, use_reentrant=False)
    with pytest.raises(UninitializedExternalError, match="'0.weight'"):
        y.sum().backward()


# -- 4. explicit state ----------------------------------------------------------------------------------


def test_explicit_values_are_seen_by_other_threads_until_reset():
    model, x = mlp(), torch.randn(3, 4)
    values = mlp_values(3)
    run_threads(lambda: model.set_externals(values))  # set in another thread, seen here
    torch.testing.assert_close(model(x), reference(values, x))
    got: list[torch.Tensor] = []
    run_threads(lambda: got.append(model(x)))
    torch.testing.assert_close(got[0], reference(values, x))
    model.reset_externals()
    assert no_values_left(model)
    with pytest.raises(UninitializedExternalError, match="'0.weight'"):
        model(x)
    with pytest.raises(UninitializedExternalError, match="'0.weight'"):
        run_threads(lambda: model(x))


@pytest.mark.parametrize("explicit", [False, True], ids=["nothing set", "explicit values"])
def test_a_block_in_one_thread_is_invisible_to_another(explicit):
    model, x = mlp(), torch.randn(3, 4)
    explicit_values = mlp_values() if explicit else None
    if explicit:
        model.set_externals(explicit_values)
    entered, done = threading.Event(), threading.Event()

    def in_block():
        with model.using_externals(mlp_values(3)):
            entered.set()
            assert done.wait(timeout=30)

    def observe():
        assert entered.wait(timeout=30)
        try:
            if explicit:
                torch.testing.assert_close(model(x), reference(explicit_values, x))
            else:
                with pytest.raises(UninitializedExternalError):
                    model(x)
        finally:
            done.set()

    run_threads(in_block, observe)


def test_nothing_remains_after_a_block():
    model, x = mlp(), torch.randn(3, 4)
    with model.using_externals(mlp_values(3)):
        with model.using_externals(mlp_values(names=["2.bias"])):
            model(x)
    assert no_values_left(model)
    with pytest.raises(RuntimeError, match="boom"):
        with model.using_externals(mlp_values()):
            raise RuntimeError("boom")
    assert no_values_left(model)
    explicit = mlp_values()
    model.set_externals(explicit)
    with model.using_externals(mlp_values(3)):
        pass
    current = model[0].current_externals()
    assert current.values["weight"] is explicit["0.weight"] and current.values["bias"] is explicit["0.bias"]
    assert current.plan.batch is None


# -- 5a. dtypes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["set_externals", "using_externals"])
def test_a_value_of_another_dtype_is_refused_naming_the_external(how):
    model = nn.Sequential(nn.Linear(4, 8))
    model = hypernetize(model, modules=[model[0]])
    values = {"0.weight": torch.randn(8, 4, dtype=torch.float64), "0.bias": torch.randn(8)}
    message = re.escape(
        "dtype mismatch for '0.weight': HypernetizedLinear computes in torch.float32, the value is torch.float64; "
        "cast it with .to(torch.float32)"
    )
    with pytest.raises(TypeError, match=message):
        if how == "set_externals":
            model.set_externals(values)
        else:
            with model.using_externals(values):
                pass
    assert no_values_left(model)


def test_a_pure_hyper_linear_takes_any_float_dtype():
    layer, x = HyperLinear(4, 3), torch.randn(2, 4, dtype=torch.float64)
    w, b = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    layer.set_externals(weight=w, bias=b)
    y = layer(x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, F.linear(x, w, b))


def test_low_rank_factors_of_another_dtype_are_cast():
    model, x = nn.Sequential(nn.Linear(4, 3)), torch.randn(2, 4)
    model = hypernetize(model, modules=[model[0]], rank=2, alpha=4.0)  # scaling 2
    a, b = torch.randn(2, 4, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    model.set_externals({"0.lora_A": a, "0.lora_B": b})
    y = model(x)
    assert y.dtype == torch.float32
    expected = F.linear(x, model[0].weight, model[0].bias) + 2.0 * (x @ a.float().T) @ b.float().T
    torch.testing.assert_close(y, expected)


# -- 5b. .to(dtype) converts explicit values -----------------------------------------------------------


@pytest.mark.parametrize("batch", [None, 2])
def test_to_dtype_converts_explicit_values(batch):
    model, values = mlp(), mlp_values(batch)
    model.set_externals(values)
    assert model.to(torch.float64) is model
    assert model[0].current_externals().values["weight"].dtype == torch.float64
    assert model[2].current_externals().plan.batch == batch
    x = torch.randn(2, 4, dtype=torch.float64)
    y = model(x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, reference({n: v.double() for n, v in values.items()}, x))


# -- 5c. BatchNorm --------------------------------------------------------------------------------------


def hypernetized_batchnorm() -> nn.Module:
    bn = nn.BatchNorm2d(3)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    return hypernetize(bn, modules=[bn])


def test_batchnorm_in_training_refuses_per_example_weights():
    bn, x = hypernetized_batchnorm(), torch.randn(2, 3, 4, 4)
    with bn.using_externals(weight=torch.randn(2, 3), bias=torch.randn(2, 3)):
        # the message names the hypernetized class (HypernetizedBatchNorm2d)
        with pytest.raises(
            NotImplementedError,
            match=r"per-example weights are not supported for BatchNorm2d in training mode",
        ):
            bn(x)
    with bn.using_externals(weight=torch.randn(3), bias=torch.randn(3)):
        assert bn(x).shape == x.shape  # shared weights: batch statistics are fine


def test_batchnorm_in_eval_per_example_equals_each_example_alone():
    bn, x = hypernetized_batchnorm().eval(), torch.randn(2, 3, 4, 4)
    w, b = torch.randn(2, 3), torch.randn(2, 3)
    with bn.using_externals(weight=w, bias=b):
        y = bn(x)
    for i in range(2):
        with bn.using_externals(weight=w[i], bias=b[i]):
            torch.testing.assert_close(y[i : i + 1], bn(x[i : i + 1]))
        expected = F.batch_norm(x[i : i + 1], bn.running_mean, bn.running_var, w[i], b[i], False, 0.0, bn.eps)
        torch.testing.assert_close(y[i : i + 1], expected)


# -- 5d. modules whose forward does not read its weights as attributes ---------------------------------


def _lstm() -> nn.Module:
    model = nn.Sequential(nn.LSTM(3, 4))
    return hypernetize(model, modules=[model[0]])


def _weight_norm() -> nn.Module:
    model = nn.Sequential(torch.nn.utils.parametrizations.weight_norm(nn.Linear(4, 4)))
    return hypernetize(model, modules=[model[0]])


def _weight_norm_original() -> nn.Module:
    model = nn.Sequential(torch.nn.utils.parametrizations.weight_norm(nn.Linear(4, 4)))
    return hypernetize(model, parameters=[model[0].parametrizations.weight.original1])


@pytest.mark.parametrize(
    "build, message",
    [
        (_lstm, r"LSTM at '0' cannot be hypernetized.*\(_flat_weights\)"),
        (_weight_norm, r"'0' cannot be hypernetized: '0' is parametrized \(e.g. weight_norm\)"),
        (_weight_norm_original, r"'0.parametrizations.weight' cannot be hypernetized: '0' is parametrized"),
    ],
    ids=["LSTM", "weight_norm", "weight_norm original"],
)
def test_hypernetize_refuses_modules_that_would_ignore_externals(build, message):
    with pytest.raises(TypeError, match=message):
        build()


# -- 5e. weight ties through unhypernetize -------------------------------------------------------------


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight


@pytest.mark.parametrize(
    "how",
    [
        "inplace",
        "inplace=False",
        "deepcopy",
        "pickle",
    ],
)
def test_unhypernetize_keeps_a_tie_when_one_side_was_hypernetized(how):
    model = Tied()
    original = model.emb.weight.detach().clone()
    hypernetize(model, modules=[model.head])
    assert model.external_shapes() == {"head.weight": (10, 4)}
    if how == "deepcopy":
        model = copy.deepcopy(model)
    elif how == "pickle":
        model = pickle.loads(pickle.dumps(model))
    plain = unhypernetize(model, inplace=how != "inplace=False")
    assert type(plain.head) is nn.Linear
    assert plain.head.weight is plain.emb.weight
    assert torch.equal(plain.head.weight, original)


@pytest.mark.parametrize("dtype", [None, torch.float64], ids=["as-is", "after-.to(float64)"])
def test_unhypernetize_ties_again_when_both_sides_were_hypernetized(dtype):
    model = Tied()
    original = model.emb.weight.detach().clone()
    hypernetize(model, modules=[model.emb, model.head])
    assert set(model.external_shapes()) == {"emb.weight", "head.weight"}
    if dtype is not None:  # converts each module's kept original separately
        model.to(dtype)
    plain = unhypernetize(model)
    assert plain.head.weight is plain.emb.weight
    assert isinstance(plain.emb.weight, nn.Parameter)
    assert torch.equal(plain.emb.weight, original.to(dtype or original.dtype))
    assert [name for name, _ in plain.named_parameters()] == ["emb.weight"]


def test_unhypernetize_refuses_two_values_for_one_tie():
    model = Tied()
    hypernetize(model, modules=[model.emb, model.head])
    with pytest.raises(ValueError, match=r"'head.weight' is tied to 'emb.weight' but was given a different value"):
        unhypernetize(model, {"emb.weight": torch.zeros(10, 4), "head.weight": torch.ones(10, 4)})
    assert type(model.emb).__name__ == "HypernetizedEmbedding" and type(model.head).__name__ == "HypernetizedLinear"
    plain = unhypernetize(model, {"emb.weight": torch.ones(10, 4), "head.weight": torch.ones(10, 4)})
    assert plain.head.weight is plain.emb.weight and torch.equal(plain.emb.weight, torch.ones(10, 4))


# -- 5f and 7: layer cases for empty and expanded batches ---------------------------------------------


class Case(NamedTuple):
    module: nn.Module
    shapes: dict[str, tuple[int, ...]]
    make_input: Callable[[int], torch.Tensor]
    reference: Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]  # one example's values, rows
    plain: nn.Module  # the torch module the hyper one stands for


def _linear_case() -> Case:
    return Case(
        HyperLinear(4, 3),
        {"weight": (3, 4), "bias": (3,)},
        lambda rows: torch.randn(rows, 5, 4),
        lambda v, x: F.linear(x, v["weight"], v["bias"]),
        nn.Linear(4, 3),
    )


def _lowrank_case() -> Case:
    layer = nn.Linear(4, 3)
    hypernetize(layer, modules=[layer], rank=2, alpha=4.0)
    return Case(
        layer,
        {"lora_A": (2, 4), "lora_B": (3, 2)},
        lambda rows: torch.randn(rows, 5, 4),
        lambda v, x: F.linear(x, layer.weight, layer.bias) + 2.0 * (x @ v["lora_A"].T) @ v["lora_B"].T,
        nn.Linear(4, 3),
    )


def _conv_case() -> Case:
    return Case(
        HyperConv2d(2, 3, 3, padding=1),
        {"weight": (3, 2, 3, 3), "bias": (3,)},
        lambda rows: torch.randn(rows, 2, 5, 5),
        lambda v, x: F.conv2d(x, v["weight"], v["bias"], padding=1),
        nn.Conv2d(2, 3, 3, padding=1),
    )


def _embedding_case() -> Case:
    return Case(
        HyperEmbedding(10, 4),
        {"weight": (10, 4)},
        lambda rows: torch.randint(0, 10, (rows, 5)),
        lambda v, x: F.embedding(x, v["weight"]),
        nn.Embedding(10, 4),
    )


def _layernorm_case() -> Case:
    norm = nn.LayerNorm(4)
    return Case(
        hypernetize(norm, modules=[norm]),  # no batched kernel: the vmap fallback
        {"weight": (4,), "bias": (4,)},
        lambda rows: torch.randn(rows, 5, 4),
        lambda v, x: F.layer_norm(x, (4,), v["weight"], v["bias"]),
        nn.LayerNorm(4),
    )


CASES = {
    "HyperLinear": _linear_case,
    "low-rank Linear": _lowrank_case,
    "HyperConv2d": _conv_case,
    "HyperEmbedding": _embedding_case,
    "LayerNorm (vmap)": _layernorm_case,
}


@pytest.mark.parametrize("name", list(CASES))
def test_an_empty_batch_gives_the_shape_of_the_plain_module(name):
    case = CASES[name]()
    x = case.make_input(0)
    values = {n: torch.randn(0, *shape) for n, shape in case.shapes.items()}
    with case.module.using_externals(values):
        y = case.module(x)
    assert y.shape == case.plain(x).shape
    assert y.shape[0] == 0


@pytest.mark.parametrize("name", list(CASES))
def test_an_expanded_batch_uses_value_b_for_its_block_of_rows(name):
    case, batch, k = CASES[name](), 2, 3
    values = {n: torch.randn(batch, *shape) for n, shape in case.shapes.items()}
    x = case.make_input(batch * k)
    with case.module.using_externals(values):
        y = case.module(x)
    repeated = {n: v.repeat_interleave(k, 0) for n, v in values.items()}  # row r uses value r // k
    expected = torch.cat([case.reference({n: v[r] for n, v in repeated.items()}, x[r : r + 1]) for r in range(6)])
    torch.testing.assert_close(y, expected)
    with case.module.using_externals(values):
        with pytest.raises(ValueError, match="per-example weights were given for a batch of 2, but the input has 5"):
            case.module(case.make_input(5))


# -- 6. one class factory -------------------------------------------------------------------------------


class MyLinear(nn.Linear):
    pass


def _hypernetized_types() -> list[type]:
    full, low, mine, norm = nn.Linear(2, 2), nn.Linear(2, 2), MyLinear(2, 2), nn.LayerNorm(2)
    seq = nn.Sequential(nn.Linear(2, 2))
    return [
        type(hypernetize(full, modules=[full])),
        type(hypernetize(low, modules=[low], rank=2)),
        type(hypernetize(mine, modules=[mine])),
        type(hypernetize(norm, modules=[norm])),
        type(hypernetize(seq, modules=[seq[0]])),
    ]


def test_one_class_per_original_class_and_kind():
    types = _hypernetized_types()
    names = [cls.__name__ for cls in types]
    assert names == [
        "HypernetizedLinear",
        "LowRankLinear",
        "HypernetizedMyLinear",
        "HypernetizedLayerNorm",
        "HypernetizedSequential",
    ]
    assert types == _hypernetized_types()  # made once, then reused
    assert types[0] is hypernetized_class(nn.Linear) and types[1] is hypernetized_class(nn.Linear, "lowrank")
    for cls in types:
        mro = [c.__name__ for c in cls.__mro__]
        assert len(mro) == len(set(mro)), mro
        assert cls.__qualname__ == cls.__name__


def _pickle(model):
    return pickle.loads(pickle.dumps(model))


@pytest.mark.parametrize("rank", [None, 2], ids=["full", "low-rank"])
@pytest.mark.parametrize("copier", [_pickle, copy.deepcopy], ids=["pickle", "deepcopy"])
def test_copies_round_trip_to_the_same_classes_and_outputs(copier, rank):
    model, x = mlp(rank=rank), torch.randn(3, 4)
    values = {n: torch.randn(3, *s) for n, s in model.external_shapes().items()}
    model.set_externals(values)
    expected = model(x)
    clone = copier(model)
    assert [type(m) for m in clone.modules()] == [type(m) for m in model.modules()]
    assert clone.external_shapes() == model.external_shapes()
    with pytest.raises(UninitializedExternalError):
        clone(x)  # copies carry the declarations, not the values
    with clone.using_externals(values):
        assert torch.equal(clone(x), expected)
    assert torch.equal(model(x), expected)  # the original keeps its values


@pytest.mark.parametrize("copier", [_pickle, copy.deepcopy], ids=["pickle", "deepcopy"])
def test_copies_keep_the_pretrained_values_for_unset_original(copier):
    plain = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(3, 4)
    expected = plain(x)
    model = hypernetize(plain, modules=[plain[0], plain[2]], unset="original")
    clone = copier(model)
    assert type(clone[0]) is type(model[0])
    torch.testing.assert_close(clone(x), expected)


CONV1D_SCRIPT = """
import importlib.util, sys, types

# the core alone: a stand-in for the package, so `hyperlight/__init__` (and the plug-in) never runs
spec = importlib.util.find_spec("hyperlight")
package = types.ModuleType("hyperlight")
package.__path__ = list(spec.submodule_search_locations)
sys.modules["hyperlight"] = package

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D
from hyperlight.hypernetize import hypernetize

torch.manual_seed(0)
conv = Conv1D(6, 4)  # weight stored as (in, out) = (4, 6)
nn.init.normal_(conv.bias)
model = nn.Sequential(conv)
hypernetize(model, modules=[conv], rank=2, alpha=4.0)  # scaling 2
assert type(conv).__name__ == "LowRankConv1D", type(conv).__name__
assert model.external_shapes() == {"0.lora_A": (2, 4), "0.lora_B": (6, 2)}
x = torch.randn(3, 4)
a, b = torch.randn(2, 4), torch.randn(6, 2)
with model.using_externals({"0.lora_A": a, "0.lora_B": b}):
    y = model(x)
torch.testing.assert_close(y, x @ conv.weight + conv.bias + 2.0 * (x @ a.T) @ b.T)
a3, b3 = torch.randn(3, 2, 4), torch.randn(3, 6, 2)
with model.using_externals({"0.lora_A": a3, "0.lora_B": b3}):
    y = model(x)
for i in range(3):
    torch.testing.assert_close(y[i], x[i] @ conv.weight + conv.bias + 2.0 * b3[i] @ (a3[i] @ x[i]))
plugin = ("hyperlight.plugin", "hyperlight.training", "hyperlight.integrations")
loaded = sorted(name for name in sys.modules if name.startswith(plugin))
assert not loaded, loaded
print("ok")
"""


def test_gpt2_conv1d_takes_low_rank_externals_in_the_core_alone():
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CONV1D_SCRIPT)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"

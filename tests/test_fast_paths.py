"""The per-call fast paths (issue 14) against plain references: the low-rank update added in place into a linear
layer's fresh output, the custom backward of the per-example product, and the shared generator's one trunk pass
for all targets, each forward and backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hyperlight import hypernetize, register_linear_like
from hyperlight.nn import hypernetized
from hyperlight.nn.binding import Plan
from hyperlight.nn.functional import lowrank_add
from hyperlight.plugin.generators import GeneratorTarget, SharedGenerator


def _reference(y, x, a, b, scaling):
    """y + s · x Aᵀ Bᵀ, one example at a time, with einsum (no shared code with the kernels)."""
    rows = []
    for i in range(x.shape[0]):
        rows.append(y[i] + scaling * torch.einsum("ti,ri,or->to", x[i], a[i], b[i]))
    return torch.stack(rows)


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("scaling", [1.0, 0.5])
@pytest.mark.parametrize("needs", ["xab", "ab", "x", "b"])
def test_lowrank_add_per_example_equals_the_reference_forward_and_backward(in_place, scaling, needs):
    """The custom backward (`_PerExampleLowRank`) against einsum's autograd, for every subset of inputs that
    needs a gradient; x also feeds the base linear, so its two gradients accumulate, as in a model."""
    torch.manual_seed(0)
    leaf = torch.randn(3, 5, 6, requires_grad="x" in needs)
    a = torch.randn(3, 2, 6, requires_grad="a" in needs)
    b = torch.randn(3, 4, 2, requires_grad="b" in needs)
    weight = torch.randn(4, 6)
    grad = torch.randn(3, 5, 4)
    wanted = [t for t in (leaf, a, b) if t.requires_grad]

    x = leaf * 1.5  # an intermediate, as a layer's input is
    y = torch.nn.functional.linear(x, weight)
    out = lowrank_add(y, x, a, b, scaling, Plan(3), in_place=in_place)
    assert (out.data_ptr() == y.data_ptr()) == in_place  # in place: the linear output itself, no new tensor
    got = torch.autograd.grad(out, wanted, grad)

    x = leaf * 1.5
    expected = _reference(torch.nn.functional.linear(x, weight), x, a, b, scaling)
    want = torch.autograd.grad(expected, wanted, grad)
    torch.testing.assert_close(out, expected)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    if leaf.requires_grad:  # x's gradient comes back contiguous, to be added to its other gradients
        assert got[0].is_contiguous()


@pytest.mark.parametrize("in_place", [False, True])
def test_lowrank_add_custom_backward_passes_gradcheck(in_place):
    """Float64 finite differences through the custom backward, including the gradient that flows on through y."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    a = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 5, 2, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)

    def fn(x, a, b, weight):
        return lowrank_add(torch.nn.functional.linear(x, weight), x, a, b, 0.7, Plan(2), in_place=in_place)

    assert torch.autograd.gradcheck(fn, (x, a, b, weight))
    assert torch.autograd.gradgradcheck(fn, (x, a, b, weight))


def test_lowrank_add_under_functorch_transforms_and_without_grad_equals_the_reference():
    """vmap and jvp (which the custom backward does not define) and no-grad inference take the builtin ops."""
    torch.manual_seed(0)
    x, a, b = torch.randn(3, 5, 6), torch.randn(3, 2, 6), torch.randn(3, 4, 2)
    y, tangent = torch.randn(3, 5, 4), torch.randn(3, 5, 6)
    expected = _reference(y, x, a, b, 0.5)

    with torch.no_grad():
        torch.testing.assert_close(lowrank_add(y.clone(), x, a, b, 0.5, Plan(3), in_place=True), expected)
    out, jvp = torch.func.jvp(lambda x: lowrank_add(y, x, a, b, 0.5, Plan(3)), (x,), (tangent,))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(jvp, _reference(torch.zeros_like(y), tangent, a, b, 0.5))
    batched = torch.func.vmap(lambda x: lowrank_add(y, x, a, b, 0.5, Plan(3)))(torch.stack([x, 2 * x]))
    torch.testing.assert_close(batched[1], _reference(y, 2 * x, a, b, 0.5))


def test_lowrank_add_in_place_under_autocast_takes_the_outputs_dtype():
    """CPU autocast: the linear output is bf16, the input and factors fp32; in-place ops are not autocast, so the
    operands are cast to the output's dtype, as autocast's own baddbmm would compute."""
    torch.manual_seed(0)
    x, a, b = torch.randn(2, 3, 8), torch.randn(2, 4, 8), torch.randn(2, 6, 4)
    weight = torch.randn(6, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fresh = lowrank_add(torch.nn.functional.linear(x, weight), x, a, b, 1.0, Plan(2), in_place=True)
        kept = lowrank_add(torch.nn.functional.linear(x, weight), x, a, b, 1.0, Plan(2), in_place=False)
    assert fresh.dtype == kept.dtype == torch.bfloat16
    torch.testing.assert_close(fresh, kept, atol=0.1, rtol=0.02)  # one bf16 rounding apart at most


@pytest.mark.parametrize("in_place", [False, True])
def test_lowrank_add_backward_under_autocast_matches_the_reference_in_each_inputs_dtype(in_place):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, requires_grad=True)
    a, b = torch.randn(2, 4, 8, requires_grad=True), torch.randn(2, 6, 4, requires_grad=True)
    weight, grad = torch.randn(6, 8), torch.randn(2, 3, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lowrank_add(torch.nn.functional.linear(x, weight), x, a, b, 0.5, Plan(2), in_place=in_place)
    got = torch.autograd.grad(out, (x, a, b), grad.to(out.dtype))
    expected = _reference(torch.nn.functional.linear(x, weight), x, a, b, 0.5)
    want = torch.autograd.grad(expected, (x, a, b), grad)
    for g, w, t in zip(got, want, (x, a, b)):
        assert g.dtype == t.dtype == torch.float32
        torch.testing.assert_close(g, w, atol=0.15, rtol=0.05)  # bf16 products


class _HeldOutputLinear(nn.Module):
    """A linear-like layer whose forward returns a tensor it keeps (a cache): the update must not land in it."""

    def __init__(self, fan_in: int, fan_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fan_out, fan_in))
        self.last: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last = torch.nn.functional.linear(x, self.weight)
        return self.last


def test_only_known_fresh_outputs_are_added_into(monkeypatch):
    import transformers.pytorch_utils as hf

    monkeypatch.setattr(hypernetized, "LINEAR_LIKE", dict(hypernetized.LINEAR_LIKE))  # keep the registry clean
    register_linear_like(
        _HeldOutputLinear, in_features=lambda m: m.weight.shape[1], out_features=lambda m: m.weight.shape[0]
    )
    assert hypernetized.hypernetized_class(nn.Linear, "lowrank")._hl_fresh_output
    assert hypernetized.hypernetized_class(hf.Conv1D, "lowrank")._hl_fresh_output
    subclass = type("MyLinear", (nn.Linear,), {"forward": lambda self, x: nn.Linear.forward(self, x)})
    assert not hypernetized.hypernetized_class(subclass, "lowrank")._hl_fresh_output  # its own forward: unknown
    assert not hypernetized.hypernetized_class(_HeldOutputLinear, "lowrank")._hl_fresh_output

    torch.manual_seed(0)
    layer = _HeldOutputLinear(6, 4)
    model = hypernetize(layer, modules=[layer], rank=2, inplace=False)
    factors = {"lora_A": torch.randn(3, 2, 6), "lora_B": torch.randn(3, 4, 2)}
    x = torch.randn(3, 5, 6)
    with model.using_externals(factors):
        out = model(x)
    plain = torch.nn.functional.linear(x, layer.weight)
    torch.testing.assert_close(model.last, plain)  # the layer's own tensor is untouched
    torch.testing.assert_close(out, _reference(plain, x, factors["lora_A"], factors["lora_B"], 1.0))


def _targets() -> list[GeneratorTarget]:
    shapes = {"q": {"lora_A": (2, 6), "lora_B": (6, 2)}, "v": {"lora_A": (2, 6), "lora_B": (3, 2)}}
    return [
        GeneratorTarget(f"layers.{i}.{kind}", f"layers.*.{kind}", i, dict(shapes[kind]))
        for i in range(3)
        for kind in ("q", "v")
    ]


def test_shared_generator_equals_each_target_computed_alone_forward_and_backward():
    """One trunk pass over every target, one addmm per head, split and unbind: each target's tensors (and the
    gradients they send back) equal computing that target alone from the same parameters."""
    torch.manual_seed(0)
    generator = SharedGenerator(_targets(), 5, hidden_size=8)
    with torch.no_grad():
        for p in generator.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    z = torch.randn(4, 5)
    out = generator(z)
    grads = {t: {n: torch.randn_like(v) for n, v in d.items()} for t, d in out.items()}
    params = list(generator.parameters())
    got = torch.autograd.grad(
        [v for d in out.values() for v in d.values()], params, [g for d in grads.values() for g in d.values()]
    )

    def alone(target: GeneratorTarget) -> dict[str, torch.Tensor]:
        head = generator.heads[generator.type_keys.index(target.type_key)]
        where = torch.cat(
            [
                generator.layer_embedding.weight[target.layer],
                generator.type_embedding.weight[generator.type_keys.index(target.type_key)],
            ]
        )
        h = generator.trunk(generator.act(generator.z_proj(z) + generator.position_proj(where)))  # (U, H)
        flat = head.theta0 + h @ head.proj.weight.T
        a_size = target.shapes["lora_A"][0] * target.shapes["lora_A"][1]
        return {
            "lora_A": flat[:, :a_size].reshape(4, *target.shapes["lora_A"]),
            "lora_B": flat[:, a_size:].reshape(4, *target.shapes["lora_B"]),
        }

    reference = {t.name: alone(t) for t in _targets()}
    want = torch.autograd.grad(
        [v for d in reference.values() for v in d.values()],
        params,
        [grads[t][n] for t, d in reference.items() for n in d],
    )
    for target, tensors in reference.items():
        for name, value in tensors.items():
            torch.testing.assert_close(out[target][name], value)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("in_place", [False, True])
def test_lowrank_add_with_expanded_rows_adds_into_a_view_and_matches_the_reference(in_place):
    """k rows per value (beam search, repeated prompts): y is grouped as a view, and the in-place update into it
    still sends the right gradients to x and to each value's factors."""
    torch.manual_seed(0)
    leaf = torch.randn(4, 5, 6, requires_grad=True)  # 2 values, 2 rows each
    a, b = torch.randn(2, 2, 6, requires_grad=True), torch.randn(2, 3, 2, requires_grad=True)
    weight, grad = torch.randn(3, 6), torch.randn(4, 5, 3)
    x = leaf * 1.0
    out = lowrank_add(torch.nn.functional.linear(x, weight), x, a, b, 0.5, Plan(2), in_place=in_place)
    got = torch.autograd.grad(out, (leaf, a, b), grad)
    x = leaf * 1.0
    expected = _reference(
        torch.nn.functional.linear(x, weight), x, a.repeat_interleave(2, 0), b.repeat_interleave(2, 0), 0.5
    )
    torch.testing.assert_close(out, expected)
    for g, w in zip(got, torch.autograd.grad(expected, (leaf, a, b), grad)):
        torch.testing.assert_close(g, w)


def test_lowrank_add_under_autocast_leaves_float64_alone():
    """Autocast does not cast float64: neither does the custom path (it once cast everything to bf16)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    a = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 5, 2, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 3, 5, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lowrank_add(y, x, a, b, 0.5, Plan(2), in_place=False)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, _reference(y, x, a, b, 0.5))


def test_lowrank_add_in_place_into_its_own_input_still_matches_the_reference():
    """y the same tensor as x (not a fresh output: the in-place contract broken by a caller) adds out of place
    rather than change the x saved for backward."""
    torch.manual_seed(0)
    leaf = torch.randn(2, 3, 4, requires_grad=True)
    a, b = torch.randn(2, 2, 4, requires_grad=True), torch.randn(2, 4, 2, requires_grad=True)
    x = leaf * 1.0
    got = torch.autograd.grad(lowrank_add(x, x, a, b, 0.5, Plan(2), in_place=True).pow(2).sum(), (leaf, a, b))
    x = leaf * 1.0
    want = torch.autograd.grad(_reference(x, x, a, b, 0.5).pow(2).sum(), (leaf, a, b))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the plan's shape checks are Python bools
def test_lowrank_add_in_place_traces_with_torch_jit():
    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(6, 6)
            self.a, self.b = nn.Parameter(torch.randn(3, 2, 6)), nn.Parameter(torch.randn(3, 6, 2))

        def forward(self, x):
            return lowrank_add(self.linear(x), x, self.a, self.b, 0.5, Plan(3), in_place=True)

    torch.manual_seed(0)
    layer, x = Layer(), torch.randn(3, 4, 6)
    traced = torch.jit.trace(layer, (x,), check_trace=False)
    torch.testing.assert_close(traced(x), _reference(layer.linear(x), x, layer.a, layer.b, 0.5))


def test_x_gradients_of_the_base_and_the_update_add_in_place():
    """x's gradient reaches it from the base linear and from the low-rank update (the custom backward, the CPU
    training path); the update takes x itself, not a same-shape view of it, so the autograd engine adds the two
    into one buffer in place instead of allocating a third (B, T, in) tensor per layer (a view keeps its base
    alive, which rules the in-place addition out)."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    leaf = torch.randn(4, 16, 32, requires_grad=True)
    a, b = torch.randn(4, 2, 32), torch.randn(4, 8, 2)
    x = leaf * 1.0
    y = torch.nn.functional.linear(x, torch.randn(8, 32))
    out = lowrank_add(y, x, a, b, 1.0, Plan(4), in_place=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out.backward(torch.ones_like(out))
    adds = {e.key: e.count for e in prof.key_averages() if e.key in ("aten::add", "aten::add_")}
    assert adds.get("aten::add", 0) == 0 and adds.get("aten::add_", 0) >= 1, adds


def test_shared_heads_group_by_the_set_of_shapes_whatever_their_order():
    """share_heads: one head per set of (name, shape) pairs, the order a module lists its tensors in aside (a
    bias registered before its weight); a type whose shapes differ keeps its own head."""
    p = GeneratorTarget("l.0.p", "l.*.p", 0, {"lora_A": (2, 6), "lora_B": (6, 2)})
    q = GeneratorTarget("l.0.q", "l.*.q", 0, {"lora_B": (6, 2), "lora_A": (2, 6)})
    r = GeneratorTarget("l.0.r", "l.*.r", 0, {"lora_A": (2, 6), "lora_B": (3, 2)})
    generator = SharedGenerator([p, q, r], 5, hidden_size=8, share_heads=True)
    assert generator.type_keys == ["l.*.p+l.*.q", "l.*.r"]
    out = generator(torch.randn(2, 5))
    assert out["l.0.q"]["lora_A"].shape == (2, 2, 6) and out["l.0.q"]["lora_B"].shape == (2, 6, 2)
    assert out["l.0.r"]["lora_B"].shape == (2, 3, 2)

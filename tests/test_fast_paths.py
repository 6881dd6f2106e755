"""The per-call fast paths (issue 14) against plain references: the low-rank update added in place into a linear
layer's fresh output, the `(A xᵀ)ᵀ` product, and the shared generator's one trunk pass for all targets, each
forward and backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hyperlight import hypernetize, register_linear_like
from hyperlight.hypernet.generators import GeneratorTarget, SharedGenerator
from hyperlight.nn import hypernetized
from hyperlight.nn.binding import Plan
from hyperlight.nn.functional import lowrank_add


def _reference(y, x, a, b, scaling):
    """y + s · x Aᵀ Bᵀ, one example at a time, with einsum (no shared code with the kernels)."""
    rows = []
    for i in range(x.shape[0]):
        rows.append(y[i] + scaling * torch.einsum("ti,ri,or->to", x[i], a[i], b[i]))
    return torch.stack(rows)


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("scaling", [1.0, 0.5])
def test_lowrank_add_per_example_equals_the_reference_forward_and_backward(in_place, scaling):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 6, requires_grad=True)
    a = torch.randn(3, 2, 6, requires_grad=True)
    b = torch.randn(3, 4, 2, requires_grad=True)
    weight = torch.randn(4, 6)
    grad = torch.randn(3, 5, 4)

    y = torch.nn.functional.linear(x, weight)
    out = lowrank_add(y, x, a, b, scaling, Plan(3), in_place=in_place)
    assert (out.data_ptr() == y.data_ptr()) == in_place  # in place: the linear output itself, no new tensor
    got = torch.autograd.grad(out, (x, a, b), grad)

    expected = _reference(torch.nn.functional.linear(x, weight), x, a, b, scaling)
    want = torch.autograd.grad(expected, (x, a, b), grad)
    torch.testing.assert_close(out, expected)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


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

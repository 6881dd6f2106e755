"""Gradient checkpointing (reentrant and not), bf16 (autocast, bf16 base + fp32 hypernetwork, CUDA when
present), and torch.compile without recompilation as conditions change."""

from __future__ import annotations

import pytest
import torch
from hf_models import CASES, Case, hyper_config

from hyperlight import get_hyper_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
BY_NAME = {c.name: c for c in CASES}


def _hyper(case: Case, **overrides):
    torch.manual_seed(0)  # the generator's init must not depend on what ran before
    hyper = get_hyper_model(case.build(), hyper_config(case, **overrides))
    with torch.no_grad():  # move away from the identity init so gradients reach every generator part
        for p in hyper.generator.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return hyper


def _grads(hyper, case: Case) -> dict[str, torch.Tensor]:
    hyper.train()
    inputs = case.inputs(3)
    labels = inputs.get("decoder_input_ids", inputs["input_ids"])
    hyper(**inputs, labels=labels, task=torch.tensor([0, 2, 3])).loss.backward()
    return {n: p.grad.clone() for n, p in hyper.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize("name", ["llama", "gpt2", "t5", "llama-full"])
def test_gradient_checkpointing_gives_the_same_hypernetwork_gradients(name, reentrant):
    case = BY_NAME[name]
    reference = _grads(_hyper(case), case)
    hyper = _hyper(case)
    hyper.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    assert any(getattr(m, "gradient_checkpointing", False) for m in hyper.get_base_model().modules())
    grads = _grads(hyper, case)
    assert grads.keys() == reference.keys()
    assert all(g.abs().sum() > 0 for g in reference.values())  # every part of the generator gets a gradient
    for key in reference:
        torch.testing.assert_close(grads[key], reference[key], atol=1e-6, rtol=1e-5, msg=key)


def _train_steps(hyper, steps: int = 4, autocast: torch.dtype | None = None, device: str = "cpu") -> list[float]:
    opt = torch.optim.AdamW([p for p in hyper.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 90, (4, 8), generator=g).to(device)
    task = torch.tensor([0, 1, 2, 3], device=device)
    losses = []
    for _ in range(steps):
        with torch.autocast(device, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss = hyper(input_ids=ids, labels=ids, task=task).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def _check_bf16_training(device: str) -> None:
    case = BY_NAME["llama"]
    # bf16 autocast: the hypernetwork keeps fp32 master weights
    hyper = _hyper(case, target_modules="attention+mlp").to(device)
    losses = _train_steps(hyper, autocast=torch.bfloat16, device=device)
    assert losses[-1] < losses[0]
    assert {p.dtype for p in hyper.generator.parameters()} == {torch.float32}
    # a base model in bf16 driven by an fp32 hypernetwork
    torch.manual_seed(0)
    base = case.build().to(device=device, dtype=torch.bfloat16)
    hyper = get_hyper_model(base, hyper_config(case, target_modules="attention+mlp"))
    assert {p.dtype for p in hyper.generator.parameters()} == {torch.float32}
    ids = torch.randint(3, 90, (2, 6), device=device)
    with torch.no_grad():  # identity at init holds in bf16 too
        assert torch.equal(
            hyper(input_ids=ids, task=torch.tensor([0, 1], device=device)).logits, base(input_ids=ids).logits
        )
    losses = _train_steps(hyper, device=device)
    assert losses[-1] < losses[0]
    assert {p.dtype for p in hyper.get_base_model().parameters()} == {torch.bfloat16}


def test_bf16_on_cpu():
    _check_bf16_training("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_on_cuda():
    _check_bf16_training("cuda")


def test_torch_compile_trains_without_recompiling_as_conditions_change():
    import torch._dynamo

    case = BY_NAME["llama"]
    eager = _hyper(case, target_modules="attention+mlp")
    compiled = _hyper(case, target_modules="attention+mlp")
    step = torch.compile(compiled)
    opts = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1) for m in (eager, compiled)]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 90, (4, 8), generator=g)
    tasks = [[0, 3, 1, 1], [2, 3, 2, 0], [0, 0, 3, 3], [1, 1, 1, 1], [2, 1, 3, 0]]
    torch._dynamo.reset()
    try:
        for i, task in enumerate(tasks):
            # the first step traces with unset externals, the second with set ones; after that nothing may recompile
            torch._dynamo.config.error_on_recompile = i >= 2
            losses = []
            for fn, opt in ((eager, opts[0]), (step, opts[1])):
                loss = fn(input_ids=ids, labels=ids, task=torch.tensor(task)).loss
                loss.backward()
                opt.step()
                opt.zero_grad()
                losses.append(loss.item())
            assert losses[1] == pytest.approx(losses[0], abs=1e-4)
    finally:
        torch._dynamo.config.error_on_recompile = False
        torch._dynamo.reset()


def test_full_mode_follows_the_base_models_dtype_after_to():
    case = BY_NAME["llama-full"]
    torch.manual_seed(0)
    hyper = get_hyper_model(case.build(), hyper_config(case))
    reference = case.build().to(torch.bfloat16)
    hyper.get_base_model().to(torch.bfloat16)
    ids = torch.randint(3, 90, (2, 6))
    with torch.no_grad():
        assert torch.equal(hyper(input_ids=ids, task=torch.tensor([0, 1])).logits, reference(input_ids=ids).logits)

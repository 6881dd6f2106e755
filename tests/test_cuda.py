"""On a CUDA device (skipped elsewhere): a hyper model's forward, generate and training step make no host
synchronisation (`torch.cuda.set_sync_debug_mode("error")` turns one into an error), and compute what the CPU
computes. Run where a GPU exists: `pytest tests/test_cuda.py`."""

from __future__ import annotations

import contextlib

import pytest
import torch
from hf_models import CASES, hyper_config

from hyperlight import get_hyper_model

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
LLAMA = next(c for c in CASES if c.name == "llama")


@contextlib.contextmanager
def no_host_sync():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


def _hyper(device, **overrides):
    torch.manual_seed(0)
    hyper = get_hyper_model(LLAMA.build().to(device), hyper_config(LLAMA, **overrides))
    with torch.no_grad():
        for p in hyper.generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return hyper


@pytest.mark.parametrize("tasks", [[2], [1, 1, 1, 1], [0, 3, 1, 3]])
def test_a_cuda_forward_makes_no_host_sync_and_equals_each_row_alone(tasks):
    rows = 4
    ids = LLAMA.inputs(rows)["input_ids"].cuda()  # no attention mask: Transformers' masking itself syncs on one
    gpu = _hyper("cuda").eval()
    task = torch.tensor(tasks, device="cuda")
    with torch.no_grad(), no_host_sync():
        got = gpu(input_ids=ids, task=task).logits
    with torch.no_grad():
        per_row = task.expand(rows) if len(tasks) == 1 else task
        alone = torch.cat([gpu(input_ids=ids[i : i + 1], task=per_row[i : i + 1]).logits for i in range(rows)])
    assert torch.allclose(got, alone, atol=1e-4)


def test_cuda_generate_and_a_training_step_make_no_host_sync():
    gpu = _hyper("cuda")
    inputs = {"input_ids": LLAMA.inputs(4)["input_ids"].cuda()}  # no attention mask: Transformers syncs on one
    task = torch.tensor([0, 3, 1, 3], device="cuda")
    opt = torch.optim.SGD([p for p in gpu.parameters() if p.requires_grad], lr=0.1)
    gpu.train()
    loss = gpu(**inputs, labels=inputs["input_ids"], task=task).loss  # a warm-up (lazy initialisations)
    loss.backward()
    opt.zero_grad()
    with no_host_sync():
        loss = gpu(**inputs, labels=inputs["input_ids"], task=task).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    gpu.eval()
    with torch.no_grad():
        gpu(**inputs, task=task)
        # generate itself synchronises (stopping criteria read tokens back); the hyper model's part does not
        calls = []
        hook = gpu.generator.register_forward_pre_hook(lambda *_: calls.append(1))
        gpu.generate(**inputs, task=task, max_new_tokens=2, do_sample=False, pad_token_id=0)
        hook.remove()
    assert calls == [1]  # the generator ran once for the whole generate call


def test_cuda_bf16_training_step_with_checkpointing_matches_fp32_gradients_roughly():
    def grads(dtype):
        m = _hyper("cuda").to(dtype).train()
        m.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        inputs = {k: v.cuda() for k, v in LLAMA.inputs(4).items()}
        loss = m(**inputs, task=torch.tensor([0, 1, 2, 3], device="cuda")).logits.float().square().mean()
        loss.backward()  # on CUDA the backward runs on the autograd engine's device thread
        return torch.cat([p.grad.float().flatten() for p in m.generator.parameters() if p.grad is not None])

    g32, g16 = grads(torch.float32), grads(torch.bfloat16)
    assert torch.isfinite(g16).all()
    assert torch.nn.functional.cosine_similarity(g32, g16, dim=0) > 0.95

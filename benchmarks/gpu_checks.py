"""CUDA checks of the call binding, for a machine with a GPU (never part of the CPU test suite).

    python benchmarks/gpu_checks.py      # about a minute on one GPU; prints one line per check, exits 1 on a failure

Each check compares the hyper model on CUDA with a plain reference: a mixed batch vs each example alone; four
threads vs one; gradients with both kinds of gradient checkpointing, two forwards before one backward, vs none
(on CUDA the backward runs on the autograd engine's device thread, not the caller's); a bf16 training step;
then it counts the host synchronisations of one forward (`torch.cuda.set_sync_debug_mode`).
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hf_models import CASES, hyper_config  # noqa: E402

from hyperlight import get_hyper_model  # noqa: E402

DEVICE = os.environ.get("HYPERLIGHT_DEVICE", "cuda")  # "cpu" runs the same checks as a smoke test
LLAMA = next(c for c in CASES if c.name == "llama")
FAILED: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}", flush=True)
    if not ok:
        FAILED.append(name)


def hyper(dtype=torch.float32):
    torch.manual_seed(0)
    model = get_hyper_model(LLAMA.build().to(DEVICE, dtype), hyper_config(LLAMA, target_modules="attention+mlp"))
    with torch.no_grad():
        for p in model.generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def inputs(batch, seed=1):
    return {k: v.to(DEVICE) for k, v in LLAMA.inputs(batch, seed=seed).items()}


def main() -> None:
    print(torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE, torch.__version__, flush=True)
    model = hyper().eval()
    x, task = inputs(4), torch.tensor([0, 3, 1, 3], device=DEVICE)
    with torch.no_grad():
        mixed = model(**x, task=task).logits
        alone = torch.cat([model(**inputs(4), task=task[i : i + 1]).logits[i : i + 1] for i in range(4)])
        check(
            "mixed batch == each example alone",
            torch.allclose(mixed, alone, atol=1e-4),
            f"max diff {(mixed - alone).abs().max().item():.1e}",
        )

        jobs = [(inputs(1 + i % 3, seed=i), torch.full((1 + i % 3,), i % 4, device=DEVICE)) for i in range(32)]
        want = [model(**a, task=t).logits for a, t in jobs]
        got: list = [None] * len(jobs)

        def work(k):
            for i in range(k, len(jobs), 4):
                got[i] = model(**jobs[i][0], task=jobs[i][1]).logits

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        check("4 threads == 1 thread", all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, want)))

    def grads(checkpointing):
        m = hyper().train()
        if checkpointing is not None:
            m.get_base_model().gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": checkpointing}
            )
        a, b = inputs(2, seed=3), inputs(2, seed=4)
        loss = m(**a, task=torch.tensor([0, 1], device=DEVICE)).logits.square().mean()
        loss = loss + m(**b, task=torch.tensor([2, 3], device=DEVICE)).logits.square().mean()
        loss.backward()  # two forwards, then one backward (on CUDA: on the device thread)
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    plain = grads(None)
    for reentrant in (False, True):
        g = grads(reentrant)
        diff = max((g[n] - plain[n]).abs().max().item() for n in plain)
        check(
            f"checkpointing (use_reentrant={reentrant}), 2 forwards + 1 backward == none",
            g.keys() == plain.keys() and diff < 1e-5,
            f"max grad diff {diff:.1e}",
        )

    m = hyper(torch.bfloat16).train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(3):
        loss = m(**inputs(4), labels=inputs(4)["input_ids"], task=task).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    check("bf16 training steps", all(torch.isfinite(torch.tensor(losses))), f"losses {losses}")

    model.eval()
    with torch.no_grad():
        model(**x, task=task)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if DEVICE == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            model(input_ids=x["input_ids"], task=task)  # no attention mask: Transformers' masking syncs on one
            if DEVICE == "cuda":
                torch.cuda.set_sync_debug_mode(0)
    syncs = [  # PyTorch's notice that the debug mode is a prototype is not a synchronisation
        str(w.message).splitlines()[0]
        for w in caught
        if "synchroniz" in str(w.message) and "prototype" not in str(w.message)
    ]
    print(f"info host synchronisations in one forward: {len(syncs)}", *sorted(set(syncs))[:5], sep="\n  ")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()

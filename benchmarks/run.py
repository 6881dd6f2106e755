"""hyperlight vs PEFT, side by side in one process: speed, hypernetwork size, memory. Prints a markdown table.

    python benchmarks/run.py                  # the README's table (Llama-shaped, hidden 512, 8 layers)
    python benchmarks/run.py --size tiny      # a smoke run (the test suite uses it)
    python benchmarks/run.py --device cuda    # the same table in bf16 on a GPU

Timings are medians of repeated runs after a warm-up; each repeat times every side in turn (rotating the
order), in the same process, on the same inputs. "Above the base" is each method's cost above the same model
instance with its adapter disabled, the median of the differences within a repeat. Ratios < 1 mean hyperlight
is faster.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import functools
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL_TARGETS = [*TARGETS, "gate_proj", "up_proj", "down_proj"]


@dataclass
class Size:
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    seq: int
    batch: int
    new_tokens: int
    repeats: int
    generator_hidden: int = 64  # the hypernetwork trunk's width (HyperConfig.hidden_size; 64 is its default)
    share_heads: bool = False  # HyperConfig.share_heads: module types of equal shapes share one head


SIZES = {
    "default": Size(512, 8, 1376, 8, 8, 2000, 128, 16, 32, 16),
    "tiny": Size(64, 2, 128, 4, 4, 256, 16, 4, 4, 2),
    # the small and the larger shape of the overhead table (issue 14)
    "small": Size(256, 4, 688, 4, 4, 2000, 64, 8, 16, 60),
    "large": Size(1024, 4, 2752, 8, 8, 2000, 128, 8, 16, 16),
    # issue 14's GPU column: a Llama-shaped model of realistic width in bf16 (run with --device cuda)
    "gpu": Size(2048, 16, 5504, 16, 16, 32000, 512, 8, 32, 10),
}
TASKS, RANK = 8, 8


def llama(size: Size, *, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=size.vocab,
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        max_position_embeddings=size.seq + size.new_tokens + 8,
        pad_token_id=0,
        eos_token_id=None,
    )
    with torch.device(device):  # initialised where it runs: a 1B-parameter init on the host takes tens of seconds
        return LlamaForCausalLM(config).to(dtype=dtype).eval()


def hyper_model(
    base, *, tasks: int = TASKS, targets: list[str] = TARGETS, hidden_size: int = 64, share_heads: bool = False
):
    from hyperlight import HyperConfig, get_hyper_model

    config = HyperConfig(
        target_modules=targets,
        conditions={"task": {"type": "categorical", "num": tasks}},
        rank=RANK,
        hidden_size=hidden_size,
        share_heads=share_heads,
    )
    hyper = get_hyper_model(base, config)
    with torch.no_grad():  # leave the identity init so both sides compute a non-trivial update
        for p in hyper.generator.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return hyper


def sized_hyper_model(size: Size, base):
    """`hyper_model` with the generator options a run chose (`--generator-hidden`, `--share-heads`)."""
    return hyper_model(base, hidden_size=size.generator_hidden, share_heads=size.share_heads)


def peft_model(base, adapters: int = 1, targets: list[str] = TARGETS):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=targets, init_lora_weights=False)
    model = get_peft_model(base, config, adapter_name="task0")
    for i in range(1, adapters):
        model.add_adapter(f"task{i}", config)
    return model


Side = Callable[[], object] | tuple[Callable[[], Any], Callable[[], object]]  # fn, or (untimed context, fn)


def timings(sides: list[Side], repeats: int, sync: Callable[[], None]) -> list[list[float]]:
    """Every repeat's time of several functions timed in turn (A, B, C, then B, C, A, ...), so that a machine's
    drift (frequency, other load) reaches every side alike, and no side always runs after the same other one
    (what the previous one left in caches and the allocator); side by side, as the ratios need. A side given as
    (context, fn) runs fn inside `with context():`, entered and left outside the timing (PEFT's
    `disable_adapter()` walks every module to flip a flag: a cost of the switch, not of the model)."""
    pairs = [side if isinstance(side, tuple) else (contextlib.nullcontext, side) for side in sides]
    for context, fn in pairs:  # warm-up
        with context():
            fn()
    sync()
    times: list[list[float]] = [[] for _ in pairs]
    for repeat in range(repeats):
        for i in range(len(pairs)):
            side = (i + repeat) % len(pairs)
            context, fn = pairs[side]
            with context():
                sync()
                start = time.perf_counter()
                fn()
                sync()
                times[side].append(time.perf_counter() - start)
    return times


def median_times(fns: list[Side], repeats: int, sync: Callable[[], None]) -> list[float]:
    return [statistics.median(t) for t in timings(fns, repeats, sync)]


def row(name: str, ours: float, theirs: float, target: str, unit: str = "s") -> dict[str, str]:
    ratio = ours / theirs
    return {
        "what": name,
        "hyperlight": f"{ours:.3f} {unit}",
        "peft / base": f"{theirs:.3f} {unit}",
        "ratio": f"{ratio:.2f}",
        "target": target,
    }


def ratio_interval(ours: list[float], theirs: list[float], rounds: int = 2000) -> tuple[float, float]:
    """The 90% bootstrap interval of median(ours) / median(theirs): repeats drawn with replacement, each repeat's
    two differences together (they share the machine's state at that moment). On a shared 2-core machine one
    forward's time can swing by tens of percent, as much as an adapter's whole overhead: the interval says
    whether a run's ratio is resolved (both ends on one side of the target) or needs more repeats. An interval
    whose resampled PEFT overhead reaches zero or below has an unbounded end (inf)."""
    draw = random.Random(0)  # the same interval for the same timings
    n = len(ours)
    ratios = []
    for _ in range(rounds):
        picks = [draw.randrange(n) for _ in range(n)]
        denominator = statistics.median(theirs[i] for i in picks)
        numerator = statistics.median(ours[i] for i in picks)
        ratios.append(numerator / denominator if denominator > 0 else math.inf)
    ratios.sort()
    return ratios[int(0.05 * rounds)], ratios[int(0.95 * rounds) - 1]


def overhead_rows(name: str, times: list[list[float]], target: str, target_ratio: str) -> list[dict[str, str]]:
    """The totals, and what each method costs above its own frozen base (the floor every adapter method pays).

    `times` are [hyperlight, its base, PEFT, its base]: each base is the *same instance* with its adapter
    disabled, since two instances of one model can differ by a few percent (where their weights lie in memory),
    as much as an adapter's whole cost at these sizes. An overhead is the median over repeats of (method - its
    base) within a repeat, which also cancels most of a machine's drift. The ratio comes with its 90% interval
    (`ratio_interval`): whether this run resolves the ratio against its target, or needs more repeats."""
    ours, our_base, theirs, their_base = times
    diffs = [[a - b for a, b in zip(side, base)] for side, base in ((ours, our_base), (theirs, their_base))]
    above = [statistics.median(d) for d in diffs]
    # the spread of the differences (half their interquartile range): how far one run's figure can be trusted
    spread = [(q[2] - q[0]) / 2 for q in (statistics.quantiles(d, n=4) for d in diffs)]
    floor = statistics.median(our_base + their_base)
    # a ratio of two differences means something only when both are clearly above the floor
    clear = min(above) > 0.01 * floor
    ratio = "- (within noise)"
    if clear:
        low, high = ratio_interval(*diffs)
        ratio = f"{above[0] / above[1]:.2f} [{low:.2f}, {high:.2f}]"
    return [
        row(name, statistics.median(ours), statistics.median(theirs), target),
        {
            "what": f"{name.split(' (')[0].split(',')[0]}, above the base ({floor:.3f} s)",
            "hyperlight": f"{above[0] * 1000:+.1f} ms (±{spread[0] * 1000:.1f})",
            "peft / base": f"{above[1] * 1000:+.1f} ms (±{spread[1] * 1000:.1f})",
            "ratio": ratio,
            "target": target_ratio,
        },
    ]


def measured(rows: list[dict[str, str]], new: list[dict[str, str]]) -> None:
    """Keep the rows for the table, and show each as soon as it is measured (stderr): a run stopped at a time
    limit, as on a lent GPU machine, still reports what it finished."""
    rows.extend(new)
    for r in new:
        print(
            f"measured: {r['what']}: {r['hyperlight']} | {r['peft / base']} | {r['ratio']}",
            file=sys.stderr,
            flush=True,
        )


def setup(size: Size, device: str, dtype: torch.dtype):
    """The inputs every timed section shares: token ids, one task per row (every batch mixes all tasks), the
    autocast context (bf16 on a GPU, off in fp32) and the device synchronisation to time with."""
    ids = torch.randint(1, size.vocab, (size.batch, size.seq), generator=torch.Generator().manual_seed(0)).to(device)
    tasks = (torch.arange(size.batch) % TASKS).to(device)
    autocast = torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return ids, tasks, autocast, sync


def training(model, ids: torch.Tensor, autocast, **conditions) -> Callable[[], None]:
    """One optimizer step of `model` on `ids` (labels = ids), as a callable to time. Fused AdamW: what
    Transformers' Trainer uses by default (torch >= 2.8)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)

    def step() -> None:
        with autocast:
            loss = model(input_ids=ids, labels=ids, **conditions).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def profile_training(size: Size, device: str, dtype: torch.dtype, steps: int = 3) -> None:
    """Where a training step's time goes, op by op, for hyperlight (8 tasks mixed) and PEFT (one adapter): the
    profiler's table by self time on the device (on the CPU, by self CPU time), after two warm-up steps."""
    from torch.profiler import ProfilerActivity, profile

    ids, tasks, autocast, sync = setup(size, device, dtype)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    sort = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    hyper = functools.partial(sized_hyper_model, size)
    for name, build, kw in [("hyperlight", hyper, {"task": tasks}), ("peft", peft_model, {})]:
        step = training(build(llama(size, device=device)).train(), ids, autocast, **kw)
        for _ in range(2):
            step()
        sync()
        with profile(activities=activities) as prof:
            for _ in range(steps):
                step()
            sync()
        print(f"## {name}: {steps} training steps, {size.hidden} hidden, {size.layers} layers, seq {size.seq}")
        print(prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60))
        step = None


def training_rows(size: Size, device: str, dtype: torch.dtype, rows: list[dict[str, str]]) -> None:
    """The training step: per-example mixed tasks vs one LoRA adapter (same targets, rank). Its models are freed
    when this returns, before the inference ones are built."""
    ids, tasks, autocast, sync = setup(size, device, dtype)
    hyper = sized_hyper_model(size, llama(size, device=device)).train()
    peft1 = peft_model(llama(size, device=device)).train()

    def frozen_base_step(model):
        """The base's forward, and its backward to the activations (the embeddings require grad, so the backward
        walks every layer, as an adapter's does); run inside `model.disable_adapter()`, the same instance."""
        embeds = model.get_input_embeddings()(ids).requires_grad_()
        with autocast:
            loss = model(inputs_embeds=embeds, labels=ids).loss
        loss.backward()

    train_step = training(hyper, ids, autocast, task=tasks), training(peft1, ids, autocast)
    times = timings(
        [
            train_step[0],
            (hyper.disable_adapter, lambda: frozen_base_step(hyper)),
            train_step[1],
            (peft1.disable_adapter, lambda: frozen_base_step(peft1)),
        ],
        size.repeats,
        sync,
    )
    measured(
        rows, overhead_rows("training step, 8 tasks mixed per batch (PEFT: 1 adapter)", times, "<= 1.15", "<= 1.0")
    )


def speed_rows(size: Size, device: str, dtype: torch.dtype, only: str | None = None) -> list[dict[str, str]]:
    """The timed rows; `only` ("training" or "forward") times that row alone (more repeats for one row)."""
    rows: list[dict[str, str]] = []
    if only != "forward":
        training_rows(size, device, dtype, rows)
    if only == "training":
        return rows
    ids, tasks, autocast, sync = setup(size, device, dtype)
    names = [f"task{int(t)}" for t in tasks]

    # 2./3. mixed-task inference: PEFT with 8 adapters and adapter_names per row
    hyper = sized_hyper_model(size, llama(size, device=device, dtype=dtype)).eval()
    peft8 = peft_model(llama(size, device=device, dtype=dtype), adapters=TASKS).eval()
    with torch.no_grad():
        times = timings(
            [
                lambda: hyper(input_ids=ids, task=tasks),
                (hyper.disable_adapter, lambda: hyper(input_ids=ids)),
                lambda: peft8(input_ids=ids, adapter_names=names),
                (peft8.disable_adapter, lambda: peft8(input_ids=ids)),
            ],
            size.repeats,
            sync,
        )
        measured(
            rows, overhead_rows("mixed-task forward (PEFT: 8 adapters, adapter_names)", times, "<= 1.0", "<= 0.3")
        )
        if only == "forward":
            return rows
        gen = {"max_new_tokens": size.new_tokens, "min_new_tokens": size.new_tokens, "do_sample": False}
        prompt = ids[:, : size.seq // 2]
        times = timings(
            [
                lambda: hyper.generate(input_ids=prompt, task=tasks, **gen),
                (hyper.disable_adapter, lambda: hyper.generate(input_ids=prompt, **gen)),
                lambda: peft8.generate(input_ids=prompt, adapter_names=names, **gen),
                (peft8.disable_adapter, lambda: peft8.generate(input_ids=prompt, **gen)),
            ],
            size.repeats,
            sync,
        )
        measured(
            rows, overhead_rows(f"mixed-task generate, {size.new_tokens} new tokens greedy", times, "<= 1.0", "<= 1.0")
        )

        # 4. weights are generated once per distinct condition, and once per generate call
        def per_step_generation():  # what a wrapper without the cache does: run the generator at every step
            base = hyper.get_base_model()
            forward = base.forward

            def regenerate(*args, **kwargs):
                rows = kwargs["input_ids"].shape[0] // tasks.shape[0]
                with hyper.conditioned(task=tasks.repeat_interleave(rows)):
                    return forward(*args, **kwargs)

            base.forward = regenerate
            try:
                hyper.generate(input_ids=prompt, task=tasks, **gen)
            finally:
                del base.forward

        t_cached, t_uncached = median_times(
            [lambda: hyper.generate(input_ids=prompt, task=tasks, **gen), per_step_generation], size.repeats, sync
        )
        measured(
            rows,
            [
                {
                    "what": "generate: weights once per call vs at every decoding step",
                    "hyperlight": f"{t_cached:.3f} s",
                    "peft / base": f"{t_uncached:.3f} s (every step)",
                    "ratio": f"{t_cached / t_uncached:.2f}",
                    "target": "< 1",
                }
            ],
        )
        repeated = tasks.new_full(tasks.shape, 3)
        calls = []
        hook = hyper.generator.register_forward_hook(lambda m, a, out: calls.append(a[0].shape[0]))
        hyper(input_ids=ids, task=repeated)
        hyper(input_ids=ids, task=tasks)
        hook.remove()
        measured(
            rows,
            [
                {
                    "what": f"generator rows for a batch of {size.batch}: one task / {TASKS} tasks",
                    "hyperlight": f"{calls[0]} / {calls[1]}",
                    "peft / base": "-",
                    "ratio": "-",
                    "target": f"1 / {min(TASKS, size.batch)}",
                }
            ],
        )

        # 5. merged model vs the plain base model, on the same instance: two instances of one model differ by
        # where their weights lie in memory, as much as the difference looked for here
        pretrained = {n: p.detach().clone() for n, p in hyper.get_base_model().named_parameters()}
        merged = hyper.merge_and_unload(task=2)
        params = dict(merged.named_parameters())
        merged_values = {n: p.detach().clone() for n, p in params.items() if not torch.equal(p, pretrained[n])}

        @contextlib.contextmanager
        def weights(values: dict[str, torch.Tensor]):  # copied into the same tensors, outside the timing
            with torch.no_grad():
                for name, value in values.items():
                    params[name].copy_(value)
            yield

        t_m, t_b = median_times(
            [
                (lambda: weights(merged_values), lambda: merged(input_ids=ids)),
                (lambda: weights({n: pretrained[n] for n in merged_values}), lambda: merged(input_ids=ids)),
            ],
            size.repeats,
            sync,
        )
        measured(
            rows,
            [
                row(
                    f"merge_and_unload(task=2) forward vs the base ({len(merged_values)} weights merged)",
                    t_m,
                    t_b,
                    "1.00 ± noise",
                )
            ],
        )
    return rows


LLAMA_SHAPES = {
    "Llama-2-7B": dict(hidden=4096, layers=32, intermediate=11008, heads=32, kv_heads=32, vocab=32000),
    "Llama-3-70B": dict(hidden=8192, layers=80, intermediate=28672, heads=64, kv_heads=8, vocab=128256),
}


def size_rows() -> list[dict[str, str]]:
    """Trainable parameters on the meta device (nothing allocated): hyperlight vs PEFT LoRA, all 7 projections."""
    rows = []
    for name, shape in LLAMA_SHAPES.items():
        size = Size(**shape, seq=8, batch=1, new_tokens=0, repeats=0)
        with torch.device("meta"):
            base_params = sum(p.numel() for p in llama(size, device="meta").parameters())
            lora1 = peft_model(llama(size, device="meta"), 1, ALL_TARGETS).get_nb_trainable_parameters()[0]
            counts = {}
            for tasks in (10, 100, 1000):
                hyper = hyper_model_meta(llama(size, device="meta"), tasks)
                counts[tasks] = hyper.get_nb_trainable_parameters()[0]
            shared = hyper_model_meta(llama(size, device="meta"), 1000, share_heads=True)
            heads = (len(hyper.generator.heads), len(shared.generator.heads))
            shared_count = shared.get_nb_trainable_parameters()[0]
        lora10 = 10 * lora1
        best = counts[1000]
        rows.append(
            {
                "what": f"{name} ({base_params / 1e9:.1f}B), rank 8 on q,k,v,o,gate,up,down",
                "hyperlight": " / ".join(f"{counts[t] / 1e6:.1f}M" for t in (10, 100, 1000)) + " (10/100/1000 tasks)",
                "peft / base": f"{lora1 / 1e6:.1f}M (1 adapter) / {lora10 / 1e6:.1f}M (10)",
                "ratio": f"{best / lora10:.2f} of 10 adapters; {100 * best / base_params:.2f}% of base",
                "target": "< 10 adapters, < 1%",
            }
        )
        rows.append(
            {
                "what": f"{name}, the same with share_heads=True ({heads[0]} -> {heads[1]} heads), 1000 tasks",
                "hyperlight": f"{shared_count / 1e6:.1f}M",
                "peft / base": f"{lora10 / 1e6:.1f}M (10 adapters)",
                "ratio": f"{shared_count / lora10:.2f} of 10 adapters; "
                f"{100 * shared_count / base_params:.2f}% of base",
                "target": "< 10 adapters, < 1%",
            }
        )
    return rows


def hyper_model_meta(base, tasks: int, share_heads: bool = False):
    from hyperlight import HyperConfig, get_hyper_model

    config = HyperConfig(
        target_modules=ALL_TARGETS,
        conditions={"task": {"type": "categorical", "num": tasks}},
        rank=RANK,
        share_heads=share_heads,
    )
    return get_hyper_model(base, config)


def memory_rows(size: Size, name: str, device: str) -> list[dict[str, str]]:
    """Peak memory of a training step, each side in a fresh process (RSS on CPU, the allocator on CUDA); the
    probe gets the shape `name` and the run's generator options."""
    if device == "cuda":
        return []
    options = ["--generator-hidden", str(size.generator_hidden)] + (["--share-heads"] if size.share_heads else [])
    peaks = {}
    for side in ("hyperlight", "peft"):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-probe", side, "--size", name, *options],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": "2"},
        )
        peaks[side] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
    return [row("peak RSS growth during 3 training steps", peaks["hyperlight"], peaks["peft"], "~1", "MB")]


def memory_probe(side: str, size: Size) -> None:
    import resource

    base = llama(size)
    model = (sized_hyper_model(size, base) if side == "hyperlight" else peft_model(base)).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(1, size.vocab, (size.batch, size.seq))
    kw = {"task": torch.arange(size.batch) % TASKS} if side == "hyperlight" else {}
    with open("/proc/self/statm") as f:
        before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    for _ in range(3):
        model(input_ids=ids, labels=ids, **kw).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB -> MB on Linux
    print(json.dumps({"peak_mb": peak - before}))


def markdown(rows: list[dict[str, str]]) -> str:
    header = ["what", "hyperlight", "peft / base", "ratio", "target"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r[h] for h in header) + " |" for r in rows]
    return "\n".join(lines)


def keep_freed_memory() -> str:
    """Have glibc's malloc keep the memory a forward frees, for the rest of this process: no trimming of the heap,
    and no separate mapping below 1 GiB (PyTorch's CPU tuning guide suggests the same, or jemalloc/tcmalloc).
    With glibc's defaults, whether a forward at the default shape maps ~300 MB of fresh pages again (80 000 page
    faults, 80-190 ms of kernel time in a 0.7 s forward) depended on where each model's tensors happened to lie
    in the heap: one instance faulted in every forward while the next did not, and which one changed from run
    to run, as much as an adapter's whole overhead. Returns what was done, for the table's header."""
    if sys.platform != "linux":
        return "malloc as is"
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "malloc as is (no glibc)"
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    refused = [
        name
        for name, option, value in (("trim", m_trim_threshold, 2**31 - 1), ("mmap", m_mmap_threshold, 2**30))
        if libc.mallopt(option, value) != 1
    ]
    if refused:  # the header says which setting did not take, so a run's figures are read for what they are
        return f"malloc keeps freed memory only in part (mallopt refused the {' and '.join(refused)} threshold)"
    return "malloc keeps freed memory"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="default", help="small, default, large: issue 14's")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip", nargs="*", default=[], choices=["speed", "size", "memory"])
    parser.add_argument("--repeats", type=int, help="timed repeats per row (default: the size's)")
    parser.add_argument("--generator-hidden", type=int, help="the generator trunk's width (default 64, the config's)")
    parser.add_argument("--share-heads", action="store_true", help="HyperConfig(share_heads=True) for hyperlight")
    parser.add_argument("--only", choices=["training", "forward"], help="of the speed rows, time only this one")
    parser.add_argument("--profile", action="store_true", help="profile a training step of each method instead")
    parser.add_argument("--malloc-as-is", action="store_true", help="leave glibc malloc's defaults (see README)")
    parser.add_argument("--memory-probe", choices=["hyperlight", "peft"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = SIZES[args.size]
    if args.repeats:
        size = dataclasses.replace(size, repeats=args.repeats)
    if args.generator_hidden:
        size = dataclasses.replace(size, generator_hidden=args.generator_hidden)
    if args.share_heads:
        size = dataclasses.replace(size, share_heads=True)
    if args.memory_probe:  # peak memory with malloc's defaults, what a user's process has
        memory_probe(args.memory_probe, size)
        return
    allocator = "malloc as is" if args.malloc_as_is else keep_freed_memory()
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    torch.set_num_threads(os.cpu_count() or 1)
    if args.profile:
        profile_training(size, args.device, dtype)
        return
    rows = []
    if "speed" not in args.skip:
        rows += speed_rows(size, args.device, dtype, args.only)
    if "size" not in args.skip:
        rows += size_rows()
    if "memory" not in args.skip:
        rows += memory_rows(size, args.size, args.device)
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {os.cpu_count()} cores"
    print(
        f"# {args.size}: hidden {size.hidden}, {size.layers} layers, seq {size.seq}, batch {size.batch}, "
        f"rank {RANK} on q,k,v,o, {TASKS} tasks, generator width {size.generator_hidden}"
        f"{', shared heads' if size.share_heads else ''}; {device}, {dtype}; torch {torch.__version__}; {allocator}"
    )
    print(markdown(rows))


if __name__ == "__main__":
    main()

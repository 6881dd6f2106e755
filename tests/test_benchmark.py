"""The benchmark script runs end to end on a tiny configuration and prints its table (timings are not
asserted here; the README's table comes from the full-size run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


def test_benchmark_smoke_run_prints_every_row():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--size", "tiny"], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    rows = {line.split(" | ")[0].strip("| ") for line in table[1:]}
    for expected in (
        "training step",
        "mixed-task forward",
        "mixed-task generate",
        "generate: weights once",
        "generator rows",
        "merge_and_unload",
        "Llama-2-7B",
        "Llama-3-70B",
        "peak RSS",
    ):
        assert any(r.startswith(expected) for r in rows), (expected, rows)
    sizes = [line for line in table if line.startswith("| Llama-")]
    for line in sizes:  # the size rows are exact counts, so their targets are checked
        share = float(line.split("; ")[1].split("%")[0])
        of_ten = float(line.split(" | ")[3].split(" of ")[0])
        assert share < 1.0 and of_ten < 1.0, line


GPU_SESSION = SCRIPT.parent / "gpu_session.sh"


def test_gpu_session_script_runs_its_steps_on_a_cpu(tmp_path):
    """The prepared GPU run (benchmarks/gpu_session.sh) as a CPU smoke run: its checks pass and every output file
    is written, so a session that is lent a GPU spends its device time on the run, not on fixing the script."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DEVICE": "cpu", "SIZE": "tiny", "OUT": str(tmp_path)}
    env["PYTHON"] = sys.executable
    proc = subprocess.run(["bash", str(GPU_SESSION)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "gpu_bench.md",
        "gpu_checks.log",
        "gpu_env.txt",
        "gpu_profile.txt",
    ]
    checks = (tmp_path / "gpu_checks.log").read_text()
    assert "FAIL" not in checks and checks.count("ok  ") >= 5, checks
    assert "training step, above the base" in (tmp_path / "gpu_bench.md").read_text()
    profile = (tmp_path / "gpu_profile.txt").read_text()
    assert "## hyperlight" in profile and "## peft" in profile and "aten::" in profile, profile[-3000:]


def test_ratio_interval_brackets_the_ratio_and_widens_with_noise(monkeypatch):
    """The overhead rows' 90% interval: tight when the differences agree, wide when they scatter, unbounded when
    PEFT's resampled overhead can reach zero, and the same for the same timings."""
    import importlib.util
    import math
    import random

    spec = importlib.util.spec_from_file_location("benchmark_run", SCRIPT)
    run = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, run)  # its dataclasses look their module up there
    spec.loader.exec_module(run)
    draw = random.Random(1)
    theirs = [0.010 + draw.gauss(0, 0.0005) for _ in range(40)]
    steady = [0.002 + draw.gauss(0, 0.0001) for _ in range(40)]
    noisy = [0.002 + draw.gauss(0, 0.004) for _ in range(40)]
    low, high = run.ratio_interval(steady, theirs)
    assert 0.15 < low < 0.2 < high < 0.25, (low, high)
    wide = run.ratio_interval(noisy, theirs)
    assert wide[0] < low and wide[1] > high and wide[1] - wide[0] > 5 * (high - low), wide
    assert run.ratio_interval(noisy, theirs) == wide
    _, unbounded = run.ratio_interval(steady, [draw.gauss(0, 0.001) for _ in range(40)])
    assert unbounded == math.inf


FAULTS = """
import resource, sys, torch
sys.path.insert(0, sys.argv[1])
import run
if sys.argv[2] == "keep":
    print(run.keep_freed_memory(), file=sys.stderr)
SIZES = [4 << 20, 2 << 20, 8 << 20, 1 << 20, 4 << 20, 3 << 20]  # floats: 4-32 MB, like a forward's activations
def step():  # allocate, write and free them as a forward does, some held until the end
    held = []
    for i, n in enumerate(SIZES):
        t = torch.ones(n)
        if i % 2:
            held.append(t)
        del t
    del held
def faults(steps):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults(5)  # warm-up
print(faults(5))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_the_benchmark_keeps_freed_memory_so_a_second_allocation_does_not_fault():
    """With glibc's defaults, tensors of a few MB freed and allocated again as a forward does go back to the
    system and fault their pages in again (what made one instance of a model pay ~100 ms of page faults per
    forward and another not); after `keep_freed_memory` the same steps reuse the heap: here 40,965 faults in 5
    steps against 0."""
    counts = {}
    for mode in ("keep", "as-is"):
        proc = subprocess.run(
            [sys.executable, "-c", FAULTS, str(SCRIPT.parent), mode], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        counts[mode] = int(proc.stdout.split()[-1])
    # 5 steps of 88 MB written are ~110,000 pages of 4 KB (far fewer where transparent huge pages are always on)
    assert counts["as-is"] >= 100 and counts["keep"] <= counts["as-is"] // 10, counts


def test_input_overhead_smoke_run_prints_every_model_and_row():
    script = SCRIPT.parent / "input_overhead.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(script), "--size", "tiny", "--repeats", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| ")][1:]
    assert {(r[0].strip("| "), r[1]) for r in table} == {
        (what, model)
        for what in ("training step", "forward, no grad", "generate")
        for model in ("categorical (task id)", "input (the prompt)", "input + task id", "PEFT LoRA (same modules)")
    }

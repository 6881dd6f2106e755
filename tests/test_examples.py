"""The examples a user runs or copies, each on its tiny `--quick` setting, as subprocesses without network:
`make demo`'s script (also under `accelerate launch` with 2 processes) and the three conditioning examples."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent
TASKS = ["copy", "reverse", "sort", "shift", "upper"]


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _run(command: list[str], timeout: int = 240) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


def _check_demo(stdout: str, out: Path) -> None:
    assert "Exact match on 16 held-out inputs per task" in stdout
    header = next(line for line in stdout.splitlines() if line.startswith("model "))
    assert header.split() == ["model", *TASKS, "mean", "trainable", "time"]
    models = ["base", "LoRA, task in prompt", "LoRA per task", "full FT, task in prompt", "hyper, task id",
              "hyper (small), task id"]  # fmt: skip
    for name in models:  # one row per model: five tasks and the mean, trainable parameters, training time
        assert re.search(rf"^{re.escape(name)} +(\d+% +){{6}}[\d,]+ +\d+s$", stdout, re.MULTILINE), name
    rows = {name: re.search(rf"^{re.escape(name)} .* ([\d,]+) +\d+s$", stdout, re.MULTILINE) for name in models}
    params = {name: int(m.group(1).replace(",", "")) for name, m in rows.items()}
    assert params["base"] == 0 and params["LoRA per task"] == 5 * params["LoRA, task in prompt"]
    # the small hyper model is matched to one LoRA's trainable parameters (within 10%)
    assert abs(params["hyper (small), task id"] / params["LoRA, task in prompt"] - 1) < 0.1
    assert "Generations on held-out inputs" in stdout
    assert "reloaded onto a fresh copy of the base: the same 80 generations" in stdout
    assert "PEFT check passed" in stdout
    assert (out / "hyper" / "hyper_config.json").is_file() and (out / "hyper" / "hyper_model.safetensors").is_file()
    assert (out / "peft-reverse" / "adapter_config.json").is_file()
    assert (out / "base" / "tokenizer.json").is_file()  # the pretrained base, reusable with --model
    figure = re.search(r"^Plot \(training loss, accuracy per task\): (.+\.png)$", stdout, re.MULTILINE)
    assert figure and Path(figure.group(1)) == out / "demo.png"
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_quick(tmp_path):
    stdout = _run([sys.executable, str(EXAMPLES / "demo.py"), "--quick", "--out", str(tmp_path)])
    _check_demo(stdout, tmp_path)
    assert "[1/3] Pretraining the base" in stdout and "[2/3] What a PEFT user would do" in stdout
    assert "[3/3] hyper, task id" in stdout and "[3/3] hyper (small), task id" in stdout
    # a saved base loads back with --model (its own tokenizer), no pretraining
    again = _run([sys.executable, str(EXAMPLES / "demo.py"), "--quick", "--model", str(tmp_path / "base"),
                  "--out", str(tmp_path / "again")])  # fmt: skip
    assert f"Base model: LlamaForCausalLM from {tmp_path / 'base'}" in again
    assert "Pretraining" not in again and "PEFT check passed" in again


def test_demo_quick_under_accelerate_launch_with_two_processes(tmp_path):
    command = [
        str(BIN / "accelerate"),
        "launch",
        "--config_file",
        str(EXAMPLES / "accelerate_ddp.yaml"),
        "--main_process_port",
        _free_port(),
        str(EXAMPLES / "demo.py"),
        "--quick",
        "--out",
        str(tmp_path),
    ]
    stdout = _run(command)
    assert "2 processes: Trainer runs DDP" in stdout
    _check_demo(stdout, tmp_path)
    assert stdout.count("PEFT check passed") == 1  # only rank 0 reports


def test_minilm_language_task_quick(tmp_path):
    stdout = _run([sys.executable, str(EXAMPLES / "minilm_language_task.py"), "--quick", "--out", str(tmp_path)])
    assert re.search(r"^task +en +fr +es +de$", stdout, re.MULTILINE)
    for task in ("sentiment", "topic", "tense"):
        assert re.search(rf"^{task} \(\w+/\w+\) +(\d+%[ *] *){{4}}$", stdout, re.MULTILINE), task
    assert re.search(r"^topic .* \d+%\*", stdout, re.MULTILINE)  # the held-out cell is marked
    assert "* (topic, es): a combination never seen in training" in stdout
    assert (tmp_path / "hyper" / "hyper_model.safetensors").is_file()


def test_text_to_lora_quick():
    stdout = _run([sys.executable, str(EXAMPLES / "text_to_lora.py"), "--quick"])
    assert "trained tasks, new wording" in stdout
    assert len(re.findall(r"^  unseen: Does this sentence have to do with .+ \d+%$", stdout, re.MULTILINE)) == 8
    assert re.search(r"^  mean over the 8 unseen tasks +\d+%$", stdout, re.MULTILINE)
    assert re.search(r"^  the same, each given another unseen task's description +\d+%$", stdout, re.MULTILINE)


def test_scalar_condition_quick():
    stdout = _run([sys.executable, str(EXAMPLES / "scalar_condition.py"), "--quick"])
    rows = re.findall(r"^  (\d\.\d) +([\d.]+) +([\d.]+) +([\d.]+)", stdout, re.MULTILINE)
    assert [r[0] for r in rows] == [f"{i / 10:.1f}" for i in range(11)]
    assert "best lam against the clean signal" in stdout
    assert "outputs for lam = 0.50 and 0.51 differ by at most" in stdout


def test_trl_sft_dpo_quick():
    stdout = _run([sys.executable, str(EXAMPLES / "trl_sft_dpo.py"), "--quick"])
    rows = re.findall(r"^(red|green|blue) +([\d.]+) +([\d.]+) +([\d.]+)$", stdout, re.MULTILINE)
    assert [r[0] for r in rows] == ["red", "green", "blue"]
    assert re.search(r"^DPO reward margin: first logged -?[\d.]+, last -?[\d.]+$", stdout, re.MULTILINE)
    assert "(no second copy): PretrainedReference" in stdout


def test_distill_adapters_quick(tmp_path):
    stdout = _run([sys.executable, str(EXAMPLES / "distill_adapters.py"), "--quick", "--out", str(tmp_path)])
    assert re.search(r"^Distilled 5 adapter\(s\)", stdout, re.MULTILINE)
    rows = re.findall(r"^(copy|reverse|sort|shift|upper) +((?:\d+% +){4}\d+%)$", stdout, re.MULTILINE)
    assert [r[0] for r in rows] == ["copy", "reverse", "sort", "shift", "upper"]
    assert (tmp_path / "distill.png").stat().st_size > 0
    assert (tmp_path / "distilled" / "hyper_config.json").exists()


def test_input_conditions_quick(tmp_path):
    stdout = _run([sys.executable, str(EXAMPLES / "input_conditions.py"), "--quick", "--out", str(tmp_path)])
    header = next(line for line in stdout.splitlines() if line.startswith("model "))
    rules = len(re.findall(r"[a-z]-[a-z]: \w+", header))  # the first letter's ranges, each with its operation
    assert rules and header.split()[-5:] == ["mean", "trainable", "time", "per", "example"]
    rows = {}
    for name in ("base", "LoRA (r16, every block)", "hyper, input layer 1"):
        row = re.search(rf"^{re.escape(name)} +((?:\d+% +){{{rules + 1}}})([\d,]+) +\d+s +[\d.]+ ms$", stdout, re.M)
        assert row, name
        rows[name] = int(row.group(2).replace(",", ""))
    assert rows["base"] == 0 and rows["LoRA (r16, every block)"] < rows["hyper, input layer 1"]


@pytest.mark.parametrize(
    "script",
    [
        "demo.py",
        "minilm_language_task.py",
        "text_to_lora.py",
        "scalar_condition.py",
        "trl_sft_dpo.py",
        "distill_adapters.py",
        "input_conditions.py",
    ],
)
def test_examples_document_how_to_run_them(script):
    text = (EXAMPLES / script).read_text()
    assert f"python examples/{script}" in text and "--quick" in text

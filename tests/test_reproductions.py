"""The reproduction examples on real data (scikit-learn's 8x8 digits), each on its tiny `--quick` setting, as
subprocesses without network: the printed tables have their structure, and the plots are written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PNG = b"\x89PNG\r\n\x1a\n"
NUMBER = r"\d+\.\d+"
MEAN_STD = rf"(?:{NUMBER} ± {NUMBER}|-)"


def _run(command: list[str], timeout: int = 240) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


def test_mip_ablation_quick(tmp_path):
    stdout = _run([sys.executable, str(EXAMPLES / "mip_ablation.py"), "--quick", "--out", str(tmp_path)])
    assert re.search(
        r"^arm +encoding +residual +init +lr +early loss +final loss +test acc \(%\) +diverged$", stdout, re.M
    )
    rows = re.findall(
        rf"^(MIP|no encoding|no residual|torch init|plain) +(cos\|sin|none) +(yes|no) +(paper|torch) +([\d.e-]+) +"
        rf"({MEAN_STD}) +({MEAN_STD}) +({MEAN_STD}) +(\d)/2$",
        stdout,
        re.MULTILINE,
    )
    arms = {
        "MIP": ("cos|sin", "yes", "paper"),
        "no encoding": ("none", "yes", "paper"),
        "no residual": ("cos|sin", "no", "paper"),
        "torch init": ("cos|sin", "yes", "torch"),
        "plain": ("none", "no", "torch"),
    }
    assert [(r[0], float(r[4])) for r in rows] == [(arm, lr) for arm in arms for lr in (1e-3, 3e-3, 1e-2, 3e-2)]
    for arm, encoding, residual, init, _, early, loss, accuracy, diverged in rows:
        assert (encoding, residual, init) == arms[arm]
        assert (early == "-") == (loss == "-") == (accuracy == "-") == (diverged == "2")  # all diverged: no mean
    assert re.search(r"^arm +(lr [\d.e-]+: early loss, acc +){3}lr 0\.03: early loss, acc *$", stdout, re.M)
    cell = r"[+-]\d+\.\d{3}, [+-]\d+\.\d"
    deltas = re.findall(rf"^(no encoding|no residual|torch init|plain) +(?:{cell} +){{3}}{cell} *$", stdout, re.M)
    assert deltas == ["no encoding", "no residual", "torch init", "plain"]
    figure = re.search(r"^Plot \(training loss per arm, one panel per learning rate\): (.+\.png)$", stdout, re.M)
    assert figure and Path(figure.group(1)) == tmp_path / "mip_ablation.png"
    assert (tmp_path / "mip_ablation.png").read_bytes()[:8] == PNG


def _grid(stdout: str, title: str, cell: str) -> list[list[str]]:
    """The task x domain table under the line starting with `title`: for each task, its 4 cells."""
    block = stdout[stdout.index(title) :].splitlines()
    assert block[1].split() == ["task", "identity", "rot90", "invert", "hflip"]
    rows = []
    for line, task in zip(block[2:6], ["digit", "parity", "high", "mod3"]):
        cells = re.findall(rf"({cell})(\*?)", line)
        assert line.startswith(task) and len(cells) == 4, line
        rows.append([c[1] for c in cells])
    return rows


def test_digits_tasks_quick(tmp_path):
    stdout = _run([sys.executable, str(EXAMPLES / "digits_tasks.py"), "--quick", "--out", str(tmp_path)])
    assert re.search(rf"^Pretrained MLP on 650 digits .*: test accuracy {NUMBER}$", stdout, re.M)

    # 1. one hyper model against 16 PEFT LoRAs: a few-shot combination per task and per domain
    marks = _grid(stdout, "Test accuracy, hyper model / PEFT LoRA", rf"{NUMBER} / {NUMBER}")
    stars = [(t, d) for t in range(4) for d in range(4) if marks[t][d]]
    assert sorted(t for t, _ in stars) == [0, 1, 2, 3] and sorted(d for _, d in stars) == [0, 1, 2, 3]
    params = re.search(r"^trainable parameters +([\d,]+) +([\d,]+) +\(16 x ([\d,]+)\)$", stdout, re.M)
    assert params, stdout
    hyper, lora, each = (int(p.replace(",", "")) for p in params.groups())
    assert lora == 16 * each and hyper > 0
    for name in ("many-shot mean \\(12\\)", "few-shot mean \\(4\\)"):
        assert re.search(rf"^{name} +{NUMBER} +{NUMBER} +\([+-]\d+\.\d points\)$", stdout, re.M), name

    # 2. combinations never trained on: three models, one per task and one per domain held out
    held = _grid(stdout, "Test accuracy (mean of 2 seeds), hyper model told", rf"{NUMBER} / {NUMBER} / {NUMBER}")
    unseen = [(t, d) for t in range(4) for d in range(4) if held[t][d]]
    assert len(unseen) == 4 and not set(unseen) & set(stars)
    assert sorted(t for t, _ in unseen) == [0, 1, 2, 3] and sorted(d for _, d in unseen) == [0, 1, 2, 3]
    header = re.search(r"^mean ± std over 2 seeds +(.+)$", stdout, re.M)
    assert header and re.split(r" {2,}", header.group(1).strip()) == [
        "task and domain",
        "task only",
        "unconditioned (num=1)",
    ]
    for name in (r"unseen combinations \(4\)", r"trained combinations \(12\)"):
        assert re.search(rf"^{name} +({NUMBER} ± {NUMBER} +){{2}}{NUMBER} ± {NUMBER} *$", stdout, re.M), name

    figure = re.search(r"^Plot \(test accuracy per combination\): (.+\.png)$", stdout, re.M)
    assert figure and Path(figure.group(1)) == tmp_path / "digits_tasks.png"
    assert (tmp_path / "digits_tasks.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize("script", ["mip_ablation.py", "digits_tasks.py"])
def test_reproductions_document_how_to_run_them(script):
    text = (EXAMPLES / script).read_text()
    assert f"python examples/{script}" in text and "--quick" in text
    assert "WALL_TIME" not in text  # the docstring gives the measured time of a full run

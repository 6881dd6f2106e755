"""Checkpoints: one consistent unit under SIGKILL and injected crashes, verified and bounded loading, errors that
name the file, and a failed load that leaves the given model as it was."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from hf_models import CASES, hyper_config

from hyperlight import HyperModel, get_hyper_model
from hyperlight.integrations import io
from hyperlight.integrations.io import CONFIG_NAME, WEIGHTS_NAME, CheckpointError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
CASE = CASES[0]  # tiny Llama


def _base():
    return CASE.build()


def _hyper(fill: float | None = None, **overrides) -> HyperModel:
    hyper = get_hyper_model(_base(), hyper_config(CASE, **overrides))
    if fill is not None:
        with torch.no_grad():
            for p in hyper.generator.parameters():
                p.fill_(fill)
    return hyper


def _stamp(directory: Path) -> float:
    """Which save a directory holds: the generator's fill value, checked against the config saved with it."""
    hyper = HyperModel.from_pretrained(_base(), directory)
    values = {float(p.flatten()[0]) for p in hyper.generator.parameters()}
    assert len(values) == 1, "weights from several saves"
    (fill,) = values
    assert hyper.hyper_config.alpha == fill + 1, (
        f"config of another save: alpha {hyper.hyper_config.alpha}, fill {fill}"
    )
    assert all(bool((p == fill).all()) for p in hyper.generator.parameters())
    return fill


def _save(directory: Path, fill: float) -> None:
    hyper = _hyper(fill)
    hyper.hyper_config = dataclasses.replace(hyper.hyper_config, alpha=fill + 1)  # config and weights tell the save
    hyper.save_pretrained(directory)


def _temporaries(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


# -- one consistent unit -------------------------------------------------------------------------------


_CHILD = textwrap.dedent(
    """
    import dataclasses, sys, torch
    sys.path.insert(0, {tests!r})
    from hf_models import CASES, hyper_config
    from hyperlight import get_hyper_model
    hyper = get_hyper_model(CASES[0].build(), hyper_config(CASES[0], hidden_size=256))
    config = hyper.hyper_config
    fill = 1.0
    while True:
        with torch.no_grad():
            for p in hyper.generator.parameters():
                p.fill_(fill)
        hyper.hyper_config = dataclasses.replace(config, alpha=fill + 1)
        hyper.save_pretrained({directory!r})
        print(fill, flush=True)
        fill += 1
    """
)


def test_a_save_killed_at_any_instant_leaves_the_old_or_the_new_checkpoint(tmp_path):
    trials = int(os.environ.get("HYPERLIGHT_KILL_TRIALS", "4"))
    rng = random.Random(0)
    directory = tmp_path / "ckpt"
    script = _CHILD.format(tests=str(Path(__file__).parent), directory=str(directory))
    seen = set()
    for _ in range(trials):
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        child.stdout.readline()  # one whole save done: from here on a kill lands anywhere in a save
        time.sleep(rng.uniform(0.0, 0.4))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        seen.add(_stamp(directory))  # config and weights of one and the same save
    assert seen
    _save(directory, 100.0)  # a later save removes what the killed ones left behind
    assert _temporaries(directory) == []
    assert _stamp(directory) == 100.0


class _Crash(Exception):
    pass


def test_a_crash_at_any_step_of_a_save_leaves_the_old_or_the_new_checkpoint(tmp_path, monkeypatch):
    directory = tmp_path / "ckpt"
    steps = ["replace", "fsync", "chmod", "mkstemp"]
    calls = {"n": 0, "crash_at": -1}
    originals = {name: getattr(os, name) for name in ("replace", "fsync", "chmod")}
    originals["mkstemp"] = io.tempfile.mkstemp

    def counting(name):
        def wrapped(*args, **kwargs):
            if calls["n"] == calls["crash_at"]:
                calls["n"] += 1
                raise _Crash(f"injected before {name}")
            calls["n"] += 1
            return originals[name](*args, **kwargs)

        return wrapped

    crash_at, outcomes = 0, set()
    while True:
        _save(directory, 1.0)
        calls.update(n=0, crash_at=crash_at)
        with monkeypatch.context() as patch:
            for name in steps:
                patch.setattr(io.tempfile if name == "mkstemp" else os, name, counting(name))
            try:
                _save(directory, 2.0)
                crashed = False
            except _Crash:
                crashed = True
        outcomes.add(_stamp(directory))
        if not crashed:
            break
        crash_at += 1
    assert crash_at >= 6  # every step of both files was interrupted once
    assert outcomes == {1.0, 2.0}
    _save(directory, 3.0)
    assert _temporaries(directory) == [] and _stamp(directory) == 3.0


def test_a_save_between_the_two_renames_loads_as_the_new_checkpoint(tmp_path, monkeypatch):
    directory = tmp_path / "ckpt"
    _save(directory, 1.0)
    real = io.save_json

    def killed_before_the_config(path, data):
        raise _Crash("killed after the weights were renamed into place")

    monkeypatch.setattr(io, "save_json", killed_before_the_config)
    with pytest.raises(_Crash):
        _save(directory, 2.0)
    monkeypatch.setattr(io, "save_json", real)
    assert json.loads((directory / CONFIG_NAME).read_text())["alpha"] == 2.0  # the readable copy is stale
    with pytest.warns(UserWarning, match="is from another save than"):
        assert _stamp(directory) == 2.0  # the weights' own config wins: exactly the new checkpoint


def test_saved_files_get_the_permissions_of_an_ordinary_open(tmp_path):
    previous = os.umask(0o022)
    try:
        _save(tmp_path, 1.0)
    finally:
        os.umask(previous)
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


# -- verified loading ------------------------------------------------------------------------------------


def _flip_a_data_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    header = int.from_bytes(data[:8], "little")
    data[8 + header + 17] ^= 0x01  # a byte of tensor data, past the JSON header
    path.write_bytes(bytes(data))


def test_a_flipped_byte_is_refused_naming_the_file(tmp_path):
    _save(tmp_path, 1.0)
    _flip_a_data_byte(tmp_path / WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match=rf"{WEIGHTS_NAME} does not match the digest recorded"):
        HyperModel.from_pretrained(_base(), tmp_path)


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path):
    hyper = _hyper(0.5)
    with torch.no_grad():
        hyper.generator.z_proj.weight[0, 0] = float("nan")
    hyper.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"tensor 'generator.z_proj.weight' holds NaN or infinite values"):
        HyperModel.from_pretrained(_base(), tmp_path)


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda d: (d / WEIGHTS_NAME).write_bytes((d / WEIGHTS_NAME).read_bytes()[:100]),
            "is not a readable safetensors",
        ),
        (lambda d: (d / WEIGHTS_NAME).unlink(), f"no {WEIGHTS_NAME} in"),
        (lambda d: (d / WEIGHTS_NAME).write_bytes(b""), "is not a readable safetensors"),
    ],
    ids=["truncated", "missing weights", "empty"],
)
def test_damaged_files_are_refused_naming_the_file(tmp_path, damage, message):
    _save(tmp_path, 1.0)
    damage(tmp_path)
    with pytest.raises(CheckpointError, match=message) as info:
        HyperModel.from_pretrained(_base(), tmp_path)
    assert str(tmp_path) in str(info.value)


def _write(directory: Path, record, tensors=None, *, embed: bool = True) -> None:
    """A checkpoint written by hand: `record` as the config (embedded in the weights file, or only as JSON)."""
    tensors = tensors if tensors is not None else _hyper(1.0).hyper_state_dict()
    metadata = {"format": "pt"}
    if embed:
        metadata[io.CONFIG_KEY] = json.dumps(record)
        metadata[io.DIGEST_KEY] = io.tensors_digest(tensors)
    io.save_tensors(directory / WEIGHTS_NAME, tensors, metadata)
    (directory / CONFIG_NAME).write_text(record if isinstance(record, str) else json.dumps(record))


def _good_record() -> dict:
    hyper = _hyper(1.0)
    return json.loads(json.dumps(hyper._config_record()))


@pytest.mark.parametrize("embed", [True, False], ids=["embedded", "json-only"])
@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: [1, 2, 3], r"must hold a JSON object .* got a list"),
        (lambda r: "not json {", r"is not valid JSON"),
        (lambda r: {**r, "hyperlight": "v1"}, r"'hyperlight' must be an object"),
        (lambda r: {**r, "hyperlight": {**r["hyperlight"], "targets": ["a"]}}, r"'hyperlight.targets' must map"),
        (lambda r: {**r, "rank": 1_000_000_000}, r"whose targets do not match.*model {'lora_A': .1000000000, 32"),
        (lambda r: {**r, "hidden_size": 10**9}, r"does not hold the tensors its config describes"),
        (lambda r: {**r, "alpha": "x"}, r"alpha"),
    ],
    ids=["array", "broken", "provenance string", "targets list", "huge rank", "huge hidden", "alpha type"],
)
def test_hostile_or_broken_configs_are_refused_before_anything_is_allocated(tmp_path, edit, message, embed):
    record = edit(_good_record())
    if not embed and isinstance(record, str):
        (tmp_path / CONFIG_NAME).write_text(record)
        io.save_tensors(tmp_path / WEIGHTS_NAME, _hyper(1.0).hyper_state_dict())
    elif isinstance(record, str):
        tensors = _hyper(1.0).hyper_state_dict()
        io.save_tensors(tmp_path / WEIGHTS_NAME, tensors, {"format": "pt", io.CONFIG_KEY: record})
    else:
        _write(tmp_path, record, embed=embed)
    base = _base()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=message) as info:
        HyperModel.from_pretrained(base, tmp_path)
    assert time.perf_counter() - start < 10
    assert str(tmp_path) in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())


def test_a_catastrophic_regex_is_evaluated_with_a_bound(tmp_path, monkeypatch):
    record = _good_record()
    # Python's `re` backtracks exponentially on this for every module name (it never returns on
    # 'model.layers.0.self_attn.q_proj'); loading evaluates it with a bounded engine instead
    record["target_modules"] = r"((\w|\.)+)+(\d\d\d|x_proj)"
    _write(tmp_path, record)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"matched no module"):
        HyperModel.from_pretrained(_base(), tmp_path)
    assert time.perf_counter() - start < 10

    import regex

    def runaway(*args, **kwargs):
        raise TimeoutError("regex time out")

    monkeypatch.setattr(regex, "fullmatch", runaway)  # a pattern slow even for the bounded engine
    record["target_modules"] = r".*\.(q_proj|v_proj)"
    _write(tmp_path, record)
    with pytest.raises(CheckpointError, match=r"target_modules/exclude_modules pattern took too long to evaluate"):
        HyperModel.from_pretrained(_base(), tmp_path)


def test_an_edited_pattern_that_selects_other_modules_is_refused(tmp_path):
    record = _good_record()
    record["target_modules"] = r".*\.(q_proj|k_proj)"  # the recorded targets are q_proj and v_proj
    _write(tmp_path, record)
    with pytest.raises(CheckpointError, match=r"its target_modules select .* the targets it recorded"):
        HyperModel.from_pretrained(_base(), tmp_path)


def test_a_failed_load_leaves_the_given_model_exactly_as_it_was(tmp_path):
    _save(tmp_path, 1.0)
    _flip_a_data_byte(tmp_path / WEIGHTS_NAME)  # detected only when the tensors are read, after building
    base = _base()
    base.lm_head.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    classes = {n: type(m) for n, m in base.named_modules()}
    grads = {n: p.requires_grad for n, p in base.named_parameters()}
    with pytest.raises(CheckpointError):
        HyperModel.from_pretrained(base, tmp_path)
    assert {n: type(m) for n, m in base.named_modules()} == classes
    assert {n: p.requires_grad for n, p in base.named_parameters()} == grads
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    _save(tmp_path, 2.0)
    assert HyperModel.from_pretrained(base, tmp_path)  # and a retry works on the same model

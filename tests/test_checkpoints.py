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
from hyperlight.plugin import checkpoint_file as io
from hyperlight.plugin.checkpoint_file import CONFIG_NAME, WEIGHTS_NAME, CheckpointError
from hyperlight.plugin.save_and_load import checkpoint_record

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
    """Everything in a checkpoint directory beside its two files: what a save left behind, whoever wrote it."""
    return sorted(p.name for p in directory.iterdir() if p.name not in (WEIGHTS_NAME, CONFIG_NAME))


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


_KILLED_INSIDE_THE_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import safetensors.torch
    from hf_models import CASES, hyper_config
    from hyperlight import get_hyper_model

    real = safetensors.torch.save_file

    def killed_midway(tensors, filename, metadata=None):
        # what safetensors does: write its own temporary beside the target, then rename it; killed in between
        Path(filename).with_name(".tmpAbC123").write_bytes(b"half a weights file")
        os.kill(os.getpid(), signal.SIGKILL)

    hyper = get_hyper_model(CASES[0].build(), hyper_config(CASES[0]))
    safetensors.torch.save_file = killed_midway
    hyper.save_pretrained({directory!r})
    """
)


def test_a_save_killed_inside_the_weights_writer_leaves_nothing_after_the_next_save(tmp_path):
    """safetensors writes its own temporary file (`.tmpXXXXXX`) and renames it; a SIGKILL between the two used to
    leave up to a whole weights file in the checkpoint directory, and no later save removed it."""
    directory = tmp_path / "ckpt"
    _save(directory, 1.0)
    script = _KILLED_INSIDE_THE_WRITER.format(tests=str(Path(__file__).parent), directory=str(directory))
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert _stamp(directory) == 1.0  # the old checkpoint, whole
    assert _temporaries(directory)  # the killed save left its working directory behind
    _save(directory, 2.0)
    assert _temporaries(directory) == []
    assert _stamp(directory) == 2.0


class _Crash(Exception):
    pass


def test_a_crash_at_any_step_of_a_save_leaves_the_old_or_the_new_checkpoint(tmp_path, monkeypatch):
    directory = tmp_path / "ckpt"
    steps = ["replace", "fsync", "chmod", "open"]
    calls = {"n": 0, "crash_at": -1}
    originals = {name: getattr(os, name) for name in steps}

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
                patch.setattr(os, name, counting(name))
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
        metadata[io.DIGEST_KEY] = io.tensors_digest(tensors, json.dumps(record))
    io.save_tensors(directory / WEIGHTS_NAME, tensors, metadata)
    (directory / CONFIG_NAME).write_text(record if isinstance(record, str) else json.dumps(record))


def _good_record() -> dict:
    hyper = _hyper(1.0)
    return json.loads(json.dumps(checkpoint_record(hyper)))


@pytest.mark.parametrize("embed", [True, False], ids=["embedded", "json-only"])
@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: [1, 2, 3], r"must hold a JSON object .* got a list"),
        (lambda r: "not json {", r"is not valid JSON"),
        (lambda r: {**r, "hyperlight": "v1"}, r"'hyperlight' must be an object"),
        (lambda r: {**r, "hyperlight": {**r["hyperlight"], "targets": ["a"]}}, r"'hyperlight.targets' must map"),
        (lambda r: {**r, "rank": 1_000_000_000}, r"describes sizes its tensors do not have \({'rank': 1000000000}"),
        (lambda r: {**r, "hidden_size": 10**9}, r"describes sizes its tensors do not have \({'hidden_size'"),
        (lambda r: {**r, "num_layers": 10**6}, r"describes sizes its tensors do not have \(depth"),
        (lambda r: {**r, "alpha": 10**400}, r"alpha"),
        (lambda r: {**r, "hidden_size": 24}, r"does not hold the tensors its config describes"),
        (lambda r: {**r, "alpha": "x"}, r"alpha"),
    ],
    ids=[
        "array",
        "broken",
        "provenance string",
        "targets list",
        "huge rank",
        "huge hidden",
        "deep generator",
        "huge alpha",
        "other hidden",
        "alpha type",
    ],
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


# -- what a review found: condition order, edited configs, mixed saves, odd files --------------------------


def test_the_order_of_the_conditions_survives_save_and_reload(tmp_path):
    conditions = {"task": {"type": "categorical", "num": 4}, "lang": {"type": "categorical", "num": 3}}  # not sorted
    hyper = get_hyper_model(_base(), hyper_config(CASE, conditions=conditions))
    with torch.no_grad():
        for p in hyper.generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    hyper.save_pretrained(tmp_path)
    loaded = HyperModel.from_pretrained(_base(), tmp_path)
    assert loaded.condition_names == ["task", "lang"]
    inputs, task, lang = CASE.inputs(2), torch.tensor([0, 3]), torch.tensor([2, 1])
    with torch.no_grad():
        want = hyper(**inputs, task=task, lang=lang).logits
        assert torch.equal(loaded(**inputs, task=task, lang=lang).logits, want)
        other = get_hyper_model(_base(), hyper_config(CASE, conditions=conditions))
        other.load_state_dict(hyper.state_dict())  # the Trainer path: the config travels as a tensor
        assert torch.equal(other(**inputs, task=task, lang=lang).logits, want)
    swapped = get_hyper_model(_base(), hyper_config(CASE, conditions=dict(reversed(conditions.items()))))
    with pytest.raises(ValueError, match="another HyperConfig"):
        swapped.load_state_dict(hyper.state_dict())


def _embedded(directory: Path) -> tuple[dict, dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(directory / WEIGHTS_NAME), framework="pt") as f:
        metadata = dict(f.metadata())
    return metadata, load_file(str(directory / WEIGHTS_NAME))


def test_an_edited_embedded_config_is_refused(tmp_path):
    _save(tmp_path, 1.0)
    metadata, tensors = _embedded(tmp_path)
    record = json.loads(metadata[io.CONFIG_KEY])
    record["alpha"] = 1000.0  # the digest is left as it was
    metadata[io.CONFIG_KEY] = json.dumps(record)
    io.save_tensors(tmp_path / WEIGHTS_NAME, tensors, metadata)
    with pytest.raises(CheckpointError, match=r"name the same save but differ in fields \['alpha'\]"):
        HyperModel.from_pretrained(_base(), tmp_path)
    (tmp_path / CONFIG_NAME).unlink()  # without the readable copy, the digest catches it
    with pytest.raises(CheckpointError, match="its tensors or its config were changed"):
        HyperModel.from_pretrained(_base(), tmp_path)


def test_an_edited_readable_config_is_refused_rather_than_ignored(tmp_path):
    _save(tmp_path, 1.0)
    path = tmp_path / CONFIG_NAME
    record = json.loads(path.read_text())
    record["alpha"] = 1000.0
    path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"hyper_config.json and the config .* differ in fields \['alpha'\]"):
        HyperModel.from_pretrained(_base(), tmp_path)


def test_old_format_weights_beside_the_config_of_another_save_are_refused(tmp_path):
    _save(tmp_path, 1.0)
    new_config = (tmp_path / CONFIG_NAME).read_text()
    _save(tmp_path, 2.0)
    _, tensors = _embedded(tmp_path)
    io.save_tensors(tmp_path / WEIGHTS_NAME, tensors, {"format": "pt"})  # weights of save 2, no config inside
    (tmp_path / CONFIG_NAME).write_text(new_config)  # the JSON of save 1
    with pytest.raises(CheckpointError, match="does not match the digest recorded"):
        HyperModel.from_pretrained(_base(), tmp_path)


def test_deeply_nested_or_huge_files_are_refused_quickly(tmp_path):
    _save(tmp_path, 1.0)
    metadata, tensors = _embedded(tmp_path)
    metadata[io.CONFIG_KEY] = "[" * 200_000
    io.save_tensors(tmp_path / WEIGHTS_NAME, tensors, metadata)
    with pytest.raises(CheckpointError, match="is not valid JSON"):
        HyperModel.from_pretrained(_base(), tmp_path)
    huge = tmp_path / "huge"
    huge.mkdir()
    (huge / WEIGHTS_NAME).write_bytes((1 << 40).to_bytes(8, "little") + b"{}")  # claims a 1 TiB header
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="declares a 1099511627776-byte header"):
        HyperModel.from_pretrained(_base(), huge)
    assert time.perf_counter() - start < 5


def test_cleanup_of_temporaries_is_safe(tmp_path):
    _save(tmp_path, 1.0)
    odd = tmp_path / f".{WEIGHTS_NAME}.99999999999999999999.abc.tmp"  # no such process can exist
    odd.write_bytes(b"x")
    folder = tmp_path / f".{WEIGHTS_NAME}.99999999999999999999.def.tmp"  # a directory named as a temporary file:
    folder.mkdir()  # not ours to remove
    work = tmp_path / f".{WEIGHTS_NAME}.99999999999999999999.abc.tmpdir"  # a dead save's working directory
    work.mkdir()
    (work / ".tmpXyZ987").write_bytes(b"x")
    alive = tmp_path / f".{WEIGHTS_NAME}.1.abc.tmpdir"  # a save in progress in a live process (pid 1)
    alive.mkdir()
    mine = tmp_path / f".{CONFIG_NAME}.{os.getpid()}.abc.tmp"  # this process's: another thread may be writing it
    mine.write_bytes(b"x")
    _save(tmp_path, 2.0)
    assert not odd.exists() and not work.exists() and folder.is_dir() and alive.is_dir() and mine.exists()
    assert _stamp(tmp_path) == 2.0


def test_a_resave_keeps_the_permissions_the_owner_gave(tmp_path):
    _save(tmp_path, 1.0)
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        (tmp_path / name).chmod(0o600)
    _save(tmp_path, 2.0)
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name


def test_a_generator_that_cannot_be_built_leaves_the_model_as_it_was(monkeypatch):
    from hyperlight.plugin import planning

    def out_of_memory(*args, **kwargs):
        raise MemoryError("injected: the generator does not fit")

    monkeypatch.setattr(planning, "build_generator", out_of_memory)
    base = _base()
    classes = {n: type(m) for n, m in base.named_modules()}
    grads = {n: p.requires_grad for n, p in base.named_parameters()}
    with pytest.raises(MemoryError):
        get_hyper_model(base, hyper_config(CASE))
    assert {n: type(m) for n, m in base.named_modules()} == classes
    assert {n: p.requires_grad for n, p in base.named_parameters()} == grads

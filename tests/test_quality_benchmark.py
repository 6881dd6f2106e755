"""`benchmarks/quality.py`: its tasks are what they say, its splits hold what they claim, its few-shot arm trains
only the new task's embedding, and a `--quick` run produces every table, the JSON and the plot (the accuracies of
the full run are the README's, not asserted here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import quality  # noqa: E402

OPS, CASES = list(quality.OPS), list(quality.CASES)


@pytest.mark.parametrize(
    "op, case, word, want",
    [
        ("copy", "lower", "bdca", "bdca"),
        ("reverse", "upper", "bdca", "ACDB"),
        ("sort", "upper", "bdca", "ABCD"),
        ("sortdesc", "title", "bdca", "Dcba"),
        ("shift1", "lower", "xyz", "yza"),
        ("shift2", "alt", "abyz", "CdAb"),
        ("rotl", "lower", "acdb", "cdba"),
        ("rotr", "lower", "acdb", "bacd"),
        ("swap", "lower", "abcde", "badce"),
        ("dedup", "upper", "abcabd", "ABCD"),
    ],
)
def test_each_task_computes_what_its_name_says(op, case, word, want):
    task = quality.Task(OPS.index(op), CASES.index(case))
    assert task(word) == want and task.name == f"{op}+{case}"


def test_the_splits():
    assert len(set(quality.ALL_TASKS)) == 40 and sorted(quality.ORDER, key=str) == sorted(quality.ALL_TASKS, key=str)
    held = set(quality.HELD_OUT_PAIRS)
    trained = [t for t in quality.ALL_TASKS if t not in held]
    assert sorted(t.op for t in held) == list(range(len(OPS)))  # each op held out once
    assert all(sum(t.case == c for t in held) >= 2 for c in range(len(CASES)))
    # every op and every case of a held-out pair was trained, with other partners: only the pair is new
    for t in held:
        assert sum(u.op == t.op for u in trained) == len(CASES) - 1 and sum(u.case == t.case for u in trained) >= 7
    # the few-shot tasks are not among the K = 20 trained ones, and train and test inputs are disjoint
    assert not set(quality.ORDER[20 : 20 + quality.NEW_TASKS]) & set(quality.ORDER[:20])
    train, test = quality.make_inputs(0, 200, 50)
    assert not set(train) & set(test) and len(set(train)) == 200


def test_every_arm_sees_the_same_batches():
    """The same seed gives every arm the same tasks and inputs in the same order, told in its own way."""
    tasks = quality.ORDER[:5]
    hyper = quality.Telling("conditions", "id", quality.ORDER[:9]).sampler(tasks, ["abcd", "efgh", "ijk"], 8, 3)
    prompt = quality.Telling("prompt", "id", quality.ORDER[:9]).sampler(tasks, ["abcd", "efgh", "ijk"], 8, 3)
    for step in range(3):
        (h, conditions), (p, none) = hyper(step), prompt(step)
        assert none == {} and [a for _, a in h] == [a for _, a in p]
        codes = [f"{i:02d}:" for i in conditions["task"]]
        assert [code + prompt_h for code, (prompt_h, _) in zip(codes, h)] == [q for q, _ in p]


def test_the_input_axis_rule_is_the_first_letters_range_and_nobody_is_told():
    assert "".join(letters for letters, _ in quality.INPUT_RULES) == quality.LETTERS  # every word has one rule
    assert [quality.rule_of(w) for w in ("bdca", "mab", "sort", "zyx")] == [0, 1, 2, 3]
    plain = quality.input_sampler(["bdca", "mab", "sort", "zyx"], 8, 3, oracle=False)
    oracle = quality.input_sampler(["bdca", "mab", "sort", "zyx"], 8, 3, oracle=True)
    want = {"bdca=": "acdb", "mab=": "abm", "sort=": "tpsu", "zyx=": "yxz"}  # reverse, sort, shift1, rotl
    for step in range(3):
        (pairs, none), (same, told) = plain(step), oracle(step)
        assert none == {} and pairs == same and all(want[p] == a for p, a in pairs)  # the prompt is the word alone
        assert told["rule"] == [quality.rule_of(p) for p, _ in pairs]


def test_the_code_reading_hyper_model_gets_the_prompt_loras_prompt_and_no_condition():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(quality.VOCAB) + 3, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    base, ids = LlamaForCausalLM(config), quality.ORDER[:9]
    built = {arm: quality.build_input_code_arm(arm, base, ids, 0) for arm in quality.INPUT_CODE_ARMS}
    samples = {arm: t.sampler(ids[:5], ["abcd", "efgh"], 6, 3)(0) for arm, (_, t) in built.items()}
    (reads, none), (lora, nothing) = samples["hyper, reads the code"], samples["prompt-LoRA"]
    assert reads == lora and none == nothing == {} and reads[0][0][2] == ":"  # `07:word=`, no task id
    pairs, told = samples["hyper, task id, block 1"]
    assert [a for _, a in pairs] == [a for _, a in lora] and len(told["task"]) == 6 and pairs[0][0][-1] == "="
    hyper = built["hyper, reads the code"][0]
    targeted = {n.split("layers.")[1][0] for n, m in hyper.named_modules() if type(m).__name__ == "LowRankLinear"}
    assert targeted == {"1"}  # block 1 alone, as the task-id arm


def test_few_shot_trains_only_the_new_tasks_embedding_row():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(quality.VOCAB) + 3, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    base = LlamaForCausalLM(config)
    telling = quality.Telling("conditions", "id", quality.ORDER[:6])
    model = quality.build("hyper-small", base, telling, 0)
    # trained a little first: at initialisation lora_B's head is zero, and no gradient reaches the embedding
    warm = telling.sampler(quality.ORDER[:5], ["abcd", "bcde", "cdef"], 4, 0)
    quality.fit(model, [p for p in model.parameters() if p.requires_grad], warm, steps=3, lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    task = quality.ORDER[5]
    params = quality._embedding_row(model, telling.tasks.index(task))
    batch = ([(telling.prompt(task, w), task(w)) for w in ["abcd", "bcde"]], telling.conditions([task, task]))
    quality.fit(model, params, lambda step: batch, steps=3, lr=0.1)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert len(changed) == 1 and next(iter(changed)).endswith("task.weight")
    table = dict(model.named_parameters())[next(iter(changed))]
    moved = (table != before[next(iter(changed))]).any(dim=1)
    assert moved.tolist() == [i == 5 for i in range(6)]


def test_quick_run_writes_every_table_the_json_and_the_plot(tmp_path, capsys):
    results = quality.main(["--quick", "--out", str(tmp_path)])
    axes = {r.axis for r in results}
    assert axes == {"interference", "few_shot", "combos", "combos (trained)", "text", "text (trained)", "input",
                    "input_code"}  # fmt: skip
    arms = {r.arm for r in results if r.axis == "interference"}
    assert arms == set(quality.ARMS)
    assert {r.arm for r in results if r.axis == "few_shot"} == set(quality.FEW_SHOT_ARMS)
    counts = {r.arm: r.parameters for r in results if r.axis == "interference"}
    assert counts["LoRA per task"] == 5 * counts["prompt-LoRA"]
    assert abs(counts["hyper-small"] / counts["prompt-LoRA"] - 1) < 0.15  # matched parameters
    tables, printed = (tmp_path / "tables.md").read_text(), capsys.readouterr().out
    by_arm = {r.arm: r for r in results if r.axis == "input"}
    assert list(by_arm) == list(quality.INPUT_ARMS)
    assert abs(by_arm["LoRA, matched"].parameters / by_arm["hyper, input"].parameters - 1) < 0.01
    assert by_arm["LoRA"].parameters == counts["prompt-LoRA"]  # the same LoRA, no task code to read
    assert all(set(r.costs) == {"step", "one", "batched"} and min(r.costs.values()) > 0 for r in by_arm.values())
    code = {r.arm: r for r in results if r.axis == "input_code"}
    assert list(code) == list(quality.INPUT_CODE_ARMS) and code["prompt-LoRA"].parameters == counts["prompt-LoRA"]
    assert abs(code["hyper, reads the code"].parameters / code["hyper, task id, block 1"].parameters - 1) < 0.01
    titles = ("Interference", "A new task from", "Unseen combinations", "Unseen tasks described in words",
              "The rule is in the input", "What it costs", "The task code in the prompt")  # fmt: skip
    for title in titles:
        assert title in tables and title in printed
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved) == len(results) and all(0.0 <= r["accuracy"] <= 1.0 for r in saved)
    assert (tmp_path / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""A hyper model's generated weights belong to the call that made them.

Each promise is checked against a plain reference: threads vs one thread, nested vs alone, several forwards
before one backward under both kinds of checkpointing (backward on another thread too) vs no checkpointing,
the base model after a call vs a pristine copy, per-row condition gradients vs finite differences.
"""

from __future__ import annotations

import pickle
import threading

import pytest
import torch
from hf_models import CASES, Case, hyper_config
from torch import nn

from hyperlight import HyperConfig, HyperModel, get_hyper_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
BY_NAME = {c.name: c for c in CASES}


def _hyper(case: Case, **overrides) -> HyperModel:
    torch.manual_seed(0)
    hyper = get_hyper_model(case.build(), hyper_config(case, **overrides))
    with torch.no_grad():  # away from the identity init, so every condition gives different weights
        for p in hyper.generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return hyper


def _jobs(case: Case, count: int) -> list[tuple[dict, torch.Tensor]]:
    """Calls with varied batch sizes and conditions: shared (one task), mixed, all different."""
    jobs = []
    for i in range(count):
        batch = 1 + i % 3
        task = (
            torch.full((batch,), i % 4)
            if i % 2
            else torch.randint(0, 4, (batch,), generator=torch.Generator().manual_seed(i))
        )
        jobs.append((case.inputs(batch, seed=i), task))
    return jobs


def _run_threads(count: int, work) -> list:
    results: list = [None] * count
    barrier = threading.Barrier(count)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# -- threads -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "llama-full", "t5"])
def test_threads_compute_exactly_the_single_threaded_forwards(name):
    case = BY_NAME[name]
    hyper = _hyper(case).eval()
    jobs = _jobs(case, 8)
    with torch.no_grad():
        reference = [case.output(hyper(**inputs, task=task)) for inputs, task in jobs]

        def work(thread: int) -> list[tuple[int, torch.Tensor]]:
            out = []
            for round_ in range(4):
                for j in range(len(jobs)):
                    k = (j + thread + round_) % len(jobs)  # every thread runs the jobs in its own order
                    inputs, task = jobs[k]
                    out.append((k, case.output(hyper(**inputs, task=task))))
            return out

        for results in _run_threads(4, work):
            for k, got in results:
                assert torch.equal(got, reference[k]), f"job {k} computed with another call's weights"


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_threads_generate_exactly_the_single_threaded_sequences(name):
    case = BY_NAME[name]
    hyper = _hyper(case).eval()
    prompts = [case.inputs(2, seq=4, seed=s) for s in range(4)]
    tasks = [torch.tensor([0, 3]), torch.tensor([1, 1]), torch.tensor([2, 0]), torch.tensor([3, 2])]
    settings = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False, "pad_token_id": 0, "num_beams": 2}
    reference = [hyper.generate(**p, task=t, **settings) for p, t in zip(prompts, tasks)]

    def work(thread: int) -> list[tuple[int, torch.Tensor]]:
        return [
            ((thread + r) % 4, hyper.generate(**prompts[(thread + r) % 4], task=tasks[(thread + r) % 4], **settings))
            for r in range(6)
        ]

    for results in _run_threads(4, work):
        for k, got in results:
            assert torch.equal(got, reference[k]), f"prompt {k} generated with another call's weights"


# -- nested calls ----------------------------------------------------------------------------------------


def test_a_call_nested_in_a_forward_leaves_the_outer_result_unchanged():
    case = BY_NAME["llama"]
    hyper = _hyper(case).eval()
    outer_inputs, inner_inputs = case.inputs(2, seed=1), case.inputs(3, seed=2)
    outer_task, inner_task = torch.tensor([0, 1]), torch.tensor([3, 3, 2])
    with torch.no_grad():
        reference = hyper(**outer_inputs, task=outer_task).logits
        inner_reference = hyper(**inner_inputs, task=inner_task).logits
        inner_results: list[torch.Tensor] = []
        inside = []

        def teacher_call(module, args, output):  # e.g. a teacher or a probe run from inside the forward
            if not inside:
                inside.append(True)
                inner_results.append(hyper(**inner_inputs, task=inner_task).logits)
                inner_results.append(hyper(**inner_inputs, task=torch.tensor([1])).logits)  # shared weights
            return output

        handle = hyper.get_base_model().model.layers[0].register_forward_hook(teacher_call)
        try:
            got = hyper(**outer_inputs, task=outer_task).logits
        finally:
            handle.remove()
    assert torch.equal(got, reference)
    assert torch.equal(inner_results[0], inner_reference)


def test_conditioned_block_binds_for_the_base_model_and_nests():
    case = BY_NAME["llama"]
    hyper = _hyper(case).eval()
    inputs = case.inputs(2)
    with torch.no_grad():
        want_2 = hyper(**inputs, task=torch.tensor([2, 2])).logits
        want_1 = hyper(**inputs, task=torch.tensor([1, 1])).logits
        pristine = case.build()(**inputs).logits
        with hyper.conditioned(task=2):
            assert torch.equal(hyper.get_base_model()(**inputs).logits, want_2)
            with hyper.conditioned(task=1):
                assert torch.equal(hyper.get_base_model()(**inputs).logits, want_1)
            assert torch.equal(hyper.get_base_model()(**inputs).logits, want_2)
            assert torch.equal(hyper(**inputs, task=torch.tensor([1, 1])).logits, want_1)  # the call's own
        assert torch.equal(hyper.get_base_model()(**inputs).logits, pristine)


# -- gradient checkpointing: several forwards before one backward -------------------------------------


def _two_forward_grads(hyper: HyperModel, case: Case, *, backward_thread: bool) -> dict[str, torch.Tensor]:
    hyper.train()
    hyper.zero_grad(set_to_none=True)
    first, second = case.inputs(2, seed=1), case.inputs(3, seed=2)

    def loss_of(inputs, task):
        labels = inputs.get("decoder_input_ids", inputs["input_ids"])
        return hyper(**inputs, labels=labels, task=task).loss

    torch.manual_seed(0)
    # chosen/rejected, contrastive, distillation: two calls with other conditions, then one backward
    loss = loss_of(first, torch.tensor([0, 1])) + 0.5 * loss_of(second, torch.tensor([3, 2, 2]))
    if backward_thread:  # as on CUDA, where backward (and so every recompute) runs on autograd's device thread
        worker = threading.Thread(target=loss.backward)
        worker.start()
        worker.join()
    else:
        loss.backward()
    return {n: p.grad.clone() for n, p in hyper.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize("backward_thread", [False, True], ids=["same-thread", "backward-thread"])
@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize("name", ["llama", "gpt2", "t5", "llama-full"])
def test_checkpointing_with_two_forwards_before_backward_gives_the_plain_gradients(name, reentrant, backward_thread):
    case = BY_NAME[name]
    reference = _two_forward_grads(_hyper(case), case, backward_thread=False)
    hyper = _hyper(case)
    hyper.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    grads = _two_forward_grads(hyper, case, backward_thread=backward_thread)
    assert grads.keys() == reference.keys() and reference
    for key in reference:
        torch.testing.assert_close(grads[key], reference[key], atol=1e-6, rtol=1e-5, msg=key)


def test_checkpointing_enabled_after_a_call_still_recomputes_with_the_call_weights():
    case = BY_NAME["llama"]
    reference = _two_forward_grads(_hyper(case), case, backward_thread=False)
    hyper = _hyper(case)
    _two_forward_grads(hyper, case, backward_thread=False)  # a call before checkpointing is switched on
    hyper.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    grads = _two_forward_grads(hyper, case, backward_thread=True)
    for key in reference:
        torch.testing.assert_close(grads[key], reference[key], atol=1e-6, rtol=1e-5, msg=key)


# -- after a call, the base model is the base model ---------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "gpt2", "llama-full", "gpt2-full", "bert"])
def test_after_a_call_the_base_model_is_the_pretrained_model(name):
    case = BY_NAME[name]
    pristine = case.build().eval()
    hyper = _hyper(case).eval()
    with torch.no_grad():
        conditioned = case.output(hyper(**case.inputs(2), task=torch.tensor([1, 3])))
        for batch in (2, 3):  # also a batch size the last call did not have
            inputs = case.inputs(batch, seed=5)
            want = case.output(pristine(**inputs))
            assert torch.equal(case.output(hyper.get_base_model()(**inputs)), want)
            assert torch.equal(case.output(hyper.get_base_model()(**inputs)), want)
    assert not torch.equal(conditioned, case.output(pristine(**case.inputs(2))))  # the call did condition
    for module in hyper.targeted_modules.values():
        assert not module.current_externals().values  # nothing of the call stayed behind


# -- per-row gradients reach every row's condition ---------------------------------------------------


def test_duplicate_condition_rows_each_get_their_own_gradient():
    case = BY_NAME["llama"]
    torch.manual_seed(0)
    hyper = get_hyper_model(
        case.build(), hyper_config(case, conditions={"style": {"type": "vector", "dim": 3}})
    ).eval()
    with torch.no_grad():
        for p in hyper.generator.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    inputs = case.inputs(3)
    weights = torch.tensor([1.0, -2.0, 0.5]).view(3, 1, 1)  # rows weigh differently, so their gradients differ

    def loss_of(style: torch.Tensor) -> torch.Tensor:
        return (hyper(**inputs, style=style).logits * weights).sum()

    row = torch.tensor([0.3, -0.7, 1.1])
    style = torch.stack([row, row, torch.tensor([0.2, 0.1, -0.4])]).requires_grad_()  # rows 0 and 1 are equal
    loss_of(style).backward()
    grad = style.grad
    assert grad[1].abs().sum() > 0 and not torch.allclose(grad[0], grad[1])

    eps, numeric = 1e-2, torch.zeros_like(grad)
    with torch.no_grad():
        for i in range(3):
            for j in range(3):
                up, down = style.detach().clone(), style.detach().clone()
                up[i, j] += eps
                down[i, j] -= eps
                numeric[i, j] = (loss_of(up) - loss_of(down)) / (2 * eps)
    torch.testing.assert_close(grad, numeric, atol=2e-2 * numeric.abs().max().item(), rtol=5e-2)


# -- empty batches, use after unload, class -----------------------------------------------------------


def test_an_empty_batch_behaves_as_the_base_model():
    def mlp() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    hyper = get_hyper_model(
        mlp(), HyperConfig(target_modules=["0", "2"], conditions={"task": {"type": "categorical", "num": 3}}, rank=2)
    )
    empty = torch.zeros(0, 4)
    got = hyper(empty, task=torch.zeros(0, dtype=torch.long))
    assert got.shape == mlp()(empty).shape == (0, 3)

    case = BY_NAME["llama"]  # Llama itself refuses an empty batch; the hyper model refuses it the same way
    with pytest.raises(RuntimeError) as base_error:
        case.build()(**case.inputs(0))
    with pytest.raises(RuntimeError) as hyper_error:
        _hyper(case)(**case.inputs(0), task=torch.zeros(0, dtype=torch.long))
    assert str(hyper_error.value) == str(base_error.value)


@pytest.mark.parametrize("release", ["unload", "merge_and_unload"])
def test_a_hyper_model_is_unusable_after_its_base_was_given_back(release):
    case = BY_NAME["llama"]
    hyper = _hyper(case)
    base = hyper.unload() if release == "unload" else hyper.merge_and_unload(task=1)
    assert type(base).__name__ == "LlamaForCausalLM"
    for use in (
        lambda: hyper(**case.inputs(1), task=torch.tensor([0])),
        lambda: hyper.generate(**case.inputs(1), task=torch.tensor([0]), max_new_tokens=2),
        lambda: hyper.merge_and_unload(task=0),
        lambda: hyper.unload(),
        lambda: hyper.generate_weights(task=torch.tensor([0])),
    ):
        with pytest.raises(RuntimeError, match="this HyperModel was unloaded"):
            use()


def test_the_hyper_model_class_is_named_for_its_base_and_pickles():
    case = BY_NAME["llama"]
    hyper = _hyper(case).eval()
    names = [c.__name__ for c in type(hyper).__mro__]
    assert names[:2] == ["HyperLlamaForCausalLM", "HyperModel"] and len(names) == len(set(names))
    copy = pickle.loads(pickle.dumps(hyper))
    assert type(copy) is type(hyper)
    inputs = case.inputs(2)
    with torch.no_grad():
        assert torch.equal(
            copy(**inputs, task=torch.tensor([0, 2])).logits, hyper(**inputs, task=torch.tensor([0, 2])).logits
        )


# -- the edges of a call: expanded inputs, generators, eval mode, generation configs ---------------------


def test_conditioned_refuses_an_input_of_another_batch_size():
    case = BY_NAME["llama"]
    hyper = _hyper(case).eval()
    with torch.no_grad(), hyper.conditioned(task=torch.tensor([0, 1])):
        with pytest.raises(ValueError, match=r"given for a batch of 2, but the input has 4 rows; .* must be 2\."):
            hyper.get_base_model()(**case.inputs(4))


def test_conditioned_refuses_to_train_through_reentrant_checkpointing():
    case = BY_NAME["llama"]
    hyper = _hyper(case).train()
    hyper.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(RuntimeError, match=r"conditioned\(\.\.\.\) cannot train through reentrant"):
        with hyper.conditioned(task=1):
            pass
    with torch.no_grad(), hyper.conditioned(task=1):  # inference through it is fine
        hyper.get_base_model()(**case.inputs(1))


def test_a_generator_closed_inside_another_block_fails_loudly():
    case = BY_NAME["llama"]
    hyper = _hyper(case).eval()
    inputs = case.inputs(1)

    def stream():
        with hyper.conditioned(task=3):
            yield hyper.get_base_model()(**inputs).logits

    with torch.no_grad():
        want_1 = hyper(**inputs, task=torch.tensor([1])).logits
        steps = stream()
        next(steps)
        with hyper.conditioned(task=1):
            with pytest.raises(RuntimeError, match="left out of order"):
                steps.close()
            assert torch.equal(hyper.get_base_model()(**inputs).logits, want_1)  # the outer block still holds


def test_eval_mode_with_reentrant_checkpointing_switched_on_keeps_the_plain_graph():
    case = BY_NAME["llama"]
    hyper = _hyper(case)
    params = [p for p in hyper.parameters() if p.requires_grad]
    inputs = case.inputs(2)

    def grads():
        loss = hyper(**inputs, labels=inputs["input_ids"], task=torch.tensor([0, 2])).loss
        return torch.autograd.grad(loss, params, allow_unused=True)

    hyper.eval()
    reference = grads()
    hyper.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    hyper.eval()  # checkpointing is on but inactive in eval mode: autograd.grad must reach the generator
    for got, want in zip(grads(), reference):
        assert got is not None and torch.equal(got, want)


def test_generate_with_a_generation_config_merged_over_the_model_default():
    from transformers import GenerationConfig

    case = BY_NAME["llama"]
    hyper = _hyper(case).eval()
    hyper.get_base_model().generation_config.num_beams = 2  # the model's default: Transformers merges it in
    inputs = {k: v for k, v in case.inputs(2, seq=4).items()}
    task = torch.tensor([0, 3])
    config = GenerationConfig(max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    batch = hyper.generate(**inputs, task=task, generation_config=config)
    for i in range(2):
        alone = hyper.generate(
            **{k: v[i : i + 1] for k, v in inputs.items()}, task=task[i : i + 1], generation_config=config
        )
        assert torch.equal(batch[i : i + 1], alone)


# -- a forward replaced on the instance (TRL's fused LM head, Accelerate's autocast wrapper) ------------------------


def _replace_forward(hyper: HyperModel, *, reaches_original: bool) -> None:
    """As TRL and Accelerate do: `model.forward = MethodType(new, model)`."""
    import types

    original = hyper.forward

    def replaced(self, *args, **kwargs):
        if reaches_original:  # Accelerate: wraps and calls the original forward
            return original(*args, **kwargs)
        return self.get_base_model()(*args, **kwargs)  # TRL's fused head: runs the backbone itself

    hyper.forward = types.MethodType(replaced, hyper)


@pytest.mark.parametrize("reaches_original", [False, True])
def test_a_replaced_forward_runs_inside_the_calls_binding(reaches_original):
    case = BY_NAME["llama"]
    hyper, reference = _hyper(case).eval(), _hyper(case).eval()
    _replace_forward(hyper, reaches_original=reaches_original)
    runs = []
    hyper.generator.register_forward_hook(lambda *_: runs.append(1))
    inputs, task = case.inputs(3), torch.tensor([0, 3, 1])
    with torch.no_grad():
        got = hyper(**inputs, task=task).logits
        assert len(runs) == 1  # generated once, not again by the original forward
        alone = torch.cat([reference(**case.inputs(3), task=task[i : i + 1]).logits[i : i + 1] for i in range(3)])
        assert torch.allclose(got, reference(**inputs, task=task).logits, atol=1e-6)
        assert torch.allclose(got, alone, atol=1e-5)
        assert torch.equal(hyper.get_base_model()(**inputs).logits, case.build().eval()(**inputs).logits)


def test_a_replaced_forward_that_fails_leaves_nothing_bound():
    case = BY_NAME["llama"]
    hyper = _hyper(case).eval()
    _replace_forward(hyper, reaches_original=False)
    inputs = case.inputs(2)
    with torch.no_grad():
        with pytest.raises(ValueError):
            hyper(**inputs, task=torch.tensor([0, 9]))  # out of range: refused in the pre-hook
        with pytest.raises(TypeError, match="missing condition"):
            hyper(**inputs)
        assert torch.equal(hyper.get_base_model()(**inputs).logits, case.build().eval()(**inputs).logits)
        want = _hyper(case).eval()(**inputs, task=torch.tensor([2, 1])).logits
        assert torch.allclose(hyper(**inputs, task=torch.tensor([2, 1])).logits, want, atol=1e-6)


def test_a_nested_call_inside_a_replaced_forward_keeps_the_outer_weights():
    case = BY_NAME["llama"]
    hyper, reference = _hyper(case).eval(), _hyper(case).eval()
    _replace_forward(hyper, reaches_original=True)
    inputs, inner = case.inputs(2), case.inputs(1, seed=7)
    layer = hyper.get_base_model().model.layers[0]
    nested = []

    def call_inside(*_):
        if not nested:  # once: the nested call runs this layer too
            nested.append(None)
            nested[0] = hyper(**inner, task=torch.tensor([3])).logits

    handle = layer.register_forward_hook(call_inside)
    with torch.no_grad():
        got = hyper(**inputs, task=torch.tensor([1, 2])).logits
        handle.remove()
        assert torch.allclose(nested[0], reference(**inner, task=torch.tensor([3])).logits, atol=1e-6)
        assert torch.allclose(got, reference(**inputs, task=torch.tensor([1, 2])).logits, atol=1e-6)


# -- the accelerator path: no host synchronisation, the same weights ------------------------------------------------


def _per_row(weights: dict, batch: int | None, rows: int) -> dict:
    """Every target's tensors with one row per example (shared weights repeated)."""
    return {
        (target, name): value.expand(rows, *value.shape) if batch is None else value
        for target, tensors in weights.items()
        for name, value in tensors.items()
    }


def _without_sync(hyper, checked, rows):
    from functools import partial

    from hyperlight.plugin.weights import _cast, _generate_without_sync

    cast = partial(_cast, hyper.targeted_modules, hyper.hyper_config.mode == "full")
    return _generate_without_sync(hyper.condition_encoder, hyper.generator, cast, checked, rows)


@pytest.mark.parametrize("tasks", [[2], [1, 1, 1, 1], [0, 3, 1, 3], [0, 1, 2, 3, 0, 1]])
def test_generation_without_host_sync_gives_the_weights_of_the_deduplicating_path(tasks):
    """On an accelerator `conditioned_weights` takes `_generate_without_sync` (no torch.unique); run both here and
    compare."""
    hyper = _hyper(BY_NAME["llama"]).eval()
    rows = len(tasks) if len(tasks) > 1 else 4
    given = torch.tensor(tasks)
    with torch.no_grad():
        want, want_batch = hyper._generate(rows, {"task": given})
        got, got_batch = _without_sync(hyper, hyper.condition_encoder.check({"task": given}, rows), rows)
    want, got_rows = _per_row(want, want_batch, rows), _per_row(got, got_batch, rows)
    assert want.keys() == got_rows.keys()
    assert all(torch.allclose(got_rows[k], want[k], atol=1e-6) for k in want)
    assert (got_batch is None) == (len(tasks) == 1)  # a single value given: one shared row, as on the CPU


def test_generation_without_host_sync_generates_each_row_for_non_categorical_conditions():
    config = {"conditions": {"task": {"type": "categorical", "num": 4}, "mix": {"type": "scalar"}}}
    hyper = _hyper(BY_NAME["llama"], **config).eval()
    values = {"task": torch.tensor([0, 1, 0]), "mix": torch.tensor([0.1, 0.2, 0.1])}
    rows = []
    hyper.generator.register_forward_hook(lambda _m, args, _o: rows.append(args[0].shape[0]))
    with torch.no_grad():
        want, _ = hyper._generate(3, values)
        got, _ = _without_sync(hyper, hyper.condition_encoder.check(values, 3), 3)
    assert rows == [2, 3]  # deduplicated on the CPU; every row without reading values back
    for target in want:
        for name in want[target]:
            assert torch.allclose(got[target][name], want[target][name], atol=1e-6)

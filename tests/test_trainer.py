"""transformers.Trainer with default arguments trains a hyper model; checkpoints hold the hyper weights and
config only; resuming continues the same run; evaluate/predict and predict_with_generate see conditions."""

from __future__ import annotations

import pytest
import torch
from hf_models import CASES, hyper_config, llama, t5

from hyperlight import HyperModel, get_hyper_model
from hyperlight.training import HyperDataCollator, MultiTaskSampler, mixing_weights, temperature_mixture

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
VOCAB = 4096


def _base():
    torch.manual_seed(0)  # the hyper model built next draws its generator init from this state
    return llama(vocab=VOCAB, hidden=64, intermediate=128, positions=32)


def _dataset(n: int = 48, seq: int = 8):
    """Tasks share inputs but need different outputs: task t continues a sequence with step t + 1."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        task = i % 4
        start = int(torch.randint(1, VOCAB, (1,), generator=g))
        ids = [(start + k * (task + 1)) % (VOCAB - 1) + 1 for k in range(seq)]
        rows.append({"input_ids": ids, "attention_mask": [1] * seq, "labels": ids, "task": task})
    return Dataset.from_list(rows)


def _args(tmp_path, **kw):
    from transformers import TrainingArguments

    defaults = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        learning_rate=5e-3,
        max_steps=6,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        use_cpu=True,
        disable_tqdm=True,
    )
    return TrainingArguments(**{**defaults, **kw})


def _config():
    return hyper_config(CASES[0], target_modules=["q_proj", "v_proj"])


def _losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_trainer_with_default_arguments_keeps_conditions_and_trains(tmp_path):
    from transformers import Trainer

    hyper = get_hyper_model(_base(), _config())
    args = _args(tmp_path, max_steps=12)
    assert args.remove_unused_columns  # the default, which drops columns forward does not name
    trainer = Trainer(model=hyper, args=args, train_dataset=_dataset())
    trainer.train()
    losses = _losses(trainer)
    assert len(losses) == 12 and losses[-1] < losses[0]
    assert "task" in trainer._signature_columns


def test_trainer_checkpoints_hold_only_the_hyper_weights_and_config_and_resume_exactly(tmp_path):
    from transformers import Trainer

    uninterrupted = Trainer(
        model=get_hyper_model(_base(), _config()), args=_args(tmp_path / "a"), train_dataset=_dataset()
    )
    uninterrupted.train()
    expected = _losses(uninterrupted)

    first = Trainer(
        model=get_hyper_model(_base(), _config()),
        args=_args(tmp_path / "b", save_strategy="steps", save_steps=3),
        train_dataset=_dataset(),
    )
    first.train()
    checkpoint = tmp_path / "b" / "checkpoint-3"
    weights = checkpoint / "model.safetensors"
    base_bytes = sum(p.numel() * p.element_size() for p in _base().parameters())
    assert weights.stat().st_size < 0.15 * base_bytes  # the base model is never written
    from safetensors.torch import load_file

    keys = set(load_file(weights))
    assert keys and all(k.startswith(("condition_encoder.", "generator.")) or k == "hyper_config" for k in keys)

    reloaded = HyperModel.from_pretrained(_base(), checkpoint)
    ids = torch.randint(1, VOCAB, (2, 6))
    assert isinstance(reloaded, HyperModel) and reloaded(input_ids=ids, task=torch.tensor([1, 2])).logits.shape

    resumed = Trainer(
        model=get_hyper_model(_base(), _config()),
        args=_args(tmp_path / "b", save_strategy="steps", save_steps=3),
        train_dataset=_dataset(),
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))
    # the resumed run's history holds the checkpoint's 3 steps and its own 3
    assert _losses(resumed) == pytest.approx(expected, abs=1e-6)
    assert _losses(first) == pytest.approx(expected, abs=1e-6)


def test_evaluate_and_predict_pass_conditions(tmp_path):
    from transformers import Trainer

    hyper = get_hyper_model(_base(), _config())
    trainer = Trainer(model=hyper, args=_args(tmp_path), eval_dataset=_dataset(16))
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and metrics["eval_loss"] > 0
    prediction = trainer.predict(_dataset(8))
    assert prediction.predictions.shape[:2] == (8, 8)


def test_seq2seq_trainer_predict_with_generate_passes_conditions(tmp_path):
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    case = next(c for c in CASES if c.name == "t5")
    hyper = get_hyper_model(t5(), hyper_config(case))
    rows = [{"input_ids": [5, 6, 7, 8], "labels": [9, 10, 11], "task": i % 4} for i in range(8)]
    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path),
        predict_with_generate=True,
        report_to=[],
        per_device_eval_batch_size=4,
        generation_max_length=6,
        use_cpu=True,
    )
    collator = HyperDataCollator(["task"], DataCollatorForSeq2Seq(tokenizer=None, model=t5(), label_pad_token_id=-100))

    class Tok:  # DataCollatorForSeq2Seq pads through a tokenizer; this is the minimal one it needs
        pad_token_id = 0
        padding_side = "right"

        def pad(self, features, **kw):
            return {k: torch.tensor([f[k] for f in features]) for k in features[0]}

    collator.collator.tokenizer = Tok()
    trainer = Seq2SeqTrainer(model=hyper, args=args, data_collator=collator)
    calls = []
    original = hyper.condition_encoder.check
    hyper.condition_encoder.check = lambda values, *a: calls.append(values["task"].tolist()) or original(values, *a)
    out = trainer.predict(Dataset.from_list(rows))
    assert out.predictions.shape[0] == 8
    assert [0, 1, 2, 3] in calls  # generate received each row's own task


def test_collator_pads_and_stacks_conditions():
    from transformers import DataCollatorForLanguageModeling

    class Tok:
        pad_token_id = 0
        padding_side = "right"
        mask_token = None

        def pad(self, features, return_tensors=None, **kw):
            width = max(len(f["input_ids"]) for f in features)
            ids = [f["input_ids"] + [0] * (width - len(f["input_ids"])) for f in features]
            return {"input_ids": torch.tensor(ids), "attention_mask": (torch.tensor(ids) != 0).long()}

    collate = HyperDataCollator(["task", "desc"], DataCollatorForLanguageModeling(Tok(), mlm=False))
    batch = collate(
        [{"input_ids": [4, 5, 6], "task": 1, "desc": [0.5, 0.25]}, {"input_ids": [7], "task": 3, "desc": [1.0, 0.0]}]
    )
    assert batch["input_ids"].shape == (2, 3) and batch["task"].tolist() == [1, 3]
    assert batch["desc"].dtype == torch.float32 and batch["desc"].shape == (2, 2)
    with pytest.raises(KeyError, match=r"condition column 'task' is missing from example\(s\) \[1\]"):
        collate([{"input_ids": [1], "task": 0, "desc": [0, 0]}, {"input_ids": [2], "desc": [0, 0]}])


def test_temperature_mixing():
    assert mixing_weights([90, 10], 1.0) == pytest.approx([0.9, 0.1])
    assert mixing_weights([90, 10], 1e6) == pytest.approx([0.5, 0.5], abs=1e-4)
    tasks = [0] * 90 + [1] * 10
    sampler = MultiTaskSampler(tasks, temperature=1e6, num_samples=4000, seed=3, rank=0, world_size=1)
    order = list(sampler)
    share = sum(tasks[i] for i in order) / len(order)
    assert 0.45 < share < 0.55  # upsampled to uniform
    assert list(sampler) == order  # deterministic for an epoch
    sampler.set_epoch(1)
    assert list(sampler) != order
    # DDP: two ranks get disjoint interleaved shards of the same global order
    ranks = [MultiTaskSampler(tasks, temperature=2.0, seed=0, rank=r, world_size=2) for r in (0, 1)]
    glob = ranks[0].global_order()
    assert list(ranks[0]) == glob[0::2] and list(ranks[1]) == glob[1::2] and len(ranks[0]) == 50
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        mixing_weights([1], 0)


def test_temperature_mixture_dataset_keeps_mixed_batches():
    data = _dataset(40)
    mixed = temperature_mixture(data, "task", temperature=2.0, num_samples=64, seed=0)
    assert len(mixed) == 64 and set(mixed["task"]) == {0, 1, 2, 3}
    with pytest.raises(KeyError, match="no column 'lang'"):
        temperature_mixture(data, "lang")


@pytest.mark.parametrize("reentrant", [False, True])
def test_trainer_with_gradient_checkpointing_follows_the_same_losses(tmp_path, reentrant):
    from transformers import Trainer

    def losses(**kw):
        torch.manual_seed(0)
        trainer = Trainer(
            model=get_hyper_model(_base(), _config()),
            args=_args(tmp_path, max_steps=4, **kw),
            train_dataset=_dataset(),
        )
        trainer.train()
        return _losses(trainer)

    checkpointed = losses(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    assert checkpointed == pytest.approx(losses(), abs=1e-6)

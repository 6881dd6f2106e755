"""TRL's GRPO on hyper models (`HyperGRPOTrainer`): each prompt's condition reaches generation, the scoring of
log-probabilities (policy and reference) and the rewards; a mixed batch of conditions equals each example alone;
rewards improve over a few steps; what would sample from the pretrained weights is refused."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from hyperlight.training.trl import HyperGRPOTrainer, PretrainedReference  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
_spec = importlib.util.spec_from_file_location("trl_grpo", Path(__file__).parent.parent / "examples" / "trl_grpo.py")
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)


@pytest.fixture(scope="module")
def tokenizer():
    return example.char_tokenizer()


def _data():
    return datasets.Dataset.from_dict({"prompt": ["abc", "XYZ", "hello", "WORLD"] * 4, "task": ["upper", "lower"] * 8})


def _trainer(tokenizer, tmp_path, *, reward=example.case_reward, hyper=None, **overrides):
    settings = dict(
        output_dir=str(tmp_path),
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=0,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=5,
        max_steps=2,
        learning_rate=1e-2,
        beta=0.04,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
    )
    settings.update(overrides)
    return HyperGRPOTrainer(
        model=hyper if hyper is not None else example.build(tokenizer, 0),
        reward_funcs=reward,
        args=trl.GRPOConfig(**settings),
        train_dataset=_data(),
        processing_class=tokenizer,
    )


def _rows(tokenizer):
    """Four prompt+completion rows (right-padded), their completion length and their mixed tasks."""
    texts = ["abcDEF", "XYZghi", "helloAB", "WORLDcd"]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, ids))
    input_ids = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    return input_ids, mask, ["upper", "lower", "lower", "upper"]


def _alone(model, ids, mask, keep, **conditions):
    """log p of each of the last `keep` tokens of one row, computed alone (no padding), the plain way."""
    real = ids[mask.bool()]
    logits = model(input_ids=real[None], **conditions).logits[0, :-1]
    logps = torch.log_softmax(logits.float(), -1).gather(-1, real[1:, None])[:, 0]
    return torch.nn.functional.pad(logps, (0, int((mask == 0).sum())))[-keep:]


def test_a_mixed_batch_is_scored_as_each_example_alone_for_the_policy_and_the_reference(tokenizer, tmp_path):
    trainer = _trainer(tokenizer, tmp_path)
    hyper = trainer.model
    with torch.no_grad():  # away from the zero update of a fresh generator, so tasks give different weights
        for p in hyper.generator.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids, mask, tasks = _rows(tokenizer)
    keep = 2  # score the last two positions of each row (a padded row's last ones are padding)
    with torch.no_grad(), trainer._conditions_of_rows({"task": tasks}):
        policy, _, _ = trainer._get_per_token_logps_and_entropies(hyper, ids, mask, keep, batch_size=3)
        reference, _, _ = trainer._get_per_token_logps_and_entropies(trainer.ref_model, ids, mask, keep, batch_size=2)
    with torch.no_grad():
        for row, task in enumerate(tasks):
            real = int(mask[row].sum())
            scored = slice(max(0, keep - (ids.shape[1] - real)), keep)  # the positions that are real tokens
            want = _alone(hyper, ids[row], mask[row], keep, task=task)
            torch.testing.assert_close(policy[row, scored], want[scored], rtol=1e-4, atol=1e-5)
            with hyper.disable_adapter():
                pretrained = _alone(hyper, ids[row], mask[row], keep)
            torch.testing.assert_close(reference[row, scored], pretrained[scored], rtol=1e-4, atol=1e-5)
        other = _alone(hyper, ids[0], mask[0], keep, task="lower")
    assert not torch.allclose(policy[0], other, atol=1e-4)  # the condition matters: the check is not trivial


def test_generation_samples_each_prompt_with_its_own_conditions(tokenizer, tmp_path):
    trainer = _trainer(tokenizer, tmp_path)
    hyper = trainer.model
    with torch.no_grad():
        for p in hyper.generator.parameters():
            p.add_(0.3 * torch.randn_like(p))
    trainer.generation_config.do_sample = False  # greedy: comparable with generating each prompt alone
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ["abc", "abc", "hello", "hello"]]
    tasks = ["upper", "lower", "lower", "upper"]
    with trainer._conditions_of_rows({"task": tasks}):
        completions, _ = trainer._generate_single_turn(prompts, None, {}, 1)
    for prompt, task, completion in zip(prompts, tasks, completions):
        alone = hyper.generate(
            input_ids=torch.tensor([prompt]), task=task, do_sample=False, max_new_tokens=5, pad_token_id=0
        )[0, len(prompt) :].tolist()
        end = alone.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in alone else len(alone)
        assert completion == alone[:end], (task, completion, alone)
    assert completions[0] != completions[1] or completions[2] != completions[3]  # the tasks do differ


def test_rewards_see_each_prompts_condition_and_improve(tokenizer, tmp_path):
    seen = []

    def reward(prompts, completions, task, **kwargs):
        seen.extend(zip(prompts, task))
        return example.case_reward(completions, task)

    reward.__name__ = "case_reward"
    trainer = _trainer(tokenizer, tmp_path, reward=reward, max_steps=40)
    assert isinstance(trainer.ref_model, PretrainedReference)  # no second copy was built (or fetched from a hub)
    trainer.train()
    task_of = {p: t for p, t in zip(_data()["prompt"], _data()["task"])}
    assert seen and all(task == task_of[prompt] for prompt, task in seen)
    assert {t for _, t in seen} == {"upper", "lower"}
    logged = [log["reward"] for log in trainer.state.log_history if "reward" in log]
    first, last = sum(logged[:8]) / 8, sum(logged[-8:]) / 8
    assert last > first + 0.15, logged


def test_what_would_sample_from_the_pretrained_weights_is_refused(tokenizer, tmp_path):
    with pytest.raises(NotImplementedError, match=r"\['use_transformers_continuous_batching'\] generate outside it"):
        _trainer(tokenizer, tmp_path, use_transformers_continuous_batching=True)
    with pytest.raises(ValueError, match="sync_ref_model=True would blend"):
        _trainer(tokenizer, tmp_path, sync_ref_model=True)
    with pytest.raises(TypeError, match="HyperGRPOTrainer trains a hyper model"):
        _trainer(tokenizer, tmp_path, hyper=torch.nn.Linear(2, 2))


def test_the_grpo_example_runs_and_prints_its_table():
    import subprocess
    import sys

    script = Path(__file__).parent.parent / "examples" / "trl_grpo.py"
    done = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mean reward before  after GRPO" in done.stdout
    assert "upper" in done.stdout and "lower" in done.stdout
    assert "reference model: the pretrained model inside the hyper model: PretrainedReference" in done.stdout


def test_without_a_kl_term_there_is_no_reference_and_modules_to_save_train(tokenizer, tmp_path):
    from hyperlight import HyperConfig, get_hyper_model

    base = example.build(tokenizer, 0).unload()  # the plain base again
    config = HyperConfig(
        target_modules=["q_proj", "v_proj"], conditions={"task": {"type": "categorical", "values": example.TASKS}}
    )
    hyper = get_hyper_model(base, HyperConfig(**{**config.to_dict(), "modules_to_save": ["lm_head"]}))
    trainer = _trainer(tokenizer, tmp_path, hyper=hyper, beta=0.0)
    assert trainer.ref_model is None
    trainer.train()
    with pytest.raises(NotImplementedError, match="modules_to_save"):  # a KL reference cannot be given back
        _trainer(tokenizer, tmp_path, hyper=hyper, beta=0.04)


def test_several_iterations_over_one_generation_batch_keep_its_conditions(tokenizer, tmp_path):
    """With num_iterations > 1, TRL scores each buffered batch again: the conditions must still be in it."""
    trainer = _trainer(tokenizer, tmp_path, num_iterations=2, steps_per_generation=2, max_steps=4)
    trainer.train()
    assert all(any(k.startswith("hyperlight_condition_") for k in batch) for batch in trainer._buffered_inputs)

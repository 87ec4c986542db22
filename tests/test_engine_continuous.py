"""Continuous batching on real model code: every request's greedy tokens equal transformers' for it alone.

Random-weight Qwen2 and Llama models (the architectures of Qwen2.5 and SmolLM2, small sizes, a
vocabulary of 256 so that answers vary token by token), fp32 on CPU. Requests arrive while others
are decoding, long prompts are prefilled in chunks under a small step budget, adapters and the
base model share steps; the reference is transformers' `generate` (PEFT's for adapters) on a
separate copy of the same weights, one request at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from tuneforge.inference.engine import Engine, Event, Request, Sampling

VOCAB = 256
WAIT_S = 120


class CharTokenizer:
    """Token i is one character; no token is a stop token (the reference runs without one)."""

    pad_token_id = 0
    eos_token_id = VOCAB + 7  # never generated
    unk_token_id = None

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return None

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(0x100 + i) for i in ids)


def _model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    common = {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "initializer_range": 0.3,
        "max_position_embeddings": 1024,
    }
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common)).eval()
    return LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=True)).eval()


def _adapter(arch: str, directory: Path, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft = get_peft_model(
        _model(arch),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, lora_dropout=0.0),
    )
    with torch.no_grad():  # LoRA-B starts small: make each adapter change the answers
        for name, parameter in peft.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    peft.save_pretrained(directory)
    return directory


def _reference(arch: str, prompt: list[int], tokens: int, adapter: Path | None) -> list[int]:
    model = _model(arch)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).eval()
    with torch.inference_mode():
        out = model.generate(
            input_ids=torch.tensor([prompt]),
            attention_mask=torch.ones((1, len(prompt)), dtype=torch.long),
            max_new_tokens=tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


class Call:
    def __init__(self, prompt: list[int], tokens: int, adapter: str | None = None, slot: int = 0) -> None:
        self.done = threading.Event()
        self.final: Event | None = None
        self.request = Request(list(prompt), adapter, Sampling(max_tokens=tokens), self._emit, slot=slot)

    def _emit(self, event: Event) -> None:
        if event.finish_reason:
            self.final = event
            self.done.set()

    def tokens(self) -> list[int]:
        assert self.done.wait(WAIT_S), "the request never finished"
        assert self.final is not None and self.final.finish_reason == "length", self.final
        return self.request.output_ids


@pytest.fixture(params=["qwen2", "llama"], scope="module")
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def engine(arch: str) -> Iterator[Engine]:
    engine = Engine(_model(arch), CharTokenizer(), max_adapters=2, max_rank=8, max_step_tokens=24, kv_block_size=8)
    yield engine
    engine.stop()


def _prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in (5, 90, 7, 33, 2)]


def _wait_for_tokens(call: Call, count: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while len(call.request.output_ids) < count:
        assert time.monotonic() < deadline and not call.done.is_set()
        time.sleep(0.001)


def test_requests_arriving_mid_decode_with_chunked_prefill_answer_as_they_do_alone(engine: Engine, arch: str) -> None:
    prompts = _prompts()
    expected = [_reference(arch, p, 24, None) for p in prompts]
    assert len({tuple(e) for e in expected}) == len(prompts)
    calls = [Call(p, 24) for p in prompts]
    engine.submit(calls[0].request)
    _wait_for_tokens(calls[0], 3)  # the others arrive while the first one decodes
    for call in calls[1:3]:
        engine.submit(call.request)
    _wait_for_tokens(calls[1], 1)  # the 90-token prompt went in chunks of at most 24 tokens a step
    for call in calls[3:]:
        engine.submit(call.request)
    assert [call.tokens() for call in calls] == expected
    assert engine.pool.free_blocks() == engine.pool.blocks


def test_adapters_and_the_base_model_in_one_batch_answer_as_peft_does_alone(
    engine: Engine, arch: str, tmp_path: Path
) -> None:
    adapters = {f"acme/a{seed}:1": _adapter(arch, tmp_path / f"a{seed}", seed) for seed in (11, 12)}
    prompts = _prompts()
    plan = [(prompts[0], None), (prompts[1], "acme/a11:1"), (prompts[2], "acme/a12:1"), (prompts[3], "acme/a11:1")]
    expected = [_reference(arch, p, 16, adapters[key] if key else None) for p, key in plan]
    assert expected[0] != _reference(arch, prompts[0], 16, adapters["acme/a11:1"])  # adapters change answers
    calls = []
    for prompt, key in plan:
        slot = engine.acquire(key, adapters[key]) if key else 0
        calls.append(Call(prompt, 16, key, slot))
    engine.submit(calls[0].request)
    _wait_for_tokens(calls[0], 2)
    for call in calls[1:]:
        engine.submit(call.request)
    assert [call.tokens() for call in calls] == expected
    engine.generate([1], sampling=Sampling(max_tokens=1))  # rows release their adapter after their final event
    assert engine._pins == {}


def test_a_cached_prompt_prefix_gives_the_same_tokens_as_computing_it(engine: Engine, arch: str) -> None:
    g = torch.Generator().manual_seed(9)
    shared = torch.randint(1, VOCAB, (41,), generator=g).tolist()
    prompts = [shared + torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in (3, 9, 1)]
    expected = [_reference(arch, p, 12, None) for p in prompts]
    before = _cached_tokens()
    for prompt, tokens in zip(prompts, expected, strict=True):  # one after another: each reuses the blocks before
        call = Call(prompt, 12)
        call.request.prefix_scope = "acme"
        engine.submit(call.request)
        assert call.tokens() == tokens
    assert _cached_tokens() - before == 2 * 40  # the later two reused the 5 whole blocks of the shared 41 tokens


def _cached_tokens() -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("tuneforge_inference_prefix_cached_tokens_total") or 0.0

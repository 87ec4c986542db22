"""Embedded models load offline: the real Qwen2.5 tokenizer (ChatML), tiny-qwen2, SmolLM2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import MODEL_CACHE

from tuneforge.common.errors import InvalidArgument, NotFound
from tuneforge.models import ModelResolver, template_hash


@pytest.fixture(scope="session")
def resolver() -> ModelResolver:
    return ModelResolver(MODEL_CACHE)


@pytest.fixture(scope="session")
def qwen_tokenizer(resolver: ModelResolver):
    return resolver.load_tokenizer(resolver.resolve("tiny-qwen2"))


def test_qwen_tokenizer_renders_chatml_with_the_real_ids(qwen_tokenizer) -> None:
    assert qwen_tokenizer.convert_tokens_to_ids("<|im_end|>") == 151645
    assert qwen_tokenizer.convert_tokens_to_ids("<|im_start|>") == 151644
    assert qwen_tokenizer.convert_tokens_to_ids("<|endoftext|>") == 151643
    assert qwen_tokenizer.encode("Hello world") == [9707, 1879]
    text = qwen_tokenizer.apply_chat_template(
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
        ],
        tokenize=False,
    )
    assert text == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
    )
    assert "[INST]" not in text  # Llama-2 markers are not Qwen's
    prompt = qwen_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>assistant\n")


def test_qwen_tokenizer_round_trips_mixed_scripts(qwen_tokenizer) -> None:
    text = "Tuneforge 调优平台 🚀 — naïve café, 東京, مرحبا"
    assert qwen_tokenizer.decode(qwen_tokenizer.encode(text)) == text


def test_tiny_qwen2_loads_offline_and_runs(resolver: ModelResolver, qwen_tokenizer) -> None:
    resolved = resolver.resolve("tiny-qwen2")
    assert Path(resolved.source, "model.safetensors").is_file()
    assert not list(Path(resolved.source).glob("*.bin"))  # safetensors only, nothing to unpickle
    model = resolver.load_model(resolved)
    assert model.config.vocab_size == 151936 and model.config.num_hidden_layers == 2
    ids = torch.tensor([qwen_tokenizer.encode("Hello world")])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, 2, 151936) and torch.isfinite(logits).all()
    # the build is deterministic: a rebuild from the same seed gives the same weights
    again = resolver.load_model(resolved)
    torch.testing.assert_close(again.model.embed_tokens.weight, model.model.embed_tokens.weight)


@pytest.mark.slow
def test_smollm2_loads_offline_and_answers(resolver: ModelResolver) -> None:
    resolved = resolver.resolve("smollm2-135m-instruct")
    tokenizer = resolver.load_tokenizer(resolved)
    model = resolver.load_model(resolved)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    assert "<|im_start|>assistant\n" in tokenizer.decode(inputs["input_ids"][0])
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_template_hash_tells_tokenizers_apart(resolver: ModelResolver, qwen_tokenizer) -> None:
    smol = resolver.load_tokenizer(resolver.resolve("smollm2-135m-instruct"))
    assert template_hash(qwen_tokenizer) == template_hash(resolver.load_tokenizer(resolver.resolve("tiny-qwen2")))
    assert template_hash(qwen_tokenizer) != template_hash(smol)


def test_model_names_are_validated(resolver: ModelResolver, tmp_path: Path) -> None:
    assert resolver.resolve("Qwen/Qwen2.5-7B-Instruct").source == "Qwen/Qwen2.5-7B-Instruct"
    assert resolver.resolve("Qwen/Qwen2.5-7B-Instruct").trust_remote_code is False
    with pytest.raises(InvalidArgument) as info:
        resolver.resolve("not a model!", field="spec.base_model")
    assert info.value.violations[0].field == "spec.base_model"
    with pytest.raises(NotFound):
        resolver.resolve(str(tmp_path / "missing"))
    assert ModelResolver(MODEL_CACHE, ["org/custom"]).resolve("org/custom").trust_remote_code is True

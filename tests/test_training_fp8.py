"""FP8 matmuls for frozen LoRA base weights: accuracy against the 16/32-bit layer, gradients, and
training that still converges (float8 matmuls run on CPU too, so the numbers are checked here)."""

from __future__ import annotations

import pytest
import torch

from tuneforge.training.fp8 import Fp8FrozenLinear, convert_lora_base_layers


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("shape, bias", [((3, 7, 64), True), ((16, 64), False), ((1, 1, 64), True)])
def test_the_fp8_layer_matches_the_linear_layer_forward_and_backward(shape: tuple, bias: bool) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48, bias=bias).requires_grad_(False)
    fp8 = Fp8FrozenLinear(linear)
    x = torch.randn(*shape, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = fp8(x), linear(x_ref)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    assert _relative_error(y, y_ref) < 0.06  # e4m3: 3 mantissa bits, per-row/per-channel scales
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad)
    assert _relative_error(x.grad, x_ref.grad) < 0.06
    assert not any(p.requires_grad for p in fp8.parameters())
    # a row of huge values does not wash out the others: scales are per row, not per tensor
    spiky = torch.randn(16, 64)
    spiky[0] *= 1e4
    assert _relative_error(fp8(spiky)[1:], linear(spiky)[1:]) < 0.06


def _tiny_lora_model(seed: int = 0):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=128,
    )
    model = Qwen2ForCausalLM(config)
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))


def _fit(model, steps: int = 40) -> list[float]:
    torch.manual_seed(1)
    ids = torch.randint(0, 256, (4, 32))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_lora_on_an_fp8_base_trains_like_lora_on_the_full_precision_base() -> None:
    reference = _tiny_lora_model()
    quantized = _tiny_lora_model()
    assert convert_lora_base_layers(quantized) == 14  # 7 projections x 2 layers
    assert all(isinstance(m.base_layer, Fp8FrozenLinear) for m in quantized.modules() if hasattr(m, "lora_A"))
    ref_losses, fp8_losses = _fit(reference), _fit(quantized)
    assert fp8_losses[-1] < fp8_losses[0] - 0.8  # it learns (5.54 -> 4.57 in 40 steps)
    assert fp8_losses == pytest.approx(ref_losses, rel=0.02)  # step by step along the same path
    # the adapter weights are what gets saved; the base stays untouched for serving in bf16
    names = {n for n, p in quantized.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n for n in names)


def test_full_fine_tuning_cannot_use_an_fp8_base() -> None:
    model = _tiny_lora_model()
    for module in model.modules():
        if hasattr(module, "base_layer"):
            module.base_layer.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="frozen base weights"):
        convert_lora_base_layers(model)

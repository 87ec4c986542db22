"""FP8 matmuls for the frozen base weights of LoRA training (opt-in: `base_precision: fp8`).

In LoRA the base weights never change, so each one is quantized once to float8 (e4m3) with one
scale per output channel for the forward matmul, and once more with one scale per input channel
for the input-gradient matmul (no weight gradient exists). Activations and output gradients are
quantized per row (per token) on the fly. Both matmuls run as `torch._scaled_mm` with row-wise
scales, which uses the FP8 tensor cores of Ada/Hopper GPUs (RTX 4090, H100) at twice the bf16 rate.
The LoRA matrices, norms, attention and the loss stay in bf16/fp32, like QLoRA keeps its adapters
in 16 bit over a 4-bit base — FP8 is a far smaller rounding of the base than QLoRA's NF4. The
adapter is saved as usual and serves on the bf16 base.
"""

from __future__ import annotations

from typing import Any

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)
_EPS = 1e-12


def fp8_supported(device: torch.device) -> bool:
    """Whether `device` multiplies float8 natively (compute capability 8.9+) or is the CPU (tests)."""
    if device.type == "cpu":
        return True
    if device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


#: float8 matmuls need every dimension to be a multiple of 16.
ALIGN = 16


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` (2-D) as float8 with one float32 scale per row: x ≈ q * scale; rows padded to a multiple of 16."""
    pad = -x.shape[0] % ALIGN
    if pad:
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
    scale = x.abs().amax(dim=1, keepdim=True).float().clamp(min=_EPS) / FP8_MAX
    return (x * (1.0 / scale)).to(FP8), scale


class _Fp8Matmul(torch.autograd.Function):
    """y = x @ W.T with both operands in float8; dx = dy @ W likewise; W gets no gradient."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        weight_scale: torch.Tensor,
        weight_t: torch.Tensor,
        weight_t_scale: torch.Tensor,
    ) -> torch.Tensor:
        shape = x.shape
        x_q, x_scale = quantize_rows(x.reshape(-1, shape[-1]))
        # b must be column-major: weight is [out, in] row-major, so weight.t() is [in, out] column-major
        y = torch._scaled_mm(x_q, weight.t(), scale_a=x_scale, scale_b=weight_scale.t(), out_dtype=x.dtype)
        ctx.save_for_backward(weight_t, weight_t_scale)
        ctx.in_shape = shape
        rows = x.numel() // shape[-1]
        return y[:rows].reshape(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        weight_t, weight_t_scale = ctx.saved_tensors
        g_q, g_scale = quantize_rows(grad.reshape(-1, grad.shape[-1]))
        # weight_t is [in, out] row-major, so weight_t.t() is [out, in] column-major
        dx = torch._scaled_mm(g_q, weight_t.t(), scale_a=g_scale, scale_b=weight_t_scale.t(), out_dtype=grad.dtype)
        rows = grad.numel() // grad.shape[-1]
        return dx[:rows].reshape(ctx.in_shape), None, None, None, None


class Fp8FrozenLinear(torch.nn.Module):
    """A frozen `nn.Linear` whose matmuls run in float8; same inputs, outputs and bias."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        out_scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=_EPS) / FP8_MAX  # [out, 1]
        in_scale = weight.abs().amax(dim=0, keepdim=True).clamp(min=_EPS) / FP8_MAX  # [1, in]
        self.register_buffer("weight_fp8", (weight / out_scale).to(FP8), persistent=False)
        self.register_buffer("weight_scale", out_scale, persistent=False)
        self.register_buffer("weight_t_fp8", (weight / in_scale).t().contiguous().to(FP8), persistent=False)
        self.register_buffer("weight_t_scale", in_scale.t().contiguous(), persistent=False)  # [in, 1]
        bias = linear.bias
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _Fp8Matmul.apply(x, self.weight_fp8, self.weight_scale, self.weight_t_fp8, self.weight_t_scale)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8=e4m3"


def convert_lora_base_layers(model: torch.nn.Module) -> int:
    """Replaces the frozen base `nn.Linear` of every LoRA layer of a PEFT model; returns how many.

    Frees the 16-bit weights: the two float8 copies take the same memory as one bf16 weight.
    Layers whose sizes are not multiples of 16 (which float8 matmuls need) stay as they are.
    """
    from peft.tuners.lora import LoraLayer

    converted = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and isinstance(module.base_layer, torch.nn.Linear):
            base = module.base_layer
            if base.in_features % ALIGN or base.out_features % ALIGN:
                continue
            if base.weight.requires_grad:
                raise ValueError("base_precision fp8 only applies to frozen base weights (LoRA)")
            module.base_layer = Fp8FrozenLinear(base).to(base.weight.device)
            converted += 1
    return converted

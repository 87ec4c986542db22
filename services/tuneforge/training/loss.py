"""Causal-LM loss computed in chunks, so the full [tokens x vocabulary] logits never exist at once.

With Qwen2.5's 152k vocabulary, fp32 logits cost ~0.6 MB per token: 2.4 GB for one 4,096-token
row, before their gradient. Logits are computed only for trained positions (assistant tokens),
`chunk_size` at a time.

When the output head is a plain bias-free Linear (Qwen2.5, Llama, SmolLM2…) the loss is a fused
linear + cross-entropy: each chunk's gradient (softmax - one-hot, times the head) is computed in
the forward pass right after its loss and kept, so the backward pass only scales it — one
[chunk x vocabulary] buffer alive at a time and the head's matmul run twice per chunk instead of
three times (the idea of Liger Kernel's fused linear cross-entropy, in plain PyTorch). Other heads
(a LoRA-wrapped head, ZeRO-3-partitioned weights) take the general path: each chunk under
activation checkpointing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tuneforge.training.packing import IGNORE


def _chunk_loss(hidden: torch.Tensor, targets: torch.Tensor, lm_head: torch.nn.Module) -> torch.Tensor:
    logits = lm_head(hidden).float()
    return F.cross_entropy(logits, targets, reduction="sum")


class LinearCrossEntropy(torch.autograd.Function):
    """sum(cross_entropy(hidden @ weight.T, targets)) with its gradients computed chunk by chunk in forward."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int):
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if (ctx.needs_input_grad[1]) else None
        )
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size]
            t = targets[start : start + chunk_size]
            logits = (h @ weight.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            # d(sum of losses)/d(logits) = softmax - one-hot, computed in place over the logits
            logits.sub_(lse[:, None]).exp_()
            logits[torch.arange(t.shape[0], device=t.device), t] -= 1.0
            grad_logits = logits.to(hidden.dtype)
            del logits
            if grad_hidden is not None:
                torch.matmul(grad_logits, weight, out=grad_hidden[start : start + chunk_size])
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.t().float(), h.float())
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_output.float()
        if grad_hidden is not None:
            grad_hidden = (grad_hidden.float() * scale).to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = grad_weight * scale
        return grad_hidden, grad_weight, None, None


def _fusable(lm_head: torch.nn.Module) -> bool:
    weight = getattr(lm_head, "weight", None)
    return (
        type(lm_head) is torch.nn.Linear
        and lm_head.bias is None
        and weight is not None
        and weight.numel() > 0
        and not hasattr(weight, "ds_id")  # DeepSpeed ZeRO-3 keeps a partitioned placeholder here
    )


def chunked_lm_loss(
    hidden_states: torch.Tensor, targets: torch.Tensor, lm_head: torch.nn.Module, chunk_size: int = 4096
) -> tuple[torch.Tensor, int]:
    """(sum of token losses, number of trained tokens) for hidden states [..., H] and targets [...]."""
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    flat = targets.reshape(-1)
    keep = flat != IGNORE
    hidden, flat = hidden[keep], flat[keep]
    count = int(flat.numel())
    if count == 0:
        return hidden_states.new_zeros((), dtype=torch.float32) + 0.0 * hidden_states.sum(), 0
    if torch.is_grad_enabled() and _fusable(lm_head):
        total = LinearCrossEntropy.apply(hidden, lm_head.weight, flat, chunk_size)
        return total, count
    total = hidden_states.new_zeros((), dtype=torch.float32)
    for start in range(0, count, chunk_size):
        part_h, part_t = hidden[start : start + chunk_size], flat[start : start + chunk_size]
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_loss, part_h, part_t, lm_head, use_reentrant=False)
        else:
            total = total + _chunk_loss(part_h, part_t, lm_head)
    return total, count

"""Causal-LM loss computed in chunks, so the full [tokens x vocabulary] logits never exist at once.

With Qwen2.5's 152k vocabulary, fp32 logits cost ~0.6 MB per token: 2.4 GB for one 4,096-token
row, before their gradient. Here logits are computed only for trained positions (assistant tokens),
`chunk_size` at a time, each chunk under activation checkpointing, so at most one chunk of logits
is alive in the forward and in the backward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tuneforge.training.packing import IGNORE


def _chunk_loss(hidden: torch.Tensor, targets: torch.Tensor, lm_head: torch.nn.Module) -> torch.Tensor:
    logits = lm_head(hidden).float()
    return F.cross_entropy(logits, targets, reduction="sum")


def chunked_lm_loss(
    hidden_states: torch.Tensor, targets: torch.Tensor, lm_head: torch.nn.Module, chunk_size: int = 4096
) -> tuple[torch.Tensor, int]:
    """(sum of token losses, number of trained tokens) for hidden states [..., H] and targets [...]."""
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    flat = targets.reshape(-1)
    keep = flat != IGNORE
    hidden, flat = hidden[keep], flat[keep]
    count = int(flat.numel())
    total = hidden_states.new_zeros((), dtype=torch.float32)
    for start in range(0, count, chunk_size):
        part_h, part_t = hidden[start : start + chunk_size], flat[start : start + chunk_size]
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_loss, part_h, part_t, lm_head, use_reentrant=False)
        else:
            total = total + _chunk_loss(part_h, part_t, lm_head)
    return total, count

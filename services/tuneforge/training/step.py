"""One forward pass of a (LoRA-wrapped) causal LM over a packed batch, returning the chunked loss."""

from __future__ import annotations

from typing import Any

import torch

from tuneforge.training.loss import chunked_lm_loss
from tuneforge.training.packing import PackedBatch


def decoder_and_head(model: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The decoder stack and the output head (PEFT injects LoRA in place, so its base model is used)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def packed_loss(model: Any, batch: PackedBatch, *, varlen: bool, chunk_size: int = 4096) -> tuple[torch.Tensor, int]:
    """(sum of token losses, trained tokens) of `batch`; attention never crosses sample boundaries.

    `varlen=True` passes `cu_seqlens` for the `tuneforge_varlen` attention; otherwise transformers
    derives a block-diagonal mask from the restarting position ids. On GPU the pass runs under bf16
    autocast: PEFT keeps adapter weights in fp32 (the optimizer's master copy), and without autocast
    every LoRA matmul would run in fp32 off the tensor cores — a fifth of a 7B step on an H100.
    """
    decoder, lm_head = decoder_and_head(model)
    kwargs: dict[str, Any] = {}
    if varlen:
        kwargs = {
            "cu_seq_lens_q": batch.cu_seqlens,
            "cu_seq_lens_k": batch.cu_seqlens,
            "max_length_q": batch.max_seqlen,
            "max_length_k": batch.max_seqlen,
        }
    device_type = batch.input_ids.device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=device_type == "cuda"):
        hidden = decoder(
            input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=None, use_cache=False, **kwargs
        ).last_hidden_state
        return chunked_lm_loss(hidden, batch.targets, lm_head, chunk_size)

"""Per-document attention for packed rows.

On CPU (and wherever no varlen kernel exists) transformers' own SDPA path does it: given position
ids that restart per sample and no attention mask, it detects the packed layout and builds a
block-diagonal causal mask. On GPU we register `tuneforge_varlen`, which calls PyTorch's
Flash-Attention varlen kernel (`torch.nn.attention.varlen.varlen_attn`) with the `cu_seqlens` of the
packed batch: no mask tensor at all, and attention work only inside each sample.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

VARLEN = "tuneforge_varlen"
_registered = False


def _varlen_kwargs() -> dict[str, Any]:
    """Causal and GQA keyword arguments as the installed torch spells them (they changed in 2.10-2.12)."""
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    kwargs: dict[str, Any] = {}
    if "is_causal" in params:
        kwargs["is_causal"] = True
    elif "causal" in params:
        kwargs["causal"] = True
    elif "window_size" in params:
        kwargs["window_size"] = (-1, 0)  # unlimited left context, none to the right: causal
    else:  # pragma: no cover - a torch we do not know
        raise RuntimeError("torch's varlen_attn takes no causal argument we recognise")
    return kwargs


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: [B, H, L, D] in, [B, L, H, D] out, documents from `cu_seq_lens_q`."""
    from torch.nn.attention.varlen import varlen_attn

    cu_seqlens = kwargs["cu_seq_lens_q"]
    max_length = int(kwargs["max_length_q"])
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    q = query.transpose(1, 2).reshape(batch * length, heads, dim)
    k = key.transpose(1, 2).reshape(batch * length, kv_heads, dim)
    v = value.transpose(1, 2).reshape(batch * length, kv_heads, dim)
    extra = dict(_VARLEN_KWARGS)
    if kv_heads != heads:
        if "enable_gqa" in _VARLEN_PARAMS:
            extra["enable_gqa"] = True
        else:
            k = k.repeat_interleave(heads // kv_heads, dim=1)
            v = v.repeat_interleave(heads // kv_heads, dim=1)
    out = varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_length, max_length, scale=scaling, **extra)
    return out.reshape(batch, length, heads, dim), None


_VARLEN_KWARGS: dict[str, Any] = {}
_VARLEN_PARAMS: frozenset[str] = frozenset()


def register_varlen_attention() -> str:
    """Registers `tuneforge_varlen` with transformers (idempotent); returns its name."""
    global _registered, _VARLEN_KWARGS, _VARLEN_PARAMS
    if not _registered:
        from torch.nn.attention.varlen import varlen_attn
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        _VARLEN_KWARGS = _varlen_kwargs()
        _VARLEN_PARAMS = frozenset(inspect.signature(varlen_attn).parameters)
        AttentionInterface.register(VARLEN, varlen_attention_forward)
        AttentionMaskInterface.register(VARLEN, lambda *args, **kwargs: None)  # documents come from cu_seqlens
        _registered = True
    return VARLEN


def varlen_available() -> bool:
    """Whether the varlen kernel can run here (CUDA and a torch that ships it)."""
    if not torch.cuda.is_available():
        return False
    import importlib.util

    return importlib.util.find_spec("torch.nn.attention.varlen") is not None

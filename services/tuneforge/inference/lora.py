"""Batched multi-adapter LoRA: every request of a batch through its own adapter, in one pass.

PEFT's mixed-adapter batches (`adapter_names=`) loop over the adapters of a batch, so throughput
falls with the number of distinct adapters (to 2% of the base model's at 32 on an H100, see
../shared/bench). Here each adapted Linear holds every loaded adapter's weights stacked in slots —
A: [slots, r_max, in], B: [slots, out, r_max] (ranks below r_max are zero-padded) — and a batch
gathers each row's slot and runs two batched matmuls (the BGMV idea of Punica / S-LoRA), whatever
the mix. Slot 0 is all zeros: rows without an adapter get exactly the base model's output.

Adapters are PEFT directories (`adapter_config.json` + `adapter_model.safetensors`), validated
before anything touches the slots: rank, target modules and tensor shapes must fit this model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuneforge.common.errors import FailedPrecondition

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class SlotSelection:
    """Which slot each row of the batch in flight uses (shared by every adapted layer of a model)."""

    def __init__(self) -> None:
        self.rows: torch.Tensor | None = None  # [batch] slot indices; None = base model only


class BatchedLoraLinear(torch.nn.Module):
    """A frozen Linear plus per-row LoRA deltas gathered from stacked adapter slots."""

    def __init__(self, base: torch.nn.Linear, slots: int, max_rank: int, selection: SlotSelection) -> None:
        super().__init__()
        self.base = base
        self.selection = selection
        kwargs = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.register_buffer("lora_a", torch.zeros(slots, max_rank, base.in_features, **kwargs), persistent=False)
        self.register_buffer("lora_b", torch.zeros(slots, base.out_features, max_rank, **kwargs), persistent=False)
        self.register_buffer("scaling", torch.zeros(slots, **kwargs), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        rows = self.selection.rows
        if rows is None:
            return out
        shaped = x.reshape(rows.shape[0], -1, x.shape[-1])  # [batch, tokens, in]
        a = self.lora_a.index_select(0, rows)  # [batch, r, in]
        b = self.lora_b.index_select(0, rows)  # [batch, out, r]
        delta = torch.bmm(torch.bmm(shaped, a.transpose(1, 2)), b.transpose(1, 2))
        delta = delta * self.scaling.index_select(0, rows).view(-1, 1, 1)
        return out + delta.reshape(out.shape)


@dataclass(frozen=True)
class AdapterWeights:
    """A validated adapter, read from disk, ready to be copied into a slot."""

    rank: int
    scaling: float
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module name → (A [r, in], B [out, r])


def inject(model: Any, slots: int, max_rank: int, targets: tuple[str, ...] = DEFAULT_TARGETS) -> dict[str, Any]:
    """Wraps the model's target Linears in BatchedLoraLinear; returns {module name: layer} and the selection."""
    selection = SlotSelection()
    layers: dict[str, BatchedLoraLinear] = {}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and isinstance(child, torch.nn.Linear):
                wrapped = BatchedLoraLinear(child, slots, max_rank, selection)
                setattr(module, child_name, wrapped)
                layers[f"{name}.{child_name}" if name else child_name] = wrapped
    if not layers:
        raise ValueError(f"the model has no Linear layers named {', '.join(targets)}")
    return {"layers": layers, "selection": selection}


def read_adapter(directory: Path, layers: dict[str, BatchedLoraLinear], max_rank: int) -> AdapterWeights:
    """Reads and checks a PEFT LoRA adapter against the adapted layers (FAILED_PRECONDITION if it cannot fit)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        config = json.loads((directory / ADAPTER_CONFIG).read_text())
        raw = load_file(directory / ADAPTER_WEIGHTS)
    except (OSError, ValueError, SafetensorError) as exc:
        raise FailedPrecondition(f"adapter files cannot be read: {exc}") from exc
    if config.get("peft_type", "LORA") != "LORA":
        raise FailedPrecondition(f"adapter type {config.get('peft_type')!r} is not served; only LoRA is")
    if config.get("use_dora") or config.get("modules_to_save"):
        raise FailedPrecondition("adapters with DoRA or modules_to_save are not served")
    rank = int(config.get("r", 0))
    if not 1 <= rank <= max_rank:
        raise FailedPrecondition(f"adapter rank {rank} is not served here (1..{max_rank})")
    alpha = float(config.get("lora_alpha", rank))
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in raw.items():
        name = key.removeprefix("base_model.model.")
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in name:
                module = name.split(marker)[0]
                pairs.setdefault(module, {})[part] = tensor
                break
        else:
            raise FailedPrecondition(f"adapter tensor {key!r} is not a LoRA A/B weight")
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module, parts in pairs.items():
        layer = layers.get(module)
        if layer is None:
            raise FailedPrecondition(f"adapter targets {module!r}, which this replica does not adapt")
        a, b = parts.get("lora_A"), parts.get("lora_B")
        if a is None or b is None:
            raise FailedPrecondition(f"adapter module {module!r} lacks its lora_A or lora_B weight")
        if tuple(a.shape) != (rank, layer.base.in_features) or tuple(b.shape) != (layer.base.out_features, rank):
            raise FailedPrecondition(
                f"adapter weights of {module!r} have shapes {tuple(a.shape)}/{tuple(b.shape)}, which do not fit "
                f"this base model ({layer.base.in_features}→{layer.base.out_features}, rank {rank})"
            )
        tensors[module] = (a, b)
    if not tensors:
        raise FailedPrecondition("the adapter holds no LoRA weights")
    return AdapterWeights(rank, scaling, tensors)


def write_slot(layers: dict[str, BatchedLoraLinear], slot: int, weights: AdapterWeights | None) -> None:
    """Puts an adapter in `slot` (None empties it); modules it does not target get zeros."""
    with torch.no_grad():
        for name, layer in layers.items():
            layer.lora_a[slot].zero_()
            layer.lora_b[slot].zero_()
            layer.scaling[slot] = 0.0
            if weights is None or name not in weights.tensors:
                continue
            a, b = weights.tensors[name]
            layer.lora_a[slot, : weights.rank].copy_(a)
            layer.lora_b[slot, :, : weights.rank].copy_(b)
            layer.scaling[slot] = weights.scaling

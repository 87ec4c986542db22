"""Batched multi-adapter LoRA: every request of a batch through its own adapter, in one pass.

PEFT's mixed-adapter batches (`adapter_names=`) loop over the adapters of a batch, so throughput
falls with the number of distinct adapters (to 2% of the base model's at 32 on an H100, see
../shared/bench). Here each adapted Linear holds every loaded adapter's weights stacked in slots —
A: [slots, r_max, in], B: [slots, out, r_max] (ranks below r_max are zero-padded) — and slot 0 is
all zeros: tokens without an adapter get exactly the base model's output.

The tokens of a step are grouped by adapter (the SGMV idea of Punica / S-LoRA): the grouping is
worked out once per step on the host from the slot ids (`SlotSelection.set`), and every adapted
layer then reads each adapter's weights once, however many tokens use it, in two batched matmuls
over the groups (`padded`: groups padded to one length, long groups split so padding never more
than doubles the work) or two grouped GEMMs over the whole slot stack (`segment`,
`torch.nn.functional.grouped_mm`: no copy of the weights, shapes that depend on the token count
alone). Tokens on slot 0 skip the LoRA math (`padded`).

Adapters are PEFT directories (`adapter_config.json` + `adapter_model.safetensors`), validated
before anything touches the slots: rank, target modules and tensor shapes must fit this model.
Decoded adapters stay in a host-memory LRU (`HostAdapterCache`, pinned on CUDA) below the GPU
slots, so loading one again after its slot was taken is a copy, not a file read.
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from prometheus_client import Counter, Gauge

from tuneforge.common.errors import FailedPrecondition
from tuneforge.common.settings import DEFAULT_LORA_TARGETS

DEFAULT_TARGETS: tuple[str, ...] = DEFAULT_LORA_TARGETS
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: How the adapted layers compute the LoRA deltas of a step (see the module's docstring).
KERNELS = ("padded", "segment")

HOST_CACHE_HITS = Counter(
    "tuneforge_inference_adapter_host_cache_hits_total", "Adapter loads served from the host-memory cache."
)
HOST_CACHE_MISSES = Counter(
    "tuneforge_inference_adapter_host_cache_misses_total", "Adapter loads that read and checked the adapter's files."
)
HOST_CACHE_EVICTIONS = Counter(
    "tuneforge_inference_adapter_host_cache_evictions_total", "Decoded adapters dropped from the host-memory cache."
)
HOST_CACHE_BYTES = Gauge(
    "tuneforge_inference_adapter_host_cache_bytes", "Bytes of decoded adapters held in host memory."
)


# -- which tokens use which slot --------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """A step's grouping on one device, shared by every adapted layer.

    padded: `index` [K, C] token indices (padding: 0, with `mask` 0), `slots` [K] the slot of each row,
    `inverse` [T] where each token's delta is in the flattened [K * C] result (K * C: none, a zero row).
    segment: `index` [T] the tokens sorted by slot, `slots` [T] their slots, `offsets` [slots] int32 ends.
    """

    index: torch.Tensor
    slots: torch.Tensor
    mask: torch.Tensor | None = None
    offsets: torch.Tensor | None = None
    inverse: torch.Tensor | None = None


class SlotSelection:
    """Which slot each row of the step in flight uses (shared by every adapted layer of a model).

    `rows` holds one slot id per leading row; each row covers `x.numel() // (in_features * len(rows))`
    consecutive tokens of a layer's input flattened to [-1, in] — [B] ids for an input [B, S, in], or
    one id per token for [1, T, in]. The grouping is computed once per step from a host copy of the
    ids (pass a CPU tensor or a list to `set` and no device→host copy happens) and then reused by
    every layer; `rows = tensor` and `rows = None` assign through `set`.
    """

    def __init__(self, slots: int | None = None, kernel: str = "padded") -> None:
        if kernel not in KERNELS:
            raise ValueError(f"unknown LoRA kernel {kernel!r}; one of {', '.join(KERNELS)}")
        self.slots = slots
        self.kernel = kernel
        self._rows: torch.Tensor | None = None
        self._host: torch.Tensor | None = None
        self._plans: dict[tuple[int, torch.device, torch.dtype], _Plan | None] = {}

    @property
    def rows(self) -> torch.Tensor | None:
        return self._rows

    @rows.setter
    def rows(self, value: torch.Tensor | Sequence[int] | None) -> None:
        self.set(value)

    def set(self, rows: torch.Tensor | Sequence[int] | None, host: torch.Tensor | Sequence[int] | None = None) -> None:
        """The slot of each row for the next forward pass (None: the base model only, no LoRA math).

        `host`: the same ids on the CPU when `rows` is a device tensor (else they are copied once here).
        """
        self._plans = {}
        if rows is None:
            self._rows = self._host = None
            return
        if not isinstance(rows, torch.Tensor):
            rows = torch.as_tensor(list(rows), dtype=torch.long)
        if host is None:
            host = rows if rows.device.type == "cpu" else rows.cpu()
        elif not isinstance(host, torch.Tensor):
            host = torch.as_tensor(list(host), dtype=torch.long)
        host = host.reshape(-1).to(torch.long)
        if host.numel() != rows.numel():
            raise ValueError(f"{host.numel()} host slot ids for {rows.numel()} rows")
        if host.numel() and (int(host.min()) < 0 or (self.slots is not None and int(host.max()) >= self.slots)):
            bad = host[(host < 0) | (host >= (self.slots if self.slots is not None else host.max() + 1))]
            raise ValueError(f"slot ids must lie in 0..{(self.slots or 1) - 1}, got {sorted(set(bad.tolist()))[:8]}")
        self._rows, self._host = rows, host

    def plan(self, x: torch.Tensor, in_features: int) -> _Plan | None:
        """The grouping for a layer input `x` (cached: computed by the first layer of the step)."""
        host = self._host
        if host is None:
            return None
        rows = host.numel()
        tokens = x.numel() // in_features
        if tokens == 0:
            return None
        if rows == 0 or tokens % rows:
            raise ValueError(f"{tokens} tokens cannot be split over {rows} rows of slot ids")
        key = (tokens // rows, x.device, x.dtype)
        if key not in self._plans:
            self._plans[key] = self._build(host, tokens // rows, x.device, x.dtype)
        return self._plans[key]

    def _build(self, host: torch.Tensor, per_row: int, device: torch.device, dtype: torch.dtype) -> _Plan | None:
        if not bool((host != 0).any()):
            return None
        if self.kernel == "segment":
            return _segment_plan(host, per_row, self.slots, device)
        return _padded_plan(host, per_row, device, dtype)


def _padded_plan(host: torch.Tensor, per_row: int, device: torch.device, dtype: torch.dtype) -> _Plan:
    """Adapted tokens grouped by slot, padded to one length; a group too long is split in chunks."""
    adapted = (host != 0).nonzero().flatten()
    slot_of = host[adapted]
    order = torch.argsort(slot_of, stable=True)
    rows, slots = adapted[order], slot_of[order]
    unique, counts = torch.unique_consecutive(slots, return_counts=True)
    sizes = counts * per_row  # tokens per adapter
    tokens = (rows.unsqueeze(1) * per_row + torch.arange(per_row)).flatten()  # grouped by adapter
    total, groups = tokens.numel(), unique.numel()
    longest = int(sizes.max())
    # one chunk per adapter unless padding to the longest group would more than double the work:
    # then chunks of total/groups tokens (padded ≤ 2·total + groups, an adapter read ≤ 1 + its share)
    width = longest if groups * longest <= 2 * total else -(-total // groups)
    chunks = -(-sizes // width)
    starts = torch.cumsum(sizes, 0) - sizes
    position = torch.arange(total) - torch.repeat_interleave(starts, sizes)
    chunk = torch.repeat_interleave(torch.cumsum(chunks, 0) - chunks, sizes) + position // width
    column = position % width
    count = int(chunks.sum())
    index = torch.zeros(count, width, dtype=torch.long)
    index[chunk, column] = tokens
    mask = torch.zeros(count, width, dtype=dtype)
    mask[chunk, column] = 1
    # each token's row of the result, so that adding the deltas back is a gather (no scatter-add: slow on CPU,
    # atomics on GPU); tokens of the base model point at a zero row past the end
    inverse = torch.full((host.numel() * per_row,), count * width, dtype=torch.long)
    inverse[tokens] = chunk * width + column
    return _Plan(
        index.to(device, non_blocking=True),
        torch.repeat_interleave(unique, chunks).to(device, non_blocking=True),
        mask=mask.to(device, non_blocking=True),
        inverse=inverse.to(device, non_blocking=True),
    )


def _segment_plan(host: torch.Tensor, per_row: int, slots: int | None, device: torch.device) -> _Plan:
    """Every token sorted by slot (slot 0's against its zero weights) and where each slot's segment ends."""
    if slots is None:
        raise ValueError("the segment kernel needs the number of slots")
    token_slots = torch.repeat_interleave(host, per_row)
    order = torch.argsort(token_slots, stable=True)
    ends = torch.cumsum(torch.bincount(token_slots, minlength=slots), 0).to(torch.int32)
    return _Plan(
        order.to(device, non_blocking=True),
        token_slots[order].to(device, non_blocking=True),
        offsets=ends.to(device, non_blocking=True),
    )


class BatchedLoraLinear(torch.nn.Module):
    """A frozen Linear plus per-token LoRA deltas from stacked adapter slots, grouped by adapter."""

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
        plan = self.selection.plan(x, self.base.in_features)
        if plan is None:
            return out
        if not out.is_contiguous():
            out = out.contiguous()
        flat = x.reshape(-1, self.base.in_features)
        flat_out = out.view(-1, self.base.out_features)
        if plan.offsets is not None:
            delta = self._segment(flat, plan)
            flat_out.index_add_(0, plan.index, delta)
        else:
            assert plan.inverse is not None
            delta = self._padded(flat, plan)
            delta = torch.cat([delta, delta.new_zeros(1, delta.shape[1])])
            flat_out.add_(delta.index_select(0, plan.inverse))
        return out

    def _padded(self, flat: torch.Tensor, plan: _Plan) -> torch.Tensor:
        assert plan.mask is not None
        groups, width = plan.index.shape
        xs = flat.index_select(0, plan.index.view(-1)).view(groups, width, -1)  # [K, C, in]
        a = self.lora_a.index_select(0, plan.slots)  # [K, r, in]: each adapter read once
        b = self.lora_b.index_select(0, plan.slots)  # [K, out, r]
        hidden = torch.bmm(xs, a.transpose(1, 2))  # [K, C, r]
        hidden = hidden * (plan.mask * self.scaling.index_select(0, plan.slots).unsqueeze(1)).unsqueeze(2)
        return torch.bmm(hidden, b.transpose(1, 2)).view(groups * width, -1)  # padding rows are exact zeros

    def _segment(self, flat: torch.Tensor, plan: _Plan) -> torch.Tensor:
        grouped_mm = torch.nn.functional.grouped_mm
        xs = flat.index_select(0, plan.index)  # [T, in], sorted by slot
        hidden = grouped_mm(xs, self.lora_a.transpose(1, 2), offs=plan.offsets)  # [T, r]
        hidden = hidden * self.scaling.index_select(0, plan.slots).unsqueeze(1)
        return grouped_mm(hidden, self.lora_b.transpose(1, 2), offs=plan.offsets)  # [T, out]


@dataclass(frozen=True)
class AdapterWeights:
    """A validated adapter, read from disk, ready to be copied into a slot."""

    rank: int
    scaling: float
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module name → (A [r, in], B [out, r])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.tensors.values())


def inject(
    model: Any,
    slots: int,
    max_rank: int,
    targets: Sequence[str] = DEFAULT_TARGETS,
    kernel: str = "padded",
) -> dict[str, Any]:
    """Wraps the model's target Linears in BatchedLoraLinear; returns {module name: layer} and the selection.

    `kernel`: `padded` (batched matmuls over the adapters of a step; any device and dtype) or `segment`
    (grouped GEMMs over the slot stack, `torch.nn.functional.grouped_mm`; on a GPU its kernels need
    bf16 and widths and `max_rank` in multiples of 16 bytes).
    """
    selection = SlotSelection(slots, kernel)
    layers: dict[str, BatchedLoraLinear] = {}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and isinstance(child, torch.nn.Linear):
                wrapped = BatchedLoraLinear(child, slots, max_rank, selection)
                setattr(module, child_name, wrapped)
                layers[f"{name}.{child_name}" if name else child_name] = wrapped
    if not layers:
        raise ValueError(f"the model has no Linear layers named {', '.join(targets)}")
    if kernel == "segment":
        for name, layer in layers.items():
            if layer.lora_a.is_cuda and any(
                (n * layer.lora_a.element_size()) % 16
                for n in (max_rank, layer.base.in_features, layer.base.out_features)
            ):
                raise ValueError(
                    f"the segment LoRA kernel needs rows of 16-byte multiples on a GPU; {name} "
                    f"({layer.base.in_features}→{layer.base.out_features}, rank {max_rank}) has not: use `padded`"
                )
    return {"layers": layers, "selection": selection}


# -- what the slots cost ----------------------------------------------------------------------


def _target_linears(model: Any, targets: Sequence[str]) -> list[tuple[str, torch.nn.Linear]]:
    """(name, Linear) of every Linear the slots adapt (already wrapped ones too)."""
    found = []
    for _name, module in model.named_modules():
        for child_name, child in module.named_children():
            if child_name not in targets:
                continue
            base = child.base if isinstance(child, BatchedLoraLinear) else child
            if isinstance(base, torch.nn.Linear):
                found.append((child_name, base))
    return found


def slot_memory_bytes(model: Any, slots: int, max_rank: int, targets: Sequence[str] = DEFAULT_TARGETS) -> int:
    """Bytes the adapter slots take on the model's device: `slots` times (A + B at `max_rank` + a scale) per target."""
    total = 0
    for _name, linear in _target_linears(model, targets):
        size = linear.weight.element_size()
        total += slots * (max_rank * (linear.in_features + linear.out_features) + 1) * size
    return total


def _gib(value: float) -> str:
    return f"{value / 2**30:.2f} GiB"


def check_slot_memory(
    model: Any,
    slots: int,
    max_rank: int,
    targets: Sequence[str] = DEFAULT_TARGETS,
    *,
    free_bytes: int | None = None,
    reserve_bytes: int = 0,
) -> int:
    """What the adapter slots will take; ValueError naming the settings to lower if that does not fit.

    Call it after the weights are on the device and before `inject`. `free_bytes`: the memory free now
    (default: measured with `torch.cuda.mem_get_info` when the model is on a GPU; on CPU nothing is
    checked); `reserve_bytes`: what must stay free beside the slots (KV cache, activations). `slots`
    counts slot 0 (the engine's `max_adapters + 1`).
    """
    linears = _target_linears(model, targets)
    if not linears:
        raise ValueError(f"the model has no Linear layers named {', '.join(targets)} (inference.lora_targets)")
    need = slot_memory_bytes(model, slots, max_rank, targets)
    if free_bytes is None:
        device = linears[0][1].weight.device
        if device.type != "cuda":
            return need
        free_bytes, _total = torch.cuda.mem_get_info(device)
    available = free_bytes - reserve_bytes
    if need <= available:
        return need
    per_slot = need // slots
    per_rank = sum((linear.in_features + linear.out_features) * linear.weight.element_size() for _, linear in linears)
    adapters_fit = max(available // per_slot - 1, 0) if available > 0 else 0
    rank_fit = max(available // (slots * per_rank), 0) if available > 0 else 0
    names = sorted({name for name, _ in linears})
    raise ValueError(
        f"the adapter slots need {_gib(need)} of GPU memory ({slots - 1} adapters + the base slot at rank "
        f"{max_rank} over {len(linears)} Linear layers: {', '.join(names)}; {_gib(per_slot)} per adapter) but "
        f"{_gib(free_bytes)} is free after the model's weights"
        + (f", {_gib(reserve_bytes)} of it kept for the KV cache and activations" if reserve_bytes else "")
        + f". Lower inference.max_adapters (at rank {max_rank} {adapters_fit} fit), inference.max_rank "
        f"(with {slots - 1} adapters rank {rank_fit} fits) or inference.lora_targets, or give the replica a "
        "larger GPU"
    )


# -- reading adapters -------------------------------------------------------------------------


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
        raise FailedPrecondition(
            f"adapter rank {rank} is not served here (1..{max_rank}: raise inference.max_rank to serve it)"
        )
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
            adapted = sorted({name.rsplit(".", 1)[-1] for name in layers})
            raise FailedPrecondition(
                f"adapter targets {module!r}, which this replica does not adapt (inference.lora_targets is "
                f"{', '.join(adapted)}; add {module.rsplit('.', 1)[-1]!r} there to serve this adapter)"
            )
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


def _slot_ready(weights: AdapterWeights, dtype: torch.dtype, pin: bool) -> AdapterWeights:
    """The adapter in the slots' dtype, in one contiguous (pinned, when `pin`) host buffer."""
    total = sum(a.numel() + b.numel() for a, b in weights.tensors.values())
    flat = torch.empty(total, dtype=dtype, pin_memory=pin)
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    at = 0
    for name, (a, b) in weights.tensors.items():
        parts = []
        for tensor in (a, b):
            view = flat[at : at + tensor.numel()].view(tensor.shape)
            view.copy_(tensor)
            parts.append(view)
            at += tensor.numel()
        tensors[name] = (parts[0], parts[1])
    return AdapterWeights(weights.rank, weights.scaling, tensors)


class HostAdapterCache:
    """Decoded, validated adapters in host memory, least recently used dropped past `max_bytes`.

    Below the GPU slots: an adapter whose slot was taken by another is copied back from here, not read
    from its files again. Keys are immutable version keys (`tenant/name:version`), so an entry never
    goes stale; `discard` drops a deleted version. Tensors are kept in the slots' dtype, pinned when the
    slots are on a GPU (the copy into a slot is then asynchronous). Thread-safe; concurrent reads of
    one key read its files once. One cache per engine (entries are checked against its layers).
    """

    def __init__(self, max_bytes: int, *, pin: bool | None = None) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self.pin = pin
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, AdapterWeights] = OrderedDict()
        self._bytes = 0
        self._loading: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def keys(self) -> list[str]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def read(
        self,
        key: str,
        directory: Path,
        layers: dict[str, BatchedLoraLinear],
        max_rank: int,
        verify: Callable[[], None] | None = None,
    ) -> AdapterWeights:
        """`key`'s adapter: from memory, else read and checked from `directory` (then kept, space permitting).

        `verify` runs before the files are read (on a miss only): e.g. their hashes against the registry's.
        """
        while True:
            with self._lock:
                cached = self._entries.get(key)
                if cached is not None:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    HOST_CACHE_HITS.inc()
                    return cached
                loading = self._loading.get(key)
                if loading is None:
                    self._loading[key] = threading.Event()
                    break
            loading.wait()  # another thread reads this key; then it is cached (or that read failed: try ours)
        try:
            with self._lock:
                self.misses += 1
            HOST_CACHE_MISSES.inc()
            if verify is not None:
                verify()
            weights = read_adapter(directory, layers, max_rank)
            sample = next(iter(layers.values())).lora_a
            pin = self.pin if self.pin is not None else sample.is_cuda and torch.cuda.is_available()
            weights = _slot_ready(weights, sample.dtype, pin)
            self._put(key, weights)
            return weights
        finally:
            with self._lock:
                self._loading.pop(key).set()

    def _put(self, key: str, weights: AdapterWeights) -> None:
        size = weights.nbytes
        if size > self.max_bytes:
            return  # larger than the whole cache: used once, never kept
        with self._lock:
            while self._entries and self._bytes + size > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.nbytes
                HOST_CACHE_BYTES.dec(dropped.nbytes)
                HOST_CACHE_EVICTIONS.inc()
            self._entries[key] = weights
            self._bytes += size
            HOST_CACHE_BYTES.inc(size)

    def discard(self, key: str) -> bool:
        """Drops `key` (e.g. its version was deleted); False if it was not cached."""
        with self._lock:
            dropped = self._entries.pop(key, None)
            if dropped is None:
                return False
            self._bytes -= dropped.nbytes
        HOST_CACHE_BYTES.dec(dropped.nbytes)
        return True

    def clear(self) -> None:
        with self._lock:
            held, self._bytes = self._bytes, 0
            self._entries.clear()
        HOST_CACHE_BYTES.dec(held)


# -- writing slots ----------------------------------------------------------------------------

_copy_streams: dict[torch.device, Any] = {}
_copy_streams_lock = threading.Lock()


def _copy_stream(device: torch.device) -> Any:
    with _copy_streams_lock:
        stream = _copy_streams.get(device)
        if stream is None:
            stream = _copy_streams[device] = torch.cuda.Stream(device)
        return stream


def write_slot(layers: dict[str, BatchedLoraLinear], slot: int, weights: AdapterWeights | None) -> None:
    """Puts an adapter in `slot` (None empties it); modules it does not target get zeros.

    On a GPU the copies run on a stream of their own, asynchronously from pinned host memory (the
    host cache's), after whatever the calling thread's stream had queued (a step still reading the
    slot) and without holding up later steps; this returns once the slot holds the adapter.
    """
    sample = next(iter(layers.values())).lora_a
    if not sample.is_cuda:
        _write_slot(layers, slot, weights, non_blocking=False)
        return
    stream = _copy_stream(sample.device)
    stream.wait_stream(torch.cuda.current_stream(sample.device))
    with torch.cuda.stream(stream):
        _write_slot(layers, slot, weights, non_blocking=True)
    stream.synchronize()  # this (worker) thread waits; the generation thread's stream never does


def _write_slot(
    layers: dict[str, BatchedLoraLinear], slot: int, weights: AdapterWeights | None, *, non_blocking: bool
) -> None:
    with torch.no_grad():
        for name, layer in layers.items():
            layer.lora_a[slot].zero_()
            layer.lora_b[slot].zero_()
            layer.scaling[slot] = 0.0
            if weights is None or name not in weights.tensors:
                continue
            a, b = weights.tensors[name]
            layer.lora_a[slot, : weights.rank].copy_(a, non_blocking=non_blocking and a.is_pinned())
            layer.lora_b[slot, :, : weights.rank].copy_(b, non_blocking=non_blocking and b.is_pinned())
            layer.scaling[slot] = weights.scaling

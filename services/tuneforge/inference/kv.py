"""The serving engine's KV cache: a preallocated pool of blocks, and attention that reads it.

The pool holds every layer's keys and values for `blocks * block_size` token positions, allocated
once at start-up (sized from measured free memory on a GPU), so serving never grows memory and never
meets an out-of-memory error half-way through a reply. A sequence owns a list of blocks (its block
table); position `p` of it lives at flat index `table[p // block_size] * block_size + p % block_size`.
The engine reserves a request's blocks for its prompt and every token it may generate when it
admits it, so a running request never waits for memory and nothing is ever preempted; a request
that does not fit waits in the queue until others finish.

Each step of the engine runs the model once over the new tokens of every running sequence, packed
into one row (`[1, T]`): one token for a sequence that decodes, a chunk of its prompt for one that
prefills. Position ids are the tokens' real positions, so rotary embeddings are right; attention is
the function below, registered with transformers as `tuneforge_paged`: it writes the step's keys
and values into the pool and lets each sequence's queries attend to that sequence's cached
positions only — decoding rows all at once, prefill chunks one sequence at a time. Outside an
engine step (another caller of the same model) it is plain SDPA with transformers' own mask.
"""

from __future__ import annotations

import hashlib
import threading
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

PAGED = "tuneforge_paged"

_active = threading.local()
_registered = False
_lock = threading.Lock()


class KVPool:
    """Keys and values of every layer for `blocks * block_size` positions, and which blocks are free."""

    def __init__(
        self,
        *,
        layers: int,
        kv_heads: int,
        head_dim: int,
        blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        if blocks < 1 or block_size < 1:
            raise ValueError("the KV pool needs at least one block of at least one position")
        self.block_size = block_size
        self.blocks = blocks
        shape = (layers, blocks * block_size, kv_heads, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self._free = list(range(blocks - 1, -1, -1))
        self._refs = [0] * blocks  # requests holding each block
        # prompt blocks whose keys and values may be reused by a request with the same prefix (prefix caching)
        self._by_digest: dict[bytes, int] = {}
        self._digest_of: dict[int, bytes] = {}
        self._evictable: OrderedDict[int, None] = OrderedDict()  # cached, held by no request; LRU first

    @staticmethod
    def bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        """Memory one cached position takes over all layers (keys and values)."""
        return 2 * layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    @property
    def capacity(self) -> int:
        """Positions the whole pool holds."""
        return self.blocks * self.block_size

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def free_blocks(self) -> int:
        """Blocks a new request can take: free ones and cached prompt blocks no request holds."""
        return len(self._free) + len(self._evictable)

    def allocate(self, tokens: int, prefix: Sequence[bytes] = ()) -> tuple[list[int], int] | None:
        """Blocks for `tokens` positions, reusing cached blocks of the same prompt prefix; None when they do not fit.

        `prefix`: the chained digests of the request's leading full prompt blocks that may be reused
        (`prefix_digests`). Returns (block table, how many leading blocks came from the cache: their
        positions are computed already). Nothing is taken when the request does not fit.
        """
        need = self.blocks_for(tokens)
        reused: list[int] = []
        for digest in prefix[:need]:
            block = self._by_digest.get(digest)
            if block is None:
                break
            reused.append(block)
        held = [b for b in reused if self._refs[b] > 0]
        # cached blocks without a holder are free capacity until reused here
        if need - len(reused) > len(self._free) + len(self._evictable) - (len(reused) - len(held)):
            return None
        for block in reused:
            self._evictable.pop(block, None)
            self._refs[block] += 1
        table = list(reused)
        while len(table) < need:
            if self._free:
                block = self._free.pop()
            else:  # the least recently used cached block no request holds
                block, _ = self._evictable.popitem(last=False)
                del self._by_digest[self._digest_of.pop(block)]
            self._refs[block] = 1
            table.append(block)
        return table, len(reused)

    def publish(self, block: int, digest: bytes) -> None:
        """Marks a block holding a whole prompt block's keys and values as reusable under `digest`."""
        if digest not in self._by_digest and block not in self._digest_of:
            self._by_digest[digest] = block
            self._digest_of[block] = digest

    def release(self, blocks: list[int]) -> None:
        """Gives a request's blocks back: cached prompt blocks stay reusable (LRU) until their space is needed."""
        for block in reversed(blocks):
            self._refs[block] -= 1
            if self._refs[block] > 0:
                continue
            if block in self._digest_of:
                self._evictable[block] = None
            else:
                self._free.append(block)


def prefix_digests(scope: str, tokens: Sequence[int], block_size: int) -> list[bytes]:
    """Chained digests of each whole block of `tokens`: block i's names its tokens and everything before.

    `scope` keeps apart what must never share keys and values: the tenant (no timing side channel
    across tenants) and the adapter (its LoRA changes the keys and values).
    """
    digests: list[bytes] = []
    previous = hashlib.blake2b(scope.encode(), digest_size=16).digest()
    for start in range(0, len(tokens) - block_size + 1, block_size):
        block = array("q", tokens[start : start + block_size]).tobytes()
        previous = hashlib.blake2b(previous + block, digest_size=16).digest()
        digests.append(previous)
    return digests


@dataclass
class PrefillSegment:
    """A chunk of one sequence's prompt in a step: its tokens, and the cached positions it attends to."""

    start: int  # first token of the chunk in the step's packed row
    length: int  # tokens in the chunk
    cached: torch.Tensor  # [positions after this chunk] flat pool indices of the sequence so far
    mask: torch.Tensor | None  # [length, positions] True where a query may attend; None: plain causal


@dataclass
class StepBatch:
    """What the attention of one engine step needs, built once per step and shared by every layer."""

    pool: KVPool
    write: torch.Tensor  # [T] flat pool index each new token's key and value go to
    decode_tokens: torch.Tensor | None = None  # [D] positions in the packed row of the decoding tokens
    decode_cached: torch.Tensor | None = None  # [D, L] flat pool indices of each decoding sequence (padded)
    decode_mask: torch.Tensor | None = None  # [D, 1, 1, L] True for a decoding sequence's real positions
    prefills: list[PrefillSegment] = field(default_factory=list)


def current() -> StepBatch | None:
    """The engine step running on this thread, if any."""
    return getattr(_active, "step", None)


class running:
    """`with running(step):` — the model's attention on this thread uses `step` until the block ends."""

    def __init__(self, step: StepBatch) -> None:
        self.step = step

    def __enter__(self) -> StepBatch:
        _active.step = self.step
        return self.step

    def __exit__(self, *exc: object) -> None:
        _active.step = None


def build_step(
    pool: KVPool,
    write: list[int],
    decodes: list[tuple[int, list[int], int]],
    prefills: list[tuple[int, int, list[int], int]],
    device: torch.device,
) -> StepBatch:
    """A step's attention plan, its index tensors computed on the device from the block tables.

    `write`: flat pool index of every token of the packed row. `decodes`: (token index in the row,
    block table, positions cached once this token is in) per decoding sequence; they lead the row. `prefills`: (first
    token index, chunk length, block table, positions cached once the chunk is in) per prefill chunk.
    """
    size = pool.block_size
    step = StepBatch(pool, torch.tensor(write, dtype=torch.long).to(device, non_blocking=True))
    if decodes:
        lengths = [length for _, _, length in decodes]
        longest = max(lengths)
        width = pool.blocks_for(longest)
        tables = torch.zeros((len(decodes), width), dtype=torch.long)
        for row, (_, table, length) in enumerate(decodes):
            used = pool.blocks_for(length)
            tables[row, :used] = torch.tensor(table[:used], dtype=torch.long)
        tables = tables.to(device, non_blocking=True)
        span = torch.arange(longest, device=device)
        step.decode_cached = tables[:, span // size] * size + span % size  # [D, L]
        lengths_t = torch.tensor(lengths, dtype=torch.long).to(device, non_blocking=True)
        step.decode_mask = (span.view(1, -1) < lengths_t.view(-1, 1)).view(len(decodes), 1, 1, longest)
        indices = [index for index, _, _ in decodes]
        if indices != list(range(len(indices))):
            raise ValueError("decoding tokens must lead the packed row, in order")
        step.decode_tokens = torch.tensor(indices, dtype=torch.long).to(device)
    for start, length, table, cached in prefills:
        span = torch.arange(cached)
        flat = torch.tensor(table[: pool.blocks_for(cached)], dtype=torch.long)[span // size] * size + span % size
        mask = None
        if length != cached:  # earlier chunks are cached: query i sits at position cached - length + i
            mask = span.view(1, -1) <= (torch.arange(length).view(-1, 1) + (cached - length))
            mask = mask.to(device)
        step.prefills.append(PrefillSegment(start, length, flat.to(device), mask))
    return step


def attend(
    step: StepBatch,
    layer: int,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scaling: float | None = None,
) -> torch.Tensor:
    """Stores the step's keys and values of `layer` and attends; [1, H, T, D] in, [1, T, H, D] out."""
    pool = step.pool
    keys, values = pool.keys[layer], pool.values[layer]
    keys.index_copy_(0, step.write, key[0].transpose(0, 1).to(keys.dtype))
    values.index_copy_(0, step.write, value[0].transpose(0, 1).to(values.dtype))
    heads, tokens, dim = query.shape[1], query.shape[2], query.shape[3]
    gqa = heads != keys.shape[1]
    q = query[0]  # [H, T, D]
    decoded = None
    if step.decode_tokens is not None:
        count, width = step.decode_cached.shape
        rows = q[:, :count].transpose(0, 1).unsqueeze(2)  # [D, H, 1, D]: decoding tokens lead the row
        flat = step.decode_cached.view(-1)
        k = keys.index_select(0, flat).view(count, width, *keys.shape[1:]).transpose(1, 2)  # [D, KV, L, D]
        v = values.index_select(0, flat).view(count, width, *values.shape[1:]).transpose(1, 2)
        o = torch.nn.functional.scaled_dot_product_attention(
            rows, k.to(rows.dtype), v.to(rows.dtype), attn_mask=step.decode_mask, scale=scaling, enable_gqa=gqa
        )
        decoded = o.squeeze(2)  # [D, H, D]
        if not step.prefills:  # a step of decoding only: nothing to place
            return decoded.unsqueeze(0)
    out = query.new_empty((tokens, heads, dim))
    if decoded is not None:
        out[: decoded.shape[0]] = decoded
    for segment in step.prefills:
        chunk = q[:, segment.start : segment.start + segment.length].unsqueeze(0)  # [1, H, n, D]
        k = keys.index_select(0, segment.cached).transpose(0, 1).unsqueeze(0).to(chunk.dtype)  # [1, KV, L, D]
        v = values.index_select(0, segment.cached).transpose(0, 1).unsqueeze(0).to(chunk.dtype)
        o = torch.nn.functional.scaled_dot_product_attention(
            chunk, k, v, attn_mask=segment.mask, is_causal=segment.mask is None, scale=scaling, enable_gqa=gqa
        )
        out[segment.start : segment.start + segment.length] = o[0].transpose(0, 1)
    return out.unsqueeze(0)


def paged_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: the engine step's paged attention, or SDPA outside a step."""
    step = current()
    if step is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    if kwargs.get("sliding_window"):
        raise RuntimeError("sliding-window attention layers are not served by the paged KV cache")
    return attend(step, module.layer_idx, query, key, value, scaling), None


def _paged_mask(*args: Any, **kwargs: Any) -> Any:
    """No mask inside a step (the step's plan says who attends to what); transformers' SDPA mask outside."""
    if current() is not None:
        return None
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    return ALL_MASK_ATTENTION_FUNCTIONS["sdpa"](*args, **kwargs)


def use_paged_attention(model: Any) -> None:
    """Registers `tuneforge_paged` with transformers (once) and makes `model` use it."""
    global _registered
    with _lock:
        if not _registered:
            from transformers import AttentionInterface
            from transformers.masking_utils import AttentionMaskInterface

            AttentionInterface.register(PAGED, paged_attention_forward)
            AttentionMaskInterface.register(PAGED, _paged_mask)
            _registered = True
    config = getattr(model, "config", None)
    if config is None:
        return
    sliding = "sliding_attention" in (getattr(config, "layer_types", None) or ())
    if sliding or (getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)):
        raise ValueError("models with sliding-window attention are not served by the paged KV cache")
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(PAGED)
    else:
        config._attn_implementation = PAGED


def model_kv_shape(model: Any) -> tuple[int, int, int]:
    """(layers, KV heads, head dim) of a transformers causal LM's attention."""
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, getattr(config, "num_key_value_heads", None) or heads, head_dim


def pool_tokens(
    *,
    requested: int | None,
    bytes_per_token: int,
    device: torch.device,
    memory_fraction: float,
    reserve_bytes: int,
    cpu_default: int,
) -> int:
    """How many positions the pool gets: `requested`, else measured from the GPU's free memory.

    On a GPU: `memory_fraction` of what is free now (after weights and adapter slots) less
    `reserve_bytes` for the step's activations and logits. On CPU: `cpu_default`.
    """
    if requested:
        return requested
    if device.type != "cuda":
        return cpu_default
    free, _total = torch.cuda.mem_get_info(device)
    budget = int(free * memory_fraction) - reserve_bytes
    tokens = budget // bytes_per_token
    if tokens < 1:
        raise ValueError(
            f"no GPU memory is left for the KV cache: {free / 2**30:.1f} GiB free after weights and adapter "
            f"slots, {reserve_bytes / 2**30:.1f} GiB reserved for activations; lower inference.max_adapters or "
            "inference.max_rank, or give the replica a larger GPU"
        )
    return int(tokens)

"""The serving engine: one base model, many adapters in slots, continuous batching over a paged KV cache.

A plain Python object — tests and benchmarks drive it directly; the gRPC/HTTP fronts and the Ray
Serve deployment wrap it. One generation thread owns the model and schedules at every step
(iteration-level, as vLLM and TGI do): requests are admitted into the running batch whenever it has
room and the KV cache (`kv.py`) has blocks for their prompt and every token they may generate, so a
request never waits for a batch to drain and an admitted one never runs out of memory; each step
runs the model once over one new token of every decoding request and chunks of prompts still being
prefilled, under a token budget (`max_step_tokens`), so a long prompt delays the others' decoding by
one chunk at most. Finished and cancelled requests leave at once and give their blocks back. Each
row goes through its own adapter slot (see `lora.py`) with its own sampling settings. Output reaches
callers through callbacks, which the async fronts bridge to their event loop.

Adapters live in a bounded LRU of slots keyed by an immutable version key (`tenant/name:version`):
loading one copies its weights into a free or least recently used slot; a slot used by a request
in flight is never evicted, so an in-flight request finishes on the version it started with while
new requests already use a newer one. The lock over the slot table is held only for bookkeeping,
never across a host→device copy, so the event loop may ask what is loaded at any time; loads
themselves run one at a time under a lock of their own, taken only on worker threads.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from prometheus_client import Counter, Gauge, Histogram

from tuneforge.common.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from tuneforge.common.logging import get_logger
from tuneforge.inference import kv
from tuneforge.inference.lora import (
    DEFAULT_TARGETS,
    HostAdapterCache,
    check_slot_memory,
    inject,
    read_adapter,
    write_slot,
)

log = get_logger(__name__)

TTFT = Histogram(
    "tuneforge_inference_time_to_first_token_seconds",
    "Time from a request's arrival to its first generated token.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
OUTPUT_TOKENS = Counter("tuneforge_inference_output_tokens_total", "Tokens generated.")
QUEUE_DEPTH = Gauge("tuneforge_inference_queue_depth", "Requests waiting to be admitted into the running batch.")
BATCH_ROWS = Histogram(
    "tuneforge_inference_batch_rows",
    "Requests in the running batch at each step.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
KV_BLOCKS_USED = Gauge("tuneforge_inference_kv_blocks_used", "KV cache blocks held by admitted requests.")
KV_BLOCKS_TOTAL = Gauge("tuneforge_inference_kv_blocks_total", "KV cache blocks of the pool.")
PREFIX_CACHED_TOKENS = Counter(
    "tuneforge_inference_prefix_cached_tokens_total", "Prompt tokens whose keys and values were reused, not computed."
)
ADAPTER_LOADS = Counter("tuneforge_inference_adapter_loads_total", "Adapters loaded into a slot.")
ADAPTER_EVICTIONS = Counter("tuneforge_inference_adapter_evictions_total", "Adapters evicted from their slot.")
ADAPTER_HITS = Counter("tuneforge_inference_adapter_cache_hits_total", "Requests whose adapter was already loaded.")
ADAPTER_MISSES = Counter("tuneforge_inference_adapter_cache_misses_total", "Requests that had to load their adapter.")


@dataclass(frozen=True)
class Sampling:
    """Decoding settings of one request."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None


class TokenConstraint(Protocol):
    """What a request's output must follow (a JSON schema, a grammar): the engine asks it before each token.

    `mask` runs on the generation thread before the row's token is chosen, `accept` after (never for a stop
    token: a constraint allows the end-of-sequence tokens only where its grammar may end).
    """

    def mask(self, logits: torch.Tensor) -> None:
        """Sets the logits of tokens that may not come next to -inf, in place (`logits`: [vocab] of the model)."""

    def accept(self, token: int) -> None:
        """Moves past the chosen token."""

    def done(self) -> bool:
        """True once the output is complete and nothing may follow it."""


@dataclass
class Event:
    """What a request's callback receives: text deltas, then one final event with `finish_reason`."""

    delta: str = ""
    finish_reason: str = ""  # "stop" | "length" | "stop_sequence" | "cancelled" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""


class Detokenizer:
    """A reply's text, token by token, decoding a window of a few tokens per step instead of the whole reply.

    Re-decoding every output id at every step costs O(n) per token, O(n^2) per reply (0.6 s of CPU for
    1,024 tokens). As in TGI and vLLM, each step decodes the ids from `prefix` on and keeps what goes
    past the text of `prefix:read` (decoding with that context keeps a tokenizer's leading-space and
    cleanup rules right); the window moves on once it ends in a whole character. The text it gives is
    always that of the whole reply without a character still incomplete at its end (U+FFFD never
    reaches a caller mid-reply), and each text extends the one before.
    """

    __slots__ = ("prefix", "read", "text")

    def __init__(self) -> None:
        self.prefix = 0  # where the decoded window starts
        self.read = 0  # the text of the ids before this one is in `text`
        self.text = ""

    def step(self, tokenizer: Any, ids: list[int]) -> str:
        """The text of `ids` (the reply so far, which only ever grows), up to its last whole character."""
        if self.read >= len(ids):
            return self.text
        before = tokenizer.decode(ids[self.prefix : self.read], skip_special_tokens=True)
        window = tokenizer.decode(ids[self.prefix :], skip_special_tokens=True)
        added = window[len(before) :] if len(window) > len(before) else ""
        if added and not window.endswith("\ufffd"):
            self.text += added
            self.prefix, self.read = self.read, len(ids)
            return self.text
        return self.text + added.rstrip("\ufffd")  # a character still incomplete waits for its next bytes


@dataclass
class Request:
    """One generation: prompt token ids, the adapter slot key (None = base model), sampling, callback."""

    prompt_ids: list[int]
    adapter_key: str | None
    sampling: Sampling
    emit: Callable[[Event], None]
    arrived: float = field(default_factory=time.monotonic)
    cancelled: threading.Event = field(default_factory=threading.Event)
    # filled by the engine
    slot: int = 0
    output_ids: list[int] = field(default_factory=list)
    sent: int = 0
    finished: bool = False
    #: The reply's text, decoded incrementally.
    detokenizer: Detokenizer = field(default_factory=Detokenizer)
    #: Structured output (`response_format`): the tokens the reply may take next; None = any.
    constraint: TokenConstraint | None = None
    #: Who may reuse this prompt's cached keys and values (the tenant; with the adapter it makes the
    #: prefix cache's scope); None: this request neither reuses nor leaves any.
    prefix_scope: str | None = None


class _Row:
    """A request's decoding state inside a batch."""

    def __init__(self, request: Request, device: torch.device) -> None:
        self.request = request
        self.generator: torch.Generator | None = None
        if request.sampling.temperature > 0:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(
                request.sampling.seed if request.sampling.seed is not None else torch.seed() % 2**63
            )
        self.first_token_at: float | None = None
        #: Why this row failed (its sampling or text raised); it ends with an error, the batch goes on.
        self.error: str | None = None
        #: The row's KV cache blocks (reserved for its prompt and every token it may generate).
        self.blocks: list[int] = []
        #: Positions whose keys and values are in the cache; below the prompt's length it still prefills.
        self.computed = 0
        #: Tokens of the row in the step being run.
        self.scheduled = 0
        #: Chained digests of the prompt's whole blocks (prefix caching), and how many of them are published.
        self.digests: list[bytes] = []
        self.published = 0


class Engine:
    """Base model + adapter slots + the generation thread."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_adapters: int = 8,
        max_rank: int = 64,
        max_batch_size: int = 16,
        batch_wait_s: float = 0.005,
        targets: tuple[str, ...] = DEFAULT_TARGETS,
        max_step_tokens: int = 512,
        kv_cache_tokens: int | None = None,
        kv_memory_fraction: float = 0.9,
        kv_block_size: int = 16,
        host_cache_bytes: int = 0,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        #: Token ids a prompt may hold (the embedding's rows; the fake models of tests: any id).
        self.vocab_size: int = getattr(embeddings, "num_embeddings", None) or 2**62
        parameter = next(model.parameters())
        self.device = parameter.device
        self.max_rank = max_rank
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.max_step_tokens = max_step_tokens
        config = getattr(model, "config", None)
        vocab = getattr(config, "vocab_size", 0) or 0
        width = (getattr(config, "hidden_size", 0) or 0) * 6 + (getattr(config, "intermediate_size", 0) or 0) * 3
        # a step's own memory: 1 GiB of workspace, its activations (`max_step_tokens` through the widest layers),
        # its logits and sampling's float64 copies
        reserve = 0
        if self.device.type == "cuda":
            reserve = 2**30 + max_step_tokens * width * parameter.element_size() + max_batch_size * vocab * 16
        check_slot_memory(model, max_adapters + 1, max_rank, targets, reserve_bytes=reserve)
        injected = inject(model, max_adapters + 1, max_rank, targets)  # slot 0: no adapter
        self.layers = injected["layers"]
        self.selection = injected["selection"]
        #: Decoded adapters in host memory below the slots: a re-load is a copy, not a file read.
        self.host_cache = HostAdapterCache(host_cache_bytes) if host_cache_bytes else None
        kv.use_paged_attention(model)
        layers, kv_heads, head_dim = kv.model_kv_shape(model)
        dtype = parameter.dtype
        heads = getattr(config, "num_attention_heads", kv_heads) or kv_heads
        # decoding gathers one layer's keys and values of its rows at a time (at most the pool's share of one
        # layer), and SDPA may widen them to every query head: that much more per cached position, transiently
        transient = (1 + heads / kv_heads) / layers
        tokens = kv.pool_tokens(
            requested=kv_cache_tokens,
            bytes_per_token=int(kv.KVPool.bytes_per_token(layers, kv_heads, head_dim, dtype) * (1 + transient)),
            device=self.device,
            memory_fraction=kv_memory_fraction,
            reserve_bytes=reserve,
            cpu_default=8192,
        )
        self.pool = kv.KVPool(
            layers=layers,
            kv_heads=kv_heads,
            head_dim=head_dim,
            blocks=max(1, tokens // kv_block_size),
            block_size=kv_block_size,
            dtype=dtype,
            device=self.device,
        )
        KV_BLOCKS_TOTAL.set(self.pool.blocks)
        log.info("kv_cache", positions=self.pool.capacity, blocks=self.pool.blocks, block_size=kv_block_size)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.stop_ids = {
            i
            for i in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"))
            if isinstance(i, int) and i != tokenizer.unk_token_id
        }
        # adapter slots: key -> slot, most recently used last; pins count requests in flight
        self._slots: OrderedDict[str, int] = OrderedDict()
        self._free = list(range(max_adapters, 0, -1))
        self._pins: dict[str, int] = {}
        self._lock = threading.Lock()  # the slot table; brief (the event loop takes it)
        self._load_lock = threading.Lock()  # one load at a time, across its copy; worker threads only
        self._queue: queue.Queue[Request] = queue.Queue()
        # the generation thread's own: requests not yet admitted, and the rows of the running batch
        self._waiting: deque[Request] = deque()
        self._running: list[_Row] = []
        self._closing = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tuneforge-engine", daemon=True)
        self._thread.start()

    # -- adapters ------------------------------------------------------------------------------

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._slots)

    def has_adapter(self, key: str) -> bool:
        with self._lock:
            return key in self._slots

    def decoded(self, key: str) -> bool:
        """Whether `key` is resident or in the host cache (its files were read and checked when it got there)."""
        return self.has_adapter(key) or (self.host_cache is not None and key in self.host_cache)

    def acquire(self, key: str, directory: Path | None = None, verify: Callable[[], None] | None = None) -> int:
        """Makes `key` resident and pins it for one request; returns its slot (blocking: run it off the loop).

        The adapter is read and validated before any slot changes: FAILED_PRECONDITION if it does not
        fit; RESOURCE_EXHAUSTED if every slot is pinned by requests in flight. Pair with `release`.
        """
        slot = self.pin_if_loaded(key)
        if slot is not None:
            return slot
        if directory is None:
            raise FailedPrecondition(f"adapter {key} is not loaded on this replica")
        ADAPTER_MISSES.inc()
        # `verify` (the files' hashes) runs whenever the files are read: not for a copy from host memory
        if self.host_cache is not None:
            weights = self.host_cache.read(key, directory, self.layers, self.max_rank, verify)
        else:
            if verify is not None:
                verify()
            weights = read_adapter(directory, self.layers, self.max_rank)
        with self._load_lock:
            slot = self.pin_if_loaded(key)
            if slot is not None:  # a concurrent call loaded it meanwhile
                return slot
            slot = self._take_slot()
            try:
                # the slot is in no table and referenced by no batch (free, or unpinned), so it can be
                # rewritten without the table's lock
                write_slot(self.layers, slot, weights)
            except BaseException:
                with self._lock:
                    self._free.append(slot)
                raise
            with self._lock:
                self._slots[key] = slot
                self._pins[key] = self._pins.get(key, 0) + 1
            ADAPTER_LOADS.inc()
            log.info("adapter_loaded", adapter=key, slot=slot, rank=weights.rank)
            return slot

    def pin_if_loaded(self, key: str) -> int | None:
        """Pins `key` and returns its slot if it is resident (never blocks on a load: safe on the loop)."""
        with self._lock:
            slot = self._slots.get(key)
            if slot is not None:
                self._slots.move_to_end(key)
                self._pins[key] = self._pins.get(key, 0) + 1
        if slot is not None:
            ADAPTER_HITS.inc()
        return slot

    def _take_slot(self) -> int:
        """A free slot, or the least recently used unpinned one (evicted); RESOURCE_EXHAUSTED if none."""
        with self._lock:
            if self._free:
                return self._free.pop()
            victim = next((k for k in self._slots if self._pins.get(k, 0) == 0), None)
            if victim is None:
                raise ResourceExhausted(
                    "every adapter slot of this replica is in use by requests in flight; retry shortly"
                )
            slot = self._slots.pop(victim)
        ADAPTER_EVICTIONS.inc()
        log.info("adapter_evicted", adapter=victim, slot=slot)
        return slot

    def release(self, key: str | None) -> None:
        """Unpins `key` after a request (its slot may be evicted again once no request holds it)."""
        if key is None:
            return
        with self._lock:
            left = self._pins.get(key, 0) - 1
            if left > 0:
                self._pins[key] = left
            else:
                self._pins.pop(key, None)

    def load_adapter(self, key: str, directory: Path) -> None:
        """Loads `key` without holding it (benchmarks and warm-up)."""
        self.acquire(key, directory)
        self.release(key)

    def evict(self, key: str) -> bool:
        """Unloads `key` (e.g. its version was deleted) unless a request in flight still uses it."""
        if self.host_cache is not None:
            self.host_cache.discard(key)
        with self._lock:
            if key not in self._slots or self._pins.get(key, 0):
                return False
            # no copy to zero it: a load rewrites every row of the slot before any request uses it
            self._free.append(self._slots.pop(key))
        ADAPTER_EVICTIONS.inc()
        return True

    # -- requests ------------------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        """Queues a request whose adapter slot the caller acquired; the engine releases it when it ends.

        RESOURCE_EXHAUSTED (the slot released) when its prompt and `max_tokens` together need more
        positions than the whole KV cache holds: it could never be admitted.
        """
        if self._stopping.is_set():
            self.release(request.adapter_key)
            raise FailedPrecondition("the engine is shutting down")
        try:
            self._check(request)
        except InvalidArgument:
            self.release(request.adapter_key)
            raise
        need = len(request.prompt_ids) + request.sampling.max_tokens
        if need > self.pool.capacity:
            self.release(request.adapter_key)
            raise ResourceExhausted.never_fits(
                "max_tokens",
                f"prompt ({len(request.prompt_ids)} tokens) and max_tokens ({request.sampling.max_tokens}) need "
                f"{need} positions of KV cache; this replica holds {self.pool.capacity} in all: shorten the "
                "prompt or lower max_tokens",
            )
        self._queue.put(request)
        QUEUE_DEPTH.set(self.queue_depth())

    def _check(self, request: Request) -> None:
        """INVALID_ARGUMENT naming the field a request breaks: the engine's own guard, whoever built the request
        (a Serve replica takes requests over HTTP); an id past the embedding would fail its whole step."""
        ids = request.prompt_ids
        if not ids:
            raise InvalidArgument.for_field("prompt", "must hold at least one token")
        if not all(isinstance(i, int) and 0 <= i < self.vocab_size for i in ids):
            raise InvalidArgument.for_field("prompt", f"token ids must be integers in 0..{self.vocab_size - 1}")
        sampling = request.sampling
        if not isinstance(sampling.max_tokens, int) or sampling.max_tokens < 1:
            raise InvalidArgument.for_field("sampling.max_tokens", "must be a positive integer")
        if not isinstance(sampling.temperature, int | float) or not 0 <= sampling.temperature < float("inf"):
            raise InvalidArgument.for_field("sampling.temperature", "must be a finite number >= 0")
        if not isinstance(sampling.top_p, int | float) or not 0 < sampling.top_p <= 1:
            raise InvalidArgument.for_field("sampling.top_p", "must be in (0, 1]")
        if sampling.seed is not None and (not isinstance(sampling.seed, int) or not 0 <= sampling.seed < 2**63):
            raise InvalidArgument.for_field("sampling.seed", "must be an integer in 0..2^63-1")
        if not all(isinstance(stop, str) and stop for stop in sampling.stop):
            raise InvalidArgument.for_field("sampling.stop", "must be non-empty strings")

    def generate(self, prompt_ids: list[int], adapter_key: str | None = None, sampling: Sampling | None = None):
        """Blocking convenience for tests and benchmarks: (text, final event)."""
        done = threading.Event()
        parts: list[str] = []
        final: list[Event] = []

        def emit(event: Event) -> None:
            parts.append(event.delta)
            if event.finish_reason:
                final.append(event)
                done.set()

        slot = self.acquire(adapter_key) if adapter_key is not None else 0
        self.submit(Request(list(prompt_ids), adapter_key, sampling or Sampling(), emit, slot=slot))
        done.wait()
        return "".join(parts), final[0]

    def queue_depth(self) -> int:
        """Requests waiting to be admitted (not yet decoding)."""
        return self._queue.qsize() + len(self._waiting)

    def running(self) -> int:
        """Requests admitted and decoding (or prefilling)."""
        return len(self._running)

    def stop(self, timeout: float = 30.0) -> None:
        """Finishes the requests already queued, then stops the generation thread."""
        self._stopping.set()
        self._queue.put(None)  # type: ignore[arg-type]  # wakes the thread
        self._thread.join(timeout)

    # -- the generation thread -----------------------------------------------------------------

    def _take_arrivals(self) -> None:
        """Moves what was submitted into the waiting line; when idle, blocks for the next request."""
        idle = not self._running and not self._waiting and not self._closing
        try:
            item = self._queue.get() if idle else self._queue.get_nowait()
        except queue.Empty:
            return
        deadline = time.monotonic() + (self.batch_wait_s if idle else 0.0)
        while True:
            if item is None:
                self._closing = True
            else:
                self._waiting.append(item)
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
        QUEUE_DEPTH.set(self.queue_depth())

    def _run(self) -> None:
        while True:
            self._take_arrivals()
            if self._closing and not self._running and not self._waiting:
                break
            try:
                self._drop_cancelled()
                self._admit()
                if self._running:
                    self._step()
            except Exception as exc:  # one failed pass ends the requests in it; the replica serves on
                log.error("step_failed", error=repr(exc), rows=len(self._running))
                for row in list(self._running):
                    self._end(row, Event(finish_reason="error", error=f"generation failed: {exc}"))
        # requests that slipped in after the last look (submit raced with stop) are not left hanging
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                return
            if request is not None:
                self._refuse(request, "the engine is shutting down")

    def _drop_cancelled(self) -> None:
        """Cancelled requests leave at once, waiting or running, and give back their KV blocks and slot."""
        if any(r.cancelled.is_set() for r in self._waiting):
            kept: deque[Request] = deque()
            for request in self._waiting:
                if request.cancelled.is_set():
                    self.release(request.adapter_key)
                    self._finish(request, "cancelled", "")
                else:
                    kept.append(request)
            self._waiting = kept
        for row in list(self._running):
            if row.request.cancelled.is_set() and not row.request.finished:
                self._finish(row.request, "cancelled", row.request.detokenizer.text)
                self._retire(row)

    def _admit(self) -> None:
        """Admits waiting requests in arrival order while the batch has room and the KV cache has blocks.

        A request gets blocks for its prompt and every token it may generate, so once admitted it
        never waits for memory; the first one that does not fit keeps its place at the head of the line.
        """
        while self._waiting and len(self._running) < self.max_batch_size:
            request = self._waiting[0]
            prompt = request.prompt_ids
            try:  # what can fail for this request alone, before it takes any block
                row = _Row(request, self.device)
                digests: list[bytes] = []
                if request.prefix_scope is not None:
                    scope = f"{request.prefix_scope}\x00{request.adapter_key or ''}"
                    digests = kv.prefix_digests(scope, prompt, self.pool.block_size)
            except Exception as exc:
                self._waiting.popleft()
                self._refuse(request, f"generation failed: {exc}")
                continue
            # the prompt's last token is always run: it gives the first output token
            reusable = digests[: (len(prompt) - 1) // self.pool.block_size]
            taken = self.pool.allocate(len(prompt) + request.sampling.max_tokens, reusable)
            if taken is None:
                break
            self._waiting.popleft()
            row.blocks, reused = taken
            row.digests, row.published = digests, reused
            row.computed = reused * self.pool.block_size
            PREFIX_CACHED_TOKENS.inc(row.computed)
            self._running.append(row)
        QUEUE_DEPTH.set(self.queue_depth())
        KV_BLOCKS_USED.set(self.pool.blocks - self.pool.free_blocks())

    def _plan(self) -> tuple[list[int], list[int], list[int], list[int], list[_Row], Any]:
        """The packed row of this step: one token per decoding row, then prompt chunks under the budget."""
        size = self.pool.block_size
        tokens: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        write: list[int] = []
        keep: list[int] = []
        chosen_for: list[_Row] = []
        decodes: list[tuple[int, list[int], int]] = []
        prefills: list[tuple[int, int, list[int], int]] = []
        for row in self._running:
            if row.computed < len(row.request.prompt_ids):
                continue
            position = row.computed
            keep.append(len(tokens))
            decodes.append((len(tokens), row.blocks, position + 1))
            tokens.append(row.request.output_ids[-1])
            positions.append(position)
            slots.append(row.request.slot)
            write.append(row.blocks[position // size] * size + position % size)
            row.scheduled = 1
            chosen_for.append(row)
        budget = max(self.max_step_tokens - len(tokens), size)
        # prompts with the least done first: one that just arrived goes in beside a long prompt still being
        # prefilled (whose next chunk takes what is left), so a short request is never stuck behind it
        prefilling = sorted(
            (r for r in self._running if r.computed < len(r.request.prompt_ids)), key=lambda r: r.computed
        )
        for row in prefilling:
            prompt = row.request.prompt_ids
            if budget <= 0:
                break
            start = row.computed
            n = min(len(prompt) - start, budget)
            budget -= n
            prefills.append((len(tokens), n, row.blocks, start + n))
            tokens.extend(prompt[start : start + n])
            positions.extend(range(start, start + n))
            slots.extend([row.request.slot] * n)
            write.extend(row.blocks[p // size] * size + p % size for p in range(start, start + n))
            row.scheduled = n
            if start + n == len(prompt):  # the prompt's last token gives the first output token
                keep.append(len(tokens) - 1)
                chosen_for.append(row)
        plan = kv.build_step(self.pool, write, decodes, prefills, self.device)
        return tokens, positions, slots, keep, chosen_for, plan

    def _step(self) -> None:
        """One forward pass over every running request's next tokens, then a token for each that needs one."""
        tokens, positions, slots, keep, chosen_for, plan = self._plan()
        BATCH_ROWS.observe(len(self._running))
        device = self.device
        ids = torch.tensor(tokens, dtype=torch.long).to(device, non_blocking=True).view(1, -1)
        position_ids = torch.tensor(positions, dtype=torch.long).to(device, non_blocking=True).view(1, -1)
        keep_t = torch.tensor(keep, dtype=torch.long).to(device, non_blocking=True)
        adapted = any(slots)
        with torch.inference_mode(), kv.running(plan):
            self.selection.set(slots if adapted else None)  # grouped on the host: no device→host copy
            try:
                logits = self.model(
                    input_ids=ids, position_ids=position_ids, use_cache=False, logits_to_keep=keep_t
                ).logits[0]
            finally:
                self.selection.rows = None
            for row in self._running:
                row.computed += row.scheduled
                row.scheduled = 0
                whole = min(row.computed // self.pool.block_size, len(row.digests))
                for index in range(row.published, whole):  # prompt blocks now complete: reusable
                    self.pool.publish(row.blocks[index], row.digests[index])
                row.published = max(row.published, whole)
            if not chosen_for:
                return
            chosen = self._choose(logits, chosen_for).tolist()  # one device→host copy per step
        for row, token in zip(chosen_for, chosen, strict=True):
            if not self._advance_or_fail(row, token):
                self._retire(row)

    def _retire(self, row: _Row) -> None:
        """A finished row leaves the batch: its KV blocks go back to the pool and its adapter is unpinned."""
        if row in self._running:
            self._running.remove(row)
            self.pool.release(row.blocks)
            row.blocks = []
            self.release(row.request.adapter_key)
            KV_BLOCKS_USED.set(self.pool.blocks - self.pool.free_blocks())

    def _end(self, row: _Row, event: Event) -> None:
        request = row.request
        if not request.finished:
            request.finished = True
            event.prompt_tokens = len(request.prompt_ids)
            event.completion_tokens = len(request.output_ids)
            with contextlib.suppress(Exception):  # a caller that is gone cannot be told
                request.emit(event)
        self._retire(row)

    def _choose(self, logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
        for i, row in enumerate(rows):
            if row.request.constraint is not None and row.error is None:
                try:
                    row.request.constraint.mask(logits[i])
                except Exception as exc:  # this row fails alone
                    row.error = f"structured output failed: {exc}"
        greedy = logits.argmax(dim=-1)
        sampled = [i for i, row in enumerate(rows) if row.generator is not None and row.error is None]
        if not sampled:
            return greedy
        chosen = greedy.clone()
        index = torch.tensor(sampled, dtype=torch.long).to(logits.device, non_blocking=True)
        try:
            chosen.index_copy_(0, index, self._sample_rows(logits.index_select(0, index), [rows[i] for i in sampled]))
        except Exception:  # the batch's sampling broke: each row on its own, so that only the culprit fails
            for i in sampled:
                try:
                    chosen[i] = self._sample_rows(logits[i : i + 1], [rows[i]])[0]
                except Exception as exc:
                    rows[i].error = f"sampling failed: {exc}"
        return chosen

    @staticmethod
    def _sample_rows(logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
        """A token for every row at once, on the logits' device: each row's temperature and top-p, its own seed.

        In float64 (a temperature of 1e-300 is 0 in float32), the largest logit subtracted before dividing: a
        tiny temperature then gives -inf for the rest (greedy in the limit) instead of inf - inf = NaN. The
        draw is the exponential race — argmax of p / E with E ~ Exp(1) from the row's generator is a sample of
        p — so one kernel picks for every row. A row whose probabilities are not finite (NaN logits) gets -1
        and fails alone, without a host sync here (multinomial would assert on CUDA).
        """
        device = logits.device
        wide = logits.double()
        temperature = torch.tensor([r.request.sampling.temperature for r in rows], dtype=torch.float64)
        probs = torch.softmax((wide - wide.max(dim=-1, keepdim=True).values) / temperature.to(device)[:, None], -1)
        top_p = [r.request.sampling.top_p for r in rows]
        if any(p < 1.0 for p in top_p):
            limit = torch.tensor(top_p, dtype=torch.float64).to(device)[:, None]
            ordered, order = probs.sort(dim=-1, descending=True)
            ordered = ordered.masked_fill(ordered.cumsum(-1) - ordered > limit, 0.0)
            probs = torch.zeros_like(probs).scatter_(1, order, ordered)
        width = probs.shape[1]
        noise = torch.stack(
            [torch.empty(width, dtype=torch.float64, device=device).exponential_(generator=r.generator) for r in rows]
        )
        picks = (probs / noise).argmax(dim=-1)
        return torch.where(torch.isfinite(probs).all(dim=-1), picks, torch.full_like(picks, -1))

    def _advance_or_fail(self, row: _Row, token: int) -> bool:
        """`_advance`, but a row whose sampling or text handling failed ends with an error on its own."""
        request = row.request
        if token < 0 and row.error is None:
            row.error = "sampling failed: the next token's probabilities are not finite"
        if row.error is None:
            try:
                return self._advance(row, token)
            except Exception as exc:
                row.error = f"generation failed: {exc}"
        log.error("row_failed", error=row.error, prompt_tokens=len(request.prompt_ids))
        if not request.finished:
            request.finished = True
            with contextlib.suppress(Exception):  # a caller that is gone cannot be told
                request.emit(Event(finish_reason="error", error=row.error, prompt_tokens=len(request.prompt_ids)))
        return False

    def _advance(self, row: _Row, token: int) -> bool:
        """Adds a token to a row and emits its text; False once the row is finished."""
        request = row.request
        if row.first_token_at is None:
            row.first_token_at = time.monotonic()
            TTFT.observe(row.first_token_at - request.arrived)
        if request.cancelled.is_set():
            self._finish(request, "cancelled", "")
            return False
        sampling = request.sampling
        if token in self.stop_ids:
            self._finish(request, "stop", self._text(request))
            return False
        request.output_ids.append(token)
        OUTPUT_TOKENS.inc()
        if request.constraint is not None:
            request.constraint.accept(token)
        text = self._text(request)
        for stop in sampling.stop:
            at = text.find(stop, max(0, request.sent - len(stop)))
            if at >= 0:
                self._finish(request, "stop_sequence", text[:at])
                return False
        if request.constraint is not None and request.constraint.done():
            self._finish(request, "stop", text)
            return False
        if len(request.output_ids) >= sampling.max_tokens:
            self._finish(request, "length", text)
            return False
        # hold back anything that could still become a stop sequence (an incomplete character never
        # reaches `text`: the detokenizer holds it back)
        safe = len(text)
        for stop in sampling.stop:
            for k in range(min(len(stop) - 1, safe), 0, -1):
                if text[:safe].endswith(stop[:k]):
                    safe -= k
                    break
        if safe > request.sent:
            request.emit(Event(delta=text[request.sent : safe]))
            request.sent = safe
        return True

    def _text(self, request: Request) -> str:
        return request.detokenizer.step(self.tokenizer, request.output_ids)

    def _finish(self, request: Request, reason: str, text: str) -> None:
        request.finished = True
        # a reply cut inside a multi-byte character (max_tokens, a stop) ends before it: `text` holds
        # complete characters only
        delta = text[request.sent :] if len(text) > request.sent else ""
        request.sent = max(request.sent, len(text))
        event = Event(
            delta=delta,
            finish_reason=reason,
            prompt_tokens=len(request.prompt_ids),
            completion_tokens=len(request.output_ids),
        )
        with contextlib.suppress(Exception):  # a caller that is gone cannot be told; the engine goes on
            request.emit(event)

    def _refuse(self, request: Request, error: str) -> None:
        """Ends a request that never ran (its slot released first), with an error."""
        request.finished = True
        self.release(request.adapter_key)
        with contextlib.suppress(Exception):
            request.emit(Event(finish_reason="error", error=error, prompt_tokens=len(request.prompt_ids)))

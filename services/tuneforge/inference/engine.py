"""The serving engine: one base model, many adapters in slots, dynamic batches decoded together.

A plain Python object — tests and benchmarks drive it directly; the gRPC/HTTP fronts and the Ray
Serve deployment wrap it. One generation thread owns the model: it takes the requests waiting in
the queue (up to `max_batch_size`, waiting at most `batch_wait_s` for more), prefills them
left-padded in one pass, and decodes them step by step with a KV cache, each row through its own
adapter slot (see `lora.py`) with its own sampling settings. Finished rows leave the batch (their
cache rows are dropped) so the rest decode faster. Output reaches callers through callbacks, which
the async fronts bridge to their event loop.

Adapters live in a bounded LRU of slots keyed by an immutable version key (`tenant/name:version`):
loading one copies its weights into a free or least recently used slot; a slot used by a request
in flight is never evicted, so an in-flight request finishes on the version it started with while
new requests already use a newer one. The lock over the slot table is held only for bookkeeping,
never across a host→device copy, so the event loop may ask what is loaded at any time; loads
themselves run one at a time under a lock of their own, taken only on worker threads.
"""

from __future__ import annotations

import contextlib
import inspect
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from prometheus_client import Counter, Gauge, Histogram

from tuneforge.common.errors import FailedPrecondition, ResourceExhausted
from tuneforge.common.logging import get_logger
from tuneforge.inference.lora import DEFAULT_TARGETS, inject, read_adapter, write_slot

log = get_logger(__name__)

TTFT = Histogram(
    "tuneforge_inference_time_to_first_token_seconds",
    "Time from a request's arrival to its first generated token.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
OUTPUT_TOKENS = Counter("tuneforge_inference_output_tokens_total", "Tokens generated.")
QUEUE_DEPTH = Gauge("tuneforge_inference_queue_depth", "Requests waiting for a batch.")
BATCH_ROWS = Histogram(
    "tuneforge_inference_batch_rows", "Requests per decoded batch.", buckets=(1, 2, 4, 8, 16, 32, 64, 128)
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
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.max_rank = max_rank
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        injected = inject(model, max_adapters + 1, max_rank, targets)  # slot 0: no adapter
        self.layers = injected["layers"]
        self.selection = injected["selection"]
        # transformers renamed `past_key_values` to `cache` (the old name goes in 5.40)
        self._cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
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

    def acquire(self, key: str, directory: Path | None = None) -> int:
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
        with self._lock:
            if key not in self._slots or self._pins.get(key, 0):
                return False
            # no copy to zero it: a load rewrites every row of the slot before any request uses it
            self._free.append(self._slots.pop(key))
        ADAPTER_EVICTIONS.inc()
        return True

    # -- requests ------------------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        """Queues a request whose adapter slot the caller acquired; the engine releases it when it ends."""
        if self._stopping.is_set():
            self.release(request.adapter_key)
            raise FailedPrecondition("the engine is shutting down")
        self._queue.put(request)
        QUEUE_DEPTH.set(self._queue.qsize())

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
        return self._queue.qsize()

    def stop(self, timeout: float = 30.0) -> None:
        """Finishes the requests already queued, then stops the generation thread."""
        self._stopping.set()
        self._queue.put(None)  # type: ignore[arg-type]  # wakes the thread
        self._thread.join(timeout)

    # -- the generation thread -----------------------------------------------------------------

    def _next_batch(self) -> list[Request] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=max(remaining, 0)) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # type: ignore[arg-type]
                break
            batch.append(item)
        QUEUE_DEPTH.set(self._queue.qsize())
        return batch

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._decode(batch)
            except Exception as exc:  # one bad batch must not take the replica down
                log.error("batch_failed", error=repr(exc), rows=len(batch))
                for request in batch:
                    if not request.finished:
                        request.finished = True
                        request.emit(Event(finish_reason="error", error=f"generation failed: {exc}"))
            finally:
                for request in batch:
                    self.release(request.adapter_key)

    def _decode(self, batch: list[Request]) -> None:
        from transformers import DynamicCache

        BATCH_ROWS.observe(len(batch))
        rows = [_Row(r, self.device) for r in batch]
        longest = max(len(r.prompt_ids) for r in batch)
        input_ids = torch.full((len(batch), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for i, request in enumerate(batch):
            n = len(request.prompt_ids)
            input_ids[i, longest - n :] = torch.tensor(request.prompt_ids, dtype=torch.long)
            mask[i, longest - n :] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        slots = torch.tensor([r.slot for r in batch], dtype=torch.long, device=self.device)
        adapted = any(r.slot > 0 for r in batch)
        cache = DynamicCache()
        active = list(range(len(batch)))
        with torch.inference_mode():
            step_ids, step_positions = input_ids, positions
            while active:
                self.selection.rows = slots if adapted else None
                try:
                    logits = self.model(
                        input_ids=step_ids,
                        attention_mask=mask,
                        position_ids=step_positions,
                        use_cache=True,
                        **{self._cache_kw: cache},
                        logits_to_keep=1,
                    ).logits[:, -1, :]
                finally:
                    self.selection.rows = None
                tokens = self._choose(logits, [rows[i] for i in active])
                keep: list[int] = []
                for position, (index, token) in enumerate(zip(active, tokens.tolist(), strict=True)):
                    if self._advance_or_fail(rows[index], token):  # one device→host copy per step, not per row
                        keep.append(position)
                if not keep:
                    break
                if len(keep) < len(active):
                    chosen = torch.tensor(keep, dtype=torch.long, device=self.device)
                    cache.batch_select_indices(chosen)
                    mask, slots, tokens = mask[chosen], slots[chosen], tokens[chosen]
                    step_positions = step_positions[chosen]
                    active = [active[p] for p in keep]
                    adapted = any(rows[i].request.slot > 0 for i in active)
                step_ids = tokens.view(-1, 1)
                mask = torch.cat([mask, torch.ones((mask.shape[0], 1), dtype=mask.dtype, device=self.device)], dim=1)
                step_positions = step_positions[:, -1:] + 1

    def _choose(self, logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
        for i, row in enumerate(rows):
            if row.request.constraint is not None and row.error is None:
                try:
                    row.request.constraint.mask(logits[i])
                except Exception as exc:  # this row fails alone
                    row.error = f"structured output failed: {exc}"
        greedy = logits.argmax(dim=-1)
        if all(r.generator is None for r in rows):
            return greedy
        chosen = greedy.clone()
        for i, row in enumerate(rows):
            if row.generator is None:
                continue
            try:
                chosen[i] = self._sample(logits[i], row)
            except Exception as exc:  # this row's request fails alone; the others in the batch decode on
                row.error = f"sampling failed: {exc}"
        return chosen

    @staticmethod
    def _sample(logits: torch.Tensor, row: _Row) -> torch.Tensor:
        sampling = row.request.sampling
        # in float64 (a temperature of 1e-300 is 0 in float32), the largest logit subtracted before dividing:
        # a tiny temperature then gives -inf for the rest (greedy in the limit) instead of inf - inf = NaN
        wide = logits.double()
        probs = torch.softmax((wide - wide.max()) / sampling.temperature, dim=-1)
        if sampling.top_p < 1.0:
            ordered, order = probs.sort(descending=True)
            cut = ordered.cumsum(0) - ordered > sampling.top_p
            ordered[cut] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, ordered)
        return torch.multinomial(probs, 1, generator=row.generator)[0]

    def _advance_or_fail(self, row: _Row, token: int) -> bool:
        """`_advance`, but a row whose sampling or text handling failed ends with an error on its own."""
        request = row.request
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
        request.emit(
            Event(
                delta=delta,
                finish_reason=reason,
                prompt_tokens=len(request.prompt_ids),
                completion_tokens=len(request.output_ids),
            )
        )

"""Engines for model versions (full fine-tunes, merged models), loaded on demand into a bounded set.

A model version is a whole model, so it is served by an engine of its own (its weights are the
engine's base; adapters trained on the original base do not apply to it). In one process the
engines live in a bounded LRU keyed by the version's immutable key (`tenant/name:version`): the
first request that names a version loads it after unloading the least recently used engine that has
no request in flight, and when every engine is busy the request is RESOURCE_EXHAUSTED (retry).
The table's lock is held for bookkeeping only; loading runs on a worker thread, one per key.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter, Gauge

from tuneforge.catalog.adapters import AdapterVersionInfo
from tuneforge.chat import ChatRenderer
from tuneforge.common.errors import ResourceExhausted
from tuneforge.common.logging import get_logger
from tuneforge.common.settings import InferenceSettings
from tuneforge.inference.base_model import load_model_version
from tuneforge.inference.engine import Engine
from tuneforge.models import ModelResolver

log = get_logger(__name__)

MODEL_LOADS = Counter("tuneforge_inference_model_loads_total", "Model versions loaded into an engine of their own.")
MODEL_EVICTIONS = Counter("tuneforge_inference_model_evictions_total", "Model version engines unloaded.")
MODEL_ENGINES = Gauge("tuneforge_inference_model_engines", "Model version engines loaded now.")


@dataclass
class ServedModel:
    """One model version in memory: its engine, the renderer of its own chat template, its template hash."""

    key: str  # tenant/name:version
    engine: Engine
    renderer: ChatRenderer
    template_hash: str


class ModelEngines:
    """A bounded LRU of model version engines; one with requests in flight is never unloaded."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._engines: OrderedDict[str, ServedModel] = OrderedDict()  # most recently used last
        self._pins: dict[str, int] = {}
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self._reserved = 0  # slots held by loads in flight

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._engines)

    def pin_if_loaded(self, key: str) -> ServedModel | None:
        """`key`'s engine pinned for one request if it is resident (never blocks on a load: safe on the loop)."""
        with self._lock:
            served = self._engines.get(key)
            if served is not None:
                self._engines.move_to_end(key)
                self._pins[key] = self._pins.get(key, 0) + 1
            return served

    def acquire(self, key: str, build: Callable[[], ServedModel]) -> ServedModel:
        """`key`'s engine, built by `build()` if it is not resident, pinned until `release(key)`.

        Blocking: call it off the loop. Room is made before the load (the least recently used idle
        engine is unloaded first, as the adapter cache does): a whole model loaded beside a full set
        would need one model's memory more than the bound allows, which a 24 GiB card does not have.
        Loads in flight hold their slot, so concurrent loads of different versions keep the bound too.
        RESOURCE_EXHAUSTED when every slot is held by an engine with requests in flight or by a load.
        """
        served = self.pin_if_loaded(key)
        if served is not None:
            return served
        with self._lock:
            lock = self._loading.setdefault(key, threading.Lock())
        with lock:  # one load per key, however many requests wait for it
            served = self.pin_if_loaded(key)
            if served is not None:
                return served
            for old in self._reserve(key):
                self._stop(old, "evicted")
            try:
                served = build()
            except BaseException:
                with self._lock:
                    self._reserved -= 1
                raise
            with self._lock:
                self._reserved -= 1
                self._engines[key] = served
                self._pins[key] = self._pins.get(key, 0) + 1
                self._loading.pop(key, None)  # resident now: later requests pin it without this lock
                MODEL_ENGINES.set(len(self._engines))
            MODEL_LOADS.inc()
            log.info("model_version_loaded", model=key)
            return served

    def _reserve(self, key: str) -> list[ServedModel]:
        """Takes a slot for `key`'s load, unloading idle engines (least recently used first) to free one."""
        with self._lock:
            victims = []
            while len(self._engines) + self._reserved >= self.capacity:
                victim = next((k for k in self._engines if not self._pins.get(k)), None)
                if victim is None:
                    self._engines.update((v.key, v) for v in victims)  # nothing freed: they stay loaded
                    raise ResourceExhausted(
                        f"every one of the {self.capacity} model version engines serves requests or loads now; "
                        f"{key} cannot be loaded until one finishes: retry (or raise inference.max_model_engines)"
                    )
                victims.append(self._engines.pop(victim))
            self._reserved += 1
            MODEL_ENGINES.set(len(self._engines))
            return victims

    def release(self, key: str) -> None:
        """Ends one request's pin of `key` (from `acquire` or `pin_if_loaded`)."""
        with self._lock:
            left = self._pins.get(key, 1) - 1
            if left > 0:
                self._pins[key] = left
            else:
                self._pins.pop(key, None)

    def evict(self, key: str) -> bool:
        """Unloads `key` unless a request uses it (blocking: stops the engine's thread)."""
        with self._lock:
            if self._pins.get(key) or key not in self._engines:
                return False
            served = self._engines.pop(key)
            MODEL_ENGINES.set(len(self._engines))
        self._stop(served, "deleted")
        return True

    def stop(self) -> None:
        """Stops every engine (server shutdown)."""
        with self._lock:
            engines, self._engines = list(self._engines.values()), OrderedDict()
            MODEL_ENGINES.set(0)
        for served in engines:
            served.engine.stop()

    @staticmethod
    def _stop(served: ServedModel, reason: str) -> None:
        served.engine.stop()
        MODEL_EVICTIONS.inc()
        log.info("model_version_unloaded", model=served.key, reason=reason)


def engine_loader(
    resolver: ModelResolver, settings: InferenceSettings
) -> Callable[[str, AdapterVersionInfo, Path], ServedModel]:
    """What builds a model version's engine (blocking) with the replica's dtype, device and batch settings."""

    def load(key: str, version: AdapterVersionInfo, directory: Path) -> ServedModel:
        loaded = load_model_version(resolver, version.ref, directory, settings.dtype, settings.device)
        engine = Engine(
            loaded.model,
            loaded.tokenizer,
            # no adapter is trained on a model version (those of its base are refused before they reach an
            # engine): one rank-1 slot keeps the engine's shape at no memory cost
            max_adapters=1,
            max_rank=1,
            targets=tuple(settings.lora_targets),
            max_batch_size=settings.max_batch_size,
            batch_wait_s=settings.batch_wait_ms / 1000,
            max_step_tokens=settings.max_step_tokens,
            kv_cache_tokens=settings.kv_cache_tokens or None,
            kv_memory_fraction=settings.kv_memory_fraction,
        )
        return ServedModel(key, engine, ChatRenderer(loaded.tokenizer), loaded.template_hash)

    return load

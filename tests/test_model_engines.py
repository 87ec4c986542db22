"""The bounded set of model version engines: room is made before a load, and the bound holds under loads in flight."""

from __future__ import annotations

import threading

import pytest

from tuneforge.common.errors import ResourceExhausted
from tuneforge.inference.model_engines import ModelEngines, ServedModel


class FakeEngine:
    def __init__(self, key: str, events: list[str]) -> None:
        self.key, self.events = key, events

    def stop(self) -> None:
        self.events.append(f"stop {self.key}")


def builder(key: str, events: list[str]):
    def build() -> ServedModel:
        events.append(f"build {key}")
        return ServedModel(key, FakeEngine(key, events), renderer=None, template_hash="")  # type: ignore[arg-type]

    return build


def test_the_least_recently_used_idle_engine_is_unloaded_before_the_next_load() -> None:
    events: list[str] = []
    engines = ModelEngines(capacity=2)
    for key in ("a", "b"):
        engines.acquire(key, builder(key, events))
        engines.release(key)
    engines.pin_if_loaded("a")  # a is used again: b is now the least recently used
    engines.release("a")
    engines.acquire("c", builder("c", events))
    # b's memory is given back before c's weights are read: never three models at once
    assert events == ["build a", "build b", "stop b", "build c"]
    assert engines.loaded() == ["a", "c"]


def test_when_every_engine_serves_a_request_a_new_version_is_refused_and_nothing_is_unloaded() -> None:
    events: list[str] = []
    engines = ModelEngines(capacity=1)
    engines.acquire("a", builder("a", events))  # pinned: a request is in flight
    with pytest.raises(ResourceExhausted, match="retry"):
        engines.acquire("b", builder("b", events))
    assert events == ["build a"] and engines.loaded() == ["a"]
    engines.release("a")
    engines.acquire("b", builder("b", events))
    assert events == ["build a", "stop a", "build b"]


def test_a_load_in_flight_holds_its_slot_and_a_failed_load_gives_it_back() -> None:
    events: list[str] = []
    engines = ModelEngines(capacity=1)
    started, finish = threading.Event(), threading.Event()

    def slow_build() -> ServedModel:
        started.set()
        assert finish.wait(30)
        return builder("a", events)()

    loading = threading.Thread(target=lambda: engines.acquire("a", slow_build))
    loading.start()
    assert started.wait(30)
    with pytest.raises(ResourceExhausted):  # the one slot belongs to a's load: b would be a second model
        engines.acquire("b", builder("b", events))
    finish.set()
    loading.join(30)
    assert engines.loaded() == ["a"]
    engines.release("a")

    def broken() -> ServedModel:
        raise OSError("truncated safetensors")

    with pytest.raises(OSError):
        engines.acquire("c", broken)  # a was unloaded to make room; the failed load frees the slot again
    engines.acquire("d", builder("d", events))
    assert engines.loaded() == ["d"] and events == ["build a", "stop a", "build d"]

"""Nothing blocks the inference service's event loop, and health follows the metadata database.

- prompts are rendered and tokenized on a worker thread, after a byte-length check that refuses a
  prompt no token limit could hold before any tokenization (gRPC and the OpenAI HTTP API);
- adapter loads run on a bounded pool of their own: loads stuck in a copy leave the threads that
  metadata calls (ListModels) need, and the engine's slot table lock is free during a copy;
- a server whose metadata database stops answering turns NOT_SERVING and SERVING again when it
  comes back.

The frontend is the real one over tiny-qwen2's tokenizer; the engine is a stand-in where a test
holds requests or loads, and tiny-qwen2 itself where the lock of the real engine is the question.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer
from conftest import ACME_KEY, MODEL_CACHE, make_settings
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tuneforge.common.auth import Principal, bind_principal, reset_principal
from tuneforge.common.errors import InvalidArgument
from tuneforge.inference import engine as engine_module
from tuneforge.inference.engine import Engine, Event, Request
from tuneforge.inference.frontend import InferenceFrontend, Limits, Target
from tuneforge.inference.http import OpenAIServer
from tuneforge.inference.lora import AdapterWeights
from tuneforge.inference.servicer import InferenceServicer
from tuneforge.models import ModelResolver
from tuneforge.v1 import common_pb2, inference_pb2


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    resolver = ModelResolver(MODEL_CACHE)
    return resolver.load_tokenizer(resolver.resolve("tiny-qwen2"))


class QuickEngine:
    """What InferenceFrontend needs of an engine: answers at once; adapter loads wait for `loads_may_finish`."""

    def __init__(self, tokenizer: Any, resident: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.loads_started = threading.Semaphore(0)
        self.loads_may_finish = threading.Event()
        self.resident = set(resident)
        self.pins: dict[str, int] = {}

    def pin_if_loaded(self, key: str) -> int | None:
        if key not in self.resident:
            return None
        self.pins[key] = self.pins.get(key, 0) + 1
        return 1

    def release(self, key: str | None) -> None:
        if key is not None:
            self.pins[key] -= 1

    def has_adapter(self, key: str) -> bool:
        return False

    def decoded(self, key: str) -> bool:
        return False

    def loaded(self) -> list[str]:
        return []

    def acquire(self, key: str, directory: Path | None = None, verify: object = None) -> int:
        self.loads_started.release()
        self.loads_may_finish.wait()
        self.resident.add(key)
        return self.pin_if_loaded(key)  # type: ignore[return-value]

    def submit(self, request: Request) -> None:
        if request.adapter_key is not None:
            self.release(request.adapter_key)  # as the engine does when a row ends
        request.emit(Event(delta="Hi.", finish_reason="stop", prompt_tokens=len(request.prompt_ids)))


class ThreadRecordingFrontend(InferenceFrontend):
    """Records the thread each prompt is tokenized on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tokenized_on: list[threading.Thread] = []
        render = self.renderer.render

        def recording(*a: Any, **k: Any) -> Any:
            self.tokenized_on.append(threading.current_thread())
            return render(*a, **k)

        self.renderer.render = recording  # type: ignore[method-assign]


class OneTenantRegistry:
    """The registry ListModels reads: one adapter page, or nothing."""

    def list_adapters(self, tenant: str, page_size: int, token: str, kinds: tuple[str, ...]) -> tuple[list[Any], str]:
        return [], ""


def _frontend(tokenizer: Any, limits: Limits | None = None) -> ThreadRecordingFrontend:
    return ThreadRecordingFrontend(QuickEngine(tokenizer), "tiny-qwen2", "", OneTenantRegistry(), None, limits)


def _request(content: str) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(messages=[common_pb2.ChatMessage(role="user", content=content)])


@pytest.fixture()
def as_acme() -> Iterator[None]:
    token = bind_principal(Principal("acme", "member", "acme-ci"))
    yield
    reset_principal(token)


def _servicer(frontend: InferenceFrontend) -> InferenceServicer:
    servicer = InferenceServicer()
    servicer.frontend = frontend
    return servicer


def test_grpc_prompts_are_tokenized_off_the_event_loop(tokenizer: Any, as_acme: None) -> None:
    frontend = _frontend(tokenizer)

    async def scenario() -> threading.Thread:
        reply = await _servicer(frontend).Generate(_request("Name three colours. " * 200), None)
        assert reply.text == "Hi."
        return threading.current_thread()

    loop_thread = asyncio.run(scenario())
    assert frontend.tokenized_on and all(t is not loop_thread for t in frontend.tokenized_on)
    assert all(t.name.startswith("tuneforge-inference-prompts") for t in frontend.tokenized_on)


def test_a_prompt_too_large_for_any_token_count_is_refused_before_tokenization(tokenizer: Any, as_acme: None) -> None:
    frontend = _frontend(tokenizer, Limits(max_prompt_tokens=64))
    with pytest.raises(InvalidArgument) as refused:
        asyncio.run(_servicer(frontend).Generate(_request("x" * (64 * 16 + 1)), None))
    assert refused.value.violations[0].field == "messages"
    assert "bytes" in refused.value.message
    assert frontend.tokenized_on == []  # refused unread
    # a prompt within the byte bound but over the token limit is still measured, then refused
    with pytest.raises(InvalidArgument) as over:
        asyncio.run(_servicer(frontend).Generate(_request("word " * 100), None))
    assert "tokens" in over.value.message and len(frontend.tokenized_on) == 1


def test_http_prompts_are_tokenized_off_the_loop_and_oversized_ones_refused_unread(
    tokenizer: Any, tmp_path: Path, keys_file: Path
) -> None:
    frontend = _frontend(tokenizer, Limits(max_prompt_tokens=64))
    server = OpenAIServer(frontend, make_settings(tmp_path, keys_file))
    headers = {"Authorization": f"Bearer {ACME_KEY}"}

    async def scenario() -> tuple[threading.Thread, int, dict[str, Any]]:
        async with TestClient(TestServer(server.app)) as client:
            ok = await client.post(
                "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi there."}]}, headers=headers
            )
            assert ok.status == 200, await ok.text()
            big = await client.post(
                "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "x" * (64 * 16 + 1)}]},
                headers=headers,
            )
            return threading.current_thread(), big.status, await big.json()

    loop_thread, status, body = asyncio.run(scenario())
    assert len(frontend.tokenized_on) == 1 and frontend.tokenized_on[0] is not loop_thread
    assert status == 400 and body["error"]["param"] == "messages"


def test_adapter_loads_stuck_in_a_copy_do_not_delay_a_metadata_call(tokenizer: Any, as_acme: None) -> None:
    frontend = _frontend(tokenizer, Limits(max_concurrent_per_tenant=1000))
    engine: QuickEngine = frontend.engine  # type: ignore[assignment]
    servicer = _servicer(frontend)
    target = Target("helper:1", "acme/helper:1", None, Path("/nonexistent"))
    stuck = 64  # more than any default thread pool of this machine

    async def generate(index: int) -> None:
        async for event in frontend.stream("acme", target, [1, 2, index], frontend.sampling(max_tokens=1)):
            assert event.finish_reason == "stop"

    async def scenario() -> list[str]:
        loads = [asyncio.create_task(generate(i)) for i in range(stuck)]
        try:
            await asyncio.to_thread(engine.loads_started.acquire)  # a load is under way (and holds its thread)
            listed = await asyncio.wait_for(  # a hang guard only: before the fix this call never returned
                servicer.ListModels(inference_pb2.ListModelsRequest(), None), timeout=120
            )
            assert not any(task.done() for task in loads)  # ... while every load was still stuck
        finally:
            engine.loads_may_finish.set()  # (threads still stuck would keep the loop from closing)
        await asyncio.gather(*loads)
        return [m.name for m in listed.models]

    try:
        assert asyncio.run(scenario()) == ["tiny-qwen2"]
    finally:
        frontend.close()


def test_requests_for_a_resident_adapter_never_wait_behind_stuck_loads(tokenizer: Any, as_acme: None) -> None:
    frontend = _frontend(tokenizer, Limits(max_concurrent_per_tenant=1000))
    engine: QuickEngine = frontend.engine  # type: ignore[assignment]
    engine.resident.add("acme/ready:1")
    cold = Target("cold:1", "acme/cold:1", None, Path("/nonexistent"))
    ready = Target("ready:1", "acme/ready:1", None, Path("/nonexistent"))

    async def generate(target: Target) -> str:
        async for event in frontend.stream("acme", target, [1, 2, 3], frontend.sampling(max_tokens=1)):
            if event.finish_reason:
                return event.finish_reason
        return ""

    async def scenario() -> str:
        loads = [asyncio.create_task(generate(cold)) for _ in range(8)]  # more than the loads pool's threads
        try:
            for _ in range(2):
                await asyncio.to_thread(engine.loads_started.acquire)  # the loads pool is full of stuck loads
            # a hang guard only: with the slot pinned on the pool, this queued behind the stuck loads
            answer = await asyncio.wait_for(generate(ready), timeout=120)
            assert not any(task.done() for task in loads)
        finally:
            engine.loads_may_finish.set()
        await asyncio.gather(*loads)
        return answer

    try:
        assert asyncio.run(scenario()) == "stop"
        assert engine.pins["acme/ready:1"] == 0
    finally:
        frontend.close()


def test_a_caller_gone_during_a_load_leaves_no_slot_pinned(tokenizer: Any, as_acme: None) -> None:
    frontend = _frontend(tokenizer)
    engine: QuickEngine = frontend.engine  # type: ignore[assignment]
    cold = Target("cold:1", "acme/cold:1", None, Path("/nonexistent"))

    async def scenario() -> None:
        async def generate() -> None:
            async for _ in frontend.stream("acme", cold, [1, 2, 3], frontend.sampling(max_tokens=1)):
                pass

        task = asyncio.create_task(generate())
        await asyncio.to_thread(engine.loads_started.acquire)  # the load is under way
        task.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await task
        engine.loads_may_finish.set()  # the load ends after its caller: what it pinned is released
        for _ in range(600):
            if engine.pins.get("acme/cold:1") == 0:
                return
            await asyncio.sleep(0.05)

    try:
        asyncio.run(scenario())
        assert engine.pins == {"acme/cold:1": 0}, engine.pins  # pinned by the load, released for nobody
    finally:
        frontend.close()


@pytest.fixture(scope="module")
def tiny_engine() -> Iterator[Engine]:
    from tuneforge.inference.base_model import load_base_model

    base = load_base_model(ModelResolver(MODEL_CACHE), "tiny-qwen2", "float32", "cpu")
    engine = Engine(base.model, base.tokenizer, max_adapters=1, max_rank=8)
    yield engine
    engine.stop()


def test_the_slot_table_lock_is_free_while_an_adapter_is_copied_to_the_device(
    tiny_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, layer = next(iter(tiny_engine.layers.items()))
    weights = AdapterWeights(
        4, 2.0, {name: (torch.ones(4, layer.base.in_features), torch.ones(layer.base.out_features, 4))}
    )
    monkeypatch.setattr(engine_module, "read_adapter", lambda directory, layers, max_rank: weights)
    copying, may_finish = threading.Event(), threading.Event()
    write_slot = engine_module.write_slot

    def slow_copy(*args: Any) -> None:
        copying.set()
        may_finish.wait()
        write_slot(*args)

    monkeypatch.setattr(engine_module, "write_slot", slow_copy)
    loader = threading.Thread(target=tiny_engine.acquire, args=("acme/helper:1", Path("/unused")))
    loader.start()
    try:
        assert copying.wait(60), "the load never reached the copy"
        # what the event loop asks meanwhile must not wait for the copy
        free = tiny_engine._lock.acquire(blocking=False)
        if free:
            tiny_engine._lock.release()
        assert free, "the slot table's lock is held across the host-to-device copy"
        assert not tiny_engine.has_adapter("acme/helper:1") and tiny_engine.loaded() == []
    finally:
        may_finish.set()
        loader.join()
    assert tiny_engine.has_adapter("acme/helper:1")
    assert torch.equal(layer.lora_a[1, :4], torch.ones(4, layer.base.in_features))
    tiny_engine.release("acme/helper:1")
    assert tiny_engine.evict("acme/helper:1")


def test_health_follows_the_metadata_database(tmp_path: Path, keys_file: Path) -> None:
    from sqlalchemy import create_engine

    from tuneforge.evaluation.server import EvaluationComponent
    from tuneforge.platform import BackgroundServer

    background = BackgroundServer(make_settings(tmp_path, keys_file), [EvaluationComponent])
    metadata = background.server.components[0].platform.metadata
    reachable = metadata.engine
    service = "tuneforge.v1.EvaluationService"
    try:
        with grpc.insecure_channel(background.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watches = {
                name: health.Watch(health_pb2.HealthCheckRequest(service=name), timeout=120) for name in ("", service)
            }

            def next_status(name: str) -> int:
                return next(watches[name]).status

            serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
            assert next_status("") == serving and next_status(service) == serving
            # nothing listens on port 9: the database is unreachable
            metadata.engine = create_engine("postgresql+psycopg://tuneforge@127.0.0.1:9/tuneforge")
            assert next_status("") == not_serving and next_status(service) == not_serving
            metadata.engine = reachable
            assert next_status(service) == serving and next_status("") == serving
    finally:
        metadata.engine = reachable
        background.stop()

"""Evaluation through this process's inference frontend: a tenant's request limit slows a run, never fails
it; and a run that fails says why in a sentence.

The frontend is the real one (tenant limits, prompt rendering with tiny-qwen2's tokenizer) over an
engine that holds requests until the test, or a full batch, lets them finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MODEL_CACHE

from tuneforge.common.errors import ResourceExhausted
from tuneforge.evaluation.answers import LocalAnswers, ResolvedModel
from tuneforge.evaluation.runs import FAILED, SUCCEEDED, EvalRuns
from tuneforge.evaluation.suite_store import SuiteStore
from tuneforge.inference.engine import Event, Request, Sampling
from tuneforge.inference.frontend import InferenceFrontend, Limits, Target
from tuneforge.models import ModelResolver
from tuneforge.store.artifacts import ArtifactStore
from tuneforge.store.metadata import MetadataStore

ITEMS = [
    {
        "id": f"q{i}",
        "category": "instruction_following",
        "messages": [{"role": "user", "content": f"Say something short about the number {i}."}],
        "checks": [{"type": "max_words", "params": {"n": 40}}],
    }
    for i in range(4)
]


class HeldEngine:
    """What InferenceFrontend needs of an engine: finishes requests `batch` at a time, or when told."""

    def __init__(self, tokenizer: Any, batch: int | None) -> None:
        self.tokenizer = tokenizer
        self.batch = batch
        self.pending: list[Request] = []
        self.most_at_once = 0

    def has_adapter(self, key: str) -> bool:
        return True

    def decoded(self, key: str) -> bool:
        return True

    def loaded(self) -> list[str]:
        return []

    def submit(self, request: Request) -> None:
        self.pending.append(request)
        self.most_at_once = max(self.most_at_once, len(self.pending))
        if self.batch is not None and len(self.pending) >= self.batch:
            self.finish_all()

    def finish_all(self) -> None:
        done, self.pending = self.pending, []
        for request in done:
            request.emit(Event(delta="A short answer.", finish_reason="stop", prompt_tokens=3, completion_tokens=4))


class CountingFrontend(InferenceFrontend):
    """Counts the requests refused because the tenant's requests in flight were at its limit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refused = 0
        self.first_refusal = asyncio.Event()

    @contextlib.contextmanager
    def _slot_for(self, tenant: str) -> Iterator[None]:
        place = super()._slot_for(tenant)
        try:
            place.__enter__()
        except ResourceExhausted:
            self.refused += 1
            self.first_refusal.set()
            raise
        try:
            yield
        finally:
            place.__exit__(None, None, None)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    resolver = ModelResolver(MODEL_CACHE)
    return resolver.load_tokenizer(resolver.resolve("tiny-qwen2"))


@pytest.fixture()
def stores(tmp_path: Path) -> Iterator[tuple[EvalRuns, str]]:
    metadata = MetadataStore(f"sqlite:///{tmp_path / 'metadata.db'}")
    metadata.migrate()
    artifacts = ArtifactStore(tmp_path / "artifacts")
    suites = SuiteStore(metadata, artifacts)
    suite = suites.create("acme", "local", "\n".join(json.dumps(i) for i in ITEMS).encode())
    yield EvalRuns(metadata, artifacts, suites, concurrency=8), suite.id
    metadata.close()


def _frontend(tokenizer: Any, engine: HeldEngine, limit: int) -> CountingFrontend:
    return CountingFrontend(engine, "tiny-qwen2", "", None, None, Limits(max_concurrent_per_tenant=limit))


async def _run_to_the_end(runs: EvalRuns, suite_id: str, source: Any) -> Any:
    info = runs.create("acme", suite_id, ["base"], {"temperature": 0.0, "max_tokens": 8})
    runs.start(info, source)
    await runs._tasks[info.id]
    return runs.get("acme", info.id)


def test_a_run_above_the_tenant_s_limit_keeps_to_it_and_succeeds(tokenizer: Any, stores) -> None:
    runs, suite_id = stores
    engine = HeldEngine(tokenizer, batch=2)  # requests finish in pairs: the run must send two at once
    frontend = _frontend(tokenizer, engine, limit=2)

    final = asyncio.run(_run_to_the_end(runs, suite_id, LocalAnswers(frontend)))
    assert final.state == SUCCEEDED, final.failure_reason
    assert final.completed == len(ITEMS)
    assert engine.most_at_once == 2 and frontend.refused == 0  # clamped to the limit of 2, not the run's 8


def test_a_run_waits_out_the_tenant_s_own_requests_instead_of_failing(tokenizer: Any, stores) -> None:
    runs, suite_id = stores
    engine = HeldEngine(tokenizer, batch=None)
    frontend = _frontend(tokenizer, engine, limit=1)

    async def scenario() -> Any:
        # the tenant chats meanwhile: its one request in flight holds the tenant's only place
        chat = frontend.stream("acme", Target("tiny-qwen2", None, None), [1, 2, 3], Sampling(max_tokens=4))
        first = asyncio.create_task(anext(chat))
        await asyncio.sleep(0)
        run = asyncio.create_task(_run_to_the_end(runs, suite_id, LocalAnswers(frontend)))
        await frontend.first_refusal.wait()  # the run was refused RESOURCE_EXHAUSTED at least once
        engine.batch = 1
        engine.finish_all()  # the chat ends; the run's retries now get the place
        await first
        await chat.aclose()
        return await run

    final = asyncio.run(scenario())
    assert frontend.refused >= 1
    assert final.state == SUCCEEDED, final.failure_reason
    assert final.completed == len(ITEMS)


class BrokenAnswers:
    """A source with a bug: every answer raises a bare KeyError."""

    max_concurrency = None

    async def resolve(self, tenant: str, model: str, field: str) -> ResolvedModel:
        return ResolvedModel(model, "", "base-model", "")

    async def answer(self, tenant: str, model: ResolvedModel, messages: Any, sampling: Any) -> str:
        raise KeyError("choices")


def test_a_failed_run_s_reason_is_a_sentence_not_a_repr(stores) -> None:
    runs, suite_id = stores
    final = asyncio.run(_run_to_the_end(runs, suite_id, BrokenAnswers()))
    assert final.state == FAILED
    reason = final.failure_reason
    assert "KeyError" not in reason and "('" not in reason, reason
    assert reason.startswith("the evaluation service stopped this run on an internal error"), reason
    assert final.id in reason and "create the run again" in reason

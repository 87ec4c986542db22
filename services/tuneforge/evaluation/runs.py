"""Evaluation runs: a suite against a reference model and adapters, answers scored, a report at the end.

A run is a resource (QUEUED → RUNNING → SUCCEEDED | FAILED | CANCELLED) with progress. The runner
generates every item's answer per model through the inference frontend — all of a model's items
submitted at once so the engine batches them — with fixed sampling (greedy unless the run asks
otherwise; the seed is recorded), scores each answer with the item's checks, and stores each result
as it comes, so a restarted service resumes a run where it stopped. The comparison report (JSON,
Markdown, HTML) is written to the tenant's artifacts when the run finishes.

Generation runs in the process that hosts the inference service (the embedded default, where the
evaluation service finds it); a run elsewhere fails with a reason that says so.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from tuneforge.common.errors import FailedPrecondition, InvalidArgument, NotFound
from tuneforge.common.logging import get_logger
from tuneforge.common.names import check_idempotency_key, check_resource_id, new_id
from tuneforge.evaluation.checks import run_check
from tuneforge.evaluation.compare import compare, render_html, render_json, render_markdown
from tuneforge.evaluation.leakage import leaked_items
from tuneforge.evaluation.suite_store import SuiteStore
from tuneforge.store.artifacts import ArtifactStore
from tuneforge.store.metadata import (
    MetadataStore,
    decode_cursor,
    encode_cursor,
    find_idempotent,
    newest_first_page,
    page_size_of,
)
from tuneforge.store.tables import EvalResultRow, EvalRunRow, utcnow

log = get_logger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
BASE = "base"
REPORT_FILES = {"json": "report.json", "markdown": "report.md", "html": "report.html"}
CONCURRENCY = 8  # below the per-tenant in-flight limit, so the tenant can still chat meanwhile


@dataclass(frozen=True)
class RunInfo:
    id: str
    tenant: str
    suite_id: str
    models: list[str]
    state: str
    failure_reason: str
    completed: int
    total: int
    sampling: dict[str, Any]
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime


def _info(row: EvalRunRow) -> RunInfo:
    return RunInfo(
        row.id,
        row.tenant,
        row.suite_id,
        json.loads(row.models_json),
        row.state,
        row.failure_reason,
        row.completed,
        row.total,
        json.loads(row.sampling_json),
        row.cancel_requested,
        row.created_at,
        row.updated_at,
    )


class EvalRuns:
    """The run store and its runner (asyncio tasks in the serving process)."""

    def __init__(self, metadata: MetadataStore, artifacts: ArtifactStore, suites: SuiteStore) -> None:
        self.metadata = metadata
        self.artifacts = artifacts
        self.suites = suites
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # -- store ---------------------------------------------------------------------------------

    def create(
        self, tenant: str, suite_id: str, models: list[str], sampling: dict[str, Any], idempotency_key: str = ""
    ) -> RunInfo:
        check_idempotency_key(idempotency_key)
        if not models:
            raise InvalidArgument.for_field("models", "name at least one model: `base` and/or adapters")
        if len(set(models)) != len(models):
            raise InvalidArgument.for_field("models", "names a model twice")
        _, suite = self.suites.get(tenant, suite_id)  # NOT_FOUND for a suite the caller cannot see
        request = json.dumps({"suite": suite_id, "models": models, "sampling": sampling}, sort_keys=True)
        request_hash = hashlib.sha256(request.encode()).hexdigest()
        with self.metadata.session() as session:
            existing = find_idempotent(session, EvalRunRow, tenant, idempotency_key, request_hash, "run")
            if existing is not None:
                return _info(existing)
            now = utcnow()
            row = EvalRunRow(
                id=new_id("eval"),
                tenant=tenant,
                suite_id=suite_id,
                models_json=json.dumps(models),
                state=QUEUED,
                failure_reason="",
                completed=0,
                total=len(suite.items) * len(models),
                sampling_json=json.dumps(sampling, sort_keys=True),
                cancel_requested=False,
                idempotency_key=idempotency_key or None,
                request_hash=request_hash,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            session.flush()
            return _info(row)

    def _row(self, session: Any, tenant: str, run_id: str) -> EvalRunRow:
        check_resource_id(run_id, "run_id", "eval")
        row = session.get(EvalRunRow, run_id)
        if row is None or row.tenant != tenant:
            raise NotFound("evaluation run", run_id)
        return row

    def get(self, tenant: str, run_id: str) -> RunInfo:
        with self.metadata.session() as session:
            return _info(self._row(session, tenant, run_id))

    def list(self, tenant: str, page_size: int = 0, page_token: str = "") -> tuple[list[RunInfo], str]:
        with self.metadata.session() as session:
            rows, token = newest_first_page(
                session, select(EvalRunRow).where(EvalRunRow.tenant == tenant), EvalRunRow, page_size, page_token
            )
            return [_info(r) for r in rows], token

    def cancel(self, tenant: str, run_id: str) -> RunInfo:
        with self.metadata.session() as session:
            row = self._row(session, tenant, run_id)
            if row.state in FINAL:
                raise FailedPrecondition(f"run {run_id} already {row.state}")
            row.cancel_requested, row.updated_at = True, utcnow()
            if row.state == QUEUED:
                row.state = CANCELLED
            return _info(row)

    def results(
        self, tenant: str, run_id: str, model: str = "", category: str = "", page_size: int = 0, page_token: str = ""
    ) -> tuple[list[EvalResultRow], str]:
        size = page_size_of(page_size)
        with self.metadata.session() as session:
            self._row(session, tenant, run_id)
            query = select(EvalResultRow).where(EvalResultRow.run_id == run_id)
            if model:
                query = query.where(EvalResultRow.model == model)
            if category:
                query = query.where(EvalResultRow.category == category)
            if page_token:
                after_model, _, after_item = decode_cursor(page_token).partition("\0")
                query = query.where(
                    (EvalResultRow.model > after_model)
                    | ((EvalResultRow.model == after_model) & (EvalResultRow.item_id > after_item))
                )
            rows = list(session.scalars(query.order_by(EvalResultRow.model, EvalResultRow.item_id).limit(size + 1)))
            session.expunge_all()
        token = encode_cursor(f"{rows[size - 1].model}\0{rows[size - 1].item_id}") if len(rows) > size else ""
        return rows[:size], token

    def report(self, tenant: str, run_id: str, fmt: str) -> tuple[dict[str, Any], bytes]:
        info = self.get(tenant, run_id)
        if info.state != SUCCEEDED:
            raise FailedPrecondition(f"run {run_id} is {info.state}; its report exists once it has succeeded")
        artifacts = self.artifacts.for_tenant(tenant)
        report = json.loads(artifacts.read_bytes(f"evals/{run_id}/report.json"))
        return report, artifacts.read_bytes(f"evals/{run_id}/{REPORT_FILES[fmt]}")

    def _update(self, run_id: str, **values: Any) -> RunInfo:
        with self.metadata.session() as session:
            row = session.get(EvalRunRow, run_id)
            for name, value in values.items():
                setattr(row, name, value)
            row.updated_at = utcnow()
            return _info(row)

    # -- runner --------------------------------------------------------------------------------

    def start(self, info: RunInfo, frontend: Any) -> None:
        """Runs `info` in the background (idempotent while it runs)."""
        if info.id in self._tasks and not self._tasks[info.id].done():
            return
        self._tasks[info.id] = asyncio.create_task(self._run(info, frontend), name=f"tuneforge-eval-{info.id}")

    def unfinished(self) -> list[RunInfo]:
        with self.metadata.session() as session:
            rows = session.scalars(select(EvalRunRow).where(EvalRunRow.state.in_([QUEUED, RUNNING])))
            return [_info(r) for r in rows]

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _run(self, info: RunInfo, frontend: Any) -> None:
        try:
            await self._execute(info, frontend)
        except asyncio.CancelledError:
            raise  # the service is stopping: the run stays RUNNING and resumes at the next start
        except Exception as exc:
            message = getattr(exc, "message", None) or repr(exc)
            log.warning("eval_run_failed", run_id=info.id, error=message)
            await asyncio.to_thread(self._update, info.id, state=FAILED, failure_reason=message)

    async def _execute(self, info: RunInfo, frontend: Any) -> None:
        if frontend is None:
            raise FailedPrecondition(
                "no inference service runs in this process; evaluation runs where the inference service does"
            )
        _, suite = await asyncio.to_thread(self.suites.get, info.tenant, info.suite_id)
        await asyncio.to_thread(self._update, info.id, state=RUNNING)
        sampling = frontend.sampling(**info.sampling, prefix="sampling.")
        done = {(r.model, r.item_id) for r in (await asyncio.to_thread(self._all_results, info.id))}
        gate = asyncio.Semaphore(CONCURRENCY)
        names: dict[str, str] = {}
        versions: dict[str, Any] = {}

        async def answer(model: str, target: Any, item: Any) -> None:
            async with gate:
                if (await asyncio.to_thread(self.get, info.tenant, info.id)).cancel_requested:
                    return
                prompt = frontend.prompt_ids([(m["role"], m["content"]) for m in item.messages])
                parts = []
                async for event in frontend.stream(info.tenant, target, prompt, sampling):
                    parts.append(event.delta)
                    if event.finish_reason == "error":
                        raise FailedPrecondition(f"generation failed for {model}: {event.error}")
                output = "".join(parts)
                verdicts = [run_check(check, output, item.reference) for check in item.checks]
                await asyncio.to_thread(self._store, info.id, model, item, output, verdicts)

        for model in info.models:
            try:
                target = await frontend.resolve(info.tenant, "" if model == BASE else model, field="models")
            except NotFound as exc:
                raise FailedPrecondition(f"model {model!r}: {exc.message}") from exc
            names[model], versions[model] = target.name, target.version
            pending = [item for item in suite.items if (model, item.id) not in done]
            await asyncio.gather(*(answer(model, target, item) for item in pending))
        current = await asyncio.to_thread(self.get, info.tenant, info.id)
        if current.cancel_requested:
            await asyncio.to_thread(self._update, info.id, state=CANCELLED)
            return
        await asyncio.to_thread(self._finish, info, suite, names, versions)

    def _all_results(self, run_id: str) -> list[EvalResultRow]:
        with self.metadata.session() as session:
            rows = list(session.scalars(select(EvalResultRow).where(EvalResultRow.run_id == run_id)))
            session.expunge_all()
            return rows

    def _store(self, run_id: str, model: str, item: Any, output: str, verdicts: list[Any]) -> None:
        with self.metadata.session() as session:
            session.merge(
                EvalResultRow(
                    run_id=run_id,
                    model=model,
                    item_id=item.id,
                    category=item.category,
                    output=output,
                    passed=all(v.passed for v in verdicts),
                    checks_json=json.dumps([v.__dict__ for v in verdicts], ensure_ascii=False),
                )
            )
            row = session.get(EvalRunRow, run_id, with_for_update=True)
            row.completed, row.updated_at = row.completed + 1, utcnow()

    def _leakage(self, tenant: str, suite: Any, versions: dict[str, Any]) -> dict[str, Any] | None:
        """Which suite items near-duplicate training prompts of each adapter's dataset version."""
        found: dict[str, Any] = {}
        for model, version in versions.items():
            dataset = (version.lineage.get("dataset_version_id") if version is not None else "") or ""
            if not dataset:
                continue
            directory = self.artifacts.for_tenant(tenant).path(f"datasets/{dataset}")
            ids = leaked_items(suite.items, directory)
            if ids:
                found[model] = {"dataset_version_id": dataset, "items": ids}
        if not found:
            return None
        message = "; ".join(
            f"{len(v['items'])} of {len(suite.items)} suite items near-duplicate training prompts of {m} "
            f"(dataset version {v['dataset_version_id']}): {', '.join(v['items'][:10])}"
            for m, v in found.items()
        )
        return {"message": message + " — their scores measure recall of training data", "by_model": found}

    def _finish(self, info: RunInfo, suite: Any, names: dict[str, str], versions: dict[str, Any]) -> None:
        rows = self._all_results(info.id)
        passed: dict[str, dict[str, bool]] = {}
        outputs: dict[str, dict[str, str]] = {}
        for row in rows:
            passed.setdefault(row.model, {})[row.item_id] = row.passed
            outputs.setdefault(row.model, {})[row.item_id] = row.output
        categories = {item.id: item.category for item in suite.items}
        seed = int(info.sampling.get("seed") or 0)
        report = compare(passed, categories, info.models[0], seed=seed)
        report["run_id"], report["suite_id"], report["resolved_models"] = info.id, info.suite_id, names
        report["sampling"] = info.sampling
        report["item_categories"] = categories
        leakage = self._leakage(info.tenant, suite, versions)
        if leakage is not None:
            report["leakage"] = leakage
        artifacts = self.artifacts.for_tenant(info.tenant)
        artifacts.write_bytes(f"evals/{info.id}/report.json", render_json(report).encode())
        artifacts.write_bytes(f"evals/{info.id}/report.md", render_markdown(report, outputs).encode())
        artifacts.write_bytes(f"evals/{info.id}/report.html", render_html(report, outputs).encode())
        self._update(info.id, state=SUCCEEDED, completed=len(rows))
        log.info("eval_run_succeeded", run_id=info.id, items=len(categories), models=info.models)

"""Evaluation runs: a suite against a reference model and adapters, answers scored, a report at the end.

A run is a resource (QUEUED → RUNNING → SUCCEEDED | FAILED | CANCELLED) with progress. The runner
generates every item's answer per model through the inference frontend — all of a model's items
submitted at once so the engine batches them — with fixed sampling (greedy unless the run asks
otherwise; the seed is recorded), scores each answer with the item's checks, and stores each result
as it comes, so a restarted service resumes a run where it stopped. The comparison report (JSON,
Markdown, HTML) is written to the tenant's artifacts when the run finishes.

Answers come from an `AnswerSource`: the inference service of this process (the embedded default)
or, when the evaluation service runs in a pod of its own, the inference service's gRPC API called
with a service key on the run tenant's behalf. An optional judge model rates every answer 1-5, and
people's ratings can be imported afterwards; both are reported next to the pass rates.

With several replicas, a run is executed only by the replica holding its lease (`eval-run:<id>` in
the metadata store), renewed while it runs; when that replica dies the lease expires and another
replica's sweep (`EvaluationComponent`) takes the run over where the stored results end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from tuneforge.catalog.adapters import parse_ref
from tuneforge.catalog.datasets import DatasetCatalog
from tuneforge.common.errors import FailedPrecondition, InvalidArgument, TuneforgeError
from tuneforge.common.logging import get_logger
from tuneforge.common.names import check_idempotency_key, new_id
from tuneforge.evaluation.answers import AnswerSource, ResolvedModel
from tuneforge.evaluation.checks import run_check
from tuneforge.evaluation.compare import OVERALL, compare, render_html, render_json, render_markdown
from tuneforge.evaluation.leakage import leaked_items
from tuneforge.evaluation.scores import judge_messages, parse_human_scores, parse_judge_score, summarize
from tuneforge.evaluation.suite_store import SuiteStore
from tuneforge.store.artifacts import ArtifactStore
from tuneforge.store.idempotency import create_idempotent
from tuneforge.store.leases import Leases
from tuneforge.store.metadata import (
    MetadataStore,
    decode_cursor,
    encode_cursor,
    newest_first_page,
    page_size_of,
    tenant_row,
)
from tuneforge.store.tables import EvalHumanScoreRow, EvalResultRow, EvalRunRow, utcnow

log = get_logger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
REPORT_FILES = {"json": "report.json", "markdown": "report.md", "html": "report.html"}
CONCURRENCY = 8  # below the per-tenant in-flight limit, so the tenant can still chat meanwhile
MAX_RATINGS_BYTES = 16 * 1024 * 1024
JUDGE_SAMPLING = {"temperature": 0.0, "top_p": 0.0, "max_tokens": 8, "stop": [], "seed": 0}
#: Prefix of a run's lease: the replica holding it generates and scores the run's answers.
RUN_LEASE = "eval-run:"


#: Longest answer an evaluation run may ask for per item.
MAX_EVAL_TOKENS = 32_768


def check_sampling(sampling: dict[str, Any]) -> None:
    """Refuses a run's sampling at creation (field violations) instead of failing the run later."""
    temperature, top_p = sampling.get("temperature", 0.0), sampling.get("top_p", 0.0)
    if not 0 <= temperature <= 5:  # also refuses NaN
        raise InvalidArgument.for_field("sampling.temperature", "must be between 0 and 5")
    if not 0 <= top_p <= 1:
        raise InvalidArgument.for_field("sampling.top_p", "must be in (0, 1], or 0 for the default")
    if not 0 <= sampling.get("max_tokens", 0) <= MAX_EVAL_TOKENS:
        raise InvalidArgument.for_field("sampling.max_tokens", f"must be between 0 (default) and {MAX_EVAL_TOKENS}")
    stop = sampling.get("stop", [])
    if len(stop) > 8 or any(not s or len(s) > 64 for s in stop):
        raise InvalidArgument.for_field("sampling.stop", "at most 8 non-empty strings of up to 64 characters")
    if not 0 <= sampling.get("seed", 0) < 2**63:
        raise InvalidArgument.for_field("sampling.seed", "must be between 0 and 2**63 - 1")


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
    judge_model: str = ""


def _verdicts(item: Any, output: str) -> list[Any]:
    """Every check of a suite item on one answer."""
    return [run_check(check, output, item.reference) for check in item.checks]


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
        row.judge_model,
    )


class EvalRuns:
    """The run store and its runner (asyncio tasks in the serving process)."""

    def __init__(
        self,
        metadata: MetadataStore,
        artifacts: ArtifactStore,
        suites: SuiteStore,
        concurrency: int = CONCURRENCY,
        leases: Leases | None = None,
    ) -> None:
        self.metadata = metadata
        self.artifacts = artifacts
        self.datasets = DatasetCatalog(metadata, artifacts)
        self.suites = suites
        self.concurrency = concurrency
        self.leases = leases or (Leases(metadata) if metadata is not None else None)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # -- store ---------------------------------------------------------------------------------

    def create(
        self,
        tenant: str,
        suite_id: str,
        models: list[str],
        sampling: dict[str, Any],
        idempotency_key: str = "",
        judge_model: str = "",
    ) -> RunInfo:
        check_idempotency_key(idempotency_key)
        if not models:
            raise InvalidArgument.for_field("models", "name at least one model: `base` and/or adapters")
        if len(set(models)) != len(models):
            raise InvalidArgument.for_field("models", "names a model twice")
        for index, model in enumerate(models):
            if model != "base":
                parse_ref(model, f"models[{index}]")  # `base`, `adapter`, `adapter:7` or `adapter:alias`
        if judge_model and judge_model != "base":
            parse_ref(judge_model, "judge_model")
        check_sampling(sampling)
        _, suite = self.suites.get(tenant, suite_id)  # NOT_FOUND for a suite the caller cannot see
        request = json.dumps(
            {"suite": suite_id, "models": models, "sampling": sampling, "judge": judge_model}, sort_keys=True
        )
        request_hash = hashlib.sha256(request.encode()).hexdigest()

        def insert(session: Any) -> RunInfo:
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
                judge_model=judge_model,
                idempotency_key=idempotency_key or None,
                request_hash=request_hash,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            session.flush()
            return _info(row)

        return create_idempotent(self.metadata, EvalRunRow, tenant, idempotency_key, request_hash, "run", insert, _info)

    def _row(self, session: Any, tenant: str, run_id: str) -> EvalRunRow:
        return tenant_row(session, EvalRunRow, tenant, run_id, "run_id", "eval", "evaluation run")

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
    ) -> tuple[list[tuple[EvalResultRow, list[EvalHumanScoreRow]]], str]:
        """A page of results, each with its human ratings."""
        size = page_size_of(page_size)
        after = decode_cursor(page_token, "eval-results", (str, str)) if page_token else None
        with self.metadata.session() as session:
            self._row(session, tenant, run_id)
            query = select(EvalResultRow).where(EvalResultRow.run_id == run_id)
            if model:
                query = query.where(EvalResultRow.model == model)
            if category:
                query = query.where(EvalResultRow.category == category)
            if after is not None:
                after_model, after_item = after
                query = query.where(
                    (EvalResultRow.model > after_model)
                    | ((EvalResultRow.model == after_model) & (EvalResultRow.item_id > after_item))
                )
            rows = list(session.scalars(query.order_by(EvalResultRow.model, EvalResultRow.item_id).limit(size + 1)))
            last = rows[size - 1] if len(rows) > size else None
            token = encode_cursor("eval-results", last.model, last.item_id) if last is not None else ""
            rows = rows[:size]
            ratings: dict[tuple[str, str], list[EvalHumanScoreRow]] = {}
            if rows:
                query = select(EvalHumanScoreRow).where(
                    EvalHumanScoreRow.run_id == run_id,
                    EvalHumanScoreRow.item_id.in_({r.item_id for r in rows}),
                )
                for rating in session.scalars(query.order_by(EvalHumanScoreRow.rater)):
                    ratings.setdefault((rating.model, rating.item_id), []).append(rating)
            session.expunge_all()
        return [(r, ratings.get((r.model, r.item_id), [])) for r in rows], token

    def import_human_scores(self, tenant: str, run_id: str, data: bytes) -> tuple[int, RunInfo]:
        """Stores people's ratings of the run's answers (all or none) and refreshes a finished run's report."""
        if len(data) > MAX_RATINGS_BYTES:
            raise InvalidArgument.for_field("jsonl", f"is {len(data)} bytes; at most {MAX_RATINGS_BYTES} per call")
        info = self.get(tenant, run_id)
        _, suite = self.suites.get(tenant, info.suite_id)
        scores = parse_human_scores(data, info.models, [item.id for item in suite.items])
        now = utcnow()
        with self.metadata.session() as session:
            for score in scores:
                session.merge(
                    EvalHumanScoreRow(
                        run_id=run_id,
                        model=score.model,
                        item_id=score.item_id,
                        rater=score.rater,
                        score=score.score,
                        comment=score.comment,
                        created_at=now,
                    )
                )
        if info.state == SUCCEEDED:
            artifacts = self.artifacts.for_tenant(tenant)
            report = json.loads(artifacts.read_bytes(f"evals/{run_id}/report.json"))
            self._write_report(info, report, suite, self._all_results(run_id))
        return len(scores), self._update(run_id)

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

    def start(self, info: RunInfo, source: AnswerSource | None) -> None:
        """Runs `info` in the background if this replica gets its lease (idempotent while it runs)."""
        if info.id in self._tasks and not self._tasks[info.id].done():
            return
        self._tasks[info.id] = asyncio.create_task(self._drive(info, source), name=f"tuneforge-eval-{info.id}")

    def running(self) -> set[str]:
        """Ids of the runs this replica executes now."""
        return {run_id for run_id, task in self._tasks.items() if not task.done()}

    async def _drive(self, info: RunInfo, source: AnswerSource | None) -> None:
        """Runs `info` while holding its lease; stops (the run stays RUNNING) if the lease is lost."""
        assert self.leases is not None
        name = RUN_LEASE + info.id
        try:
            if not await asyncio.to_thread(self.leases.acquire, name):
                return  # another replica runs it
        except Exception as exc:  # the store is unreachable: the next sweep offers the run again
            log.warning("eval_run_lease_unavailable", run_id=info.id, error=repr(exc))
            return
        info = await asyncio.to_thread(self.get, info.tenant, info.id)  # it may have finished meanwhile
        if info.state in FINAL:
            await asyncio.to_thread(self.leases.release, name)
            return
        work = asyncio.create_task(self._run(info, source))
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=self.leases.ttl_s / 3)
                if work.done():
                    break
                try:
                    held = await asyncio.to_thread(self.leases.acquire, name)
                except Exception as exc:  # nobody can take the lease while the store is down: keep going
                    log.warning("eval_run_lease_renewal_failed", run_id=info.id, error=repr(exc))
                    continue
                if not held:
                    log.warning("eval_run_lease_lost", run_id=info.id, holder=self.leases.holder)
                    work.cancel()
                    await asyncio.gather(work, return_exceptions=True)
                    return
            await work
        finally:
            if not work.done():  # this task was cancelled: the service is stopping
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
            with contextlib.suppress(Exception):  # unreleased, it expires after ttl_s
                await asyncio.shield(asyncio.to_thread(self.leases.release, name))

    def unfinished(self) -> list[RunInfo]:
        with self.metadata.session() as session:
            rows = session.scalars(select(EvalRunRow).where(EvalRunRow.state.in_([QUEUED, RUNNING])))
            return [_info(r) for r in rows]

    async def stop(self) -> None:
        """Stops this replica's runs (they stay RUNNING) and releases their leases for another replica."""
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _run(self, info: RunInfo, source: AnswerSource | None) -> None:
        try:
            await self._execute(info, source)
        except asyncio.CancelledError:
            raise  # the service is stopping: the run stays RUNNING and resumes at the next start
        except TuneforgeError as exc:
            log.warning("eval_run_failed", run_id=info.id, error=exc.message)
            await asyncio.to_thread(self._update, info.id, state=FAILED, failure_reason=exc.message)
        except Exception:
            # the traceback stays in this service's log; the tenant reads a sentence, not a repr
            log.exception("eval_run_failed", run_id=info.id)
            reason = (
                f"the evaluation service stopped this run on an internal error; its log has the details "
                f"(run {info.id}): create the run again, and report it if it fails again"
            )
            await asyncio.to_thread(self._update, info.id, state=FAILED, failure_reason=reason)

    async def _execute(self, info: RunInfo, source: AnswerSource | None) -> None:
        if source is None:
            raise FailedPrecondition(
                "no inference service to generate with: run the evaluation service with the inference "
                "service, or set evaluation.inference_address"
            )
        _, suite = await asyncio.to_thread(self.suites.get, info.tenant, info.suite_id)
        await asyncio.to_thread(self._update, info.id, state=RUNNING)
        done = {(r.model, r.item_id) for r in (await asyncio.to_thread(self._all_results, info.id))}
        # never more requests at once than the source serves a tenant: the rest would only be refused
        gate = asyncio.Semaphore(min(self.concurrency, source.max_concurrency or self.concurrency))
        judge = await source.resolve(info.tenant, info.judge_model, "judge_model") if info.judge_model else None

        async def answer(model: ResolvedModel, item: Any) -> None:
            async with gate:
                if (await asyncio.to_thread(self.get, info.tenant, info.id)).cancel_requested:
                    return
                messages = [(m["role"], m["content"]) for m in item.messages]
                output = await source.answer(info.tenant, model, messages, info.sampling)
                verdicts = await asyncio.to_thread(_verdicts, item, output)  # detectors load on first use
                judged: tuple[float | None, str] = (None, "")
                if judge is not None:
                    reply = await source.answer(
                        info.tenant, judge, judge_messages(item.messages, output, item.rubric), JUDGE_SAMPLING
                    )
                    judged = parse_judge_score(reply)
                await asyncio.to_thread(self._store, info.id, model.name, item, output, verdicts, judged)

        resolved: list[ResolvedModel] = []
        for model in info.models:
            target = await source.resolve(info.tenant, model, "models")
            resolved.append(target)
            pending = [item for item in suite.items if (model, item.id) not in done]
            await asyncio.gather(*(answer(target, item) for item in pending))
        current = await asyncio.to_thread(self.get, info.tenant, info.id)
        if current.cancel_requested:
            await asyncio.to_thread(self._update, info.id, state=CANCELLED)
            return
        names = {m.name: m.display for m in resolved}
        if judge is not None:
            names["judge"] = judge.display
        await asyncio.to_thread(self._finish, info, suite, names, resolved)

    def _all_results(self, run_id: str) -> list[EvalResultRow]:
        with self.metadata.session() as session:
            rows = list(session.scalars(select(EvalResultRow).where(EvalResultRow.run_id == run_id)))
            session.expunge_all()
            return rows

    def _store(
        self, run_id: str, model: str, item: Any, output: str, verdicts: list[Any], judged: tuple[float | None, str]
    ) -> None:
        with self.metadata.session() as session:
            # a run taken over from a replica that died mid-write may store an item again: count it once
            new = session.get(EvalResultRow, (run_id, model, item.id)) is None
            session.merge(
                EvalResultRow(
                    run_id=run_id,
                    model=model,
                    item_id=item.id,
                    category=item.category,
                    output=output,
                    passed=all(v.passed for v in verdicts),
                    checks_json=json.dumps([v.__dict__ for v in verdicts], ensure_ascii=False),
                    judge_score=judged[0],
                    judge_reason=judged[1],
                )
            )
            row = session.get(EvalRunRow, run_id, with_for_update=True)
            row.completed, row.updated_at = row.completed + int(new), utcnow()

    def _leakage(self, tenant: str, suite: Any, resolved: list[ResolvedModel]) -> dict[str, Any] | None:
        """Which suite items near-duplicate training prompts of each adapter's dataset version."""
        found: dict[str, Any] = {}
        for model in resolved:
            if not model.dataset_version_id:
                continue
            ids = leaked_items(suite.items, self.datasets.training_conversations(tenant, model.dataset_version_id))
            if ids:
                found[model.name] = {"dataset_version_id": model.dataset_version_id, "items": ids}
        if not found:
            return None
        message = "; ".join(
            f"{len(v['items'])} of {len(suite.items)} suite items near-duplicate training prompts of {m} "
            f"(dataset version {v['dataset_version_id']}): {', '.join(v['items'][:10])}"
            for m, v in found.items()
        )
        return {"message": message + " — their scores measure recall of training data", "by_model": found}

    def _finish(self, info: RunInfo, suite: Any, names: dict[str, str], resolved: list[ResolvedModel]) -> None:
        rows = self._all_results(info.id)
        passed: dict[str, dict[str, bool]] = {}
        for row in rows:
            passed.setdefault(row.model, {})[row.item_id] = row.passed
        categories = {item.id: item.category for item in suite.items}
        seed = int(info.sampling.get("seed") or 0)
        report = compare(passed, categories, info.models[0], seed=seed)
        report["run_id"], report["suite_id"], report["resolved_models"] = info.id, info.suite_id, names
        report["sampling"] = info.sampling
        report["item_categories"] = categories
        if info.judge_model:
            report["judge_model"] = info.judge_model
        leakage = self._leakage(info.tenant, suite, resolved)
        if leakage is not None:
            report["leakage"] = leakage
        self._write_report(info, report, suite, rows)
        self._update(info.id, state=SUCCEEDED, completed=len(rows))
        log.info("eval_run_succeeded", run_id=info.id, items=len(categories), models=info.models)

    def _write_report(self, info: RunInfo, report: dict[str, Any], suite: Any, rows: list[EvalResultRow]) -> None:
        """Adds the judge's and people's scores to `report` and writes it in every format."""
        outputs: dict[str, dict[str, str]] = {}
        judge: dict[str, dict[str, float]] = {}
        for row in rows:
            outputs.setdefault(row.model, {})[row.item_id] = row.output
            if row.judge_score is not None:
                judge.setdefault(row.model, {})[row.item_id] = row.judge_score
        human: dict[str, dict[str, list[int]]] = {}
        with self.metadata.session() as session:
            for rating in session.scalars(select(EvalHumanScoreRow).where(EvalHumanScoreRow.run_id == info.id)):
                human.setdefault(rating.model, {}).setdefault(rating.item_id, []).append(rating.score)
        categories = {item.id: item.category for item in suite.items}
        scores = summarize(judge, human, categories, OVERALL)
        report.pop("scores", None)
        if scores:
            report["scores"] = scores
        artifacts = self.artifacts.for_tenant(info.tenant)
        artifacts.write_bytes(f"evals/{info.id}/report.json", render_json(report).encode())
        artifacts.write_bytes(f"evals/{info.id}/report.md", render_markdown(report, outputs).encode())
        artifacts.write_bytes(f"evals/{info.id}/report.html", render_html(report, outputs).encode())

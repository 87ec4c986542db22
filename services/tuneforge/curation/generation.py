"""Self-Instruct data generation: from a tenant's seed tasks, a served model proposes new instructions and answers.

A run is a resource (QUEUED → RUNNING → SUCCEEDED | FAILED | CANCELLED) with progress, executed by the
replica holding its lease (`generation-run:<id>`), like evaluation runs. Each candidate samples
`seeds_per_prompt` seed tasks into a few-shot prompt asking for one new task, then asks the same model
to answer it. Candidates are screened in batches, in order: validated by curation's own record rules
(`formats.to_messages`, `clean.clean_text`) and de-duplicated against the seeds and every earlier
candidate on `similarity.prompt_text` (exact hash, then MinHash/LSH at `LEAKAGE_THRESHOLD`). People
review what is kept (accept, edit and accept, reject); accepted pairs are written as an OpenAI-chat file
of the tenant's whose lines are recorded (`generation_export_lines`), and a dataset version built from
that file goes through the normal pipeline; its report lists `generation_lineage` (candidate, run,
model and reviewer of each line).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import grpc
import numpy as np
from sqlalchemy import select

from tuneforge.common.auth import ON_BEHALF_HEADER
from tuneforge.common.convert import sampling_message
from tuneforge.common.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound, TuneforgeError
from tuneforge.common.logging import get_logger
from tuneforge.common.names import check_idempotency_key, check_resource_id, new_id
from tuneforge.curation import formats
from tuneforge.curation.clean import clean_text
from tuneforge.curation.files import FileCatalog, StoredFile, Upload
from tuneforge.similarity import LEAKAGE_THRESHOLD, exact_duplicates, exact_key, minhash_batch, near_duplicates
from tuneforge.similarity import prompt_text as similarity_prompt_text
from tuneforge.store.idempotency import create_idempotent
from tuneforge.store.leases import Leases
from tuneforge.store.metadata import MetadataStore, newest_first_page, tenant_row
from tuneforge.store.tables import GenerationCandidateRow, GenerationExportLineRow, GenerationRunRow, utcnow
from tuneforge.v1 import common_pb2, inference_pb2, inference_pb2_grpc

log = get_logger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
PENDING, ACCEPTED, REJECTED, FILTERED = "pending", "accepted", "rejected", "filtered"
DUPLICATE_OF_SEED, DUPLICATE = "duplicate_of_seed", "duplicate"
RUN_LEASE = "generation-run:"
MAX_SEEDS, MAX_SEED_CHARS, MAX_COUNT, MAX_SEEDS_PER_PROMPT = 500, 4096, 200, 8
MAX_INSTRUCTION_CHARS, MAX_ANSWER_CHARS = 4096, 32768
DEFAULT_SAMPLING = {"temperature": 0.7, "top_p": 0.0, "max_tokens": 128, "stop": []}
#: Candidates generated at once; screened together, in order, once all of them are back.
BATCH = 4
SYSTEM_PROMPT = "You write new, self-contained tasks for an assistant. Reply with the task only."
_NUMBERING = re.compile(r"^\s*(?:task\s*\d*\s*[:.)-]|\d+\s*[:.)-]|[-*•])\s*", re.IGNORECASE)


# -- prompts and parsing -----------------------------------------------------------------------------


def instruction_messages(seeds: Sequence[str]) -> list[tuple[str, str]]:
    """The few-shot prompt asking for one new task after the sampled seed tasks (Self-Instruct's step 1)."""
    shown = "\n".join(f"Task {i}: {seed.strip()}" for i, seed in enumerate(seeds, start=1))
    return [
        ("system", SYSTEM_PROMPT),
        ("user", f"Here are some tasks:\n{shown}\n\nWrite one new task, different from these.\nTask {len(seeds) + 1}:"),
    ]


def parse_instruction(text: str) -> str:
    """The task in a model's reply: its first non-empty line, without numbering, quotes or a `Task N:` label."""
    for line in text.splitlines():
        line = _NUMBERING.sub("", line.strip()).strip().strip("\"'`").strip()
        if line:
            return line
    return ""


# -- screening ---------------------------------------------------------------------------------------


def validation_issue(instruction: str, answer: str) -> str:
    """Curation's record rules on the pair as a conversation: the issue code dropping it, or ''."""
    if len(instruction) > MAX_INSTRUCTION_CHARS or len(answer) > MAX_ANSWER_CHARS:
        return "too_long"
    record = {"messages": [{"role": "user", "content": instruction}, {"role": "assistant", "content": answer}]}
    try:
        messages, _ = formats.to_messages(record, "openai_chat")
    except formats.RecordError as exc:
        return exc.code
    if any(not clean_text(m["content"]) for m in messages):
        return formats.EMPTY_CONTENT
    return ""


def _dedup_text(instruction: str) -> str:
    return similarity_prompt_text([{"role": "user", "content": instruction}])


def screen(
    seeds: Sequence[str],
    earlier: Sequence[str],
    proposals: Sequence[tuple[str, str]],
    threshold: float = LEAKAGE_THRESHOLD,
) -> list[str]:
    """Why each proposal (instruction, answer) is dropped, or '' where it is kept.

    Invalid pairs first (curation's record rules); then the instructions are compared with the seeds,
    the instructions kept earlier (`earlier`), and each other in order: an exact or near duplicate of a
    seed is `duplicate_of_seed`, of an earlier candidate `duplicate` (the first of a group is kept).
    """
    reasons = [validation_issue(i, a) for i, a in proposals]
    valid = [n for n, reason in enumerate(reasons) if not reason]
    texts = [_dedup_text(s) for s in seeds] + [_dedup_text(t) for t in earlier]
    first_new = len(texts)
    texts += [_dedup_text(proposals[n][0]) for n in valid]
    exact = exact_duplicates(np.array([exact_key(t) for t in texts], dtype="S16"))
    near = near_duplicates(minhash_batch(texts), threshold)
    owner: dict[int, int] = {}
    for clusters in (exact, near):
        for keep, dropped in clusters.groups.items():
            for row in dropped:
                owner[row] = min(owner.get(row, keep), keep)
    for offset, n in enumerate(valid):
        row = first_new + offset
        if row in owner:
            reasons[n] = DUPLICATE_OF_SEED if owner[row] < len(seeds) else DUPLICATE
    return reasons


def seeds_from_file(data: bytes) -> list[str]:
    """Seed tasks of an uploaded file: a JSONL record's first user message or `instruction`, else the line."""
    seeds = []
    for raw in data.decode("utf-8", errors="replace").splitlines():
        line = raw.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = line
        if isinstance(record, dict):
            messages = record.get("messages")
            messages = messages if isinstance(messages, list) else []  # null, a number, an object: no messages
            users = [m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            record = record.get("instruction") or (users[0] if users else "")
        if isinstance(record, str) and record.strip():
            seeds.append(record.strip())
    return seeds


# -- the model it generates through --------------------------------------------------------------------


class Generator(Protocol):
    """Generates text for a tenant with one model (the inference service of this process or another pod's)."""

    async def resolve(self, tenant: str, model: str) -> tuple[str, Any]:
        """The exact model name (base id or `adapter:version`) and a handle for `complete`."""
        ...

    async def complete(
        self, tenant: str, handle: Any, messages: Sequence[tuple[str, str]], sampling: dict[str, Any]
    ) -> str: ...


class LocalGenerator:
    """The inference frontend this process serves (the embedded default), reached through the Platform."""

    def __init__(self, frontend: Any) -> None:
        self.frontend = frontend

    async def resolve(self, tenant: str, model: str) -> tuple[str, Any]:
        try:
            target = await self.frontend.resolve(tenant, "" if model == "base" else model, field="model")
        except NotFound as exc:
            raise FailedPrecondition(f"model {model!r}: {exc.message}") from exc
        return (target.version.ref if target.version is not None else target.name), target

    async def complete(
        self, tenant: str, handle: Any, messages: Sequence[tuple[str, str]], sampling: dict[str, Any]
    ) -> str:
        prompt = await self.frontend.render_prompt(list(messages), target=handle)
        parts = []
        async for event in self.frontend.stream(tenant, handle, prompt, self.frontend.sampling(**sampling)):
            if event.finish_reason == "error":
                raise FailedPrecondition(f"generation failed: {event.error}")
            parts.append(event.delta)
        return "".join(parts)


class RemoteGenerator:
    """Another pod's InferenceService, called with a `service` key on the run tenant's behalf (a cluster).

    The inference service applies the tenant's own adapters, limits and lineage checks; a busy replica's
    refusals (UNAVAILABLE, RESOURCE_EXHAUSTED) are retried with backoff.
    """

    RETRIES = 6

    def __init__(self, address: str, api_key: str, retry_base_s: float = 0.5) -> None:
        self.address = address
        self.api_key = api_key
        self.retry_base_s = retry_base_s
        self._channel: grpc.aio.Channel | None = None

    async def _call(self, method: str, request: Any, tenant: str) -> Any:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.address)
        stub = inference_pb2_grpc.InferenceServiceStub(self._channel)
        metadata = (("authorization", f"Bearer {self.api_key}"), (ON_BEHALF_HEADER, tenant))
        for attempt in range(self.RETRIES + 1):
            try:
                return await getattr(stub, method)(request, metadata=metadata, timeout=600)
            except grpc.aio.AioRpcError as exc:
                busy = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
                if not busy or attempt == self.RETRIES:
                    raise FailedPrecondition(
                        f"inference service at {self.address} answered {exc.code().name}: {exc.details()}"
                    ) from exc
            await asyncio.sleep(min(self.retry_base_s * 2**attempt, 30.0))
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def resolve(self, tenant: str, model: str) -> tuple[str, Any]:
        ref = "" if model == "base" else model
        # one token through the model resolves it (and refuses one the tenant cannot use) before the run starts
        request = inference_pb2.GenerateRequest(model=ref, messages=[common_pb2.ChatMessage(role="user", content="Hi")])
        request.sampling.max_tokens = 1
        resolved = (await self._call("Generate", request, tenant)).resolved_model or model
        return resolved, ref and resolved  # an alias stays pinned to the version it named at the start

    async def complete(
        self, tenant: str, handle: Any, messages: Sequence[tuple[str, str]], sampling: dict[str, Any]
    ) -> str:
        request = inference_pb2.GenerateRequest(
            model=handle,
            messages=[common_pb2.ChatMessage(role=r, content=c) for r, c in messages],
            sampling=sampling_message(sampling),
        )
        return (await self._call("Generate", request, tenant)).text


# -- runs ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    id: str
    tenant: str
    model: str
    resolved_model: str
    seeds: list[str]
    seeds_per_prompt: int
    count: int
    sampling: dict[str, Any]
    state: str
    failure_reason: str
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    counts: dict[str, int] = field(default_factory=dict)
    built_file_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CandidateInfo:
    id: str
    run_id: str
    index: int
    instruction: str
    answer: str
    status: str
    filter_reason: str
    seeds: list[str]
    model: str
    reviewer: str
    edited: bool
    original_instruction: str
    original_answer: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class GeneratedFile:
    """A file BuildDatasetFromCandidates wrote and the candidates on its lines, in order."""

    file: StoredFile
    candidate_ids: list[str]


def _run_info(row: GenerationRunRow, counts: dict[str, int] | None = None, built: list[str] | None = None) -> RunInfo:
    return RunInfo(
        row.id,
        row.tenant,
        row.model,
        row.resolved_model,
        json.loads(row.seeds_json),
        row.seeds_per_prompt,
        row.count,
        json.loads(row.sampling_json),
        row.state,
        row.failure_reason,
        row.cancel_requested,
        row.created_at,
        row.updated_at,
        counts or {},
        built or [],
    )


def _candidate_info(row: GenerationCandidateRow) -> CandidateInfo:
    return CandidateInfo(
        row.id,
        row.run_id,
        row.index,
        row.instruction,
        row.answer,
        row.status,
        row.filter_reason,
        json.loads(row.seeds_json),
        row.model,
        row.reviewer,
        row.edited,
        row.original_instruction,
        row.original_answer,
        row.created_at,
        row.updated_at,
    )


def check_request(seeds: Sequence[str], count: int, seeds_per_prompt: int, sampling: dict[str, Any]) -> None:
    """Every bad field of a run request at once."""
    problems = []
    if not seeds:
        problems.append(FieldViolation("seeds", "give at least one seed task (or seed_file_id)"))
    elif len(seeds) > MAX_SEEDS:
        problems.append(FieldViolation("seeds", f"{len(seeds)} seed tasks; at most {MAX_SEEDS}"))
    problems += [
        FieldViolation(f"seeds[{i}]", f"must be 1-{MAX_SEED_CHARS} characters, not blank")
        for i, seed in enumerate(seeds)
        if not seed.strip() or len(seed) > MAX_SEED_CHARS
    ]
    if not 1 <= count <= MAX_COUNT:
        problems.append(FieldViolation("count", f"must be between 1 and {MAX_COUNT}"))
    if not 0 <= seeds_per_prompt <= MAX_SEEDS_PER_PROMPT:
        problems.append(FieldViolation("seeds_per_prompt", f"must be between 0 (default 3) and {MAX_SEEDS_PER_PROMPT}"))
    if not 0 <= sampling.get("temperature", 0.0) <= 5:
        problems.append(FieldViolation("sampling.temperature", "must be between 0 and 5"))
    if not 0 <= sampling.get("top_p", 0.0) <= 1:
        problems.append(FieldViolation("sampling.top_p", "must be in (0, 1], or 0 for the default"))
    if not 0 <= sampling.get("max_tokens", 0) <= 4096:
        problems.append(FieldViolation("sampling.max_tokens", "must be between 0 (default 128) and 4096"))
    stop = sampling.get("stop", [])
    if len(stop) > 8 or any(not s or len(s) > 64 for s in stop):
        problems.append(FieldViolation("sampling.stop", "at most 8 non-empty strings of up to 64 characters"))
    if not 0 <= sampling.get("seed", 0) < 2**62:
        problems.append(FieldViolation("sampling.seed", "must be between 0 and 2**62 - 1"))
    if problems:
        raise InvalidArgument("; ".join(f"{p.field}: {p.description}" for p in problems), problems)


class GenerationRuns:
    """The run and candidate store, the review, the builds' files, and the runner (asyncio tasks)."""

    def __init__(self, metadata: MetadataStore, files: FileCatalog, leases: Leases | None = None) -> None:
        self.metadata = metadata
        self.files = files
        self.leases = leases or Leases(metadata)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # -- store -----------------------------------------------------------------------------------

    def create(
        self,
        tenant: str,
        seeds: Sequence[str],
        seed_file_id: str,
        model: str,
        count: int,
        seeds_per_prompt: int,
        sampling: dict[str, Any],
        idempotency_key: str = "",
    ) -> RunInfo:
        check_idempotency_key(idempotency_key)
        seeds = [s.strip() for s in seeds]
        if not seeds and seed_file_id:
            check_resource_id(seed_file_id, "seed_file_id", "file")
            seeds = seeds_from_file(self.files.read(tenant, seed_file_id))  # NOT_FOUND for another tenant's
            if not seeds:
                raise InvalidArgument.for_field("seed_file_id", "the file holds no seed task")
        check_request(seeds, count, seeds_per_prompt, sampling)
        model = model or "base"
        values = {key: sampling.get(key) or default for key, default in DEFAULT_SAMPLING.items()}
        values["seed"] = sampling.get("seed", secrets.randbelow(2**31))
        request = json.dumps(
            {"seeds": seeds, "model": model, "count": count, "k": seeds_per_prompt, "sampling": sampling},
            sort_keys=True,
        )
        request_hash = hashlib.sha256(request.encode()).hexdigest()

        def insert(session: Any) -> RunInfo:
            now = utcnow()
            row = GenerationRunRow(
                id=new_id("gen"),
                tenant=tenant,
                model=model,
                resolved_model="",
                seeds_json=json.dumps(seeds),
                seeds_per_prompt=seeds_per_prompt or 3,
                count=count,
                sampling_json=json.dumps(values, sort_keys=True),
                state=QUEUED,
                failure_reason="",
                cancel_requested=False,
                idempotency_key=idempotency_key or None,
                request_hash=request_hash,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            session.flush()
            return _run_info(row)

        return create_idempotent(
            self.metadata, GenerationRunRow, tenant, idempotency_key, request_hash, "generation run", insert, _run_info
        )

    def _row(self, session: Any, tenant: str, run_id: str) -> GenerationRunRow:
        return tenant_row(session, GenerationRunRow, tenant, run_id, "run_id", "gen", "generation run")

    def _with_counts(self, session: Any, row: GenerationRunRow) -> RunInfo:
        counts: dict[str, int] = {}
        for status, reason in session.execute(
            select(GenerationCandidateRow.status, GenerationCandidateRow.filter_reason).where(
                GenerationCandidateRow.run_id == row.id
            )
        ):
            counts[status] = counts.get(status, 0) + 1
            if reason:
                kind = "duplicates" if reason in (DUPLICATE, DUPLICATE_OF_SEED) else "invalid"
                counts[kind] = counts.get(kind, 0) + 1
        built = session.scalars(
            select(GenerationExportLineRow.file_id).where(GenerationExportLineRow.run_id == row.id).distinct()
        )
        return _run_info(row, counts, sorted(built))

    def get(self, tenant: str, run_id: str) -> RunInfo:
        with self.metadata.session() as session:
            return self._with_counts(session, self._row(session, tenant, run_id))

    def list(self, tenant: str, page_size: int = 0, page_token: str = "") -> tuple[list[RunInfo], str]:
        with self.metadata.session() as session:
            query = select(GenerationRunRow).where(GenerationRunRow.tenant == tenant)
            rows, token = newest_first_page(session, query, GenerationRunRow, page_size, page_token)
            return [self._with_counts(session, r) for r in rows], token

    def cancel(self, tenant: str, run_id: str) -> RunInfo:
        with self.metadata.session() as session:
            row = self._row(session, tenant, run_id)
            if row.state in FINAL:
                raise FailedPrecondition(f"generation run {run_id} already {row.state}")
            row.cancel_requested, row.updated_at = True, utcnow()
            if row.state == QUEUED:
                row.state = CANCELLED
            return self._with_counts(session, row)

    def candidates(self, tenant: str, run_id: str, statuses: Sequence[str] = ()) -> list[CandidateInfo]:
        with self.metadata.session() as session:
            self._row(session, tenant, run_id)
            query = select(GenerationCandidateRow).where(GenerationCandidateRow.run_id == run_id)
            if statuses:
                query = query.where(GenerationCandidateRow.status.in_(list(statuses)))
            return [_candidate_info(r) for r in session.scalars(query.order_by(GenerationCandidateRow.index))]

    def review(
        self, tenant: str, candidate_id: str, accept: bool, reviewer: str, instruction: str = "", answer: str = ""
    ) -> CandidateInfo:
        """Accepts (with edits where given) or rejects a kept candidate; edits must pass the same validation."""
        check_resource_id(candidate_id, "candidate_id", "cand")
        if not accept and (instruction or answer):
            raise InvalidArgument.for_field("instruction", "edits come with an accept, not a reject")
        with self.metadata.session() as session:
            row = tenant_row(session, GenerationCandidateRow, tenant, candidate_id, "candidate_id", "cand", "candidate")
            if row.status == FILTERED:
                raise FailedPrecondition(f"candidate {candidate_id} was filtered out ({row.filter_reason})")
            new_instruction = instruction.strip() or row.instruction
            new_answer = answer.strip() or row.answer
            issue = validation_issue(new_instruction, new_answer) if accept else ""
            if issue:
                where = "instruction" if issue == "too_long" and len(new_instruction) > MAX_INSTRUCTION_CHARS else ""
                raise InvalidArgument.for_field(where or "answer", f"fails curation's validation: {issue}")
            row.status = ACCEPTED if accept else REJECTED
            row.instruction, row.answer = new_instruction, new_answer
            row.edited = (new_instruction, new_answer) != (row.original_instruction, row.original_answer)
            row.reviewer, row.updated_at = reviewer, utcnow()
            return _candidate_info(row)

    def write_accepted(self, tenant: str, run_id: str) -> GeneratedFile:
        """The run's accepted pairs as a new OpenAI-chat file of the tenant's, each line's candidate recorded."""
        accepted = self.candidates(tenant, run_id, [ACCEPTED])
        if not accepted:
            raise FailedPrecondition(f"generation run {run_id} has no accepted candidate to build from")
        lines = [
            json.dumps(
                {"messages": [{"role": "user", "content": c.instruction}, {"role": "assistant", "content": c.answer}]},
                ensure_ascii=False,
            )
            for c in accepted
        ]
        upload = self.files.begin_upload(tenant, f"{run_id}-accepted.jsonl", "openai_chat")
        assert isinstance(upload, Upload)  # no idempotency key: always a new upload
        try:
            upload.write(("\n".join(lines) + "\n").encode())
            stored = upload.finish()
        except BaseException:
            upload.abort()
            raise
        now = utcnow()
        with self.metadata.session() as session:
            session.add_all(
                GenerationExportLineRow(
                    file_id=stored.id,
                    line=line,
                    tenant=tenant,
                    candidate_id=c.id,
                    run_id=run_id,
                    model=c.model,
                    reviewer=c.reviewer,
                    created_at=now,
                )
                for line, c in enumerate(accepted, start=1)
            )
        return GeneratedFile(stored, [c.id for c in accepted])

    def _update(self, run_id: str, **values: Any) -> None:
        with self.metadata.session() as session:
            row = session.get(GenerationRunRow, run_id)
            for name, value in values.items():
                setattr(row, name, value)
            row.updated_at = utcnow()

    def _state(self, run_id: str) -> tuple[bool, int]:
        """Whether cancelling was asked for, and how many candidates are stored (a resumed run goes on from there)."""
        with self.metadata.session() as session:
            row = session.get(GenerationRunRow, run_id)
            stored = session.scalars(
                select(GenerationCandidateRow.index).where(GenerationCandidateRow.run_id == run_id)
            ).all()
            return row.cancel_requested, len(stored)

    # -- runner ------------------------------------------------------------------------------------

    def unfinished(self) -> list[RunInfo]:
        with self.metadata.session() as session:
            rows = session.scalars(select(GenerationRunRow).where(GenerationRunRow.state.in_([QUEUED, RUNNING])))
            return [_run_info(r) for r in rows]

    def running(self) -> set[str]:
        return {run_id for run_id, task in self._tasks.items() if not task.done()}

    def start(self, info: RunInfo, generator: Generator | None) -> None:
        """Runs `info` in the background if this replica gets its lease (idempotent while it runs)."""
        if info.id not in self.running():
            self._tasks[info.id] = asyncio.create_task(self._drive(info, generator), name=f"tuneforge-{info.id}")

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _drive(self, info: RunInfo, generator: Generator | None) -> None:
        """Runs `info` while holding its lease, renewed every third of its lifetime; stops if it is lost."""
        name = RUN_LEASE + info.id
        try:
            if not await asyncio.to_thread(self.leases.acquire, name):
                return  # another replica runs it
        except Exception as exc:  # the store is unreachable: the next sweep offers the run again
            log.warning("generation_run_lease_unavailable", run_id=info.id, error=repr(exc))
            return
        current = await asyncio.to_thread(self.get, info.tenant, info.id)  # it may have ended meanwhile
        if current.state in FINAL:
            await asyncio.to_thread(self.leases.release, name)
            return
        work = asyncio.create_task(self._run(info, generator))
        try:
            while not (await asyncio.wait({work}, timeout=self.leases.ttl_s / 3))[0]:
                with contextlib.suppress(Exception):  # a store outage: nobody else can take it either
                    if not await asyncio.to_thread(self.leases.acquire, name):
                        log.warning("generation_run_lease_lost", run_id=info.id)
                        work.cancel()
            await asyncio.gather(work, return_exceptions=True)
        finally:
            work.cancel()
            with contextlib.suppress(Exception):  # unreleased, it expires after ttl_s
                await asyncio.shield(asyncio.to_thread(self.leases.release, name))

    async def _run(self, info: RunInfo, generator: Generator | None) -> None:
        try:
            await self._execute(info, generator)
        except asyncio.CancelledError:
            raise  # stopping: the run stays RUNNING and resumes at the next start
        except TuneforgeError as exc:
            log.warning("generation_run_failed", run_id=info.id, error=exc.message)
            await asyncio.to_thread(self._update, info.id, state=FAILED, failure_reason=exc.message)
        except Exception:
            log.exception("generation_run_failed", run_id=info.id)
            reason = f"the curation service stopped generation run {info.id} on an internal error; its log has details"
            await asyncio.to_thread(self._update, info.id, state=FAILED, failure_reason=reason)

    async def _execute(self, info: RunInfo, generator: Generator | None) -> None:
        if generator is None:
            raise FailedPrecondition(
                "no inference service to generate with: run curation with the inference service, "
                "or set curation.inference_address"
            )
        resolved, handle = await generator.resolve(info.tenant, info.model)
        await asyncio.to_thread(self._update, info.id, state=RUNNING, resolved_model=resolved)
        while True:
            cancel, done = await asyncio.to_thread(self._state, info.id)
            if cancel:
                await asyncio.to_thread(self._update, info.id, state=CANCELLED)
                return
            if done >= info.count:
                break
            indices = range(done, min(done + BATCH, info.count))
            proposals = await asyncio.gather(*(self._propose(info, generator, handle, i) for i in indices))
            await asyncio.to_thread(self._store_batch, info, resolved, list(indices), proposals)
        await asyncio.to_thread(self._update, info.id, state=SUCCEEDED)

    async def _propose(
        self, info: RunInfo, generator: Generator, handle: Any, index: int
    ) -> tuple[list[str], str, str]:
        """One candidate: sampled seeds, the new task the model proposes after them, and its answer."""
        rng = random.Random(f"{info.sampling.get('seed', 0)}:{index}")  # noqa: S311 - reproducible, not secret
        shown = rng.sample(info.seeds, min(info.seeds_per_prompt, len(info.seeds)))
        # a seed of its own for each call: the same seed would draw the same tokens for both
        seed = info.sampling.get("seed", 0) + 2 * index
        asking = {**info.sampling, "seed": seed % 2**63}
        reply = await generator.complete(info.tenant, handle, instruction_messages(shown), asking)
        instruction = parse_instruction(reply)
        answering = {**info.sampling, "seed": (seed + 1) % 2**63}
        answer = (
            await generator.complete(info.tenant, handle, [("user", instruction)], answering) if instruction else ""
        )
        return shown, instruction, answer.strip()

    def _store_batch(
        self, info: RunInfo, model: str, indices: list[int], proposals: list[tuple[list[str], str, str]]
    ) -> None:
        with self.metadata.session() as session:
            earlier = session.scalars(
                select(GenerationCandidateRow.instruction).where(
                    GenerationCandidateRow.run_id == info.id, GenerationCandidateRow.status != FILTERED
                )
            ).all()
            reasons = screen(info.seeds, list(earlier), [(i, a) for _, i, a in proposals])
            now = utcnow()
            for index, (shown, instruction, answer), reason in zip(indices, proposals, reasons, strict=True):
                session.add(
                    GenerationCandidateRow(
                        id=new_id("cand"),
                        tenant=info.tenant,
                        run_id=info.id,
                        index=index,
                        instruction=instruction,
                        answer=answer,
                        original_instruction=instruction,
                        original_answer=answer,
                        status=FILTERED if reason else PENDING,
                        filter_reason=reason,
                        seeds_json=json.dumps(shown),
                        model=model,
                        reviewer="",
                        edited=False,
                        created_at=now,
                        updated_at=now,
                    )
                )
            session.get(GenerationRunRow, info.id).updated_at = now


def generation_lineage(metadata: MetadataStore, tenant: str, file_ids: Sequence[str]) -> list[dict[str, Any]]:
    """`{file_id, line, candidate_id, run_id, model, reviewer}` of every line a build from candidates wrote."""
    if not file_ids:
        return []
    with metadata.session() as session:
        rows = session.scalars(
            select(GenerationExportLineRow)
            .where(GenerationExportLineRow.tenant == tenant, GenerationExportLineRow.file_id.in_(list(file_ids)))
            .order_by(GenerationExportLineRow.file_id, GenerationExportLineRow.line)
        )
        return [
            {
                "file_id": r.file_id,
                "line": r.line,
                "candidate_id": r.candidate_id,
                "run_id": r.run_id,
                "model": r.model,
                "reviewer": r.reviewer,
            }
            for r in rows
        ]

"""Merges and exports (ExportService): adapters merged into their base, models written as safetensors or GGUF.

An export is a resource (QUEUED → RUNNING → SUCCEEDED | FAILED | CANCELLED) with progress. The
weights work (`models/merge.py`, `models/export.py`) runs on a worker thread of this process, never
on the event loop, one at a time (a merge holds a whole model in memory). Its progress and the
cancel flag travel through the metadata store at most every `PROGRESS_INTERVAL_S`.

With several training replicas, an export is executed only by the replica holding its lease
(`export:<id>`), renewed while it runs; when that replica dies the lease expires and another
replica's sweep starts the export again from the beginning (its partial files were in a temp
directory, never published). Results are published in one rename under the tenant's
`exports/<id>/`; a merge registers its model directory as a MERGED model version instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from tuneforge.catalog.adapters import ADAPTER, MERGED, AdapterRegistry, AdapterVersionInfo, parse_ref
from tuneforge.common.errors import FailedPrecondition, InvalidArgument, NotFound, TuneforgeError
from tuneforge.common.logging import get_logger
from tuneforge.common.names import check_idempotency_key, check_resource_name, new_id
from tuneforge.models import ModelResolver
from tuneforge.models.export import check_format, check_quant, export_gguf, export_safetensors, gguf_file_name
from tuneforge.models.merge import Cancelled, check_dtype, file_digests, merge_lora
from tuneforge.store.artifacts import ArtifactStore
from tuneforge.store.idempotency import create_idempotent
from tuneforge.store.leases import Leases
from tuneforge.store.metadata import MetadataStore, newest_first_page, tenant_row
from tuneforge.store.tables import ModelExportRow, utcnow

log = get_logger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
MERGE, EXPORT = "merge", "export"
#: Prefix of an export's lease: the replica holding it does the work.
EXPORT_LEASE = "export:"
#: Seconds between two writes of an export's progress (and looks at its cancel flag).
PROGRESS_INTERVAL_S = 0.5


@dataclass(frozen=True)
class ExportInfo:
    id: str
    tenant: str
    kind: str
    source: str
    format: str
    quant: str
    dtype: str
    model_name: str
    state: str
    progress: float
    stage: str
    error: str
    files: list[dict[str, Any]]
    model_version: str
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime


def _info(row: ModelExportRow) -> ExportInfo:
    return ExportInfo(
        row.id,
        row.tenant,
        row.kind,
        row.source,
        row.format,
        row.quant,
        row.dtype,
        row.model_name,
        row.state,
        row.progress,
        row.stage,
        row.error,
        json.loads(row.files_json),
        row.model_version,
        row.cancel_requested,
        row.created_at,
        row.updated_at,
    )


class _Stop(Exception):
    """The lease was lost or the service is stopping: leave the export as it is for the next holder."""


class ModelExports:
    """The export store and its runner (one worker thread; background tasks on the serving loop)."""

    def __init__(
        self,
        metadata: MetadataStore,
        artifacts: ArtifactStore,
        registry: AdapterRegistry,
        models: ModelResolver,
        leases: Leases | None = None,
        max_shard_bytes: int = 2 * 1024**3,
    ) -> None:
        self.metadata = metadata
        self.artifacts = artifacts
        self.registry = registry
        self.models = models
        self.leases = leases or Leases(metadata)
        self.max_shard_bytes = max_shard_bytes
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tuneforge-export")
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stops: dict[str, threading.Event] = {}
        self._sweeper: asyncio.Task[None] | None = None

    # -- store ---------------------------------------------------------------------------------

    def create_merge(
        self, tenant: str, adapter: str, model_name: str = "", dtype: str = "", idempotency_key: str = ""
    ) -> ExportInfo:
        """Queues a merge of the adapter version `adapter` names; the version is resolved now."""
        check_idempotency_key(idempotency_key)
        dtype = check_dtype(dtype)
        name, _, _ = parse_ref(adapter, "adapter")
        if model_name:
            check_resource_name(model_name, "model_name")
        else:
            model_name = f"{name}-merged"[:63].rstrip("-_")
        version = self._resolve(tenant, adapter, "adapter")
        if version.kind != ADAPTER:
            raise InvalidArgument.for_field("adapter", f"{version.ref} is a {version.kind} model, not an adapter")
        self._check_line(tenant, model_name, str(version.lineage.get("base_model") or ""))
        return self._create(tenant, MERGE, version.ref, "safetensors", "", dtype, model_name, idempotency_key)

    def create_export(
        self, tenant: str, model: str, fmt: str, quant: str = "", idempotency_key: str = ""
    ) -> ExportInfo:
        """Queues an export of the model or adapter version `model` names, as `fmt` (`quant` for GGUF)."""
        check_idempotency_key(idempotency_key)
        problems = []
        for check in (lambda: check_format(fmt), lambda: parse_ref(model, "model")):
            try:
                check()
            except InvalidArgument as exc:
                problems += exc.violations
        if not problems:
            try:
                quant = check_quant(fmt, quant)
            except InvalidArgument as exc:
                problems += exc.violations
        if problems:
            raise InvalidArgument("; ".join(f"{p.field}: {p.description}" for p in problems), problems)
        version = self._resolve(tenant, model, "model")
        dtype = "float32" if version.kind == ADAPTER else ""
        return self._create(tenant, EXPORT, version.ref, fmt, quant, dtype, "", idempotency_key)

    def _check_line(self, tenant: str, model_name: str, base_model: str) -> None:
        """Refuses now, not after the merge, a line that cannot take the merged model (another kind or base)."""
        try:
            line = self.registry.get_adapter(tenant, model_name)
        except NotFound:
            return
        if line.kind != MERGED or line.base_model != base_model:
            raise InvalidArgument.for_field(
                "model_name",
                f"{model_name!r} holds {line.kind} versions of {line.base_model!r}; name a new or a merged line of "
                f"{base_model!r}",
            )

    def _resolve(self, tenant: str, ref: str, field: str) -> AdapterVersionInfo:
        return self.registry.resolve(tenant, ref, field)

    def _create(
        self,
        tenant: str,
        kind: str,
        source: str,
        fmt: str,
        quant: str,
        dtype: str,
        model_name: str,
        idempotency_key: str,
    ) -> ExportInfo:
        request = json.dumps(
            {"kind": kind, "source": source, "format": fmt, "quant": quant, "dtype": dtype, "name": model_name},
            sort_keys=True,
        )
        request_hash = hashlib.sha256(request.encode()).hexdigest()

        def insert(session: Any) -> ExportInfo:
            now = utcnow()
            row = ModelExportRow(
                id=new_id("exp"),
                tenant=tenant,
                kind=kind,
                source=source,
                format=fmt,
                quant=quant,
                dtype=dtype,
                model_name=model_name,
                state=QUEUED,
                progress=0.0,
                stage="queued",
                error="",
                files_json="[]",
                model_version="",
                cancel_requested=False,
                idempotency_key=idempotency_key or None,
                request_hash=request_hash,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            session.flush()
            return _info(row)

        return create_idempotent(
            self.metadata, ModelExportRow, tenant, idempotency_key, request_hash, "export", insert, _info
        )

    def _row(self, session: Any, tenant: str, export_id: str) -> ModelExportRow:
        return tenant_row(session, ModelExportRow, tenant, export_id, "export_id", "exp", "export")

    def get(self, tenant: str, export_id: str) -> ExportInfo:
        with self.metadata.session() as session:
            return _info(self._row(session, tenant, export_id))

    def list(self, tenant: str, page_size: int = 0, page_token: str = "") -> tuple[list[ExportInfo], str]:
        with self.metadata.session() as session:
            query = select(ModelExportRow).where(ModelExportRow.tenant == tenant)
            rows, token = newest_first_page(session, query, ModelExportRow, page_size, page_token)
            return [_info(r) for r in rows], token

    def cancel(self, tenant: str, export_id: str) -> ExportInfo:
        with self.metadata.session() as session:
            row = self._row(session, tenant, export_id)
            if row.state in FINAL:
                raise FailedPrecondition(f"export {export_id} already {row.state}")
            row.cancel_requested, row.updated_at = True, utcnow()
            if row.state == QUEUED:
                row.state, row.stage = CANCELLED, "cancelled"
            return _info(row)

    def files(self, tenant: str, export_id: str) -> list[tuple[str, Path]]:
        """(name, path) of each file of a SUCCEEDED export, for download."""
        info = self.get(tenant, export_id)
        if info.state != SUCCEEDED:
            raise FailedPrecondition(
                f"export {export_id} is {info.state}; its files can be downloaded once it succeeded"
            )
        artifacts = self.artifacts.for_tenant(tenant)
        if info.kind == MERGE:  # the merged model's files are the registered version's
            key = self.registry.resolve(tenant, info.model_version, "export_id").artifact_key
        else:
            key = f"exports/{info.id}"
        return [(f["name"], artifacts.path(f"{key}/{f['name']}")) for f in info.files]

    def _update(self, export_id: str, only_if: str | None = None, **values: Any) -> bool:
        """Sets `values` (and `updated_at`); with `only_if`, only while the export is in that state."""
        query = update(ModelExportRow).where(ModelExportRow.id == export_id)
        if only_if is not None:
            query = query.where(ModelExportRow.state == only_if)
        with self.metadata.session() as session:
            return bool(session.execute(query.values(**values, updated_at=utcnow())).rowcount)

    def unfinished(self) -> list[ExportInfo]:
        with self.metadata.session() as session:
            rows = session.scalars(select(ModelExportRow).where(ModelExportRow.state.in_([QUEUED, RUNNING])))
            return [_info(r) for r in rows]

    # -- runner --------------------------------------------------------------------------------

    def start(self, info: ExportInfo) -> None:
        """Runs `info` in the background if this replica gets its lease (idempotent while it runs)."""
        if info.id in self._tasks and not self._tasks[info.id].done():
            return
        self._tasks = {key: task for key, task in self._tasks.items() if not task.done()}  # finished ones go
        self._tasks[info.id] = asyncio.create_task(self._drive(info), name=f"tuneforge-export-{info.id}")

    async def run_sweeps(self) -> None:
        """Offers unfinished exports (left by a previous process or a replica that died) every half lease."""
        while True:
            try:
                for info in await asyncio.to_thread(self.unfinished):
                    self.start(info)
            except Exception as exc:  # a broken sweep must not end the loop; the next one retries
                log.error("exports_sweep_failed", error=repr(exc))
            await asyncio.sleep(self.leases.ttl_s / 2)

    def start_sweeps(self) -> None:
        self._sweeper = asyncio.create_task(self.run_sweeps(), name="tuneforge-export-sweeps")

    async def stop(self) -> None:
        """Stops this replica's exports (they stay as they are, for the next holder) and releases their leases."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for stop in self._stops.values():
            stop.set()
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _drive(self, info: ExportInfo) -> None:
        name = EXPORT_LEASE + info.id
        try:
            if not await asyncio.to_thread(self.leases.acquire, name):
                return  # another replica runs it
        except Exception as exc:  # the store is unreachable: the next sweep offers it again
            log.warning("export_lease_unavailable", export_id=info.id, error=repr(exc))
            return
        stop = self._stops.setdefault(info.id, threading.Event())
        stop.clear()
        work: asyncio.Future[None] | None = None
        try:
            info = await asyncio.to_thread(self.get, info.tenant, info.id)  # it may have finished meanwhile
            if info.state in FINAL:
                return
            work = asyncio.wrap_future(self._pool.submit(self._run, info, stop))
            while not work.done():
                await asyncio.wait({work}, timeout=self.leases.ttl_s / 3)
                if work.done():
                    break
                try:
                    held = await asyncio.to_thread(self.leases.acquire, name)
                except Exception as exc:  # nobody can take the lease while the store is down: keep going
                    log.warning("export_lease_renewal_failed", export_id=info.id, error=repr(exc))
                    continue
                if not held:
                    log.warning("export_lease_lost", export_id=info.id, holder=self.leases.holder)
                    stop.set()
                    break
            with contextlib.suppress(Exception):
                await work
        finally:
            stop.set()  # a cancelled driver (the service stops) stops its thread at the next step
            self._stops.pop(info.id, None)
            with contextlib.suppress(Exception):  # unreleased, it expires after ttl_s
                await asyncio.shield(asyncio.to_thread(self.leases.release, name))

    def _run(self, info: ExportInfo, stop: threading.Event) -> None:
        """The whole export, on the worker thread: RUNNING, the work, then its final state."""
        if not self._update(info.id, only_if=QUEUED, state=RUNNING, stage="starting") and info.state != RUNNING:
            return  # cancelled while it waited for the worker
        staging = self.artifacts.make_temp_dir(f"export-{info.id}")
        last = [0.0]

        def progress(fraction: float, stage: str) -> None:
            if stop.is_set():
                raise _Stop()
            now = time.monotonic()
            if now - last[0] < PROGRESS_INTERVAL_S and fraction < 1.0:
                return
            last[0] = now
            with self.metadata.session() as session:
                row = session.get(ModelExportRow, info.id)
                if row.cancel_requested:
                    raise Cancelled()
                row.progress, row.stage, row.updated_at = round(min(max(fraction, 0.0), 1.0), 4), stage, utcnow()

        try:
            if info.kind == MERGE:
                files, model_version = self._merge(info, staging, progress)
            else:
                files, model_version = self._export(info, staging, progress), ""
            self._update(
                info.id,
                only_if=RUNNING,
                state=SUCCEEDED,
                progress=1.0,
                stage="done",
                files_json=json.dumps(files),
                model_version=model_version,
            )
            log.info("export_succeeded", export_id=info.id, kind=info.kind, source=info.source)
        except _Stop:
            log.info("export_stopped", export_id=info.id)  # left RUNNING: the next lease holder starts it again
        except Cancelled:
            self._update(info.id, only_if=RUNNING, state=CANCELLED, stage="cancelled")
        except TuneforgeError as exc:
            log.warning("export_failed", export_id=info.id, error=exc.message)
            self._update(info.id, only_if=RUNNING, state=FAILED, stage="failed", error=exc.message)
        except Exception:
            # the traceback stays in this service's log; the tenant reads a sentence, not a repr
            log.exception("export_failed", export_id=info.id)
            reason = (
                f"the training service stopped this export on an internal error; its log has the details "
                f"(export {info.id}): start it again, and report it if it fails again"
            )
            self._update(info.id, only_if=RUNNING, state=FAILED, stage="failed", error=reason)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _merged_into(self, tenant: str, version: AdapterVersionInfo, out_dir: Path, dtype: str, progress: Any) -> None:
        base_name = str(version.lineage.get("base_model") or "")
        if not base_name:
            raise FailedPrecondition(f"{version.ref} records no base model in its lineage; it cannot be merged")
        base = self.models.resolve(base_name, "adapter")
        merge_lora(
            base.source,
            self.artifacts.for_tenant(tenant).path(version.artifact_key),
            out_dir,
            dtype=dtype or "float32",
            max_shard_bytes=self.max_shard_bytes,
            trust_remote_code=base.trust_remote_code,
            expected_template_hash=str(version.lineage.get("template_hash") or ""),
            progress=progress,
        )

    def _merge(self, info: ExportInfo, staging: Path, progress: Any) -> tuple[list[dict[str, Any]], str]:
        # a holder that died (or lost its lease) after registering, before SUCCEEDED, left the version:
        # the merge is not run (or registered) a second time
        def earlier() -> AdapterVersionInfo | None:
            return self.registry.find_by_lineage(info.tenant, info.model_name, "export_id", info.id)

        if (registered := earlier()) is not None:
            return registered.files, registered.ref
        version = self.registry.resolve(info.tenant, info.source, "adapter")
        self._merged_into(info.tenant, version, staging / "model", info.dtype, lambda f, s: progress(0.9 * f, s))
        progress(0.9, "registering the merged model")
        if (registered := earlier()) is not None:  # registered meanwhile by a holder that took over
            return registered.files, registered.ref
        registered = self.registry.register_merged(
            info.tenant,
            info.model_name,
            version,
            staging / "model",
            lineage={"dtype": info.dtype, "export_id": info.id},
        )
        return registered.files, registered.ref

    def _export(self, info: ExportInfo, staging: Path, progress: Any) -> list[dict[str, Any]]:
        version = self.registry.resolve(info.tenant, info.source, "model")
        if version.kind == ADAPTER:  # merged first, into the staging area only
            model_dir = staging / "merged"
            self._merged_into(info.tenant, version, model_dir, info.dtype, lambda f, s: progress(0.5 * f, s))
            start, span = 0.5, 0.45
        else:
            model_dir = self.artifacts.for_tenant(info.tenant).path(version.artifact_key)
            start, span = 0.0, 0.95
        out = staging / "out"
        out.mkdir()

        def scaled(fraction: float, stage: str) -> None:
            progress(start + span * fraction, stage)

        if info.format == "gguf":
            stem = f"{version.adapter}-{version.version}"
            export_gguf(model_dir, out / gguf_file_name(stem, info.quant), info.quant, name=stem, progress=scaled)
        else:
            export_safetensors(model_dir, out, progress=scaled)
        progress(0.96, "hashing files")
        files = file_digests(out)
        self.artifacts.for_tenant(info.tenant).publish_dir(f"exports/{info.id}", out)
        return files

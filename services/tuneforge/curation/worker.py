"""Builds one dataset version in a worker process: everything it needs is in the metadata row.

One build per version, wherever it runs: the worker holds the version's lease
(`dataset-build:<tenant>/<id>`) from before it creates its staging directory until after it has
removed it, renews it from a thread, and gives up (stops itself) as soon as it loses the lease or
the version stops being PROCESSING (cancelled, deleted). A worker that outlives its server (the
server was SIGKILLed) keeps its lease alive, so the restarted server adopts the build instead of
starting a second one; a dead worker's lease expires and the next build of the version starts
clean, removing the dead one's staging first. A version is published at most once: only by the
lease holder, and only while the row is still PROCESSING.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import update

from tuneforge.catalog.feedback import FeedbackStore
from tuneforge.catalog.suites import SuiteCatalog
from tuneforge.common.logging import get_logger
from tuneforge.common.names import new_id
from tuneforge.curation import distributed
from tuneforge.curation.generation import generation_lineage
from tuneforge.curation.pipeline import CurationOptions, InputFile, curate
from tuneforge.curation.report import write_failed_build_report
from tuneforge.models import ModelResolver, template_hash
from tuneforge.store.artifacts import ArtifactStore
from tuneforge.store.leases import DEFAULT_TTL_S, Leases
from tuneforge.store.metadata import MetadataStore
from tuneforge.store.tables import DatasetVersionRow, utcnow

log = get_logger(__name__)

#: Exit status of a worker that found the version's build running elsewhere (EX_TEMPFAIL).
EXIT_BUILDING_ELSEWHERE = 75
#: Exit status of a worker stopped by SIGTERM (a server stopping, a cancel): 128 + 15, as a shell reports it.
EXIT_TERMINATED = 143
#: Input bytes per pool process below which `processes=0` (automatic) adds no further process:
#: a pool process costs about a second to start and load its tokenizer.
AUTO_BYTES_PER_PROCESS = 8 * 2**20

_STAGING = re.compile(r"^dir-build-(?P<tenant>[^.]+)\.(?P<version>dsv-[0-9a-f]+)-")


def build_lease_name(tenant: str, version_id: str) -> str:
    """The lease whose holder is the one build of (tenant, version_id)."""
    return f"dataset-build:{tenant}/{version_id}"


def _staging_prefix(tenant: str, version_id: str) -> str:
    return f"build-{tenant}.{version_id}"  # tenant names have no '.': the split is unambiguous


def remove_staging(artifacts: ArtifactStore, tenant: str, version_id: str) -> int:
    """Removes every staging directory of builds of (tenant, version_id); call only holding its lease."""
    removed = 0
    for path in artifacts.temp_dir.glob(f"dir-{_staging_prefix(tenant, version_id)}-*"):
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed


def staging_builds(artifacts: ArtifactStore) -> set[tuple[str, str]]:
    """(tenant, version id) of every build that has a staging directory now."""
    found = set()
    for path in artifacts.temp_dir.glob("dir-build-*"):
        if match := _STAGING.match(path.name):
            found.add((match["tenant"], match["version"]))
    return found


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker process needs to reach the stores and models (plain values: it is pickled)."""

    database_url: str
    artifact_root: str
    model_cache_dir: str
    trust_remote_code: tuple[str, ...] = field(default_factory=tuple)
    #: Processes one build fans its batches out to (0 = one per CPU core, fewer for small inputs;
    #: 1 = in the worker process itself).
    processes: int = 0
    #: Seconds the build's lease lasts without renewal: how long a dead worker's version waits
    #: before another build of it may start.
    lease_ttl_s: float = DEFAULT_TTL_S
    #: Holder name of the build's lease (the runner names it, so it can check on its worker's
    #: lease after the worker died); empty: the worker names itself.
    lease_holder: str = ""


def pool_processes(requested: int, input_bytes: int, cpus: int | None = None) -> int:
    """How many processes a build of `input_bytes` uses for `requested` (see WorkerConfig.processes)."""
    if requested > 0:
        return requested
    return max(1, min(cpus or os.cpu_count() or 1, math.ceil(input_bytes / AUTO_BYTES_PER_PROCESS)))


class BuildStopped(Exception):
    """The build lost its lease or its version stopped being PROCESSING: it must not publish."""


class LeaseKeeper:
    """Renews a build's lease from a thread; when the build must stop, SIGTERMs this process (`interrupt`).

    SIGTERM (turned into SystemExit by `main`) is the one way to interrupt the pipeline wherever
    it is, tokenizer calls included; the build's `finally` blocks then remove its staging. Without
    `interrupt` (a build run in-process) the build stops at its next `check()`.
    """

    def __init__(
        self, leases: Leases, metadata: MetadataStore, tenant: str, version_id: str, interrupt: bool = False
    ) -> None:
        self.interrupt = interrupt
        self.leases = leases
        self.metadata = metadata
        self.tenant = tenant
        self.version_id = version_id
        self.name = build_lease_name(tenant, version_id)
        self.stop_reason = ""
        #: When the lease was last renewed (the build holds it when the keeper is made).
        self._renewed_at = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="build-lease", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ends renewals (idempotent); call before the build records its outcome, which would read as a stop."""
        self._done.set()
        if self._thread.ident is not None:
            self._thread.join()

    def check(self) -> None:
        """Raises BuildStopped unless this build still holds the lease and its version is PROCESSING.

        A database that does not answer for a moment is no reason to stop; one that has not let the
        lease be renewed for its whole TTL is (another replica may have taken the version over).
        """
        if not self.stop_reason:
            try:
                self.stop_reason = self._why_stop()
            except Exception:
                self.stop_reason = self._unrenewed_too_long()
                if not self.stop_reason:
                    log.warning("dataset_build_check_failed", version=self.version_id, exc_info=True)
        if self.stop_reason:
            raise BuildStopped(self.stop_reason)

    def _unrenewed_too_long(self) -> str:
        unrenewed = time.monotonic() - self._renewed_at
        if unrenewed <= self.leases.ttl_s:
            return ""
        return f"its lease could not be renewed for {unrenewed:.0f} s (the metadata database did not answer)"

    def _why_stop(self) -> str:
        if not self.leases.acquire(self.name):
            return "another build took the version's lease over"
        self._renewed_at = time.monotonic()
        with self.metadata.session() as session:
            row = session.get(DatasetVersionRow, (self.tenant, self.version_id))
            if row is None:
                return "the version was deleted"
            if row.state != "processing":
                return f"the version is {row.state} ({row.failure_reason or 'no reason given'})"
        return ""

    def _run(self) -> None:
        while not self._done.wait(self.leases.ttl_s / 3):
            try:
                reason = self._why_stop()
            except Exception:  # the database may be briefly unreachable: the lease outlives a few misses
                log.warning("dataset_build_lease_not_renewed", version=self.version_id, exc_info=True)
                reason = self._unrenewed_too_long()  # past its TTL another replica may build it: stop
                if not reason:
                    continue
            if reason and not self._done.is_set():
                self.stop_reason = reason
                log.info("dataset_build_stopping", tenant=self.tenant, version=self.version_id, reason=reason)
                if self.interrupt:
                    os.kill(os.getpid(), signal.SIGTERM)
                return


def build_version(config: WorkerConfig, tenant: str, version_id: str, interrupt: bool = False) -> str:
    """Runs the pipeline for (tenant, version_id) and records READY or FAILED; returns the state.

    Returns "elsewhere" without touching anything while another build holds the version's lease.
    `interrupt`: a build that must stop SIGTERMs its own process (only in a worker process).
    """
    metadata = MetadataStore(config.database_url)
    artifacts = ArtifactStore(Path(config.artifact_root))
    leases = Leases(metadata, holder=config.lease_holder or None, ttl_s=config.lease_ttl_s)
    name = build_lease_name(tenant, version_id)
    try:
        if not leases.acquire(name):
            log.info("dataset_build_elsewhere", tenant=tenant, version=version_id, holder=leases.holder_of(name))
            return "elsewhere"
        keeper = LeaseKeeper(leases, metadata, tenant, version_id, interrupt)
        try:
            if remove_staging(artifacts, tenant, version_id):  # a dead build's, found holding the lease
                log.info("dataset_build_stale_staging_removed", tenant=tenant, version=version_id)
            keeper.start()
            return _build(metadata, artifacts, config, keeper, tenant, version_id)
        finally:
            keeper.stop()
            leases.release(name)
    finally:
        metadata.close()


def finish_version(metadata: MetadataStore, tenant: str, version_id: str, **values: Any) -> bool:
    """Sets `values` on the version if it is still PROCESSING (the one transition out of it); returns whether."""
    with metadata.session() as session:
        changed = session.execute(
            update(DatasetVersionRow)
            .where(
                DatasetVersionRow.tenant == tenant,
                DatasetVersionRow.id == version_id,
                DatasetVersionRow.state == "processing",
            )
            .values(**values, updated_at=utcnow())
        ).rowcount
    return bool(changed)


def _withdraw(metadata: MetadataStore, artifacts: ArtifactStore, tenant: str, version_id: str) -> None:
    """Removes a version's published files unless the version is READY (then they are its content)."""
    with metadata.session() as session:
        row = session.get(DatasetVersionRow, (tenant, version_id))
        keep = row is not None and row.state == "ready"
    if not keep:
        artifacts.for_tenant(tenant).delete_tree(f"datasets/{version_id}")


def _report_progress(metadata: MetadataStore, tenant: str, version_id: str, processed: int) -> None:
    """Raises the version's bytes_processed to `processed`; never lowers it (a restarted build starts at 0)."""
    with metadata.session() as session:
        session.execute(
            update(DatasetVersionRow)
            .where(
                DatasetVersionRow.tenant == tenant,
                DatasetVersionRow.id == version_id,
                DatasetVersionRow.state == "processing",
                DatasetVersionRow.bytes_processed < processed,
            )
            .values(bytes_processed=processed, updated_at=utcnow())
        )


def _suite_prompts(
    metadata: MetadataStore, artifacts: ArtifactStore, tenant: str, suite_id: str, sha256: str
) -> list[list[dict[str, str]]]:
    """The prompts of the evaluation suite a version keeps out of its training data (as requested)."""
    try:
        return SuiteCatalog(metadata, artifacts).prompts(tenant, suite_id, sha256)
    except ValueError as exc:
        raise RuntimeError(f"evaluation suite {suite_id} changed since the version was requested") from exc


def _feedback_lineage(metadata: MetadataStore, tenant: str, inputs_spec: list[dict[str, Any]]) -> dict[str, Any]:
    """`feedback_lineage`, `generation_lineage` for the report: the feedback item or candidate behind each line."""
    lines = FeedbackStore(metadata).lineage(tenant, [i["file_id"] for i in inputs_spec if i.get("file_id")])
    generated = generation_lineage(metadata, tenant, [i["file_id"] for i in inputs_spec if i.get("file_id")])
    return {
        **({"feedback_lineage": lines} if lines else {}),
        **({"generation_lineage": generated} if generated else {}),
    }


def _build(
    metadata: MetadataStore,
    artifacts: ArtifactStore,
    config: WorkerConfig,
    keeper: LeaseKeeper,
    tenant: str,
    version_id: str,
) -> str:
    with metadata.session() as session:
        row = session.get(DatasetVersionRow, (tenant, version_id))
        if row is None or row.state != "processing":
            return row.state if row is not None else "missing"
        inputs_spec = json.loads(row.inputs_json)
        options_values = json.loads(row.options_json)
        leakage_suite = options_values.pop("leakage_suite_id", ""), options_values.pop("leakage_suite_sha256", "")
        base_model, dataset, expected_template = row.base_model, row.dataset, row.template_hash
        data_format, bytes_total = row.data_format, row.bytes_total
    work = artifacts.make_temp_dir(_staging_prefix(tenant, version_id))
    try:
        models = ModelResolver(Path(config.model_cache_dir), list(config.trust_remote_code))
        resolved = models.resolve(base_model)
        tokenizer = models.load_tokenizer(resolved)
        if template_hash(tokenizer) != expected_template:
            raise RuntimeError(f"the tokenizer of {base_model} changed since the version was requested")
        inputs = [InputFile(i["name"], Path(i["path"]), i["sha256"], i.get("format", data_format)) for i in inputs_spec]
        missing = [i.name for i in inputs if not i.path.is_file()]
        if missing:
            raise RuntimeError(f"input files are gone: {', '.join(missing)}")
        eval_prompts = _suite_prompts(metadata, artifacts, tenant, *leakage_suite) if leakage_suite[0] else None
        processed = 0
        last_update = 0.0

        def progress(nbytes: int) -> None:
            nonlocal processed, last_update
            processed += nbytes
            if time.monotonic() - last_update > 1.0:
                last_update = time.monotonic()
                keeper.check()
                _report_progress(metadata, tenant, version_id, processed)

        out = work / "out"
        processes = pool_processes(config.processes, bytes_total)
        batches = None
        if processes > 1:
            options = CurationOptions(**options_values)
            batches = distributed.ProcessPoolBatches(resolved.source, options, processes)
        result = curate(
            inputs,
            tokenizer,
            CurationOptions(**options_values),
            out,
            work / "staging",
            progress=progress,
            batches=batches,
            eval_prompts=eval_prompts,
            metadata={
                "version_id": version_id,
                "dataset": dataset,
                "base_model": base_model,
                "template_hash": expected_template,
                "inputs": [{"name": i.name, "sha256": i.sha256} for i in inputs],
                **_feedback_lineage(metadata, tenant, inputs_spec),
            },
        )
        manifest = {
            "id": version_id,
            "dataset": dataset,
            "base_model": base_model,
            "template_hash": expected_template,
            "inputs": [{"name": i.name, "sha256": i.sha256} for i in inputs],
            "format": data_format,
            "options": CurationOptions(**options_values).canonical(),
            "counts": result.counts,
            "shards": result.report["shards"],
            "pipeline_version": result.report["pipeline_version"],
            "status": "ready" if result.ok else "failed",
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        shutil.rmtree(work / "staging", ignore_errors=True)
        keeper.check()  # published at most once: by the lease holder, while the version is PROCESSING
        artifacts.for_tenant(tenant).publish_dir(f"datasets/{version_id}", out)
        keeper.stop()
        state = "ready" if result.ok else "failed"
        if not finish_version(
            metadata,
            tenant,
            version_id,
            state=state,
            counts_json=json.dumps(result.counts),
            failure_reason=result.failure_reason,
            bytes_processed=bytes_total,
        ):
            # cancelled or deleted between the last check and publishing: take back what was published
            _withdraw(metadata, artifacts, tenant, version_id)
            log.info("dataset_build_stopped", tenant=tenant, version=version_id, reason="no longer processing")
            return "stopped"
        log.info(
            "dataset_version_built",
            tenant=tenant,
            version=version_id,
            state=state,
            processes=processes,
            **{k: v for k, v in result.counts.items() if isinstance(v, int)},
        )
        return state
    except BuildStopped as stopped:
        log.info("dataset_build_stopped", tenant=tenant, version=version_id, reason=str(stopped))
        return "stopped"
    except Exception as exc:
        reference = new_id("err")  # what an operator greps the server log for
        log.exception("dataset_version_failed", tenant=tenant, version=version_id, reference=reference)
        reason = f"the build failed (reference {reference}): {str(exc)[:300] or type(exc).__name__}"
        try:  # the report and the issues found so far stay readable through the API
            failed = work / "failed"
            write_failed_build_report(
                failed,
                reason,
                work / "staging" / "issues.jsonl",
                {"version_id": version_id, "dataset": dataset, "base_model": base_model, "reference": reference},
            )
            keeper.check()
            artifacts.for_tenant(tenant).publish_dir(f"datasets/{version_id}", failed)
        except BuildStopped:
            return "stopped"
        except Exception:
            log.exception("dataset_failure_report_not_written", tenant=tenant, version=version_id)
        keeper.stop()
        finish_version(metadata, tenant, version_id, state="failed", failure_reason=reason)
        return "failed"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    """`python -m tuneforge.curation.worker TENANT VERSION_ID` with the WorkerConfig as JSON on stdin.

    The config travels on stdin, not argv, because the database URL may hold a password.
    """
    import sys

    from tuneforge.common.logging import configure_logging

    configure_logging("INFO", "json")
    tenant, version_id = sys.argv[1:3]
    values = json.loads(sys.stdin.read())
    values["trust_remote_code"] = tuple(values.get("trust_remote_code", ()))

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(EXIT_TERMINATED)  # unwinds the build: its staging is removed, its lease released

    signal.signal(signal.SIGTERM, terminate)
    state = build_version(WorkerConfig(**values), tenant, version_id, interrupt=True)
    return EXIT_BUILDING_ELSEWHERE if state == "elsewhere" else 0


if __name__ == "__main__":
    raise SystemExit(main())

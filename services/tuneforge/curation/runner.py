"""Runs dataset builds in worker processes (`python -m tuneforge.curation.worker`), N at a time.

Separate processes keep the CPU-heavy pipeline away from the gRPC event loop and the GIL, and a
crashed build cannot take the service down. The runner also supervises every build of the
metadata store, its own and others':

- a worker of this runner that dies (OOM killer, a signal, a crash) makes its version FAILED at
  once, with a sentence naming the cause, and its staging is removed;
- a version PROCESSING whose build lease is live but held by no worker of this runner (a worker
  that outlived a SIGKILLed server, or another replica's) is adopted: watched, not built again;
- a version PROCESSING whose lease expired (its worker died with its server) is built again,
  and staging left by dead builds is removed as soon as their lease is found expired.

Builds still running at shutdown are terminated; their versions stay PROCESSING and the next
start-up (of this or any replica) builds them again.
"""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import uuid
from dataclasses import asdict, dataclass, field

from sqlalchemy import select

from tuneforge.common.logging import get_logger
from tuneforge.curation.worker import (
    EXIT_BUILDING_ELSEWHERE,
    EXIT_TERMINATED,
    WorkerConfig,
    build_lease_name,
    finish_version,
    remove_staging,
    staging_builds,
)
from tuneforge.store.artifacts import ArtifactStore
from tuneforge.store.leases import Leases
from tuneforge.store.metadata import MetadataStore
from tuneforge.store.tables import DatasetVersionRow

log = get_logger(__name__)

#: Seconds a cancelled or stopped worker gets to unwind (remove its staging) before it is killed.
STOP_GRACE_S = 10.0


def exit_cause(returncode: int) -> str:
    """Why a worker that exited with `returncode` left its version unfinished, as a sentence for the user."""
    if returncode == EXIT_TERMINATED:
        returncode = -signal.SIGTERM  # the worker turns SIGTERM into this exit status
    if returncode < 0:
        number = -returncode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unknown signal"
        cause = f"the curation worker was killed by signal {number} ({name})"
        if number == signal.SIGKILL:
            cause += ", often the kernel's out-of-memory killer: give the service more memory or split the input"
    else:
        cause = f"the curation worker exited with code {returncode} before finishing; the server log says why"
    return cause + ". Delete the version and create it again to rebuild it."


@dataclass
class _Build:
    """One build this runner queued or runs."""

    tenant: str
    version_id: str
    process: subprocess.Popen[bytes] | None = None
    holder: str = ""
    cancelled: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class BuildRunner:
    """A queue of (tenant, version id) builds served by `workers` threads, each owning one child process."""

    def __init__(
        self, config: WorkerConfig, metadata: MetadataStore, artifacts: ArtifactStore, workers: int = 1
    ) -> None:
        self.config = config
        self.metadata = metadata
        self.artifacts = artifacts
        self.workers = workers
        #: This runner's own lease identity, for the moments it holds a build's lease itself (cleanup).
        self.leases = Leases(metadata, ttl_s=config.lease_ttl_s)
        self._queue: queue.Queue[_Build | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._builds: dict[tuple[str, str], _Build] = {}
        self._adopted: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def submit(self, tenant: str, version_id: str) -> None:
        """Queues a build of the version unless this runner already has it queued or running."""
        with self._lock:
            if self._stopping.is_set() or (tenant, version_id) in self._builds:
                return
            if not self._threads:
                for index in range(self.workers):
                    thread = threading.Thread(target=self._serve, name=f"dataset-build-{index}", daemon=True)
                    thread.start()
                    self._threads.append(thread)
            build = _Build(tenant, version_id)
            self._builds[(tenant, version_id)] = build
        self._queue.put(build)

    def _serve(self) -> None:
        while (build := self._queue.get()) is not None:
            try:
                self._run(build)
            except Exception:  # the runner must outlive anything one build does
                log.exception("dataset_build_supervision_failed", tenant=build.tenant, version=build.version_id)
            finally:
                with self._lock:
                    self._builds.pop((build.tenant, build.version_id), None)
                build.done.set()

    def _run(self, build: _Build) -> None:
        with self._lock:
            if self._stopping.is_set() or build.cancelled:
                return
            build.process = subprocess.Popen(
                [sys.executable, "-m", "tuneforge.curation.worker", build.tenant, build.version_id],
                stdin=subprocess.PIPE,
                # a session of its own: Ctrl-C in the terminal or a unit-wide SIGTERM reaches the server,
                # whose drain stops the build (the version stays PROCESSING and is built again on the
                # next start), instead of killing the worker first and failing the version
                start_new_session=True,
            )
        # the runner names the worker's lease holder, so it can still act on the lease once the worker is dead
        build.holder = f"{socket.gethostname()}:{build.process.pid}:build-{uuid.uuid4().hex[:8]}"
        log.info("dataset_build_started", tenant=build.tenant, version=build.version_id, pid=build.process.pid)
        config = asdict(self.config) | {"lease_holder": build.holder}
        build.process.communicate(json.dumps(config).encode())
        returncode = build.process.returncode
        if returncode in (0, EXIT_BUILDING_ELSEWHERE):
            return  # finished (or another live build has it: supervision adopts that one)
        self._after_death(build, returncode)

    def _after_death(self, build: _Build, returncode: int) -> None:
        """Removes a dead worker's staging and, unless stopped on purpose, marks its version FAILED."""
        leases = Leases(self.metadata, holder=build.holder, ttl_s=self.config.lease_ttl_s)
        name = build_lease_name(build.tenant, build.version_id)
        if not leases.acquire(name):  # another live build holds the version: it is not ours to touch
            return
        try:
            remove_staging(self.artifacts, build.tenant, build.version_id)
            if self._stopping.is_set() or build.cancelled:
                return  # stopping: the version stays PROCESSING for the next start; cancelled: already final
            cause = exit_cause(returncode)
            if finish_version(self.metadata, build.tenant, build.version_id, state="failed", failure_reason=cause):
                log.error(
                    "dataset_build_crashed",
                    tenant=build.tenant,
                    version=build.version_id,
                    exit_code=returncode,
                    reason=cause,
                )
        finally:
            leases.release(name)

    def cancel(self, tenant: str, version_id: str) -> None:
        """Stops this runner's build of the version, if any, and returns once its staging is gone.

        A build of another process notices its version is no longer PROCESSING at its next lease
        renewal and stops itself.
        """
        with self._lock:
            build = self._builds.get((tenant, version_id))
            if build is None:
                return
            build.cancelled = True
            process = build.process
        if process is not None:
            _stop(process)
            build.done.wait(STOP_GRACE_S)

    def supervise(self) -> None:
        """One pass over unfinished builds: adopt live ones, build again orphaned ones, clean dead staging."""
        with self.metadata.session() as session:
            processing = session.execute(
                select(DatasetVersionRow.tenant, DatasetVersionRow.id).where(DatasetVersionRow.state == "processing")
            ).all()
        for tenant, version_id in processing:
            with self._lock:
                if (tenant, version_id) in self._builds:
                    continue
            holder = self.leases.holder_of(build_lease_name(tenant, version_id))
            if holder is None:
                if not self._still_processing(tenant, version_id):
                    continue  # its build finished since the list was read (and left our _builds)
                log.info("dataset_build_resumed", tenant=tenant, version=version_id)
                self.submit(tenant, version_id)
            elif (tenant, version_id) not in self._adopted:
                self._adopted.add((tenant, version_id))
                log.info("dataset_build_adopted", tenant=tenant, version=version_id, holder=holder)
        for tenant, version_id in staging_builds(self.artifacts):
            with self._lock:
                if (tenant, version_id) in self._builds:
                    continue  # our own worker removes its staging
            name = build_lease_name(tenant, version_id)
            if self.leases.acquire(name):  # nobody builds it: the staging is a dead build's
                try:
                    if remove_staging(self.artifacts, tenant, version_id):
                        log.info("dataset_build_stale_staging_removed", tenant=tenant, version=version_id)
                finally:
                    self.leases.release(name)

    def _still_processing(self, tenant: str, version_id: str) -> bool:
        with self.metadata.session() as session:
            row = session.get(DatasetVersionRow, (tenant, version_id))
            return row is not None and row.state == "processing"

    def start(self) -> None:
        """Supervises once now (before the service reports SERVING), then every third of the lease TTL."""
        self.supervise()
        thread = threading.Thread(target=self._supervise_forever, name="dataset-build-supervisor", daemon=True)
        thread.start()

    def _supervise_forever(self) -> None:
        interval = min(max(self.config.lease_ttl_s / 3, 0.2), 10.0)
        while not self._stopping.wait(interval):
            try:
                self.supervise()
            except Exception:  # a database hiccup must not end supervision
                log.exception("dataset_build_supervision_failed")

    def stop(self, timeout: float = STOP_GRACE_S) -> None:
        with self._lock:
            self._stopping.set()
            builds = [b for b in self._builds.values() if b.process is not None]
        for build in builds:
            build.process.terminate()  # type: ignore[union-attr]
        for build in builds:
            _stop(build.process, timeout, terminated=True)  # type: ignore[arg-type]
            build.done.wait(timeout)  # its lease released and staging removed before the stores close
        for _ in self._threads:
            self._queue.put(None)


def _stop(process: subprocess.Popen[bytes], timeout: float = STOP_GRACE_S, terminated: bool = False) -> None:
    """SIGTERM (the worker unwinds and removes its staging), SIGKILL after `timeout`."""
    if not terminated:
        process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()

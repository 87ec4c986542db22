"""Runs dataset builds in worker processes (`python -m tuneforge.curation.worker`), N at a time.

Separate processes keep the CPU-heavy pipeline away from the gRPC event loop and the GIL, and a
crashed build cannot take the service down. Builds still running at shutdown are terminated; their
versions stay PROCESSING and the next start-up resumes them.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from dataclasses import asdict

from tuneforge.common.logging import get_logger
from tuneforge.curation.worker import WorkerConfig

log = get_logger(__name__)


class BuildRunner:
    """A queue of (tenant, version id) builds served by `workers` threads, each owning one child process."""

    def __init__(self, config: WorkerConfig, workers: int = 1) -> None:
        self.config_json = json.dumps(asdict(config))
        self.workers = workers
        self._queue: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._running: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self._stopping = False

    def submit(self, tenant: str, version_id: str) -> None:
        with self._lock:
            if self._stopping:
                return
            if not self._threads:
                for index in range(self.workers):
                    thread = threading.Thread(target=self._serve, name=f"dataset-build-{index}", daemon=True)
                    thread.start()
                    self._threads.append(thread)
        self._queue.put((tenant, version_id))

    def _serve(self) -> None:
        while (item := self._queue.get()) is not None:
            tenant, version_id = item
            with self._lock:
                if self._stopping:
                    return
                process = subprocess.Popen(
                    [sys.executable, "-m", "tuneforge.curation.worker", tenant, version_id],
                    stdin=subprocess.PIPE,
                )
                self._running.add(process)
            try:
                process.communicate(self.config_json.encode())
            finally:
                with self._lock:
                    self._running.discard(process)
            if process.returncode != 0 and not self._stopping:
                log.error("dataset_build_crashed", tenant=tenant, version=version_id, exit_code=process.returncode)

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopping = True
            running = list(self._running)
        for process in running:
            process.terminate()
        for process in running:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        for _ in self._threads:
            self._queue.put(None)

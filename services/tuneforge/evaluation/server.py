"""EvaluationService bootstrap: `tuneforge serve evaluation`.

Suites, runs and reports. Runs generate through the inference service of this process (the embedded
default) or, with `evaluation.inference_address` set, through another pod's InferenceService with a
service key.
"""

from __future__ import annotations

import asyncio

import grpc

from tuneforge.catalog.adapters import AdapterRegistry
from tuneforge.common.logging import get_logger
from tuneforge.common.server import TuneforgeServer
from tuneforge.common.settings import Settings
from tuneforge.evaluation.answers import AnswerSource, LocalAnswers, RemoteAnswers
from tuneforge.evaluation.runs import EvalRuns
from tuneforge.evaluation.servicer import EvaluationServicer
from tuneforge.evaluation.suite_store import SuiteStore
from tuneforge.platform import Platform, PlatformComponent, build_server
from tuneforge.v1 import evaluation_pb2, evaluation_pb2_grpc

log = get_logger(__name__)


class EvaluationComponent(PlatformComponent):
    """Hosts EvaluationService on a server."""

    service_names = (evaluation_pb2.DESCRIPTOR.services_by_name["EvaluationService"].full_name,)

    def __init__(self, platform: Platform) -> None:
        super().__init__(platform)
        self.suites = SuiteStore(platform.metadata, platform.artifacts)
        settings = platform.settings.evaluation
        self.runs = EvalRuns(platform.metadata, platform.artifacts, self.suites, settings.concurrency)
        self.remote: RemoteAnswers | None = None
        if settings.inference_address:
            key = settings.inference_api_key.get_secret_value() if settings.inference_api_key else ""
            registry = AdapterRegistry(platform.metadata, platform.artifacts)
            self.remote = RemoteAnswers(settings.inference_address, key, registry)
        self._resumer: asyncio.Task[None] | None = None

    def source(self) -> AnswerSource | None:
        """Where answers come from now: the remote inference service, else this process's, else none yet."""
        if self.remote is not None:
            return self.remote
        local = self.platform.local_inference
        return LocalAnswers(local) if local is not None else None

    def register(self, server: grpc.aio.Server) -> None:
        servicer = EvaluationServicer(self.suites, self.runs, self.source)
        evaluation_pb2_grpc.add_EvaluationServiceServicer_to_server(servicer, server)

    async def start(self) -> None:
        await super().start()
        self._resumer = asyncio.create_task(self._resume(), name="tuneforge-eval-resume")

    async def _resume(self) -> None:
        """Runs left queued or running by a previous process (or a replica that died) continue here.

        Every half lease period the unfinished runs are offered to this replica; `EvalRuns.start` runs
        one only where it gets the run's lease, so each run has one executor among the replicas.
        """
        for _ in range(1200):
            if self.source() is not None:
                break
            await asyncio.sleep(0.5)
        assert self.runs.leases is not None
        while True:
            try:
                unfinished = await asyncio.to_thread(self.runs.unfinished)
                waiting = [i for i in unfinished if i.id not in self.runs.running()]
                for info in waiting:
                    self.runs.start(info, self.source())
                if waiting:
                    log.debug("eval_runs_offered", runs=[i.id for i in waiting])
            except Exception as exc:  # a broken sweep must not end the loop; the next one retries
                log.error("eval_runs_sweep_failed", error=repr(exc))
            await asyncio.sleep(self.runs.leases.ttl_s / 2)

    async def stop(self) -> None:
        if self._resumer is not None:
            self._resumer.cancel()
        await self.runs.stop()
        if self.remote is not None:
            await self.remote.close()


async def create_server(settings: Settings) -> tuple[TuneforgeServer, int]:
    """A server hosting EvaluationService (not yet started)."""
    return await build_server(settings, [EvaluationComponent])

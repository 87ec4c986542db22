"""Where an evaluation run's answers come from: the inference service of this process, or another pod's.

Both sources resolve a run's model names once (an alias is pinned to the version it names when the
run starts) and then generate one answer per call. The remote source speaks the public
InferenceService contract with a `service` API key that names the run's tenant on every call, so
the inference service applies the same tenancy, lineage and limit checks as for the tenant itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from tuneforge.catalog.adapters import AdapterRegistry
from tuneforge.common.auth import ON_BEHALF_HEADER
from tuneforge.common.errors import FailedPrecondition, NotFound, ResourceExhausted, Unavailable
from tuneforge.common.logging import get_logger
from tuneforge.v1 import common_pb2, inference_pb2, inference_pb2_grpc

log = get_logger(__name__)

BASE = "base"
#: Status codes worth another try: the replica is busy, starting or moving.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
RETRIES = 8


def retry_delay_s(base_s: float, attempt: int) -> float:
    """Seconds before retry number `attempt` (from 0): doubling from `base_s`, at most 30."""
    return min(base_s * 2**attempt, 30.0)


@dataclass(frozen=True)
class ResolvedModel:
    """A run's model as it was resolved when the run (re)started."""

    name: str  # as the run names it: `base` or `adapter[:version|alias]`
    ref: str  # what generation asks for: "" for the base model, else `adapter:version`
    display: str  # exact name for reports: the base model's id or `adapter:version`
    dataset_version_id: str  # the adapter's training data (leakage guard); "" for the base model
    target: Any = field(default=None, compare=False, repr=False)  # the local frontend's loaded target


class AnswerSource(Protocol):
    """Generates answers for a tenant's run."""

    #: Requests of one tenant the source serves at once (a run's concurrency is clamped to it);
    #: None where the source cannot know (a remote service: its refusals are retried instead).
    max_concurrency: int | None

    async def resolve(self, tenant: str, model: str, field: str) -> ResolvedModel: ...

    async def answer(
        self, tenant: str, model: ResolvedModel, messages: Sequence[tuple[str, str]], sampling: dict[str, Any]
    ) -> str: ...


def _not_found_as_precondition(model: str, exc: NotFound) -> FailedPrecondition:
    return FailedPrecondition(f"model {model!r}: {exc.message}")


class LocalAnswers:
    """The inference frontend of this process (the embedded default).

    Like the remote path, a request refused because the tenant's requests in flight are at the
    limit (its own chats meanwhile, another run) or because the replica is busy is retried with
    backoff rather than failing the run.
    """

    def __init__(self, frontend: Any, retry_base_s: float = 0.5) -> None:
        self.frontend = frontend
        self.retry_base_s = retry_base_s

    @property
    def max_concurrency(self) -> int | None:
        return self.frontend.limits.max_concurrent_per_tenant

    async def resolve(self, tenant: str, model: str, field: str) -> ResolvedModel:
        try:
            target = await self.frontend.resolve(tenant, "" if model == BASE else model, field=field)
        except NotFound as exc:
            raise _not_found_as_precondition(model, exc) from exc
        version = target.version
        if version is None:
            return ResolvedModel(model, "", target.name, "", target)
        dataset = version.lineage.get("dataset_version_id") or ""
        return ResolvedModel(model, version.ref, version.ref, dataset, target)

    async def answer(
        self, tenant: str, model: ResolvedModel, messages: Sequence[tuple[str, str]], sampling: dict[str, Any]
    ) -> str:
        attempt = 0
        while True:
            try:
                return await self._answer_once(tenant, model, messages, sampling)
            except (ResourceExhausted, Unavailable) as exc:
                if attempt >= RETRIES:
                    raise FailedPrecondition(
                        f"the inference service stayed busy for {model.name} after {RETRIES + 1} tries: {exc.message}"
                    ) from exc
            await asyncio.sleep(retry_delay_s(self.retry_base_s, attempt))
            attempt += 1

    async def _answer_once(
        self, tenant: str, model: ResolvedModel, messages: Sequence[tuple[str, str]], sampling: dict[str, Any]
    ) -> str:
        # the target resolved when the run started: `stream` reloads its adapter if it was evicted since
        prompt = await self.frontend.render_prompt(list(messages), target=model.target)  # its own chat template
        parts = []
        async for event in self.frontend.stream(tenant, model.target, prompt, self.frontend.sampling(**sampling)):
            parts.append(event.delta)
            if event.finish_reason == "error":
                raise FailedPrecondition(f"generation failed for {model.name}: {event.error}")
        return "".join(parts)


class RemoteAnswers:
    """The InferenceService of another pod, called with a `service` key on the run's tenant's behalf."""

    max_concurrency = None  # the other pod's limits are its own: its refusals are retried

    def __init__(self, address: str, api_key: str, registry: AdapterRegistry, retry_base_s: float = 0.5) -> None:
        self.address = address
        self.api_key = api_key
        self.registry = registry
        self.retry_base_s = retry_base_s
        self._channel: grpc.aio.Channel | None = None
        self._base_name = ""

    def _stub(self) -> inference_pb2_grpc.InferenceServiceStub:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.address)
        return inference_pb2_grpc.InferenceServiceStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _call(self, method: str, request: Any, tenant: str, what: str) -> Any:
        """One unary call with the service key on `tenant`'s behalf; busy or unreachable replicas are retried."""
        metadata = (("authorization", f"Bearer {self.api_key}"), (ON_BEHALF_HEADER, tenant))
        attempt = 0
        while True:
            try:
                return await getattr(self._stub(), method)(request, metadata=metadata, timeout=600)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE or attempt >= RETRIES:
                    raise FailedPrecondition(
                        f"inference service at {self.address} answered {exc.code().name} for {what}: {exc.details()}"
                    ) from exc
            await asyncio.sleep(retry_delay_s(self.retry_base_s, attempt))
            attempt += 1

    async def resolve(self, tenant: str, model: str, field: str) -> ResolvedModel:
        if model == BASE:
            if not self._base_name:
                listed = await self._call("ListModels", inference_pb2.ListModelsRequest(), tenant, "the model list")
                self._base_name = next((m.name for m in listed.models if m.is_base), "")
            return ResolvedModel(model, "", self._base_name or BASE, "")
        # the metadata store is shared, so the version is pinned here and generation asks for exactly it
        try:
            version = await asyncio.to_thread(self.registry.resolve, tenant, model, field)
        except NotFound as exc:
            raise _not_found_as_precondition(model, exc) from exc
        return ResolvedModel(model, version.ref, version.ref, version.lineage.get("dataset_version_id") or "")

    async def answer(
        self, tenant: str, model: ResolvedModel, messages: Sequence[tuple[str, str]], sampling: dict[str, Any]
    ) -> str:
        request = inference_pb2.GenerateRequest(
            model=model.ref, messages=[common_pb2.ChatMessage(role=r, content=c) for r, c in messages]
        )
        request.sampling.temperature = sampling.get("temperature", 0.0)
        request.sampling.top_p = sampling.get("top_p", 0.0)
        request.sampling.max_tokens = sampling.get("max_tokens", 0)
        request.sampling.stop.extend(sampling.get("stop", ()))
        if sampling.get("seed") is not None:
            request.sampling.seed = sampling["seed"]
        response = await self._call("Generate", request, tenant, model.name)
        return response.text

"""The gRPC/HTTP fronts in cluster mode: the same InferenceFrontend, with generation on Ray Serve.

With `inference.serve_url` set, the inference service loads no model itself: it renders prompts with
the base model's tokenizer, resolves `model` in the caller's tenant (NOT_FOUND, lineage checks and
limits exactly as in one process), and POSTs the request to the Serve application through Serve's
own HTTP proxy with the resolved version key in the `serve_multiplexed_model_id` header, so Serve
routes it to a replica that already holds that adapter (`wire.py` has the format). The replica
checks the adapter's files when it loads it.

A model version (full fine-tune, merged model) has a Serve application of its own when the chart
deploys it (`inference.serve_models`: `tenant/name:version` → its URL): the front renders the prompt
with that version's own tokenizer and sends the request to that application; a version the chart
does not deploy is FAILED_PRECONDITION naming the values entry that would.

The front never imports Ray. Ray Client cannot carry streaming DeploymentHandles, drops
its session after 30 s without a connection and is not meant for production traffic; the proxy is
Serve's production ingress, is plain HTTP (one aiohttp session, reused) and needs no Ray token.

Readiness follows the backend: every `serve_health_interval_s` the front asks the application's
`/ready` route, and the server reports NOT_SERVING while it does not answer (or serves another base
model than this front's) — unless real answers keep arriving meanwhile: replicas busy decoding may
answer the check late, and a front whose readiness flaps under load drops out of its Service.

A request Serve could not take — connection refused or lost, a 404 (route not there yet) or 5xx from
the proxy, a stream cut before its first token — is retried with backoff for `serve_retry_s`, then
answered UNAVAILABLE; once a token has reached the caller it is never retried. A replica's own
answers (NOT_FOUND, limits) are final; one refusing the serve token is UNAVAILABLE, with what the
operator must fix.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from tuneforge.catalog.adapters import AdapterRegistry, AdapterVersionInfo
from tuneforge.chat import ChatRenderer
from tuneforge.common.errors import FailedPrecondition, TuneforgeError, Unavailable
from tuneforge.common.logging import get_logger
from tuneforge.common.settings import Settings
from tuneforge.inference import wire
from tuneforge.inference.engine import Event, Sampling
from tuneforge.inference.frontend import InferenceFrontend, Limits, Target, run_in
from tuneforge.inference.structured import ResponseFormat
from tuneforge.models import ModelResolver, ResolvedModel, template_hash
from tuneforge.store.artifacts import ArtifactStore

log = get_logger(__name__)

#: Proxy answers (not a replica's) that mean "Serve could not take the request now": the route is not
#: there yet (the app is deploying, a new cluster took over), a replica died, draining, overloaded.
RETRYABLE_STATUS = frozenset({404, 500, 502, 503, 504})
#: Seconds to open a connection to the proxy before the attempt counts as failed.
CONNECT_TIMEOUT_S = 5.0
MAX_BACKOFF_S = 2.0


class _NotTaken(Exception):
    """Serve did not take this attempt (before the first token): safe to retry."""


class _RemoteEngine:
    """What the frontend needs of an engine when the engine runs in Serve replicas."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def has_adapter(self, key: str) -> bool:
        return True  # loading (and checking files) happens in the replica that gets the request

    def decoded(self, key: str) -> bool:
        return True  # likewise

    def loaded(self) -> list[str]:
        return []


class ServeClient:
    """Serve's HTTP proxy, as the front uses it: one aiohttp session for every request and check."""

    def __init__(self, serve_url: str, token: str | None, retry_s: float) -> None:
        self.url = serve_url.rstrip("/")
        self.retry_s = retry_s
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session: aiohttp.ClientSession | None = None
        #: When (event-loop time) a replica's answer last arrived through the proxy.
        self.last_answer = float("-inf")

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                # no total timeout: answers stream for as long as they decode; the caller's deadline bounds them
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
                connector=aiohttp.TCPConnector(limit=0),  # no cap: per-tenant limits bound the front already
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def ready(self, timeout_s: float) -> dict[str, Any]:
        """What the application serves (its `/ready` answer); Unavailable with the reason when it does not answer."""
        try:
            async with self._open().get(
                self.url + wire.READY_PATH, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as response:
                body = await response.read()
                if response.status != 200:
                    raise Unavailable(f"GET {self.url}{wire.READY_PATH} answered {response.status}: {_text(body)}")
                served = json.loads(body)
                if not isinstance(served, dict):
                    raise ValueError(f"not an object: {_text(body)}")
                return served
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise Unavailable(f"GET {self.url}{wire.READY_PATH} failed: {_reason(exc)}") from exc

    async def generate(self, model_id: str, body: dict[str, Any], url: str = "") -> AsyncIterator[Event]:
        """The request's events from a replica, retried while Serve has not taken it (see the module doc).

        `url`: the application to ask (a model version's own); empty: the base model's application.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_s
        delay, attempt = 0.1, 0
        while True:
            attempt += 1
            started = False
            try:
                async for event in self._attempt(model_id, body, url or self.url):
                    started = True
                    yield event
                    if event.finish_reason:
                        return
                raise _NotTaken("the answer ended without its last event")
            except (aiohttp.ClientError, TimeoutError, _NotTaken) as exc:
                if started:
                    raise Unavailable(
                        f"the Serve replica was lost in the middle of the answer ({_reason(exc)}); retry the request"
                    ) from exc
                if loop.time() + delay > deadline:
                    raise Unavailable(
                        f"the inference backend (Ray Serve at {self.url}) did not take the request in {attempt} "
                        f"attempts over {self.retry_s:.0f} s: {_reason(exc)}; retry later"
                    ) from exc
                log.warning("serve_request_retried", attempt=attempt, model_id=model_id, reason=_reason(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)

    async def _attempt(self, model_id: str, body: dict[str, Any], url: str) -> AsyncIterator[Event]:
        headers = {wire.MODEL_ID_HEADER: model_id} if model_id else {}
        async with self._open().post(url + wire.GENERATE_PATH, json=body, headers=headers) as response:
            if response.status != 200:
                text = await response.read()
                try:
                    error = wire.error_from(json.loads(text))
                except ValueError:
                    error = None
                if error is not None and error.status == "UNAUTHENTICATED":
                    raise Unavailable(
                        "the Serve replicas refused this front's serve token: give the front and the Ray pods the "
                        f"same inference.serve_token (TUNEFORGE_INFERENCE__SERVE_TOKEN) ({error.message})"
                    )
                if error is not None:
                    raise error  # the replica's own answer (NOT_FOUND, limits…): final, never retried
                if response.status in RETRYABLE_STATUS:
                    raise _NotTaken(f"the Serve proxy answered {response.status}: {_text(text)}")
                raise Unavailable(
                    f"POST {url}{wire.GENERATE_PATH} answered {response.status}: {_text(text)}; is "
                    "inference.serve_url the Serve application's URL (with its route prefix)?"
                )
            async for line in response.content:
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except ValueError as exc:
                    raise _NotTaken(f"a cut answer line from the Serve proxy: {_text(line)}") from exc
                self.last_answer = asyncio.get_running_loop().time()
                failure = wire.error_from(item)
                if failure is not None:
                    raise failure
                yield wire.event_from(item)


def _text(body: bytes) -> str:
    return body.decode(errors="replace").strip()[:300]


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class ServeFrontend(InferenceFrontend):
    """InferenceFrontend whose requests run on a Ray Serve application, reached through Serve's HTTP proxy."""

    def __init__(
        self,
        client: ServeClient,
        tokenizer: Any,
        base_name: str,
        registry: AdapterRegistry,
        artifacts: ArtifactStore,
        limits: Limits,
        resolver: ModelResolver | None = None,
        model_urls: dict[str, str] | None = None,
    ) -> None:
        super().__init__(_RemoteEngine(tokenizer), base_name, template_hash(tokenizer), registry, artifacts, limits)
        self.client = client
        #: `tenant/name:version` → the URL of the Serve application that serves that model version.
        self.model_urls = {key: url.rstrip("/") for key, url in (model_urls or {}).items()}
        self.resolver = resolver
        self._renderers: dict[str, ChatRenderer] = {}

    def adapter_loaded(self, key: str) -> bool:
        return False  # Serve's multiplexing caches live in the replicas, out of the front's sight

    def model_servable(self, key: str) -> bool:
        return key in self.model_urls

    def model_loaded(self, key: str) -> bool:
        return key in self.model_urls  # its application's replicas hold it for as long as it is deployed

    async def resolve_model(self, tenant: str, version: AdapterVersionInfo, directory: Path) -> Target:
        """A deployed model version: its application's URL and its own chat template for the prompt."""
        key = f"{tenant}/{version.ref}"
        url = self.model_urls.get(key)
        if url is None:
            raise FailedPrecondition(
                f"{version.ref} is a model version ({version.kind}) this cluster does not deploy: add "
                f"{{tenant: {tenant}, model: {version.ref}}} to inference.rayService.models in the chart's values"
            )
        renderer = self._renderers.get(key)
        if renderer is None:
            renderer = await run_in(self.executors.files, self._renderer_of, version, directory)
            self._renderers[key] = renderer
        return Target(version.ref, None, version, directory, model_key=key, renderer=renderer, route=url)

    def _renderer_of(self, version: AdapterVersionInfo, directory: Path) -> ChatRenderer:
        resolver = self.resolver or ModelResolver(directory.parent)
        return ChatRenderer(resolver.load_tokenizer(ResolvedModel(version.ref, str(directory), True, False)))

    async def stream(
        self,
        tenant: str,
        target: Target,
        prompt_ids: list[int],
        sampling: Sampling,
        response_format: ResponseFormat | None = None,
    ) -> AsyncIterator[Event]:
        with self._slot_for(tenant):
            key = f"{tenant}/{target.name}" if target.adapter_key is not None else ""
            # the replica builds the constraint for its engine's tokenizer (the front checked the schema already)
            body = wire.request_body(tenant, prompt_ids, sampling, response_format)
            async for event in self.client.generate(key, body, target.route):
                yield event
                if event.finish_reason:
                    return

    async def sweep_deleted(self) -> int:
        return 0  # replicas drop adapters through Serve's multiplexing LRU

    async def backend_ready(self, timeout_s: float, answered_within_s: float = 0.0) -> tuple[bool, str]:
        """(ready, why not): the Serve application answers and serves this front's base model and template.

        A check that gets no answer does not count while real answers arrived in the last
        `answered_within_s` seconds: replicas busy decoding may answer it late, and readiness must not
        flap (and take the front out of its Service) under load.
        """
        try:
            served = await self.client.ready(timeout_s)
        except TuneforgeError as exc:
            if asyncio.get_running_loop().time() - self.client.last_answer < answered_within_s:
                return True, ""
            return False, exc.message
        base, template = served.get("base_model"), str(served.get("template_hash"))
        if (base, template) != (self.base_name, self.template_hash):
            return False, (
                f"the Serve application serves {base!r} (template {template[:12]}), this front renders prompts "
                f"for {self.base_name!r} (template {self.template_hash[:12]}): give both the same inference.base_model"
            )
        return True, ""

    async def health_updates(self, interval_s: float) -> AsyncIterator[bool]:
        """Whether the backend is ready: now, then at every change (checked every `interval_s`)."""
        last: bool | None = None
        timeout_s = max(3.0, 1.5 * interval_s)
        while True:
            ready, reason = await self.backend_ready(timeout_s, answered_within_s=timeout_s + interval_s)
            if ready != last:
                if ready:
                    log.info("serve_backend_ready", serve_url=self.client.url)
                else:
                    log.warning("serve_backend_unavailable", serve_url=self.client.url, reason=reason)
                last = ready
                yield ready
            await asyncio.sleep(interval_s)

    async def close(self) -> None:
        await self.client.close()
        super().close()


async def connect(
    settings: Settings, resolver: ModelResolver, registry: AdapterRegistry, artifacts: ArtifactStore
) -> ServeFrontend:
    """The front for the Serve application at `inference.serve_url` (its tokenizer loaded, nothing joined)."""
    inference = settings.inference
    assert inference.serve_url is not None
    token = inference.serve_token.get_secret_value() if inference.serve_token is not None else None
    if token is None:
        log.warning("serve_token_unset", detail="requests to the Serve application carry no token")
    resolved = resolver.resolve(inference.base_model, field="inference.base_model")
    tokenizer = await asyncio.to_thread(resolver.load_tokenizer, resolved)
    limits = Limits(inference.max_prompt_tokens, inference.max_new_tokens, inference.max_concurrent_per_tenant)
    client = ServeClient(inference.serve_url, token, inference.serve_retry_s)
    return ServeFrontend(
        client, tokenizer, resolved.name, registry, artifacts, limits, resolver, inference.serve_models
    )

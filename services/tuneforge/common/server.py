"""The asyncio gRPC server every Tuneforge service runs in.

A server hosts one or more *components* (one per service, or all of them for the embedded
`tuneforge up`). It registers the standard health service and reflection, installs the metrics,
error-mapping and auth interceptors, and reports SERVING for a component only once its `start()`
has finished (stores open, models loaded) — and, for a component that depends on a backend it
does not own (the inference front on Ray Serve), only while its `health_updates()` says so. The
server as a whole (service "") is SERVING while every component is, its API keys can be checked and
its metadata database answers. SIGTERM/SIGINT drain it in bounded time: health turns NOT_SERVING,
new calls are refused, streams that follow long work end at once (their clients reconnect with a
cursor), other in-flight calls get `shutdown_grace_s` to finish, then each component stops within
`shutdown_grace_s` too. Work the server handed elsewhere (training jobs on Ray) keeps running; the
next start picks it up.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import NoReturn, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from tuneforge.common.auth import ApiKeyFile, KeyResolver, LocalResolver
from tuneforge.common.interceptors import AuthInterceptor, ErrorMappingInterceptor, MetricsInterceptor
from tuneforge.common.logging import get_logger
from tuneforge.common.settings import Settings

log = get_logger("tuneforge.server")

#: Seconds between checks of the API keys (a broken keys file turns the server's health NOT_SERVING).
KEYS_RECHECK_S = 1.0

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: Threads for the servicers' blocking work (`asyncio.to_thread`: store reads, file I/O). Work that
#: may hang on a dependency (hub model loads) runs on a bounded pool of its own and holds at most a
#: few of these while it waits, so cheap calls always find a thread.
BLOCKING_THREADS = 32
#: Seconds a component gets to stop after SIGTERM however short the grace period.
MIN_COMPONENT_STOP_S = 5.0


class Component(Protocol):
    """One service hosted by a server."""

    #: Fully qualified gRPC service names it serves, e.g. `tuneforge.v1.DatasetService`.
    service_names: tuple[str, ...]

    def register(self, server: grpc.aio.Server) -> None:
        """Adds its servicers to `server`."""

    async def start(self) -> None:
        """Gets ready to serve (open stores, load models); health says SERVING only after this."""

    async def stop(self) -> None:
        """Releases what `start()` acquired."""

    # Optional: `drain(self) -> None`, called when the server starts draining, ends the component's
    # calls that would otherwise run until the grace period is over (streams that follow a job).

    def health_updates(self) -> AsyncIterator[bool] | None:
        """None when started means serving; else whether it can serve now, then at every change."""


def key_resolver(settings: Settings) -> KeyResolver:
    """The credential check the settings ask for; local mode is logged loudly, never implied."""
    if settings.auth.mode == "local":
        log.warning(
            "auth_local_mode",
            tenant=settings.auth.local_tenant,
            detail="single-tenant local mode: every caller acts as this tenant; loopback only",
        )
        return LocalResolver(settings.auth.local_tenant)
    assert settings.auth.keys_file is not None  # enforced by Settings
    resolver = ApiKeyFile(settings.auth.keys_file)
    log.info("auth_api_keys", keys_file=str(settings.auth.keys_file))
    return resolver


class TuneforgeServer:
    """A started or startable gRPC server with its components, health and graceful stop."""

    def __init__(
        self,
        settings: Settings,
        components: Sequence[Component],
        resolver: KeyResolver,
        ping_database: Callable[[], None] | None = None,
    ) -> None:
        """`ping_database` raises while the metadata database cannot be reached (health follows it)."""
        self.settings = settings
        self.components = list(components)
        self.grpc = grpc.aio.server(
            interceptors=[MetricsInterceptor(), ErrorMappingInterceptor(), AuthInterceptor(resolver)],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        names = [health.SERVICE_NAME, reflection.SERVICE_NAME]
        for component in self.components:
            component.register(self.grpc)
            names.extend(component.service_names)
        reflection.enable_server_reflection(names, self.grpc)
        self.port = self.grpc.add_insecure_port(f"{_bind_host(settings.host)}:{settings.port}")
        if self.port == 0:
            raise OSError(f"cannot bind {settings.host}:{settings.port}")
        self._stopped = asyncio.Event()
        self._serving: dict[int, bool] = {}
        self._watchers: list[asyncio.Task[None]] = []
        self.resolver = resolver
        self._keys_problem: str | None = None
        self.ping_database = ping_database
        self._database_problem: str | None = None

    async def start(self) -> None:
        """Starts accepting calls, then starts each component and marks it SERVING when ready."""
        asyncio.get_running_loop().set_default_executor(
            concurrent.futures.ThreadPoolExecutor(BLOCKING_THREADS, thread_name_prefix="tuneforge-blocking")
        )
        for name in self._all_names():
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.grpc.start()
        if self.settings.metrics_port is not None:
            start_http_server(self.settings.metrics_port, addr=_bind_host(self.settings.host))
        log.info("server_listening", host=self.settings.host, port=self.port)
        self._watchers.append(asyncio.create_task(self._watch_keys(), name="tuneforge-keys"))
        if self.ping_database is not None:
            self._watchers.append(asyncio.create_task(self._watch_database(), name="tuneforge-database"))
        # Components get ready concurrently: quick ones serve while a model is still loading.
        await asyncio.gather(*(self._start_component(component) for component in self.components))

    async def _watch_keys(self) -> None:
        """Re-checks the API keys every second: a broken keys file makes the whole server NOT_SERVING."""
        while True:
            problem = await asyncio.to_thread(self.resolver.refresh)
            if problem != self._keys_problem:
                self._keys_problem = problem
                await self._publish_overall()
            await asyncio.sleep(KEYS_RECHECK_S)

    async def _watch_database(self) -> None:
        """Pings the metadata database every second: while it does not answer the server is NOT_SERVING."""
        assert self.ping_database is not None
        while True:
            try:
                await asyncio.to_thread(self.ping_database)
                problem = None
            except Exception as exc:
                problem = getattr(exc, "message", None) or f"the metadata database does not answer: {exc}"
            if problem != self._database_problem:
                if problem is None:
                    log.info("database_reachable")
                else:
                    log.warning("database_unreachable", reason=problem)
                self._database_problem = problem
                for component in self.components:  # every component reads and writes through it
                    if id(component) in self._serving:
                        await self._set_serving(component, self._serving[id(component)])
                await self._publish_overall()
            await asyncio.sleep(KEYS_RECHECK_S)

    async def _start_component(self, component: Component) -> None:
        try:
            await component.start()
        except Exception:
            log.exception("component_start_failed", services=list(component.service_names))
            raise
        updates = component.health_updates()
        if updates is None:
            await self._set_serving(component, True)
            return
        await self._set_serving(component, await anext(updates))
        self._watchers.append(asyncio.create_task(self._follow(component, updates), name="tuneforge-health"))

    async def _follow(self, component: Component, updates: AsyncIterator[bool]) -> None:
        try:
            async for serving in updates:
                await self._set_serving(component, serving)
        except Exception:
            # a health that can no longer follow its backend must not stay SERVING by default
            log.exception("health_updates_failed", services=list(component.service_names))
            await self._set_serving(component, False)

    async def _set_serving(self, component: Component, serving: bool) -> None:
        """Reports the component's services, and the server's overall status (SERVING once all are)."""
        ready = serving and self._database_problem is None
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in component.service_names:
            await self.health.set(name, status)
        self._serving[id(component)] = serving
        await self._publish_overall()
        log.info("serving" if ready else "not_serving", services=list(component.service_names))

    async def _publish_overall(self) -> None:
        """The server as a whole (service ""): SERVING while every component is, API keys can be checked and
        the metadata database answers."""
        everything = len(self._serving) == len(self.components) and all(self._serving.values())
        ready = everything and self._keys_problem is None and self._database_problem is None
        await self.health.set(
            "", health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    def _all_names(self) -> list[str]:
        return ["", *(name for component in self.components for name in component.service_names)]

    async def stop(self, grace: float | None = None, bounded: bool = False) -> None:
        """Drains: NOT_SERVING first (so balancers move away), then in-flight calls get `grace` (default
        `shutdown_grace_s`) to finish; then the components stop, each within as long when `bounded`."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        began = time.monotonic()
        await self.health.enter_graceful_shutdown()
        for watcher in self._watchers:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        grace = self.settings.shutdown_grace_s if grace is None else grace
        log.info("server_stopping", grace_s=grace)
        for component in self.components:
            drain = getattr(component, "drain", None)
            if drain is not None:
                drain()
        await self.grpc.stop(grace)
        for component in reversed(self.components):
            try:
                await asyncio.wait_for(component.stop(), max(grace, MIN_COMPONENT_STOP_S) if bounded else None)
            except TimeoutError:
                log.warning("component_stop_timed_out", services=list(component.service_names), grace_s=grace)
        log.info("server_stopped", seconds=round(time.monotonic() - began, 2))

    async def serve_until_signal(self) -> None:
        """Runs until SIGTERM or SIGINT, then stops gracefully."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_requested.set)
        await self.start()
        await stop_requested.wait()
        await self.stop(bounded=True)


def exit_process(code: int = 0) -> NoReturn:
    """Ends a server process whose server has stopped, without the interpreter's teardown.

    After a drain nothing is left to do, but unloading torch, Ray and gRPC takes seconds (7 s for
    the training service on a busy machine), which would put the exit past the drain bound that
    SIGTERM promises. Exit handlers still run, and every log line is flushed first.
    """
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _bind_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host

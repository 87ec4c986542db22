"""What one Tuneforge process shares between the services it hosts (settings, stores, models), and
the bootstrap that builds a server of service components over one Platform."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Sequence
from typing import Any

from tuneforge.common.logging import get_logger
from tuneforge.common.server import TuneforgeServer, key_resolver
from tuneforge.common.settings import Settings
from tuneforge.models import ModelResolver
from tuneforge.store.artifacts import ArtifactStore, use_private_umask
from tuneforge.store.metadata import MetadataStore

log = get_logger(__name__)


class Platform:
    """Opened once per process (migrations run, stale temp files swept), then shared by components."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        assert settings.database_url is not None and settings.artifact_root is not None
        use_private_umask()  # before any store file, worker or Ray head exists: all of them owner-only
        self.metadata = MetadataStore(settings.database_url)
        self.artifacts = ArtifactStore(settings.artifact_root)
        self.models = ModelResolver(
            settings.models.cache_dir,
            settings.models.trust_remote_code,
            hub_timeout_s=settings.models.hub_timeout_s,
            hub_concurrency=settings.models.hub_concurrency,
        )
        #: The inference frontend this process serves, once it is serving (None in a process without
        #: one): what the evaluation service generates through when no inference address is set.
        #: Components reach each other's collaborators here, never through imports of each other.
        self.local_inference: Any = None
        self._opened = False
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        """Migrates the metadata schema and sweeps abandoned temp files; idempotent."""
        async with self._lock:
            if self._opened:
                return
            revision = await asyncio.to_thread(self.metadata.migrate)
            swept = await asyncio.to_thread(self.artifacts.sweep_temp)
            log.info(
                "platform_open",
                database=self.metadata.safe_url,
                schema_revision=revision,
                artifact_root=str(self.artifacts.root),
                swept_temp_files=swept,
            )
            self._opened = True

    def close(self) -> None:
        self.metadata.close()


class PlatformComponent:
    """Base of the service components: holds the shared Platform and opens it on start.

    Subclasses name their gRPC services in `service_names` and add their servicers in `register()`;
    those that load more (models) extend `start()`.
    """

    service_names: tuple[str, ...] = ()

    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    def register(self, server: object) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        await self.platform.open()

    async def stop(self) -> None:
        return None

    def health_updates(self) -> AsyncIterator[bool] | None:
        """Serving as soon as `start()` returns, unless a subclass follows a backend it depends on."""
        return None


async def build_server(settings: Settings, component_types: Sequence[type]) -> tuple[TuneforgeServer, int]:
    """A server (not yet started) hosting one component of each type over one shared Platform."""
    platform = Platform(settings)
    server = TuneforgeServer(
        settings, [kind(platform) for kind in component_types], key_resolver(settings), platform.metadata.ping
    )
    return server, server.port


class BackgroundServer:
    """A server running on its own event loop in a daemon thread, for tests, benchmarks and notebooks.

    Synchronous gRPC clients can then call it from the current thread without blocking its loop.
    """

    def __init__(
        self, settings: Settings, component_types: Sequence[type], start_timeout: float | None = 600.0
    ) -> None:
        """Builds the server (its port is bound) and, unless `start_timeout` is None, starts it and waits."""
        import threading

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tuneforge-server", daemon=True)
        self._thread.start()
        self.server, self.port = asyncio.run_coroutine_threadsafe(
            build_server(settings, component_types), self.loop
        ).result()
        if start_timeout is not None:
            self.begin_start().result(start_timeout)

    def begin_start(self) -> concurrent.futures.Future[None]:
        """Starts the server; the future completes once every component is SERVING."""
        return asyncio.run_coroutine_threadsafe(self.server.start(), self.loop)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float = 0.0) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

"""Shared fixtures: one keys file, one server with every service (tiny-qwen2 as base model) per session.

One Ray head per session, started lazily by the first test that needs Ray; `make test-fast`
(TUNEFORGE_TEST_WITHOUT_RAY=1) fails any test that starts Ray instead of being marked `slow`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

if TYPE_CHECKING:
    from tuneforge.client import TuneforgeClient
    from tuneforge.common.settings import Settings
    from tuneforge.platform import BackgroundServer
    from tuneforge.training.cluster import LocalRayHead

# The platform's modules are imported where a fixture needs them, not here: the GPU tier
# (tests/test_training_gpu.py) runs on machines that carry only the training stack.

ACME_KEY = "tf_acme_key_0123456789abcdef"
GLOBEX_KEY = "tf_globex_key_0123456789abcdef"
SERVICE_KEY = "tf_service_key_0123456789abcdef"  # the evaluation pods' key for the inference service
MODEL_CACHE = Path(os.environ.get("TUNEFORGE_TEST_MODEL_CACHE", "~/.cache/tuneforge/models")).expanduser()
POSTGRES_URL = os.environ.get("TUNEFORGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
#: Where the session's Ray head keeps its state and token. Ray reads its auth mode and whether it
#: runs as a single machine once per process (at import), so what this process needs to reach the
#: head is set here, before any test module imports ray; the head writes the token when it starts.
RAY_HEAD_DIR = Path(tempfile.mkdtemp(prefix="tuneforge-test-ray-")).resolve() / "ray"


def _reach_session_head() -> None:
    try:
        from tuneforge.training.cluster import LocalRayHead
    except ImportError:  # the GPU tier's machines carry only the training stack (no structlog, no Ray head)
        return
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ.update(LocalRayHead(RAY_HEAD_DIR).job_env())


_reach_session_head()


@pytest.fixture(scope="session")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tuneforge.common.auth import hash_key

    path = tmp_path_factory.mktemp("auth") / "keys.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "keys": [
                    {"sha256": hash_key(ACME_KEY), "tenant": "acme", "role": "member", "name": "acme-ci"},
                    {"key": GLOBEX_KEY, "tenant": "globex", "role": "admin", "name": "globex-admin"},
                    {"sha256": hash_key(SERVICE_KEY), "role": "service", "name": "evaluation"},
                ]
            }
        )
    )
    return path


def make_settings(home: Path, keys_file: Path, **overrides: object) -> Settings:
    """Settings for a test server: its own home, API keys, shared model cache, tiny model, any port."""
    from tuneforge.common.settings import load_settings

    values: dict[str, object] = {
        "home": home,
        "port": 0,
        "auth": {"mode": "api_keys", "keys_file": str(keys_file)},
        "models": {"cache_dir": str(MODEL_CACHE), "hub_timeout_s": 3},  # no hub here: fail fast
        "inference": {"base_model": "tiny-qwen2", "max_adapters": 3, "http_port": 0},
        "log_format": "console",
    }
    values.update(overrides)
    return load_settings(None, **values)


#: Set by `make test-fast`: nothing in the session may start Ray (a test that needs it is marked `slow`).
WITHOUT_RAY = os.environ.get("TUNEFORGE_TEST_WITHOUT_RAY", "") not in ("", "0")
#: `training.ray_address` of the test servers: the session head, started when a job first reaches it.
SESSION_RAY = "http://127.0.0.1:9/tuneforge-test-session-head"
_session_head_lock = threading.Lock()
_session_head: LocalRayHead | None = None
#: Calls for the session head that a test-fast run refused (a server thread's refusal only gets logged).
_refused_ray: list[str] = []


class RayStartedWithoutRay(RuntimeError):
    """A test-fast run (TUNEFORGE_TEST_WITHOUT_RAY) reached Ray: the test needs the `slow` mark."""


def session_ray_head() -> LocalRayHead:
    """The session's one Ray head, started on first use (thread-safe: the job runner asks from its thread).

    Most tests never submit a job: starting the head (~10 s on 2 cores, and two cores of Ray
    processes for the rest of the session) only when something needs it keeps them fast.
    """
    global _session_head
    with _session_head_lock:
        if _session_head is None:
            if WITHOUT_RAY:
                _refused_ray.append(threading.current_thread().name)
                raise RayStartedWithoutRay("this test needs Ray: mark it `slow` (test-fast runs without Ray)")
            from tuneforge.training.cluster import LocalRayHead

            head = LocalRayHead(RAY_HEAD_DIR, num_cpus=2)
            address = head.ensure()
            assert all(os.environ.get(name) == value for name, value in head.job_env().items())
            # every server the tests start in this process submits here instead of starting a head of its own
            os.environ["RAY_ADDRESS"] = address
            _session_head = head
        return _session_head


#: Fixtures that start Ray: a test using one is `slow` whether or not its module says so.
RAY_FIXTURES = frozenset({"ray_cluster", "ray_head", "local_ray"})


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by mark
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks the tests that use the session's Ray head `slow`, and runs their modules last, the longest first.

    The head then starts only after the tests that start Ray clusters of their own (the demo, the
    topology): on 2 cores, two clusters at once slow both down. Whole modules move, in their own
    order, so module-scoped fixtures are still set up once.
    """
    ray_modules = set()
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
            ray_modules.add(item.module)

    def order(item: pytest.Item) -> tuple[int, bool]:
        name = Path(str(item.fspath)).name
        rank = LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
        return rank, getattr(item, "module", None) in ray_modules

    items.sort(key=order)  # stable: the order is kept otherwise


#: Modules that take minutes, started first: `make test` hands whole modules to two worker processes in
#: this order (`-n 2 --dist loadfile --no-loadscope-reorder`); one started last would end the run alone.
LONGEST_FIRST = ("test_processes.py", "test_control_plane_restart.py", "test_topology.py", "test_curation_builds.py")


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _session_head is not None:
        os.environ.pop("RAY_ADDRESS", None)
        _session_head.stop()
    shutil.rmtree(RAY_HEAD_DIR.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def lazy_session_ray() -> Iterator[None]:
    """Job runners configured with `SESSION_RAY` reach the session head, started on their first Ray call.

    Servers built from `make_settings` with the training service need it (`server_settings` does).
    """
    from tuneforge.training import runner
    from tuneforge.training.cluster import RayJobs, ray_auth_headers

    class SessionRayJobs(RayJobs):
        """`RayJobs` of the session head; its Job API client (and so the head) is made on first use."""

        def __init__(self, address: str, token_path: Path | None = None) -> None:
            if address != SESSION_RAY:
                super().__init__(address, token_path)
                return
            self.address = address  # loopback, as the real head's: jobs run with this interpreter
            self._client_lock = threading.Lock()

        def __getattr__(self, name: str) -> object:
            if name != "client":
                raise AttributeError(name)
            with self._client_lock:
                if "client" not in self.__dict__:
                    from ray.job_submission import JobSubmissionClient

                    head = session_ray_head()
                    self.address = os.environ["RAY_ADDRESS"]
                    self.client = JobSubmissionClient(self.address, headers=ray_auth_headers(head.token_path))
            return self.__dict__["client"]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "RayJobs", SessionRayJobs)
        yield


@pytest.fixture(autouse=True)
def _no_ray_in_test_fast(request: pytest.FixtureRequest) -> Iterator[None]:
    """In a test-fast run, a test that left a Ray process behind (any head, not only the session's) fails."""
    yield
    if not WITHOUT_RAY:
        return
    refused, _refused_ray[:] = list(_refused_ray), []
    assert not refused, f"{request.node.nodeid} wanted the session's Ray head (from {refused}): mark it `slow`"
    import psutil

    names = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):  # it ended meanwhile
            names.append(child.name())
    ray = sorted({name for name in names if name in ("gcs_server", "raylet")})
    assert not ray, f"{request.node.nodeid} started Ray ({', '.join(ray)}): mark it `slow`"


@pytest.fixture(scope="session")
def ray_cluster() -> LocalRayHead:
    """One Ray head for the whole session: training jobs (Job Submission API) and this process's Ray work.

    It is the head the service starts (loopback only, Ray token auth); this process and the servers
    it starts reach it with its token, as Ray's own variables name it.
    """
    return session_ray_head()


@pytest.fixture(scope="session")
def ray_head(ray_cluster: LocalRayHead) -> str:
    """The session head's dashboard URL (what `training.ray_address` names)."""
    return os.environ["RAY_ADDRESS"]


@pytest.fixture(scope="session")
def server_settings(tmp_path_factory: pytest.TempPathFactory, keys_file: Path, lazy_session_ray: None) -> Settings:
    """The session server's settings; its jobs go to the session head (`SESSION_RAY`), started by the first one."""
    return make_settings(
        tmp_path_factory.mktemp("home"),
        keys_file,
        max_upload_bytes=256 * 1024,
        training={"ray_address": SESSION_RAY, "poll_interval_s": 0.3},
    )


@pytest.fixture(scope="session")
def platform_server(server_settings: Settings) -> Iterator[BackgroundServer]:
    """Every service in one server on a free loopback port, as `tuneforge up` runs them."""
    from tuneforge.platform import BackgroundServer
    from tuneforge.services import COMPONENTS

    server = BackgroundServer(server_settings, list(COMPONENTS.values()))
    yield server
    server.stop()


@pytest.fixture()
def acme(platform_server: BackgroundServer) -> Iterator[TuneforgeClient]:
    from tuneforge.client import TuneforgeClient

    with TuneforgeClient(platform_server.address, api_key=ACME_KEY) as client:
        yield client


@pytest.fixture()
def globex(platform_server: BackgroundServer) -> Iterator[TuneforgeClient]:
    from tuneforge.client import TuneforgeClient

    with TuneforgeClient(platform_server.address, api_key=GLOBEX_KEY) as client:
        yield client


@pytest.fixture()
def anonymous(platform_server: BackgroundServer) -> Iterator[TuneforgeClient]:
    from tuneforge.client import TuneforgeClient

    with TuneforgeClient(platform_server.address) as client:
        yield client


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The PostgreSQL server's URL; the tests that need it are skipped where none is reachable."""
    from sqlalchemy import create_engine, text

    admin = create_engine(POSTGRES_URL)
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        pytest.skip(
            f"PostgreSQL tests skipped: no server at {POSTGRES_URL} ({type(exc).__name__}); "
            "set TUNEFORGE_TEST_POSTGRES_URL to run them"
        )
    finally:
        admin.dispose()
    yield POSTGRES_URL


@pytest.fixture()
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A private, empty schema on the PostgreSQL server for one test, dropped afterwards."""
    from sqlalchemy import create_engine, text

    admin = create_engine(postgres_server)
    schema = f"tf_test_{uuid.uuid4().hex[:10]}"
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in postgres_server else "?"
    try:
        yield f"{postgres_server}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs against the embedded SQLite file and against PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'metadata.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def local_ray(ray_cluster) -> Iterator[None]:
    """This process as a driver of the session's Ray head (one cluster for the whole test session)."""
    import ray

    ray.init(address=ray_cluster.gcs_address(), log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()

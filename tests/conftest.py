"""Shared fixtures: one keys file, one server with every service (tiny-qwen2 as base model) per session."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

if TYPE_CHECKING:
    from tuneforge.client import TuneforgeClient
    from tuneforge.common.server import BackgroundServer
    from tuneforge.common.settings import Settings

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


@pytest.fixture(scope="session")
def ray_cluster():  # -> Iterator[LocalRayHead]
    """One Ray head for the whole session: training jobs (Job Submission API) and this process's Ray work.

    It is the head the service starts (loopback only, Ray token auth); this process and the servers
    it starts reach it with its token, as Ray's own variables name it.
    """
    from tuneforge.training.cluster import LocalRayHead

    head = LocalRayHead(RAY_HEAD_DIR, num_cpus=2)
    address = head.ensure()
    assert all(os.environ.get(name) == value for name, value in head.job_env().items())
    # every server the tests start in this process submits here instead of starting a head of its own
    os.environ["RAY_ADDRESS"] = address
    yield head
    os.environ.pop("RAY_ADDRESS", None)
    head.stop()
    shutil.rmtree(RAY_HEAD_DIR.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_head(ray_cluster) -> str:
    """The session head's dashboard URL (what `training.ray_address` names)."""
    return os.environ["RAY_ADDRESS"]


@pytest.fixture(scope="session")
def server_settings(tmp_path_factory: pytest.TempPathFactory, keys_file: Path, ray_head: str) -> Settings:
    return make_settings(
        tmp_path_factory.mktemp("home"),
        keys_file,
        max_upload_bytes=256 * 1024,
        training={"ray_address": ray_head, "poll_interval_s": 0.3},
    )


@pytest.fixture(scope="session")
def platform_server(server_settings: Settings) -> Iterator[BackgroundServer]:
    """Every service in one server on a free loopback port, as `tuneforge up` runs them."""
    from tuneforge.common.server import BackgroundServer
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

"""Dataset builds at their crash edges, with real server and worker processes (`tuneforge serve curation`).

One build per version (a lease), even across a SIGKILLed server whose worker lives on; a worker
killed by a signal fails its version with the cause while the server runs; cancel stops the
worker; staging of dead builds is removed as soon as their lease is found expired.

A build is held at a gate (after the pipeline, before publishing) by a `sitecustomize` that these
tests put on the servers' PYTHONPATH, so every step waits for a state, never for a duration.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ACME_KEY, GLOBEX_KEY, MODEL_CACHE

from tuneforge.client import TuneforgeClient, TuneforgeError
from tuneforge.v1 import curation_pb2

DEMO = Path(__file__).resolve().parents[1] / "services" / "tuneforge" / "demo_data"
PROCESSING = curation_pb2.DATASET_VERSION_STATE_PROCESSING
READY = curation_pb2.DATASET_VERSION_STATE_READY
FAILED = curation_pb2.DATASET_VERSION_STATE_FAILED
CANCELLED = curation_pb2.DATASET_VERSION_STATE_CANCELLED
DEADLINE_S = 180.0

#: Holds every build after its pipeline ran, before it publishes, until `<gate>/open` exists; a
#: held build says so in `<gate>/<version id>.<pid>.waiting`.
GATE_SITECUSTOMIZE = """
import os
from pathlib import Path

_GATE = os.environ.get("TEST_BUILD_GATE")
if _GATE:
    import time

    import tuneforge.curation.pipeline as _pipeline

    _curate = _pipeline.curate

    def _gated_curate(*args, **kwargs):
        result = _curate(*args, **kwargs)
        gate = Path(_GATE)
        (gate / f"{kwargs['metadata']['version_id']}.{os.getpid()}.waiting").touch()
        while not (gate / "open").exists():
            time.sleep(0.05)
        return result

    _pipeline.curate = _gated_curate
"""


def wait_for(what: str, condition: Callable[[], Any], deadline_s: float = DEADLINE_S) -> Any:
    """Polls `condition` until it returns something truthy; fails naming `what` after the deadline."""
    deadline = time.monotonic() + deadline_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


class CurationServer:
    """`tuneforge serve curation` on a home directory, its JSON log in a file (read, never piped)."""

    def __init__(self, home: Path, keys_file: Path, gate: Path, name: str, **settings: str) -> None:
        self.home = home
        self.log_path = home.parent / f"{name}.log"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(gate.parent / "site"), os.environ.get("PYTHONPATH", "")]),
            "TEST_BUILD_GATE": str(gate),
            "TUNEFORGE_AUTH__KEYS_FILE": str(keys_file),
            "TUNEFORGE_MODELS__CACHE_DIR": str(MODEL_CACHE),
            "TUNEFORGE_MODELS__HUB_TIMEOUT_S": "3",
            "TUNEFORGE_LOG_FORMAT": "json",
            **{f"TUNEFORGE_CURATION__{key.upper()}": value for key, value in settings.items()},
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tuneforge.cli", "serve", "curation", "--port", "0", "--home", str(home)],
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group: a test can kill it with its workers
            )
        self.port = wait_for(f"{name} to listen", lambda: self._port(name))

    def _port(self, name: str) -> int:
        if self.process.poll() is not None:
            raise AssertionError(f"{name} exited with {self.process.returncode}:\n{self.log_path.read_text()}")
        return next((r["port"] for r in self.records("server_listening")), 0)

    def records(self, event: str) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == event:
                found.append(record)
        return found

    def client(self, key: str = ACME_KEY) -> TuneforgeClient:
        client = TuneforgeClient(f"127.0.0.1:{self.port}", api_key=key)
        client.wait_until_serving(["tuneforge.v1.DatasetService"], timeout=120)
        return client

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture()
def gate(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(GATE_SITECUSTOMIZE)
    gate = tmp_path / "gate"
    gate.mkdir()
    return gate


@pytest.fixture()
def servers(tmp_path: Path, keys_file: Path, gate: Path) -> Iterator[Callable[..., CurationServer]]:
    """Starts servers on one home; at teardown stops them and kills whatever of their groups is left."""
    started: list[CurationServer] = []

    def start(name: str, **settings: str) -> CurationServer:
        server = CurationServer(tmp_path / "home", keys_file, gate, name, **settings)
        started.append(server)
        return server

    yield start
    (gate / "open").touch()
    for server in started:
        server.stop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGKILL)  # workers that outlived their server


def held_builds(gate: Path, version_id: str) -> list[int]:
    """Pids of the workers of `version_id` that reached the gate (each once)."""
    return sorted(int(p.name.split(".")[1]) for p in gate.glob(f"{version_id}.*.waiting"))


def staging(home: Path, version_id: str) -> list[Path]:
    return sorted((home / "artifacts" / ".tmp").glob(f"dir-build-*.{version_id}-*"))


def create(client: TuneforgeClient, dataset: str) -> curation_pb2.DatasetVersion:
    files = [client.upload_file(DEMO / "translation_alpaca.jsonl").id]
    return client.create_dataset_version(dataset, files, "tiny-qwen2", validation_fraction=0.2, max_seq_len=512)


def test_a_restarted_server_adopts_the_build_its_killed_predecessor_left_running(
    servers: Callable[..., CurationServer], gate: Path
) -> None:
    first = servers("first")
    with first.client() as client:
        version = create(client, "adopted")
    [worker] = wait_for("the build to reach the gate", lambda: held_builds(gate, version.id))
    first.process.send_signal(signal.SIGKILL)  # the server only: its worker lives on, holding the lease
    first.process.wait()
    assert alive(worker)

    second = servers("second")
    with second.client() as client:
        adopted = wait_for("the adoption", lambda: second.records("dataset_build_adopted"))
        assert [r["version"] for r in adopted] == [version.id]
        assert second.records("dataset_build_started") == []  # no second build of the version
        assert client.get_dataset_version(version.id).state == PROCESSING
        seen = [client.get_dataset_version(version.id)]
        (gate / "open").touch()

        def ready() -> bool:
            seen.append(client.get_dataset_version(version.id))
            return seen[-1].state != PROCESSING

        wait_for("the adopted build to finish", ready)
        assert seen[-1].state == READY, seen[-1].failure_reason
        published = second.home / "artifacts" / "tenants" / "acme" / "datasets" / version.id
        inode = published.stat().st_ino
        wait_for("the adopted worker to exit", lambda: not alive(worker))
        processed = [v.bytes_processed for v in seen]
        assert processed == sorted(processed) and processed[-1] == seen[-1].bytes_total  # never backwards
    second.stop()  # a second build, had one started, would be stopped (or have published) by now
    assert held_builds(gate, version.id) == [worker]  # only one build ever ran the pipeline
    assert second.records("dataset_build_started") == []
    assert published.stat().st_ino == inode  # the READY version's directory was never replaced
    assert staging(second.home, version.id) == []


def test_cancelling_an_adopted_build_stops_the_worker_another_server_started(
    servers: Callable[..., CurationServer], gate: Path
) -> None:
    first = servers("first", build_lease_ttl_s="3")
    with first.client() as client:
        version = create(client, "adopted-cancel")
    [worker] = wait_for("the build to reach the gate", lambda: held_builds(gate, version.id))
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()

    second = servers("second", build_lease_ttl_s="3")
    with second.client() as client:
        wait_for("the adoption", lambda: second.records("dataset_build_adopted"))
        assert client.cancel_dataset_version(version.id).state == CANCELLED
        # not its child: the worker finds its version cancelled when it next renews its lease
        wait_for("the adopted worker to stop", lambda: not alive(worker))
        assert staging(second.home, version.id) == []
        assert client.get_dataset_version(version.id).state == CANCELLED
    assert held_builds(gate, version.id) == [worker]


def test_a_build_whose_worker_died_with_its_server_is_built_again_cleanly(
    servers: Callable[..., CurationServer], gate: Path
) -> None:
    first = servers("first", build_lease_ttl_s="2")
    with first.client() as client:
        version = create(client, "orphaned")
    [worker] = wait_for("the build to reach the gate", lambda: held_builds(gate, version.id))
    [stale] = staging(first.home, version.id)
    # server and worker at once (the worker leads a process group of its own): the lease is left to expire
    os.killpg(first.process.pid, signal.SIGKILL)
    os.killpg(worker, signal.SIGKILL)
    first.process.wait()
    (gate / "open").touch()

    second = servers("second", build_lease_ttl_s="2")
    with second.client() as client:
        done = client.wait_for_dataset_version(version.id, timeout=DEADLINE_S)
    assert done.state == READY, done.failure_reason
    assert [r["version"] for r in second.records("dataset_build_resumed")] == [version.id]
    assert not stale.exists() and staging(second.home, version.id) == []


def test_a_killed_worker_fails_its_version_with_the_cause_and_it_can_be_rebuilt(
    servers: Callable[..., CurationServer], gate: Path
) -> None:
    server = servers("server")
    with server.client() as client:
        version = create(client, "killed")
        [worker] = wait_for("the build to reach the gate", lambda: held_builds(gate, version.id))
        assert staging(server.home, version.id)
        os.kill(worker, signal.SIGKILL)  # what the kernel's out-of-memory killer sends
        failed = wait_for(
            "the version to fail",
            lambda: (v := client.get_dataset_version(version.id)).state != PROCESSING and v,
        )
        assert failed.state == FAILED
        assert "killed by signal 9 (SIGKILL)" in failed.failure_reason
        assert "out-of-memory" in failed.failure_reason
        assert staging(server.home, version.id) == []

        client.call(
            client.datasets.DeleteDatasetVersion,
            curation_pb2.DeleteDatasetVersionRequest(dataset_version_id=version.id),
        )
        (gate / "open").touch()
        again = create(client, "killed")
        assert again.id == version.id and again.state == PROCESSING
        rebuilt = client.wait_for_dataset_version(version.id, timeout=DEADLINE_S)
        assert rebuilt.state == READY, rebuilt.failure_reason
        assert rebuilt.counts.records_in > 0


def test_cancel_stops_the_worker_and_removes_its_staging_for_its_tenant_only(
    servers: Callable[..., CurationServer], gate: Path
) -> None:
    server = servers("server")
    with server.client() as client, server.client(GLOBEX_KEY) as globex:
        version = create(client, "cancelled")
        [worker] = wait_for("the build to reach the gate", lambda: held_builds(gate, version.id))
        with pytest.raises(TuneforgeError) as info:
            globex.cancel_dataset_version(version.id)
        assert info.value.code == "NOT_FOUND"
        assert client.get_dataset_version(version.id).state == PROCESSING

        cli = subprocess.run(
            [sys.executable, "-m", "tuneforge.cli", "datasets", "cancel", version.id],
            env={**os.environ, "TUNEFORGE_ADDRESS": f"127.0.0.1:{server.port}", "TUNEFORGE_API_KEY": ACME_KEY},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert cli.returncode == 0, cli.stderr
        assert version.id in cli.stdout and "cancelled" in cli.stdout and "(cancelled by acme-ci)" in cli.stdout
        cancelled = client.get_dataset_version(version.id)
        assert cancelled.state == CANCELLED and cancelled.failure_reason == "cancelled by acme-ci"
        assert not alive(worker)
        assert staging(server.home, version.id) == []
        assert client.get_dataset_version(version.id).state == CANCELLED
        with pytest.raises(TuneforgeError) as info:
            client.cancel_dataset_version(version.id)
        assert info.value.code == "FAILED_PRECONDITION"
        with pytest.raises(TuneforgeError) as info:
            client.call(
                client.datasets.GetDatasetReport, curation_pb2.GetDatasetReportRequest(dataset_version_id=version.id)
            )
        assert info.value.code == "FAILED_PRECONDITION"
        client.call(
            client.datasets.DeleteDatasetVersion,
            curation_pb2.DeleteDatasetVersionRequest(dataset_version_id=version.id),
        )
    assert not (server.home / "artifacts" / "tenants" / "acme" / "datasets" / version.id).exists()


def test_supervision_removes_only_the_staging_of_builds_whose_lease_expired(tmp_path: Path) -> None:
    from datetime import timedelta

    from tuneforge.curation.runner import BuildRunner
    from tuneforge.curation.worker import WorkerConfig, build_lease_name
    from tuneforge.store.artifacts import ArtifactStore
    from tuneforge.store.leases import Leases
    from tuneforge.store.metadata import MetadataStore
    from tuneforge.store.tables import LeaseRow, utcnow

    url = f"sqlite:///{tmp_path / 'metadata.db'}"
    metadata = MetadataStore(url)
    metadata.migrate()
    artifacts = ArtifactStore(tmp_path / "artifacts")
    live, dead = "dsv-" + "a" * 24, "dsv-" + "b" * 24
    live_staging = artifacts.make_temp_dir(f"build-acme.{live}")
    dead_staging = artifacts.make_temp_dir(f"build-globex.{dead}")
    unrelated = artifacts.make_temp_dir("upload")
    assert Leases(metadata, holder="elsewhere:1:build").acquire(build_lease_name("acme", live))
    with metadata.session() as session:  # a worker that died an hour ago, its lease long expired
        past = utcnow() - timedelta(hours=1)
        session.add(
            LeaseRow(name=build_lease_name("globex", dead), holder="gone:2:build", acquired_at=past, expires_at=past)
        )
    runner = BuildRunner(WorkerConfig(url, str(artifacts.root), str(MODEL_CACHE)), metadata, artifacts)
    runner.supervise()
    assert live_staging.exists() and unrelated.exists()  # a live build's staging is never touched
    assert not dead_staging.exists()  # not after 24 hours: at the first pass that finds the lease expired
    assert Leases(metadata).holder_of(build_lease_name("globex", dead)) is None  # the cleanup's lease is given back
    metadata.close()


def test_a_database_blip_does_not_stop_a_build_but_a_lease_unrenewed_past_its_ttl_does(tmp_path: Path) -> None:
    """The build checks its lease every progress step: a moment without the database goes by (the lease
    outlives it), a database gone for the lease's whole TTL stops the build (another replica may
    have taken the version over by then)."""
    from sqlalchemy.exc import OperationalError

    from tuneforge.curation.worker import BuildStopped, LeaseKeeper, build_lease_name
    from tuneforge.store.leases import Leases
    from tuneforge.store.metadata import MetadataStore

    metadata = MetadataStore(f"sqlite:///{tmp_path / 'm.db'}")
    metadata.migrate()
    leases = Leases(metadata, ttl_s=30)
    assert leases.acquire(build_lease_name("acme", "dsv-" + "a" * 24))
    keeper = LeaseKeeper(leases, metadata, "acme", "dsv-" + "a" * 24)

    def unreachable(name: str) -> bool:
        raise OperationalError("SELECT 1", {}, Exception("could not connect to server"))

    leases.acquire = unreachable  # type: ignore[method-assign]
    keeper.check()  # a blip: the build goes on
    keeper._renewed_at -= 31  # as if the database had been gone for longer than the lease lasts
    with pytest.raises(BuildStopped, match=r"could not be renewed for 3\d s"):
        keeper.check()
    metadata.close()

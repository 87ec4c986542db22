"""The job runner's own rules, against a stand-in for Ray's Job Submission API; the local head's reuse and lock-down."""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import json
import shlex
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from conftest import MODEL_CACHE

from tuneforge.catalog.adapters import AdapterRegistry
from tuneforge.common.settings import load_settings
from tuneforge.models import ModelResolver
from tuneforge.store.artifacts import ArtifactStore
from tuneforge.store.leases import Leases
from tuneforge.store.metadata import MetadataStore
from tuneforge.training import cluster
from tuneforge.training.cluster import LocalRayHead, RayJobs, SubmissionStatus
from tuneforge.training.job_store import FAILED, QUEUED, RUNNING, JobStore
from tuneforge.training.jobs import JobSpecInput
from tuneforge.training.runner import JobRunner


class FakeRay:
    """Records submissions; every submission stays PENDING until told otherwise."""

    address = "http://127.0.0.1:1"

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.statuses: dict[str, str] = {}

    def submit(self, submission_id: str, entrypoint: str, env: dict[str, str]) -> None:
        self.submitted.append(submission_id)
        self.statuses[submission_id] = "PENDING"

    def status(self, submission_id: str) -> SubmissionStatus | None:
        state = self.statuses.get(submission_id)
        return SubmissionStatus(state, "") if state else None

    def stop(self, submission_id: str) -> None:
        self.statuses[submission_id] = "STOPPED"

    def logs(self, submission_id: str) -> str:
        return "ValueError: the training program broke\n"


def _runner(
    home: Path, database_url: str | None = None, lease_ttl_s: float = 30.0, **training: object
) -> tuple[JobRunner, JobStore, MetadataStore]:
    """A runner over a store in `home` (or at `database_url`), not yet connected to any Ray."""
    settings = load_settings(
        None,
        home=home,
        database_url=database_url,
        auth={"mode": "local"},
        models={"cache_dir": str(MODEL_CACHE)},
        training=training,
    )
    metadata = MetadataStore(settings.database_url)
    metadata.migrate()
    artifacts = ArtifactStore(settings.artifact_root)
    jobs = JobStore(metadata)
    runner = JobRunner(
        settings,
        jobs,
        AdapterRegistry(metadata, artifacts),
        metadata,
        artifacts,
        ModelResolver(MODEL_CACHE),
        Leases(metadata, ttl_s=lease_ttl_s),
    )
    return runner, jobs, metadata


def test_two_replicas_on_one_database_submit_a_job_once_and_one_takes_over_when_the_other_dies(
    tmp_path: Path, database_url: str
) -> None:
    ray = FakeRay()  # the one training cluster both replicas submit to
    first, jobs, first_store = _runner(tmp_path, database_url, lease_ttl_s=1.0)
    second, _, second_store = _runner(tmp_path, database_url, lease_ttl_s=1.0)
    first.ray = second.ray = ray
    spec = JobSpecInput(base_model="tiny-qwen2", dataset_version_id="dsv-" + "a" * 24, adapter_name="a")
    job = jobs.create("acme", spec)
    for _ in range(3):
        first.tick()
        second.tick()
    assert ray.submitted == [f"{job.id}-1"]  # exactly once, by the replica holding the job's lease
    assert first.leases.holder_of(f"training-job:{job.id}") == first.leases.holder
    # the holder dies without a word (no release): its submission fails meanwhile
    ray.statuses[f"{job.id}-1"] = "FAILED"
    second.tick()
    assert jobs.get("acme", job.id).state in (QUEUED, RUNNING)  # not yet its job
    time.sleep(1.2)  # the dead replica's lease expires
    second.tick()
    failed = jobs.get("acme", job.id)
    assert failed.state == FAILED and "the training program broke" in failed.error_message
    second.tick()
    assert second.leases.holder_of(f"training-job:{job.id}") is None  # released once its job finished
    assert second.leases.held == {"training-scheduler"}
    first_store.close()
    second_store.close()


def test_a_replica_that_stops_hands_its_jobs_over_at_once(tmp_path: Path, database_url: str) -> None:
    import asyncio

    ray = FakeRay()
    first, jobs, first_store = _runner(tmp_path, database_url)  # 30 s leases: only a release hands over
    second, _, second_store = _runner(tmp_path, database_url)
    first.ray = second.ray = ray
    spec = JobSpecInput(base_model="tiny-qwen2", dataset_version_id="dsv-" + "b" * 24, adapter_name="a")
    queued, waiting = jobs.create("acme", spec), jobs.create("globex", spec)
    first.tick()
    second.tick()
    assert ray.submitted == [f"{queued.id}-1", f"{waiting.id}-1"]  # the scheduler lease is first's
    ray.statuses[f"{queued.id}-1"] = "FAILED"
    second.tick()
    assert jobs.get("acme", queued.id).state != FAILED  # first still drives it
    asyncio.run(first.stop())  # a rolling update: the old pod releases its leases
    third = jobs.create("acme", spec)
    second.tick()
    assert jobs.get("acme", queued.id).state == FAILED
    assert ray.submitted[-1] == f"{third.id}-1"  # second is the scheduler now
    first_store.close()
    second_store.close()


def test_a_tenant_s_jobs_beyond_its_running_limit_wait_in_queued(tmp_path: Path) -> None:
    runner, jobs, metadata = _runner(tmp_path, max_running_jobs_per_tenant=1)
    runner.ray = FakeRay()
    spec = JobSpecInput(base_model="tiny-qwen2", dataset_version_id="dsv-aaaaaaaaaaaaaaaaaaaaaaaa", adapter_name="a")
    first, second = jobs.create("acme", spec), jobs.create("acme", spec)
    other = jobs.create("globex", spec)
    runner.tick()
    assert sorted(runner.ray.submitted) == sorted([f"{first.id}-1", f"{other.id}-1"])  # limits are per tenant
    assert jobs.get("acme", second.id).state == QUEUED and not jobs.get("acme", second.id).runner_id
    assert (runner.output_dir(jobs.get("acme", first.id)) / "job.json").is_file()
    # the first job's submission vanishes (its cluster restarted): it is resubmitted, the second still waits
    del runner.ray.statuses[f"{first.id}-1"]
    runner.tick()
    assert f"{first.id}-2" in runner.ray.submitted and f"{second.id}-1" not in runner.ray.submitted
    metadata.close()


class _OpenDashboard(http.server.BaseHTTPRequestHandler):
    """A dashboard without token auth, as a head from before token auth answers."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"version": "old"}')

    def log_message(self, *_: object) -> None:
        return None


@pytest.mark.slow  # starts a Ray head of its own
def test_the_local_head_is_found_again_and_stopped(tmp_path: Path) -> None:
    # a head recorded from before token auth (its dashboard answers anyone) is stopped, not reused
    old_head = subprocess.Popen(["sleep", "600"], start_new_session=True)
    dashboard = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OpenDashboard)
    threading.Thread(target=dashboard.serve_forever, daemon=True).start()
    (tmp_path / "ray").mkdir()
    old_url = f"http://127.0.0.1:{dashboard.server_address[1]}"
    (tmp_path / "ray" / "head.json").write_text(json.dumps({"pid": old_head.pid, "dashboard_url": old_url}))
    head = LocalRayHead(tmp_path / "ray", num_cpus=1)
    try:
        address = head.ensure()
    finally:
        dashboard.shutdown()
    assert address != old_url
    old_head.wait(30)  # stopped (and reaped by the stop, or here)
    assert not psutil.pid_exists(old_head.pid)
    try:
        again = LocalRayHead(tmp_path / "ray", num_cpus=1)  # a restarted service
        assert again.running_address() == address and again.ensure() == address
        assert ":" in again.gcs_address()
        assert (again.temp_dir / "ray_current_cluster").is_file()

        # the runner's stops that leave the head running leave Ray's session directory with it
        runner, jobs, metadata = _runner(tmp_path)
        runner.head = again
        asyncio.run(runner.stop(stop_local_head=False))
        assert again.running_address() == address and again.temp_dir.is_dir()
        job = jobs.create(
            "acme", JobSpecInput(base_model="tiny-qwen2", dataset_version_id="dsv-" + "a" * 24, adapter_name="a")
        )
        asyncio.run(runner.stop())  # a job is queued: the head stays up for it
        assert again.running_address() == address and again.temp_dir.is_dir()
        assert again.gcs_address() == head.gcs_address()

        # with nothing left to run the head stops, and its session directory goes once its processes are gone
        jobs.cancel("acme", job.id)
        asyncio.run(runner.stop())
        metadata.close()
        assert again.running_address() is None
        assert not again.private_dir.exists(), sorted(p.name for p in again.private_dir.rglob("*"))[:20]
    finally:
        head.stop()
    assert LocalRayHead(tmp_path / "ray").running_address() is None
    assert not head.private_dir.exists()


def test_a_stopped_head_s_session_directory_is_kept_while_a_process_still_uses_it(tmp_path: Path, monkeypatch) -> None:
    """Ray's temp dir goes with the head, but never from under a process that still runs in it."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # the system temp dir, as the head sees it
    monkeypatch.setattr(cluster, "SESSION_EXIT_S", 1.0)
    head = LocalRayHead(tmp_path / "home" / "ray")
    sockets = head.temp_dir / "session_latest" / "sockets"
    sockets.mkdir(parents=True)
    head.directory.mkdir(parents=True)

    def record_head() -> subprocess.Popen[bytes]:
        stand_in = subprocess.Popen(["sleep", "600"], start_new_session=True)  # a head: a process group of its own
        head.state_file.write_text(json.dumps({"pid": stand_in.pid, "dashboard_url": "http://127.0.0.1:1"}))
        return stand_in

    # a raylet outside the head's process group still names the directory (its socket): kept
    raylet = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", f"--raylet_socket_name={sockets / 'raylet'}"],
        start_new_session=True,
    )
    try:
        stand_in = record_head()
        head.stop(timeout_s=5)
        stand_in.wait(5)
        assert not psutil.pid_exists(stand_in.pid) and not head.state_file.exists()
        assert sockets.is_dir()
    finally:
        raylet.kill()
        raylet.wait(5)

    # the next stop, with none of its processes left, removes it and our private directory around it
    stand_in = record_head()
    head.stop(timeout_s=5)
    stand_in.wait(5)
    assert not head.private_dir.exists()
    assert (tmp_path / "tmp").is_dir() and head.directory.is_dir()  # the home's token and log stay


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


@pytest.mark.slow  # the session's Ray head
def test_the_local_head_listens_on_loopback_only_and_wants_its_token(ray_cluster: LocalRayHead) -> None:
    """The session's head is the one the service starts: no port off loopback, no Job API call without the token."""
    head = ray_cluster
    root = psutil.Process(json.loads(head.state_file.read_text())["pid"])
    listening: list[tuple[str, str, int]] = []
    for process in [root, *root.children(recursive=True)]:
        try:
            sockets = process.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        listening += [(process.name(), c.laddr.ip, c.laddr.port) for c in sockets if c.status == psutil.CONN_LISTEN]
    names = {name for name, _, _ in listening}
    assert {"gcs_server", "raylet"} <= names and len(listening) >= 6, listening  # GCS, raylet, dashboard, agents
    assert [entry for entry in listening if not _loopback(entry[1])] == [], "the head listens off loopback"

    # the token: 0600 in a 0700 directory; Ray's own temp dir (0777 by Ray) sits in a 0700 directory of ours
    assert stat.S_IMODE(head.token_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(head.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(head.private_dir.stat().st_mode) == 0o700 and head.temp_dir.parent == head.private_dir

    address = head.running_address()
    assert address is not None
    for headers in ({}, {"Authorization": "Bearer " + "0" * 64}):
        request = urllib.request.Request(f"{address}/api/jobs/", headers=headers)
        try:
            urllib.request.urlopen(request, timeout=10)
            raise AssertionError(f"the Job API answered without the token (headers {headers})")
        except urllib.error.HTTPError as exc:
            assert exc.code in (401, 403), exc

    # with the token a job runs, and its driver reaches the head (the token reaches the job's processes)
    jobs = RayJobs(address, token_path=head.token_path)
    program = "import ray; ray.init(); print('tasks', sum(ray.get([ray.remote(lambda: 1).remote() for _ in range(2)])))"
    submission = f"lockdown-{time.time_ns()}"
    jobs.submit(submission, shlex.join([sys.executable, "-c", program]), head.job_env())
    deadline = time.monotonic() + 120
    while not (status := jobs.status(submission)) or not status.terminal:
        assert time.monotonic() < deadline, f"the probe job did not finish: {status}"
        time.sleep(0.5)
    assert status.status == "SUCCEEDED", (status, jobs.logs(submission)[-2000:])
    assert "tasks 2" in jobs.logs(submission)


class AgentlessRay(FakeRay):
    """A head whose dashboard answers but which has no agent to run jobs on."""

    def submit(self, submission_id: str, entrypoint: str, env: dict[str, str]) -> None:
        raise RuntimeError(
            "Request failed with status code 500: No available agent to submit job, please try again later.."
        )


class FakeHead:
    def __init__(self) -> None:
        self.stopped = 0

    def running_address(self) -> str:
        return "http://127.0.0.1:1"

    def stop(self) -> None:
        self.stopped += 1

    def job_env(self) -> dict[str, str]:
        return {}


def test_a_managed_head_without_a_job_agent_is_restarted(tmp_path: Path, monkeypatch) -> None:
    import asyncio

    from tuneforge.training import runner as runner_module

    runner, jobs, metadata = _runner(tmp_path, poll_interval_s=0.05)
    head, healthy = FakeHead(), FakeRay()
    runner.head, runner.ray = head, AgentlessRay()
    monkeypatch.setattr(runner_module, "AGENTLESS_RESTART_S", 0.3)
    monkeypatch.setattr(runner, "connect", lambda: setattr(runner, "ray", healthy))
    job = jobs.create(
        "acme", JobSpecInput(base_model="tiny-qwen2", dataset_version_id="dsv-" + "a" * 24, adapter_name="a")
    )

    ticks_after_submit = 0
    enough = threading.Event()  # set from the tick's worker thread
    real_tick = runner.tick

    def counting_tick() -> None:
        nonlocal ticks_after_submit
        real_tick()
        ticks_after_submit += bool(healthy.submitted)
        if ticks_after_submit >= 5:  # a few ticks on the new head after the job reached it
            enough.set()

    monkeypatch.setattr(runner, "tick", counting_tick)

    async def run_until_enough() -> None:
        task = asyncio.create_task(runner._loop())
        try:
            assert await asyncio.to_thread(enough.wait, 60), "the job never reached the restarted head"
        finally:
            task.cancel()

    asyncio.run(run_until_enough())
    assert head.stopped == 1  # restarted once, not on every failed tick
    assert healthy.submitted == [f"{job.id}-1"]  # the job goes to the new head
    metadata.close()


def test_a_resubmitted_job_s_events_go_on_in_order_without_repeating_replayed_steps(tmp_path: Path) -> None:
    """The Ray job is gone: the runner resubmits it, the new workers replay steps since the checkpoint."""
    runner, jobs, metadata = _runner(tmp_path)
    runner.ray = FakeRay()
    spec = JobSpecInput(base_model="tiny-qwen2", dataset_version_id="dsv-" + "d" * 24, adapter_name="a")
    job = jobs.create("acme", spec)
    runner.tick()
    log = runner.output_dir(job) / "metrics.jsonl"

    def write(*records: dict) -> None:
        with log.open("a") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in records)

    def step(n: int) -> dict:
        return {"event": "step", "step": n, "total_steps": 6, "loss": 1.0 / n}

    write({"event": "started", "step": 0, "world_size": 1}, step(1), step(2), step(3))
    runner.tick()
    seen = jobs.events("acme", job.id)  # a reader following the job
    assert jobs.get("acme", job.id).state == RUNNING
    del runner.ray.statuses[f"{job.id}-1"]  # the cluster lost it
    runner.tick()
    assert runner.ray.submitted == [f"{job.id}-1", f"{job.id}-2"]
    # the second attempt resumes from the checkpoint of step 2 and replays step 3
    write({"event": "started", "step": 2, "world_size": 1}, step(3), step(4), step(5), step(6))
    runner.tick()
    seen += jobs.events("acme", job.id, after=seen[-1].sequence)
    assert [e.sequence for e in seen] == list(range(1, len(seen) + 1))  # in order, none twice, none missed
    assert [e.step for e in seen if e.type == "metrics"] == [1, 2, 3, 4, 5, 6]  # step 3 once
    assert sum("resubmitted" in e.message for e in seen) == 1
    assert sum("workers restarted after a failure; resuming from step 2" in e.message for e in seen) == 1
    metadata.close()

"""TrainingService over gRPC: jobs run on a real local Ray (Job Submission API, 2 Ray Train workers).

Covers the whole lifecycle with its event stream and cursor, cancel while running, a service restart
in the middle of a job, specs rejected before queuing, and tenant isolation.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ACME_KEY, make_settings

from tuneforge.client import TuneforgeClient, TuneforgeError
from tuneforge.platform import BackgroundServer
from tuneforge.services import COMPONENTS
from tuneforge.training.cluster import RayJobs
from tuneforge.training.runner import diagnose
from tuneforge.v1 import curation_pb2, training_pb2

DEMO = Path(__file__).resolve().parents[1] / "services" / "tuneforge" / "demo_data"
pytestmark = pytest.mark.slow


def _dataset(client: TuneforgeClient) -> str:
    stored = client.upload_file(DEMO / "event_dates.jsonl")
    version = client.create_dataset_version(
        "dates", [stored.id], "tiny-qwen2", max_seq_len=256, validation_fraction=0.1
    )
    done = client.wait_for_dataset_version(version.id, timeout=300)
    assert done.state == curation_pb2.DATASET_VERSION_STATE_READY, done.failure_reason
    return done.id


@pytest.fixture(scope="module")
def dataset_id(platform_server: BackgroundServer) -> str:
    with TuneforgeClient(platform_server.address, api_key=ACME_KEY) as client:
        return _dataset(client)


def _spec(dataset: str, name: str = "dates-bot", **hyper: object) -> training_pb2.JobSpec:
    values: dict[str, object] = {"learning_rate": 5e-3, "max_steps": 6, "micro_batch_size": 2, "seed": 3}
    values.update(hyper)
    return training_pb2.JobSpec(
        base_model="tiny-qwen2",
        dataset_version_id=dataset,
        adapter_name=name,
        lora=training_pb2.LoraSpec(r=8, alpha=16, dropout=0.0, target_modules=["q_proj", "v_proj"]),
        hyperparameters=training_pb2.Hyperparameters(**values),
        resources=training_pb2.ResourceSpec(num_workers=2, cpus_per_worker=1),
    )


def _wait(client: TuneforgeClient, job_id: str, until, timeout: float = 300) -> training_pb2.Job:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get_job(job_id)
        if until(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id} stuck in {training_pb2.JobState.Name(job.state)}"
        time.sleep(0.3)


def _states(events: list[training_pb2.JobEvent]) -> list[str]:
    return [training_pb2.JobState.Name(e.state) for e in events if e.type == training_pb2.JOB_EVENT_TYPE_STATE_CHANGED]


def test_a_bad_spec_is_rejected_before_queuing_with_every_field_named(acme: TuneforgeClient, dataset_id: str) -> None:
    before = len(list(acme.list_jobs()))
    bad = _spec("dsv-000000000000000000000000", max_seq_len=64)
    bad.lora.target_modules[:] = ["q_proj", "gate_projection"]
    with pytest.raises(TuneforgeError) as unknown:
        acme.create_job(bad)
    assert unknown.value.code == "INVALID_ARGUMENT"
    fields = {f for f, _ in unknown.value.violations}
    assert fields == {"spec.dataset_version_id", "spec.lora.target_modules"}
    assert "gate_projection" in dict(unknown.value.violations)["spec.lora.target_modules"]

    too_short = _spec(dataset_id, max_seq_len=64, micro_batch_size=-1)
    with pytest.raises(TuneforgeError) as short:
        acme.create_job(too_short)
    described = dict(short.value.violations)
    assert "shorter than the dataset's samples (up to 256)" in described["spec.hyperparameters.max_seq_len"]
    assert "spec.hyperparameters.micro_batch_size" in described
    assert len(list(acme.list_jobs())) == before  # nothing was queued


def test_the_whole_lifecycle_streams_every_event_once_and_registers_the_adapter(
    acme: TuneforgeClient, dataset_id: str, ray_head: str
) -> None:
    spec = _spec(dataset_id, eval_every_steps=3, checkpoint_every_steps=2)
    job = acme.create_job(spec, idempotency_key="lifecycle-1")
    assert job.state == training_pb2.JOB_STATE_QUEUED and job.id.startswith("job-")
    assert job.spec.hyperparameters.max_seq_len == 256  # defaults filled in: the dataset's row length
    assert job.spec.resources.max_failures == 2
    assert acme.create_job(spec, idempotency_key="lifecycle-1").id == job.id  # a retry is the same job

    events = list(acme.job_events(job.id, timeout=600))  # follows until the job finishes
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))  # gap-free, in order
    assert _states(events) == [
        "JOB_STATE_VALIDATING_FILES",
        "JOB_STATE_QUEUED",
        "JOB_STATE_RUNNING",
        "JOB_STATE_SUCCEEDED",
    ]
    steps = [e for e in events if e.type == training_pb2.JOB_EVENT_TYPE_METRICS]
    assert [e.step for e in steps] == [1, 2, 3, 4, 5, 6]
    assert all({"loss", "learning_rate", "tokens_per_second"} <= set(e.metrics) for e in steps)
    evaluations = [e.step for e in events if e.type == training_pb2.JOB_EVENT_TYPE_EVALUATION]
    assert evaluations == [3, 6]
    saved = [e.step for e in events if e.type == training_pb2.JOB_EVENT_TYPE_CHECKPOINT_SAVED]
    assert saved == [2, 4, 6]

    # a client that reconnects after event k gets exactly the rest
    k = len(events) // 2
    again = list(acme.job_events(job.id, after_sequence=k))
    assert [e.sequence for e in again] == [e.sequence for e in events[k:]]

    done = acme.get_job(job.id)
    assert done.state == training_pb2.JOB_STATE_SUCCEEDED and done.adapter_version == "dates-bot:1"
    assert (done.step, done.total_steps) == (6, 6) and "validation_loss" in done.metrics
    assert done.end_time.seconds >= done.start_time.seconds > 0

    checkpoints = acme.list_checkpoints(job.id)
    assert [c.step for c in checkpoints] == [2, 4, 6]
    assert all(len(c.weights.sha256) == 64 and c.weights.size_bytes > 0 for c in checkpoints)

    version = acme.call(
        acme.adapters.GetAdapterVersion, training_pb2.GetAdapterVersionRequest(adapter="dates-bot", version=1)
    ).adapter_version
    lineage = version.lineage
    assert (lineage.job_id, lineage.dataset_version_id, lineage.base_model) == (job.id, dataset_id, "tiny-qwen2")
    assert len(lineage.template_hash) == 64 and len(lineage.base_model_revision) == 64
    assert lineage.spec.lora.r == 8 and version.rank == 8 and sorted(version.target_modules) == ["q_proj", "v_proj"]
    weights = {f.name: f.digest.sha256 for f in version.files}
    assert weights["adapter_model.safetensors"] == checkpoints[-1].weights.sha256  # the final checkpoint's
    assert RayJobs(ray_head).submission_ids(job.id) == [f"{job.id}-1"]


def test_cancel_while_running_stops_the_workers(acme: TuneforgeClient, dataset_id: str, ray_head: str) -> None:
    job = acme.create_job(_spec(dataset_id, name="cancel-me", max_steps=100_000))
    _wait(acme, job.id, lambda j: j.state == training_pb2.JOB_STATE_RUNNING and j.step >= 1)
    stopping = acme.cancel_job(job.id)
    assert stopping.state in (training_pb2.JOB_STATE_RUNNING, training_pb2.JOB_STATE_CANCELLED)
    done = _wait(acme, job.id, lambda j: j.state != training_pb2.JOB_STATE_RUNNING, timeout=120)
    assert done.state == training_pb2.JOB_STATE_CANCELLED and not done.adapter_version
    assert RayJobs(ray_head).status(f"{job.id}-1").status == "STOPPED"
    with pytest.raises(TuneforgeError) as again:
        acme.cancel_job(job.id)
    assert again.value.code == "FAILED_PRECONDITION"
    with pytest.raises(TuneforgeError) as missing:
        acme.call(acme.adapters.GetAdapter, training_pb2.GetAdapterRequest(name="cancel-me"))
    assert missing.value.code == "NOT_FOUND"


def test_a_job_survives_a_restart_of_the_service(
    tmp_path: Path, keys_file: Path, ray_head: str, platform_server: BackgroundServer
) -> None:
    settings = make_settings(tmp_path / "home", keys_file, training={"ray_address": ray_head, "poll_interval_s": 0.3})
    first = BackgroundServer(settings, list(COMPONENTS.values()))
    try:
        with TuneforgeClient(first.address, api_key=ACME_KEY) as client:
            dataset = _dataset(client)
            job = client.create_job(_spec(dataset, name="restarted", max_steps=30, checkpoint_every_steps=5))
            _wait(client, job.id, lambda j: j.step >= 2)
    finally:
        first.stop()  # the service dies mid-job; the job keeps training on Ray
    time.sleep(2)
    second = BackgroundServer(settings, list(COMPONENTS.values()))
    try:
        with TuneforgeClient(second.address, api_key=ACME_KEY) as client:
            events = list(client.job_events(job.id, timeout=600))
            done = client.get_job(job.id)
    finally:
        second.stop()
    assert done.state == training_pb2.JOB_STATE_SUCCEEDED, done.error.message
    assert done.adapter_version == "restarted:1"  # registered once
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert [e.step for e in events if e.type == training_pb2.JOB_EVENT_TYPE_METRICS] == list(range(1, 31))
    assert _states(events).count("JOB_STATE_RUNNING") == 1
    assert RayJobs(ray_head).submission_ids(job.id) == [f"{job.id}-1"]  # tracked, not resubmitted


def test_other_tenants_cannot_see_or_touch_a_job(
    acme: TuneforgeClient, globex: TuneforgeClient, dataset_id: str
) -> None:
    job = next(iter(acme.list_jobs()), None) or acme.create_job(_spec(dataset_id, name="private"))
    for call in (
        lambda: globex.get_job(job.id),
        lambda: globex.cancel_job(job.id),
        lambda: list(globex.job_events(job.id, follow=False)),
        lambda: globex.list_checkpoints(job.id),
    ):
        with pytest.raises(TuneforgeError) as denied:
            call()
        assert denied.value.code == "NOT_FOUND"
    assert job.id not in {j.id for j in globex.list_jobs()}
    with pytest.raises(TuneforgeError) as borrowed:
        globex.create_job(_spec(dataset_id, name="stolen"))
    assert [f for f, _ in borrowed.value.violations] == ["spec.dataset_version_id"]


def test_jobs_cli_creates_follows_lists_and_reads_events(platform_server: BackgroundServer, dataset_id: str) -> None:
    env = {**os.environ, "TUNEFORGE_ADDRESS": platform_server.address, "TUNEFORGE_API_KEY": ACME_KEY}

    def cli(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "tuneforge.cli", "jobs", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)

    created = cli(
        "create",
        "--base-model=tiny-qwen2",
        f"--dataset-version={dataset_id}",
        "--adapter-name=cli-bot",
        "--lora-r=4",
        "--max-steps=2",
        "--num-workers=1",
        "--follow",
    )
    assert created.returncode == 0, created.stdout + created.stderr
    job_id = created.stdout.split()[0]
    assert job_id.startswith("job-") and "[SUCCEEDED] registered adapter cli-bot:1" in created.stdout
    assert "loss=" in created.stderr + created.stdout  # the live progress bar
    listed = cli("list", "--state=succeeded")
    assert job_id in listed.stdout and "cli-bot:1" in listed.stdout
    events = cli("events", job_id)
    assert events.stdout.splitlines()[0].startswith("#1 ") and "loss=" in events.stdout
    assert "step 2" in cli("checkpoints", job_id).stdout
    refused = cli("cancel", job_id)
    assert refused.returncode == 1 and "already succeeded" in refused.stderr
    bad = cli("create", "--base-model=tiny-qwen2", f"--dataset-version={dataset_id}", "--adapter-name=Bad Name")
    assert bad.returncode == 1 and "spec.adapter_name" in bad.stderr


def test_failures_carry_a_reason_a_user_can_act_on() -> None:
    oom = "Traceback...\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert diagnose(oom, "")[0] == "out_of_memory"
    assert "gradient_checkpointing" in diagnose(oom, "")[1]
    lost = "ray.train.v2.api.exceptions.TrainingFailedError: ...\nRuntimeError: worker 1 died\n"
    code, message = diagnose(lost, "")
    assert code == "worker_lost" and "RuntimeError: worker 1 died" in message
    assert diagnose("ValueError: dataset /x has no training records", "")[0] == "dataset_empty"
    code, message = diagnose("KeyError: 'x'\nsafetensors_rust.SafetensorError: header too large\n", "")
    assert (code, message) == ("training_error", "SafetensorError: header too large")
    assert diagnose("", "Job entrypoint command failed with exit code 2")[1].endswith("exit code 2")
    # the trainer's own account wins over the generic advice: it names the step and the rows
    worker_oom = (
        "torch.OutOfMemoryError: CUDA out of memory.\n\nThe above exception was the direct cause...\n"
        "tuneforge.training.trainer.TrainingOutOfMemory: out of GPU memory at step 3 on rank 0 (micro-batch of "
        "1 row(s) x 4096 tokens, 21.9 GiB peak of 22.0 GiB); turn on gradient_checkpointing\n"
    )
    code, message = diagnose(worker_oom, "")
    assert code == "out_of_memory" and message.startswith("out of GPU memory at step 3") and "4096 tokens" in message
    host = "ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory."
    assert diagnose(host, "")[0] == "host_out_of_memory"
    nccl = (
        "torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:3150, remote process exited "
        "or there was a network error\nray.train.v2.api.exceptions.TrainingFailedError: ...\n"
    )
    code, message = diagnose(nccl, "")
    assert code == "worker_lost" and "collective between training workers failed" in message
    assert "DistBackendError" in message


def test_state_filters_and_pages(acme: TuneforgeClient) -> None:
    succeeded = list(acme.list_jobs(states=[training_pb2.JOB_STATE_SUCCEEDED]))
    assert succeeded and all(j.state == training_pb2.JOB_STATE_SUCCEEDED for j in succeeded)
    every = list(acme.list_jobs(page_size=1))
    assert len({j.id for j in every}) == len(every) >= 2
    with pytest.raises(TuneforgeError) as bad:
        list(acme.list_jobs(states=[42]))
    assert bad.value.violations == [("states[0]", "42 is not a job state")]

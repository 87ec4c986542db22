"""The job runner: moves jobs through their lifecycle on a Ray cluster, and survives its own restarts.

Every `poll_interval_s` it reconciles each QUEUED or RUNNING job in the metadata store with Ray:

- a QUEUED job not yet submitted (and within its tenant's running limit) gets its `job.json` written
  to its output directory and `ray_jobs/train.py` submitted under the id `<job>-<attempt>`;
- the job's metrics log (rank 0 appends one JSON line per start and step) is read from the offset
  the store remembers and turned into events — so a restarted service neither misses nor repeats any;
- a cancel request stops the submission; a finished submission finishes the job: SUCCEEDED registers
  the adapter (once, even when the service dies in between), FAILED carries a reason a user can act on;
- a submission the cluster no longer knows (its head restarted) is resubmitted, and resumes from the
  newest checkpoint in the output directory.

All state is in the store and the output directory, none in memory, so a new service process picks
up exactly where the old one stopped. With several replicas, a job is driven only by the replica that
holds its lease (`training-job:<id>` in the metadata store) and only the holder of the scheduler lease
submits queued jobs (so per-tenant limits hold across replicas); when a replica dies its leases expire
and another replica takes its jobs over.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tuneforge.catalog.adapters import ADAPTER, FULL_FINE_TUNE, AdapterRegistry, AdapterVersionInfo
from tuneforge.catalog.datasets import DatasetCatalog
from tuneforge.common.logging import get_logger
from tuneforge.common.settings import Settings
from tuneforge.models import ModelResolver, ResolvedModel
from tuneforge.store.artifacts import ArtifactStore
from tuneforge.store.leases import Leases
from tuneforge.store.metadata import MetadataStore
from tuneforge.training.cluster import LocalRayHead, RayJobs, SubmissionStatus
from tuneforge.training.job_store import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobInfo, JobStore
from tuneforge.training.jobs import train_config
from tuneforge.training.ray_train import METRICS_LOG
from tuneforge.training.spec_proto import spec_dict
from tuneforge.training.trainer import CHECKPOINT_STATE, checkpoint_step, latest_checkpoint, weights_digest

log = get_logger(__name__)

#: Resubmissions of a job whose submission the cluster lost (its head restarted), beyond `max_failures`.
EXTRA_RESUBMISSIONS = 2
#: What Ray's Job API answers while no dashboard agent runs on the head.
NO_AGENT = "No available agent to submit job"
#: Seconds a managed local head may go without an agent before it is restarted.
AGENTLESS_RESTART_S = 60.0
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
#: Seconds a stopping runner waits for the reconciliation in progress (Ray and store calls) to end.
STOP_TICK_S = 2.0
#: Seconds an idle local head gets to exit on SIGTERM before its processes are killed (it runs no job,
#: and `ray start --block` takes longer than any drain bound to stop them itself).
LOCAL_HEAD_STOP_S = 2.0
#: Largest chunk of a metrics log read per job and tick.
MAX_LOG_READ = 1 << 20
#: Files of a full fine-tune's checkpoint that belong to the model (beside its safetensors weights).
MODEL_CHECKPOINT_FILES = frozenset({"config.json", "generation_config.json", "model.safetensors.index.json"})
#: Lease of the replica that submits queued jobs (one decides, so per-tenant running limits hold).
SCHEDULER_LEASE = "training-scheduler"
#: Prefix of a job's lease: the replica holding it follows and finishes the job.
JOB_LEASE = "training-job:"

_DIAGNOSES: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (
        re.compile(r"CUDA out of memory|OutOfMemoryError: CUDA|CUBLAS_STATUS_ALLOC_FAILED"),
        "out_of_memory",
        "a worker ran out of GPU memory: lower micro_batch_size or max_seq_len, turn on gradient_checkpointing, "
        "use base_precision fp8 (LoRA), or use DeepSpeed ZeRO-3 with offload",
    ),
    (
        re.compile(r"has no training records"),
        "dataset_empty",
        "the dataset version has no training records: build one with more valid records",
    ),
    (
        re.compile(r"OutOfMemoryError: Task was killed due to the node running low on memory|RayOutOfMemoryError"),
        "host_out_of_memory",
        "a worker ran out of host memory: use fewer workers per node or a smaller micro_batch_size",
    ),
)
#: The trainer's own account of a GPU out-of-memory: the step, the rows, and what to change.
_WORKER_OOM = re.compile(r"TrainingOutOfMemory: (.+)$", re.MULTILINE)
#: A collective between workers broke: a worker (or its GPU, or the network to it) was lost.
_COLLECTIVE_FAILED = re.compile(
    r"NCCL (?:error|communicator|WARN)|ncclInternalError|ncclSystemError|ncclRemoteError|DistBackendError|"
    r"ProcessGroupNCCL|Watchdog caught collective operation timeout|Connection closed by peer|"
    r"Gloo.*(?:Connection|Timed out)"
)
_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$", re.MULTILINE)


def diagnose(logs: str, ray_message: str) -> tuple[str, str]:
    """An error code and an actionable message for a failed submission, from its logs."""
    worker_oom = _WORKER_OOM.findall(logs)
    if worker_oom:
        return "out_of_memory", worker_oom[-1][:500]
    for pattern, code, advice in _DIAGNOSES:
        if pattern.search(logs):
            return code, advice
    lines = _EXCEPTION_LINE.findall(logs)
    detail = f" (last error: {lines[-1][0]}: {lines[-1][1][:300]})" if lines else ""
    if _COLLECTIVE_FAILED.search(logs):
        broken = [line for line in lines if _COLLECTIVE_FAILED.search(": ".join(line))] or lines
        detail = f" ({broken[-1][0]}: {broken[-1][1][:300]})" if broken else ""
        return "worker_lost", (
            f"a collective between training workers failed: a worker, its GPU or the network between them was lost"
            f"{detail}; the run restarted from its newest checkpoint until max_failures ran out"
        )
    if "TrainingFailedError" in logs or "WorkerGroupError" in logs or "max_failures" in logs:
        return "worker_lost", (
            f"training workers kept failing and the retries (max_failures) ran out{detail}; see the job's logs"
        )
    if lines:
        name, text = lines[-1]
        return "training_error", f"{name}: {text[:500]}"
    return "training_error", (ray_message or "the training program exited with an error")[:500]


def model_revision(path: Path, name: str) -> str:
    """A short identity of a model's files: its config and the names and sizes of its weight files."""
    if not path.is_dir():
        return f"hub:{name}"
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.name in ("config.json", "tuneforge-build.json"):
            digest.update(file.read_bytes())
        elif file.suffix == ".safetensors":
            digest.update(f"{file.name}:{file.stat().st_size}".encode())
    return digest.hexdigest()


class JobRunner:
    """Reconciles the store's unfinished jobs with the Ray cluster, in a background task."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        registry: AdapterRegistry,
        metadata: MetadataStore,
        artifacts: ArtifactStore,
        models: ModelResolver,
        leases: Leases | None = None,
    ) -> None:
        self.settings = settings
        self.leases = leases or Leases(metadata)
        self.jobs = jobs
        self.registry = registry
        self.metadata = metadata
        self.artifacts = artifacts
        self.datasets = DatasetCatalog(metadata, artifacts)
        self.models = models
        self.ray: RayJobs | None = None
        self.head: LocalRayHead | None = None
        self._agentless_since: float | None = None
        self._task: asyncio.Task[None] | None = None
        #: Set by `stop()`: a tick in its thread stops between jobs, the loop before its next tick.
        self._stopping = threading.Event()
        self._wake = asyncio.Event()

    # -- cluster -------------------------------------------------------------------------------

    def _address(self) -> str | None:
        configured = self.settings.training.ray_address
        if configured:
            return configured
        env = os.environ.get("RAY_ADDRESS", "")
        return env if env.startswith(("http://", "https://")) else None

    def connect(self) -> str:
        """Connects to the configured cluster, or starts (or finds again) the local head."""
        address = self._address()
        if address is None:
            self.head = LocalRayHead(self.settings.home / "ray", self.settings.training.local_ray_cpus)
            address = self.head.ensure()
        self.ray = RayJobs(address, token_path=self.head.token_path if self.head is not None else None)
        return address

    def _entrypoint(self, config_path: Path) -> str:
        training = self.settings.training
        # a cluster on this machine runs this interpreter; a remote one the training image's `python`
        on_this_machine = self.ray is not None and urlparse(self.ray.address).hostname in LOOPBACK
        python = training.python or (sys.executable if on_this_machine else "python")
        script = training.script or Path(__file__).resolve().parents[3] / "ray_jobs" / "train.py"
        return shlex.join([python, str(script), "--config", str(config_path)])

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        address = await asyncio.to_thread(self.connect)
        log.info("job_runner_started", ray=address, managed_head=self.head is not None)
        self._stopping.clear()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="tuneforge-job-runner")

    async def stop(self, stop_local_head: bool = True) -> None:
        """Stops reconciling and releases this replica's leases; the jobs keep running on the cluster.

        The next start (or another replica, at once) re-attaches to them by the Ray submission ids
        the store keeps. A local head the service started is left running while any job is queued
        or running (the next start finds it again under `<home>/ray`), and stopped once none is,
        unless `stop_local_head` is false.
        """
        self._stopping.set()  # a tick in its thread stops after the job it is reconciling
        if self._task is not None:
            self._wake.set()
            done, _ = await asyncio.wait({self._task}, timeout=STOP_TICK_S)
            if not done:  # a Ray call hangs: stop waiting for it (its thread ends with its timeout)
                self._task.cancel()
                log.warning("job_runner_tick_abandoned", seconds=STOP_TICK_S)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.to_thread(self.leases.release_all)  # another replica takes the jobs over at once
        if self.head is not None and stop_local_head:
            unfinished = await asyncio.to_thread(self.jobs.unfinished)
            if unfinished:
                log.info("local_ray_left_running", jobs=len(unfinished), state=str(self.head.state_file))
            else:
                await asyncio.to_thread(self.head.stop, LOCAL_HEAD_STOP_S)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            await self._reconcile()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.training.poll_interval_s)

    async def _reconcile(self) -> None:
        """One round: the local head checked (and restarted if it died), then every job reconciled."""
        try:
            if self.head is not None and not await asyncio.to_thread(self.head.running_address):
                # the local head died under us: start a new one; its jobs come back as lost and resume
                log.warning("local_ray_lost_restarting")
                await asyncio.to_thread(self.connect)
            elif (
                self.head is not None
                and self._agentless_since is not None
                and (time.monotonic() - self._agentless_since > AGENTLESS_RESTART_S)
            ):
                # its dashboard answers but no agent takes jobs: a head that cannot run anything
                log.warning("local_ray_without_agent_restarting", seconds=AGENTLESS_RESTART_S)
                await asyncio.to_thread(self.head.stop)
                self._agentless_since = None
                await asyncio.to_thread(self.connect)
            await asyncio.to_thread(self.tick)
        except Exception as exc:  # a broken tick must not end the runner; the next one retries
            log.error("job_runner_tick_failed", error=repr(exc))

    def tick(self) -> None:
        """One reconciliation of every unfinished job whose lease this replica holds or can take."""
        assert self.ray is not None
        unfinished = self.jobs.unfinished()
        live = {JOB_LEASE + job.id for job in unfinished}
        for name in [n for n in self.leases.held if n.startswith(JOB_LEASE) and n not in live]:
            self.leases.release(name)  # its job finished
        scheduler = self._acquire(SCHEDULER_LEASE)
        submitted: dict[str, int] = {}
        for job in unfinished:
            if job.runner_id:
                submitted[job.tenant] = submitted.get(job.tenant, 0) + 1
        for job in sorted(unfinished, key=lambda j: j.created_at):
            if self._stopping.is_set():
                return  # the service stops: the next start (or another replica) goes on from here
            try:
                if job.runner_id:
                    if self._acquire(JOB_LEASE + job.id):
                        self._follow(job)
                elif (
                    scheduler
                    and submitted.get(job.tenant, 0) < self.settings.training.max_running_jobs_per_tenant
                    and self._acquire(JOB_LEASE + job.id)
                ):
                    self._submit(job)
                    submitted[job.tenant] = submitted.get(job.tenant, 0) + 1
            except Exception as exc:
                if NO_AGENT in str(exc):
                    self._agentless_since = self._agentless_since or time.monotonic()
                log.error("job_reconcile_failed", job_id=job.id, error=repr(exc))
            else:
                self._agentless_since = None

    def _acquire(self, name: str) -> bool:
        """Takes or renews a lease, unless the service stops: a tick abandoned at the drain bound must
        not take a lease after `stop` released them all (the restarted server would wait out its TTL)."""
        return not self._stopping.is_set() and self.leases.acquire(name)

    def stop_submission(self, runner_id: str) -> None:
        """Stops a submission at once (a QUEUED job cancelled after it was submitted)."""
        if self.ray is not None and runner_id:
            self.ray.stop(runner_id)

    # -- one job -------------------------------------------------------------------------------

    def output_dir(self, job: JobInfo) -> Path:
        return self.artifacts.for_tenant(job.tenant).path(f"jobs/{job.id}")

    def _submit(self, job: JobInfo, reason: str = "") -> None:
        assert self.ray is not None
        spec = job.spec_input()
        resolved = self.models.resolve(spec.base_model)
        dataset = self.datasets.directory(job.tenant, spec.dataset_version_id)
        out = self.output_dir(job)
        out.mkdir(parents=True, exist_ok=True)
        config = {
            "train": train_config(
                spec,
                base_model_path=resolved.source,
                dataset_dir=str(dataset),
                output_dir=str(out),
                max_seq_len=spec.max_seq_len,
                trust_remote_code=resolved.trust_remote_code,
            ),
            "scaling": {
                "num_workers": spec.num_workers,
                "use_gpu": spec.use_gpu,
                "gpus_per_worker": spec.gpus_per_worker,
                "cpus_per_worker": spec.cpus_per_worker,
                "max_failures": spec.max_failures,
            },
            "storage_path": str(out / "ray"),
            "name": job.id,
        }
        path = out / "job.json"
        temp = path.with_suffix(".tmp")
        temp.write_text(json.dumps(config, indent=2))
        temp.replace(path)
        submission = f"{job.id}-{job.attempt + 1}"
        env = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        if self.head is not None:
            env.update(self.head.job_env())  # the driver's ray.init() needs the local head's token
        self.ray.submit(submission, self._entrypoint(path), env)
        message = reason or f"submitted to Ray as {submission}"
        if self.jobs.mark_submitted(job.id, submission, message) is None:
            self.ray.stop(submission)  # cancelled while it was being submitted
        log.info("job_submitted", job_id=job.id, submission=submission)

    def _ingest(self, job: JobInfo) -> JobInfo:
        """Turns the complete lines of the job's metrics log past the stored offset into events."""
        path = self.output_dir(job) / METRICS_LOG
        try:
            with path.open("rb") as handle:
                handle.seek(job.log_offset)
                data = handle.read(MAX_LOG_READ)
        except FileNotFoundError:
            return job
        end = data.rfind(b"\n")
        if end < 0:
            return job
        records = []
        for line in data[: end + 1].splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                log.warning("job_log_line_skipped", job_id=job.id, line=line[:200])
        return self.jobs.apply_log(job.id, records, job.log_offset + end + 1)

    def _follow(self, job: JobInfo) -> None:
        assert self.ray is not None
        status = self.ray.status(job.runner_id)
        if status is None:
            self._lost(job)
            return
        if job.cancel_requested and not status.terminal:
            self.ray.stop(job.runner_id)
        job = self._ingest(job)  # the status was read first, so a finished job's log is complete here
        if not status.terminal or job.state not in (QUEUED, RUNNING):
            return
        if job.cancel_requested:
            self.jobs.transition(job.id, CANCELLED, "cancelled by request; workers stopped")
        elif status.status == "SUCCEEDED":
            self._succeeded(job)
        elif status.status == "STOPPED":
            self.jobs.transition(
                job.id, FAILED, "the Ray job was stopped outside Tuneforge", error_code="stopped_externally"
            )
        else:
            self._failed(job, status)

    def _lost(self, job: JobInfo) -> None:
        spec = job.spec_input()
        if job.cancel_requested:
            self.jobs.transition(job.id, CANCELLED, "cancelled by request")
        elif job.attempt <= spec.max_failures + EXTRA_RESUBMISSIONS:
            newest = latest_checkpoint(self.output_dir(job))
            where = f"step {checkpoint_step(newest)}" if newest is not None else "the start"
            self._submit(job, f"the Ray cluster lost submission {job.runner_id}; resubmitted, resuming from {where}")
        else:
            self.jobs.transition(
                job.id,
                FAILED,
                f"the Ray cluster lost the job {job.attempt} times; check the cluster's health, then create it again",
                error_code="worker_lost",
            )

    def _failed(self, job: JobInfo, status: SubmissionStatus) -> None:
        assert self.ray is not None
        code, message = diagnose(self.ray.logs(job.runner_id), status.message)
        self.jobs.transition(job.id, FAILED, message, error_code=code)
        log.warning("job_failed", job_id=job.id, code=code)

    def _succeeded(self, job: JobInfo) -> None:
        spec = job.spec_input()
        final = latest_checkpoint(self.output_dir(job))
        if final is None or checkpoint_step(final) < job.total_steps:
            self.jobs.transition(
                job.id, FAILED, "training ended without its final checkpoint", error_code="checkpoint_missing"
            )
            return
        if job.state == QUEUED:  # finished before a tick saw its start record
            self.jobs.transition(job.id, RUNNING, "workers started")
        version = self.registry.find_by_job(job.tenant, spec.adapter_name, job.id)
        if version is None:
            dataset_version = self.datasets.get(job.tenant, spec.dataset_version_id)
            template = dataset_version.template_hash if dataset_version is not None else ""
            resolved = self.models.resolve(spec.base_model)
            state = json.loads((final / CHECKPOINT_STATE).read_text())
            lineage = {
                "base_model": spec.base_model,
                "base_model_revision": model_revision(Path(resolved.source), spec.base_model),
                "template_hash": template,
                "dataset_version_id": spec.dataset_version_id,
                "job_id": job.id,
                "spec": spec_dict(spec),
                "checkpoint": final.name,
            }
            metrics = {k: float(v) for k, v in state.get("metrics", {}).items() if k not in ("step", "total_steps")}
            if spec.method == "lora":
                version = self.registry.register(job.tenant, spec.adapter_name, final, lineage, metrics)
            else:
                version = register_full_fine_tune(
                    self.registry, self.models, job.tenant, spec.adapter_name, final, resolved, lineage, metrics
                )
        what = "adapter" if version.kind == ADAPTER else "model"
        self.jobs.transition(job.id, SUCCEEDED, f"registered {what} {version.ref}", adapter_version=version.ref)
        log.info("job_succeeded", job_id=job.id, adapter=version.ref, kind=version.kind)


def register_full_fine_tune(
    registry: AdapterRegistry,
    models: ModelResolver,
    tenant: str,
    name: str,
    checkpoint: Path,
    base: ResolvedModel,
    lineage: dict[str, Any],
    metrics: dict[str, float],
) -> AdapterVersionInfo:
    """A full fine-tune's checkpoint as a model version: its weights and config with the base's tokenizer.

    The checkpoint holds the weights (and optimizer state, left out); the tokenizer and chat
    template the job trained with are the base model's, written beside them so the version is a
    whole model that serving and export load on their own. Weights are hard-linked where the
    filesystem allows (the registry copies them once more into its own directory).
    """
    staging = registry.artifacts.make_temp_dir(f"full-{name}")
    try:
        for file in checkpoint.iterdir():
            if file.suffix == ".safetensors" or file.name in MODEL_CHECKPOINT_FILES:
                try:
                    os.link(file, staging / file.name)
                except OSError:
                    shutil.copyfile(file, staging / file.name)
        models.load_tokenizer(base).save_pretrained(staging)
        return registry.register_model(tenant, name, staging, lineage, metrics, kind=FULL_FINE_TUNE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def list_checkpoints(output_dir: Path) -> list[dict[str, Any]]:
    """The complete checkpoints in a job's output directory, oldest first, with their weights' digest."""
    found = []
    for path in output_dir.glob("checkpoint-*"):
        step = checkpoint_step(path)
        if step < 0:
            continue
        state = json.loads((path / CHECKPOINT_STATE).read_text())
        # recorded at save time; a checkpoint saved before the trainer recorded it is hashed here once more
        weights = state.get("weights") or weights_digest(path)
        found.append(
            {
                "id": f"ckpt-{step:06d}",
                "step": step,
                "metrics": {k: float(v) for k, v in state.get("metrics", {}).items()},
                "created_at": (path / CHECKPOINT_STATE).stat().st_mtime,
                "sha256": weights["sha256"],
                "size_bytes": weights["size_bytes"],
            }
        )
    return sorted(found, key=lambda c: c["step"])

"""Running `train_worker` on a Ray cluster with Ray Train's TorchTrainer.

Ray Train starts the workers, sets up the process group (gloo on CPU, NCCL on GPU), collects each
step's metrics and rank 0's checkpoints, and restarts failed workers up to `max_failures` times;
a restarted run resumes from the newest checkpoint Ray kept.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.training.trainer import checkpoint_step, latest_checkpoint, train_worker

#: Rank 0's record of the run in the output directory, one JSON object a line (what the service streams).
METRICS_LOG = "metrics.jsonl"


@dataclass(frozen=True)
class Scaling:
    """Workers and what each one gets."""

    num_workers: int = 1
    use_gpu: bool = False
    gpus_per_worker: int = 1
    cpus_per_worker: int = 1
    max_failures: int = 2


def _loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train

    # A restart after a failure continues from the newest checkpoint: the one Ray registered, or a newer
    # complete one rank 0 wrote to the (shared) output directory that Ray had not registered yet when
    # the worker died (reports reach the controller asynchronously).
    candidates: list[Path] = []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        local = Path(tempfile.mkdtemp(prefix="tuneforge-resume-"))
        with checkpoint.as_directory() as directory:
            shutil.copytree(directory, local, dirs_exist_ok=True)
        candidates.append(local)
    on_disk = latest_checkpoint(Path(config["output_dir"]))
    if on_disk is not None:
        candidates.append(on_disk)
    if candidates and not config.get("resume_from"):
        config = {**config, "resume_from": str(max(candidates, key=checkpoint_step))}

    log = Path(config["output_dir"]) / METRICS_LOG
    context = ray.train.get_context()
    rank = context.get_world_rank()

    def append(record: dict[str, Any]) -> None:
        if rank == 0:  # every start and step, restarts included, for the service's event stream and for people
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    resumed = checkpoint_step(Path(config["resume_from"])) if config.get("resume_from") else 0
    append({"event": "started", "step": max(resumed, 0), "world_size": context.get_world_size()})

    def report(metrics: dict[str, Any], path: Path | None) -> None:
        append({"event": "step", **metrics, **({"checkpoint": path.name} if path is not None else {})})
        saved = ray.train.Checkpoint.from_directory(str(path)) if path is not None else None
        ray.train.report(dict(metrics), checkpoint=saved)

    train_worker(config, report=report)


def run_with_ray(
    config: dict[str, Any],
    scaling: Scaling,
    storage_path: str,
    name: str,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> Any:
    """Trains with `scaling.num_workers` Ray Train workers; returns Ray's Result (metrics, checkpoint)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    trainer = TorchTrainer(
        _loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    return trainer.fit()

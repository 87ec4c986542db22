"""`tuneforge jobs`: fine-tuning jobs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tuneforge.cli.options import client_for, client_options
from tuneforge.console import follow_job, job_line
from tuneforge.training.spec import HYPERPARAMETER_FIELDS


def _job_spec(args: argparse.Namespace):  # -> training_pb2.JobSpec
    from google.protobuf import json_format

    from tuneforge.v1 import training_pb2

    spec = training_pb2.JobSpec()
    if args.spec_file:
        try:
            json_format.Parse(Path(args.spec_file).read_text(), spec)
        except (OSError, json_format.ParseError) as exc:
            sys.exit(f"tuneforge: --spec-file {args.spec_file}: {exc}")
    for name, value in (
        ("base_model", args.base_model),
        ("dataset_version_id", args.dataset_version),
        ("adapter_name", args.adapter_name),
    ):
        if value:
            setattr(spec, name, value)
    if args.method:
        spec.method = training_pb2.TrainingMethod.Value(f"TRAINING_METHOD_{args.method.upper()}")
    lora = {
        "r": args.lora_r,
        "alpha": args.lora_alpha,
        "dropout": args.lora_dropout,
        "base_precision": args.base_precision,
    }
    for name, value in lora.items():
        if value is not None:
            setattr(spec.lora, name, value)
    if args.target_modules:
        spec.lora.target_modules[:] = [m.strip() for m in args.target_modules.split(",") if m.strip()]
    for name in HYPERPARAMETER_FIELDS:  # the numeric flags; the switches follow
        value = getattr(args, name, None)
        if value is not None and not isinstance(value, bool):
            setattr(spec.hyperparameters, name, value)
    if args.no_packing:
        spec.hyperparameters.packing = False
    if args.train_on_prompt:
        spec.hyperparameters.train_on_prompt = True
    if args.gradient_checkpointing:
        spec.hyperparameters.gradient_checkpointing = True
    if args.torch_compile is not None:
        spec.hyperparameters.torch_compile = args.torch_compile
    if args.zero_stage:
        spec.deepspeed.stage = args.zero_stage
    if args.offload_optimizer:
        spec.deepspeed.offload_optimizer = True
    if args.offload_parameters:
        spec.deepspeed.offload_parameters = True
    if args.optimizer_precision:
        spec.deepspeed.optimizer_precision = args.optimizer_precision
    for name in ("num_workers", "gpus_per_worker", "cpus_per_worker", "max_failures"):
        value = getattr(args, name)
        if value is not None:
            setattr(spec.resources, name, value)
    if args.gpu:
        spec.resources.use_gpu = True
    return spec


def cmd_jobs(args: argparse.Namespace) -> int:
    from tuneforge.v1 import training_pb2

    with client_for(args) as client:
        command = args.jobs_command
        if command == "create":
            job = client.create_job(_job_spec(args), idempotency_key=args.idempotency_key or "")
            print(job_line(job))
            if not args.follow:
                return 0
            follow_job(client, job.id)
            job = client.get_job(job.id)
            print(job_line(job))
            return 0 if job.state == training_pb2.JOB_STATE_SUCCEEDED else 1
        if command == "list":
            states = [training_pb2.JobState.Value(f"JOB_STATE_{s.upper()}") for s in args.state or []]
            for job in client.list_jobs(states=states):
                print(job_line(job))
        elif command == "get":
            job = client.get_job(args.job_id)
            print(job_line(job) if not args.full else job)
        elif command == "cancel":
            print(job_line(client.cancel_job(args.job_id)))
        elif command == "events":
            if args.follow:
                follow_job(client, args.job_id, after=args.after)
            else:
                for event in client.job_events(args.job_id, after_sequence=args.after, follow=False):
                    metrics = " ".join(f"{k}={v:.4g}" for k, v in sorted(event.metrics.items()))
                    print(f"#{event.sequence:<4d} step {event.step:<6d} {event.message} {metrics}".rstrip())
        elif command == "checkpoints":
            for checkpoint in client.list_checkpoints(args.job_id):
                metrics = " ".join(f"{k}={v:.4g}" for k, v in sorted(checkpoint.metrics.items()))
                print(f"{checkpoint.id}  step {checkpoint.step:<6d} sha256 {checkpoint.weights.sha256[:16]}  {metrics}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jobs", help="fine-tuning jobs on the Ray cluster")
    client_options(p)
    jobs = p.add_subparsers(dest="jobs_command", required=True)
    create = jobs.add_parser("create", help="validate and queue a job (flags override --spec-file)")
    create.add_argument("--spec-file", help="JobSpec as protobuf JSON")
    create.add_argument("--base-model")
    create.add_argument("--dataset-version", help="READY dataset version id (dsv-…)")
    create.add_argument("--adapter-name", help="name the adapter is registered under")
    create.add_argument("--method", choices=["lora", "full"])
    create.add_argument("--lora-r", type=int)
    create.add_argument("--lora-alpha", type=float)
    create.add_argument("--lora-dropout", type=float)
    create.add_argument("--target-modules", help="comma-separated module names, or all-linear")
    create.add_argument(
        "--base-precision", choices=["bf16", "fp8"], help="frozen base matmuls in float8 on Ada/Hopper GPUs (LoRA)"
    )
    for flag, kind in (
        ("--learning-rate", float),
        ("--epochs", float),
        ("--max-steps", int),
        ("--micro-batch-size", int),
        ("--gradient-accumulation-steps", int),
        ("--warmup-ratio", float),
        ("--weight-decay", float),
        ("--max-seq-len", int),
        ("--seed", int),
        ("--eval-every-steps", int),
        ("--checkpoint-every-steps", int),
        ("--num-workers", int),
        ("--gpus-per-worker", int),
        ("--cpus-per-worker", int),
        ("--max-failures", int),
    ):
        create.add_argument(flag, type=kind)
    create.add_argument("--zero-stage", type=int, choices=[2, 3])
    create.add_argument(
        "--optimizer-precision",
        choices=["fp32", "bf16"],
        help="bf16: ZeRO master weights and AdamW moments in bf16 (7B full fine-tuning with offload on a 128 GB host)",
    )
    create.add_argument(
        "--compile",
        dest="torch_compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the decoder layers (default: on for GPU jobs without DeepSpeed)",
    )
    for flag in (
        "--no-packing",
        "--train-on-prompt",
        "--gradient-checkpointing",
        "--offload-optimizer",
        "--offload-parameters",
        "--gpu",
    ):
        create.add_argument(flag, action="store_true")
    create.add_argument("--idempotency-key")
    create.add_argument("--follow", action="store_true", help="stream progress until the job finishes")
    ls = jobs.add_parser("list")
    ls.add_argument("--state", action="append", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    get = jobs.add_parser("get")
    get.add_argument("job_id")
    get.add_argument("--full", action="store_true", help="the whole Job message")
    jobs.add_parser("cancel").add_argument("job_id")
    events = jobs.add_parser("events")
    events.add_argument("job_id")
    events.add_argument("--follow", action="store_true", help="live progress bar until the job finishes")
    events.add_argument("--after", type=int, default=0, help="only events after this sequence")
    jobs.add_parser("checkpoints").add_argument("job_id")
    p.set_defaults(func=cmd_jobs)

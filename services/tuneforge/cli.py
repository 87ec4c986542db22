"""The `tuneforge` command: run services, the embedded platform and the demo, and act as a client."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import sys
from pathlib import Path

from pydantic import ValidationError

DEFAULT_ADDRESS = "127.0.0.1:50051"


def _settings(args: argparse.Namespace, **overrides: object):  # -> Settings
    from tuneforge.common.settings import load_settings

    for name in ("host", "port", "metrics_port", "home"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    try:
        return load_settings(getattr(args, "config", None), **overrides)
    except (ValidationError, FileNotFoundError) as exc:
        sys.exit(f"tuneforge: invalid settings: {exc}")


def _run_server(args: argparse.Namespace, component_names: list[str], **overrides: object) -> int:
    from tuneforge.common.logging import configure_logging
    from tuneforge.common.server import build_server
    from tuneforge.services import COMPONENTS

    settings = _settings(args, **overrides)
    configure_logging(settings.log_level, settings.log_format)

    async def main() -> None:
        server, _ = await build_server(settings, [COMPONENTS[name] for name in component_names])
        await server.serve_until_signal()

    asyncio.run(main())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from tuneforge.services import COMPONENTS

    names = list(COMPONENTS) if args.service == "all" else [args.service]
    return _run_server(args, names)


def cmd_up(args: argparse.Namespace) -> int:
    from tuneforge.services import COMPONENTS

    overrides: dict[str, object] = {}
    if args.auth == "local":
        overrides["auth"] = {"mode": "local"}
    return _run_server(args, list(COMPONENTS), **overrides)


def cmd_demo(args: argparse.Namespace) -> int:
    from tuneforge.demo import run_demo

    return run_demo(Path(args.workdir), timeout=args.timeout)


def _client(args: argparse.Namespace):  # -> TuneforgeClient
    from tuneforge.client import TuneforgeClient

    return TuneforgeClient(args.address, api_key=args.api_key)


def cmd_health(args: argparse.Namespace) -> int:
    from tuneforge.services import COMPONENTS, service_names

    with _client(args) as client:
        worst = 0
        for service in ["", *service_names(list(COMPONENTS))]:
            try:
                status = client.health(service)
            except Exception as exc:  # the server may host only some services
                status = str(exc).splitlines()[0]
            worst = worst or int(status != "SERVING")
            print(f"{service or '(server)':40s} {status}")
    return worst


def cmd_files(args: argparse.Namespace) -> int:
    from tuneforge.v1 import curation_pb2

    with _client(args) as client:
        if args.files_command == "upload":
            fmt = curation_pb2.DataFormat.Value(f"DATA_FORMAT_{args.format.upper()}") if args.format else 0
            f = client.upload_file(args.path, data_format=fmt, idempotency_key=args.idempotency_key or "")
            print(f"{f.id}  {f.filename}  {f.digest.size_bytes} bytes  sha256 {f.digest.sha256}")
        elif args.files_command == "list":
            for f in client.list_files():
                state = curation_pb2.FileState.Name(f.state).removeprefix("FILE_STATE_").lower()
                print(f"{f.id}  {f.filename:30s} {state:9s} {f.digest.size_bytes:>10d} bytes")
        elif args.files_command == "get":
            print(client.call(client.datasets.GetFile, curation_pb2.GetFileRequest(file_id=args.file_id)).file)
        elif args.files_command == "delete":
            client.call(client.datasets.DeleteFile, curation_pb2.DeleteFileRequest(file_id=args.file_id))
            print(f"deleted {args.file_id}")
    return 0


def _format_value(name: str | None) -> int:
    from tuneforge.v1 import curation_pb2

    return curation_pb2.DataFormat.Value(f"DATA_FORMAT_{name.upper()}") if name else 0


def _version_line(version) -> str:
    from tuneforge.v1 import curation_pb2

    state = curation_pb2.DatasetVersionState.Name(version.state).removeprefix("DATASET_VERSION_STATE_").lower()
    counts = version.counts
    return (
        f"{version.id}  {version.dataset:20s} {state:10s} in {counts.records_in:>7d}  "
        f"train {counts.train_records:>7d}  validation {counts.validation_records:>6d}  {version.base_model}"
    )


def cmd_datasets(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from tuneforge.v1 import curation_pb2

    with _client(args) as client:
        command = args.datasets_command
        if command == "upload":
            file_ids = []
            for path in args.paths:
                size = Path(path).stat().st_size
                with tqdm(total=size, unit="B", unit_scale=True, desc=f"upload {Path(path).name}") as bar:
                    stored = client.upload_file(path, data_format=_format_value(args.format), on_progress=bar.update)
                file_ids.append(stored.id)
            settings = {
                "max_seq_len": args.max_seq_len,
                "length_policy": curation_pb2.LengthPolicy.Value(f"LENGTH_POLICY_{args.length_policy.upper()}"),
                "validation_fraction": args.validation_fraction,
                "near_duplicate_threshold": args.near_duplicate_threshold,
                "scrub_pii": not args.keep_pii,
                "seed": args.seed,
            }
            if args.max_invalid is not None:  # unset: the service's curation.max_invalid_fraction
                settings["max_invalid_fraction"] = args.max_invalid
            version = client.create_dataset_version(
                args.dataset, file_ids, args.base_model, data_format=_format_value(args.format), **settings
            )
            if args.no_wait:
                print(_version_line(version))
                return 0
            with tqdm(total=version.bytes_total or 1, unit="B", unit_scale=True, desc="curate") as bar:

                def update(v) -> None:
                    bar.update(max(0, v.bytes_processed - bar.n))

                version = client.wait_for_dataset_version(version.id, on_progress=update)
            print(_version_line(version))
            if version.failure_reason:
                print(f"FAILED: {version.failure_reason}", file=sys.stderr)
                return 1
        elif command == "list":
            token = ""
            while True:
                page = client.call(
                    client.datasets.ListDatasetVersions,
                    curation_pb2.ListDatasetVersionsRequest(dataset=args.dataset or "", page_token=token),
                )
                for version in page.dataset_versions:
                    print(_version_line(version))
                token = page.next_page_token
                if not token:
                    break
        elif command == "show":
            print(client.get_dataset_version(args.version_id))
        elif command == "report":
            report = client.call(
                client.datasets.GetDatasetReport,
                curation_pb2.GetDatasetReportRequest(dataset_version_id=args.version_id),
            )
            if args.out:
                out = Path(args.out)
                out.mkdir(parents=True, exist_ok=True)
                (out / "report.md").write_text(report.markdown)
                (out / "report.json").write_text(report.json)
                (out / "token_lengths.svg").write_text(report.token_length_svg)
                print(f"wrote {out}/report.md, report.json, token_lengths.svg")
            else:
                print(report.json if args.json else report.markdown)
        elif command == "issues":
            token = ""
            while True:
                page = client.call(
                    client.datasets.ListDatasetIssues,
                    curation_pb2.ListDatasetIssuesRequest(
                        dataset_version_id=args.version_id, code=args.code or "", page_token=token
                    ),
                )
                for issue in page.issues:
                    print(f"{issue.source}:{issue.line}  {issue.code:28s} {issue.message}")
                token = page.next_page_token
                if not token:
                    break
        elif command == "delete":
            client.call(
                client.datasets.DeleteDatasetVersion,
                curation_pb2.DeleteDatasetVersionRequest(dataset_version_id=args.version_id),
            )
            print(f"deleted {args.version_id}")
    return 0


def cmd_adapters(args: argparse.Namespace) -> int:
    from tuneforge.v1 import training_pb2

    with _client(args) as client:
        command = args.adapters_command
        if command == "list":
            token = ""
            while True:
                page = client.call(client.adapters.ListAdapters, training_pb2.ListAdaptersRequest(page_token=token))
                for adapter in page.adapters:
                    aliases = ", ".join(f"{k}→{v}" for k, v in sorted(adapter.aliases.items()))
                    print(f"{adapter.name:30s} latest {adapter.latest_version:<4d} {adapter.base_model:30s} {aliases}")
                token = page.next_page_token
                if not token:
                    break
        elif command == "show":
            print(client.call(client.adapters.GetAdapterVersion, adapter_version_request(args.ref)).adapter_version)
        elif command == "alias":
            adapter = client.call(
                client.adapters.SetAdapterAlias,
                training_pb2.SetAdapterAliasRequest(adapter=args.adapter, alias=args.alias, version=args.version),
            ).adapter
            print(f"{args.adapter}:{args.alias} → {adapter.aliases[args.alias]}")
        elif command == "delete":
            name, _, version = args.ref.partition(":")
            if not version.isdigit():
                print("tuneforge: delete takes NAME:VERSION", file=sys.stderr)
                return 2
            client.call(
                client.adapters.DeleteAdapterVersion,
                training_pb2.DeleteAdapterVersionRequest(adapter=name, version=int(version)),
            )
            print(f"deleted {args.ref}")
    return 0


def adapter_version_request(ref: str):  # -> training_pb2.GetAdapterVersionRequest
    """The GetAdapterVersion request for `name`, `name:<version>` or `name:<alias>`."""
    from tuneforge.v1 import training_pb2

    name, _, selector = ref.partition(":")
    request = training_pb2.GetAdapterVersionRequest(adapter=name)
    if selector.isascii() and selector.isdigit():
        request.version = int(selector)
    else:
        request.alias = selector or "latest"
    return request


def _job_line(job) -> str:
    from tuneforge.v1 import training_pb2

    state = training_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_")
    loss = f"loss {job.metrics['loss']:.4f}" if "loss" in job.metrics else ""
    tail = job.adapter_version or (f"{job.error.code}: {job.error.message}" if job.error.code else "")
    return (
        f"{job.id}  {state:16s} step {job.step:>6d}/{job.total_steps:<6d} {loss:12s} {job.spec.adapter_name:24s} {tail}"
    ).rstrip()


def follow_job(client, job_id: str, after: int = 0, file=None) -> int:  # client: TuneforgeClient
    """Streams a job's events until it finishes: a progress bar with loss and tokens/s, other events as lines.

    Returns the last sequence seen (to resume with after a dropped connection).
    """
    from tqdm import tqdm

    from tuneforge.v1 import training_pb2

    out = file or sys.stdout
    bar = None
    try:
        for event in client.job_events(job_id, after_sequence=after):
            after = event.sequence
            if event.type == training_pb2.JOB_EVENT_TYPE_METRICS:
                total = int(client.get_job(job_id).total_steps) if bar is None else bar.total
                if bar is None:
                    bar = tqdm(total=total or None, unit="step", desc="train", file=out, dynamic_ncols=True)
                bar.update(max(0, event.step - bar.n))
                bar.set_postfix(
                    loss=f"{event.metrics.get('loss', float('nan')):.4f}",
                    tok_s=f"{event.metrics.get('tokens_per_second', 0):,.0f}",
                    lr=f"{event.metrics.get('learning_rate', 0):.2e}",
                )
                continue
            text = event.message
            if event.type == training_pb2.JOB_EVENT_TYPE_STATE_CHANGED:
                text = f"[{training_pb2.JobState.Name(event.state).removeprefix('JOB_STATE_')}] {text}"
            line = f"#{event.sequence:<4d} step {event.step:<6d} {text}"
            if bar is not None:
                bar.write(line, file=out)
            else:
                print(line, file=out, flush=True)
    finally:
        if bar is not None:
            bar.close()
    return after


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
    hyper = (
        "learning_rate",
        "epochs",
        "max_steps",
        "micro_batch_size",
        "gradient_accumulation_steps",
        "warmup_ratio",
        "weight_decay",
        "max_seq_len",
        "seed",
        "eval_every_steps",
        "checkpoint_every_steps",
    )
    for name in hyper:
        value = getattr(args, name)
        if value is not None:
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

    with _client(args) as client:
        command = args.jobs_command
        if command == "create":
            job = client.create_job(_job_spec(args), idempotency_key=args.idempotency_key or "")
            print(_job_line(job))
            if not args.follow:
                return 0
            follow_job(client, job.id)
            job = client.get_job(job.id)
            print(_job_line(job))
            return 0 if job.state == training_pb2.JOB_STATE_SUCCEEDED else 1
        if command == "list":
            states = [training_pb2.JobState.Value(f"JOB_STATE_{s.upper()}") for s in args.state or []]
            for job in client.list_jobs(states=states):
                print(_job_line(job))
        elif command == "get":
            job = client.get_job(args.job_id)
            print(_job_line(job) if not args.full else job)
        elif command == "cancel":
            print(_job_line(client.cancel_job(args.job_id)))
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


def stream_answer(
    client, model: str, messages: list[tuple[str, str]], sampling, out=None, shown: list[str] | None = None
) -> tuple[str, object]:
    """Streams one answer to `out` as it is decoded; returns (text, last message).

    `shown` collects the pieces as they are written, so a caller interrupted mid-answer (Ctrl-C
    cancels the call) knows what the user saw.
    """
    from tuneforge.v1 import common_pb2, inference_pb2

    out = out or sys.stdout
    request = inference_pb2.GenerateStreamRequest(
        model=model, messages=[common_pb2.ChatMessage(role=r, content=c) for r, c in messages], sampling=sampling
    )
    parts: list[str] = [] if shown is None else shown
    last = None
    try:
        with contextlib.closing(client.stream(client.inference.GenerateStream, request)) as stream:
            for last in stream:
                out.write(last.delta)
                out.flush()
                parts.append(last.delta)
    finally:
        out.write("\n")
        out.flush()
    return "".join(parts), last


def _sampling(args: argparse.Namespace):  # -> inference_pb2.SamplingParams
    from tuneforge.v1 import inference_pb2

    sampling = inference_pb2.SamplingParams(
        temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens, stop=args.stop or []
    )
    if args.seed is not None:
        sampling.seed = args.seed
    return sampling


def cmd_generate(args: argparse.Namespace) -> int:
    from tuneforge.v1 import inference_pb2

    messages = ([("system", args.system)] if args.system else []) + [("user", args.prompt)]
    with _client(args) as client:
        if args.no_stream:
            from tuneforge.v1 import common_pb2

            response = client.call(
                client.inference.Generate,
                inference_pb2.GenerateRequest(
                    model=args.model,
                    messages=[common_pb2.ChatMessage(role=r, content=c) for r, c in messages],
                    sampling=_sampling(args),
                ),
            )
            print(response.text)
            print(
                f"[{response.resolved_model}: {response.usage.prompt_tokens} prompt + "
                f"{response.usage.completion_tokens} completion tokens]",
                file=sys.stderr,
            )
            return 0
        _, last = stream_answer(client, args.model, messages, _sampling(args))
        if last is not None:
            print(f"[{last.usage.completion_tokens} tokens]", file=sys.stderr)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    """An interactive conversation with an adapter (or the base model), streamed to the terminal.

    The adapter is checked first (unknown: exit status 2). Ctrl-C during an answer stops that answer
    (what was shown stays in the conversation); at the prompt it drops the line. A server error
    is shown and the conversation goes on without that turn. An empty line or Ctrl-D ends it.
    """
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401 - line editing and history for input()
    from tuneforge.client import TuneforgeError

    history: list[tuple[str, str]] = [("system", args.system)] if args.system else []
    model = args.adapter or ""
    with _client(args) as client:
        if model:
            try:
                version = client.call(client.adapters.GetAdapterVersion, adapter_version_request(model))
            except TuneforgeError as exc:
                if exc.code not in ("NOT_FOUND", "INVALID_ARGUMENT"):
                    raise
                print(
                    f"tuneforge: cannot chat with adapter {model!r}: {exc.message}. "
                    "`tuneforge adapters list` shows the adapters of your key's tenant.",
                    file=sys.stderr,
                )
                return 2
            described = f"{model} ({version.adapter_version.adapter}:{version.adapter_version.version})"
        else:
            described = "the base model"
        print(f"chatting with {described}; Ctrl-C stops an answer, an empty line or Ctrl-D ends", file=sys.stderr)
        while True:
            try:
                line = input("> ")
            except EOFError:
                break
            except KeyboardInterrupt:
                print(file=sys.stderr)
                continue
            if not line.strip():
                break
            shown: list[str] = []
            try:
                text, _ = stream_answer(client, model, [*history, ("user", line)], _sampling(args), shown=shown)
            except KeyboardInterrupt:
                text = "".join(shown)
                print("[answer stopped]", file=sys.stderr)
            except TuneforgeError as exc:
                print(f"error: {exc} (the conversation goes on without this turn)", file=sys.stderr)
                continue
            history += [("user", line), ("assistant", text)]
    return 0


def _run_line(run) -> str:
    from tuneforge.v1 import evaluation_pb2

    state = evaluation_pb2.EvalRunState.Name(run.state).removeprefix("EVAL_RUN_STATE_")
    tail = f"  {run.failure_reason}" if run.failure_reason else ""
    return (
        f"{run.id}  {state:10s} {run.progress.completed:>5d}/{run.progress.total:<5d} {run.suite_id:28s} "
        f"{', '.join(run.models)}{tail}"
    )


def follow_eval(client, run_id: str, file=None):  # -> EvalRun
    """A progress bar over a run's answers until it finishes; returns the final run."""
    from tqdm import tqdm

    from tuneforge.v1 import evaluation_pb2

    bar = None
    run = None
    try:
        request = evaluation_pb2.StreamEvalRunRequest(run_id=run_id)
        for message in client.stream(client.evaluation.StreamEvalRun, request):
            run = message.run
            if bar is None:
                bar = tqdm(total=run.progress.total, unit="answer", desc="evaluate", file=file or sys.stdout)
            bar.update(max(0, run.progress.completed - bar.n))
    finally:
        if bar is not None:
            bar.close()
    return run


def cmd_evals(args: argparse.Namespace) -> int:
    from tuneforge.v1 import evaluation_pb2

    with _client(args) as client:
        command = args.evals_command
        if command == "suites":
            suites = client.call(client.evaluation.ListSuites, evaluation_pb2.ListSuitesRequest()).suites
            for suite in suites:
                counts = ", ".join(f"{k} {v}" for k, v in sorted(suite.category_counts.items()))
                print(f"{suite.id:32s} {suite.name:20s} {suite.num_items:>5d} items  {counts}")
        elif command == "upload":
            request = evaluation_pb2.CreateSuiteRequest(name=args.name, jsonl=Path(args.path).read_bytes())
            suite = client.call(client.evaluation.CreateSuite, request).suite
            print(f"{suite.id}  {suite.num_items} items")
        elif command == "run":
            request = evaluation_pb2.CreateEvalRunRequest(
                suite_id=args.suite,
                models=[m.strip() for m in args.models.split(",") if m.strip()],
                judge_model=args.judge or "",
            )
            request.sampling.max_tokens = args.max_tokens
            run = client.call(client.evaluation.CreateEvalRun, request).run
            print(_run_line(run))
            if args.follow:
                run = follow_eval(client, run.id)
                print(_run_line(run))
                return 0 if run.state == evaluation_pb2.EVAL_RUN_STATE_SUCCEEDED else 1
        elif command == "rate":
            request = evaluation_pb2.ImportHumanScoresRequest(run_id=args.run_id, jsonl=Path(args.path).read_bytes())
            response = client.call(client.evaluation.ImportHumanScores, request)
            print(f"{response.imported} rating(s) stored for {response.run.id}")
        elif command == "list":
            runs = client.call(client.evaluation.ListEvalRuns, evaluation_pb2.ListEvalRunsRequest()).runs
            for run in runs:
                print(_run_line(run))
        elif command == "show":
            print(
                _run_line(
                    client.call(client.evaluation.GetEvalRun, evaluation_pb2.GetEvalRunRequest(run_id=args.run_id)).run
                )
            )
        elif command == "report":
            fmt = {"json": 1, "md": 2, "html": 3}[args.format]
            report = client.call(
                client.evaluation.GetEvalReport, evaluation_pb2.GetEvalReportRequest(run_id=args.run_id, format=fmt)
            )
            for warning in report.warnings:
                print(f"warning: {warning}", file=sys.stderr)
            if args.out or args.open:
                import tempfile

                out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="tuneforge-report-"))
                out.mkdir(parents=True, exist_ok=True)
                path = out / f"{args.run_id}.{args.format}"
                path.write_bytes(report.content)
                print(f"wrote {path}")
                if args.open:
                    import webbrowser

                    webbrowser.open(path.resolve().as_uri())
            else:
                sys.stdout.write(report.content.decode())
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from tuneforge.models import EMBEDDED_MODELS

    if args.models_command == "list":
        for name in sorted(EMBEDDED_MODELS):
            print(name)
        return 0
    settings = _settings(args, auth={"mode": "local"})
    from tuneforge.models import ModelResolver

    resolved = ModelResolver(settings.models.cache_dir, settings.models.trust_remote_code).resolve(args.name)
    print(resolved.source)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from tuneforge.common.auth import hash_key
    from tuneforge.common.names import check_resource_name

    if args.keys_command == "hash":
        key = args.key or sys.stdin.readline().strip()
        print(hash_key(key))
        return 0
    key = "tf_" + secrets.token_urlsafe(32)
    if args.role == "service":
        if args.tenant:
            raise SystemExit("--tenant: a service key acts for the tenant each call names; leave it out")
        name = args.name or "service"
        print(f"# service key {name} (put it in the calling service's Secret; it is not stored anywhere):\n# {key}")
        print(f"- sha256: {hash_key(key)}\n  role: service\n  name: {name}")
        return 0
    if not args.tenant:
        raise SystemExit("--tenant is required for member and admin keys")
    check_resource_name(args.tenant, "--tenant")
    print(f"# API key for tenant {args.tenant} (give it to the tenant; it is not stored anywhere):\n# {key}")
    print(
        f"- sha256: {hash_key(key)}\n  tenant: {args.tenant}\n  role: {args.role}\n  name: {args.name or args.tenant}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneforge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def server_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="YAML settings file (or $TUNEFORGE_CONFIG)")
        p.add_argument("--host", help="interface to bind (default 127.0.0.1)")
        p.add_argument("--port", type=int, help="gRPC port (default 50051; 0 = any free port)")
        p.add_argument("--metrics-port", dest="metrics_port", type=int, help="Prometheus /metrics port")
        p.add_argument("--home", type=Path, help="state directory of the embedded default (default ~/.tuneforge)")

    def client_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--address", default=os.environ.get("TUNEFORGE_ADDRESS", DEFAULT_ADDRESS))
        p.add_argument("--api-key", dest="api_key", default=os.environ.get("TUNEFORGE_API_KEY"))

    p = sub.add_parser("serve", help="run one service (or all) as a gRPC server")
    p.add_argument("service", choices=["curation", "training", "inference", "evaluation", "all"])
    server_options(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("up", help="run every service in one process: the embedded default")
    server_options(p)
    p.add_argument(
        "--auth",
        choices=["local", "configured"],
        default="local",
        help="local: single-tenant, loopback only (default); configured: use auth.* from settings",
    )
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("demo", help="start the local platform and run every stage end to end")
    p.add_argument("--workdir", default=".tuneforge/demo", help="state of the demo run (wiped first)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the platform")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("health", help="health of every service at --address")
    client_options(p)
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("files", help="upload and manage raw data files")
    client_options(p)
    files = p.add_subparsers(dest="files_command", required=True)
    up = files.add_parser("upload")
    up.add_argument("path")
    up.add_argument("--format", choices=["alpaca", "sharegpt", "openai_chat"])
    up.add_argument("--idempotency-key", dest="idempotency_key")
    files.add_parser("list")
    files.add_parser("get").add_argument("file_id")
    files.add_parser("delete").add_argument("file_id")
    p.set_defaults(func=cmd_files)

    p = sub.add_parser("datasets", help="curate instruction data into dataset versions")
    client_options(p)
    datasets = p.add_subparsers(dest="datasets_command", required=True)
    up = datasets.add_parser("upload", help="upload files and build a dataset version from them")
    up.add_argument("paths", nargs="+", help="JSONL files (alpaca, ShareGPT or OpenAI chat)")
    up.add_argument("--dataset", required=True, help="dataset name (lower-case letters, digits, '-', '_')")
    up.add_argument("--base-model", dest="base_model", required=True, help="model whose chat template renders it")
    up.add_argument("--format", choices=["alpaca", "sharegpt", "openai_chat"], help="override format detection")
    up.add_argument("--max-seq-len", dest="max_seq_len", type=int, default=4096)
    up.add_argument("--length-policy", dest="length_policy", choices=["drop", "truncate"], default="drop")
    up.add_argument("--validation-fraction", dest="validation_fraction", type=float, default=0.05)
    up.add_argument("--near-duplicate-threshold", dest="near_duplicate_threshold", type=float, default=0.85)
    up.add_argument("--keep-pii", dest="keep_pii", action="store_true", help="do not scrub PII")
    up.add_argument("--seed", type=int, default=0)
    up.add_argument(
        "--max-invalid",
        dest="max_invalid",
        type=float,
        help="share of invalid records (0-1) above which the version fails; 1 keeps the valid records of any "
        "file (default: the service's, 0.5)",
    )
    up.add_argument("--no-wait", dest="no_wait", action="store_true", help="return once the build is queued")
    ls = datasets.add_parser("list")
    ls.add_argument("--dataset")
    datasets.add_parser("show").add_argument("version_id")
    report = datasets.add_parser("report")
    report.add_argument("version_id")
    report.add_argument("--json", action="store_true", help="print the JSON report instead of Markdown")
    report.add_argument("--out", help="write report.md, report.json and token_lengths.svg into this directory")
    issues = datasets.add_parser("issues")
    issues.add_argument("version_id")
    issues.add_argument("--code", help="only issues with this code")
    datasets.add_parser("delete").add_argument("version_id")
    p.set_defaults(func=cmd_datasets)

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

    def sampling_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--system", help="system message")
        p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
        p.add_argument("--top-p", dest="top_p", type=float, default=0.0)
        p.add_argument("--max-tokens", dest="max_tokens", type=int, default=256)
        p.add_argument("--stop", action="append", help="stop sequence (repeatable)")
        p.add_argument("--seed", type=int)

    p = sub.add_parser("generate", help="one answer from an adapter or the base model")
    client_options(p)
    sampling_options(p)
    p.add_argument("--model", default="", help="adapter[:version|alias]; empty for the base model")
    p.add_argument("--no-stream", action="store_true", help="wait for the whole answer")
    p.add_argument("prompt")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="talk to an adapter in the terminal, answers streamed")
    client_options(p)
    sampling_options(p)
    p.add_argument("--adapter", default="", help="adapter[:version|alias]; empty for the base model")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("evals", help="evaluation suites, runs and reports")
    client_options(p)
    evals = p.add_subparsers(dest="evals_command", required=True)
    evals.add_parser("suites", help="built-in and uploaded suites")
    upload = evals.add_parser("upload", help="upload a suite (JSONL)")
    upload.add_argument("path")
    upload.add_argument("--name", required=True)
    run = evals.add_parser("run", help="run a suite: reference model first, then adapters")
    run.add_argument("--suite", required=True, help="suite id, e.g. builtin/core-zh-en")
    run.add_argument("--models", required=True, help="comma-separated: base,my-adapter:prod")
    run.add_argument("--max-tokens", dest="max_tokens", type=int, default=256)
    run.add_argument("--follow", action="store_true", help="progress bar until the run finishes")
    run.add_argument("--judge", help="model that rates every answer 1-5: base or one of your adapters")
    rate = evals.add_parser("rate", help="import people's 1-5 ratings of a run's answers (JSONL)")
    rate.add_argument("run_id")
    rate.add_argument("path", help='lines of {"item_id", "model", "score", "rater"?, "comment"?}')
    evals.add_parser("list")
    evals.add_parser("show").add_argument("run_id")
    report = evals.add_parser("report")
    report.add_argument("run_id")
    report.add_argument("--format", choices=["md", "html", "json"], default="md")
    report.add_argument("--out", help="directory to write the report to")
    report.add_argument("--open", action="store_true", help="write it and open it in the browser")
    p.set_defaults(func=cmd_evals)

    p = sub.add_parser("adapters", help="the adapter registry")
    client_options(p)
    adapters = p.add_subparsers(dest="adapters_command", required=True)
    adapters.add_parser("list")
    adapters.add_parser("show", help="NAME[:VERSION|ALIAS]").add_argument("ref")
    alias = adapters.add_parser("alias", help="point ALIAS of ADAPTER at VERSION")
    alias.add_argument("adapter")
    alias.add_argument("alias")
    alias.add_argument("version", type=int)
    adapters.add_parser("delete", help="NAME:VERSION").add_argument("ref")
    p.set_defaults(func=cmd_adapters)

    p = sub.add_parser("models", help="embedded models")
    models = p.add_subparsers(dest="models_command", required=True)
    models.add_parser("list")
    prepare = models.add_parser("prepare", help="build an embedded model into the cache and print its path")
    prepare.add_argument("name")
    prepare.add_argument("--config")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("keys", help="API keys")
    keys = p.add_subparsers(dest="keys_command", required=True)
    keys.add_parser("hash", help="SHA-256 of a key, for the keys file").add_argument("key", nargs="?")
    new = keys.add_parser("new", help="a new random key and its keys-file entry")
    new.add_argument("--tenant", help="tenant of a member or admin key")
    new.add_argument("--role", choices=["member", "admin", "service"], default="member")
    new.add_argument("--name")
    p.set_defaults(func=cmd_keys)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tuneforge.client import TuneforgeError
    from tuneforge.common.errors import TuneforgeError as DomainError

    try:
        return args.func(args)
    except (TuneforgeError, DomainError) as exc:
        print(f"tuneforge: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

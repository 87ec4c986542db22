"""What the CLI and the demo print: one-line summaries, and live views of jobs, runs and answers."""

from __future__ import annotations

import contextlib
import sys


def version_line(version) -> str:
    from tuneforge.v1 import curation_pb2

    state = curation_pb2.DatasetVersionState.Name(version.state).removeprefix("DATASET_VERSION_STATE_").lower()
    counts = version.counts
    return (
        f"{version.id}  {version.dataset:20s} {state:10s} in {counts.records_in:>7d}  "
        f"train {counts.train_records:>7d}  validation {counts.validation_records:>6d}  {version.base_model}"
    )


def job_line(job) -> str:
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


def run_line(run) -> str:
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


def stream_answer(
    client,
    model: str,
    messages: list[tuple[str, str]],
    sampling,
    out=None,
    shown: list[str] | None = None,
    response_format=None,
) -> tuple[str, object]:
    """Streams one answer to `out` as it is decoded; returns (text, last message).

    `shown` collects the pieces as they are written, so a caller interrupted mid-answer (Ctrl-C
    cancels the call) knows what the user saw. `response_format`: an `inference_pb2.ResponseFormat`
    (structured output), or None for free text.
    """
    from tuneforge.v1 import common_pb2, inference_pb2

    out = out or sys.stdout
    request = inference_pb2.GenerateStreamRequest(
        model=model,
        messages=[common_pb2.ChatMessage(role=r, content=c) for r, c in messages],
        sampling=sampling,
        response_format=response_format,
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


def follow_export(client, export_id: str, file=None):  # -> export_pb2.ModelExport
    """Prints each new stage of a merge or export (with its progress) until it finishes; returns it."""
    from tuneforge.v1 import export_pb2

    out = file or sys.stdout
    shown = [""]

    def show(export) -> None:
        if export.stage != shown[0]:
            shown[0] = export.stage
            print(f"  {export.progress:4.0%} {export.stage}", file=out, flush=True)

    export = client.wait_for_export(export_id, on_progress=show)
    if export.state != export_pb2.EXPORT_STATE_SUCCEEDED:
        print(f"  {export_pb2.ExportState.Name(export.state)}: {export.error}", file=out, flush=True)
    return export

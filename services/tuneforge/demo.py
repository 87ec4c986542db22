"""`make demo`: start the embedded platform as its own process, check health, run every stage.

Stages so far: contracts and auth (an authenticated call), data upload (DatasetService, chunked,
hash-verified, idempotent), curation (a dataset version with its report), training (a LoRA job on
the platform's local Ray, its progress streamed, the adapter registered), inference (the adapter
answers next to the base model from one replica), evaluation (the adapter against the base model
on held-out items, with a 95% interval), merge and export (the adapter merged into its base as a
model version, exported as GGUF Q8_0 and downloaded), promotion (a gate on `prod`, then `prod` moved
through it with the gate's verdict). The platform runs as `tuneforge up` in a child process
and is stopped with SIGTERM at the end, which must drain and exit cleanly.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tuneforge.client import TuneforgeClient
from tuneforge.services import COMPONENTS, service_names

DEMO_DIR = Path(__file__).resolve().parent / "demo_data"
DEMO_DATA = DEMO_DIR / "event_dates.jsonl"
DEMO_FILES = ["event_dates.jsonl", "dates_openai.jsonl", "translation_alpaca.jsonl", "support_sharegpt.jsonl"]
DEMO_BASE_MODEL = "smollm2-135m-instruct"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _console_check(port: int) -> str:
    """The web console's address once `tuneforge up` serves it (its health answers), else why not."""
    import urllib.request

    url = f"http://127.0.0.1:{port}/"
    try:
        with urllib.request.urlopen(f"{url}healthz", timeout=10) as answer:  # noqa: S310 (loopback URL)
            return url if answer.status == 200 else f"{url} (health answered {answer.status})"
    except OSError as exc:
        return f"{url} (not answering: {exc})"


def _say(stage: str, text: str) -> None:
    print(f"[{stage}] {text}", flush=True)


def run_demo(workdir: Path, timeout: float = 600.0) -> int:
    """Runs the demo in `workdir` (wiped first); returns the process exit code."""
    workdir = workdir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    port = _free_port()
    log_path = workdir / "platform.log"
    env = {**os.environ, "TUNEFORGE_LOG_FORMAT": "console"}
    console_port = _free_port()
    command = [sys.executable, "-m", "tuneforge.cli", "up", "--port", str(port), "--home", str(workdir / "home")]
    command += ["--console-port", str(console_port)]
    _say("platform", f"starting `tuneforge up` on 127.0.0.1:{port} (log: {log_path})")
    _say("console", f"web console: http://127.0.0.1:{console_port}/ while the demo runs (local mode: any key signs in)")
    started = time.monotonic()
    with open(log_path, "wb") as log_file:
        platform = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        with TuneforgeClient(f"127.0.0.1:{port}") as client:
            names = service_names(list(COMPONENTS))
            _wait(client, platform, names, timeout, log_path)
            _say("platform", f"all {len(names)} services SERVING after {time.monotonic() - started:.1f}s:")
            for name in names:
                _say("platform", f"  {name}: {client.health(name)}")
            _say("console", f"web console answering at {_console_check(console_port)} (open it while the demo runs)")

            files_before = list(client.list_files())
            _say("auth", f"authenticated call ListFiles answered ({len(files_before)} files; local single-tenant mode)")

            uploaded = client.upload_file(DEMO_DATA, idempotency_key="demo-event-dates")
            _say(
                "upload",
                f"uploaded {uploaded.filename} as {uploaded.id}: {uploaded.digest.size_bytes} bytes, "
                f"sha256 {uploaded.digest.sha256[:16]}…",
            )
            again = client.upload_file(DEMO_DATA, idempotency_key="demo-event-dates")
            _say(
                "upload",
                f"retried with the same idempotency key → same file {again.id} "
                f"({'ok' if again.id == uploaded.id else 'MISMATCH'})",
            )
            if again.id != uploaded.id:
                return 1

            version_id = _curate(client, uploaded.id, workdir)
            adapter = _train(client, version_id)
            _serve(client, adapter)
            suite_id = _evaluate(client, adapter, workdir)
            _merge_and_export(client, adapter, workdir)
            _promote(client, adapter, suite_id)

    except Exception as exc:
        _say("demo", f"FAILED: {exc}")
        _stop(platform)
        _say("demo", f"platform log: {log_path}")
        return 1
    code = _stop(platform)
    _say("platform", f"SIGTERM → drained and exited with code {code}")
    _say("demo", "done" if code == 0 else "FAILED: the platform did not shut down cleanly")
    return 0 if code == 0 else 1


def _curate(client: TuneforgeClient, event_file_id: str, workdir: Path) -> str:
    """Curation stage: the sample files become one dataset version; the report shows each rule."""
    from tuneforge.v1 import curation_pb2

    file_ids = [event_file_id] + [client.upload_file(DEMO_DIR / name).id for name in DEMO_FILES[1:]]
    version = client.create_dataset_version(
        "demo", file_ids, DEMO_BASE_MODEL, idempotency_key="demo-v1", max_seq_len=1024, validation_fraction=0.15
    )
    _say(
        "curation",
        f"building dataset version {version.id} from {len(file_ids)} files with the chat template of {DEMO_BASE_MODEL}",
    )
    version = client.wait_for_dataset_version(version.id, timeout=600)
    if version.state != curation_pb2.DATASET_VERSION_STATE_READY:
        raise RuntimeError(f"dataset version failed: {version.failure_reason}")
    c = version.counts
    _say(
        "curation",
        f"read {c.records_in} records: {c.invalid} invalid, {c.exact_duplicates} exact and "
        f"{c.near_duplicates} near duplicates removed, {c.too_long} too long → "
        f"{c.train_records} train / {c.validation_records} validation ({c.train_tokens} train tokens)",
    )
    _say("curation", "PII replaced: " + ", ".join(f"{k} {v}" for k, v in sorted(c.pii_replacements.items())))
    report = client.call(
        client.datasets.GetDatasetReport, curation_pb2.GetDatasetReportRequest(dataset_version_id=version.id)
    )
    _say("curation", "issues: " + ", ".join(f"{code} {n}" for code, n in sorted(report.issue_counts.items())))
    out = workdir / "dataset-report"
    out.mkdir(exist_ok=True)
    (out / "report.md").write_text(report.markdown)
    (out / "report.json").write_text(report.json)
    (out / "token_lengths.svg").write_text(report.token_length_svg)
    _say("curation", f"report: {out / 'report.md'}")
    preview = client.call(
        client.datasets.PreviewDatasetRecords,
        curation_pb2.PreviewDatasetRecordsRequest(dataset_version_id=version.id, limit=1),
    ).records[0]
    _say("curation", f"first training record ({preview.num_tokens} tokens, {preview.num_loss_tokens} trained):")
    for line in preview.text.splitlines():
        print(f"    {line}")
    return version.id


def _train(client: TuneforgeClient, version_id: str) -> str:
    """Training stage: a LoRA job on the demo dataset under the platform's local Ray; its loss must go down."""
    from tuneforge.console import follow_job
    from tuneforge.v1 import training_pb2

    spec = training_pb2.JobSpec(
        base_model=DEMO_BASE_MODEL,
        dataset_version_id=version_id,
        adapter_name="demo-dates",
        lora=training_pb2.LoraSpec(r=16, alpha=32, dropout=0.05, target_modules=["all-linear"]),
        hyperparameters=training_pb2.Hyperparameters(
            learning_rate=1e-3, epochs=3, warmup_ratio=0.1, seed=1, checkpoint_every_steps=10
        ),
        resources=training_pb2.ResourceSpec(num_workers=1, cpus_per_worker=2),
    )
    job = client.create_job(spec, idempotency_key="demo-train-1")
    _say("training", f"job {job.id}: LoRA r16 on {DEMO_BASE_MODEL}, {job.spec.hyperparameters.max_seq_len}-token rows")
    follow_job(client, job.id)
    job = client.get_job(job.id)
    if job.state != training_pb2.JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"training job {job.id} {training_pb2.JobState.Name(job.state)}: {job.error.message}")
    losses = [
        e.metrics["loss"]
        for e in client.job_events(job.id, follow=False)
        if e.type == training_pb2.JOB_EVENT_TYPE_METRICS
    ]
    quarter = max(1, len(losses) // 4)
    first, last = sum(losses[:quarter]) / quarter, sum(losses[-quarter:]) / quarter
    _say(
        "training",
        f"{len(losses)} steps: loss {first:.3f} (first quarter) → {last:.3f} (last quarter), "
        f"validation loss {job.metrics.get('validation_loss', float('nan')):.3f}, "
        f"{job.metrics.get('tokens_per_second', 0):,.0f} tokens/s",
    )
    if not last < first:
        raise RuntimeError("the training loss did not go down")
    checkpoints = client.list_checkpoints(job.id)
    _say("training", "checkpoints: " + ", ".join(f"step {c.step}" for c in checkpoints))
    _say("training", f"registered adapter {job.adapter_version}")
    return job.adapter_version


DEMO_PROMPT = (
    'Extract the event and its date from the text. Answer with JSON only, with keys "event" and "date" '
    "(YYYY-MM-DD).\n\nThe annual shareholder meeting will be held on September 4, 2026."
)


def _serve(client: TuneforgeClient, adapter: str) -> None:
    """Inference stage: the new adapter answers next to the base model, from the same replica."""
    from tuneforge.v1 import common_pb2, inference_pb2

    models = client.list_models()
    _say("inference", "models served: " + ", ".join(f"{m.name}{' (base)' if m.is_base else ''}" for m in models))
    _say("inference", f"prompt: {DEMO_PROMPT.splitlines()[-1]}")
    for model in ("", adapter):
        response = client.call(
            client.inference.Generate,
            inference_pb2.GenerateRequest(
                model=model,
                messages=[common_pb2.ChatMessage(role="user", content=DEMO_PROMPT)],
                sampling=inference_pb2.SamplingParams(max_tokens=64),
            ),
        )
        _say("inference", f"{response.resolved_model:>24s} → {response.text.strip()!r}")


def _evaluate(client: TuneforgeClient, adapter: str, workdir: Path) -> str:
    """Evaluation stage: the adapter against the base model on held-out items, with a 95% interval; the suite's id."""
    import json

    from tuneforge.console import follow_eval
    from tuneforge.v1 import evaluation_pb2

    request = evaluation_pb2.CreateSuiteRequest(
        name="demo-dates", jsonl=(DEMO_DIR / "eval_dates.jsonl").read_bytes(), idempotency_key="demo-suite-1"
    )
    suite = client.call(client.evaluation.CreateSuite, request).suite
    _say("evaluation", f"suite {suite.id}: {suite.num_items} held-out items (valid JSON with the right date)")
    run_request = evaluation_pb2.CreateEvalRunRequest(suite_id=suite.id, models=["base", adapter])
    run_request.sampling.max_tokens = 64
    run = client.call(client.evaluation.CreateEvalRun, run_request).run
    run = follow_eval(client, run.id)
    if run.state != evaluation_pb2.EVAL_RUN_STATE_SUCCEEDED:
        raise RuntimeError(f"evaluation run {run.id} did not succeed: {run.failure_reason}")
    out = workdir / "eval-report"
    out.mkdir(exist_ok=True)
    for fmt, name in (
        (evaluation_pb2.REPORT_FORMAT_JSON, "report.json"),
        (evaluation_pb2.REPORT_FORMAT_MARKDOWN, "report.md"),
        (evaluation_pb2.REPORT_FORMAT_HTML, "report.html"),
    ):
        report = client.call(
            client.evaluation.GetEvalReport, evaluation_pb2.GetEvalReportRequest(run_id=run.id, format=fmt)
        )
        (out / name).write_bytes(report.content)
    data = json.loads((out / "report.json").read_text())
    entry = data["categories"]["structured_output"]
    diff = entry["difference"][adapter]
    _say(
        "evaluation",
        f"structured output pass rate: base {entry['pass_rate']['base']:.0%} → {adapter} "
        f"{entry['pass_rate'][adapter]:.0%}; difference {diff['estimate']:+.0%}, 95% CI "
        f"[{diff['low']:+.0%}, {diff['high']:+.0%}] ({len(data['flips'][adapter]['fixed'])} fixed, "
        f"{len(data['flips'][adapter]['broken'])} broken)",
    )
    _say("evaluation", f"report: {out / 'report.html'} (also report.md, report.json)")
    if not diff["low"] > 0:
        raise RuntimeError("the adapter's gain on the held-out items is not significant (its 95% interval reaches 0)")
    return suite.id


def _merge_and_export(client: TuneforgeClient, adapter: str, workdir: Path) -> None:
    """Merge and export stage: the adapter merged into its base (a model version), then that model as GGUF Q8_0."""
    from transformers.integrations.gguf import read_gguf_metadata

    from tuneforge.console import follow_export
    from tuneforge.v1 import export_pb2

    request = export_pb2.MergeAdapterRequest(adapter=adapter, dtype="bfloat16", idempotency_key="demo-merge-1")
    merge = client.call(client.exports.MergeAdapter, request).export
    _say("merge", f"merging {merge.source} into {DEMO_BASE_MODEL} ({merge.id}, bf16 weights, fp32 arithmetic):")
    merge = follow_export(client, merge.id)
    if merge.state != export_pb2.EXPORT_STATE_SUCCEEDED:
        raise RuntimeError(f"merge {merge.id} did not succeed: {merge.error}")
    size = sum(f.digest.size_bytes for f in merge.files)
    _say(
        "merge",
        f"registered model version {merge.model_version} (merged from {merge.source}): {len(merge.files)} files, "
        f"{size / 1e6:.0f} MB of safetensors, config, tokenizer and chat template",
    )
    request = export_pb2.ExportModelRequest(
        model=merge.model_version, format="gguf", quant="q8_0", idempotency_key="demo-export-1"
    )
    export = client.call(client.exports.ExportModel, request).export
    _say("export", f"exporting {export.source} as GGUF Q8_0 ({export.id}):")
    export = follow_export(client, export.id)
    if export.state != export_pb2.EXPORT_STATE_SUCCEEDED:
        raise RuntimeError(f"export {export.id} did not succeed: {export.error}")
    (path,) = client.download_export(export.id, workdir / "export")
    metadata, tensors = read_gguf_metadata(str(path))
    _say(
        "export",
        f"wrote GGUF {path} ({path.stat().st_size / 1e6:.0f} MB, sha256 checked): architecture "
        f"{metadata['general.architecture']}, {len(tensors)} tensors, {metadata['tokenizer.ggml.tokens']}-token "
        f"vocabulary{', chat template' if 'tokenizer.chat_template' in metadata else ''} "
        "(llama.cpp / Ollama run it)",
    )


def _promote(client: TuneforgeClient, adapter: str, suite_id: str) -> None:
    """Promotion stage: `prod` of the adapter gets a gate, then moves through it on the evaluation run's evidence."""
    from tuneforge.v1 import training_pb2

    name, _, version = adapter.partition(":")
    gate = training_pb2.PromotionGate(suite_ids=[suite_id], target_categories=["structured_output"], max_drop=0.05)
    request = training_pb2.SetPromotionGateRequest(adapter=name, alias="prod", gate=gate)
    client.call(client.adapters.SetPromotionGate, request)
    _say(
        "promotion",
        f"gate on {name}:prod: a finished run on {suite_id} against the base model where structured_output "
        "improves (95% interval above 0) and nothing else drops more than 5%",
    )
    moved = client.call(
        client.adapters.SetAdapterAlias,
        training_pb2.SetAdapterAliasRequest(adapter=name, alias="prod", version=int(version)),
    )
    verdict = moved.promotion
    _say(
        "promotion",
        f"{name}:prod → {moved.adapter.aliases['prod']}: gate {'PASSED' if verdict.passed else 'FAILED'} "
        f"on run {', '.join(verdict.run_ids)}",
    )
    for c in verdict.categories:
        _say(
            "promotion",
            f"  {c.category}: {c.difference:+.0%} [{c.difference_ci_low:+.0%}, {c.difference_ci_high:+.0%}] "
            f"{'ok' if c.passed else 'FAIL'} ({c.reason})",
        )
    _say("promotion", "the verdict and the run are in the version's lineage (tuneforge adapters show, ListModels)")


def _wait(client: TuneforgeClient, platform: subprocess.Popen, names: list[str], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if platform.poll() is not None:
            raise RuntimeError(f"the platform exited with code {platform.returncode}; see {log}")
        try:
            client.wait_until_serving(names, timeout=2)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


def _stop(platform: subprocess.Popen) -> int:
    if platform.poll() is None:
        platform.send_signal(signal.SIGTERM)
        try:
            platform.wait(timeout=60)
        except subprocess.TimeoutExpired:
            platform.kill()
            platform.wait()
            return -9
    return platform.returncode

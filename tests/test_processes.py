"""Services as real processes: `tuneforge serve`, metrics, graceful SIGTERM, and the demo end to end."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ACME_KEY, MODEL_CACHE

from tuneforge.client import TuneforgeClient


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read_until(process: subprocess.Popen, event: str, timeout: float = 60) -> dict:
    """The first JSON log record with this event from the process's stderr."""
    assert process.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            return record
    raise AssertionError(f"no {event!r} log record from the process")


def test_serve_one_service_then_drain_on_sigterm(tmp_path: Path, keys_file: Path) -> None:
    metrics_port = _free_port()
    env = {
        **os.environ,
        "TUNEFORGE_AUTH__KEYS_FILE": str(keys_file),
        "TUNEFORGE_MODELS__CACHE_DIR": str(MODEL_CACHE),
        "TUNEFORGE_LOG_FORMAT": "json",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tuneforge.cli",
            "serve",
            "curation",
            "--port",
            "0",
            "--home",
            str(tmp_path),
            "--metrics-port",
            str(metrics_port),
        ],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        port = _read_until(process, "server_listening")["port"]
        with TuneforgeClient(f"127.0.0.1:{port}", api_key=ACME_KEY) as client:
            client.wait_until_serving(["tuneforge.v1.DatasetService"], timeout=60)
            stored = client.upload_file(b'{"instruction": "a", "output": "b"}\n', filename="p.jsonl")
            assert [f.id for f in client.list_files()] == [stored.id]
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert 'tuneforge_grpc_requests_total{code="OK",method="/tuneforge.v1.DatasetService/UploadFile"} 1.0' in body
        assert "tuneforge_grpc_request_seconds_bucket" in body
        rpc_log = _read_until(process, "rpc")
        assert rpc_log["tenant"] == "acme" and rpc_log["code"] == "OK" and "timestamp" in rpc_log
        process.send_signal(signal.SIGTERM)
        assert _read_until(process, "server_stopped")
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_refuses_to_start_without_keys_when_not_local(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    result = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "serve", "curation", "--port", "0", "--home", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "auth.keys_file" in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(1800)  # every stage on 2 cores, LoRA training included (~6 minutes alone)
def test_demo_runs_to_the_end(tmp_path: Path) -> None:
    env = {**os.environ, "TUNEFORGE_MODELS__CACHE_DIR": str(MODEL_CACHE)}
    env.pop("RAY_ADDRESS", None)  # the demo starts and stops a Ray head of its own, as on a laptop
    result = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli", "demo", "--workdir", str(tmp_path / "demo")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1700,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    from tuneforge.services import SERVICE_NAMES

    assert f"all {sum(len(names) for names in SERVICE_NAMES.values())} services SERVING" in result.stdout
    assert "same file" in result.stdout and "(ok)" in result.stdout
    console = re.search(r"\[console\] web console answering at (http://127\.0\.0\.1:\d+/) \(open", result.stdout)
    assert console, result.stdout[:3000]  # `tuneforge up` served the console and said where
    assert f"Tuneforge console: {console.group(1)}" in (tmp_path / "demo" / "platform.log").read_text()
    assert "smollm2-135m-instruct (base)" in result.stdout
    assert "[training] registered adapter demo-dates:1" in result.stdout
    assert "[SUCCEEDED]" in result.stdout and "(last quarter)" in result.stdout
    assert "demo-dates:1 → '" in result.stdout and "smollm2-135m-instruct → '" in result.stdout
    assert "structured output pass rate: base" in result.stdout and "95% CI" in result.stdout
    assert (tmp_path / "demo" / "eval-report" / "report.html").read_text().startswith("<!doctype html>")
    assert "[merge] registered model version demo-dates-merged:1 (merged from demo-dates:1)" in result.stdout
    gguf = tmp_path / "demo" / "export" / "demo-dates-merged-1-Q8_0.gguf"
    assert f"[export] wrote GGUF {gguf}" in result.stdout and "architecture llama" in result.stdout
    with open(gguf, "rb") as handle:
        assert handle.read(4) == b"GGUF"
    assert "demo-dates:prod → 1: gate PASSED on run eval-" in result.stdout
    assert "exited with code 0" in result.stdout


def test_datasets_cli_upload_list_report_issues_delete(platform_server, tmp_path: Path) -> None:
    env = {**os.environ, "TUNEFORGE_ADDRESS": platform_server.address, "TUNEFORGE_API_KEY": ACME_KEY}
    demo = Path(__file__).resolve().parents[1] / "services" / "tuneforge" / "demo_data"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tuneforge.cli", "datasets", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    built = cli(
        "upload",
        str(demo / "translation_alpaca.jsonl"),
        "--dataset",
        "cli-demo",
        "--base-model",
        "tiny-qwen2",
        "--validation-fraction",
        "0.1",
    )
    assert built.returncode == 0, built.stderr
    version_id = built.stdout.split()[0]
    assert version_id.startswith("dsv-") and "ready" in built.stdout
    assert "upload translation_alpaca.jsonl" in built.stderr and "curate" in built.stderr  # progress bars
    listed = cli("list", "--dataset", "cli-demo")
    assert version_id in listed.stdout
    report = cli("report", version_id, "--out", str(tmp_path / "report"))
    assert report.returncode == 0 and (tmp_path / "report" / "token_lengths.svg").exists()
    assert "exact duplicates removed | 2" in (tmp_path / "report" / "report.md").read_text()
    issues = cli("issues", version_id)
    assert "translation_alpaca.jsonl:28  invalid_json" in issues.stdout
    deleted = cli("delete", version_id)
    assert deleted.returncode == 0
    missing = cli("show", version_id)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr

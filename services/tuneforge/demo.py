"""`make demo`: start the embedded platform as its own process, check health, run every stage.

Stages so far: contracts and auth (an authenticated call), data upload (DatasetService, chunked,
hash-verified, idempotent), inference (the embedded base model is loaded and listed). Later issues
add curation, training, evaluation. The platform runs as `tuneforge up` in a child process and is
stopped with SIGTERM at the end, which must drain and exit cleanly.
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

DEMO_DATA = Path(__file__).resolve().parent / "demo_data" / "event_dates.jsonl"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    command = [sys.executable, "-m", "tuneforge.cli", "up", "--port", str(port), "--home", str(workdir / "home")]
    _say("platform", f"starting `tuneforge up` on 127.0.0.1:{port} (log: {log_path})")
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

            models = client.list_models()
            _say(
                "inference", "models served: " + ", ".join(f"{m.name}{' (base)' if m.is_base else ''}" for m in models)
            )
    except Exception as exc:
        _say("demo", f"FAILED: {exc}")
        _stop(platform)
        _say("demo", f"platform log: {log_path}")
        return 1
    code = _stop(platform)
    _say("platform", f"SIGTERM → drained and exited with code {code}")
    _say("demo", "done" if code == 0 else "FAILED: the platform did not shut down cleanly")
    return 0 if code == 0 else 1


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

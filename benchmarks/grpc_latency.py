"""Unary gRPC round-trip latency (p50/p99) and calls/s for a small authenticated call.

Starts `tuneforge serve curation` as its own process (SQLite, API keys), uploads one file, then times
`DatasetService.GetFile` — auth interceptor, metrics, error mapping, a metadata-store read — next to
the baseline measured in the same run: `grpc.health.v1.Health/Check` on the same server, which
passes through the same server and channel but no auth and no store.

    .venv/bin/python benchmarks/grpc_latency.py [--calls 3000] [--threads 8]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from grpc_health.v1 import health_pb2

from tuneforge.client import TuneforgeClient
from tuneforge.common.auth import hash_key
from tuneforge.v1 import curation_pb2

API_KEY = "tf_benchmark_key_0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _timed(call: Callable[[], object], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def _row(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = ordered[len(ordered) // 2] * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    rate = len(samples) / sum(samples)
    return f"{name:48s} {p50:8.3f} {p99:8.3f} {rate:10.0f}"


def _throughput(make_call: Callable[[], Callable[[], object]], threads: int, n: int) -> float:
    calls = [make_call() for _ in range(threads)]
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda c: [c() for _ in range(n)], calls))
    return threads * n / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys.yaml"
        keys.write_text(yaml.safe_dump({"keys": [{"sha256": hash_key(API_KEY), "tenant": "bench"}]}))
        port = _free_port()
        env = {**os.environ, "TUNEFORGE_AUTH__KEYS_FILE": str(keys), "TUNEFORGE_LOG_LEVEL": "WARNING"}
        server = subprocess.Popen(
            [sys.executable, "-m", "tuneforge.cli", "serve", "curation", "--port", str(port), "--home", tmp],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            address = f"127.0.0.1:{port}"
            with TuneforgeClient(address, api_key=API_KEY) as client:
                client.wait_until_serving(["tuneforge.v1.DatasetService"], timeout=120)
                file_id = client.upload_file(b'{"instruction": "hi", "output": "hello"}\n', filename="b.jsonl").id
                get = curation_pb2.GetFileRequest(file_id=file_id)
                check = health_pb2.HealthCheckRequest(service="tuneforge.v1.DatasetService")
                health_call = lambda: client._health.Check(check, timeout=10)  # noqa: E731
                get_call = lambda: client.call(client.datasets.GetFile, get)  # noqa: E731
                for call in (health_call, get_call):  # warm up channels, caches, the interpreter
                    _timed(call, 200)
                baseline = _timed(health_call, args.calls)
                measured = _timed(get_call, args.calls)

                def new_client_call(method: str) -> Callable[[], object]:
                    c = TuneforgeClient(address, api_key=API_KEY)
                    if method == "health":
                        return lambda: c._health.Check(check, timeout=10)
                    return lambda: c.call(c.datasets.GetFile, get)

                n = max(1, args.calls // args.threads)
                base_rate = _throughput(lambda: new_client_call("health"), args.threads, n)
                get_rate = _throughput(lambda: new_client_call("get"), args.threads, n)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)

    print(f"unary gRPC round trip, server `tuneforge serve curation` (SQLite) on {os.cpu_count()} cores, loopback")
    print(f"{'call (1 client, sequential)':48s} {'p50 ms':>8s} {'p99 ms':>8s} {'calls/s':>10s}")
    print(_row("baseline: Health/Check (no auth, no store)", baseline))
    print(_row("DatasetService/GetFile (API key + store read)", measured))
    ratio = statistics.median(measured) / statistics.median(baseline)
    print(f"GetFile p50 / Health p50: {ratio:.2f}x")
    print(f"{args.threads} concurrent clients: Health/Check {base_rate:.0f} calls/s, GetFile {get_rate:.0f} calls/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

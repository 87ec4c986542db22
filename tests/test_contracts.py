"""The proto contracts: generated code is fresh, stale code cannot run, buf lint passes, messages round-trip."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tuneforge import contracts
from tuneforge.v1 import common_pb2, curation_pb2, training_pb2

REPO = Path(__file__).resolve().parents[1]


def test_committed_generated_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    fresh = {p.name: p.read_bytes() for p in contracts.generate(tmp_path)}
    committed = {
        p.name: p.read_bytes()
        for p in contracts.GENERATED_DIR.iterdir()
        if p.name.endswith(contracts.GENERATED_SUFFIXES) or p.name == contracts.DIGEST_MODULE
    }
    assert sorted(fresh) == sorted(committed), "generated files differ from the protos: run `make proto`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated code {stale}: run `make proto` and commit the result"


def test_stale_generated_code_refuses_to_import(tmp_path: Path) -> None:
    with pytest.raises(ImportError, match="make proto"):
        contracts.check_fresh("0" * 64)
    # and the real digest passes
    contracts.check_fresh(contracts.sources_digest())


def test_editing_a_proto_makes_the_package_unimportable(tmp_path: Path) -> None:
    """A changed .proto beside the generated code stops `import tuneforge.v1` in a fresh interpreter."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "proto", copy / "proto")
    shutil.copytree(
        REPO / "services" / "tuneforge", copy / "services" / "tuneforge", ignore=shutil.ignore_patterns("__pycache__")
    )
    proto = copy / "proto" / "tuneforge" / "v1" / "common.proto"
    proto.write_text(proto.read_text() + "\n// an edit without `make proto`\n")
    result = subprocess.run(
        ["python", "-c", "import tuneforge.v1"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(copy / "services")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "stale" in result.stderr and "make proto" in result.stderr


def test_buf_lint_passes() -> None:
    buf = REPO / "node_modules" / ".bin" / "buf"
    if not buf.exists():
        if os.environ.get("CI"):
            pytest.fail("buf is not installed: `make test` installs it with npm ci")
        pytest.skip("buf not installed (run `make bootstrap`)")
    result = subprocess.run([str(buf), "lint"], cwd=REPO / "proto", capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_service_rpc_and_field_is_documented() -> None:
    """Belt and braces for buf's COMMENTS rules: every rpc and field line is preceded by a comment."""
    for proto in contracts.proto_files():
        lines = proto.read_text().splitlines()
        for index, line in enumerate(lines):
            stripped = line.strip()
            is_decl = stripped.startswith(("rpc ", "service ", "message ", "enum ")) or (
                "=" in stripped and stripped.endswith(";") and not stripped.startswith(("option", "syntax", "//"))
            )
            if is_decl:
                assert lines[index - 1].strip().startswith("//"), f"{proto.name}:{index + 1} lacks a comment: {line}"


def test_job_states_follow_the_hosted_fine_tuning_lifecycle() -> None:
    names = [v.name for v in training_pb2.JobState.DESCRIPTOR.values]
    assert names == [
        "JOB_STATE_UNSPECIFIED",
        "JOB_STATE_VALIDATING_FILES",
        "JOB_STATE_QUEUED",
        "JOB_STATE_RUNNING",
        "JOB_STATE_SUCCEEDED",
        "JOB_STATE_FAILED",
        "JOB_STATE_CANCELLED",
    ]


def test_no_request_carries_a_tenant_field() -> None:
    """The tenant comes from the credential, never from the request body."""
    from tuneforge.v1 import evaluation_pb2, inference_pb2

    for module in (common_pb2, curation_pb2, training_pb2, evaluation_pb2, inference_pb2):
        for message in module.DESCRIPTOR.message_types_by_name.values():
            for field in message.fields:
                assert "tenant" not in field.name, f"{message.full_name}.{field.name}"


@given(
    base_model=st.text(max_size=50),
    r=st.integers(min_value=0, max_value=2**31 - 1),
    targets=st.lists(st.text(max_size=20), max_size=5),
    metrics=st.dictionaries(st.text(max_size=10), st.floats(allow_nan=False), max_size=5),
)
def test_job_round_trips_through_the_wire_format(
    base_model: str, r: int, targets: list[str], metrics: dict[str, float]
) -> None:
    job = training_pb2.Job(
        id="job-0123456789ab",
        spec=training_pb2.JobSpec(base_model=base_model, lora=training_pb2.LoraSpec(r=r, target_modules=targets)),
        state=training_pb2.JOB_STATE_RUNNING,
        metrics=metrics,
    )
    assert training_pb2.Job.FromString(job.SerializeToString()) == job

"""Name validation (property-based) and settings precedence."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from tuneforge.common.errors import InvalidArgument
from tuneforge.common.names import (
    check_idempotency_key,
    check_path_segment,
    check_relative_path,
    check_resource_id,
    check_resource_name,
    new_id,
)
from tuneforge.common.settings import load_settings


@given(st.text(max_size=80))
def test_resource_names_accepted_are_dns_labels(value: str) -> None:
    try:
        check_resource_name(value, "name")
    except InvalidArgument as exc:
        assert exc.violations[0].field == "name"
        return
    assert 1 <= len(value) <= 63 and value == value.lower() and value[0] != "-" and value[-1] != "-"
    assert set(value) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")


@given(st.text(max_size=300))
def test_path_segments_accepted_never_climb_or_nest(value: str) -> None:
    try:
        check_path_segment(value, "filename")
    except InvalidArgument as exc:
        assert exc.violations[0].field == "filename"
        return
    assert "/" not in value and "\\" not in value and "\x00" not in value
    assert value not in (".", "..") and not value.startswith((".", "-"))
    assert len(value.encode()) <= 255


@given(st.lists(st.sampled_from(["a", "..", ".", "b.txt", "", "/", "c"]), max_size=8).map("/".join))
def test_relative_paths_accepted_have_no_dot_dot(value: str) -> None:
    try:
        check_relative_path(value, "key")
    except InvalidArgument:
        return
    assert ".." not in value.split("/") and not value.startswith("/")


@pytest.mark.parametrize("value", ["../x", "/abs", "C:/win", "a/../b", "a//b", "x" * 2000, "a\x00b"])
def test_bad_relative_paths(value: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_relative_path(value, "source_uri")
    assert info.value.violations[0].field == "source_uri"


def test_ids_and_keys() -> None:
    file_id = new_id("file")
    assert check_resource_id(file_id, "file_id", "file") == file_id
    with pytest.raises(InvalidArgument):
        check_resource_id(file_id, "job_id", "job")
    assert check_idempotency_key("") == ""
    with pytest.raises(InvalidArgument):
        check_idempotency_key("has space")


def test_defaults_work_with_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path))
    settings = load_settings(None, auth={"mode": "local"})
    assert settings.database_url == f"sqlite:///{tmp_path / 'metadata.db'}"
    assert settings.artifact_root == tmp_path / "artifacts"
    assert settings.inference.base_model == "smollm2-135m-instruct"


def test_precedence_arguments_over_env_over_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "tuneforge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "port": 6000,
                "log_format": "console",
                "database_url": "postgresql+psycopg://db/tuneforge",
                "auth": {"mode": "api_keys", "keys_file": "/secrets/keys.yaml"},
            }
        )
    )
    monkeypatch.setenv("TUNEFORGE_PORT", "7000")
    monkeypatch.setenv("TUNEFORGE_INFERENCE__BASE_MODEL", "tiny-qwen2")
    settings = load_settings(config, host="0.0.0.0")
    assert settings.port == 7000  # env beats the file
    assert settings.host == "0.0.0.0"  # arguments beat both
    assert settings.log_format == "console"  # from the file
    assert settings.inference.base_model == "tiny-qwen2"  # nested env var
    assert settings.auth.keys_file == Path("/secrets/keys.yaml")


def test_invalid_settings_say_what_and_where(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"port": 70000, "unknown_key": 1, "auth": {"mode": "local"}}))
    with pytest.raises(ValueError) as info:
        load_settings(config)
    text = str(info.value)
    assert "port" in text and "unknown_key" in text
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.yaml")


def test_a_remote_inference_address_needs_a_service_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="inference_api_key"):
        load_settings(None, home=tmp_path, auth={"mode": "local"}, evaluation={"inference_address": "inference:50051"})
    settings = load_settings(
        None,
        home=tmp_path,
        auth={"mode": "local"},
        evaluation={"inference_address": "inference:50051", "inference_api_key": "tf_service_0123456789"},
    )
    assert settings.evaluation.inference_api_key.get_secret_value() == "tf_service_0123456789"
    assert "tf_service_0123456789" not in repr(settings)  # never printed in logs

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

NAME_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789-_"


@given(st.text(max_size=80) | st.text(NAME_CHARACTERS + "A.", max_size=70))
def test_resource_names_accepted_are_lower_case_words_with_dashes_and_underscores(value: str) -> None:
    try:
        check_resource_name(value, "name")
    except InvalidArgument as exc:
        assert exc.violations[0].field == "name"
        assert "'-' or '_'" in exc.violations[0].description
        return
    assert 1 <= len(value) <= 63 and value == value.lower()
    assert value[0] not in "-_" and value[-1] not in "-_"
    assert set(value) <= set(NAME_CHARACTERS)


@given(st.text(NAME_CHARACTERS, min_size=1, max_size=61))
def test_every_well_formed_name_is_accepted(middle: str) -> None:
    value = f"a{middle}"[:62] + "z"
    assert check_resource_name(value, "name") == value


@pytest.mark.parametrize("value", ["zh2fr_lora", "support_bot-v2", "a_b", "x"])
def test_names_with_underscores_are_accepted(value: str) -> None:
    assert check_resource_name(value, "adapter_name") == value


@pytest.mark.parametrize("value", ["_lora", "lora_", "-x", "Zh2fr", "a b", "a.b", "a" * 64, ""])
def test_bad_names_are_refused(value: str) -> None:
    with pytest.raises(InvalidArgument):
        check_resource_name(value, "adapter_name")


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
    assert settings.curation.max_invalid_fraction == 0.5  # a build fails when over half its records are invalid


def test_the_invalid_share_limit_is_a_validated_curation_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEFORGE_CURATION__MAX_INVALID_FRACTION", "0.9")
    assert load_settings(None, home=tmp_path, auth={"mode": "local"}).curation.max_invalid_fraction == 0.9
    monkeypatch.delenv("TUNEFORGE_CURATION__MAX_INVALID_FRACTION")
    with pytest.raises(ValueError, match="max_invalid_fraction"):
        load_settings(None, home=tmp_path, auth={"mode": "local"}, curation={"max_invalid_fraction": 1.5})


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

"""Validation of names, ids and relative paths that come from clients.

Every check raises `InvalidArgument` naming the offending field, so no input can reach the stores
unchecked: no `..`, no absolute paths, no NUL or control characters, no over-long names.
"""

from __future__ import annotations

import re
import secrets

from tuneforge.common.errors import InvalidArgument

#: Tenants, datasets, adapters, aliases: lower-case, URL- and path-safe, at most 63 characters. `_`
#: is allowed (`zh2fr_lora`) since no name becomes a Kubernetes object name or a DNS label.
RESOURCE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?")
#: A single path segment of a stored artifact or an uploaded file's name.
PATH_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,254}")
#: Server-assigned ids: `<prefix>-<hex>`.
RESOURCE_ID = re.compile(r"[a-z]{2,8}-[0-9a-f]{8,64}")
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,128}")
MAX_PATH_BYTES = 1024


def new_id(prefix: str) -> str:
    """A fresh random id such as `file-3f2a9c0d1e4b5a6f7c8d9e0f`."""
    return f"{prefix}-{secrets.token_hex(12)}"


def _describe(value: str) -> str:
    shown = value if len(value) <= 40 else value[:37] + "..."
    return repr(shown)


def check_resource_name(value: str, field: str) -> str:
    """Lower-case letters, digits, `-` and `_`, 1-63 characters, starting and ending with a letter or digit."""
    if not RESOURCE_NAME.fullmatch(value or ""):
        raise InvalidArgument.for_field(
            field,
            f"{_describe(value)} is not a valid name: use 1-63 lower-case letters, digits, '-' or '_', "
            "starting and ending with a letter or digit",
        )
    return value


def check_path_segment(value: str, field: str) -> str:
    """One file or directory name: letters, digits, `.`, `_`, `-`; not `.`/`..`; at most 255 bytes."""
    if "\x00" in (value or ""):
        raise InvalidArgument.for_field(field, "must not contain NUL characters")
    if value in (".", "..") or not PATH_SEGMENT.fullmatch(value or ""):
        raise InvalidArgument.for_field(
            field,
            f"{_describe(value)} is not a valid file name: use 1-255 letters, digits, '.', '_' or '-', "
            "without directories, and not starting with '.' or '-'",
        )
    return value


def check_relative_path(value: str, field: str) -> str:
    """A relative path of valid segments joined by `/`; never absolute, never climbing with `..`."""
    if not value:
        raise InvalidArgument.for_field(field, "must not be empty")
    if "\x00" in value:
        raise InvalidArgument.for_field(field, "must not contain NUL characters")
    if len(value.encode()) > MAX_PATH_BYTES:
        raise InvalidArgument.for_field(field, f"is longer than {MAX_PATH_BYTES} bytes")
    if value.startswith("/") or value.startswith("\\") or re.match(r"^[A-Za-z]:", value):
        raise InvalidArgument.for_field(field, f"{_describe(value)} is absolute; give a path relative to the root")
    for segment in value.split("/"):
        if segment == "..":
            raise InvalidArgument.for_field(field, f"{_describe(value)} climbs out of its root with '..'")
        check_path_segment(segment, field)
    return value


def check_resource_id(value: str, field: str, prefix: str) -> str:
    """A server-assigned id with the expected prefix, e.g. `file-…`."""
    if not RESOURCE_ID.fullmatch(value or "") or not value.startswith(prefix + "-"):
        raise InvalidArgument.for_field(field, f"{_describe(value)} is not a valid id; expected '{prefix}-<hex>'")
    return value


def check_idempotency_key(value: str, field: str = "idempotency_key") -> str:
    """1-128 printable ASCII characters without spaces; empty means 'no key'."""
    if value and not IDEMPOTENCY_KEY.fullmatch(value):
        raise InvalidArgument.for_field(field, "must be 1-128 printable ASCII characters without spaces")
    return value

"""Reading raw instruction files: line framing, JSON parsing, format detection and validation.

Every problem becomes an `Issue` with a stable code and a 1-based line number; a bad record is
skipped and never takes a good neighbour with it. Supported record formats:

- alpaca: `instruction`, optional `input`, `output` (a string, or a JSON object/array that is
  serialized deterministically), optional `system`;
- sharegpt: `conversations` of `{from, value}`, optional `system`;
- openai_chat: `messages` of `{role, content}` (content a string or a list of text parts),
  optional `system`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

FORMATS = ("alpaca", "sharegpt", "openai_chat")
DETECT_SAMPLE = 200
DEFAULT_MAX_LINE_BYTES = 4 * 1024 * 1024
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "system": "system",
}
OPENAI_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}

# Stable issue codes (clients may switch on them).
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
NUL_BYTE = "nul_byte"
LINE_TOO_LONG = "line_too_long"
NESTING_TOO_DEEP = "nesting_too_deep"
WRONG_TYPE = "wrong_type"
MISSING_FIELD = "missing_field"
UNKNOWN_FORMAT = "unknown_format"
UNRECOGNIZED_ROLE = "unrecognized_role"
EMPTY_CONTENT = "empty_content"
MISSING_USER_MESSAGE = "missing_user_message"
MISSING_ASSISTANT_MESSAGE = "missing_assistant_message"
MISPLACED_SYSTEM_MESSAGE = "misplaced_system_message"
TRAILING_MESSAGES_DROPPED = "trailing_messages_dropped"
BOM_REMOVED = "bom_removed"
JSON_ARRAY_FILE = "json_array_file"
EMPTY_FILE = "empty_file"


@dataclass(frozen=True)
class Issue:
    """A problem with the input, where it is, and whether the record was skipped (`error`)."""

    code: str
    message: str
    source: str = ""
    line: int = 0
    field: str = ""
    error: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "source": self.source,
            "line": self.line,
            "field": self.field,
            "error": self.error,
        }


class RecordError(Exception):
    def __init__(self, code: str, message: str, field: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


def iter_lines(stream: BinaryIO, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes without the newline) for each line; None for a line over `max_line_bytes`.

    Memory stays bounded by `max_line_bytes` whatever the file holds: an over-long line is skipped
    up to its newline without being kept.
    """
    number = 0
    while True:
        line = stream.readline(max_line_bytes + 2)
        if not line:
            return
        number += 1
        if len(line) > max_line_bytes + 1 or (len(line) == max_line_bytes + 1 and not line.endswith(b"\n")):
            while line and not line.endswith(b"\n"):  # drain the rest of this line
                line = stream.readline(1 << 20)
            yield number, None
            continue
        yield number, line.rstrip(b"\n").rstrip(b"\r")


def decode_line(raw: bytes, number: int, source: str) -> tuple[Any, list[Issue]]:
    """The JSON value of one line, or raises RecordError with the code that fits."""
    warnings: list[Issue] = []
    if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
        warnings.append(Issue(BOM_REMOVED, "a UTF-8 byte order mark at the start was removed", source, 1, "", False))
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise RecordError(NUL_BYTE, f"raw NUL byte at byte {nul + 1}; NUL is not allowed in JSON Lines")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(INVALID_UTF8, f"invalid UTF-8 at byte {exc.start + 1}: save the file as UTF-8") from None
    try:
        return json.loads(text), warnings
    except RecursionError:
        raise RecordError(NESTING_TOO_DEEP, "JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise RecordError(INVALID_JSON, f"invalid JSON at column {exc.colno}: {exc.msg}") from None


def detect_format(objects: Iterable[Any]) -> str | None:
    """The format most of these objects have, or None when none is recognizable."""
    votes = dict.fromkeys(FORMATS, 0)
    for obj in objects:
        if not isinstance(obj, dict):
            continue
        if "messages" in obj:
            votes["openai_chat"] += 1
        elif "conversations" in obj:
            votes["sharegpt"] += 1
        elif "instruction" in obj or "output" in obj:
            votes["alpaca"] += 1
    best = max(votes, key=lambda name: votes[name])
    return best if votes[best] else None


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise RecordError(WRONG_TYPE, f"{field} must be a string, not {type(value).__name__}", field)
    return value


def serialize_output(value: Any) -> str:
    """Alpaca `output` as text: strings as they are, JSON objects/arrays deterministically."""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))
    raise RecordError(WRONG_TYPE, f"output must be a string or a JSON object, not {type(value).__name__}", "output")


def _alpaca(obj: dict[str, Any]) -> list[dict[str, str]]:
    for name in ("instruction", "output"):
        if name not in obj:
            raise RecordError(MISSING_FIELD, f"alpaca records need '{name}'", name)
    prompt = _text(obj["instruction"], "instruction")
    extra = obj.get("input")
    if extra is not None and _text(extra, "input").strip():
        prompt = f"{prompt}\n\n{extra}"
    messages = []
    if obj.get("system") is not None:
        messages.append({"role": "system", "content": _text(obj["system"], "system")})
    messages.append({"role": "user", "content": prompt})
    messages.append({"role": "assistant", "content": serialize_output(obj["output"])})
    return messages


def _turns(obj: dict[str, Any], key: str, role_key: str, text_key: str, roles: dict[str, str]) -> list[dict[str, str]]:
    turns = obj.get(key)
    if not isinstance(turns, list):
        raise RecordError(WRONG_TYPE, f"{key} must be a list of messages", key)
    messages = []
    if obj.get("system") is not None:
        messages.append({"role": "system", "content": _text(obj["system"], "system")})
    for index, turn in enumerate(turns):
        where = f"{key}[{index}]"
        if not isinstance(turn, dict):
            raise RecordError(WRONG_TYPE, f"{where} must be an object", where)
        if role_key not in turn:
            raise RecordError(MISSING_FIELD, f"{where} has no '{role_key}'", f"{where}.{role_key}")
        raw_role = turn[role_key]
        role = roles.get(raw_role) if isinstance(raw_role, str) else None
        if role is None:
            raise RecordError(
                UNRECOGNIZED_ROLE,
                f"{where}.{role_key} is {raw_role!r}; expected one of {', '.join(sorted(roles))}",
                f"{where}.{role_key}",
            )
        if text_key not in turn:
            raise RecordError(MISSING_FIELD, f"{where} has no '{text_key}'", f"{where}.{text_key}")
        messages.append({"role": role, "content": _content(turn[text_key], f"{where}.{text_key}")})
    return messages


def _content(value: Any, field: str) -> str:
    if isinstance(value, list):  # OpenAI content parts
        texts = []
        for index, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RecordError(WRONG_TYPE, f"{field}[{index}] must be a text part", f"{field}[{index}]")
            texts.append(part["text"])
        return "".join(texts)
    return _text(value, field)


def to_messages(obj: Any, data_format: str) -> tuple[list[dict[str, str]], list[tuple[str, str, str]]]:
    """The validated conversation of one object, and warnings (code, message, field)."""
    if not isinstance(obj, dict):
        raise RecordError(WRONG_TYPE, f"each line must be a JSON object, not {type(obj).__name__}")
    if data_format == "alpaca":
        messages = _alpaca(obj)
    elif data_format == "sharegpt":
        messages = _turns(obj, "conversations", "from", "value", SHAREGPT_ROLES)
    elif data_format == "openai_chat":
        messages = _turns(obj, "messages", "role", "content", OPENAI_ROLES)
    else:  # pragma: no cover - callers pass a detected or validated format
        raise RecordError(UNKNOWN_FORMAT, f"unknown format {data_format!r}")
    return _check_conversation(messages)


def _check_conversation(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[tuple[str, str, str]]]:
    warnings = []
    for index, message in enumerate(messages):
        if message["role"] == "system" and index != 0:
            raise RecordError(MISPLACED_SYSTEM_MESSAGE, f"message {index} is a system message; only the first may be")
        if not message["content"].strip():
            raise RecordError(EMPTY_CONTENT, f"message {index} ({message['role']}) is empty", f"messages[{index}]")
    if not any(m["role"] == "user" for m in messages):
        raise RecordError(MISSING_USER_MESSAGE, "the conversation has no user message")
    last_assistant = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    if last_assistant < 0:
        raise RecordError(MISSING_ASSISTANT_MESSAGE, "the conversation has no assistant message to learn from")
    if last_assistant < len(messages) - 1:
        dropped = len(messages) - 1 - last_assistant
        warnings.append(
            (TRAILING_MESSAGES_DROPPED, f"{dropped} message(s) after the last assistant answer were dropped", "")
        )
        messages = messages[: last_assistant + 1]
    return messages, warnings

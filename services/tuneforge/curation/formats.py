"""Reading raw instruction files: line framing, JSON parsing, format detection and validation.

Every problem becomes an `Issue` with a stable code and a 1-based line number; a bad record is
skipped and never takes a good neighbour with it. Each line is read as the format its keys say
(files concatenated from several tools mix them), unless the caller fixes one format:

- alpaca: `instruction`, optional `input`, `output` (a string, or a JSON object that is
  serialized deterministically), optional `system`;
- sharegpt: `conversations` of `{from, value}` (`from` one of human, user, gpt, assistant, system),
  optional `system`;
- openai_chat: `messages` of `{role, content}` (content a string or a list of text parts),
  optional `system`.

JSON is read strictly: no NaN/Infinity, integers of at most `MAX_NUMBER_DIGITS` digits, no lone
UTF-16 surrogates in strings (they cannot be encoded, so a tokenizer would fail on them later).
Whole files are diagnosed first (`diagnose_file`): UTF-16/32, compressed archives, CR-only lines.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

FORMATS = ("alpaca", "sharegpt", "openai_chat")
DEFAULT_MAX_LINE_BYTES = 4 * 1024 * 1024
#: Longest integer literal accepted; far below Python's 4,300-digit conversion limit, and no field of
#: instruction data needs more.
MAX_NUMBER_DIGITS = 1000
#: The closed list of ShareGPT speakers: anything else (`chatgpt`, `bing`, `bot`) is refused rather
#: than guessed, since a wrong guess trains the model on the wrong side of the conversation.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
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
AMBIGUOUS_FORMAT = "ambiguous_format"
LONE_SURROGATE = "lone_surrogate"
NUMBER_TOO_LONG = "number_too_long"
NON_FINITE_NUMBER = "non_finite_number"
WRONG_ENCODING = "wrong_encoding"
COMPRESSED_FILE = "compressed_file"
LINE_ENDINGS_CONVERTED = "line_endings_converted"
NUL_REMOVED = "nul_removed"
INTERNAL_ERROR = "internal_error"


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


_CONTAINERS = (
    (b"\x1f\x8b", "a gzip archive; decompress it first (gunzip)"),
    (b"PK\x03\x04", "a zip archive; extract the JSONL file from it first"),
    (b"PK\x05\x06", "an empty zip archive; extract the JSONL file from it first"),
    (b"\x28\xb5\x2f\xfd", "a zstd archive; decompress it first (unzstd)"),
    (b"BZh", "a bzip2 archive; decompress it first (bunzip2)"),
    (b"\xfd7zXZ\x00", "an xz archive; decompress it first (unxz)"),
    (b"PAR1", "a Parquet file; export it as JSON Lines first"),
)
_ENCODINGS = (  # UTF-32 before UTF-16: the UTF-32 LE mark starts with the UTF-16 LE one
    (b"\xff\xfe\x00\x00", "UTF-32 (little-endian, with a byte order mark)"),
    (b"\x00\x00\xfe\xff", "UTF-32 (big-endian, with a byte order mark)"),
    (b"\xff\xfe", "UTF-16 (little-endian, with a byte order mark)"),
    (b"\xfe\xff", "UTF-16 (big-endian, with a byte order mark)"),
)


@dataclass(frozen=True)
class FileShape:
    """What the start of a file says about it: an error that stops reading it, and how lines end."""

    code: str = ""
    message: str = ""
    cr_only: bool = False
    crlf: bool = False


def diagnose_file(head: bytes) -> FileShape:
    """Names the container or encoding of a file that is not UTF-8 JSON Lines, from its first bytes."""
    for magic, what in _CONTAINERS:
        if head.startswith(magic):
            return FileShape(COMPRESSED_FILE, f"this file is {what}")
    for mark, what in _ENCODINGS:
        if head.startswith(mark):
            return FileShape(WRONG_ENCODING, f"this file is {what}; save it as UTF-8")
    sample = head[:4096]
    nuls = sample.count(0) / max(len(sample), 1)
    if len(sample) >= 8 and nuls >= 0.25:  # ASCII in UTF-16 is half NUL bytes, in UTF-32 three quarters
        even, odd = sample[0::2].count(0), sample[1::2].count(0)
        what = "UTF-32" if nuls > 0.6 else "UTF-16"
        order = "little-endian" if odd > even else "big-endian"
        return FileShape(WRONG_ENCODING, f"this file looks like {what} ({order}, no byte order mark); save it as UTF-8")
    return FileShape(cr_only=b"\r" in head and b"\n" not in head, crlf=b"\r\n" in head)


class _CarriageReturnsAsNewlines(io.RawIOBase):
    """Reads a file whose lines end in CR only (classic Mac OS) as if they ended in LF.

    Safe for JSON: a raw CR can never be inside a valid JSON string, only between lines.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer)).replace(b"\r", b"\n")
        buffer[: len(data)] = data
        return len(data)


def line_stream(raw: BinaryIO, shape: FileShape) -> BinaryIO:
    """`raw` as a stream of LF-terminated lines (CRLF is already handled by `iter_lines`)."""
    if shape.cr_only:
        return io.BufferedReader(_CarriageReturnsAsNewlines(raw), 1 << 20)  # type: ignore[return-value]
    return raw


class _StrictNumbers:
    """`json` hooks that refuse what is not JSON (NaN, Infinity, 1e999) or is absurdly long."""

    @staticmethod
    def integer(text: str) -> int:
        digits = len(text) - text.startswith("-")
        if digits > MAX_NUMBER_DIGITS:
            raise RecordError(
                NUMBER_TOO_LONG, f"an integer of {digits} digits; at most {MAX_NUMBER_DIGITS} are accepted"
            )
        return int(text)

    @staticmethod
    def real(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise RecordError(NON_FINITE_NUMBER, f"the number {text[:20]} is out of range of a double")
        return value

    @staticmethod
    def constant(name: str) -> float:
        raise RecordError(NON_FINITE_NUMBER, f"{name} is not JSON; write null or a string instead")


_DECODER = json.JSONDecoder(
    parse_int=_StrictNumbers.integer, parse_float=_StrictNumbers.real, parse_constant=_StrictNumbers.constant
)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATES = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value: Any, path: str) -> str | None:
    """The field path of the first string holding a lone surrogate (escaped pairs decode to one character)."""
    if isinstance(value, str):
        return path if _SURROGATES.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if _SURROGATES.search(key):
                return where
            found = _lone_surrogate(item, where)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _lone_surrogate(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _json_error(exc: json.JSONDecodeError) -> str:
    """A whole sentence for a decoding error (Python's own messages for some end in 'at')."""
    message = exc.msg.removesuffix(" at")
    if message.startswith("Invalid control character") and exc.pos < len(exc.doc):
        message = (
            f"a raw control character U+{ord(exc.doc[exc.pos]):04X} inside a string; escape it (\\n, \\t or \\u00XX)"
        )
    return f"invalid JSON at column {exc.colno}: {message}"


def decode_line(raw: bytes, number: int, source: str) -> tuple[Any, list[Issue]]:
    """The JSON value of one line, or raises RecordError with the code (and field) that fits."""
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
        value = _DECODER.decode(text)
    except RecursionError:
        raise RecordError(NESTING_TOO_DEEP, "JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise RecordError(INVALID_JSON, _json_error(exc)) from None
    except ValueError as exc:  # anything else the decoder refuses is still this line's problem, never the build's
        raise RecordError(INVALID_JSON, f"invalid JSON: {exc}") from None
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        try:
            where = _lone_surrogate(value, "")
        except RecursionError:
            raise RecordError(NESTING_TOO_DEEP, "JSON nested too deeply") from None
        if where is not None:
            raise RecordError(
                LONE_SURROGATE,
                f"{where or 'the value'} holds a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair); "
                "such text cannot be encoded",
                where,
            )
    return value, warnings


_FORMAT_KEYS = (("openai_chat", ("messages",)), ("sharegpt", ("conversations",)), ("alpaca", ("instruction", "output")))


def record_format(obj: Any, data_format: str = "auto") -> str:
    """The format of one record: `data_format` when fixed, else the one its keys say.

    Raises `unknown_format` when no format's keys are there and `ambiguous_format` when two are.
    """
    if not isinstance(obj, dict):
        raise RecordError(WRONG_TYPE, f"the line: expected a JSON object, got {json_type(obj)}")
    if data_format != "auto":
        return data_format
    matches = [name for name, keys in _FORMAT_KEYS if any(key in obj for key in keys)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        keys = ", ".join(sorted(map(str, obj))[:8]) or "none"
        raise RecordError(
            UNKNOWN_FORMAT,
            f"not alpaca (instruction/output), ShareGPT (conversations) or OpenAI chat (messages); keys found: {keys}",
        )
    raise RecordError(
        AMBIGUOUS_FORMAT,
        f"the record has keys of {' and '.join(matches)}; keep one format's keys per line or set the format",
    )


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, as error messages show it."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {dict: "object", list: "list", str: "string", type(None): "null"}.get(type(value), type(value).__name__)


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise RecordError(WRONG_TYPE, f"{field}: expected string, got {json_type(value)}", field)
    return value


def serialize_output(value: Any) -> str:
    """Alpaca `output` as text: strings as they are, a JSON object (structured answer) deterministically.

    A list is refused: exports put several answers or turns there, and no one rendering of it is right.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))
    raise RecordError(WRONG_TYPE, f"output: expected string or JSON object, got {json_type(value)}", "output")


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
        raise RecordError(WRONG_TYPE, f"{key}: expected a list of messages, got {json_type(turns)}", key)
    messages = []
    if obj.get("system") is not None:
        messages.append({"role": "system", "content": _text(obj["system"], "system")})
    for index, turn in enumerate(turns):
        where = f"{key}[{index}]"
        if not isinstance(turn, dict):
            raise RecordError(WRONG_TYPE, f"{where}: expected object, got {json_type(turn)}", where)
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
                raise RecordError(
                    WRONG_TYPE, f"{field}[{index}]: expected a text part {{type: text, text}}", f"{field}[{index}]"
                )
            texts.append(part["text"])
        return "".join(texts)
    return _text(value, field)


def to_messages(obj: Any, data_format: str) -> tuple[list[dict[str, str]], list[tuple[str, str, str]]]:
    """The validated conversation of one object read as `data_format`, and warnings (code, message, field)."""
    if not isinstance(obj, dict):
        raise RecordError(WRONG_TYPE, f"the line: expected a JSON object, got {json_type(obj)}")
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

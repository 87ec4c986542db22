"""Line-numbered JSONL for uploads (suites, ratings): every bad line reported at once, nothing half-read."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from tuneforge.common.errors import FieldViolation, InvalidArgument

#: Violations returned with one refusal (the message names the first five).
MAX_REPORTED = 100


def jsonl_records(data: bytes, problems: list[FieldViolation]) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line; lines that are not JSON go to `problems` instead."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidArgument.for_field("jsonl", f"is not UTF-8 (byte {exc.start})") from exc
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except ValueError as exc:
            problems.append(FieldViolation("jsonl", f"invalid JSON: {exc}", line))
            continue
        except RecursionError:
            problems.append(FieldViolation("jsonl", "JSON nested too deeply to read", line))
            continue
        yield line, value


def refuse_problems(problems: list[FieldViolation], what: str) -> None:
    """INVALID_ARGUMENT listing `problems` (the first ones in the message), if there are any."""
    if not problems:
        return
    shown = problems[:MAX_REPORTED]
    summary = "; ".join(
        f"line {p.line}: {p.field}: {p.description}" if p.line else f"{p.field}: {p.description}" for p in shown[:5]
    )
    raise InvalidArgument(f"{len(problems)} problem(s) in the {what}: {summary}", shown)

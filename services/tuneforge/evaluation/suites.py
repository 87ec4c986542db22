"""Evaluation suites as data: JSONL, one item a line.

Each item is `{"id", "category", "messages", "checks", "reference"?, "rubric"?}`.

`parse_suite` reads a whole file and reports every bad line at once as field violations with line
numbers (`line 7: messages[1].role …`); a suite with any bad line is not stored. Categories are
free-form, the standard ones named in CATEGORIES.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tuneforge.common.errors import FieldViolation, InvalidArgument
from tuneforge.evaluation.checks import validate_check
from tuneforge.evaluation.jsonl import jsonl_records, refuse_problems

CATEGORIES = (
    "structured_output",
    "instruction_following",
    "role_consistency",
    "long_form",
    "multilingual",
    "refusal",
)
ROLES = ("system", "user", "assistant")
MAX_ITEMS = 100_000


@dataclass(frozen=True)
class SuiteItem:
    id: str
    category: str
    messages: list[dict[str, str]]
    checks: list[dict[str, Any]]
    reference: str = ""
    rubric: str = ""  # what an LLM judge rates this answer on (the default rubric when empty)


@dataclass
class Suite:
    name: str
    items: list[SuiteItem] = field(default_factory=list)

    def category_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.items:
            counts[item.category] = counts.get(item.category, 0) + 1
        return counts


def _item(record: Any, line: int) -> SuiteItem:
    def bad(where: str, what: str) -> InvalidArgument:
        return InvalidArgument.for_field(where, what, line=line)

    if not isinstance(record, dict):
        raise bad("item", "must be a JSON object")
    unknown = sorted(set(record) - {"id", "category", "messages", "checks", "reference", "rubric"})
    if unknown:
        raise bad(unknown[0], "is not an item field (id, category, messages, checks, reference, rubric)")
    item_id, category = record.get("id"), record.get("category")
    if not isinstance(item_id, str) or not item_id.strip() or len(item_id) > 200:
        raise bad("id", "must be a non-empty string of up to 200 characters")
    if not isinstance(category, str) or not category.strip():
        raise bad("category", f"must be a non-empty string, e.g. {', '.join(CATEGORIES)}")
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "must be a non-empty list of {role, content}")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise bad(f"messages[{index}].role", f"must be one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise bad(f"messages[{index}].content", "must be a string")
    if messages[-1]["role"] == "assistant":
        raise bad(
            f"messages[{len(messages) - 1}].role", "the last message is the prompt; it must not be the assistant's"
        )
    checks = record.get("checks")
    if not isinstance(checks, list) or not checks:
        raise bad("checks", "must be a non-empty list of {type, params}")
    for index, check in enumerate(checks):
        try:
            validate_check(check, f"checks[{index}]")
        except InvalidArgument as exc:
            raise InvalidArgument(
                exc.message, [FieldViolation(v.field, v.description, line) for v in exc.violations]
            ) from None
    reference = record.get("reference", "")
    if not isinstance(reference, str):
        raise bad("reference", "must be a string")
    rubric = record.get("rubric", "")
    if not isinstance(rubric, str) or len(rubric) > 4000:
        raise bad("rubric", "must be a string of up to 4000 characters")
    return SuiteItem(
        item_id, category, [{"role": m["role"], "content": m["content"]} for m in messages], checks, reference, rubric
    )


def parse_suite(name: str, data: bytes) -> Suite:
    """A suite from JSONL bytes; INVALID_ARGUMENT listing every bad line (up to 100) otherwise."""
    suite = Suite(name)
    problems: list[FieldViolation] = []
    seen: dict[str, int] = {}
    for line_number, record in jsonl_records(data, problems):
        try:
            item = _item(record, line_number)
        except InvalidArgument as exc:
            problems += exc.violations
            continue
        if item.id in seen:
            problems.append(FieldViolation("id", f"{item.id!r} repeats line {seen[item.id]}", line_number))
            continue
        seen[item.id] = line_number
        suite.items.append(item)
        if len(suite.items) > MAX_ITEMS:
            problems.append(FieldViolation("jsonl", f"more than {MAX_ITEMS} items", line_number))
            break
    if not suite.items and not problems:
        problems.append(FieldViolation("jsonl", "holds no items"))
    refuse_problems(problems, "suite")
    return suite


def suite_jsonl(suite: Suite) -> bytes:
    """The suite written back as canonical JSONL."""
    lines = []
    for item in suite.items:
        record: dict[str, Any] = {
            "id": item.id,
            "category": item.category,
            "messages": item.messages,
            "checks": item.checks,
        }
        if item.reference:
            record["reference"] = item.reference
        if item.rubric:
            record["rubric"] = item.rubric
        lines.append(json.dumps(record, ensure_ascii=False, sort_keys=True))
    return ("\n".join(lines) + "\n").encode()

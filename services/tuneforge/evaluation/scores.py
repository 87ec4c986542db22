"""Scores on a 1-5 scale next to the automatic checks: an LLM judge's, and people's.

The judge is any model the inference service serves for the tenant (the base model or one of its
adapters). It reads the conversation, the answer and a rubric (the item's own, else a general one)
and answers with one digit; an answer without a digit 1-5 is recorded as unscored, with the judge's
text as the reason — never guessed. Human ratings are imported per run as JSONL
(`{"item_id", "model", "score", "rater"?, "comment"?}`), validated with line numbers; scores never
change pass rates, they are reported beside them (mean and count per category and model).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tuneforge.common.errors import FieldViolation
from tuneforge.common.names import RESOURCE_NAME
from tuneforge.evaluation.jsonl import jsonl_records, refuse_problems

DEFAULT_RUBRIC = (
    "Rate how well the answer does what the user asked: correct, complete, following every "
    "instruction and the system message, in the language asked for, with nothing harmful."
)
SCALE = (
    "5 = fully meets the request; 4 = meets it with minor flaws; 3 = partly meets it; "
    "2 = mostly fails it; 1 = fails it or is harmful."
)
_DIGIT = re.compile(r"(?<!\d)(?<!\d\.)([1-5])(?!\d|\.\d)")  # "3", "3.", "5/5"; not "2.5", "10"
MAX_COMMENT = 4000


def judge_messages(messages: Sequence[dict[str, str]], answer: str, rubric: str = "") -> list[tuple[str, str]]:
    """The judge's conversation: a rubric and the transcript to rate, answered with one digit."""
    transcript = "\n".join(f"[{m['role']}]\n{m['content']}" for m in messages)
    return [
        (
            "system",
            "You grade answers of an AI assistant. Reply with a single digit from 1 to 5 and nothing else.",
        ),
        (
            "user",
            f"Rubric: {rubric or DEFAULT_RUBRIC}\nScale: {SCALE}\n\n--- conversation ---\n{transcript}\n"
            f"--- answer to grade ---\n{answer}\n--- end ---\nScore (1-5):",
        ),
    ]


def parse_judge_score(text: str) -> tuple[float | None, str]:
    """The first stand-alone digit 1-5 of the judge's reply, or None with the reason it has none."""
    match = _DIGIT.search(text)
    if match is None:
        shown = text.strip()[:200] or "an empty reply"
        return None, f"the judge gave no score from 1 to 5: {shown!r}"
    return float(match.group(1)), f"judge: {text.strip()[:200]}"


@dataclass(frozen=True)
class HumanScore:
    item_id: str
    model: str
    score: int
    rater: str
    comment: str


def parse_human_scores(data: bytes, models: Iterable[str], item_ids: Iterable[str]) -> list[HumanScore]:
    """Ratings from JSONL bytes, checked against the run's models and items; every bad line reported."""
    models, item_ids = set(models), set(item_ids)
    scores: list[HumanScore] = []
    problems: list[FieldViolation] = []
    seen: dict[tuple[str, str, str], int] = {}
    for line, record in jsonl_records(data, problems):
        if not isinstance(record, dict):
            problems.append(FieldViolation("jsonl", "must be a JSON object", line))
            continue
        unknown = sorted(set(record) - {"item_id", "model", "score", "rater", "comment"})
        item, model, score = record.get("item_id"), record.get("model"), record.get("score")
        rater, comment = record.get("rater", "human"), record.get("comment", "")
        if unknown:
            problems.append(FieldViolation(unknown[0], "is not a field (item_id, model, score, rater, comment)", line))
        elif item not in item_ids:
            problems.append(FieldViolation("item_id", f"{item!r} is not an item of the run's suite", line))
        elif model not in models:
            problems.append(
                FieldViolation("model", f"{model!r} is not a model of the run ({', '.join(sorted(models))})", line)
            )
        elif isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5:
            problems.append(FieldViolation("score", f"must be a whole number from 1 to 5, not {score!r}", line))
        elif not isinstance(rater, str) or not RESOURCE_NAME.fullmatch(rater):
            problems.append(FieldViolation("rater", "must be lower-case letters, digits and '-' (at most 63)", line))
        elif not isinstance(comment, str) or len(comment) > MAX_COMMENT:
            problems.append(FieldViolation("comment", f"must be a string of up to {MAX_COMMENT} characters", line))
        elif (item, model, rater) in seen:
            problems.append(
                FieldViolation(
                    "item_id", f"{rater} rated {model} on {item!r} already on line {seen[item, model, rater]}", line
                )
            )
        else:
            seen[item, model, rater] = line
            scores.append(HumanScore(item, model, score, rater, comment))
    if not scores and not problems:
        problems.append(FieldViolation("jsonl", "holds no ratings"))
    refuse_problems(problems, "ratings")
    return scores


def summarize(
    judge: dict[str, dict[str, float]],
    human: dict[str, dict[str, list[int]]],
    categories: dict[str, str],
    overall: str,
) -> dict[str, Any]:
    """`{model: {category|overall: {"judge": {"mean", "n"}, "human": {"mean", "n"}}}}` over rated items."""
    groups: dict[str, list[str]] = {overall: sorted(categories)}
    for item in sorted(categories):
        groups.setdefault(categories[item], []).append(item)
    summary: dict[str, Any] = {}
    for model in sorted(set(judge) | set(human)):
        per_group: dict[str, Any] = {}
        for group, ids in groups.items():
            entry: dict[str, Any] = {}
            judged = [judge.get(model, {})[i] for i in ids if i in judge.get(model, {})]
            rated = [s for i in ids for s in human.get(model, {}).get(i, [])]
            if judged:
                entry["judge"] = {"mean": sum(judged) / len(judged), "n": len(judged)}
            if rated:
                entry["human"] = {"mean": sum(rated) / len(rated), "n": len(rated)}
            if entry:
                per_group[group] = entry
        summary[model] = per_group
    return summary

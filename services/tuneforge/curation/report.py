"""The curation report: what was kept, changed and removed, and why — as JSON, Markdown and an SVG
token-length histogram, written next to the dataset version's shards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.common.svg import bar_chart

HISTOGRAM_BINS = 20


def token_histogram(lengths: np.ndarray, max_seq_len: int) -> dict[str, Any]:
    """Counts of training records per token-length bin over [0, max_seq_len]."""
    edges = np.linspace(0, max_seq_len, HISTOGRAM_BINS + 1).round().astype(int)
    counts, _ = np.histogram(lengths, bins=edges)
    stats = {}
    if lengths.size:
        stats = {
            "min": int(lengths.min()),
            "p50": int(np.percentile(lengths, 50)),
            "p95": int(np.percentile(lengths, 95)),
            "max": int(lengths.max()),
            "mean": round(float(lengths.mean()), 1),
        }
    return {"edges": edges.tolist(), "counts": counts.tolist(), **stats}


def write_report(
    out_dir: Path,
    *,
    counts: dict[str, Any],
    issue_counts: dict[str, int],
    issue_examples: dict[str, list[dict[str, Any]]],
    clusters: list[dict[str, Any]],
    token_lengths: np.ndarray,
    max_seq_len: int,
    seconds: dict[str, float],
    total_seconds: float,
    metadata: dict[str, Any],
    failure_reason: str,
) -> dict[str, Any]:
    """Writes report.json, report.md and token_lengths.svg; returns the JSON report."""
    histogram = token_histogram(token_lengths, max_seq_len)
    report = {
        "status": "failed" if failure_reason else "ready",
        "failure_reason": failure_reason,
        "counts": counts,
        "issue_counts": dict(sorted(issue_counts.items())),
        "issue_examples": issue_examples,
        "duplicate_clusters": clusters,
        "token_lengths": histogram,
        "stage_seconds": seconds,
        "total_seconds": total_seconds,
        **metadata,
    }
    (out_dir / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2, sort_keys=True))
    labels = [f"{lo}-{hi}" for lo, hi in zip(histogram["edges"][:-1], histogram["edges"][1:], strict=True)]
    (out_dir / "token_lengths.svg").write_text(
        bar_chart(labels, histogram["counts"], "Training records by length", "tokens", "records")
    )
    (out_dir / "report.md").write_text(render_markdown(report))
    return report


def render_markdown(report: dict[str, Any]) -> str:
    counts = report["counts"]
    lines = [f"# Dataset version {report.get('version_id', '')}".rstrip(), ""]
    if report["failure_reason"]:
        lines += [f"**FAILED:** {report['failure_reason']}", ""]
    lines += [
        "## What happened to the records",
        "",
        "| step | records |",
        "| --- | --- |",
        f"| read | {counts['records_in']} |",
        f"| invalid (skipped, see issues) | {counts['invalid']} |",
        f"| too long (dropped) | {counts['too_long']} |",
        f"| truncated (kept) | {counts['truncated']} |",
        f"| exact duplicates removed | {counts['exact_duplicates']} |",
        f"| near duplicates removed | {counts['near_duplicates']} |",
        f"| leaked into the evaluation suite (removed) | {counts['leaked']} |",
        f"| **train** | **{counts['train_records']}** ({counts['train_tokens']} tokens) |",
        f"| **validation** | **{counts['validation_records']}** ({counts['validation_tokens']} tokens) |",
        "",
    ]
    if counts.get("records_by_format"):
        lines += ["## Records by format", "", "| format | records read as it |", "| --- | --- |"]
        lines += [f"| {name} | {n} |" for name, n in counts["records_by_format"].items()]
        lines.append("")
    if counts["pii_replacements"]:
        lines += ["## PII replaced", "", "| type | replacements |", "| --- | --- |"]
        lines += [f"| {kind} | {n} |" for kind, n in sorted(counts["pii_replacements"].items())]
        lines.append("")
    if report["issue_counts"]:
        lines += ["## Issues by rule", "", "| code | count | examples |", "| --- | --- | --- |"]
        for code, n in report["issue_counts"].items():
            examples = "; ".join(
                f"{e['source']}:{e['line']} {e['message']}" for e in report["issue_examples"].get(code, [])
            )
            lines.append(f"| `{code}` | {n} | {examples.replace('|', '/')} |")
        lines.append("")
    if report["duplicate_clusters"]:
        lines += ["## Removed duplicates (first clusters)", ""]
        for cluster in report["duplicate_clusters"][:20]:
            kept = f"kept {cluster['kept']}, " if cluster["kept"] else ""
            lines.append(f"- {cluster['kind']}: {kept}removed {', '.join(cluster['removed'])}")
        lines.append("")
    if report.get("feedback_lineage"):  # inputs written by a feedback export (curation/feedback.py)
        lines += ["## From feedback", "", "| file | line | feedback item | kind |", "| --- | --- | --- | --- |"]
        lines += [
            f"| {x['file_id']} | {x['line']} | {x['feedback_id']} | {x['kind']} |"
            for x in report["feedback_lineage"][:200]
        ]
        lines.append("")
    if report.get("generation_lineage"):  # inputs built from reviewed Self-Instruct candidates (generation.py)
        lines += ["## From Self-Instruct generation", "", "| file | line | candidate | run | model | reviewer |"]
        lines += ["| --- | --- | --- | --- | --- | --- |"]
        lines += [
            f"| {x['file_id']} | {x['line']} | {x['candidate_id']} | {x['run_id']} | {x['model']} | {x['reviewer']} |"
            for x in report["generation_lineage"][:200]
        ]
        lines.append("")
    histogram = report["token_lengths"]
    if histogram.get("max") is not None:
        lines += [
            "## Token lengths (train)",
            "",
            f"min {histogram['min']}, median {histogram['p50']}, p95 {histogram['p95']}, max {histogram['max']}",
            "",
            "![token lengths](token_lengths.svg)",
            "",
        ]
    lines += ["## Time by stage", "", "| stage | seconds |", "| --- | --- |"]
    lines += [f"| {stage} | {sec} |" for stage, sec in report["stage_seconds"].items()]
    lines.append("")
    return "\n".join(lines)


COUNT_NAMES = (
    "records_in",
    "invalid",
    "exact_duplicates",
    "near_duplicates",
    "too_long",
    "truncated",
    "leaked",
    "train_records",
    "validation_records",
    "train_tokens",
    "validation_tokens",
)


def write_failed_build_report(
    out_dir: Path, failure_reason: str, issues_path: Path | None, metadata: dict[str, Any]
) -> dict[str, Any]:
    """The report of a build that stopped unexpectedly: its reason, and the issues found up to then.

    `issues_path` is the build's partial issues file (absent when it failed before reading a line).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    issue_counts: dict[str, int] = {}
    issue_examples: dict[str, list[dict[str, Any]]] = {}
    with (out_dir / "issues.jsonl").open("w", encoding="utf-8") as target:
        if issues_path is not None and issues_path.is_file():
            for line in issues_path.read_text(encoding="utf-8").splitlines():
                try:
                    issue = json.loads(line)
                except ValueError:  # the last line may be cut where the build stopped
                    continue
                issue_counts[issue["code"]] = issue_counts.get(issue["code"], 0) + 1
                examples = issue_examples.setdefault(issue["code"], [])
                if len(examples) < 3:
                    examples.append(issue)
                target.write(json.dumps(issue, ensure_ascii=False) + "\n")
    return write_report(
        out_dir,
        counts={**dict.fromkeys(COUNT_NAMES, 0), "pii_replacements": {}, "records_by_format": {}},
        issue_counts=issue_counts,
        issue_examples=issue_examples,
        clusters=[],
        token_lengths=np.zeros(0, np.int32),
        max_seq_len=1,
        seconds={},
        total_seconds=0.0,
        metadata=metadata,
        failure_reason=failure_reason,
    )

"""Base vs adapters, per category and overall: pass rates, paired bootstrap intervals, flipped items.

An item passes when every one of its checks passes. The difference of an adapter against the base
is the mean of per-item differences (1 fixed, -1 broken, 0 unchanged); its 95% interval comes from
a paired bootstrap over items (items resampled with replacement, `resamples` times, seeded, so the
same results always give the same interval). Reports render as JSON, Markdown and one
self-contained HTML file with a bar chart per category.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

import numpy as np

from tuneforge.common.svg import grouped_bar_chart

OVERALL = "overall"


def bootstrap_interval(
    differences: np.ndarray, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `differences` (paired, per item)."""
    n = len(differences)
    if n == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def compare(
    passed: dict[str, dict[str, bool]],
    categories: dict[str, str],
    baseline: str,
    *,
    seed: int = 0,
    resamples: int = 2000,
) -> dict[str, Any]:
    """`passed[model][item_id]`, `categories[item_id]` → the comparison (see the module doc)."""
    models = [baseline, *sorted(m for m in passed if m != baseline)]
    items = sorted(categories)
    groups: dict[str, list[str]] = {OVERALL: items}
    for item in items:
        groups.setdefault(categories[item], []).append(item)
    report: dict[str, Any] = {
        "baseline": baseline,
        "models": models,
        "seed": seed,
        "resamples": resamples,
        "categories": {},
    }
    for index, (group, ids) in enumerate(sorted(groups.items(), key=lambda kv: (kv[0] == OVERALL, kv[0]))):
        base = np.array([passed[baseline].get(i, False) for i in ids], dtype=float)
        entry: dict[str, Any] = {"items": len(ids), "pass_rate": {}, "difference": {}}
        for model in models:
            scores = np.array([passed[model].get(i, False) for i in ids], dtype=float)
            entry["pass_rate"][model] = float(scores.mean()) if len(ids) else 0.0
            if model == baseline:
                continue
            diff = scores - base
            low, high = bootstrap_interval(diff, resamples, seed + index)
            entry["difference"][model] = {
                "estimate": float(diff.mean()) if len(ids) else 0.0,
                "low": low,
                "high": high,
                "excludes_zero": bool(low > 0 or high < 0),
            }
        report["categories"][group] = entry
    report["flips"] = {
        model: {
            "fixed": [i for i in items if passed[model].get(i) and not passed[baseline].get(i)],
            "broken": [i for i in items if passed[baseline].get(i) and not passed[model].get(i)],
        }
        for model in models[1:]
    }
    return report


def _score_table(report: dict[str, Any]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Header and rows of the 1-5 scores (judge and human mean with count) per category; empty without scores."""
    scores = report.get("scores") or {}
    if not scores:
        return [], []
    columns = [
        (m, kind)
        for m in report["models"]
        for kind in ("judge", "human")
        if any(kind in entry for entry in scores.get(m, {}).values())
    ]
    header = [f"{m} {kind}" for m, kind in columns]
    rows = []
    for group in report["categories"]:
        cells = []
        for model, kind in columns:
            value = scores.get(model, {}).get(group, {}).get(kind)
            cells.append(f"{value['mean']:.2f} (n={value['n']})" if value else "–")
        rows.append((group, cells))
    return header, rows


def _chart(report: dict[str, Any]) -> str:
    groups = list(report["categories"])
    series = {m: [report["categories"][g]["pass_rate"][m] for g in groups] for m in report["models"]}
    return grouped_bar_chart(groups, series, "Pass rate per category", y_label="pass rate")


def render_markdown(report: dict[str, Any], outputs: dict[str, dict[str, str]] | None = None) -> str:
    """The report as Markdown; `outputs[model][item]` adds the answers of flipped items."""
    base, models = report["baseline"], report["models"]
    lines = [f"# Evaluation report: {', '.join(models[1:]) or base} vs {base}", ""]
    if report.get("leakage"):
        leak = report["leakage"]
        lines += [f"> **Leakage warning:** {leak['message']}", ""]
    header = (
        "| category | items | "
        + " | ".join(models)
        + " | "
        + " | ".join(f"{m} − {base} (95% CI)" for m in models[1:])
        + " |"
    )
    lines += [header, "|" + " --- |" * (2 + len(models) + len(models) - 1)]
    for group, entry in report["categories"].items():
        rates = " | ".join(f"{entry['pass_rate'][m]:.1%}" for m in models)
        diffs = " | ".join(
            f"{d['estimate']:+.1%} [{d['low']:+.1%}, {d['high']:+.1%}]{' *' if d['excludes_zero'] else ''}"
            for d in (entry["difference"][m] for m in models[1:])
        )
        name = f"**{group}**" if group == OVERALL else group
        lines.append(f"| {name} | {entry['items']} | {rates} | {diffs} |")
    lines += ["", "`*`: the 95% paired-bootstrap interval excludes zero.", ""]
    score_header, score_rows = _score_table(report)
    if score_rows:
        judge = f" (judge: {report['judge_model']})" if report.get("judge_model") else ""
        lines += [f"## Scores 1-5{judge}", "", "| category | " + " | ".join(score_header) + " |"]
        lines.append("|" + " --- |" * (1 + len(score_header)))
        lines += [f"| {group} | " + " | ".join(cells) + " |" for group, cells in score_rows]
        lines += ["", "Mean score (number of rated answers); scores are shown beside pass rates, not in them.", ""]
    for model, flips in report["flips"].items():
        lines += [f"## {model}: {len(flips['fixed'])} fixed, {len(flips['broken'])} broken", ""]
        for kind in ("fixed", "broken"):
            for item in flips[kind]:
                lines.append(f"- {kind}: `{item}`")
                if outputs:
                    lines.append(f"  - {base}: {outputs.get(base, {}).get(item, '')[:300]!r}")
                    lines.append(f"  - {model}: {outputs.get(model, {}).get(item, '')[:300]!r}")
        lines.append("")
    return "\n".join(lines)


def render_html(report: dict[str, Any], outputs: dict[str, dict[str, str]] | None = None) -> str:
    """One self-contained HTML page: the table, the chart, the flipped items with their answers."""
    base, models = report["baseline"], report["models"]
    rows = []
    for group, entry in report["categories"].items():
        cells = "".join(f"<td>{entry['pass_rate'][m]:.1%}</td>" for m in models)
        for m in models[1:]:
            d = entry["difference"][m]
            style = ' style="font-weight:bold"' if d["excludes_zero"] else ""
            cells += f"<td{style}>{d['estimate']:+.1%} [{d['low']:+.1%}, {d['high']:+.1%}]</td>"
        rows.append(f"<tr><th>{escape(group)}</th><td>{entry['items']}</td>{cells}</tr>")
    head = "".join(f"<th>{escape(m)}</th>" for m in models) + "".join(
        f"<th>{escape(m)} − {escape(base)} (95% CI)</th>" for m in models[1:]
    )
    flips = []
    for model, kinds in report["flips"].items():
        for kind in ("fixed", "broken"):
            for item in kinds[kind]:
                before = escape((outputs or {}).get(base, {}).get(item, ""))
                after = escape((outputs or {}).get(model, {}).get(item, ""))
                flips.append(
                    f"<tr><td>{escape(model)}</td><td>{kind}</td><td><code>{escape(item)}</code></td>"
                    f"<td><pre>{before}</pre></td><td><pre>{after}</pre></td></tr>"
                )
    score_header, score_rows = _score_table(report)
    scores_html = ""
    if score_rows:
        judge = f" (judge: {escape(report['judge_model'])})" if report.get("judge_model") else ""
        scores_html = (
            f"<h2>Scores 1-5{judge}</h2><table><tr><th>category</th>"
            + "".join(f"<th>{escape(h)}</th>" for h in score_header)
            + "</tr>"
            + "".join(
                f"<tr><th>{escape(g)}</th>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>"
                for g, cells in score_rows
            )
            + "</table>"
        )
    leak = report.get("leakage")
    warning = f'<p class="warn"><b>Leakage warning:</b> {escape(leak["message"])}</p>' if leak else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Tuneforge evaluation report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}
pre{{white-space:pre-wrap;margin:0;max-width:380px}}
.warn{{background:#fff3cd;padding:8px;border:1px solid #e0c060}}</style></head><body>
<h1>Evaluation: {escape(", ".join(models[1:]) or base)} vs {escape(base)}</h1>{warning}
<table><tr><th>category</th><th>items</th>{head}</tr>{"".join(rows)}</table>
<p>Bold: the 95% paired-bootstrap interval ({report["resamples"]} resamples, seed {report["seed"]}) excludes zero.</p>
{_chart(report)}
{scores_html}
<h2>Items that flipped</h2>
<table><tr><th>model</th><th>flip</th><th>item</th><th>{escape(base)}</th><th>adapter</th></tr>{"".join(flips)}</table>
</body></html>
"""


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False, sort_keys=True)

"""Inline SVG for the console's curves and intervals (the bar charts come from `common/svg.py`).

Each polyline carries `data-series` and `data-count` so a page (and its tests) can tell how many
points a curve has without parsing coordinates.
"""

from __future__ import annotations

import math
from html import escape

from tuneforge.common.svg import PALETTE

Point = tuple[float, float]


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    return [low + (high - low) * i / count for i in range(count + 1)]


def line_chart(
    series: dict[str, list[Point]], title: str, x_label: str = "step", width: int = 640, height: int = 260
) -> str:
    """One polyline per series over a shared x axis; an empty chart says that no point came yet."""
    left, right, top, bottom = 64, 16, 30, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    points = [p for values in series.values() for p in values if math.isfinite(p[1])]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" role="img" '
        f'aria-label="{escape(title)}">',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#bbb"/>',
    ]
    if not points:
        parts.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle">no points yet</text>')
    else:
        x_low, x_high = min(p[0] for p in points), max(p[0] for p in points)
        y_low, y_high = min(p[1] for p in points), max(p[1] for p in points)
        x_high = x_high if x_high > x_low else x_low + 1
        pad = (y_high - y_low) * 0.05 or abs(y_high) * 0.05 or 1.0
        y_low, y_high = y_low - pad, y_high + pad

        def x_of(value: float) -> float:
            return left + plot_w * (value - x_low) / (x_high - x_low)

        def y_of(value: float) -> float:
            return top + plot_h - plot_h * (value - y_low) / (y_high - y_low)

        for value in _ticks(y_low, y_high):
            y = y_of(value)
            parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
            parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{value:.4g}</text>')
        for value in _ticks(x_low, x_high):
            x = x_of(value)
            parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 14}" text-anchor="middle">{value:.0f}</text>')
        for index, (name, values) in enumerate(series.items()):
            colour = PALETTE[(index + 1) % len(PALETTE)]
            finite = [p for p in values if math.isfinite(p[1])]
            coords = " ".join(f"{x_of(x):.1f},{y_of(y):.1f}" for x, y in finite)
            parts.append(
                f'<polyline data-series="{escape(name)}" data-count="{len(finite)}" points="{coords}" '
                f'fill="none" stroke="{colour}" stroke-width="1.8"/>'
            )
            if len(finite) == 1:  # a lone point draws no line: mark it
                x, y = finite[0]
                parts.append(f'<circle cx="{x_of(x):.1f}" cy="{y_of(y):.1f}" r="3" fill="{colour}"/>')
            parts.append(f'<rect x="{left + 8 + index * 150}" y="{top + 6}" width="10" height="10" fill="{colour}"/>')
            parts.append(f'<text x="{left + 22 + index * 150}" y="{top + 15}">{escape(name)}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">{escape(x_label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def interval_chart(rows: list[tuple[str, float, float, float]], title: str, width: int = 640) -> str:
    """One row per label: the difference as a dot and its 95% interval as a bar, around a zero line.

    `rows` holds (label, difference, low, high), all in [-1, 1] (pass-rate differences).
    """
    row_h, left, right, top = 26, 220, 24, 34
    height = top + row_h * max(len(rows), 1) + 30
    plot_w = width - left - right

    def x_of(value: float) -> float:
        return left + plot_w * (max(-1.0, min(1.0, value)) + 1) / 2

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" role="img" '
        f'aria-label="{escape(title)}">',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13">{escape(title)}</text>',
    ]
    for value in (-1.0, -0.5, 0.0, 0.5, 1.0):
        x = x_of(value)
        stroke = "#333" if value == 0 else "#eee"
        parts.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 26}" stroke="{stroke}"/>')
        parts.append(f'<text x="{x:.1f}" y="{height - 12}" text-anchor="middle">{value:+.0%}</text>')
    for index, (label, difference, low, high) in enumerate(rows):
        y = top + row_h * index + row_h / 2
        colour = "#2ca02c" if low > 0 else "#d62728" if high < 0 else "#1f77b4"
        parts.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{escape(label)}</text>')
        parts.append(
            f'<rect class="interval" x="{x_of(low):.1f}" y="{y - 5:.1f}" '
            f'width="{max(x_of(high) - x_of(low), 1):.1f}" height="10" fill="{colour}" opacity="0.35">'
            f"<title>{escape(label)}: {difference:+.1%} [{low:+.1%}, {high:+.1%}]</title></rect>"
        )
        parts.append(f'<circle cx="{x_of(difference):.1f}" cy="{y:.1f}" r="4" fill="{colour}"/>')
    parts.append("</svg>")
    return "\n".join(parts)

"""Small, dependency-free SVG bar charts for reports (a single self-contained file, no plotting stack)."""

from __future__ import annotations

from html import escape


def bar_chart(
    labels: list[str],
    values: list[float],
    title: str,
    x_label: str = "",
    y_label: str = "",
    width: int = 720,
    height: int = 320,
) -> str:
    """An SVG bar chart with one bar per label."""
    left, right, top, bottom = 60, 20, 36, 60
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max(values) if values and max(values) > 0 else 1.0
    bar_w = plot_w / max(len(values), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>',
    ]
    for tick in range(5):
        value = peak * tick / 4
        y = top + plot_h - plot_h * tick / 4
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{value:.3g}</text>')
    step = max(1, len(labels) // 12)
    for index, (label, value) in enumerate(zip(labels, values, strict=True)):
        h = plot_h * value / peak
        x = left + index * bar_w
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" width="{max(bar_w - 2, 1):.1f}" '
            f'height="{h:.1f}" fill="#4878a8"><title>{escape(label)}: {value:g}</title></rect>'
        )
        if index % step == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h + 14}" text-anchor="middle">{escape(label)}</text>'
            )
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 16}" text-anchor="middle">{escape(x_label)}</text>')
    parts.append(
        f'<text x="14" y="{top + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + plot_h / 2})">{escape(y_label)}</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts)


PALETTE = ("#8c8c8c", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")


def grouped_bar_chart(
    groups: list[str],
    series: dict[str, list[float]],
    title: str,
    y_label: str = "",
    y_max: float = 1.0,
    width: int = 760,
    height: int = 340,
) -> str:
    """An SVG chart with one group of bars per label and one bar (and legend entry) per series."""
    left, right, top, bottom = 60, 20, 40, 80
    plot_w, plot_h = width - left - right, height - top - bottom
    names = list(series)
    group_w = plot_w / max(len(groups), 1)
    bar_w = group_w * 0.8 / max(len(names), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">{escape(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>',
    ]
    for tick in range(5):
        value = y_max * tick / 4
        y = top + plot_h - plot_h * tick / 4
        parts.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{value:.2g}</text>')
        parts.append(f'<line x1="{left}" y1="{y}" x2="{left + plot_w}" y2="{y}" stroke="#eee"/>')
    for g, group in enumerate(groups):
        x0 = left + g * group_w + group_w * 0.1
        for s, name in enumerate(names):
            value = max(0.0, min(series[name][g], y_max))
            h = plot_h * value / y_max if y_max else 0
            x = x0 + s * bar_w
            colour = PALETTE[s % len(PALETTE)]
            parts.append(
                f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w * 0.92:.1f}" height="{h:.1f}" '
                f'fill="{colour}"><title>{escape(name)} · {escape(group)}: {series[name][g]:.3f}</title></rect>'
            )
        parts.append(
            f'<text x="{left + g * group_w + group_w / 2:.1f}" y="{top + plot_h + 16}" text-anchor="middle">'
            f"{escape(group)}</text>"
        )
    for s, name in enumerate(names):
        x = left + s * 150
        parts.append(f'<rect x="{x}" y="{height - 24}" width="12" height="12" fill="{PALETTE[s % len(PALETTE)]}"/>')
        parts.append(f'<text x="{x + 16}" y="{height - 14}">{escape(name)}</text>')
    if y_label:
        parts.append(
            f'<text x="14" y="{top + plot_h / 2}" transform="rotate(-90 14 {top + plot_h / 2})" '
            f'text-anchor="middle">{escape(y_label)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)

"""Charts for the Harvest page, drawn on the server as SVG: no JavaScript, no CDN, works offline.

Each chart is a self-contained ``<svg>`` string to embed in HTML. Every mark carries its numbers in
a ``<title>`` (shown on hover, read by screen readers), and ``data-*`` attributes name what it
stands for, so a test can count them. Colours are fixed per status, in one table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

from include.harvest.models import Status

__all__ = ["STATUS_COLORS", "Bar", "Point", "status_bar", "status_legend", "stacked_bars", "time_series"]

# One colour per status: greens for success, greys for URLs never fetched, warm colours for
# failures. (Tableau-like hues; neighbours differ in lightness too.)
STATUS_COLORS: dict[str, str] = {
    Status.OK: "#2e7d32",
    Status.NOT_MODIFIED: "#81c784",
    Status.REJECTED: "#9e9e9e",
    Status.BLOCKED: "#6a1b9a",
    Status.HTTP_ERROR: "#d32f2f",
    Status.TIMEOUT: "#f57c00",
    Status.CONNECTION_ERROR: "#8d4004",
    Status.TOO_LARGE: "#1565c0",
    Status.TOO_MANY_REDIRECTS: "#ad1457",
    Status.INVALID_CONTENT: "#fbc02d",
    Status.SKIPPED: "#cfd8dc",
    Status.INTERNAL_ERROR: "#37474f",
}
_ORDER = list(STATUS_COLORS)
_FONT = 'font-family="system-ui, sans-serif" font-size="11" fill="#555"'


@dataclass(frozen=True, slots=True)
class Bar:
    """One run in the stacked bar chart: its label, counts per status and where a click goes."""

    key: str  # what identifies the run (data-run), e.g. its DAG run id
    label: str  # under the bar
    title: str  # the run's full name, for the hover text
    counts: Mapping[str, int]
    href: str | None = None


@dataclass(frozen=True, slots=True)
class Point:
    at: datetime
    value: float
    label: str  # what the hover text says about the point (run key)


def status_color(status: str) -> str:
    return STATUS_COLORS.get(status, "#000000")


def _ordered(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    present = [(s, n) for s, n in counts.items() if n > 0]
    return sorted(present, key=lambda item: _ORDER.index(item[0]) if item[0] in _ORDER else len(_ORDER))


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "0%"


def status_bar(counts: Mapping[str, int], *, width: int = 720, height: int = 28, label: str = "") -> str:
    """One horizontal bar split into a segment per status present, widths by share of URLs."""
    total = sum(n for _, n in _ordered(counts))
    name = escape(label or "URLs per status")
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart status-bar" viewBox="0 0 {width} {height}"'
        f' width="100%" preserveAspectRatio="none" role="img" aria-label="{name}">',
        f"<title>{name}: {total:,} URLs</title>",
    ]
    if not total:
        parts.append(f'<rect x="0" y="0" width="{width}" height="{height}" fill="#eeeeee"/>')
    x = 0.0
    for status, n in _ordered(counts):
        w = width * n / total
        parts.append(
            f'<rect class="segment" data-status="{escape(status)}" data-count="{n}" x="{x:.2f}" y="0"'
            f' width="{w:.2f}" height="{height}" fill="{status_color(status)}">'
            f"<title>{escape(status)}: {n:,} URLs ({_pct(n, total)})</title></rect>"
        )
        x += w
    parts.append("</svg>")
    return "".join(parts)


def stacked_bars(bars: Sequence[Bar], *, width: int = 760, height: int = 220) -> str:
    """One bar per run, oldest on the left, split by status as a share of the run's URLs (100%).

    Shares, not counts: a 20-URL manual run and a 100,000-URL daily list stay comparable. The URL
    count of each run is in its hover text and under the bar when there is room.
    """
    left, right, top, bottom = 40, 8, 8, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart stacked-bars" viewBox="0 0 {width} {height}"'
        f' width="100%" role="img" aria-label="URLs per status, per run">',
        "<title>URLs per status, per run (share of each run's URLs)</title>",
    ]
    for share in (0, 25, 50, 75, 100):
        y = top + plot_h * (1 - share / 100)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e0e0e0"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" {_FONT}>{share}%</text>'
        )
    if not bars:
        parts.append(
            f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle" {_FONT}>no data yet</text>'
        )
    slot = plot_w / max(len(bars), 1)
    bar_w = max(min(slot * 0.75, 48), 1)
    label_every = max(1, math.ceil(len(bars) / max(plot_w // 70, 1)))
    for i, bar in enumerate(bars):
        total = sum(n for _, n in _ordered(bar.counts))
        x = left + slot * i + (slot - bar_w) / 2
        group = [f'<g class="bar" data-run="{escape(bar.key)}" data-urls="{total}">']
        y = top + plot_h
        for status, n in _ordered(bar.counts):
            h = plot_h * n / total
            y -= h
            group.append(
                f'<rect class="segment" data-status="{escape(status)}" data-count="{n}" x="{x:.2f}"'
                f' y="{y:.2f}" width="{bar_w:.2f}" height="{h:.2f}" fill="{status_color(status)}">'
                f"<title>{escape(bar.title)}\n{escape(status)}: {n:,} of {total:,} URLs ({_pct(n, total)})"
                "</title></rect>"
            )
        if not total:
            group.append(
                f'<rect class="empty" x="{x:.2f}" y="{top + plot_h - 2}" width="{bar_w:.2f}" height="2"'
                f' fill="#bdbdbd"><title>{escape(bar.title)}: no URLs</title></rect>'
            )
        group.append("</g>")
        markup = "".join(group)
        if bar.href:
            markup = f'<a href="{escape(bar.href)}">{markup}</a>'
        parts.append(markup)
        if i % label_every == 0:
            cx = left + slot * i + slot / 2
            parts.append(
                f'<text x="{cx:.1f}" y="{height - bottom + 14}" text-anchor="middle" {_FONT}>'
                f"{escape(bar.label)}</text>"
                f'<text x="{cx:.1f}" y="{height - bottom + 27}" text-anchor="middle" {_FONT}>{total:,}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def time_series(
    points: Sequence[Point],
    *,
    title: str,
    unit: str,
    color: str = "#1565c0",
    width: int = 560,
    height: int = 200,
    percent: bool = False,
) -> str:
    """A line over time with a dot per run; y from 0 to a round maximum (100% for shares)."""
    left, right, top, bottom = 44, 10, 8, 22
    plot_w, plot_h = width - left - right, height - top - bottom
    points = sorted(points, key=lambda p: p.at)
    top_value = 100.0 if percent else _nice_ceiling(max((p.value for p in points), default=0.0))
    name = escape(title)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart time-series" viewBox="0 0 {width} {height}"'
        f' width="100%" role="img" aria-label="{name}"><title>{name}</title>',
    ]
    for k in range(5):
        value = top_value * k / 4
        y = top + plot_h * (1 - k / 4)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e0e0e0"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" {_FONT}>{_short(value)}'
            f"{'%' if percent else ''}</text>"
        )
    if not points:
        parts.append(
            f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle" {_FONT}>no data yet</text>'
        )
        parts.append("</svg>")
        return "".join(parts)
    first, last = points[0].at.timestamp(), points[-1].at.timestamp()
    span = last - first

    def xy(p: Point) -> tuple[float, float]:
        x = left + (plot_w * (p.at.timestamp() - first) / span if span else plot_w / 2)
        y = top + plot_h * (1 - min(p.value, top_value) / top_value) if top_value else top + plot_h
        return x, y

    coords = [xy(p) for p in points]
    if len(coords) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>')
    for p, (x, y) in zip(points, coords, strict=True):
        shown = f"{p.value:.1f}%" if percent else f"{p.value:,.1f} {unit}"
        parts.append(
            f'<circle class="point" data-value="{p.value:.3f}" cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}">'
            f"<title>{escape(p.label)}: {escape(shown)} ({p.at:%Y-%m-%d %H:%M} UTC)</title></circle>"
        )
    parts.append(
        f'<text x="{left}" y="{height - 6}" {_FONT}>{points[0].at:%Y-%m-%d %H:%M}</text>'
        f'<text x="{width - right}" y="{height - 6}" text-anchor="end" {_FONT}>{points[-1].at:%Y-%m-%d %H:%M}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def status_legend(statuses: Sequence[str]) -> list[tuple[str, str]]:
    """(status, colour) for the statuses given, in the chart order, for an HTML legend."""
    ordered = sorted(set(statuses), key=lambda s: _ORDER.index(s) if s in _ORDER else len(_ORDER))
    return [(s, status_color(s)) for s in ordered]


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above ``value`` (1 for nothing)."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude  # pragma: no cover


def _short(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"

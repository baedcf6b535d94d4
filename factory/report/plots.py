"""Small inline-SVG charts for the run report: histogram, line chart, stacked bars, bars with error bars.

Written by hand rather than with matplotlib: the report needs four plain chart kinds as inline SVG in one
self-contained HTML file, and a ~50 MB plotting dependency (with its font cache) is not worth that. Each function
returns an `<svg>` string (no xmlns, no external references) that scales with the page width.
"""
from __future__ import annotations

import math
from html import escape

import numpy as np

WIDTH, HEIGHT = 720, 280
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 20, 30, 46
PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac"]
KEPT_COLOR = "#59a14f"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 × 10^n) covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0]
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    start = math.floor(lo / step) * step
    ticks, value = [], start
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def fmt(value: float) -> str:
    """Short tick/label text: 12, 0.25, 1.2k, 3.4M."""
    if abs(value) >= 1e6:
        return f"{value / 1e6:.3g}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.3g}k"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3g}"


class _Frame:
    """Maps data coordinates to the plot area and draws axes, ticks and labels."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float], height: int = HEIGHT,
                 margin_left: int = MARGIN_LEFT):
        self.height = height
        self.left, self.right = margin_left, WIDTH - MARGIN_RIGHT
        self.top, self.bottom = MARGIN_TOP, height - MARGIN_BOTTOM
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        if self.x1 <= self.x0:
            self.x1 = self.x0 + 1
        if self.y1 <= self.y0:
            self.y1 = self.y0 + 1

    def x(self, value: float) -> float:
        return self.left + (value - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def y(self, value: float) -> float:
        return self.bottom - (value - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)

    def axes(self, x_ticks: list[float] | None, y_ticks: list[float], x_label: str, y_label: str) -> list[str]:
        parts = [f'<line class="axis" x1="{self.left}" y1="{self.bottom}" x2="{self.right}" y2="{self.bottom}"/>',
                 f'<line class="axis" x1="{self.left}" y1="{self.top}" x2="{self.left}" y2="{self.bottom}"/>']
        for t in y_ticks:
            if self.y0 <= t <= self.y1:
                y = self.y(t)
                parts.append(f'<line class="grid" x1="{self.left}" y1="{y:.1f}" x2="{self.right}" y2="{y:.1f}"/>')
                parts.append(f'<text class="tick" x="{self.left - 6}" y="{y + 4:.1f}" text-anchor="end">{fmt(t)}</text>')
        for t in x_ticks or []:
            if self.x0 <= t <= self.x1:
                x = self.x(t)
                parts.append(f'<line class="axis" x1="{x:.1f}" y1="{self.bottom}" x2="{x:.1f}" y2="{self.bottom + 4}"/>')
                parts.append(f'<text class="tick" x="{x:.1f}" y="{self.bottom + 16}" text-anchor="middle">{fmt(t)}</text>')
        parts.append(f'<text class="label" x="{(self.left + self.right) / 2:.1f}" y="{self.height - 8}" '
                     f'text-anchor="middle">{escape(x_label)}</text>')
        parts.append(f'<text class="label" transform="translate(14,{(self.top + self.bottom) / 2:.1f}) rotate(-90)" '
                     f'text-anchor="middle">{escape(y_label)}</text>')
        return parts


def _svg(parts: list[str], title: str, height: int = HEIGHT, kind: str = "") -> str:
    return (f'<svg class="plot {kind}" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" '
            f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
            f'<text class="plot-title" x="{MARGIN_LEFT}" y="18">{escape(title)}</text>' + "".join(parts) + "</svg>")


def histogram(values: np.ndarray, title: str, x_label: str, bins: int = 30,
              value_range: tuple[float, float] | None = None, max_distinct: int = 12) -> str:
    """Histogram of `values`. Data with at most `max_distinct` distinct values (a pass rate over k = 4 samples:
    0, .25, …, 1) gets one bar centred on each value instead of bins that would split or merge them."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return _svg(['<text class="tick" x="360" y="140" text-anchor="middle">no values</text>'], title, kind="hist")
    distinct, distinct_counts = np.unique(values, return_counts=True)
    if len(distinct) <= max_distinct:
        width = float(np.diff(distinct).min()) if len(distinct) > 1 else 1.0
        lefts, rights, counts = distinct - width * 0.4, distinct + width * 0.4, distinct_counts
        lo, hi = value_range if value_range is not None else (float(distinct[0]), float(distinct[-1]))
        x_range = (min(lo, float(distinct[0])) - width / 2, max(hi, float(distinct[-1])) + width / 2)
    else:
        lo, hi = value_range if value_range is not None else (float(values.min()), float(values.max()))
        counts, edges = np.histogram(values, bins=np.linspace(lo, hi, bins + 1))
        lefts, rights = edges[:-1], edges[1:]
        x_range = (float(edges[0]), float(edges[-1]))
    x_ticks = [float(v) for v in distinct] if len(distinct) <= max_distinct else nice_ticks(*x_range, 6)
    frame = _Frame(x_range, (0.0, float(counts.max()) * 1.05))
    parts = frame.axes(x_ticks, nice_ticks(0, float(counts.max()), 4), x_label, "count")
    for count, left, right in zip(counts, lefts, rights):
        if count == 0:
            continue
        x, w = frame.x(left), max(frame.x(right) - frame.x(left) - 1, 0.8)
        y = frame.y(count)
        parts.append(f'<rect class="bar" x="{x + 0.5:.1f}" y="{y:.1f}" width="{w:.1f}" height="{frame.bottom - y:.1f}" '
                     f'fill="{PALETTE[0]}"><title>{fmt(left)}–{fmt(right)}: {int(count)}</title></rect>')
    return _svg(parts, title, kind="hist")


def line_chart(series: dict[str, tuple[list[float], list[float]]], title: str, x_label: str, y_label: str,
               max_points: int = 1500) -> str:
    """One polyline per series {name: (x, y)}; long series are thinned to about `max_points` points."""
    series = {name: (np.asarray(x, float), np.asarray(y, float)) for name, (x, y) in series.items() if len(x)}
    if not series:
        return _svg(['<text class="tick" x="360" y="140" text-anchor="middle">no points</text>'], title, kind="line")
    xs = np.concatenate([x for x, _ in series.values()])
    ys = np.concatenate([y for _, y in series.values()])
    y_lo, y_hi = float(ys.min()), float(ys.max())
    pad = (y_hi - y_lo) * 0.05 or 0.5
    frame = _Frame((float(xs.min()), float(xs.max())), (max(y_lo - pad, 0.0) if y_lo >= 0 else y_lo - pad, y_hi + pad))
    parts = frame.axes(nice_ticks(frame.x0, frame.x1, 6), nice_ticks(frame.y0, frame.y1, 4), x_label, y_label)
    for i, (name, (x, y)) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        if len(x) > max_points:
            keep = np.unique(np.append(np.arange(0, len(x), math.ceil(len(x) / max_points)), len(x) - 1))
            x, y = x[keep], y[keep]
        points = " ".join(f"{frame.x(a):.1f},{frame.y(b):.1f}" for a, b in zip(x, y))
        parts.append(f'<polyline class="series" fill="none" stroke="{color}" stroke-width="1.8" points="{points}">'
                     f'<title>{escape(name)}</title></polyline>')
        if len(x) == 1:
            parts.append(f'<circle cx="{frame.x(x[0]):.1f}" cy="{frame.y(y[0]):.1f}" r="3" fill="{color}"/>')
        parts.append(f'<rect x="{frame.right - 150}" y="{frame.top + 4 + 16 * i}" width="12" height="3" fill="{color}"/>'
                     f'<text class="tick" x="{frame.right - 134}" y="{frame.top + 9 + 16 * i}">{escape(name)}</text>')
    return _svg(parts, title, kind="line")


def stacked_bars(rows: list[tuple[str, list[tuple[str, float, str]]]], title: str) -> str:
    """Horizontal stacked bars, one per row: (label, [(segment name, value, color)]), each scaled to its own total
    (the share of a stage's input that was kept or dropped for each reason)."""
    bar_h, gap = 22, 12
    left, right = 120, WIDTH - MARGIN_RIGHT
    parts = []
    for i, (label, segments) in enumerate(rows):
        y = MARGIN_TOP + 8 + i * (bar_h + gap)
        total = sum(v for _, v, _ in segments)
        parts.append(f'<text class="tick" x="{left - 8}" y="{y + bar_h / 2 + 4}" text-anchor="end">{escape(label)}</text>')
        x = float(left)
        for name, value, color in segments:
            if value <= 0 or total <= 0:
                continue
            w = value / total * (right - left)
            parts.append(f'<rect class="segment" x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}">'
                         f'<title>{escape(label)}: {escape(name)} {fmt(value)} ({100 * value / total:.1f}%)</title></rect>')
            if w > 60:
                parts.append(f'<text class="inbar" x="{x + 4:.1f}" y="{y + bar_h / 2 + 4}">'
                             f'{escape(name)} {100 * value / total:.0f}%</text>')
            x += w
        if total <= 0:
            parts.append(f'<text class="tick" x="{left + 4}" y="{y + bar_h / 2 + 4}">no records</text>')
    axis_y = MARGIN_TOP + len(rows) * (bar_h + gap) + 6
    for share in (0, 25, 50, 75, 100):
        x = left + share / 100 * (right - left)
        parts.append(f'<text class="tick" x="{x:.1f}" y="{axis_y + 12}" text-anchor="middle">{share}%</text>')
    legend = list(dict.fromkeys((name, color) for _, segments in rows for name, value, color in segments if value > 0))
    x, y = float(left), axis_y + 32
    for name, color in legend:  # small segments carry no label of their own
        width = 22 + 7 * len(name)
        if x + width > right:
            x, y = float(left), y + 18
        parts.append(f'<rect class="key" x="{x:.1f}" y="{y - 9}" width="10" height="10" fill="{color}"/>'
                     f'<text class="tick" x="{x + 14:.1f}" y="{y}">{escape(name)}</text>')
        x += width + 12
    return _svg(parts, title, height=int(y) + 12, kind="funnel")


def grouped_bars(groups: list[str], series: list[str], values: dict[tuple[str, str], tuple[float, float | None]],
                 title: str, y_label: str, y_max: float | None = None) -> str:
    """Vertical bars grouped by `groups` (x axis), one colour per `series`; values[(group, series)] =
    (height, error) with the error drawn as a ± whisker."""
    tops = [v + (e or 0) for v, e in values.values()] or [1.0]
    frame = _Frame((0.0, float(len(groups))), (0.0, y_max if y_max is not None else max(tops) * 1.1 or 1.0))
    parts = frame.axes(None, nice_ticks(0, frame.y1, 4), "", y_label)
    slot = (frame.right - frame.left) / max(len(groups), 1)
    bar_w = slot * 0.8 / max(len(series), 1)
    for gi, group in enumerate(groups):
        x_group = frame.left + gi * slot + slot * 0.1
        parts.append(f'<text class="tick" x="{x_group + slot * 0.4:.1f}" y="{frame.bottom + 16}" '
                     f'text-anchor="middle">{escape(group)}</text>')
        for si, name in enumerate(series):
            if (group, name) not in values:
                continue
            value, error = values[(group, name)]
            x, y = x_group + si * bar_w, frame.y(value)
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" height="{frame.bottom - y:.1f}" '
                         f'fill="{PALETTE[si % len(PALETTE)]}"><title>{escape(name)} on {escape(group)}: {value:.3g}'
                         + (f" ± {error:.2g}" if error is not None else "") + "</title></rect>")
            if error:
                cx = x + (bar_w - 2) / 2
                lo, hi = frame.y(max(value - error, 0.0)), frame.y(value + error)
                parts.append(f'<path class="whisker" d="M{cx:.1f},{lo:.1f}V{hi:.1f}M{cx - 4:.1f},{lo:.1f}h8'
                             f'M{cx - 4:.1f},{hi:.1f}h8" stroke="#333" fill="none"/>')
    for si, name in enumerate(series):
        parts.append(f'<rect x="{frame.right - 150}" y="{frame.top - 4 + 16 * si}" width="10" height="10" '
                     f'fill="{PALETTE[si % len(PALETTE)]}"/><text class="tick" x="{frame.right - 134}" '
                     f'y="{frame.top + 5 + 16 * si}">{escape(name)}</text>')
    return _svg(parts, title, kind="bars")


def stacked_histogram(series: list[tuple[str, np.ndarray, str]], title: str, x_label: str,
                      value_range: tuple[float, float] = (0.0, 1.0), bins: int = 20,
                      threshold: float | None = None) -> str:
    """Fixed-width bins over `value_range`, one stacked colour per series (name, values, color), so a score that
    is mostly 1.0 still shows its spread; an optional dashed `threshold` line (a filter's cut-off)."""
    edges = np.linspace(value_range[0], value_range[1], bins + 1)
    counts = []
    for _, values, _ in series:
        values = np.asarray(values, dtype=float)
        values = np.clip(values[np.isfinite(values)], value_range[0], value_range[1])
        counts.append(np.histogram(values, bins=edges)[0])
    totals = np.sum(counts, axis=0) if counts else np.zeros(bins)
    if not totals.any():
        return _svg(['<text class="tick" x="360" y="140" text-anchor="middle">no values</text>'], title, kind="hist")
    frame = _Frame((float(edges[0]), float(edges[-1])), (0.0, float(totals.max()) * 1.08))
    parts = frame.axes(nice_ticks(*value_range, 5), nice_ticks(0, float(totals.max()), 4), x_label, "count")
    below = np.zeros(bins)
    for (name, _, color), count in zip(series, counts):
        for b in range(bins):
            if count[b] == 0:
                continue
            x, w = frame.x(edges[b]), max(frame.x(edges[b + 1]) - frame.x(edges[b]) - 1, 0.8)
            y_top, y_low = frame.y(below[b] + count[b]), frame.y(below[b])
            parts.append(f'<rect class="bar" x="{x + 0.5:.1f}" y="{y_top:.1f}" width="{w:.1f}" '
                         f'height="{y_low - y_top:.1f}" fill="{color}"><title>{escape(name)} '
                         f'{fmt(edges[b])}–{fmt(edges[b + 1])}: {int(count[b])}</title></rect>')
        below += count
    if threshold is not None and value_range[0] <= threshold <= value_range[1]:
        x = frame.x(threshold)
        parts.append(f'<line class="threshold" x1="{x:.1f}" y1="{frame.top}" x2="{x:.1f}" y2="{frame.bottom}" '
                     f'stroke="#333" stroke-dasharray="4 3"/><text class="tick" x="{x - 4:.1f}" y="{frame.top + 10}" '
                     f'text-anchor="end">cut-off {fmt(threshold)}</text>')
    for i, (name, _, color) in enumerate(series):
        parts.append(f'<rect class="key" x="{frame.left + 10}" y="{frame.top + 4 + 16 * i}" width="10" height="10" '
                     f'fill="{color}"/><text class="tick" x="{frame.left + 24}" y="{frame.top + 13 + 16 * i}">'
                     f'{escape(name)}</text>')
    return _svg(parts, title, kind="hist")

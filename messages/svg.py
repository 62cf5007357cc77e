"""A small server-side SVG chart builder: axes, lines, points, bars and an objective line.

No JavaScript and no front-end build: the report pages inline the returned ``<svg>``. Every piece
of text that goes into the SVG (titles, labels, tooltips) is escaped here, so a service or drill
name cannot inject markup. The words themselves (titles, the objective's label, units) are passed in
by the locale's templates; this module only lays them out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 640, 280
LEFT, RIGHT, TOP, BOTTOM = 64, 20, 36, 48
PALETTE = ("#2563eb", "#db2777", "#059669", "#d97706", "#7c3aed", "#0891b2")
OBJECTIVE_COLOUR = "#dc2626"


@dataclass(frozen=True)
class Point:
    x: float                 # e.g. a POSIX timestamp
    y: float
    label: str               # what the point is (an incident key, a drill id): its tooltip's start


@dataclass(frozen=True)
class Bar:
    label: str
    value: float | None      # None: unknown (drawn as an outline, labelled ``unknown_label``)
    note: str = ""           # the tooltip's extra text


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _number(value: float) -> str:
    return f"{value:.1f}" if abs(value) < 1000 else f"{value:,.0f}"


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """0 … a round number at or above ``top`` in about ``count`` steps (1, 2 or 5 × 10^n)."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    ticks = [0.0]
    while ticks[-1] < top - 1e-9:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


class _Frame:
    """The plot area and the value → pixel mapping of the y axis."""

    def __init__(self, y_top: float, width: int = WIDTH, height: int = HEIGHT) -> None:
        self.width, self.height = width, height
        self.ticks = nice_ticks(y_top)
        self.y_max = self.ticks[-1]
        self.x0, self.x1 = LEFT, width - RIGHT
        self.y0, self.y1 = height - BOTTOM, TOP

    def y(self, value: float) -> float:
        return self.y0 - (self.y0 - self.y1) * (value / self.y_max if self.y_max else 0)

    def open(self, title: str, css: str) -> list[str]:
        return [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {css}" viewBox="0 0 {self.width} {self.height}" '
                f'width="{self.width}" height="{self.height}" role="img" aria-label="{_e(title)}">',
                f"<title>{_e(title)}</title>",
                f'<text class="chart-title" x="{LEFT}" y="20" font-size="14" font-weight="600">{_e(title)}</text>']

    def y_axis(self, y_label: str) -> list[str]:
        parts = ['<g class="axis y-axis" font-size="11" fill="#374151">',
                 f'<line x1="{self.x0}" y1="{self.y0}" x2="{self.x0}" y2="{self.y1}" stroke="#9ca3af"/>']
        for tick in self.ticks:
            y = self.y(tick)
            parts.append(f'<line x1="{self.x0}" y1="{y:.1f}" x2="{self.x1}" y2="{y:.1f}" stroke="#e5e7eb"/>')
            parts.append(f'<text x="{self.x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(_number(tick))}</text>')
        parts.append(f'<text x="14" y="{(self.y0 + self.y1) / 2:.1f}" text-anchor="middle" '
                     f'transform="rotate(-90 14 {(self.y0 + self.y1) / 2:.1f})">{_e(y_label)}</text></g>')
        parts.append(f'<line class="x-axis" x1="{self.x0}" y1="{self.y0}" x2="{self.x1}" y2="{self.y0}" '
                     'stroke="#9ca3af"/>')
        return parts

    def objective(self, value: float | None, label: str) -> list[str]:
        if value is None:
            return []
        y = self.y(value)
        return [f'<g class="objective"><line x1="{self.x0}" y1="{y:.1f}" x2="{self.x1}" y2="{y:.1f}" '
                f'stroke="{OBJECTIVE_COLOUR}" stroke-width="1.5" stroke-dasharray="6 4"/>',
                f'<text x="{self.x1}" y="{y - 5:.1f}" text-anchor="end" font-size="11" fill="{OBJECTIVE_COLOUR}">'
                f"{_e(label)} {_e(_number(value))}</text></g>"]


def line_chart(series: Mapping[str, Sequence[Point]], *, title: str, y_label: str, names: Mapping[str, str],
               x_ticks: Sequence[tuple[float, str]] = (), objective: float | None = None,
               objective_label: str = "", unit: str = "", empty_label: str = "") -> Markup:
    """One line with points per series (``names`` gives each series' shown name), against an objective."""
    values = [p.y for points in series.values() for p in points]
    frame = _Frame(max([*values, objective or 0.0, 1e-9]) * 1.1)
    xs = [p.x for points in series.values() for p in points] + [x for x, _ in x_ticks]
    low, high = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if high - low < 1e-9:
        low, high = low - 86400, high + 86400

    def x(value: float) -> float:
        return frame.x0 + 12 + (frame.x1 - frame.x0 - 24) * (value - low) / (high - low)

    parts = frame.open(title, "line-chart") + frame.y_axis(y_label)
    for tick, text in x_ticks:
        parts.append(f'<text class="x-tick" x="{x(tick):.1f}" y="{frame.y0 + 16}" text-anchor="middle" '
                     f'font-size="11" fill="#374151">{_e(text)}</text>')
    parts += frame.objective(objective, objective_label)
    for number, (key, points) in enumerate(series.items()):
        colour = PALETTE[number % len(PALETTE)]
        ordered = sorted(points, key=lambda p: p.x)
        parts.append(f'<g class="series" data-series="{_e(key)}" fill="{colour}">')
        if len(ordered) > 1:
            line = " ".join(f"{x(p.x):.1f},{frame.y(p.y):.1f}" for p in ordered)
            parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for p in ordered:
            px, py = x(p.x), frame.y(p.y)
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="4"><title>{_e(p.label)}: {_e(_number(p.y))} '
                         f"{_e(unit)}</title></circle>")
            parts.append(f'<text class="value" x="{px:.1f}" y="{py - 8:.1f}" text-anchor="middle" font-size="10">'
                         f"{_e(_number(p.y))}</text>")
        parts.append("</g>")
        parts.append(f'<g class="legend" font-size="11"><rect x="{LEFT + 130 * number}" y="{frame.height - 16}" '
                     f'width="10" height="10" fill="{colour}"/><text x="{LEFT + 14 + 130 * number}" '
                     f'y="{frame.height - 7}">{_e(names.get(key, key))}</text></g>')
    if not values and empty_label:
        parts.append(f'<text class="empty" x="{(frame.x0 + frame.x1) / 2}" y="{(frame.y0 + frame.y1) / 2}" '
                     f'text-anchor="middle" font-size="13" fill="#6b7280">{_e(empty_label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_chart(bars: Sequence[Bar], *, title: str, y_label: str, objective: float | None = None,
              objective_label: str = "", unit: str = "", unknown_label: str = "", empty_label: str = "") -> Markup:
    """One bar per label (an unknown value is an outline labelled ``unknown_label``), against an objective."""
    known = [b.value for b in bars if b.value is not None]
    frame = _Frame(max([*known, objective or 0.0, 1e-9]) * 1.1)
    parts = frame.open(title, "bar-chart") + frame.y_axis(y_label) + frame.objective(objective, objective_label)
    slot = (frame.x1 - frame.x0) / max(1, len(bars))
    width = min(48.0, slot * 0.6)
    for number, bar in enumerate(bars):
        left = frame.x0 + slot * number + (slot - width) / 2
        centre = left + width / 2
        tooltip = f"{_e(bar.label)}: " + (f"{_e(_number(bar.value))} {_e(unit)}" if bar.value is not None
                                          else _e(unknown_label)) + (f" — {_e(bar.note)}" if bar.note else "")
        parts.append(f'<g class="bar" data-label="{_e(bar.label)}">')
        if bar.value is None:
            height = frame.y0 - frame.y1
            parts.append(f'<rect x="{left:.1f}" y="{frame.y1:.1f}" width="{width:.1f}" height="{height:.1f}" '
                         f'fill="none" stroke="#9ca3af" stroke-dasharray="3 3"><title>{tooltip}</title></rect>')
            parts.append(f'<text class="value unknown" x="{centre:.1f}" y="{frame.y0 - 6}" text-anchor="middle" '
                         f'font-size="10" fill="#6b7280">{_e(unknown_label)}</text>')
        else:
            top = frame.y(bar.value)
            parts.append(f'<rect x="{left:.1f}" y="{top:.1f}" width="{width:.1f}" height="{frame.y0 - top:.1f}" '
                         f'fill="{PALETTE[0]}"><title>{tooltip}</title></rect>')
            parts.append(f'<text class="value" x="{centre:.1f}" y="{top - 5:.1f}" text-anchor="middle" '
                         f'font-size="10">{_e(_number(bar.value))}</text>')
        parts.append(f'<text class="x-tick" x="{centre:.1f}" y="{frame.y0 + 16}" text-anchor="middle" font-size="11" '
                     f'fill="#374151">{_e(bar.label[:24])}</text></g>')
    if not bars and empty_label:
        parts.append(f'<text class="empty" x="{(frame.x0 + frame.x1) / 2}" y="{(frame.y0 + frame.y1) / 2}" '
                     f'text-anchor="middle" font-size="13" fill="#6b7280">{_e(empty_label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))

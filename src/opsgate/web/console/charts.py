"""Server-rendered bar charts: geometry computed here, drawn as inline SVG by a template with
presentation attributes and classes only (no inline style, so the CSP needs no exception)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

LABEL_WIDTH = 190
VALUE_WIDTH = 80
BAR_HEIGHT = 14
BAR_GAP = 3
GROUP_GAP = 14
TOP = 8


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    series: str
    title: str
    value_label: str


@dataclass(frozen=True)
class Group:
    label: str
    y: float


@dataclass(frozen=True)
class BarChart:
    """A horizontal grouped bar chart: one group per category, one bar per series."""

    width: int
    height: int
    label_width: int
    groups: list[Group]
    bars: list[Bar]
    legend: list[tuple[str, str]]
    bar_height: int = BAR_HEIGHT


def grouped_bars(
    categories: Sequence[str],
    series: Sequence[tuple[str, str]],
    values: Mapping[str, Mapping[str, float | None]],
    *,
    fmt: Callable[[float], str] = lambda v: f"{v:g}",
    width: int = 720,
) -> BarChart:
    """`series` is (key, label); `values[category][key]` the number (None: no bar)."""
    numbers = [v for c in categories for k, _ in series if (v := values[c].get(k)) is not None]
    top = max(numbers, default=0) or 1
    span = width - LABEL_WIDTH - VALUE_WIDTH
    groups, bars = [], []
    y = float(TOP)
    for category in categories:
        groups.append(Group(category, y))
        for key, label in series:
            value = values[category].get(key)
            if value is not None:
                bars.append(
                    Bar(
                        x=LABEL_WIDTH,
                        y=y,
                        width=max(span * value / top, 1.0 if value else 0.0),
                        series=key,
                        title=f"{category}: {label} {fmt(value)}",
                        value_label=fmt(value),
                    )
                )
            y += BAR_HEIGHT + BAR_GAP
        y += GROUP_GAP
    return BarChart(
        width=width,
        height=int(y),
        label_width=LABEL_WIDTH,
        groups=groups,
        bars=bars,
        legend=list(series),
    )

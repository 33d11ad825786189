"""The tables a run prints, and the JSON file it writes."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from bench.scenarios import Comparison, Measurement, Settings

TABLE_WIDTH = 150  # when standard output is not a terminal (make, CI logs, a pipe)


def load_average() -> float | None:
    """The 1-minute load average, or None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def busy_warning(load: float | None) -> str | None:
    """A warning when other work was competing for the CPUs, or None."""
    cpus = os.cpu_count() or 1
    if load is None or load < 0.5 * cpus:
        return None
    return (
        f"the machine was busy (load average {load:.1f} on {cpus} CPUs): latencies are inflated "
        "and noisy; the interleaving keeps the ratios fair, and server CPU per request is the "
        "steadier figure"
    )


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _verdict(met: bool) -> str:
    return "[green]met[/green]" if met else "[red]missed[/red]"


def table(rows: Sequence[Comparison], target_ratio: float) -> Table:
    """The governed-vs-bare table of the HTTP scenarios."""
    result = Table(
        title=f"opsgate: governed vs bare (target: governed/bare median ≤ {target_ratio:g})"
    )
    result.add_column("scenario")
    result.add_column("database")
    result.add_column("clients", justify="right")
    for side in ("governed", "bare"):
        result.add_column(f"{side}\nmedian ms", justify="right")
        result.add_column(f"{side}\np95 ms", justify="right")
        result.add_column(f"{side}\nreq/s", justify="right")
    result.add_column("server CPU\nms/req g / b", justify="right")
    result.add_column("ratio\n(median)", justify="right")
    result.add_column("target", justify="center")
    for row in rows:
        result.add_row(
            row.scenario,
            row.backend,
            str(row.clients),
            f"{row.governed.median_ms:.2f}",
            f"{row.governed.p95_ms:.2f}",
            f"{row.governed.throughput_rps:.0f}",
            f"{row.bare.median_ms:.2f}",
            f"{row.bare.p95_ms:.2f}",
            f"{row.bare.throughput_rps:.0f}",
            f"{_ms(row.governed.server_cpu_ms)} / {_ms(row.bare.server_cpu_ms)}",
            f"{row.ratio:.2f}",
            _verdict(row.met),
        )
    return result


def measurement_tables(rows: Sequence[Measurement]) -> list[Table]:
    """One table per distinct `Measurement.table`, in order of first appearance."""
    grouped: dict[str, list[Measurement]] = {}
    for row in rows:
        grouped.setdefault(row.table, []).append(row)
    tables = []
    for title, members in grouped.items():
        result = Table(title=title)
        result.add_column("database")
        for name, _ in members[0].columns:
            result.add_column(name, justify="left" if name in _LEFT else "right")
        result.add_column("ratio", justify="right")
        result.add_column("target", justify="center")
        for row in members:
            cells = dict(row.columns)
            bound = "≥" if row.at_least else "≤"
            result.add_row(
                row.backend,
                *(cells.get(name, "") for name, _ in members[0].columns),
                f"{row.ratio:.2f}",
                f"{_verdict(row.met)} ({bound} {row.target_ratio:g})",
            )
        tables.append(result)
    return tables


_LEFT = frozenset({"filter", "measured", "scenario", "plans", "page", "request"})


def _git_revision() -> str | None:
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def write_json(
    path: Path,
    settings: Settings,
    rows: Sequence[Comparison],
    measurements: Sequence[Measurement],
    skipped: Sequence[str],
    notes: Sequence[str],
    load: tuple[float | None, float | None],
    scenarios: Sequence[str],
) -> None:
    document: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": _git_revision(),
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_before": load[0],
            "load_average_after": load[1],
        },
        "settings": {
            "requests_per_endpoint": settings.requests,
            "concurrency": settings.concurrency,
            "warmup_per_endpoint": settings.warmup,
            "target_ratio": settings.target_ratio,
            "audit_records": settings.audit_records,
            "scenarios": list(scenarios),
        },
        "skipped": list(skipped),
        "notes": list(notes),
        "results": [row.as_json() for row in rows],
        "measurements": [row.as_json() for row in measurements],
        "all_targets_met": (
            all(r.met for r in rows) and all(m.met for m in measurements)
            if rows or measurements
            else None
        ),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")

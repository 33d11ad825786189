"""The one table a run prints, and the JSON file it writes."""

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

from bench.scenarios import Comparison, Settings

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


def table(rows: Sequence[Comparison], notes: Sequence[str], target_ratio: float) -> Table:
    result = Table(
        title=f"opsgate: governed vs bare (target: governed/bare median ≤ {target_ratio:g})",
        caption="\n".join(notes) or None,
        caption_justify="left",
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
            "[green]met[/green]" if row.met else "[red]missed[/red]",
        )
    return result


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
    skipped: Sequence[str],
    load: tuple[float | None, float | None],
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
        },
        "skipped": list(skipped),
        "results": [row.as_json() for row in rows],
        "all_targets_met": all(row.met for row in rows) if rows else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")

"""`python -m bench` (`make bench`): run the benchmark scenarios on each database backend."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console

# The modules register their scenarios when imported. Per backend, the HTTP scenarios run
# first (one server for all), then the standalone ones.
from bench import (  # noqa: F401
    BenchError,
    action_path,
    audit_trail,
    console_pages,
    payment_reverse,
    scale_out,
)
from bench.report import (
    TABLE_WIDTH,
    busy_warning,
    load_average,
    measurement_tables,
    table,
    write_json,
)
from bench.scenarios import (
    REGISTRY,
    Comparison,
    Measurement,
    Result,
    Scenario,
    Settings,
    StandaloneScenario,
    Target,
)
from bench.servers import PROVISIONERS, BackendUnavailable, migrate_and_seed, serve

EXIT_ERROR = 1
EXIT_TARGET_MISSED = 3


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure what opsgate's control layer costs: governed vs bare endpoints, "
        "sequentially and with concurrent clients, and the audit trail at a million records, "
        "on SQLite and PostgreSQL.",
    )
    parser.add_argument(
        "--requests", type=int, default=400, help="measured requests per endpoint and client count"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients")
    parser.add_argument("--warmup", type=int, default=50, help="warm-up requests per endpoint")
    parser.add_argument(
        "--backends", type=_csv, default=["sqlite", "postgresql"], help="comma-separated"
    )
    parser.add_argument(
        "--scenarios", type=_csv, default=list(REGISTRY), help="comma-separated (see --list)"
    )
    parser.add_argument(
        "--audit-records",
        type=int,
        default=1_000_000,
        help="audit records audit_trail generates per database (default 1,000,000)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results/bench.json"))
    parser.add_argument(
        "--target", type=float, default=1.3, help="the governed/bare median ratio to meet"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=3600, help="time budget for the whole run"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"exit with {EXIT_TARGET_MISSED} when a ratio misses the target",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    problems = [f"unknown backend {b!r}" for b in args.backends if b not in PROVISIONERS]
    problems += [f"unknown scenario {s!r}" for s in args.scenarios if s not in REGISTRY]
    if args.requests < 1 or args.concurrency < 1 or args.warmup < 0 or args.max_seconds <= 0:
        problems.append("--requests and --concurrency must be ≥ 1, --warmup ≥ 0")
    if args.audit_records < 100:
        problems.append("--audit-records must be ≥ 100")
    if problems:
        parser.error("; ".join(problems))
    return args


def run(
    args: argparse.Namespace, settings: Settings, console: Console
) -> tuple[list[Result], list[str]]:
    results: list[Result] = []
    skipped: list[str] = []
    served = [s for s in (REGISTRY[n] for n in args.scenarios) if isinstance(s, Scenario)]
    standalone = [
        s for s in (REGISTRY[n] for n in args.scenarios) if isinstance(s, StandaloneScenario)
    ]
    for backend in args.backends:
        console.rule(backend)
        try:
            if served:
                results += run_served(backend, served, settings, console)
            for scenario in standalone:
                console.print(f"  {scenario.name}: {scenario.description}")
                results += scenario.run(settings, backend, console)
        except BackendUnavailable as exc:
            message = f"the {backend} half was skipped: {exc}"
            console.print(f"[yellow]{message}[/yellow]")
            skipped.append(message)
    return results, skipped


def run_served(
    backend: str, scenarios: list[Scenario], settings: Settings, console: Console
) -> list[Result]:
    """One database and one `opsgate serve` for every scenario that measures over HTTP."""
    results: list[Result] = []
    with PROVISIONERS[backend]() as database:
        console.print(f"  database {database.label}: migrating and seeding")
        seeded = migrate_and_seed(database.url)
        log_path = settings.results_dir / f"server-{backend}.log"
        with serve(database.url, log_path, env={"OPSGATE_BENCH_ENDPOINTS": "1"}) as server:
            console.print(f"  opsgate serve on {server.base_url} (log: {log_path})")
            target = Target(database, seeded, server)
            for scenario in scenarios:
                console.print(f"  {scenario.name}: {scenario.description}")
                results += scenario.run(settings, target, console)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True, soft_wrap=True)
    if args.list:
        for name, scenario in REGISTRY.items():
            print(f"{name}: {scenario.description}")
        return 0
    settings = Settings(
        requests=args.requests,
        concurrency=args.concurrency,
        warmup=args.warmup,
        target_ratio=args.target,
        results_dir=args.out.parent,
        deadline=time.perf_counter() + args.max_seconds,
        audit_records=args.audit_records,
    )
    load_before = load_average()
    try:
        results, skipped = run(args, settings, console)
    except BenchError as exc:
        console.print(f"[red]benchmark aborted: {exc}[/red]")
        return EXIT_ERROR
    except KeyboardInterrupt:
        console.print("[red]benchmark interrupted[/red]")
        return 130
    load_after = load_average()
    rows = [r for r in results if isinstance(r, Comparison)]
    measurements = [r for r in results if isinstance(r, Measurement)]
    notes = [note for name in args.scenarios for note in REGISTRY[name].notes(settings)]
    busy = busy_warning(load_before)  # afterwards the load is mostly the benchmark's own
    if busy:
        notes.append(f"note: {busy}")
    write_json(
        args.out,
        settings,
        rows,
        measurements,
        skipped,
        notes,
        (load_before, load_after),
        args.scenarios,
    )
    out = Console(width=None if sys.stdout.isatty() else TABLE_WIDTH)
    if rows:
        out.print(table(rows, args.target))
    for extra in measurement_tables(measurements):
        out.print(extra)
    for line in [*skipped, *notes]:
        out.print(line, highlight=False, markup=False)
    missed = [f"{r.scenario} / {r.backend} / {r.clients} client(s): {r.ratio:.2f}" for r in rows]
    missed = [m for m, r in zip(missed, rows, strict=True) if not r.met]
    missed += [f"{m.label}: {m.ratio:.2f}" for m in measurements if not m.met]
    total = len(rows) + len(measurements)
    if total and not missed:
        out.print(f"targets met: all {total} rows meet their target")
    elif missed:
        out.print(f"target missed on {len(missed)} of {total} rows:", highlight=False)
        for line in missed:
            out.print(f"  {line}", highlight=False, markup=False)
    console.print(f"results written to {args.out}")
    if args.check and missed:
        return EXIT_TARGET_MISSED
    return 0


if __name__ == "__main__":
    sys.exit(main())

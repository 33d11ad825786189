"""`python -m bench` (`make bench`): run the benchmark scenarios on each database backend."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console

from bench import BenchError, action_path  # noqa: F401  (modules register their scenarios)
from bench.report import TABLE_WIDTH, busy_warning, load_average, table, write_json
from bench.scenarios import REGISTRY, Comparison, Settings, Target
from bench.servers import PROVISIONERS, BackendUnavailable, migrate_and_seed, serve

EXIT_ERROR = 1
EXIT_TARGET_MISSED = 3


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure what opsgate's control layer costs: governed vs bare endpoints, "
        "sequentially and with concurrent clients, on SQLite and PostgreSQL.",
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
    parser.add_argument("--out", type=Path, default=Path("bench-results/action_path.json"))
    parser.add_argument(
        "--target", type=float, default=1.3, help="the governed/bare median ratio to meet"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=600, help="time budget for the whole run"
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
    if problems:
        parser.error("; ".join(problems))
    return args


def run(
    args: argparse.Namespace, settings: Settings, console: Console
) -> tuple[list[Comparison], list[str]]:
    rows: list[Comparison] = []
    skipped: list[str] = []
    for backend in args.backends:
        console.rule(backend)
        try:
            with PROVISIONERS[backend]() as database:
                console.print(f"  database {database.label}: migrating and seeding")
                seeded = migrate_and_seed(database.url)
                log_path = settings.results_dir / f"server-{backend}.log"
                with serve(database.url, log_path, env={"OPSGATE_BENCH_ENDPOINTS": "1"}) as server:
                    console.print(f"  opsgate serve on {server.base_url} (log: {log_path})")
                    target = Target(database, seeded, server)
                    for name in args.scenarios:
                        console.print(f"  {name}: {REGISTRY[name].description}")
                        rows += REGISTRY[name].run(settings, target, console)
        except BackendUnavailable as exc:
            message = f"the {backend} half was skipped: {exc}"
            console.print(f"[yellow]{message}[/yellow]")
            skipped.append(message)
    return rows, skipped


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
    )
    load_before = load_average()
    try:
        rows, skipped = run(args, settings, console)
    except BenchError as exc:
        console.print(f"[red]benchmark aborted: {exc}[/red]")
        return EXIT_ERROR
    except KeyboardInterrupt:
        console.print("[red]benchmark interrupted[/red]")
        return 130
    load_after = load_average()
    write_json(args.out, settings, rows, skipped, (load_before, load_after))
    notes = list(skipped)
    busy = busy_warning(load_before)  # afterwards the load is mostly the benchmark's own
    if busy:
        notes.append(f"note: {busy}")
    out = Console(width=None if sys.stdout.isatty() else TABLE_WIDTH)
    out.print(table(rows, notes, args.target))
    missed = [r for r in rows if not r.met]
    if rows and not missed:
        out.print(f"target met: every governed/bare median ratio is ≤ {args.target:g}")
    elif missed:
        worst = max(missed, key=lambda r: r.ratio)
        out.print(
            f"target missed on {len(missed)} of {len(rows)} rows "
            f"(worst: {worst.backend}, {worst.clients} client(s), ratio {worst.ratio:.2f})"
        )
    console.print(f"results written to {args.out}")
    if args.check and not all(row.met for row in rows):
        return EXIT_TARGET_MISSED
    return 0


if __name__ == "__main__":
    sys.exit(main())

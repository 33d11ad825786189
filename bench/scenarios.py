"""The registry of benchmark scenarios and what they are given and give back.

A scenario measures something on one database backend. There are two kinds:

- `Scenario`: one governed path against its bare twin over HTTP. The runner provisions each
  backend once (fresh database, migrated and seeded, one `opsgate serve` with
  OPSGATE_BENCH_ENDPOINTS=1) and hands it to every selected scenario of this kind as a
  `Target`; it returns `Comparison` rows for the shared governed-vs-bare table. A scenario that
  needs something else (another server option, more data) can use `bench.servers` itself.
- `StandaloneScenario`: provisions what it needs itself (e.g. a database with a million audit
  records) and is given only the backend's name. It returns `Measurement` rows, printed in
  tables of their own.

To add one: write a module with a subclass of either, decorated with `@register`, and import
that module in `bench/__main__.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console

from bench.load import Driver, Endpoint, Stats, interleaved
from bench.servers import BenchDatabase, Seeded, Server


@dataclass(frozen=True)
class Settings:
    """The command line, as every scenario sees it."""

    requests: int
    concurrency: int
    warmup: int
    target_ratio: float
    results_dir: Path
    deadline: float  # a time.perf_counter() value no loop may pass
    audit_records: int = 1_000_000  # the size of the audit trail audit_trail measures


@dataclass(frozen=True)
class Target:
    """One backend, ready: its database, the seeded data and the running server."""

    database: BenchDatabase
    seeded: Seeded
    server: Server


@dataclass(frozen=True)
class Comparison:
    """One row of the report: governed vs bare for one scenario, backend and client count."""

    scenario: str
    backend: str
    clients: int
    governed: Stats
    bare: Stats
    target_ratio: float

    @property
    def ratio(self) -> float:
        """governed / bare, of the median latencies."""
        return self.governed.median_ms / self.bare.median_ms

    @property
    def throughput_ratio(self) -> float:
        """governed / bare, of the throughputs (1.0 means no throughput lost)."""
        return self.governed.throughput_rps / self.bare.throughput_rps

    @property
    def met(self) -> bool:
        return self.ratio <= self.target_ratio

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "backend": self.backend,
            "clients": self.clients,
            "governed": asdict(self.governed),
            "bare": asdict(self.bare),
            "ratio_median": self.ratio,
            "ratio_throughput": self.throughput_ratio,
            "target_ratio": self.target_ratio,
            "target_met": self.met,
        }


@dataclass(frozen=True)
class Measurement:
    """One row of a scenario's own table: something measured, as a ratio against its target.

    `table` names the table the row is printed in (rows with the same `table` share one, with
    the columns of its first row); `columns` are the printed cells, already formatted;
    `data` goes to the JSON file only (raw numbers, query plans, statement counts)."""

    scenario: str
    table: str
    backend: str
    columns: tuple[tuple[str, str], ...]
    ratio: float
    target_ratio: float
    at_least: bool = False  # met when ratio >= target (a throughput); else ratio <= target
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def met(self) -> bool:
        if self.at_least:
            return self.ratio >= self.target_ratio
        return self.ratio <= self.target_ratio

    @property
    def label(self) -> str:
        """For lists of rows: scenario, backend and the row's first cell."""
        first = self.columns[0][1] if self.columns else ""
        return f"{self.scenario} / {self.backend} / {first}"

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "table": self.table,
            "backend": self.backend,
            "columns": {name.replace("\n", " "): cell for name, cell in self.columns},
            "ratio": self.ratio,
            "target_ratio": self.target_ratio,
            "target": f"{'>=' if self.at_least else '<='} {self.target_ratio:g}",
            "target_met": self.met,
            "data": dict(self.data),
        }


Result = Comparison | Measurement


class Scenario(ABC):
    """Measured against the shared, seeded database and server of a backend (`Target`)."""

    name: str
    description: str

    @abstractmethod
    def run(self, settings: Settings, target: Target, console: Console) -> Sequence[Result]:
        """Measure on `target`; return one Comparison per client count."""

    def notes(self, settings: Settings) -> list[str]:
        """What a reader of the results must know about how they were obtained."""
        return []


class StandaloneScenario(ABC):
    """Provisions its own databases (and servers, if any) on a backend."""

    name: str
    description: str

    @abstractmethod
    def run(self, settings: Settings, backend: str, console: Console) -> Sequence[Result]:
        """Measure on `backend` ("sqlite" or "postgresql"). Raise
        bench.servers.BackendUnavailable when the backend cannot be used here."""

    def notes(self, settings: Settings) -> list[str]:
        return []


REGISTRY: dict[str, Scenario | StandaloneScenario] = {}


AnyScenario = TypeVar("AnyScenario", Scenario, StandaloneScenario)


def register(cls: type[AnyScenario]) -> type[AnyScenario]:
    """Class decorator: add one instance of the scenario to REGISTRY under its name."""
    if cls.name in REGISTRY:
        raise ValueError(f"two benchmark scenarios are named {cls.name}")
    REGISTRY[cls.name] = cls()
    return cls


def client_counts(concurrency: int) -> list[int]:
    """Sequential first, then `concurrency` clients (once, when it is 1)."""
    return sorted({1, concurrency})


BLOCK_PER_CLIENT = 12  # requests per client per measured block
MIN_BLOCK = 20


def compare(
    scenario: str,
    settings: Settings,
    backend: str,
    server: Server,
    governed: Endpoint,
    bare: Endpoint,
    console: Console,
) -> list[Comparison]:
    """Governed vs bare on `server`: warm up each, then measure them interleaved (ABBA
    blocks), sequentially and with `settings.concurrency` clients; one row per client count."""
    rows = []
    for clients in client_counts(settings.concurrency):
        with Driver(server.base_url, clients) as driver:
            for endpoint in (governed, bare):
                driver.run(endpoint, settings.warmup, deadline=settings.deadline)
            server.check_alive()
            stats = interleaved(
                driver,
                (governed, bare),
                settings.requests,
                max(MIN_BLOCK, BLOCK_PER_CLIENT * clients),
                deadline=settings.deadline,
                cpu_probe=server.cpu_seconds,
            )
        server.check_alive()
        row = Comparison(
            scenario=scenario,
            backend=backend,
            clients=clients,
            governed=stats[governed.name],
            bare=stats[bare.name],
            target_ratio=settings.target_ratio,
        )
        console.print(
            f"  {backend}, {clients} client(s): median governed {row.governed.median_ms:.2f} ms, "
            f"bare {row.bare.median_ms:.2f} ms, ratio {row.ratio:.2f}"
        )
        rows.append(row)
    return rows

"""The registry of benchmark scenarios and what they are given and give back.

A scenario measures one governed path against its bare twin on one database backend. To add
one: write a module with a `Scenario` subclass decorated with `@register`, and import that
module in `bench/__main__.py`. The runner provisions each backend once (fresh database,
migrated and seeded, one `opsgate serve` with OPSGATE_BENCH_ENDPOINTS=1) and hands it to every
selected scenario as a `Target`; a scenario that needs something else (another server option,
more data) can use `bench.servers` itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.load import Stats
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


class Scenario(ABC):
    name: str
    description: str

    @abstractmethod
    def run(self, settings: Settings, target: Target, console: Console) -> list[Comparison]:
        """Measure on `target`; return one Comparison per client count."""


REGISTRY: dict[str, Scenario] = {}


def register(cls: type[Scenario]) -> type[Scenario]:
    """Class decorator: add one instance of the scenario to REGISTRY under its name."""
    if cls.name in REGISTRY:
        raise ValueError(f"two benchmark scenarios are named {cls.name}")
    REGISTRY[cls.name] = cls()
    return cls


def client_counts(concurrency: int) -> list[int]:
    """Sequential first, then `concurrency` clients (once, when it is 1)."""
    return sorted({1, concurrency})

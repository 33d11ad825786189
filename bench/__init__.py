"""opsgate benchmarks (`make bench`, `python -m bench`).

Each benchmark is a scenario in `bench.scenarios.REGISTRY`; `bench.servers` provides the
throwaway databases and `opsgate serve` processes they run against, `bench.load` the HTTP
load driver and the statistics, and `bench.report` the table and the JSON file.
"""

from __future__ import annotations


class BenchError(RuntimeError):
    """The benchmark cannot produce a trustworthy number; the message says why."""

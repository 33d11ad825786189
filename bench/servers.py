"""What a benchmark talks to: throwaway databases and `opsgate serve` processes.

Everything is set up through the project's own CLI (`opsgate db upgrade`, `opsgate demo seed`,
`opsgate tokens create`, `opsgate serve`) with OPSGATE_DATABASE_URL pointing at a database that
exists only for the run, so a benchmark measures what an operator would deploy.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
from sqlalchemy.engine import make_url

from bench import BenchError

LOCALHOST = "127.0.0.1"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
POSTGRES_URL_ENV = "OPSGATE_BENCH_POSTGRES_URL"
POSTGRES_HOW_TO_ENABLE = (
    f"start PostgreSQL, or set {POSTGRES_URL_ENV}=postgresql://USER@HOST:PORT/postgres "
    "(a role that may CREATE DATABASE), to run the PostgreSQL half"
)
CLI_TIMEOUT_S = 180.0
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class BackendUnavailable(Exception):
    """A database backend cannot be used on this machine; the message says how to enable it."""


@dataclass(frozen=True)
class BenchDatabase:
    """A database created for this run only."""

    backend: str  # "sqlite" or "postgresql"
    url: str  # for OPSGATE_DATABASE_URL
    label: str  # for humans: no password


# --- databases ---------------------------------------------------------------------------


@contextmanager
def sqlite_database() -> Iterator[BenchDatabase]:
    """A fresh SQLite file in a temporary directory, removed afterwards (WAL files too)."""
    directory = Path(tempfile.mkdtemp(prefix="opsgate-bench-"))
    path = directory / "opsgate.db"
    try:
        yield BenchDatabase("sqlite", f"sqlite:///{path}", str(path))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def postgres_admin_url() -> str:
    return os.environ.get(POSTGRES_URL_ENV) or DEFAULT_POSTGRES_URL


def _libpq(url: str) -> str:
    """A URL psycopg accepts (no SQLAlchemy `+driver` suffix)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def postgresql_database(admin_url: str | None = None) -> Iterator[BenchDatabase]:
    """`CREATE DATABASE opsgate_bench_<random>`, dropped WITH (FORCE) afterwards.

    Raises BackendUnavailable (before creating anything) when the server cannot be reached.
    """
    admin = admin_url or postgres_admin_url()
    shown = make_url(admin).render_as_string(hide_password=True)
    name = f"opsgate_bench_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(_libpq(admin), autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    except psycopg.Error as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise BackendUnavailable(
            f"PostgreSQL at {shown} is unusable ({type(exc).__name__}: {first_line}); "
            f"{POSTGRES_HOW_TO_ENABLE}"
        ) from exc
    url = make_url(admin).set(database=name)
    try:
        yield BenchDatabase(
            "postgresql",
            url.render_as_string(hide_password=False),
            url.render_as_string(hide_password=True),
        )
    finally:
        with psycopg.connect(_libpq(admin), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


PROVISIONERS: dict[str, Callable[[], AbstractContextManager[BenchDatabase]]] = {
    "sqlite": sqlite_database,
    "postgresql": postgresql_database,
}


# --- the opsgate CLI ---------------------------------------------------------------------


def opsgate_command() -> list[str]:
    """The `opsgate` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "opsgate"
    if script.exists():
        return [str(script)]
    found = shutil.which("opsgate")
    return [found] if found else [sys.executable, "-m", "opsgate.cli"]


def opsgate_env(database_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "OPSGATE_DATABASE_URL": database_url, **(extra or {})}


def run_cli(database_url: str, *args: str) -> str:
    """Run `opsgate ARGS` against `database_url`; return its standard output."""
    command = [*opsgate_command(), *args]
    try:
        done = subprocess.run(
            command,
            env=opsgate_env(database_url),
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        message = f"`opsgate {' '.join(args)}` took more than {CLI_TIMEOUT_S:.0f} s"
        raise BenchError(message) from exc
    if done.returncode != 0:
        raise BenchError(
            f"`opsgate {' '.join(args)}` failed with exit code {done.returncode}; "
            "its standard error ends with:\n" + "\n".join(done.stderr.strip().splitlines()[-12:])
        )
    return done.stdout


@dataclass(frozen=True)
class Seeded:
    """What a migrated, demo-seeded database offers a benchmark."""

    customer_ids: tuple[str, ...]
    account_ids: tuple[str, ...]
    tokens: Mapping[str, str]  # username -> bearer secret


def migrate_and_seed(database_url: str, usernames: tuple[str, ...] = ("alice",)) -> Seeded:
    """`opsgate db upgrade`, `opsgate demo seed --json` and a token per username."""
    run_cli(database_url, "db", "upgrade")
    out = run_cli(database_url, "demo", "seed", "--json")
    try:
        line = next(ln for ln in reversed(out.splitlines()) if ln.startswith("{"))
        summary = json.loads(line)
        customers = tuple(str(c["id"]) for c in summary["customers"])
        accounts = tuple(str(a["id"]) for a in summary["accounts"])
    except (StopIteration, ValueError, KeyError, TypeError) as exc:
        message = f"`opsgate demo seed --json` printed no usable JSON:\n{out[-500:]}"
        raise BenchError(message) from exc
    if not customers:
        raise BenchError("`opsgate demo seed --json` created no customers")
    issued = {}
    for username in usernames:
        lines = run_cli(database_url, "tokens", "create", username).strip().splitlines()
        if not lines:
            raise BenchError(f"`opsgate tokens create {username}` printed no token")
        issued[username] = lines[-1].strip()
    return Seeded(customers, accounts, issued)


# --- servers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` (all its threads), from /proc; else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Server:
    """A running `opsgate serve` on 127.0.0.1."""

    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds the server process has used (Linux /proc), or None."""
        return process_cpu_seconds(self.process.pid)

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(
                f"the server exited with code {self.process.returncode}; "
                f"its log ({self.log_path}) ends with:\n{self.log_tail()}"
            )

    def stop(self) -> None:
        """Terminate (then kill) the server process; only ever this process, by its handle."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_S)


@contextmanager
def serve(
    database_url: str,
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    args: tuple[str, ...] = (),
    health_path: str = "/api/v1/healthz",
) -> Iterator[Server]:
    """Start `opsgate serve --port <free port>` and wait until `health_path` answers 200.

    Standard output and error go to `log_path`. The process is stopped on leaving the block,
    however it is left.
    """
    port = free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*opsgate_command(), "serve", "--host", LOCALHOST, "--port", str(port), *args],
            env=opsgate_env(database_url, env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, f"http://{LOCALHOST}:{port}", log_path)
    try:
        _wait_healthy(server, health_path)
        yield server
    finally:
        server.stop()


def _wait_healthy(server: Server, health_path: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with httpx.Client(base_url=server.base_url, trust_env=False, timeout=2.0) as client:
        while time.monotonic() < deadline:
            server.check_alive()
            try:
                if client.get(health_path).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise BenchError(
        f"the server did not answer {health_path} within {STARTUP_TIMEOUT_S:.0f} s; "
        f"its log ({server.log_path}) ends with:\n{server.log_tail()}"
    )

"""Real `opsgate serve` processes for tests that need more than one server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log_lines(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_server(database_url: str, log_path: Path, **env: str) -> Server:
    """Start `opsgate serve` on a free port and wait (at most 30 s) until it answers."""
    port = free_port()
    environment = os.environ | {"OPSGATE_DATABASE_URL": database_url} | env
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "opsgate.cli", "serve", "--port", str(port)],
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{server.base_url}/api/v1/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not start in time:\n{log_path.read_text()}")


@contextmanager
def two_servers_on(database_url: str, log_dir: Path) -> Iterator[tuple[Server, Server]]:
    """Two `opsgate serve` processes on one database, both stopped afterwards."""
    first = start_server(database_url, log_dir / "a.log")
    try:
        second = start_server(database_url, log_dir / "b.log")
    except BaseException:
        first.stop()
        raise
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()

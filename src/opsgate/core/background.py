"""Work an app process does in the background (webhook delivery, reconciliation): one daemon
thread each, started with the app and stopped with it."""

from __future__ import annotations

import threading


class BackgroundLoop:
    """Runs `work(stop)` on a daemon thread until `stop` is set. Subclasses define `work`,
    which must return soon after `stop` is set (wait on it rather than sleeping)."""

    name = "opsgate-background"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.work, args=(self._stop,), daemon=True)
        self._thread.name = self.name

    def work(self, stop: threading.Event) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to stop after the unit of work in flight, and wait up to `timeout`."""
        self._stop.set()
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

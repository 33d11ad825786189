"""A small ticket service, as a team might run one: it owns `ticket` records opsgate has no
table for, and speaks the backend contract of docs/backends.md (signed v2) over real HTTP.

Started on a free port in a thread; `mode` turns it into an attacker or a broken service for
one test (`unsigned`, `forged`, `reflect`, `replay`, `slow`).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opsgate.core.canonical import canonical_json
from opsgate.core.integrations import signing

SECRET = "ticket-service-secret-0123456789abcdef"


@dataclass
class TicketService:
    secret: str = SECRET
    tickets: dict[str, dict[str, Any]] = field(default_factory=dict)
    mode: str = "normal"
    seen: list[dict[str, Any]] = field(default_factory=list)
    done: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    captured: tuple[int, bytes, dict[str, str]] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""
    server: ThreadingHTTPServer | None = None
    # Called while a target read is being answered (what opsgate holds meanwhile).
    on_read: Callable[[], None] | None = None

    def stop(self) -> None:
        """The service goes down: nothing listens on its port any more."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def change(self, ticket_id: str, **values: Any) -> None:
        """Someone changes the record in the service itself: its version moves on."""
        with self.lock:
            record = self.tickets[ticket_id]
            record.update(values)
            record["version"] += 1


def _handler(service: TicketService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._serve(b"")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self._serve(self.rfile.read(length))

        def _serve(self, body: bytes) -> None:
            headers = {k: v for k, v in self.headers.items()}
            service.seen.append({"method": self.command, "path": self.path, "headers": headers,
                                 "body": json.loads(body) if body else None})  # fmt: skip
            try:
                verified = signing.verify_request(
                    [service.secret], self.command, self.path, body, self.headers, time.time()
                )
            except signing.SignatureError as exc:
                self._send(401, {"code": "bad_signature", "detail": str(exc)}, None, headers)
                return
            status, answer = self._answer(body)
            self._send(status, answer, verified.signature, headers)

        def _answer(self, body: bytes) -> tuple[int, dict[str, Any]]:
            url = urllib.parse.urlsplit(self.path)
            parts = url.path.strip("/").split("/")
            if parts[:2] == ["v1", "targets"] and service.on_read is not None:
                service.on_read()
            with service.lock:
                if parts[:3] == ["v1", "targets", "ticket"] and len(parts) == 4:
                    record = service.tickets.get(urllib.parse.unquote(parts[3]))
                    if record is None:
                        return 404, {"code": "not_found", "detail": "no such ticket"}
                    state = dict(record)
                    if service.mode == "race":  # someone changes it right after this read
                        record["version"] += 1
                    return 200, {"state": state}
                if parts == ["v1", "search", "ticket"]:
                    query = urllib.parse.parse_qs(url.query)
                    term = query.get("q", [""])[0].lower()
                    limit = int(query.get("limit", ["10"])[0])
                    items = [
                        {"id": tid, "label": rec["subject"],
                         "fields": {"status": rec["status"], "email": rec["email"]}}
                        for tid, rec in sorted(service.tickets.items())
                        if term in rec["subject"].lower()
                    ]  # fmt: skip
                    return 200, {"items": items[:limit]}
                if parts[:2] == ["v1", "actions"] and self.command == "POST":
                    return self._act(parts[2], json.loads(body))
            return 404, {"code": "not_found", "detail": "no such route"}

        def _act(self, action: str, call: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            key = self.headers.get("Idempotency-Key", "")
            if key in service.done:
                status, stored = service.done[key]
                return status, json.loads(stored)
            ticket_id = call["target"].partition(":")[2]
            record = service.tickets.get(ticket_id)
            if action != "ticket.close" or record is None:
                return 422, {"code": "unknown", "detail": "nothing to do"}
            if call.get("target_version") != record["version"]:
                return 409, {"code": "version_conflict", "detail": "the ticket changed"}
            before = {"status": record["status"], "version": record["version"]}
            record.update(status="closed", resolution=call["payload"]["resolution"])
            record["version"] += 1
            after = {"status": record["status"], "version": record["version"]}
            answer = {"result": {"ticket": ticket_id, "status": "closed"},
                      "before": before, "after": after}  # fmt: skip
            service.done[key] = (200, canonical_json(answer).encode())
            return 200, answer

        def _send(
            self,
            status: int,
            answer: dict[str, Any],
            request_signature: str | None,
            request_headers: dict[str, str],
        ) -> None:
            content = canonical_json(answer).encode()
            headers: dict[str, str] = {}
            if request_signature is not None:
                headers = signing.sign_response(
                    service.secret, request_signature, status, content, time.time()
                )
            mode = service.mode
            if mode == "unsigned":
                headers = {}
            elif mode == "forged" and request_signature is not None:
                headers = signing.sign_response(
                    "another-secret-0123456789abcdefghijk", request_signature, status, content,
                    time.time(),
                )  # fmt: skip
            elif mode == "reflect":
                # Echo the request's own signature headers: a request's MAC is no answer's.
                headers = {k: v for k, v in request_headers.items() if k.startswith("X-Opsgate")}
            elif mode == "replay" and service.captured is not None:
                status, content, headers = service.captured
            elif mode == "capture":
                service.captured = (status, content, headers)
            elif mode == "slow":
                time.sleep(1.5)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(content)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(content)

    return Handler


@contextmanager
def running(service: TicketService) -> Iterator[TicketService]:
    """Serve `service` on a free loopback port until the block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(service))
    service.url = f"http://127.0.0.1:{server.server_address[1]}"
    service.server = server
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        service.stop()
        thread.join(5)

"""Signed anchors of the audit chain's head, kept where the database's roles cannot write
(DESIGN.md invariant 11).

An anchor is the head (`seq`, record `hash`) with the time it was taken and the ID of the key
that signed it, signed with Ed25519: whoever verifies needs only the public key, never a
secret. Anchors are appended, one JSON line each and fsynced, to `anchors.jsonl` in a
directory on the app host (OPSGATE_AUDIT_ANCHOR_DIR), and sent as `audit.anchor` webhook
events to an external log. Someone who rewrites the chain in the database, even as its owner
re-chaining every hash, cannot change what an anchor already says: `audit verify` checks the
chain against the latest one (core/audit/anchoring.py writes and checks them).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from opsgate.core.audit.chain import Checkpoint
from opsgate.core.canonical import canonical_json

ANCHOR_FILE = "anchors.jsonl"
VERSION = 1
# Domain separation: an anchor signature can never be mistaken for any other signed text.
_LABEL = b"opsgate-audit-anchor-v1\n"
_TAIL_BYTES = 64 * 1024


class AnchorError(Exception):
    """An anchor cannot be written or trusted (bad key file, unreadable or forged line)."""


def key_id(public: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: `ed25519:` and 16 hex of its SHA-256."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def public_key_text(public: Ed25519PublicKey) -> str:
    """The public key as operators copy it between hosts (base64 of the 32 raw bytes)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def parse_public_keys(text: str) -> dict[str, Ed25519PublicKey]:
    """Public keys given as base64 text, separated by commas or whitespace, by key ID;
    raise AnchorError naming the first that is not one."""
    keys: dict[str, Ed25519PublicKey] = {}
    for item in text.replace(",", " ").split():
        try:
            public = Ed25519PublicKey.from_public_bytes(base64.b64decode(item, validate=True))
        except ValueError as exc:
            raise AnchorError(f"{item!r} is not a base64 Ed25519 public key") from exc
        keys[key_id(public)] = public
    return keys


@dataclass(frozen=True)
class Anchor:
    """One signed head. `anchored_at` is when the head was read, in UTC."""

    seq: int
    hash: str
    anchored_at: datetime
    key_id: str
    signature: str  # base64 Ed25519 over `message()`

    @property
    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self.seq, self.hash)

    def signed_fields(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "seq": self.seq,
            "hash": self.hash,
            "anchored_at": self.anchored_at.isoformat(timespec="microseconds"),
            "key_id": self.key_id,
        }

    def message(self) -> bytes:
        return _LABEL + canonical_json(self.signed_fields()).encode()

    def as_dict(self) -> dict[str, Any]:
        return self.signed_fields() | {"signature": self.signature}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Anchor:
        """Read an anchor line's fields; raise AnchorError when any is missing or malformed."""
        try:
            if data["v"] != VERSION:
                raise AnchorError(f"anchor version {data['v']!r} is not {VERSION}")
            point = Checkpoint.parse(f"{data['seq']}:{data['hash']}")
            return cls(
                point.seq,
                point.hash,
                datetime.fromisoformat(data["anchored_at"]),
                str(data["key_id"]),
                str(data["signature"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AnchorError(f"not an anchor: {exc}") from exc

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash} ({self.anchored_at.isoformat(timespec='seconds')})"


class AnchorKey:
    """The private key that signs anchors, loaded from (or created once in) a PEM file."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key()
        self.key_id = key_id(self.public)

    @classmethod
    def load(cls, path: Path, *, create: bool = False) -> AnchorKey:
        """The key in `path` (PKCS#8 PEM, unencrypted). With `create`, a missing file is
        generated first, readable only by its owner; two processes racing keep one key."""
        if not path.exists() and create:
            _create_key_file(path)
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise AnchorError(f"cannot read the anchor key {path}: {exc}") from exc
        if not isinstance(private, Ed25519PrivateKey):
            raise AnchorError(f"{path} is not an Ed25519 private key")
        return cls(private)

    def sign(self, point: Checkpoint, at: datetime) -> Anchor:
        """The anchor of `point`, taken at `at`, signed with this key."""
        unsigned = Anchor(point.seq, point.hash, at, self.key_id, "")
        signature = base64.b64encode(self._private.sign(unsigned.message())).decode()
        return Anchor(point.seq, point.hash, at, self.key_id, signature)


def _create_key_file(path: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}.draft")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(draft, path)  # fails when another process won the race: keep its key
    except FileExistsError:
        pass
    finally:
        draft.unlink()


def signature_problem(anchor: Anchor, trusted: Mapping[str, Ed25519PublicKey]) -> str | None:
    """None when a trusted key signed `anchor`; else what is wrong with it."""
    public = trusted.get(anchor.key_id)
    if public is None:
        return f"the anchor is signed by {anchor.key_id}, which is not a trusted anchor key"
    try:
        public.verify(base64.b64decode(anchor.signature, validate=True), anchor.message())
    except (InvalidSignature, ValueError):
        return f"the anchor's signature does not verify with {anchor.key_id}"
    return None


class AnchorSink:
    """`anchors.jsonl` in `directory`: appended under an exclusive lock, fsynced, never
    rewritten. Several processes on the host may append at once."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / ANCHOR_FILE

    def append(self, anchor: Anchor, *, unless_last: bool = False) -> bool:
        """Append one line and fsync it (and the directory, when the file is new). With
        `unless_last`, write nothing when the last line already anchors the same head
        (another process was first). Returns whether a line was written."""
        created = not self.path.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(anchor.as_dict(), sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            last = self.latest() if unless_last else None
            if last is not None and last.checkpoint == anchor.checkpoint:
                return False
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)  # closing releases the lock
        if created:
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return True

    def latest(self) -> Anchor | None:
        """The last anchor written, or None when there is none yet; raise AnchorError
        when the last line is not an anchor (the file was edited)."""
        lines = list(self._tail())
        if not lines:
            return None
        try:
            return Anchor.from_dict(json.loads(lines[-1]))
        except json.JSONDecodeError as exc:
            raise AnchorError(f"the last line of {self.path} is not JSON") from exc

    def all(self) -> list[Anchor]:
        """Every anchor, oldest first (for audits of the file itself)."""
        if not self.path.exists():
            return []
        with self.path.open(encoding="utf-8") as handle:
            return [Anchor.from_dict(json.loads(line)) for line in handle if line.strip()]

    def _tail(self) -> Iterable[str]:
        try:
            with self.path.open("rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - _TAIL_BYTES))
                chunk = handle.read()
        except FileNotFoundError:
            return []
        lines = chunk.decode("utf-8", errors="replace").splitlines()
        if size > _TAIL_BYTES:
            lines = lines[1:]  # the first may be cut
        return [line for line in lines if line.strip()]

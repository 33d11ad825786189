"""An archive file can be verified on its own, and tampering with it is detected."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from opsgate.core.audit.files import archive, verify_archive
from opsgate.core.clock import FrozenClock
from opsgate.core.identity.actors import Actor, Origin
from opsgate.web.services import Services
from tests.conftest import World


def test_archive_file_verifies_and_detects_edits(
    services: Services, world: World, clock: FrozenClock, tmp_path: Path
) -> None:
    clerk = Actor(id=world.user_ids["alice"], name="alice", roles=frozenset({"support_agent"}))
    for n in range(4):
        services.gateway.submit(
            clerk,
            "customer.add_note",
            {
                "target": f"customer:{world.customer(n)}",
                "payload": {"text": f"n{n}"},
                "reason": "card 4111 1111 1111 1111",
            },
            Origin(f"arc-{n}"),
        )
    clock.advance(timedelta(days=401))
    done = archive(
        services.db,
        before=clock.now() - timedelta(days=400),
        directory=tmp_path,
        actor=Actor(id="cli:ops", name="ops", roles=frozenset()),
        origin=Origin("arc-run"),
        policy_version=services.policy.version,
        now=clock.now(),
    )
    [path] = list(tmp_path.glob("*.jsonl"))
    checked = verify_archive(path)
    assert checked.ok, checked
    assert (checked.records, checked.through_seq, checked.through_hash) == (
        done.records,
        done.through_seq,
        done.through_hash,
    )

    lines = path.read_text().splitlines()
    record = json.loads(lines[2])
    record["reason"] = "nothing to see"
    lines[2] = json.dumps(record, sort_keys=True)
    path.write_text("\n".join(lines) + "\n")
    broken = verify_archive(path)
    assert not broken.ok
    assert broken.problem == f"record {record['seq']} was altered"

    lines.pop(3)  # drop a record too
    path.write_text("\n".join(lines) + "\n")
    assert not verify_archive(path).ok

"""The container image definition and the compose trial, checked without Docker (there is none
on the build machines): the Dockerfile's runtime stage, the entrypoint's secret files, the trial
secrets script, and compose.yaml's roles and secrets.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from opsgate.core.audit.anchors import AnchorKey

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined."""
    joined = text.replace("\\\n", " ")
    found = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def _runtime_stage() -> list[tuple[str, str]]:
    instructions = _instructions(DOCKERFILE)
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    assert len(starts) >= 2, "multi-stage: a build stage and a runtime stage"
    return instructions[starts[-1] :]


def test_the_runtime_stage_runs_as_a_user_that_is_not_root() -> None:
    users = [args for word, args in _runtime_stage() if word == "USER"]
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_the_runtime_stage_has_no_build_tools_or_source_tree() -> None:
    stage = _runtime_stage()
    copies = [args for word, args in stage if word == "COPY"]
    assert not [c for c in copies if " src" in f" {c}" or "pyproject" in c]
    assert not [args for word, args in stage if word == "RUN" and "build" in args.split()]


def test_the_health_check_asks_healthz_with_python() -> None:
    [check] = [args for word, args in _runtime_stage() if word == "HEALTHCHECK"]
    assert '"python"' in check
    assert "curl" not in check
    assert "/api/v1/healthz" in check


def test_the_image_serves_and_never_migrates_at_start_up() -> None:
    stage = _runtime_stage()
    [entrypoint] = [args for word, args in stage if word == "ENTRYPOINT"]
    [command] = [args for word, args in stage if word == "CMD"]
    assert command.startswith('["serve"')
    assert "upgrade" not in entrypoint + command
    assert "upgrade" not in (ROOT / "docker" / "entrypoint.sh").read_text(encoding="utf-8")
    env = " ".join(args for word, args in stage if word == "ENV")
    assert "OPSGATE_ENVIRONMENT=production" in env


def _entrypoint(secrets: Path, tmp_path: Path, **env: str) -> dict[str, str]:
    """Run docker/entrypoint.sh with an `opsgate` on PATH that prints its environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "opsgate"
    fake.write_text('#!/bin/sh\necho "ARGS=$*"\nenv\n', encoding="utf-8")
    fake.chmod(0o755)
    base = {"PATH": f"{bin_dir}:/usr/bin:/bin", "OPSGATE_SECRETS_DIR": str(secrets)}
    done = subprocess.run(
        ["sh", str(ROOT / "docker" / "entrypoint.sh"), "serve", "--port", "8000"],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def test_the_entrypoint_reads_settings_from_secret_files(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "opsgate_secret_key").write_text("k" * 40 + "\n", encoding="utf-8")
    (secrets / "opsgate_database_url").write_text("postgresql://a:b@db/x\n", encoding="utf-8")
    (secrets / "opsgate_bad-name").write_text("ignored\n", encoding="utf-8")
    (secrets / "anchor_key").write_text("not a setting\n", encoding="utf-8")
    seen = _entrypoint(secrets, tmp_path, OPSGATE_DATABASE_URL="sqlite:///set.db")
    assert seen["ARGS"] == "serve --port 8000"
    assert seen["OPSGATE_SECRET_KEY"] == "k" * 40  # no trailing newline
    assert seen["OPSGATE_DATABASE_URL"] == "sqlite:///set.db"  # the environment wins
    assert not [name for name in seen if name.startswith("OPSGATE_BAD") or "ANCHOR" in name]


def _compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")  # PyYAML, when some installed package brings it
    loaded = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def test_compose_migrates_as_the_owner_in_its_own_step_and_serves_as_the_app_role() -> None:
    compose = _compose()
    services = compose["services"]
    migrate, opsgate = services["migrate"], services["opsgate"]
    assert migrate["command"] == ["db", "upgrade"]
    assert migrate["profiles"] == ["migrate"]  # `docker compose run --rm migrate`, not `up`
    assert "command" not in opsgate  # the image's CMD: serve
    assert set(migrate["secrets"]) == {"opsgate_migration_database_url", "opsgate_database_url"}
    assert "opsgate_migration_database_url" not in opsgate["secrets"]
    assert {"opsgate_database_url", "opsgate_secret_key", "anchor_key"} <= set(opsgate["secrets"])
    assert opsgate["environment"]["OPSGATE_ENVIRONMENT"] == "production"
    used = {s for service in services.values() for s in service.get("secrets", [])}
    assert used == set(compose["secrets"]), "every secret used is declared, and only those"
    assert services["db"]["image"].startswith("postgres:")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_the_trial_secrets_script_writes_every_secret_compose_needs(tmp_path: Path) -> None:
    script = ROOT / "docker" / "trial-secrets.sh"
    env = {"PATH": os.environ["PATH"]}
    subprocess.run(["sh", str(script)], cwd=tmp_path, env=env, check=True, capture_output=True)
    secrets = tmp_path / "secrets"
    declared = _compose()["secrets"]
    for name, spec in declared.items():
        assert (tmp_path / spec["file"]).read_text(encoding="utf-8").strip(), name
    # The anchor key is one opsgate reads (the openssl command docs/operations.md gives).
    AnchorKey.load(secrets / "anchor_key")
    owner = make_url((secrets / "opsgate_migration_database_url").read_text().strip())
    app = make_url((secrets / "opsgate_database_url").read_text().strip())
    assert (owner.username, app.username) == ("opsgate_owner", "opsgate_app")
    assert owner.password == (secrets / "opsgate_owner_password").read_text().strip()
    assert len((secrets / "opsgate_secret_key").read_text().strip()) >= 32
    # Re-running keeps what is there (a database already initialised with those passwords).
    before = {p.name: p.read_bytes() for p in secrets.iterdir()}
    subprocess.run(["sh", str(script)], cwd=tmp_path, env=env, check=True, capture_output=True)
    assert {p.name: p.read_bytes() for p in secrets.iterdir()} == before


def test_the_build_context_leaves_out_local_state_and_secrets() -> None:
    ignored = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    for entry in ("secrets", ".venv", ".git", "*.db", ".opsgate-secret-key", ".opsgate-anchor-key"):
        assert entry in ignored, entry
    # What the build stage copies is not ignored.
    for needed in ("src", "demo", "pyproject.toml", "README.md"):
        assert needed not in ignored

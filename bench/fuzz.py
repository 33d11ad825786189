"""`python -m bench.fuzz` (`make fuzz`): schemathesis against the API's own OpenAPI schema, on
each database, looking for server errors.

Per backend: a throwaway database, migrated and demo-seeded through the CLI, one
`opsgate serve` on it, and a token of an ops lead (the role that reaches the most operations).
Schemathesis then generates requests from `/api/v1/openapi.json` with `--checks
not_a_server_error`: any 5xx is a failure. The exit status is non-zero when any backend found
one; the run's schemathesis reports land in test-output/fuzz/<backend>/.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.servers import PROVISIONERS, BackendUnavailable, migrate_and_seed, serve

OUTPUT = Path("test-output/fuzz")
USERNAME = "olga"  # ops_lead: actions, approvals, audit, search
_CASES = re.compile(r"Test cases:\s*([\d,]+) generated")


def schemathesis_command() -> list[str]:
    script = Path(sys.executable).parent / "schemathesis"
    if script.exists():
        return [str(script)]
    return [shutil.which("schemathesis") or "schemathesis"]


@dataclass(frozen=True)
class FuzzResult:
    ok: bool  # no server error found
    cases: int  # test cases generated
    output: str  # schemathesis's own report


def run_schemathesis(
    base_url: str, token: str, out: Path, *, examples: int, seed: int | None, workers: int
) -> FuzzResult:
    """Run schemathesis against the server at `base_url` with `token`; reports go to `out`."""
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    command = [
        *schemathesis_command(),
        "run",
        f"{base_url}/api/v1/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(examples),
        "--workers",
        str(workers),
        "--header",
        f"Authorization: Bearer {token}",
        "--continue-on-failure",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(out),
        *(["--seed", str(seed)] if seed is not None else []),
    ]
    # Run in `out`: schemathesis keeps its own cache (`.schemathesis/`) in the working directory.
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=out)
    output = done.stdout + done.stderr
    (out / "schemathesis.txt").write_text(output, encoding="utf-8")
    found = _CASES.search(done.stdout)
    cases = int(found.group(1).replace(",", "")) if found else 0
    return FuzzResult(done.returncode == 0, cases, output)


def fuzz(backend: str, examples: int, seed: int | None, workers: int) -> FuzzResult:
    """Fuzz one backend: a throwaway database, one server, one ops lead's token."""
    out = OUTPUT / backend
    out.mkdir(parents=True, exist_ok=True)
    with PROVISIONERS[backend]() as database:
        seeded = migrate_and_seed(database.url, (USERNAME,))
        env = {"OPSGATE_RECONCILE_INTERVAL_SECONDS": "0"}
        with serve(database.url, out / "server.log", env=env) as server:
            result = run_schemathesis(
                server.base_url,
                seeded.tokens[USERNAME],
                out,
                examples=examples,
                seed=seed,
                workers=workers,
            )
            server.check_alive()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backends", default="sqlite,postgresql")
    # Per operation and phase: ~1,500 gives over 20,000 cases per backend.
    parser.add_argument("--max-examples", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    failed = False
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        try:
            result = fuzz(backend, args.max_examples, args.seed, args.workers)
        except BackendUnavailable as exc:
            print(f"{backend}: skipped: {exc}")
            continue
        verdict = "no server error" if result.ok else "SERVER ERRORS (see the report)"
        print(f"{backend}: {result.cases} test cases, {verdict}; output in {OUTPUT / backend}")
        failed = failed or not result.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

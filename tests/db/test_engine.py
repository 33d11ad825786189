"""Engines and column types: SQLite settings in force, UTC datetimes, queued writers."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError, StatementError

from opsgate.db.base import UTCDateTime
from opsgate.db.engine import SQLITE_BUSY_TIMEOUT_MS, Database, normalise_url
from opsgate.settings import Settings
from opsgate.web.services import Services
from opsgate_demo.models import Customer, Note
from tests.conftest import TestDatabase, World


@pytest.fixture
def sqlite_db(test_db: TestDatabase, db: Database) -> Database:
    if test_db.backend != "sqlite":
        pytest.skip("SQLite-specific behaviour")
    return db


def pragma(db: Database, name: str, *, write: bool) -> object:
    with db.writing() if write else db.reading() as session:
        return session.connection().exec_driver_sql(f"PRAGMA {name}").scalar()


@pytest.mark.parametrize("write", [False, True], ids=["reading", "writing"])
def test_sqlite_pragmas_are_in_force_on_every_session(sqlite_db: Database, write: bool) -> None:
    assert pragma(sqlite_db, "journal_mode", write=write) == "wal"
    assert pragma(sqlite_db, "foreign_keys", write=write) == 1
    timeout = pragma(sqlite_db, "busy_timeout", write=write)
    assert isinstance(timeout, int) and timeout > 0
    assert timeout == SQLITE_BUSY_TIMEOUT_MS


def test_foreign_keys_are_enforced(db: Database, world: World) -> None:
    with db.writing() as session:
        session.add(
            Note(
                id="not_orphan",
                customer_id="cus_missing",
                author_id=world.user_ids["alice"],
                author_name="Alice",
                text="orphan",
                created_at=datetime.now(UTC),
            )
        )
        with pytest.raises(IntegrityError):
            session.flush()
        session.rollback()
    with db.reading() as session:
        assert session.get(Note, "not_orphan") is None


def test_postgresql_urls_use_psycopg_3() -> None:
    assert normalise_url("postgresql://u@h:5432/d").startswith("postgresql+psycopg://")
    assert normalise_url("postgres://u@h/d").startswith("postgresql+psycopg://")
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"


# --- UTCDateTime -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dialect",
    [sqlite.dialect(), postgresql.dialect()],  # type: ignore[no-untyped-call]
    ids=["sqlite", "postgresql"],
)
def test_utc_datetime_refuses_a_naive_datetime_before_any_database(dialect: Dialect) -> None:
    naive = datetime(2024, 1, 1, 12, 0)  # naive on purpose
    with pytest.raises(ValueError, match="naive"):
        UTCDateTime().process_bind_param(naive, dialect)
    aware = naive.replace(tzinfo=timezone(timedelta(hours=-3)))
    bound = UTCDateTime().process_bind_param(aware, dialect)
    assert bound is not None
    assert bound.replace(tzinfo=bound.tzinfo or UTC) == aware


def test_a_naive_datetime_is_refused_and_nothing_is_written(db: Database, world: World) -> None:
    ident = world.customer(60)
    with db.writing() as session:
        row = session.get(Customer, ident)
        assert row is not None
        before = row.kyc_checked_at
        row.kyc_checked_at = datetime(2024, 1, 1, 12, 0)  # naive on purpose
        with pytest.raises(StatementError) as caught:
            session.flush()
        assert isinstance(caught.value.orig, ValueError)
        assert "naive datetime" in str(caught.value.orig)
        session.rollback()
    with db.reading() as session:
        assert session.get(Customer, ident).kyc_checked_at == before  # type: ignore[union-attr]


OFFSETS = st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)),
    st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59),
)
AWARE = st.datetimes(
    min_value=datetime(1970, 1, 2),  # hypothesis bounds are naive
    max_value=datetime(2200, 12, 30),
    timezones=st.one_of(st.just(UTC), OFFSETS),
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=AWARE)
def test_aware_datetimes_round_trip_as_utc_with_microseconds(
    db: Database, world: World, value: datetime
) -> None:
    ident = world.customer(61)
    with db.writing() as session:
        session.execute(update(Customer).where(Customer.id == ident).values(kyc_checked_at=value))
        session.commit()
    with db.reading() as session:
        stored = session.scalar(select(Customer.kyc_checked_at).where(Customer.id == ident))
    assert stored == value
    assert stored is not None and stored.tzinfo is UTC
    assert stored.microsecond == value.astimezone(UTC).microsecond


def test_datetimes_compare_by_instant_whatever_their_offset(db: Database, world: World) -> None:
    early, late = world.customer(62), world.customer(63)
    # 10:00 at +05:00 is 05:00 UTC, earlier than 06:00 UTC although its wall time is later.
    early_at = datetime(2030, 5, 1, 10, 0, 0, 1, tzinfo=timezone(timedelta(hours=5)))
    late_at = datetime(2030, 5, 1, 6, 0, tzinfo=UTC)
    with db.writing() as session:
        for ident, at in ((early, early_at), (late, late_at)):
            session.execute(update(Customer).where(Customer.id == ident).values(kyc_checked_at=at))
        session.commit()
    with db.reading() as session:
        ordered = list(
            session.scalars(
                select(Customer.id)
                .where(Customer.id.in_([early, late]))
                .order_by(Customer.kyc_checked_at)
            )
        )
        before_late = set(
            session.scalars(
                select(Customer.id).where(
                    Customer.id.in_([early, late]), Customer.kyc_checked_at < late_at
                )
            )
        )
    assert ordered == [early, late]
    assert before_late == {early}


# --- SQLite write transactions -----------------------------------------------------------------


def test_two_sqlite_writers_queue_instead_of_failing(sqlite_db: Database, world: World) -> None:
    ident = world.customer(64)
    with sqlite_db.reading() as session:
        start_count = session.scalar(select(Customer.kyc_check_count).where(Customer.id == ident))
    assert start_count is not None
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def read_then_write() -> None:
        try:
            barrier.wait(timeout=10)
            with sqlite_db.writing() as session:
                row = session.get(Customer, ident)  # the transaction starts here
                assert row is not None
                time.sleep(0.3)  # the other writer arrives while this one holds the lock
                row.kyc_check_count += 1
                session.commit()
        except BaseException as exc:  # reported to the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=read_then_write) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    with sqlite_db.reading() as session:
        final = session.scalar(select(Customer.kyc_check_count).where(Customer.id == ident))
    assert final == start_count + 2  # serialised: neither increment was lost


def test_a_sqlite_reader_does_not_block_a_writer_and_keeps_its_snapshot(
    sqlite_db: Database, world: World
) -> None:
    ident = world.customer(65)
    query = select(Customer.kyc_check_count).where(Customer.id == ident)
    with sqlite_db.reading() as reader:
        seen = reader.scalar(query)
        assert seen is not None
        with sqlite_db.writing() as writer:
            writer.execute(
                update(Customer)
                .where(Customer.id == ident)
                .values(kyc_check_count=Customer.kyc_check_count + 1)
            )
            writer.commit()
        assert reader.scalar(query) == seen
    with sqlite_db.reading() as fresh:
        assert fresh.scalar(query) == seen + 1


# --- transaction timeouts (below the idempotency takeover timeout) ---------------------------


def timeouts(db: Database, *, write: bool) -> tuple[str, ...]:
    with db.writing() if write else db.reading() as session:
        if db.dialect == "sqlite":
            return (str(session.execute(text("PRAGMA busy_timeout")).scalar()),)
        return tuple(
            str(session.execute(text(f"SHOW {name}")).scalar())
            for name in ("lock_timeout", "statement_timeout")
        )


def test_write_transactions_carry_the_timeouts_and_reads_do_not(test_db: TestDatabase) -> None:
    db = Database(
        test_db.url, lock_timeout=timedelta(seconds=2), statement_timeout=timedelta(seconds=3)
    )
    try:
        if test_db.backend == "sqlite":
            assert timeouts(db, write=True) == ("2000",)
        else:
            assert timeouts(db, write=True) == ("2s", "3s")
            assert timeouts(db, write=False) == ("0", "0")
    finally:
        db.dispose()


def test_the_server_is_bounded_by_its_settings_and_maintenance_is_not(
    test_db: TestDatabase,
) -> None:
    settings = Settings(
        database_url=test_db.url, db_lock_timeout_seconds=7, db_statement_timeout_seconds=9
    )
    server = Services.build(settings)
    maintenance = Services.build(settings, maintenance=True)
    try:
        if test_db.backend == "sqlite":
            assert timeouts(server.db, write=True) == ("7000",)
            assert timeouts(maintenance.db, write=True) == ("30000",)
        else:
            assert timeouts(server.db, write=True) == ("7s", "9s")
            assert timeouts(maintenance.db, write=True) == ("0", "0")
    finally:
        server.db.dispose()
        maintenance.db.dispose()

"""Alembic migrations run from code: the CLI and the app migrate on start."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DatabaseError as DriverDatabaseError

from db.session import (
    SQLITE_BUSY_TIMEOUT_MS,
    DatabaseError,
    connection_dropped,
    failure,
    get_engine,
    redact,
    unusable,
)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

logger = logging.getLogger(__name__)

# SQLite's upgrades rebuild a table in batch mode: a copy named _alembic_tmp_TABLE, the rows
# copied, the table dropped, the copy renamed. An earlier release did not upgrade in one
# transaction, and one stopped part-way left the copy behind at the revision before, so every
# later upgrade failed ("table _alembic_tmp_inspections already exists"). Here, per table an
# upgrade rebuilds: the revision stored before that upgrade and the columns the copy adds.
TMP_PREFIX = "_alembic_tmp_"
SQLITE_REBUILDS: dict[str, tuple[str, frozenset[str]]] = {
    "inspections": ("0001", frozenset({"superseded_at"})),  # 0002 (its unique key dropped)
}


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Percent signs in passwords would be read as interpolation by configparser.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def head_revision() -> str:
    head = _scripts().get_current_head()
    assert head is not None
    return head


def _check_known(url: str, revision: str | None) -> None:
    """A database that a newer release migrated (another station upgraded first) is at a
    revision this release has never heard of: Alembic stopped every command with a traceback
    ("Can't locate revision"). Running on would read and write a schema this code does not
    know, so it is refused with the way out."""
    if revision is None:
        return
    try:
        _scripts().get_revision(revision)
    except CommandError:
        raise DatabaseError(
            f"the database at {redact(url)} is at schema revision {revision}, newer than this "
            f"release knows (its latest is {head_revision()}): another station with a newer "
            "release upgraded it; install that release here too"
        ) from None


def schema_revision(connection: Connection) -> str | None:
    """The revision a database is at, read on a connection already open (a station's look
    at its model's operating point, every chunk): one small query."""
    return connection.scalar(text("SELECT version_num FROM alembic_version"))


def current_revision(url: str) -> str | None:
    try:
        with get_engine(url).connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except DriverDatabaseError as exc:
        if not unusable(exc):
            raise
        raise failure("cannot reach the database", url, exc) from exc


def _columns(connection: Connection, table: str) -> set[str]:
    rows = connection.exec_driver_sql(f'PRAGMA table_info("{table}")').all()
    return {str(row[1]) for row in rows}


def _copy_left_safe_to_drop(connection: Connection, copy: str, revision: str | None) -> bool:
    """Whether `copy` is provably the half-made copy of the rebuild that follows `revision`,
    beside its table intact: its columns are the table's and those the rebuild adds, and
    every row in it is still in the table (none would be lost with it)."""
    table = copy.removeprefix(TMP_PREFIX)
    if table not in SQLITE_REBUILDS or SQLITE_REBUILDS[table][0] != revision:
        return False
    columns = _columns(connection, table)
    if not columns or _columns(connection, copy) != columns | SQLITE_REBUILDS[table][1]:
        return False
    only_in_copy = connection.exec_driver_sql(
        f'SELECT count(*) FROM "{copy}" WHERE id NOT IN (SELECT id FROM "{table}")'
    ).scalar()
    return only_in_copy == 0


def _clear_copies_left(url: str, revision: str | None) -> None:
    """A copy left by an earlier release's upgrade stopped part-way: dropped, and said so,
    where it is provably that (`_copy_left_safe_to_drop`); otherwise the upgrade stops in one
    line saying what is there and what to do, touching nothing."""
    if make_url(url).get_backend_name() != "sqlite":
        return
    with get_engine(url).begin() as connection:
        copies = connection.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND substr(name, 1, ?) = ?",
            (len(TMP_PREFIX), TMP_PREFIX),
        ).scalars()
        copies_left = list(copies)
        for copy in copies_left:  # (each checked before any is dropped)
            table = copy.removeprefix(TMP_PREFIX)
            if not _copy_left_safe_to_drop(connection, copy, revision):
                raise DatabaseError(
                    f"the database at {redact(url)} holds {copy}, a copy of the table {table} "
                    "that an upgrade by an earlier release left when it was stopped part-way, "
                    f"and it is not provably safe to drop (schema revision {revision}): "
                    "restore the database from the backup taken before that upgrade, or, if "
                    f"{table} holds all its rows, drop the copy (DROP TABLE {copy}) and start "
                    "again"
                )
        for copy in copies_left:
            table = copy.removeprefix(TMP_PREFIX)
            connection.exec_driver_sql(f'DROP TABLE "{copy}"')
            logger.warning(
                "dropped %s from the database at %s: an empty or duplicate copy of %s, left by "
                "an earlier release's upgrade stopped part-way (%s itself is intact)",
                copy,
                redact(url),
                table,
                table,
            )


# A SQLite database's migration lock is this file beside it (`defects.db.migrating`). It is left
# in place after an upgrade: one removed while another process waits on it would let that one and
# the next process to start each lock a file of that name, and both migrate at once.
MIGRATION_LOCK_SUFFIX = ".migrating"

# Key of the PostgreSQL advisory lock that one migration at a time holds (any constant).
MIGRATION_LOCK_KEY = 0x64656665  # "defe"


@contextmanager
def _one_migration_at_a_time(url: str) -> Iterator[None]:
    """Stations started together on a new database each ran the migrations: on PostgreSQL the
    losers stopped with a traceback (alembic_version created twice); on SQLite, before an
    upgrade was one transaction (`migrations/env.py`), they read a half-migrated schema and
    stopped ("table already exists", "no such constraint"). PostgreSQL holds them on an
    advisory lock, a SQLite file on a lock file beside it (filelock: also on Windows)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        with get_engine(url).connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            try:
                yield
            finally:
                connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
                connection.commit()
        return
    database = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    from filelock import FileLock

    with FileLock(f"{database}{MIGRATION_LOCK_SUFFIX}"):
        yield


# SQLite answers "database is locked" without waiting out its busy timeout where waiting cannot
# help the statement itself (a read snapshot that another connection's commit made stale, a WAL
# file being recovered or converted): stations started together on a new database saw it, one
# in a few hundred starts. The upgrade, idempotent and under its own lock, is tried again then;
# a lock held past the busy timeout is still an error at once.
BUSY_AT_ONCE_TRIES = 10


def _busy_at_once(exc: DatabaseError, began: float) -> bool:
    orig = getattr(exc.__cause__, "orig", None)
    name = getattr(orig, "sqlite_errorname", "")
    waited = time.monotonic() - began
    return name.startswith("SQLITE_BUSY") and waited < SQLITE_BUSY_TIMEOUT_MS / 1000


def upgrade(url: str, revision: str = "head", outage_s: float = 0.0) -> str:
    """Bring the schema to `revision`; returns the revision now in place. A connection the
    database dropped (a PostgreSQL restart, its backends terminated) is tried again for up to
    `outage_s` seconds, as a station's run waits for one (DEFECTS_DB_OUTAGE_SECONDS): a
    command's schema check on start stopped it at once ("cannot reach the database")."""
    busy_tries, waited, delay = 0, 0.0, 0.5
    while True:
        began = time.monotonic()
        try:
            return _upgrade(url, revision)
        except DatabaseError as exc:
            if connection_dropped(exc) and waited < outage_s:
                logger.warning("%s; trying again in %.1f s", exc, delay)
                time.sleep(delay)
                waited += delay
                delay = min(delay * 2, 5.0)
                continue
            busy_tries += 1
            if busy_tries == BUSY_AT_ONCE_TRIES or not _busy_at_once(exc, began):
                raise
            logger.info("database locked at once (%s); migrating again", exc)
            time.sleep(0.05 * busy_tries)


def _upgrade(url: str, revision: str) -> str:
    head = head_revision()
    found = current_revision(url)
    if revision == "head" and found == head:
        return head
    _check_known(url, found)
    try:
        with _one_migration_at_a_time(url):
            found = current_revision(url)  # (migrated meanwhile, perhaps by a newer release)
            _check_known(url, found)
            if revision != "head" or found != head:
                _clear_copies_left(url, found)
                command.upgrade(alembic_config(url), revision)
    except DriverDatabaseError as exc:
        if not unusable(exc):
            raise
        raise failure("migration failed", url, exc) from exc
    return current_revision(url) or ""

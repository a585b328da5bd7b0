"""Engines and sessions: SQLite in WAL mode with a busy timeout, or PostgreSQL."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    IntegrityError,
    NoSuchModuleError,
    ProgrammingError,
)
from sqlalchemy.exc import DatabaseError as DriverDatabaseError
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000
T = TypeVar("T")
logger = logging.getLogger(__name__)


class DatabaseError(RuntimeError):
    """The database cannot be reached or used; the message says which and why."""


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for an in-memory database or a `file:` URI."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    database = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _check_sqlite_folder(url: str) -> None:
    """The folder of a SQLite file must be there: it is not made here. A mistyped folder in a
    URL once made a new, empty database, and the product said "no model versions yet" instead
    of naming the mistake. (The product's own data folder is made by the settings.)"""
    path = _sqlite_file(url)
    if path is None:
        return
    folder = path.absolute().parent
    if folder.is_dir():
        return
    if folder.exists():
        raise DatabaseError(
            f"the folder {folder} of the SQLite database {path} is a file, not a folder: "
            "correct the database URL"
        )
    raise DatabaseError(
        f"the folder {folder} of the SQLite database {path} does not exist: correct the "
        f"database URL, or create the folder (mkdir -p {folder}) for a new database there"
    )


def _read_only_parts(path: Path) -> list[str]:
    """What of a SQLite database this process cannot write: the file, its -wal and -shm files,
    or its folder where SQLite must create them."""
    path = path.absolute()
    companions = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
    blocked = [
        f"the file {p}" for p in (path, *companions) if p.exists() and not os.access(p, os.W_OK)
    ]
    if not os.access(path.parent, os.W_OK) and not all(p.exists() for p in companions):
        blocked.append(f"its folder {path.parent}")
    return blocked


def failure(what: str, url: str, exc: DriverDatabaseError) -> DatabaseError:
    """The error a driver's failure is told as: `what` (e.g. "database error") at the URL with
    the driver's reason, or, for a SQLite database this process cannot write, which file or
    folder is read-only ("attempt to write a readonly database" named neither, and "unable to
    open database file" read as a missing file)."""
    name = getattr(exc.orig, "sqlite_errorname", "")
    path = _sqlite_file(url)
    if path is not None and name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")):
        blocked = _read_only_parts(path)
        if blocked:
            return DatabaseError(
                f"the SQLite database {path.absolute()} cannot be written: "
                f"{' and '.join(blocked)} {'is' if len(blocked) == 1 else 'are'} read-only for "
                "this user (SQLite writes its -wal and -shm files beside the database): give "
                f"this user write access to the folder and those files ({exc.orig})"
            )
    return DatabaseError(f"{what} at {redact(url)}: {exc.orig}")


def unusable(exc: DriverDatabaseError) -> bool:
    """Whether a driver's error says the database cannot be used now (gone, locked, full,
    damaged, read-only), as opposed to a statement the product got wrong, which must surface
    as the bug it is."""
    return not isinstance(exc, IntegrityError | ProgrammingError | DataError)


def connection_dropped(exc: DatabaseError) -> bool:
    """Whether the database dropped the connection under `exc`'s transaction (a PostgreSQL
    restart, its backend terminated), a moment's outage; a read-only or locked database,
    or a refused login, is not."""
    return bool(getattr(exc.__cause__, "connection_invalidated", False))


def retrying_races(action: Callable[[], T], attempts: int = 3) -> T:
    """`action`, one whole transaction, again when it lost a race with another station: a
    unique index refused a row that the transaction had read as absent a moment before (a line
    two stations started at once, a part both judged, two promotions). It was rolled back;
    the next try reads what the winner wrote."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except IntegrityError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """One engine per URL and process (engines own the connection pool)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseError(f"invalid database URL {url!r}: {exc}") from exc
    try:
        return _engine(url, parsed)
    except (NoSuchModuleError, ImportError) as exc:
        # A database kind SQLAlchemy does not know (a typo, "postgres://") or whose driver is
        # not installed ("mysql://"): SQLAlchemy's own exception ended the command in a
        # traceback and the dashboard in a crash.
        raise DatabaseError(
            f"the database URL {redact(url)} names {parsed.drivername!r}, which this "
            "installation cannot use (no such database kind, or its driver is not installed): "
            "use sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/NAME"
        ) from exc


def _engine(url: str, parsed: URL) -> Engine:
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite_folder(url)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            # WAL lets readers (the dashboard) run beside a writer (a batch); the busy timeout
            # makes a second writer wait for the lock instead of failing.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            path = Path(database)

            @event.listens_for(engine, "begin")
            def _still_there(_connection) -> None:  # type: ignore[no-untyped-def]
                # A pooled connection writes on into a deleted (or moved) file, whose rows are
                # gone once it closes: a run went on, said "600 parts inspected" and exited 0
                # with nothing kept. One stat per transaction stops it at the first write.
                if not path.exists():
                    raise DatabaseError(
                        f"the SQLite database {database} is gone (deleted or moved while in "
                        "use): put it back, or start again on a new one"
                    )

        return engine
    return create_engine(url, pool_pre_ping=True, connect_args=_postgres_connect_args(parsed))


# libpq's defaults wait for ever: a station whose network to the server is cut, or whose
# connection attempt goes unanswered, hung without a word past DEFECTS_DB_OUTAGE_SECONDS.
# These make a dead connection an error that the outage handling waits through and reports.
# (A server that is up but stopped answering is not detected: that needs a statement timeout,
# which would also cut legitimate long statements.)
LIBPQ_TIMEOUTS = {
    "connect_timeout": 10,  # seconds
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,  # milliseconds: data unacknowledged that long ends the connection
}


# PostgreSQL's JIT compiles a query whose estimated cost passes `jit_above_cost`: on a year of
# history the dashboard's queries pass it, and compiling cost them more than it saved, none
# was faster with it (bench/results/review_queue_postgresql_jit_*.json and
# history_scale_postgresql_analyzed_jit_*.json). Off on the product's connections unless the
# URL's `options` (or PGOPTIONS, which options in the URL replace) set jit.
JIT_OFF = "-c jit=off"
_SETS_JIT = re.compile(r"(?:^|\s)(?:-c\s*|--)jit\s*=", re.IGNORECASE)


def _postgres_connect_args(parsed: URL) -> dict[str, int | str]:
    """LIBPQ_TIMEOUTS for a libpq driver, each unless the URL sets it, and JIT_OFF added to
    the connection's options unless they set jit themselves (`options` given more than once
    in the URL are joined into one, as libpq reads one)."""
    if parsed.get_driver_name() not in ("psycopg", "psycopg2"):
        return {}
    args: dict[str, int | str] = {
        key: value for key, value in LIBPQ_TIMEOUTS.items() if key not in parsed.query
    }
    given = parsed.query.get("options")
    if given is None:  # (options given here replace libpq's PGOPTIONS: kept in them)
        options = os.environ.get("PGOPTIONS", "")
    else:
        options = given if isinstance(given, str) else " ".join(given)
    if not _SETS_JIT.search(options):
        args["options"] = f"{options} {JIT_OFF}".strip()
    elif given is not None and not isinstance(given, str):
        # `options` given twice reach the driver as a tuple, which it sends as the tuple's
        # text: the server refused the connection ("invalid command-line argument").
        args["options"] = options
    return args


# The session.info key of functions that a rollback's own hook (an import putting its folders
# back) leaves where it could not undo its work: each gives, from the transaction's error, the
# error to raise instead. Only logged, the error said the dataset was as it was while its
# folders were not where they belonged.
ROLLBACK_FAILURES = "rollback_failures"


def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except DriverDatabaseError as exc:
        _roll_back(session, url)
        _raise_rollback_failure(session, exc)
        if not unusable(exc):
            raise
        raise failure("database error", url, exc) from exc
    except BaseException as exc:
        _roll_back(session, url)
        _raise_rollback_failure(session, exc)
        raise
    finally:
        session.close()


def _raise_rollback_failure(session: Session, exc: BaseException) -> None:
    """The error that a rollback's hook left in ROLLBACK_FAILURES, raised from `exc`."""
    for said in session.info.pop(ROLLBACK_FAILURES, []):
        raise said(exc) from exc


def _roll_back(session: Session, url: str) -> None:
    """Roll back after an error, where a rollback is still possible. Where the COMMIT itself
    failed (an `after_commit` hook, a connection lost in it), the session refuses a rollback
    ("in 'committed' state"): that second error replaced the first, which said what went
    wrong. It is logged instead, and the caller raises the first."""
    try:
        session.rollback()
    except Exception as exc:  # noqa: BLE001 - the error being raised says what went wrong
        logger.warning("rollback after an error failed on %s: %s", redact(url), exc)


@contextmanager
def connection_scope(url: str) -> Iterator[Connection]:
    """One transaction on a bare connection, for bulk statements on a hot path: no ORM
    bookkeeping, the same commit-or-roll-back and error as `session_scope`."""
    try:
        with get_engine(url).begin() as connection:
            yield connection
    except DriverDatabaseError as exc:
        if not unusable(exc):
            raise
        raise failure("database error", url, exc) from exc


class WalCheckpointer:
    """Checkpoints a SQLite database's write-ahead log from a background thread.

    Left to itself, SQLite checkpoints inside the commit that takes the log past 1000 pages: a
    writer committing part by part pays for it in one commit of every few hundred parts, which
    made its slowest percent of parts (bench/results/inference_gpu_one_at_a_time.json: p99 6.96
    ms with the checkpoints in the commits, 5.44 ms with them here). A passive checkpoint a few
    times a second, off the hot path, keeps the log under that mark; it waits for no lock and
    blocks no writer. Nothing to do elsewhere.
    """

    def __init__(self, url: str, interval_s: float = 0.2) -> None:
        self.url = url
        self.interval_s = interval_s
        self._thread = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="wal-checkpoint")
            if make_url(url).get_backend_name() == "sqlite"
            else None
        )
        self._running: Future[None] | None = None
        # (None, not 0.0: the monotonic clock starts near zero at boot, which would put a fresh
        # machine's first checkpoint off by the interval.)
        self._last: float | None = None
        self.checkpoints = 0

    @property
    def enabled(self) -> bool:
        return self._thread is not None

    def committed(self) -> None:
        """After a commit: a checkpoint when none runs and the last began long enough ago."""
        if self._thread is None or (self._running is not None and not self._running.done()):
            return
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval_s:
            return
        self._last = now
        self._running = self._thread.submit(self._checkpoint)

    def _checkpoint(self) -> None:
        try:
            with get_engine(self.url).connect() as connection:
                connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            self.checkpoints += 1
        except Exception as exc:  # noqa: BLE001 - nothing is lost: SQLite checkpoints itself later
            logger.warning("background WAL checkpoint of %s failed: %s", redact(self.url), exc)

    def wait(self) -> None:
        """Let a checkpoint under way finish (its count is then final)."""
        if self._running is not None:
            self._running.result()


def without_passwords(url: str) -> URL:
    """The URL with no password in it: neither the one after the user name nor one given in the
    query (`?password=`, which libpq takes too)."""
    parsed = make_url(url)
    passwords = [key for key in parsed.query if key.lower() == "password"]
    # (`URL.set(password=None)` leaves the password as it was: None there means "unchanged".)
    return parsed._replace(password=None).difference_update_query(passwords)


def redact(url: str) -> str:
    """The URL without its passwords, for messages."""
    try:
        return without_passwords(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid URL>"

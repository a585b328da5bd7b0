"""Alembic environment: the URL comes from the config that `db.migrate` builds."""

from alembic import context
from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.pool import NullPool

from db.models import Base
from db.session import SQLITE_BUSY_TIMEOUT_MS, get_engine

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _sqlite_migration_engine(url: str) -> Engine:
    """A SQLite engine whose transactions hold schema changes too, for the migrations alone.

    Python's sqlite3 opens a transaction only before a row's change: every CREATE, DROP and
    ALTER of a migration was written at once, outside it. A migration stopped part-way (a power
    cut, a station killed) left a half-rebuilt table behind at the old revision, and every
    later start failed on it ("table _alembic_tmp_inspections already exists"). Here the
    driver's own transaction handling is off and each transaction is a BEGIN IMMEDIATE of
    SQLite's, which covers schema changes: the whole upgrade is written, or none of it.

    Foreign keys are off on these connections: batch mode rebuilds a table (copy, drop,
    rename), and with them on, SQLite's drop deleted every row that referred to the old table
    (a migration of `inspections` emptied `predictions` and unlinked reviews). The pragma
    only counts outside a transaction, so it is set as the connection opens; no pool keeps
    such a connection for other work.
    """
    engine = create_engine(
        url, poolclass=NullPool, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    )

    @event.listens_for(engine, "connect")
    def _migration_connection(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # the driver begins nothing on its own
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=OFF")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        # (IMMEDIATE: the write lock from the start, so a station writing meanwhile waits.)
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = get_engine(url)  # (checks a SQLite file's folder, as every other use does)
    in_memory = make_url(url).database in (None, "", ":memory:")
    if engine.dialect.name == "sqlite" and not in_memory:
        # (A database in memory lives in its one pooled connection: a connection of this
        # engine's own would migrate a fresh, empty one.)
        engine = _sqlite_migration_engine(url)
    try:
        with engine.connect() as connection:
            # Batch mode lets later migrations alter tables on SQLite too. Transactional DDL
            # (which Alembic assumes SQLite lacks, and commits after each revision): one
            # transaction for the whole upgrade, on either database.
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=True,
                transactional_ddl=True,
            )
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
    finally:
        if engine is not get_engine(url):
            engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

"""Alembic migrations run from code: the CLI and the app migrate on start."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import DatabaseError as DriverDatabaseError

from db.session import DatabaseError, get_engine, redact, unusable

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Percent signs in passwords would be read as interpolation by configparser.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def current_revision(url: str) -> str | None:
    try:
        with get_engine(url).connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except DriverDatabaseError as exc:
        if not unusable(exc):
            raise
        raise DatabaseError(f"cannot reach the database at {redact(url)}: {exc.orig}") from exc


def upgrade(url: str, revision: str = "head") -> str:
    """Bring the schema to `revision`; returns the revision now in place."""
    head = head_revision()
    if revision == "head" and current_revision(url) == head:
        return head
    try:
        command.upgrade(alembic_config(url), revision)
    except DriverDatabaseError as exc:
        if not unusable(exc):
            raise
        raise DatabaseError(f"migration failed at {redact(url)}: {exc.orig}") from exc
    return current_revision(url) or ""

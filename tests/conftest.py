"""Shared fixtures: a migrated database per test (SQLite always, PostgreSQL when CI gives one)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

import inspection  # noqa: F401 - prepares torchvision and ultralytics before any test imports them
from db.migrate import upgrade
from db.session import get_engine, session_factory
from inspection.settings import get_settings

POSTGRES_URL = os.environ.get("DEFECTS_TEST_POSTGRES_URL")
DATABASE_BACKENDS = ["sqlite"] + (["postgresql"] if POSTGRES_URL else [])


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test gets its own data directory and SQLite database."""
    monkeypatch.setenv("DEFECTS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("DEFECTS_DATABASE_URL", raising=False)
    monkeypatch.setenv("DEFECTS_DEVICE", "cpu")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _reset_postgres(url: str) -> None:
    with get_engine(url).begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))


@pytest.fixture(params=DATABASE_BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, migrated database of each backend."""
    if request.param == "postgresql":
        assert POSTGRES_URL is not None
        _reset_postgres(POSTGRES_URL)
        url = POSTGRES_URL
    else:
        url = f"sqlite:///{tmp_path / 'test.db'}"
    upgrade(url)
    return url


@pytest.fixture
def session(database_url: str):  # type: ignore[no-untyped-def]
    with session_factory(database_url)() as session:
        yield session

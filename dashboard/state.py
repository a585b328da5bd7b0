"""Process-wide resources of the app, cached across reruns and sessions."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

import inspection  # noqa: F401 - prepares torch/torchvision/ultralytics
from db.migrate import upgrade
from db.session import DatabaseError, redact
from inspection.settings import get_settings


@dataclass(frozen=True)
class DatabaseState:
    url: str
    revision: str | None
    error: str | None


@st.cache_resource(show_spinner="Preparing the database...")
def _migrated(url: str) -> str:
    return upgrade(url)


def database_ready() -> DatabaseState:
    """Migrate once per process and URL; a dead database is a message (and retried next run)."""
    url = get_settings().resolved_database_url
    try:
        return DatabaseState(url, _migrated(url), None)
    except DatabaseError as exc:
        return DatabaseState(url, None, f"The database at {redact(url)} cannot be used: {exc}")

"""Streamlit entry point: `streamlit run dashboard/app.py`."""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run` puts this file's folder, not the project root, on the import path. Once:
# this script runs again at every click of every user, and an entry added each time grew the
# path without end, every import and package lookup searching it slower by the hour.
PROJECT_ROOT = str(Path(__file__).resolve().parents[1])
if PROJECT_ROOT not in sys.path:
    sys.path.insert(0, PROJECT_ROOT)

import streamlit as st  # noqa: E402

from dashboard.auth import account_sidebar, current_access, login_page  # noqa: E402
from dashboard.state import (  # noqa: E402
    database_message,
    database_ready,
    schema_moved_on,
    show_flashes,
)
from db.session import DatabaseError  # noqa: E402

st.set_page_config(page_title="Defect inspection", layout="wide")
ready = database_ready()
if ready.error:
    st.error(ready.error)
    st.stop()
moved_on = schema_moved_on(ready)
if moved_on:
    st.warning(moved_on)

VIEWS = Path(__file__).parent / "views"
try:
    access = current_access(ready.url)
except DatabaseError as exc:
    st.error(database_message(exc))
    st.stop()


def log_in() -> None:
    login_page(ready.url)


if access.accounts and not access.logged_in:
    # Accounts exist: the login form is the only page until one logs in.
    pages = [st.Page(log_in, title="Log in", icon=":material/login:", url_path="login")]
else:
    pages = [
        st.Page(VIEWS / "inspect.py", title="Inspect", icon=":material/search:", default=True),
        st.Page(VIEWS / "live.py", title="Live", icon=":material/sensors:"),
        st.Page(VIEWS / "review.py", title="Review", icon=":material/fact_check:"),
        st.Page(VIEWS / "history.py", title="History", icon=":material/monitoring:"),
    ]
    if access.engineer:  # (reviewers neither see nor reach them; the pages refuse them too)
        pages += [
            st.Page(VIEWS / "models.py", title="Models", icon=":material/model_training:"),
            st.Page(VIEWS / "settings.py", title="Settings", icon=":material/tune:"),
        ]
navigation = st.navigation(pages)
account_sidebar(ready.url, access)
show_flashes()
try:
    navigation.run()
except DatabaseError as exc:
    # The database went away or broke after the app started (a PostgreSQL restart, a disk
    # full, a damaged SQLite file): one message on any page, nothing half done is kept (the
    # session rolled back), and the next action tries again.
    st.error(database_message(exc))

"""Streamlit entry point: `streamlit run dashboard/app.py`."""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run` puts this file's folder, not the project root, on the import path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import streamlit as st  # noqa: E402

from dashboard.state import database_ready  # noqa: E402

st.set_page_config(page_title="Defect inspection", layout="wide")
ready = database_ready()
if ready.error:
    st.error(ready.error)
    st.stop()

VIEWS = Path(__file__).parent / "views"
navigation = st.navigation(
    [
        st.Page(VIEWS / "overview.py", title="Overview", icon=":material/factory:", default=True),
    ]
)
navigation.run()

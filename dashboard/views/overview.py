"""Overview: what this station has, and what to do next."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from sqlalchemy import func, select

from dashboard.state import database_ready
from db.models import Inspection, ModelVersion, Part, ProductionLine
from db.session import redact, session_scope

state = database_ready()
st.title("Defect inspection")

with session_scope(state.url) as session:
    counts = {
        "Lines": session.scalar(select(func.count(ProductionLine.id))) or 0,
        "Parts": session.scalar(select(func.count(Part.id))) or 0,
        "Inspections": session.scalar(select(func.count(Inspection.id))) or 0,
        "Model versions": session.scalar(select(func.count(ModelVersion.id))) or 0,
    }
    versions = session.scalars(select(ModelVersion).order_by(ModelVersion.created_at.desc())).all()
    rows = [
        {
            "name": v.name,
            "kind": v.kind.value,
            "architecture": v.architecture,
            "stage": v.stage.value,
            "mAP50": (v.metrics or {}).get("map50"),
            "miss rate": (v.metrics or {}).get("miss_rate"),
            "created": v.created_at,
        }
        for v in versions
    ]

for column, (label, value) in zip(st.columns(len(counts)), counts.items(), strict=True):
    column.metric(label, value)

st.subheader("Model versions")
if rows:
    st.dataframe(pd.DataFrame(rows), hide_index=True, use_container_width=True)
else:
    st.info(
        "No model yet. Import labeled defects with `defects import voc DIR --name NAME`, then "
        "train one with `defects train detector --data NAME`."
    )
st.caption(f"Database: {redact(state.url)} (schema {state.revision})")

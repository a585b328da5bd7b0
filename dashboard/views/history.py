"""History: miss and false-call rates with SPC limits, volume, Pareto, latency, model in use."""

from __future__ import annotations

import functools
from datetime import date, datetime, time, timedelta

import streamlit as st
from sqlalchemy import select

from dashboard.charts import (
    latency_figure,
    model_timeline_figure,
    pareto_figure,
    rates_figure,
    volume_figure,
)
from dashboard.downloads import filtered_results_csv
from dashboard.state import database_ready
from db.models import Prediction, ProductionLine, Station
from db.queries import (
    Filters,
    daily_volume,
    defect_pareto,
    latencies,
    model_usage,
    rates,
)
from db.session import session_scope

state = database_ready()
st.title("History")
with session_scope(state.url) as session:
    lines = {
        line.name: line.id
        for line in session.scalars(select(ProductionLine).order_by(ProductionLine.name))
    }
    stations = {
        f"{line} / {station.name}": station.id
        for station, line in session.execute(
            select(Station, ProductionLine.name).join(ProductionLine)
        )
    }
    classes = sorted(set(session.scalars(select(Prediction.class_name).distinct())))

today = date.today()
c1, c2, c3, c4 = st.columns(4)
chosen = c1.date_input(
    "Time range",
    (today - timedelta(days=30), today),
    key="history_range",
    help="Parts captured in this range, judged whenever: a part judged again after a "
    "recalibration stays on the day it was captured, with its new verdict.",
)
start_day, end_day = (
    chosen
    if isinstance(chosen, tuple) and len(chosen) == 2
    else (today - timedelta(days=30), today)
)
line = c2.selectbox("Line", ["All lines", *lines], key="history_line")
station = c3.selectbox("Station", ["All stations", *stations], key="history_station")
class_name = c4.selectbox("Defect class", ["All classes", *classes], key="history_class")
filters = Filters(
    start=datetime.combine(start_day, time.min),
    end=datetime.combine(end_day + timedelta(days=1), time.min),
    line_id=lines.get(line),
    station_id=stations.get(station),
    class_name=None if class_name == "All classes" else class_name,
)

with session_scope(state.url) as session:
    rate_rows = rates(session, filters, group_by="day")
    volume = daily_volume(session, filters)
    pareto = defect_pareto(session, filters)
    latency = latencies(session, filters)
    usage = model_usage(session, filters)

if not volume:
    st.info(
        "No inspections in this range yet: inspect parts on the Inspect page or with `defects batch`."
    )
    st.stop()
if rate_rows:
    st.plotly_chart(rates_figure(rate_rows))
else:
    st.info(
        "No reviewed parts in this range: miss and false-call rates come from reviews (Review page)."
    )
left, right = st.columns(2)
left.plotly_chart(volume_figure(volume))
right.plotly_chart(pareto_figure(pareto))
left, right = st.columns(2)
left.plotly_chart(latency_figure(latency))
right.plotly_chart(model_timeline_figure(usage))
st.download_button(
    "Download the filtered results (CSV)",
    functools.partial(filtered_results_csv, state.url, filters),  # built when pressed
    # (No rerun on the press: a rerun could drop the file being built before it is fetched.)
    on_click="ignore",
    file_name=f"inspections-{start_day}-{end_day}.csv",
    mime="text/csv",
)

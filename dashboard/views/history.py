"""History: miss and false-call rates with SPC limits, volume, Pareto, latency, model in use.

Days are those of the dashboard server's time zone, as the dates picked are: the range runs
from local midnight to local midnight (stored times are UTC), and the charts and the download
give local times, saying so."""

from __future__ import annotations

import functools
from dataclasses import replace
from datetime import date, timedelta

import streamlit as st
from sqlalchemy import select

from dashboard.charts import (
    latency_figure,
    model_timeline_figure,
    pareto_figure,
    rates_figure,
    rates_summary,
    volume_figure,
)
from dashboard.downloads import CSV_ROW_LIMIT, filtered_results_csv, rows_left_out_of_csv
from dashboard.state import database_ready, local_time, zone_label
from dashboard.text import plain
from db.models import ModelKind, ModelVersion, ProductionLine, Station
from db.queries import (
    Filters,
    daily_volume,
    defect_classes,
    defect_pareto,
    latency_by_grid,
    model_usage,
    rates,
    reviewed_of_judged,
)
from db.registry import UNNAMED_LINE
from db.session import session_scope

DEFAULT_DAYS = 30


def _picked_days(chosen: object, today: date) -> tuple[date, date]:
    """The first and last day of the range picked: one date (the range half picked, or one
    day wanted) is that day; none, the last DEFAULT_DAYS days."""
    picked = chosen if isinstance(chosen, tuple) else (chosen,)
    days = [day for day in picked if isinstance(day, date)]
    if not days:
        return _default_range(today)
    return days[0], days[-1]


def _default_range(today: date) -> tuple[date, date]:
    """The last DEFAULT_DAYS days, today included (today minus 30 days was 31 of them)."""
    return today - timedelta(days=DEFAULT_DAYS - 1), today


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
    classes = defect_classes(session)
    models = {
        version.name: version.id
        for version in session.scalars(
            select(ModelVersion)
            .where(ModelVersion.kind == ModelKind.DETECTOR)
            .order_by(ModelVersion.name)
        )
    }

today = date.today()  # the server's local day, as the days below
c1, c2, c3, c4, c5 = st.columns(5)
chosen = c1.date_input(
    "Time range",
    _default_range(today),
    key="history_range",
    help="Parts captured on these days (of the dashboard server's time zone; one date picked: "
    "that day), judged whenever: a part judged again after a recalibration stays on the day it "
    "was captured, with its new verdict.",
)
start_day, end_day = _picked_days(chosen, today)
line = c2.selectbox("Line", ["All lines", *lines], key="history_line")
unnamed = [name for name in lines if name.lower() == UNNAMED_LINE]
if unnamed:  # (its parts sat beside a real line of that name without a word)
    st.caption(
        f"Line {plain(unnamed[0])} holds the parts `defects inspect` recorded without --line "
        "(and a line of yours by that name, if any: they share its history)."
    )
station = c3.selectbox("Station", ["All stations", *stations], key="history_station")
class_name = c4.selectbox(
    "Defect class",
    ["All classes", *classes],
    key="history_class",
    help="Miss rate: over the parts reviewers found this defect on; false-call rate: the good "
    "parts failed for it. Volume, latency, models and the download: the parts the model called "
    "this class or a reviewer found it on. The Pareto shows every class, this one in red.",
)
DECIDING = "Each part's deciding verdict"
model = c5.selectbox(
    "Model",
    [DECIDING, *models],
    key="history_model",
    help="Each part once, at the verdict of the model version that judged it first (the one on "
    "the line when it was captured), whatever judged it since: a candidate run on the same "
    "parts (`defects batch --model`), a model promoted later. A version picked: its own "
    "verdicts of the parts it judged, as a candidate's figures beside production's.",
)
filters = Filters.local_days(
    start_day,
    end_day,
    line_id=lines.get(line),
    station_id=stations.get(station),
    class_name=None if class_name == "All classes" else class_name,
    model_version_id=models.get(model),
)
zone = zone_label(filters.utc_offset_minutes, tuple(m for _, m in filters.offset_changes))

with session_scope(state.url) as session:
    rate_rows = rates(session, filters, group_by="day")
    reviewed = reviewed_of_judged(session, filters)
    volume = daily_volume(session, filters)
    pareto = defect_pareto(session, replace(filters, class_name=None))  # compares the classes
    latency = latency_by_grid(session, filters)  # (one histogram a grid judged in)
    usage = model_usage(session, filters)

if not volume:
    if filters.class_name is not None:
        st.info(
            f"No part in this range was called {plain(filters.class_name)} by the model or a reviewer."
        )
    else:
        st.info(
            "No inspections in this range yet: inspect parts on the Inspect page or with "
            "`defects batch`."
        )
    st.stop()
if filters.class_name is not None:
    st.caption(
        f"Defect class {plain(filters.class_name)}: the miss rate is over the parts reviewers found it "
        "on, the false-call rate counts the good parts failed for it; volume, latency, models "
        "and the download count the parts the model called it or a reviewer found it on; the "
        "Pareto compares every class, this one in red."
    )
if rate_rows:
    st.plotly_chart(rates_figure(rate_rows, zone, (start_day, end_day)))
    st.caption(rates_summary(rate_rows, reviewed))
else:
    st.info(
        "No reviewed parts in this range: miss and false-call rates come from reviews (Review page)."
    )
left, right = st.columns(2)
left.plotly_chart(volume_figure(volume, zone, (start_day, end_day)))
left.caption(
    "Each part once, at its current verdict by the model picked (by default the model that "
    "judged it first, whatever judged it since): a blank frame or empty capture sent again is "
    "one part here, while the Live page and `defects status` count each time it came."
)
right.plotly_chart(pareto_figure(pareto, highlight=filters.class_name))
left, right = st.columns(2)
left.plotly_chart(latency_figure(latency))
left.caption(
    "The time the model took to judge each part, once, at its current verdict by the model "
    "picked (by default the model that judged it first, whatever judged it since: a "
    "candidate's times are its own, with it picked); errors left out."
)
right.plotly_chart(
    model_timeline_figure(
        [replace(u, first_at=local_time(u.first_at), last_at=local_time(u.last_at)) for u in usage],
        zone,
        (start_day, end_day),
    )
)
left_out = rows_left_out_of_csv(state.url, filters, CSV_ROW_LIMIT)
if left_out:
    st.warning(
        f"The download holds the newest {CSV_ROW_LIMIT:,} verdicts of this selection; the "
        f"{left_out:,} older ones are left out. Narrow the dates (or the line, station, class) "
        "and download the rest in parts."
    )
st.download_button(
    "Download the filtered results (CSV)",
    functools.partial(filtered_results_csv, state.url, filters, CSV_ROW_LIMIT),  # when pressed
    # (No rerun on the press: a rerun could drop the file being built before it is fetched.)
    on_click="ignore",
    file_name=f"inspections-{start_day}-{end_day}.csv",
    mime="text/csv",
    help="Times in the server's local time with their UTC offset (ISO 8601). A name a "
    "spreadsheet would run as a formula (beginning with = + - @) begins with a ' instead.",
)

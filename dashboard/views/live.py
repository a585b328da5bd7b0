"""Live: each station's latest run and its last minutes, refreshed while the page is open.

For the floor: `defects batch HOT --watch` judges what the cameras drop; this page shows which
stations are judging, how many parts fail, which camera sends blank frames, and the last
failed part with its defects drawn, without anyone pressing a button.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import streamlit as st
from PIL.Image import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from dashboard.auth import current_access
from dashboard.charts import minute_volume_figure
from dashboard.drawing import DrawnBox, draw_boxes, prediction_boxes, unshown_image
from dashboard.state import database_message, database_ready, local_time, zone_label
from dashboard.text import code, plain
from db.models import (
    Inspection,
    ModelKind,
    ModelVersion,
    Verdict,
    database_utcnow,
)
from db.queries import (
    Filters,
    MinuteVolume,
    StationActivity,
    inspection_rows,
    minute_volume,
    station_activity,
)
from db.registry import production_model
from db.session import DatabaseError, session_scope
from inspection.images import ImageDecodeError, decode_image, located_image
from inspection.tiling import station_grid

REFRESH_SECONDS = 5
IDLE_MINUTES = 5  # a watched station without a part for this long is called out
LATEST_PARTS = 20
NAMED = 5  # stations a call-out names; a plant of thousands gets one line, not a banner each

state = database_ready()
st.title("Live")
window = st.selectbox(
    "Window",
    [15, 60, 240],
    index=1,
    format_func=lambda minutes: f"last {minutes} minutes",
    key="live_window",
)


def _local(moment: datetime, to: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A stored naive-UTC time as this server's local time, to the second (or as `to` says)."""
    return f"{local_time(moment):{to}}"


def _local_minutes(volume: list[MinuteVolume]) -> list[MinuteVolume]:
    minute = "%Y-%m-%d %H:%M"
    return [replace(v, minute=_local(datetime.strptime(v.minute, minute), minute)) for v in volume]


def _named(stations: list[str]) -> str:
    """The first NAMED of `stations`, and how many more."""
    more = len(stations) - NAMED
    return ", ".join(plain(s) for s in stations[:NAMED]) + (f" and {more} more" if more > 0 else "")


def _latest_parts(session: Session, zone: str) -> list[dict[str, object]]:
    """The newest current verdicts, each at the station that judged it, as the station table
    counts them (a part's first-seen station showed a part judged elsewhere at two), and each
    blank frame or empty capture as it came, as the table counts those (the same bytes sent
    by another station superseded this one's, and it left the list)."""
    return [
        {
            f"judged ({zone})": _local(row["inspected_at"]),  # type: ignore[arg-type]
            "line": row["line"],
            "station": row["station"],
            "part": row["part"],
            "verdict": row["verdict"],
            "defects": row["defects"],
            "error": row["error"],
        }
        for row in inspection_rows(
            session, Filters(), LATEST_PARTS, judging_station=True, every_fault=True
        )
    ]


def _status(activity: StationActivity, now: datetime) -> str:
    if activity.last_inspected_at is None:
        # (A watch started and waiting for its first part, or killed before it, read as a
        # station that never ran.)
        if activity.run_id is None:
            return "no run yet"
        return "run open, no part yet" if activity.run_open else "run finished, no part"
    # (A station whose clock runs ahead of this one's stamps its parts in the future: "-30 s
    # ago" read as a fault of the page.)
    idle = max(0.0, (now - activity.last_inspected_at).total_seconds())
    if idle < 1:
        since = "just now"
    else:
        since = f"{idle:.0f} s ago" if idle < 120 else f"{idle / 60:.0f} min ago"
    if not activity.run_open:
        return f"run finished, last verdict {since}"
    # An open run is a watch or a batch at work, or one that was killed: the idle time tells.
    return f"{'judging' if idle < IDLE_MINUTES * 60 else 'run open, idle'}, last verdict {since}"


def _last_failed_part(url: str, zone: str) -> tuple[str, Image | None, str] | None:
    """The newest failed part drawn with its defects, or None."""
    with session_scope(url) as session:
        inspection = session.scalars(
            select(Inspection)
            .where(Inspection.verdict == Verdict.FAIL, Inspection.is_current())
            .order_by(Inspection.inspected_at.desc())
            .limit(1)
        ).first()
        if inspection is None:
            return None
        # (Each class in its colour as Inspect draws it: by the production detector's classes.
        # With none in production, by those of the detector that judged the part, as Review
        # draws it: by its name alone, a class was drawn in one colour here and another there.)
        detector = production_model(session, ModelKind.DETECTOR)
        if detector is None and inspection.model_version_id is not None:
            detector = session.get(ModelVersion, inspection.model_version_id)
        boxes = tuple(
            prediction_boxes(inspection.predictions, detector.classes if detector else ())
        )
        name, path = inspection.part.original_name, str(located_image(inspection.part.stored_path))
        inspection_id, when = inspection.id, inspection.inspected_at
    try:
        image = _drawn(inspection_id, path, boxes)
    except (OSError, ImageDecodeError) as exc:
        return name, None, unshown_image(path, exc)
    return name, image, f"judged {_local(when)} ({zone})"


@st.cache_data(max_entries=4, show_spinner=False)
def _drawn(inspection_id: int, path: str, boxes: tuple[DrawnBox, ...]) -> Image:
    """Decoded and drawn once per failed part, not at every refresh (a camera frame can be
    tens of megapixels). The cache's key is all three arguments (Streamlit hashes each): the
    inspection, its image's path and its boxes, so the same inspection is drawn again where
    its image is found elsewhere or its boxes' colours changed (another detector promoted)."""
    return draw_boxes(decode_image(Path(path).read_bytes()).pixels, boxes)


@st.fragment(run_every=REFRESH_SECONDS)
def live_view() -> None:
    try:
        # A refresh runs this fragment alone, not app.py, which checks the login at every
        # other run: an account disabled, or given a new password, since went on seeing the
        # plant live for as long as the tab stayed open. The whole app runs again instead,
        # and shows the login form.
        access = current_access(state.url)
        if access.accounts and not access.logged_in:
            st.rerun(scope="app")
        _live_view()
    except DatabaseError as exc:
        # A refresh runs this fragment alone, outside app.py's handler of the other pages:
        # its words here, not a traceback every REFRESH_SECONDS (the next refresh tries again).
        st.error(database_message(exc))


def _live_view() -> None:
    zone = zone_label()
    with session_scope(state.url) as session:
        # The database's clock, as the stations stamp their verdicts by (this server's may
        # differ from it by minutes, and every station was then idle, or none ever was).
        now = database_utcnow(session)
        since = now - timedelta(minutes=window)
        activity = station_activity(session, since)
        volume = minute_volume(session, since)
        recent = _latest_parts(session, zone)
    if not activity:
        st.info(
            "No station has inspected anything yet. On a station, `defects batch FOLDER --line L "
            "--station S --watch` judges the images a camera drops into FOLDER; they show here."
        )
        return
    blank = [f"{a.line} / {a.station} ({a.blank_frames})" for a in activity if a.blank_frames]
    if blank:
        st.warning(
            f"{len(blank)} station(s) sent blank frames in the last {window} minutes: "
            f"{_named(blank)}. Check their cameras and lighting."
        )
    empty = [f"{a.line} / {a.station} ({a.empty_captures})" for a in activity if a.empty_captures]
    if empty:
        st.warning(
            f"{len(empty)} station(s) sent empty captures (files with no image in them) in the "
            f"last {window} minutes: {_named(empty)}. Check their cameras."
        )
    idle = [
        f"{a.line} / {a.station} (run {a.run_id}, {minutes:.0f} min)"
        for a in activity
        if a.run_open
        and a.last_inspected_at is not None
        and (minutes := (now - a.last_inspected_at).total_seconds() / 60) >= IDLE_MINUTES
    ]
    if idle:
        st.info(
            f"{len(idle)} station(s) have an open run but no part for over {IDLE_MINUTES} "
            f"minutes (a quiet camera, or an inspection that was stopped): {_named(idle)}."
        )
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "line": a.line,
                    "station": a.station,
                    "status": _status(a, now),
                    "verdicts": a.inspected,
                    "failed": a.failed,
                    "fail rate": f"{a.fail_rate:.1%}" if a.fail_rate is not None else "",
                    "errors": a.errors,
                    # (A station with no run: blank, as the other empty cells, not a grey None.)
                    "run": str(a.run_id) if a.run_id is not None else "",
                    "model": a.run_model,
                    "grid": station_grid(a.run_tile, a.run_judged),
                    "source": a.run_source,
                }
                for a in activity
            ]
        ),
        hide_index=True,
    )
    st.caption(
        f"Parts judged in the last {window} minutes, a blank frame or empty capture each time it "
        f"came (the History page counts each part once); a station's figures are each verdict "
        f"it gave (a candidate judging there beside production counts its own too; the chart "
        f"counts such a part once); grid: the tiles the station's latest run cuts a part larger than a tile into, as its latest verdict was given; refreshed every {REFRESH_SECONDS} s; "
        f"times in {zone}."
    )
    left, right = st.columns([3, 2])
    with left:
        if volume:
            figure = minute_volume_figure(_local_minutes(volume))
            st.plotly_chart(figure.update_layout(title_text=f"Parts per minute ({zone})"))
        st.markdown("**Latest parts** (at the station that judged each)")
        if recent:
            st.dataframe(pd.DataFrame(recent), hide_index=True)
        else:  # stations, none of them with a part yet (the demo line of a fresh install)
            st.caption("No part judged yet.")
    with right:
        shown = _last_failed_part(state.url, zone)
        if shown is None:
            st.caption("No failed part yet.")
        else:
            name, image, caption = shown
            st.markdown(f"**Last failed part**: {code(name)}")
            if image is None:
                st.caption(plain(caption))
            else:
                st.image(image, caption=caption)


live_view()

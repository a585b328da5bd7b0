"""Live: each station's latest run and its last minutes, refreshed while the page is open.

For the floor: `defects batch HOT --watch` judges what the cameras drop; this page shows which
stations are judging, how many parts fail, which camera sends blank frames, and the last
failed part with its defects drawn, without anyone pressing a button.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import streamlit as st
from PIL.Image import Image
from sqlalchemy import select

from dashboard.charts import minute_volume_figure
from dashboard.drawing import DrawnBox, draw_boxes, prediction_boxes
from dashboard.state import database_ready
from db.models import Inspection, Verdict, utcnow
from db.queries import Filters, StationActivity, inspection_rows, minute_volume, station_activity
from db.session import session_scope
from inspection.images import ImageDecodeError, decode_image

REFRESH_SECONDS = 5
IDLE_MINUTES = 5  # a watched station without a part for this long is called out

state = database_ready()
st.title("Live")
window = st.selectbox(
    "Window",
    [15, 60, 240],
    index=1,
    format_func=lambda minutes: f"last {minutes} minutes",
    key="live_window",
)


def _status(activity: StationActivity, now: datetime) -> str:
    if activity.last_inspected_at is None:
        return "no part yet"
    idle = (now - activity.last_inspected_at).total_seconds()
    since = f"{idle:.0f} s ago" if idle < 120 else f"{idle / 60:.0f} min ago"
    if not activity.run_open:
        return f"run finished, last part {since}"
    # An open run is a watch or a batch at work, or one that was killed: the idle time tells.
    return f"{'judging' if idle < IDLE_MINUTES * 60 else 'run open, idle'}, last part {since}"


def _last_failed_part(url: str) -> tuple[str, Image | None, str] | None:
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
        boxes = tuple(prediction_boxes(inspection.predictions))
        name, path = inspection.part.original_name, inspection.part.stored_path
        inspection_id, when = inspection.id, inspection.inspected_at
    try:
        image = _drawn(inspection_id, path, boxes)
    except (OSError, ImageDecodeError) as exc:
        return name, None, f"its image cannot be shown: {exc}"
    return name, image, f"judged {when:%Y-%m-%d %H:%M:%S} UTC"


@st.cache_data(max_entries=4, show_spinner=False)
def _drawn(inspection_id: int, path: str, boxes: tuple[DrawnBox, ...]) -> Image:
    """Decoded and drawn once per failed part, not at every refresh (a camera frame can be
    tens of megapixels). `inspection_id` is the cache's key."""
    return draw_boxes(decode_image(Path(path).read_bytes()).pixels, boxes)


@st.fragment(run_every=REFRESH_SECONDS)
def live_view() -> None:
    now = utcnow()
    since = now - timedelta(minutes=window)
    with session_scope(state.url) as session:
        activity = station_activity(session, since)
        volume = minute_volume(session, since)
        recent = inspection_rows(session, Filters(), limit=20)
    if not activity:
        st.info(
            "No station has inspected anything yet. On a station, `defects batch FOLDER --line L "
            "--station S --watch` judges the images a camera drops into FOLDER; they show here."
        )
        return
    for found in activity:
        where = f"{found.line} / {found.station}"
        if found.blank_frames:
            st.warning(
                f"{where}: {found.blank_frames} blank frame(s) in the last {window} minutes: "
                "check the camera and its lighting."
            )
        idle = (
            (now - found.last_inspected_at).total_seconds() / 60
            if found.last_inspected_at
            else None
        )
        if found.run_open and idle is not None and idle >= IDLE_MINUTES:
            st.info(
                f"{where}: its run {found.run_id} is open but has judged no part for "
                f"{idle:.0f} minutes (a quiet camera, or an inspection that was stopped)."
            )
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "line": a.line,
                    "station": a.station,
                    "status": _status(a, now),
                    "parts": a.inspected,
                    "failed": a.failed,
                    "fail rate": f"{a.fail_rate:.1%}" if a.fail_rate is not None else "",
                    "errors": a.errors,
                    "run": a.run_id,
                    "source": a.run_source,
                }
                for a in activity
            ]
        ),
        hide_index=True,
    )
    st.caption(f"Parts judged in the last {window} minutes; refreshed every {REFRESH_SECONDS} s.")
    left, right = st.columns([3, 2])
    with left:
        if volume:
            st.plotly_chart(minute_volume_figure(volume))
        st.markdown("**Latest parts**")
        if recent:
            st.dataframe(
                pd.DataFrame(recent)[
                    ["inspected_at", "line", "station", "part", "verdict", "defects", "error"]
                ],
                hide_index=True,
            )
        else:  # stations, none of them with a part yet (the demo line of a fresh install)
            st.caption("No part judged yet.")
    with right:
        shown = _last_failed_part(state.url)
        if shown is None:
            st.caption("No failed part yet.")
        else:
            name, image, caption = shown
            st.markdown(f"**Last failed part**: {name}")
            if image is None:
                st.caption(caption)
            else:
                st.image(image, caption=caption)


live_view()

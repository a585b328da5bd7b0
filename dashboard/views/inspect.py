"""Inspect: upload parts, see each verdict with its defects drawn; results are stored."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pandas as pd
import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile

from dashboard.auth import current_access
from dashboard.charts import SHOWN_SIDE
from dashboard.drawing import (
    close_up,
    close_up_choice,
    draw_boxes,
    prediction_boxes,
    unshown_image,
)
from dashboard.state import (
    UPLOAD_LIMIT_MB,
    database_ready,
    detector_info,
    inspector_for,
    lines_and_stations,
    no_model_message,
)
from dashboard.text import code, plain
from db.models import UPLOAD_SOURCE
from db.queries import part_results
from db.registry import station_name_as_stored
from db.session import DatabaseError, session_scope
from inspection import batch
from inspection.batch import (
    BatchInspection,
    SourceItem,
    UnreadZipError,
    content_key,
    error_kind,
    iter_zip,
    zip_item_count,
)
from inspection.errors import UserError
from inspection.images import (
    INSPECTED_SUFFIXES,
    ImageDecodeError,
    decode_image,
    located_image,
    max_pixels,
)
from inspection.settings import get_settings
from inspection.verdict import left_out_note, part_classifier_note

IMAGE_TYPES = sorted(suffix.lstrip(".") for suffix in INSPECTED_SUFFIXES)
SHOWN_PARTS = 60
CLOSE_UPS = 6  # boxes of a large part shown at its own resolution
SHRUNK_FACTOR = 2  # an untiled model's parts past this many times its input side are warned of

state = database_ready()
st.title("Inspect parts")
info = detector_info(state.url)
if info is None:
    no_model_message()
    st.stop()

known = lines_and_stations(state.url)
access = current_access(state.url)
# Lines and stations are an engineer's to make (Settings page): a reviewer's upload goes to
# one that exists. A name typed here made a new line or station for anyone who could log in.
may_add = access.engineer
if not may_add and not any(known.values()):
    st.warning("No line has a station yet: an engineer adds them on the Settings page.")
    st.stop()
left, right = st.columns(2)
line = left.selectbox(
    "Production line",
    (list(known) or ["Line 1"]) if may_add else [k for k, stations in known.items() if stations],
    accept_new_options=may_add,
    key="inspect_line",
)
station = right.selectbox(
    "Station",
    known.get(line or "", []) or (["Station 1"] if may_add else []),
    accept_new_options=may_add,
    # One choice per line: a station chosen on another line must not carry over (it would be
    # created on this one and the parts filed under it).
    key=f"inspect_station_{line}",
)
st.caption(
    f"Model {plain(info.name)}. Images: {', '.join(IMAGE_TYPES)} or zips of them, up to {UPLOAD_LIMIT_MB} MB per "
    f"upload, {batch.MAX_FILE_BYTES >> 20} MB and {max_pixels() // 1_000_000} megapixels per image. Files that are not images (picked, in a zip or in a folder) are recorded as errors, hidden ones in a folder or a zip left out; so are a zip's "
    f"entries over {batch.RATIO_FLOOR_BYTES >> 20} MB packed past {batch.MAX_COMPRESSION_RATIO}:1 (zip bombs; an uncompressed BMP, TIFF or PGM/PPM of the size its header gives, a blank frame say, is read), a zip's "
    f"entries past what it may unpack in all ({batch.MAX_ZIP_UNPACK_RATIO} times its size, at least {batch.ZIP_UNPACK_FLOOR_BYTES / 1e9:.0f} GB), "
    f"and a zip of over {batch.MAX_ZIP_ENTRIES} entries."
)
files_tab, folder_tab = st.tabs(["Images or a zip", "A folder"])
# No `type=` filter: Streamlit refused a file of another suffix (a .txt picked among the
# images) with an icon alone, no row in the table, and where the browser let it through
# stopped the page. Any file goes to the batch, as a zip's entries do, and one that is not an
# image is its error row ("not an image file"), the other parts judged.
uploads = files_tab.file_uploader("Part images", accept_multiple_files=True, key="inspect_files")
folder = folder_tab.file_uploader(
    "A folder of part images", accept_multiple_files="directory", key="inspect_folder"
)


def is_hidden(name: str) -> bool:
    """A folder upload's file that is hidden or in a hidden folder (a leading dot: macOS's
    .DS_Store, a viewer's .thumbnails), which `defects batch` leaves out of the same folder:
    here it was an error row "not an image file", or a thumbnail judged as a part."""
    return any(part.startswith(".") for part in PurePosixPath(name).parts)


uploaded = list(uploads or []) + [f for f in folder or [] if not is_hidden(f.name)]
hidden = [f.name for f in folder or [] if is_hidden(f.name)]
if folder and len(hidden) == len(folder):
    # (Said: a folder of only .DS_Store and .thumbnails/ read as if none had been picked.)
    st.warning(
        f"The folder picked holds only hidden files ({len(hidden)}: "
        f"{', '.join(code(name) for name in hidden[:3])}{', ...' if len(hidden) > 3 else ''}), "
        "left out as `defects batch` leaves them: no part in it to inspect. Pick the folder "
        "that holds the part images."
    )


Seen = list[tuple[str, str | None, str | None]]  # (name, content hash, read error) of each item


def is_zip(file: UploadedFile) -> bool:
    return file.name.lower().endswith(".zip")


def item_count(files: list[UploadedFile]) -> int:
    """The items `source_items` gives, with nothing unpacked: the progress bar's total."""
    count = 0
    for file in files:
        try:
            count += zip_item_count(file, file.name) if is_zip(file) else 1
        except UnreadZipError:
            count += 1  # (a zip refused on opening it: one error item)
    return count


def zip_entries(file: UploadedFile) -> Iterator[SourceItem]:
    """A zip upload's entries, read from the upload as they are taken; one error item for a
    zip refused on opening it, damaged or of too many entries (the only error iter_zip
    raises, before any entry)."""
    file.seek(0)  # (read once already, to be counted)
    try:
        yield from iter_zip(file, file.name)
    except UnreadZipError as exc:
        yield SourceItem(file.name, None, exc.item_error)


def uploaded_item(file: UploadedFile) -> SourceItem:
    """An uploaded file that is not a zip as a part, refused over a batch's file size limit as
    a batch refuses it: up to the upload limit, twice the batch's, it was decoded and kept in
    the image store whatever it held (an image with hundreds of megabytes appended)."""
    if file.size > batch.MAX_FILE_BYTES:
        return SourceItem(file.name, None, batch.too_large_error(file.size))
    return SourceItem(file.name, file.getvalue())


def source_items(files: list[UploadedFile], seen: Seen) -> Iterator[SourceItem]:
    """The uploads' items one at a time, each noted in `seen` as it goes by. Unpacked into a
    list first, beside a copy of the upload, a zip of 10000 images was held three times over
    while the run went through it."""
    for file in files:
        items = zip_entries(file) if is_zip(file) else [uploaded_item(file)]
        for item in items:
            digest = content_key(item) if item.data is not None else None
            seen.append((item.name, digest, item.error))
            yield item


if not uploaded:
    st.info("Upload one image, many, a zip or a folder to inspect them.")
    st.stop()

if not line or not station:
    st.warning("Choose a line and a station first.")
    st.stop()
# A new line or station typed here that no station may bear (a tab in it) stopped the page in
# a traceback; one stored before names were checked still names its station.
try:
    if line not in known:
        station_name_as_stored(line)
    if station not in known.get(line, []):
        station_name_as_stored(station)
except ValueError as exc:
    st.error(plain(exc))
    st.stop()

upload_key = (info.id, info.operating_point, line, station, tuple(f.file_id for f in uploaded))
if st.session_state.get("inspected_key") != upload_key:
    # New uploads or new thresholds: inspect what this model has not judged at its current
    # operating point (a rerun re-inspects nothing).
    total = item_count(uploaded)
    seen: Seen = []
    progress = st.progress(0.0, text=f"Inspecting {total} parts...")
    done = [0]

    def advance(_result=None, parts: int = 1) -> None:  # type: ignore[no-untyped-def]
        done[0] += parts
        progress.progress(min(done[0] / max(total, 1), 1.0), text=f"{done[0]} of {total} parts")

    try:
        job = BatchInspection(
            state.url,
            get_settings().images_dir,
            line,
            station,
            model=info.name,
            operator=access.name or "",  # (the run's who, with accounts)
            source=UPLOAD_SOURCE,
            one_off=True,
            inspector=inspector_for(info),
        )
        # Someone is watching the page: a database gone away is waited for briefly, not for
        # the minutes a line's batch run waits.
        job.outage_seconds = min(job.outage_seconds, 15.0)
        # What the run says once (an export that carries no record of its weights) went to the
        # server's log alone: on the page too, as the command line prints it.
        said: list[str] = []
        logged = job.say

        def say(key: str, message: str) -> None:
            logged(key, message)
            said.append(message)

        job.say = say
        # (Parts judged before count too: a re-upload's bar stopped short of its end.)
        summary = job.run(
            source_items(uploaded, seen), advance, on_skipped=lambda n: advance(parts=n)
        )
    except (UserError, DatabaseError) as exc:
        # A deleted model file or a database gone away: say so, keep the uploads for a retry.
        progress.empty()
        st.error(f"Inspection could not run: {plain(exc)}")
        st.stop()
    progress.empty()
    st.session_state["inspected_key"] = upload_key
    st.session_state["inspected_parts"] = seen
    st.session_state["inspected_summary"] = (
        summary.inspected,
        summary.skipped,
        summary.parts_per_second,
    )
    st.session_state["rejudged"] = summary.rejudged
    st.session_state["inspected_errors"] = summary.errors
    st.session_state["inspected_tile"] = job.inspector.tile
    st.session_state["inspected_side"] = job.inspector.backend.image_size
    st.session_state["inspected_notes"] = list(dict.fromkeys(said))

parts = st.session_state["inspected_parts"]
if not parts:
    # (An empty zip, or one of folders only: the table below had no column to count.)
    st.warning("The upload holds no image: nothing was inspected.")
    st.stop()


def part_views(
    parts: Seen,
) -> tuple[list[dict[str, object]], list[tuple], list[tuple[str, int, int]]]:  # type: ignore[type-arg]
    """The table's rows, the drawn parts of an upload, from its stored verdicts, and the name,
    width and height of each part judged."""
    with session_scope(state.url) as session:
        stored = part_results(session, [h for _, h, _ in parts if h], info.id)
        rows, views, sizes = [], [], []
        for name, digest, read_error in parts:
            inspection = stored.get(digest or "")
            if inspection is None:
                rows.append(
                    {
                        "part": name,
                        "verdict": "error",
                        "defects": "",
                        "latency ms": "",
                        "error": read_error,
                    }
                )
                continue
            counted = [p for p in inspection.predictions if p.counted]
            found = [f"{p.class_name} {p.confidence:.2f}" for p in counted]
            # (A part the part classifier failed was a FAIL with no reason given.)
            note = part_classifier_note(inspection.defect_probability, inspection.thresholds)
            found += [note] if note else []
            # (A part keeps its most confident counted boxes: the list may not be all.)
            left_out = left_out_note(inspection.boxes_left_out)
            found += [left_out] if left_out else []
            rows.append(
                {
                    "part": name,
                    "verdict": inspection.verdict.value,
                    "defects": ", ".join(found),
                    # (An error was never judged: a latency beside it read as a judging time.)
                    # (Blank, as the other empty cells: None showed as a grey "None".)
                    "latency ms": f"{inspection.latency_ms:.1f}"
                    if inspection.latency_ms and inspection.verdict.value != "error"
                    else "",
                    "error": inspection.error or "",
                }
            )
            if inspection.verdict.value == "error":
                continue
            sizes.append((name, inspection.part.width or 0, inspection.part.height or 0))
            views.append(
                (
                    name,
                    inspection.verdict.value,
                    inspection.latency_ms,
                    str(located_image(inspection.part.stored_path)),
                    prediction_boxes(inspection.predictions, info.classes),
                )
            )
    return rows, views, sizes


# Built once an upload is judged, not at every rerun: each widget touched after a zip of 10000
# reloaded every verdict and its detections.
cached = st.session_state.get("inspected_view")
if cached is None or cached[0] != st.session_state["inspected_key"]:
    cached = (st.session_state["inspected_key"], *part_views(parts))
    st.session_state["inspected_view"] = cached
_, rows, views, sizes = cached
for note in st.session_state.get("inspected_notes", []):
    st.warning(plain(note))
table = pd.DataFrame(rows)
failed = int((table["verdict"] == "fail").sum())
errors = int((table["verdict"] == "error").sum())
inspected, skipped, rate = st.session_state["inspected_summary"]
cols = st.columns(4)
cols[0].metric("Parts", len(table))
cols[1].metric("Failed", failed)
cols[2].metric("Errors", errors)
# (A rate only of parts judged in this upload: not of errors alone, nor of skipped parts.)
judged_now = inspected - st.session_state.get("inspected_errors", 0)
cols[3].metric("Parts / s", f"{rate:.1f}" if judged_now > 0 else "-")
error_kinds = Counter(error_kind(e) for e in table.loc[table["verdict"] == "error", "error"])
if error_kinds["blank image"]:
    st.warning(
        f"{error_kinds['blank image']} blank frame(s): check the camera and its lighting. "
        "Blank frames are not judged (they would pass as good parts)."
    )
if (tile := st.session_state.get("inspected_tile")) is not None:
    # (A tiled model judges a large part at its own resolution: said, since it costs a pass
    # of the network per tile.)
    st.caption(
        f"Parts larger than {tile.size} px were judged tile by tile ({tile.describe()}), "
        f"in the grid {plain(info.name)} was trained on."
    )
else:
    # An untiled model shrinks a part whole to its input: a 4000x3000 frame judged at 640 px
    # passed or failed with no word that a defect a few pixels across was not there to see.
    side = st.session_state.get("inspected_side") or 0
    shrunk = [s for s in sizes if side and max(s[1:]) > SHRUNK_FACTOR * side]
    if shrunk:
        name, width, height = max(shrunk, key=lambda s: s[1] * s[2])
        st.warning(
            f"{len(shrunk)} part(s) over {SHRUNK_FACTOR * side} px (the largest {code(name)}, "
            f"{width}x{height}) were judged whole, shrunk to the {side} px {plain(info.name)} "
            "takes: a defect a few pixels across is lost at that scale. A model trained on "
            "tiles judges them at their own resolution (README: Large images)."
        )
if error_kinds:
    st.caption("Errors by kind: " + ", ".join(f"{k} {n}" for k, n in error_kinds.most_common()))
if skipped:
    st.caption(
        f"{skipped} part(s) had already been inspected by {plain(info.name)}: their stored results are shown."
    )
rejudged = st.session_state.get("rejudged", 0)
if rejudged:
    st.info(
        f"{rejudged} part(s) had been judged by {plain(info.name)} at other thresholds: they were judged "
        "again at the current ones, to a pass or a fail (the earlier verdicts are kept in the "
        "history, superseded; a part judged again to an error is among the errors only)."
    )
# (The error column wide: at its default width "not an image file" was cut off.)
st.dataframe(
    table, hide_index=True, column_config={"error": st.column_config.TextColumn(width="large")}
)

for name, verdict, latency, stored_path, boxes in views[:SHOWN_PARTS]:
    with st.container(border=True):
        badge = ":red[**FAIL**]" if verdict == "fail" else ":green[**PASS**]"
        st.markdown(
            f"{badge} {code(name)} - {latency:.0f} ms" if latency else f"{badge} {code(name)}"
        )
        try:
            pixels = decode_image(Path(stored_path).read_bytes()).pixels
            st.image(draw_boxes(pixels, boxes))
            if max(pixels.shape[:2]) > SHOWN_SIDE and boxes:
                # A large part fits the page shrunk, where a defect of a few pixels is a dot:
                # each box also at the part's own resolution.
                shown_boxes = close_up_choice(boxes, CLOSE_UPS)
                for column, box in zip(st.columns(len(shown_boxes)), shown_boxes, strict=True):
                    column.image(close_up(pixels, box), caption=box.label)
                if len(boxes) > CLOSE_UPS:
                    st.caption(
                        f"{CLOSE_UPS} of {len(boxes)} boxes close up: those that fail the "
                        "part first, most confident first."
                    )
        except (OSError, ImageDecodeError) as exc:
            st.warning(plain(unshown_image(stored_path, exc)))
if len(views) > SHOWN_PARTS:
    # (The table lists the errors too: "the table lists all 61" stood over a table of 63.)
    st.caption(
        f"Showing the first {SHOWN_PARTS} of {len(views)} parts judged; the table lists all "
        f"{len(rows)}" + (", errors included." if len(rows) > len(views) else ".")
    )

"""Every page of the app through Streamlit's AppTest (uploads included), and the chart functions."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session
from streamlit.testing.v1 import AppTest

from dashboard.charts import (
    latency_figure,
    minute_volume_figure,
    model_timeline_figure,
    p_chart,
    pareto_figure,
    rates_figure,
    rates_summary,
    volume_figure,
)
from dashboard.downloads import filtered_results_csv, rows_left_out_of_csv
from dashboard.state import local_time, zone_label
from dashboard.text import code, plain
from db.models import (
    Inspection,
    InspectionRun,
    ModelVersion,
    Part,
    Prediction,
    Review,
    ReviewKind,
    Verdict,
    utcnow,
)
from db.queries import (
    Filters,
    LatencyHistogram,
    LatencySummary,
    MinuteVolume,
    ModelUsage,
    ParetoRow,
    RateRow,
    VolumeRow,
    rates,
)
from db.reviews import reviewed_parts
from db.session import session_scope
from inspection.settings import get_settings
from tests.conftest import (
    Trained,
    import_synthetic,
    migrated,
    register_classifier_copy,
    register_production_detector,
    register_tiny_detector,
)
from tests.synthetic import CLASSES, make_images
from tests.test_db_queries import local_zone

APP = str(Path(__file__).parents[1] / "dashboard" / "app.py")


def _app() -> AppTest:
    return AppTest.from_file(APP, default_timeout=120)


@pytest.fixture
def production(trained: Trained, settings_database: str) -> str:
    """This test's database with the tiny detector in production."""
    register_production_detector(settings_database, trained.weights, get_settings().models_dir)
    return settings_database


def _count(url: str, model) -> int:  # type: ignore[no-untyped-def]
    with session_scope(url) as session:
        return int(session.scalar(select(func.count(model.id))) or 0)


@contextmanager
def _statements(url: str) -> Iterator[list[str]]:
    """The SQL statements sent to `url`'s database meanwhile."""
    from sqlalchemy import event

    from db.session import get_engine

    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    engine = get_engine(url)
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


def _png_files(tmp_path: Path, n: int, seed: int) -> list[tuple[str, bytes, str]]:
    images = make_images(tmp_path / f"up{seed}", n=n, seed=seed)
    return [(i.name, (tmp_path / f"up{seed}" / i.name).read_bytes(), "image/png") for i in images]


def test_the_app_puts_the_project_on_the_import_path_once() -> None:
    """The script runs again at every click: an entry added each time grew the import path
    without end, and every lookup on it slowed by the hour."""
    app = _app().run()
    before = list(sys.path)
    app.run().run()
    assert not app.exception
    assert sys.path == before


def test_inspect_says_how_to_get_a_model_when_there_is_none() -> None:
    at = _app().run()
    assert not at.exception
    assert any("No production model yet" in info.value for info in at.info)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DEFECTS_DATABASE_URL", "postgresql+psycopg://u:pw@127.0.0.1:1/x", "cannot be used"),
        ("DEFECTS_CUDA_GRAPHS", "maybe", "DEFECTS_CUDA_GRAPHS='maybe'"),
        ("DEFECTS_DATA_DIR", "{tmp}/a-file", "a-file is a file, not a folder"),
        ("DEFECTS_DATABASE_URL", "mysql://u:pw@db.example/x", "names 'mysql', which this"),
    ],
    ids=["dead database", "bad setting", "data folder a file", "no driver"],
)
def test_a_dead_database_or_a_bad_setting_is_a_message_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, value: str, message: str
) -> None:
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(variable, value.format(tmp=tmp_path))
    get_settings.cache_clear()
    at = _app().run()
    assert not at.exception
    assert message in at.error[0].value


def test_upload_inspects_stores_and_a_rerun_reinspects_nothing(
    production: str, tmp_path: Path
) -> None:
    at = _app().run()
    assert not at.exception
    at.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 3, 1)).run()
    assert not at.exception, at.exception
    assert _count(production, Inspection) == 3
    with session_scope(production) as session:  # (not what the station is running)
        assert session.scalars(select(InspectionRun.one_off)).all() == [True]
    assert [m.value for m in at.metric][:1] == ["3"]
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) == 3
    at.run()  # a mere rerun
    assert _count(production, Inspection) == 3
    assert not at.info


def test_a_cameras_pgm_and_ppm_uploaded_alone_are_judged_and_the_page_says_it_takes_them(
    production: str, tmp_path: Path
) -> None:
    """The page listed the images it takes from the dataset imports' types, which leave out
    a camera's raw PGM/PPM: an operator read that such a frame goes only inside a zip. Picked
    alone, each is judged as a part, and the page names them among its types."""
    from PIL import Image

    uploads = []
    for name, data, _ in _png_files(tmp_path, 2, 11):
        written = io.BytesIO()
        image = Image.open(io.BytesIO(data))
        image.convert("L" if name.endswith("0.png") else "RGB").save(written, "PPM")
        suffix = ".pgm" if name.endswith("0.png") else ".ppm"
        uploads.append((Path(name).stem + suffix, written.getvalue(), "image/x-portable-anymap"))
    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(uploads).run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert sorted(table["part"]) == sorted(name for name, _, _ in uploads)
    assert not (table["verdict"] == "error").any(), list(table["error"])
    said = " ".join(caption.value for caption in at.caption)
    assert "Images: bmp, jpeg, jpg, pbm, pgm, png, pnm, ppm, tif, tiff, webp or zips" in said


def test_an_export_that_carries_no_record_of_its_weights_is_said_on_the_inspect_page(
    production: str, tmp_path: Path, export_of_trained: Callable[[Path, str], Path]
) -> None:
    """An earlier release's export beside the production weights judges unchecked: the line
    that says so (and how to refresh it), printed by `defects batch`, went to the server's
    log alone."""
    from db.registry import get_model_version
    from tests.test_batch import _as_an_earlier_release_exported

    with session_scope(production) as session:
        weights = Path(get_model_version(session, "tiny").file_path)
    _as_an_earlier_release_exported(export_of_trained(weights, "tiny"))
    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 2, 8)).run()
    assert not at.exception, at.exception
    assert _count(production, Inspection) == 2
    said = [w.value for w in at.warning if "carries no record" in w.value]
    assert len(said) == 1 and "defects export tiny" in said[0]
    at.run()  # (a rerun judges nothing again, and the line stays with the upload's results)
    assert len([w for w in at.warning if "carries no record" in w.value]) == 1


def test_after_a_recalibration_the_same_uploads_are_judged_again(
    production: str, tmp_path: Path
) -> None:
    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 3, 5)).run()
    with session_scope(production) as session:
        version = session.scalars(select(ModelVersion)).one()
        version.thresholds = {**version.thresholds, "default": 0.99}  # recalibrated elsewhere
    at.run()
    assert not at.exception, at.exception
    assert _count(production, Inspection) == 6  # the first three kept, superseded
    assert "3 part(s) had been judged" in at.info[0].value
    with session_scope(production) as session:
        current = session.scalars(select(Inspection).where(Inspection.is_current())).all()
    assert len(current) == 3 and all(i.thresholds["default"] == 0.99 for i in current)


def test_blank_frames_are_called_out_as_a_camera_fault(production: str, tmp_path: Path) -> None:
    from PIL import Image

    black = io.BytesIO()
    Image.new("L", (64, 64)).save(black, format="PNG")
    at = _app().run()
    files = [*_png_files(tmp_path, 1, 6), ("cap-on.png", black.getvalue(), "image/png")]
    at.file_uploader(key="inspect_files").set_value(files).run()
    assert not at.exception, at.exception
    assert any("1 blank frame(s): check the camera" in w.value for w in at.warning)
    assert any("Errors by kind: blank image 1" in c.value for c in at.caption)


def test_a_rerun_of_the_inspect_page_does_not_reload_every_verdict(
    production: str, tmp_path: Path
) -> None:
    """Each widget touched after an upload reloaded every verdict and its detections: about
    seconds after a zip of thousands of parts."""

    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 3, 4)).run()
    assert not at.exception, at.exception
    shown = at.dataframe[0].value
    with _statements(production) as statements:
        at.run()
    assert not at.exception, at.exception
    assert at.dataframe[0].value.equals(shown)
    assert not [q for q in statements if "FROM predictions" in q], statements


def test_a_file_that_is_not_an_image_picked_among_images_is_an_error_row(
    production: str, tmp_path: Path
) -> None:
    """The uploader's filter of suffixes refused a .txt picked among the images with an icon
    alone, no error row (the page stopped where it got through), where a zip's .txt entry is
    an error row: it is one too, and the images beside it are judged."""
    at = _app().run()
    files = [
        *_png_files(tmp_path, 2, 12),
        ("notes.txt", b"shift notes", "text/plain"),
        ("scan.pdf", b"%PDF-1.4 not a part", "application/pdf"),
    ]
    at.file_uploader(key="inspect_files").set_value(files).run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value.set_index("part")
    assert len(table) == 4
    for name in ("notes.txt", "scan.pdf"):
        assert table.loc[name, "verdict"] == "error"
        assert table.loc[name, "error"].startswith("not an image file"), table.loc[name, "error"]
    assert set(table.loc[[n for n, _, _ in files[:2]], "verdict"]) <= {"pass", "fail"}


def test_a_folders_hidden_files_are_left_out_as_batch_leaves_them(
    production: str, tmp_path: Path
) -> None:
    """A folder picked on the Inspect page had macOS's .DS_Store recorded as an error, "not an
    image file", and a thumbnail in a hidden folder judged as a part, where `defects batch`
    on the same folder (and a zip of it) leaves hidden files and folders out."""
    (name, data, kind), (other, other_data, _) = _png_files(tmp_path, 2, 13)
    at = _app().run()
    at.file_uploader(key="inspect_folder").set_value(
        [
            (f"lot/{name}", data, kind),
            ("lot/.DS_Store", b"\x00\x00\x00\x01Bud1", "application/octet-stream"),
            (f"lot/.thumbnails/{other}", other_data, kind),
            ("lot/notes.txt", b"shift notes", "text/plain"),
        ]
    ).run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value.set_index("part")
    assert sorted(table.index) == sorted([f"lot/{name}", "lot/notes.txt"])
    assert table.loc["lot/notes.txt", "verdict"] == "error"


def test_a_folder_of_only_hidden_files_says_so(production: str, tmp_path: Path) -> None:
    """A folder picked that held only hidden files (.DS_Store, a viewer's .thumbnails) read
    as if no folder had been picked: "Upload one image, many, a zip or a folder"."""
    (name, data, kind), *_ = _png_files(tmp_path, 1, 14)
    at = _app().run()
    at.file_uploader(key="inspect_folder").set_value(
        [
            ("lot/.DS_Store", b"\x00\x00\x00\x01Bud1", "application/octet-stream"),
            (f"lot/.thumbnails/{name}", data, kind),
        ]
    ).run()
    assert not at.exception, at.exception
    assert [w.value for w in at.warning] == [
        "The folder picked holds only hidden files (2: ` lot/.DS_Store `, "
        f"` lot/.thumbnails/{name} `), left out as `defects batch` leaves them: no part in "
        "it to inspect. Pick the folder that holds the part images."
    ]
    assert not at.dataframe


def test_zip_upload_with_a_bad_entry(production: str, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data, _ in _png_files(tmp_path, 2, 2):
            archive.writestr(name, data)
        archive.writestr("readme.txt", "not a part")
    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(
        ("lot.zip", buffer.getvalue(), "application/zip")
    ).run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert len(table) == 3 and (table["verdict"] == "error").sum() == 1
    assert "not an image file" in " ".join(table["error"].astype(str))
    # Never judged: blank, not a grey "None"; the parts' latencies to 0.1 ms.
    assert (table.loc[table["verdict"] == "error", "latency ms"] == "").all()
    judged = table.loc[table["verdict"] != "error", "latency ms"]
    assert judged.str.fullmatch(r"\d+\.\d").all(), judged


def test_a_damaged_zip_beside_images_is_one_error_row_and_the_images_are_judged(
    production: str, tmp_path: Path
) -> None:
    """Zip uploads are read entry by entry as the run takes them (not unpacked first): one
    that cannot be opened is still an error row of its own, and the count stays whole."""
    images = _png_files(tmp_path, 2, 6)
    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(
        [("cut.zip", b"PK not a zip", "application/zip"), *images]
    ).run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert list(table["part"]) == ["cut.zip", *(name for name, _, _ in images)]
    assert list(table["verdict"] == "error") == [True, False, False]
    assert table["error"].iloc[0].startswith("cannot open the zip: ")  # (its name is the part's)


def test_a_zip_upload_past_what_a_zip_may_unpack_judges_the_entries_before_the_bound(
    production: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload's entries under the ratio's floor were held to no bound in all: a zip of
    thousands, each packed past 1:1000, filled the image store. Past what the zip may unpack
    (here its first two images), the rest are error rows, never unpacked; the page says so."""
    import inspection.batch

    images = _png_files(tmp_path, 3, 8)
    monkeypatch.setattr(inspection.batch, "MAX_ZIP_UNPACK_RATIO", 0)  # (the floor alone)
    monkeypatch.setattr(
        inspection.batch, "ZIP_UNPACK_FLOOR_BYTES", len(images[0][1]) + len(images[1][1])
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data, _ in images:
            archive.writestr(name, data)
    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(
        [("lot.zip", buffer.getvalue(), "application/zip")]
    ).run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert list(table["part"]) == [f"lot.zip:{name}" for name, _, _ in images]
    assert list(table["verdict"] == "error") == [False, False, True]
    assert table["error"].iloc[2].startswith("zip unpacks too far (past ")
    said = " ".join(caption.value for caption in at.caption)
    assert "entries past what it may unpack in all (0 times its size, at least 0 GB)" in said


def test_a_blank_raw_frame_in_a_zip_upload_is_a_blank_frame_and_a_bomb_beside_it_refused(
    production: str,
) -> None:
    """A camera's uncompressed BMP of a blank frame (5 MB, packed past 1:1000) was an error
    row "zip entry too compressed", as a zip bomb is; it is now the blank frame it is, and a
    BMP header with more zeros behind it than it explains is still refused, unread."""
    from PIL import Image

    frame = io.BytesIO()
    Image.new("L", (2401, 2000), 40).save(frame, "BMP")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("frame-1.bmp", frame.getvalue())
        archive.writestr("frame-2.bmp", frame.getvalue()[:1078] + bytes(20_000_000))
    bomb = zipfile.ZipFile(buffer).getinfo("frame-2.bmp")
    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(
        [("lot.zip", buffer.getvalue(), "application/zip")]
    ).run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert list(table["part"]) == ["lot.zip:frame-1.bmp", "lot.zip:frame-2.bmp"]
    assert list(table["error"]) == [
        "blank image (every pixel at gray level 40): check the camera and its lighting",
        f"zip entry too compressed ({bomb.file_size // bomb.compress_size}:1, 20 MB from "
        f"{bomb.compress_size / 1e3:.0f} kB; past 100:1 only an uncompressed image of the size "
        "its header gives is read): not read",
    ]
    said = " ".join(caption.value for caption in at.caption)
    assert "an uncompressed BMP, TIFF or PGM/PPM of the size its header gives" in said


def test_a_zip_upload_of_too_many_entries_is_one_error_row_and_the_images_are_judged(
    production: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zip of millions of tiny entries was read into a list of them all before the first
    was judged, each a row: refused from its end record, it is one error row of its own."""
    import inspection.batch

    monkeypatch.setattr(inspection.batch, "MAX_ZIP_ENTRIES", 2)
    images = _png_files(tmp_path, 3, 6)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data, _ in images:
            archive.writestr(name, data)
    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(
        [("many.zip", buffer.getvalue(), "application/zip"), *images[:1]]
    ).run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert list(table["part"]) == ["many.zip", images[0][0]]
    assert list(table["verdict"] == "error") == [True, False]
    assert table["error"].iloc[0].startswith("too many entries in the zip (3 entries, at most 2:")
    said = " ".join(caption.value for caption in at.caption)  # (the page says its limits)
    assert "entries over 4 MB packed past 100:1" in said and "a zip of over 2 entries" in said
    # (In the batch's own units, as README gives them: 256 MB, not 268 "MB" of 10^6 bytes.)
    assert f"{inspection.batch.MAX_FILE_BYTES >> 20} MB and" in said and "256 MB and" in said


def test_an_uploaded_file_over_a_batchs_size_limit_is_refused_as_a_batch_refuses_it(
    production: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uploads may be twice a batch's file limit: such an image, hundreds of megabytes
    appended, was decoded and kept whole in the image store."""
    import inspection.batch

    (name, data, kind), (big_name, big, _) = _png_files(tmp_path, 2, 8)
    monkeypatch.setattr(inspection.batch, "MAX_FILE_BYTES", len(data) + 1000)
    padded = big + b"\0" * (len(data) + 2000)  # (an image all the same, its tail ignored)
    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(
        [(name, data, kind), (big_name, padded, kind)]
    ).run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value.set_index("part")
    assert table.loc[name, "verdict"] != "error"
    assert table.loc[big_name, "verdict"] == "error"
    assert table.loc[big_name, "error"].startswith("file too large (")
    kept = [f.stat().st_size for f in get_settings().images_dir.rglob("*") if f.is_file()]
    assert kept == [len(data)]


def test_review_page_records_a_review(production: str, tmp_path: Path) -> None:
    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 2, 3)).run()
    at.switch_page("views/review.py").run()
    assert not at.exception, at.exception
    at.text_input(key="reviewer").input("Ana").run()
    next(b for b in at.button if b.label == "Mark part good").click().run()
    assert not at.exception, at.exception
    assert _count(production, Review) == 1


def test_review_counts_every_part_waiting_not_only_those_listed(
    production: str, tmp_path: Path
) -> None:
    """The caption said "50 part(s) waiting" (the parts listed) when a PCB batch had left 240
    parts to review."""
    from typer.testing import CliRunner

    from training.cli import app

    make_images(tmp_path / "parts", n=55, seed=11)
    args = ["batch", str(tmp_path / "parts"), "--line", "L", "--station", "S"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    at = _app().run()
    at.switch_page("views/review.py").run()
    assert not at.exception, at.exception
    captions = " ".join(c.value for c in at.caption)
    assert "55 part(s) waiting" in captions
    assert "the 50 least certain are listed" in captions
    assert len(at.selectbox(key="review_part").options) == 50


def _two_failed_parts_on_review(
    production: str, tmp_path: Path, confidences: tuple[float, ...] = (0.9,)
) -> AppTest:
    """Two uploaded parts, each failed with a detection of each confidence (as a model would
    give), on the Review page with a reviewer named."""
    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 2, 3)).run()
    with session_scope(production) as session:
        for inspection in session.scalars(select(Inspection)):
            inspection.verdict = Verdict.FAIL
            for confidence in confidences:
                inspection.predictions.append(
                    Prediction(
                        class_name=CLASSES[0], confidence=confidence, x1=2, y1=2, x2=20, y2=20
                    )
                )
    at.switch_page("views/review.py").run()
    at.text_input(key="reviewer").input("Ana").run()
    return at


def test_review_keeps_a_part_until_each_detection_is_decided(
    production: str, tmp_path: Path
) -> None:
    at = _two_failed_parts_on_review(production, tmp_path, (0.9, 0.4))
    # Three decimals: near a threshold, a counted detection and one below it read alike.
    assert any(
        m.value.startswith("2. ") and f">{plain(CLASSES[0] + ' 0.400')}</span>" in m.value
        for m in at.markdown
    )
    first = at.selectbox(key="review_part").value
    next(b for b in at.button if b.label == "Confirm defect").click().run()
    assert not at.exception, at.exception
    # Still the same part (its other detection is undecided), with one decision shown.
    assert at.selectbox(key="review_part").value == first
    assert any("confirmed defect" in m.value for m in at.markdown)
    next(b for b in at.button if b.label.startswith("The other")).click().run()
    assert not at.exception, at.exception
    assert f"Part {first} reviewed." in at.success[0].value
    assert at.selectbox(key="review_part").value != first  # on to the other part
    assert at.selectbox(key="review_part").options[1:] == [f"part {first} (just reviewed)"]


def test_a_defect_missed_on_a_part_just_finished_can_still_be_added(
    production: str, tmp_path: Path
) -> None:
    """The missed-defect form sits below the detections: a reviewer who decided them first
    saw the part leave at the last decision, with no way back to add the defect it missed;
    the export then taught that defect as background."""
    at = _two_failed_parts_on_review(production, tmp_path)
    first = at.selectbox(key="review_part").value
    next(b for b in at.button if b.label == "Confirm defect").click().run()
    assert not at.exception, at.exception
    assert at.selectbox(key="review_part").value != first  # on to the next part, as before
    assert any(f'"part {first} (just reviewed)"' in i.value for i in at.info)
    at.selectbox(key="review_part").set_value(first).run()
    suffix = f"{first}_0_None"
    for corner, value in zip(("x1", "y1", "x2", "y2"), (30, 30, 40, 44), strict=True):
        at.number_input(key=f"{corner}_{suffix}").set_value(value)
    next(b for b in at.button if b.label == "Add missed defect").click().run()
    assert not at.exception, at.exception
    assert f"Missed {CLASSES[0]} added to part {first}." in at.success[0].value
    with session_scope(production) as session:
        truth = {t.part_id: t for t in reviewed_parts(session)}
    assert truth[first].complete and len(truth[first].boxes) == 2


def test_a_part_marked_good_says_by_whom_and_what_it_counts_as(
    production: str, tmp_path: Path
) -> None:
    """The page never said a part was marked good: a reviewer about to confirm a defect on it
    was not told, and the rates then counted it defective. It says who marked it good and
    when, and what the rates count it as, before and after a defect is confirmed on it (and
    at the confirmation, what it did to the part's standing)."""
    at = _two_failed_parts_on_review(production, tmp_path)
    first = at.selectbox(key="review_part").value
    next(b for b in at.button if b.label == "Mark part good").click().run()
    at.selectbox(key="review_part").set_value(first).run()
    assert not at.exception, at.exception
    assert any(
        i.value.startswith(plain("Marked good by Ana (")) and "counted good" in i.value
        for i in at.info
    )
    with session_scope(production) as session:
        (before,) = rates(session)
    assert (before.n_defective, before.n_good) == (0, 1)
    at.text_input(key="reviewer").input("Bob").run()
    next(b for b in at.button if b.label == "Confirm defect").click().run()
    assert not at.exception, at.exception
    # Said at the click, which moves on to the next part: it said nothing of what changed.
    assert [s.value for s in at.success] == [
        f"Your confirmation of detection 1 of part {first} recorded. Part {first}, marked "
        "good by Ana, now counts defective in the rates and the export: a defect on it stands."
    ]
    at.selectbox(key="review_part").set_value(first).run()
    assert not at.exception, at.exception
    assert any(
        w.value.startswith(plain("Marked good by Ana (")) and "count the part defective" in w.value
        for w in at.warning
    )
    with session_scope(production) as session:
        (after,) = rates(session)
    assert (after.n_defective, after.n_good) == (1, 0)


def test_a_reviewer_adds_a_new_defect_type_and_the_next_one_picks_it(
    production: str, tmp_path: Path
) -> None:
    """The class list held the production detector's classes only: a new defect type on the
    line could not be recorded, nor exported to retrain on."""
    at = _two_failed_parts_on_review(production, tmp_path)
    first = at.selectbox(key="review_part").value

    def add(class_typed: str, corners: tuple[int, int, int, int], added: int) -> None:
        part = at.selectbox(key="review_part").value
        for corner, value in zip(("x1", "y1", "x2", "y2"), corners, strict=True):
            at.number_input(key=f"{corner}_{part}_{added}_None").set_value(value)
        at.text_input(key=f"new_class_{part}_{added}").input(class_typed)
        next(b for b in at.button if b.label == "Add missed defect").click().run()
        assert not at.exception, at.exception

    add("crack", (30, 30, 40, 44), 0)
    assert "Missed crack (a new class: not one the production detector knows) added" in (
        at.success[0].value
    )
    assert at.selectbox(key="review_part").value == first  # its detections are undecided
    assert "crack (new class)" in at.selectbox(key=f"missed_class_{first}_1").options
    add("crak", (10, 10, 20, 24), 1)  # a typo of the new class is not a second one
    assert any(plain("new class 'crak' looks like 'crack'") in e.value for e in at.error)
    with session_scope(production) as session:
        classes = [r.class_name for r in session.scalars(select(Review))]
    assert classes == ["crack"]
    # Exported while none of its defects is on a part done (the other part marked good): the
    # caveat is a warning, apart from the list of parts left out.
    other = next(p for p in at.selectbox(key="review_part").options if str(first) not in p)
    at.selectbox(key="review_part").select(other).run()
    next(b for b in at.button if b.label == "Mark part good").click().run()
    next(b for b in at.button if b.label == "Export reviewed parts").click().run()
    assert not at.exception, at.exception
    assert any("new class crack" in w.value and "not a class" in w.value for w in at.warning)
    assert not any("new class crack" in c.value for c in at.caption)


def test_a_part_partly_reviewed_then_judged_again_is_finished_on_the_page_and_exported(
    production: str, tmp_path: Path
) -> None:
    """One of its two detections confirmed, then the part judged again after a recalibration:
    it left the Review page with its other detection undecided, and no export ever took it."""
    at = _two_failed_parts_on_review(production, tmp_path, (0.9, 0.4))
    first = at.selectbox(key="review_part").value
    next(b for b in at.button if b.label == "Confirm defect").click().run()
    assert not at.exception, at.exception
    with session_scope(production) as session:
        earlier = session.scalars(select(Inspection).where(Inspection.part_id == first)).one()
        earlier.superseded_at = utcnow()
        again = Inspection(part_id=first, verdict=Verdict.FAIL, inspected_at=utcnow())
        again.predictions.append(
            Prediction(class_name=CLASSES[0], confidence=0.9, x1=2, y1=2, x2=20, y2=20)
        )
        session.add(again)
    at = _app().run()  # (the next day: the part is not the one this page reviewed last)
    at.switch_page("views/review.py").run()
    at.text_input(key="reviewer").input("Ana").run()
    assert not at.exception, at.exception
    assert f"part {first} (margin 0.15)" in at.selectbox(key="review_part").options
    at.selectbox(key="review_part").set_value(first).run()
    assert any("Judged again since" in m.value for m in at.markdown)
    assert any("confirmed defect" in m.value for m in at.markdown)
    [false_call] = [b for b in at.button if b.label == "False call"]  # the one left
    false_call.click().run()
    assert not at.exception, at.exception
    assert at.selectbox(key="review_part").options[1:] == [f"part {first} (just reviewed)"]
    assert at.selectbox(key="review_part").value != first  # on to the other part
    next(b for b in at.button if b.label == "Mark part good").click().run()
    next(b for b in at.button if b.label == "Export reviewed parts").click().run()
    assert not at.exception, at.exception
    assert "Exported 2 parts" in at.success[0].value


def test_a_part_judged_by_another_model_with_nothing_decided_is_not_said_judged_again(
    production: str, tmp_path: Path
) -> None:
    """A part judged by two model versions (both verdicts current) and shown with the older,
    whose margin is the smaller: the page said it was shown with the verdict its detections
    were decided on, where none was decided."""
    at = _two_failed_parts_on_review(production, tmp_path)
    first = at.selectbox(key="review_part").value
    with session_scope(production) as session:  # (nothing found: the most certain verdict)
        session.add(Inspection(part_id=first, verdict=Verdict.PASS, inspected_at=utcnow()))
    at.selectbox(key="review_part").set_value(first).run()
    assert not at.exception, at.exception
    assert any("**: FAIL." in m.value for m in at.markdown)  # (the older verdict shown)
    assert not any("Judged again since" in m.value for m in at.markdown)


def test_a_click_meant_for_a_part_done_elsewhere_lands_on_no_other_part(
    production: str, tmp_path: Path
) -> None:
    """Ana and Bob on one part; Ana marks it good, then Bob's "Mark part good" (or an Add)
    was recorded on the next part of the queue, which Bob never saw."""
    first = _app().run()
    first.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 3, 7)).run()
    ana, bob = _app().run(), _app().run()
    for at, name in ((ana, "Ana"), (bob, "Bob")):
        at.switch_page("views/review.py").run()
        at.text_input(key="reviewer").input(name).run()
    shown = bob.selectbox(key="review_part").value
    assert ana.selectbox(key="review_part").value == shown
    next(b for b in ana.button if b.label == "Mark part good").click().run()
    next(b for b in bob.button if b.label == "Mark part good").click().run()
    assert not bob.exception, bob.exception
    with session_scope(production) as session:
        reviews = [(r.reviewer, r.part_id) for r in session.scalars(select(Review))]
    assert reviews == [("Ana", shown)]  # Bob's click is dropped, not put on another part
    assert any(f"Part {shown} is no longer waiting" in i.value for i in bob.info)
    assert bob.selectbox(key="review_part").value != shown
    # An Add pressed with no box drawn or typed: no whole-image defect.
    next(b for b in bob.button if b.label == "Add missed defect").click().run()
    assert not bob.exception, bob.exception
    assert any("drag a box" in e.value for e in bob.error) and _count(production, Review) == 1
    # Ana's mistake is undone: the part she marked good is waiting again.
    next(b for b in ana.button if b.label.startswith("Undo my last review")).click().run()
    assert not ana.exception, ana.exception
    assert _count(production, Review) == 0
    waiting = ana.selectbox(key="review_part").options
    assert any(o.startswith(f"part {shown} ") for o in waiting)


def test_a_missed_defect_added_is_drawn_and_listed_on_the_part(
    production: str, tmp_path: Path
) -> None:
    """The Review page drew the model's boxes only: a reviewer who added a missed defect saw no
    box where it landed, and the next reviewer could not tell it was there already."""
    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 1, 3)).run()
    with session_scope(production) as session:  # one detection, left undecided
        inspection = session.scalars(select(Inspection)).one()
        inspection.verdict = Verdict.FAIL
        inspection.predictions.append(
            Prediction(class_name=CLASSES[0], confidence=0.9, x1=2, y1=2, x2=20, y2=20)
        )
    at.switch_page("views/review.py").run()
    at.text_input(key="reviewer").input("Ana").run()
    part = at.selectbox(key="review_part").value
    suffix = f"{part}_0_None"
    for corner, value in zip(("x1", "y1", "x2", "y2"), (30, 31, 40, 44), strict=True):
        at.number_input(key=f"{corner}_{suffix}").set_value(value)
    next(b for b in at.button if b.label == "Add missed defect").click().run()
    assert not at.exception, at.exception
    assert at.selectbox(key="review_part").value == part  # its detection is still undecided
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    drawn = [(s["x0"], s["y0"], s["x1"], s["y1"]) for s in figure["layout"]["shapes"]]
    assert drawn == [(2, 2, 20, 20), (30, 31, 40, 44)]
    labels = [a["text"] for a in figure["layout"]["annotations"]]
    assert labels[1] == f"missed: {CLASSES[0]}"
    assert any(f"missed {CLASSES[0]}, added by Ana" in m.value for m in at.markdown)


HOSTILE_NAMES = [
    "**bold** _it_ ~~s~~",
    "[manual](http://example.com) <b>x</b> <script>alert(1)</script>",
    ":fire: :red[alarm] $x^2$ :material/home:",
    "`tick` ``two`` # not a heading",
    "1. not a list\n- nor this\t| a | b |",
    "=HYPERLINK(1) &amp; \\* www.example.com",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_name_shown_in_markdown_reads_as_it_is(name: str) -> None:
    """Streamlit reads messages, captions and labels as Markdown (with emoji codes, colours and
    formulas): a part named `**x**` showed bold, a link a link, `:fire:` an emoji. `plain` and
    `code` show the name itself (its newlines and tabs as spaces)."""
    import html
    import re

    from markdown_it import MarkdownIt

    from dashboard.text import WORD_JOINER

    parse = MarkdownIt("commonmark").enable(["table", "strikethrough"])
    one_line = " ".join(name.replace("\t", " ").split("\n"))
    for shown, tags in ((plain(name), ["p"]), (code(name), ["p", "code"])):
        rendered = parse.render(f"part {shown} judged").strip()
        inner = rendered.removeprefix("<p>").removesuffix("</p>")
        if tags == ["p", "code"]:
            assert inner.count("<code>") == 1
            inner = inner.replace("<code>", "").replace("</code>", "")
        assert sorted(re.findall(r"</?(\w+)", rendered)) == sorted(tags * 2), rendered
        text = html.unescape(inner).replace(WORD_JOINER, "")
        assert text == f"part {one_line} judged"
        # Streamlit's emoji codes, colours and icons start with a colon before a word, and
        # its formulas with an unescaped dollar.
        assert not re.search(r":[\w+-]", html.unescape(inner))
        assert "\n" not in shown and (tags != ["p"] or not re.search(r"(?<!\\)\$", shown))


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_name_on_its_class_colour_reads_as_it_is_with_html_allowed(name: str) -> None:
    """The Review page's list shows each class on its colour in a span, with HTML allowed:
    a class named with HTML in it still reads as typed, no tag of its own."""
    import html
    import re

    from markdown_it import MarkdownIt

    from dashboard.drawing import CLASS_COLOURS, label_markdown
    from dashboard.text import WORD_JOINER

    rendered = MarkdownIt("commonmark").render(label_markdown(name, CLASS_COLOURS[3])).strip()
    assert re.findall(r"</?(\w+)", rendered) == ["p", "span", "span", "p"], rendered
    shown = html.unescape(re.sub(r"<[^>]*>", "", rendered)).replace(WORD_JOINER, "")
    assert shown == " ".join(name.replace("\t", " ").split("\n"))
    assert 'style="background-color: #f0e442; color: #000000;' in rendered  # (on yellow)


def test_hostile_names_read_as_they_are_on_the_pages(production: str, tmp_path: Path) -> None:
    """A part's file name, a line's, a station's and a reviewer's showed as Markdown on the
    Inspect, Review, Live and Settings pages."""
    name = "**x** [a](http://e) :fire:.png"
    [(_, data, kind)] = _png_files(tmp_path, 1, 3)
    from db.registry import ensure_station

    with session_scope(production) as session:
        ensure_station(session, "[L](http://x)", ":red[S]")
    at = _app().run()
    at.selectbox(key="inspect_line").set_value("[L](http://x)").run()
    at.selectbox(key="inspect_station_[L](http://x)").set_value(":red[S]").run()
    at.file_uploader(key="inspect_files").set_value([(name, data, kind)]).run()
    assert not at.exception, at.exception
    assert any(code(name) in m.value for m in at.markdown)
    with session_scope(production) as session:  # one detection, so that the part fails
        inspection = session.scalars(select(Inspection)).one()
        inspection.verdict = Verdict.FAIL
        inspection.predictions.append(
            Prediction(class_name=CLASSES[0], confidence=0.9, x1=2, y1=2, x2=20, y2=20)
        )
    at.switch_page("views/review.py").run()
    assert any(f"**{plain(name)}**" in m.value for m in at.markdown)
    who = "*Ana* :fire:"
    at.text_input(key="reviewer").input(who).run()
    suffix = f"{at.selectbox(key='review_part').value}_0_None"
    for corner, value in zip(("x1", "y1", "x2", "y2"), (30, 31, 40, 44), strict=True):
        at.number_input(key=f"{corner}_{suffix}").set_value(value)
    next(b for b in at.button if b.label == "Add missed defect").click().run()
    assert not at.exception, at.exception
    assert any(f"added by {plain(who)}" in m.value for m in at.markdown)
    at.switch_page("views/live.py").run()
    assert any(f"**Last failed part**: {code(name)}" == m.value for m in at.markdown)
    at.switch_page("views/settings.py").run()
    inputs = {t.label: t for t in at.text_input}
    inputs["Line"].input("**L2**")
    inputs["Station"].input("$S$")
    next(b for b in at.button if b.label == "Add").click().run()
    assert any(f"{plain('**L2**')} / {plain('$S$')} added." == m.value for m in at.success)
    # The same station typed decomposed (NFD, a Mac keyboard) is the one there: it was said
    # to be added.
    import unicodedata

    for form in ("NFC", "NFD"):
        inputs = {t.label: t for t in at.text_input}
        inputs["Line"].input(unicodedata.normalize(form, "Línea 9"))
        inputs["Station"].input("S")
        next(b for b in at.button if b.label == "Add").click().run()
    assert any(f"{plain('Línea 9')} / S is there already." == m.value for m in at.info)


def test_an_undone_review_shows_its_part_again(production: str, tmp_path: Path) -> None:
    """A part marked good by mistake: the page moved on to the next part, and after the undo
    it stayed there, the part to decide again somewhere down the list."""
    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 3, 7)).run()
    at.switch_page("views/review.py").run()
    at.text_input(key="reviewer").input("Ana").run()
    first = at.selectbox(key="review_part").value
    next(b for b in at.button if b.label == "Mark part good").click().run()
    assert at.selectbox(key="review_part").value != first  # on to the next part
    next(b for b in at.button if b.label.startswith("Undo my last review")).click().run()
    assert not at.exception, at.exception
    assert _count(production, Review) == 0
    assert at.selectbox(key="review_part").value == first
    assert any(b.label == "Mark part good" for b in at.button)


def test_undo_is_offered_only_while_there_is_a_review_to_undo(
    production: str, tmp_path: Path
) -> None:
    """After Ana undid her only review of a part, "Undo my last review of part N" stayed, and
    a click on it only warned that she had no review of it to undo."""
    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 2, 7)).run()
    at.switch_page("views/review.py").run()
    at.text_input(key="reviewer").input("Ana").run()
    next(b for b in at.button if b.label == "Mark part good").click().run()
    next(b for b in at.button if b.label.startswith("Undo my last review")).click().run()
    assert not at.exception, at.exception
    assert _count(production, Review) == 0
    assert not any(b.label.startswith("Undo my last review") for b in at.button)
    at.text_input(key="reviewer").input("Bob").run()  # (nor for another name on this page)
    assert not any(b.label.startswith("Undo my last review") for b in at.button)


def test_a_second_export_of_reviews_is_offered_a_free_name(production: str, tmp_path: Path) -> None:
    """The name offered was always "reviews": every export after the first one was refused,
    "a dataset named 'reviews' already exists", with nothing said of what to do."""
    from db.models import Dataset
    from db.reviews import add_missed_defect

    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 1, 3)).run()
    with session_scope(production) as session:
        part_id = session.scalars(select(Part.id)).one()
        add_missed_defect(session, part_id, CLASSES[0], (4, 4, 20, 20), "Ana")
    at.switch_page("views/review.py").run()
    for expected in ("reviews", "reviews-2"):
        field = next(t for t in at.text_input if t.label == "New dataset name")
        assert field.value == expected
        next(b for b in at.button if b.label == "Export reviewed parts").click().run()
        assert not at.exception and not at.error, at.error
        assert f"as dataset {plain(expected)}:" in at.success[0].value
        at.run()
    with session_scope(production) as session:
        assert set(session.scalars(select(Dataset.name))) == {"reviews", "reviews-2"}


def test_an_empty_zip_upload_says_so(production: str) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("folder/", "")
    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(
        ("empty.zip", buffer.getvalue(), "application/zip")
    ).run()
    assert not at.exception, at.exception  # was a KeyError traceback
    assert any("holds no image" in w.value for w in at.warning)


def test_the_station_choice_follows_the_line(production: str) -> None:
    from db.registry import ensure_station

    with session_scope(production) as session:
        ensure_station(session, "Line 1", "Station 1")
        ensure_station(session, "Line 2", "Cam A")
    at = _app().run()
    assert at.selectbox(key="inspect_station_Line 1").value == "Station 1"
    at.selectbox(key="inspect_line").set_value("Line 2").run()
    assert at.selectbox(key="inspect_station_Line 2").value == "Cam A"


def test_a_database_broken_after_the_start_is_a_message_on_any_page(
    production: str, tmp_path: Path
) -> None:
    at = _app().run()
    at.switch_page("views/history.py").run()
    assert not at.exception, at.exception
    from db.session import get_engine

    get_engine(production).dispose()  # the app's connections are opened again
    database = Path(production.removeprefix("sqlite:///"))
    for gone in database.parent.glob(database.name + "*"):  # the file, its WAL and index
        gone.unlink()
    database.mkdir()  # a file that cannot be opened any more (a volume gone, say)
    at.run()
    assert not at.exception, at.exception
    assert "The database cannot be used right now" in at.error[0].value


def test_history_models_and_settings_pages(production: str, tmp_path: Path) -> None:
    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 2, 4)).run()
    at.switch_page("views/history.py").run()
    assert not at.exception, at.exception
    assert len(at.get("plotly_chart")) >= 3
    said = "holds the parts `defects inspect` recorded without --line"
    assert not any(said in c.value for c in at.caption)
    # The line `defects inspect` records at without --line: said, as a line of that name
    # shares its history.
    from db.registry import UNNAMED_LINE, ensure_station

    with session_scope(production) as session:
        ensure_station(session, UNNAMED_LINE, UNNAMED_LINE)
    at.run()
    assert any(said in c.value for c in at.caption)
    assert at.get("download_button")
    # The download's rows, built only when its button is pressed: the 2 parts just judged.
    with session_scope(production) as session:  # (a latency as the clock gives it)
        session.execute(update(Inspection).values(latency_ms=12.345678))
    rows = list(csv.DictReader(io.StringIO(filtered_results_csv(production, Filters()).decode())))
    assert len(rows) == _count(production, Inspection) == 2
    assert {r["latency_ms"] for r in rows} == {"12.3"}  # (to 0.1 ms, as the feed gives it)
    assert {r["verdict"] for r in rows} <= {"pass", "fail"} and rows[0]["content_hash"]
    at.switch_page("views/models.py").run()
    assert not at.exception, at.exception
    assert "tiny" in at.dataframe[0].value["name"].tolist()
    # Stored in UTC, shown in the server's local time and said so, as the other pages' times.
    [created] = [c for c in at.dataframe[0].value.columns if c.startswith("created")]
    assert created == f"created ({zone_label()})"
    with session_scope(production) as session:
        stored = session.scalars(select(ModelVersion.created_at)).first()
    assert local_time(stored) in at.dataframe[0].value[created].tolist()  # type: ignore[arg-type]
    # The first production detector: nothing to roll back to, said on the button (it was
    # offered, and pressed to learn it).
    [button] = [b for b in at.button if b.label.startswith("Roll back")]
    assert button.label == "Roll back tiny" and button.disabled
    at.switch_page("views/settings.py").run()
    assert not at.exception, at.exception
    assert {s.label for s in at.slider} == set(CLASSES)


def test_history_says_what_a_capped_download_leaves_out(
    production: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The download held the newest 100000 verdicts of the selection without a word: a month of
    a busy line looked complete with most of it missing."""
    import dashboard.downloads

    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 3, 4)).run()
    monkeypatch.setattr(dashboard.downloads, "CSV_ROW_LIMIT", 2)
    at.switch_page("views/history.py").run()
    assert not at.exception, at.exception
    assert any("newest 2 verdicts" in w.value and "1 older" in w.value for w in at.warning)
    rows = list(
        csv.DictReader(io.StringIO(filtered_results_csv(production, Filters(), 2).decode()))
    )
    assert len(rows) == 2
    assert rows_left_out_of_csv(production, Filters(), 3) == 0


def _calibrate_on_settings_page(
    url: str, tmp_path: Path, n_images: int, choice: str, value: str
) -> AppTest:
    """A synthetic dataset imported, one choice of the calibration form set, Calibrate pressed."""
    import_synthetic(url, tmp_path, n=n_images)
    at = _app().run()
    at.switch_page("views/settings.py").run()
    next(s for s in at.selectbox if s.label == choice).set_value(value)
    next(b for b in at.button if b.label == "Calibrate").click().run()
    assert not at.exception, at.exception
    return at


def test_settings_calibrates_one_shared_threshold(production: str, tmp_path: Path) -> None:
    with session_scope(production) as session:
        before = session.scalars(select(ModelVersion.thresholds)).one()
    at = _calibrate_on_settings_page(production, tmp_path, 12, "Class thresholds", "shared")
    assert not at.error, at.error[0].value
    # Shown, with what the split cannot show, before it replaces the production thresholds.
    assert any("cannot show a miss rate" in w.value for w in at.warning)
    with session_scope(production) as session:
        assert session.scalars(select(ModelVersion.thresholds)).one() == before
    next(b for b in at.button if b.label.startswith("Use these thresholds")).click().run()
    assert not at.exception, at.exception
    assert "Stored as the operating point" in at.success[0].value
    with session_scope(production) as session:
        thresholds = session.scalars(select(ModelVersion.thresholds)).one()
    assert thresholds["calibration"]["class_thresholds"] == "shared"
    assert len(set(thresholds["per_class"].values())) == 1
    # The sliders now show the calibrated thresholds, so a save keeps them (it once stored
    # back the values from before the calibration).
    shared = round(next(iter(thresholds["per_class"].values())), 2)
    assert [round(s.value, 2) for s in at.slider] == [shared] * len(at.slider)
    next(b for b in at.button if b.label == "Save thresholds").click().run()
    assert "Saved" in at.success[0].value
    with session_scope(production) as session:
        saved = session.scalars(select(ModelVersion.thresholds)).one()["per_class"]
    assert {round(v, 2) for v in saved.values()} == {shared}


def test_settings_verification_without_a_classifier_is_a_message(
    production: str, tmp_path: Path
) -> None:
    at = _calibrate_on_settings_page(production, tmp_path, 6, "Crop verification", "auto")
    assert "needs a classifier" in at.error[0].value
    # Said in the page's words: it named the command line's --classifier, which the page has not.
    assert "choose one under Classifier" in at.error[0].value
    assert "--classifier" not in at.error[0].value
    # (The page's limit of the target is the command line's: 0.5 here, 0.99 there.)
    from training.calibrate import MAX_MISS_RATE_TARGET

    target = next(n for n in at.number_input if n.label == "Largest acceptable miss rate")
    assert target.max == MAX_MISS_RATE_TARGET


def test_live_page_shows_each_station_and_the_last_failed_part(
    production: str, tmp_path: Path
) -> None:
    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 4, 9)).run()
    at.switch_page("views/live.py").run()
    assert not at.exception, at.exception
    stations = at.dataframe[0].value
    assert stations["verdicts"].sum() == 4
    assert stations["status"].str.contains("last verdict").all()
    # The model each station judges with: after a promotion, one not started again judges on
    # with the earlier model, which nothing on the floor showed.
    assert (stations["model"] == "tiny").all()
    assert len(at.dataframe[1].value) == 4  # the latest parts
    assert at.get("plotly_chart")  # parts per minute
    assert any("No failed part yet" in c.value for c in at.caption)  # (the tiny model failed none)
    # Live counts a repeated blank frame each time, History once: each page says which.
    assert any("each time it came (the History page" in c.value for c in at.caption)
    at.switch_page("views/history.py").run()
    assert any(c.value.startswith("Each part once, at its current verdict") for c in at.caption)
    at.switch_page("views/live.py").run()
    with session_scope(production) as session:  # a defect found in one of them, as a model would
        inspection = session.scalars(select(Inspection)).first()
        assert inspection is not None
        inspection.verdict = Verdict.FAIL
        inspection.predictions.append(
            Prediction(class_name=CLASSES[0], confidence=0.9, x1=2, y1=2, x2=20, y2=20)
        )
    at.run()
    assert not at.exception, at.exception
    assert at.dataframe[0].value["failed"].sum() == 1
    assert len(at.get("image")) == 1, "the last failed part is shown with its defect"


def test_empty_live_page_says_what_to_do() -> None:
    at = _app()
    at.run()
    at.switch_page("views/live.py").run()
    assert not at.exception
    assert any("--watch" in i.value for i in at.info)
    # A station with no part yet (the demo line a fresh install makes): it crashed the page.
    from db.registry import ensure_station

    with session_scope(get_settings().resolved_database_url) as session:
        ensure_station(session, "Demo line", "Station 1")
    at.run()
    assert not at.exception, at.exception
    assert at.dataframe[0].value["status"].tolist() == ["no run yet"]
    assert any("No part judged yet" in c.value for c in at.caption)


def test_live_page_tells_a_station_watching_for_its_first_part_from_one_that_never_ran() -> None:
    """A watch started at a station, no part come yet (or killed before one), and a station
    that never ran both read "no part yet"."""
    from db.models import InspectionRun
    from db.registry import ensure_station

    url = get_settings().resolved_database_url
    migrated(url)
    with session_scope(url) as session:
        ensure_station(session, "Line 1", "Cam A")
        watching = ensure_station(session, "Line 1", "Cam B")
        done = ensure_station(session, "Line 1", "Cam C")
        for station, finished in [(watching, None), (done, utcnow())]:
            session.add(
                InspectionRun(
                    line_id=station.line_id,
                    station_id=station.id,
                    source="hot/",
                    finished_at=finished,
                )
            )
    at = _opened("live")
    assert at.dataframe[0].value["status"].tolist() == [
        "no run yet",
        "run open, no part yet",
        "run finished, no part",
    ]


def test_empty_history_says_what_to_do() -> None:
    at = _app()
    at.run()
    at.switch_page("views/history.py").run()
    assert not at.exception
    assert any("No inspections" in i.value for i in at.info)


def test_p_chart_limits_by_hand() -> None:
    # p-bar = 6 / 40 = 0.15; n = 10: 3 * sqrt(0.15 * 0.85 / 10) = 0.3387...
    chart = p_chart([1, 0, 5, 0], [10, 10, 10, 10])
    assert chart.center == pytest.approx(0.15)
    assert chart.upper[0] == pytest.approx(0.15 + 3 * (0.15 * 0.85 / 10) ** 0.5)
    assert chart.lower == [0.0] * 4
    assert chart.out_of_control == [False, False, True, False]  # 50% is above 48.9%
    assert p_chart([0], [0]).out_of_control == [False]


def test_a_day_with_no_part_to_count_has_no_control_limits() -> None:
    """Days of 10, 0 and 10 good parts with 2, 0 and 1 false calls: p-bar = 3 / 20 = 0.15;
    a day of 10: 0.15 +/- 3 sqrt(0.15 * 0.85 / 10) = 0.15 +/- 0.33875, so UCL 0.48875 and
    LCL 0 (clipped). The empty day has no limits (they were drawn on p-bar, a band of zero
    width, as if the day had been measured exactly)."""
    chart = p_chart([2, 0, 1], [10, 0, 10])
    assert chart.center == pytest.approx(0.15)
    assert chart.upper[0] == pytest.approx(0.48875, abs=1e-5) == chart.upper[2]
    assert chart.lower == [0.0, None, 0.0]
    assert chart.upper[1] is None and chart.out_of_control == [False, False, False]
    days = [date(2026, 1, 1), date(2026, 1, 2), date(2026, 1, 3)]
    figure = rates_figure(
        [
            RateRow(5, 1, n, f, key=day)
            for day, n, f in zip(days, [10, 0, 10], [2, 0, 1], strict=True)
        ]
    )
    ucl = next(trace for trace in figure.data if trace.name == "false-call rate UCL")
    assert ucl.y[3:5] == (None, None) and ucl.y[0] == pytest.approx(0.48875, abs=1e-5)


def test_control_limits_are_drawn_across_their_own_day_also_for_one_day() -> None:
    """One day of reviews drew no p-bar and no limits, only their names in the legend (a line
    through one point is no line), nor did a day between two with nothing to count; and each
    day's limit began at its point, half a day off its day. 10 defective parts, 1 missed:
    p-bar 0.1, UCL 0.1 + 3 sqrt(0.1 * 0.9 / 10) = 0.38460, LCL 0 (clipped)."""
    day = date(2026, 11, 27)
    figure = rates_figure([RateRow(10, 1, 20, 2, key=day)])
    traces = {trace.name: trace for trace in figure.data}
    ucl, lcl, center = (traces[f"miss rate {name}"] for name in ("UCL", "LCL", "p-bar"))
    assert list(ucl.x) == [datetime(2026, 11, 26, 14, 24), datetime(2026, 11, 27, 9, 36), None]
    assert ucl.y[0] == ucl.y[1] == pytest.approx(0.38460, abs=1e-5) and ucl.y[2] is None
    assert list(lcl.y) == [0.0, 0.0, None] and list(lcl.x) == list(ucl.x)
    # p-bar from one end of the axis to the other.
    assert list(center.x) == list(figure.layout.xaxis.range) and list(center.y) == [0.1, 0.1]
    # A day with limits between two days with none: its limits still a line of two points.
    days = [day - timedelta(days=1), day, day + timedelta(days=1)]
    three = rates_figure(
        [RateRow(n, 0, 20, 2, key=d) for d, n in zip(days, [0, 10, 0], strict=True)]
    )
    ucl = next(trace for trace in three.data if trace.name == "miss rate UCL")
    assert ucl.y[:3] == (None, None, None) and ucl.y[6:] == (None, None, None)
    assert ucl.y[3] == ucl.y[4] == 0.0 and ucl.x[3] < datetime(2026, 11, 27) < ucl.x[4]


def test_each_rate_panel_marks_its_points_in_its_own_colour() -> None:
    """The false-call rate's points were drawn in the miss rate's blue on its orange line;
    a point out of control is red in either. False calls 1, 1, 8 of 10 each: p-bar 1/3, UCL
    1/3 + 3 sqrt((1/3)(2/3)/10) = 0.7805, so the 80% day is out of control."""
    days = [date(2026, 3, d) for d in (6, 7, 8)]
    figure = rates_figure(
        [RateRow(10, 0, 10, f, key=d) for d, f in zip(days, [1, 1, 8], strict=True)]
    )
    miss, false_calls = (t for t in figure.data if t.name in ("miss rate", "false-call rate"))
    assert miss.marker.color == ("#1f77b4",) * 3 and miss.line.color == "#1f77b4"
    assert false_calls.marker.color == ("#ff7f0e", "#ff7f0e", "#d62728")
    assert false_calls.line.color == "#ff7f0e"


def test_a_day_with_no_reviewed_part_is_a_gap_in_the_rates() -> None:
    """A day with no reviewed part has no row: the rate's line ran straight across it, from
    the day before to the day after, while a day with reviews but none in a panel's count was
    a gap. Both are gaps now, with no control limits, and no day is drawn at 0."""
    first, third = date(2026, 3, 6), date(2026, 3, 8)
    figure = rates_figure([RateRow(10, 1, 0, 0, key=first), RateRow(10, 2, 20, 2, key=third)])
    miss, false_calls = (t for t in figure.data if t.name in ("miss rate", "false-call rate"))
    every_day = tuple(first + timedelta(days=n) for n in range(3))
    assert miss.x == every_day and miss.y == (0.1, None, 0.2)
    assert false_calls.x == every_day and false_calls.y == (None, None, 0.1)
    assert not miss.connectgaps and not false_calls.connectgaps
    [miss_ucl] = (t for t in figure.data if t.name == "miss rate UCL")
    assert miss_ucl.y[3:6] == (None, None, None)  # the empty day's limit: none


def test_the_rates_over_the_range_are_given_with_their_upper_bounds() -> None:
    """The chart gave the rates day by day only: the month's rate, which a report quotes, was
    the unnumbered p-bar. Days of 1/0/0/0 defective parts missed of 1/1/1/1 and 0/1/0/0 false
    calls of 0/1/1/1 good parts: 1 of 4 missed, whose one-sided 95% Clopper-Pearson bound
    solves (1-p)^4 + 4p(1-p)^3 = 0.05 (p = 0.7514); 1 of 3 false calls, (1-p)^3 + 3p(1-p)^2
    = 0.05 (p = 0.8647)."""
    days = [date(2026, 3, d) for d in (6, 7, 8, 9)]
    counts = [(1, 0, 0, 0), (1, 1, 1, 1), (1, 0, 1, 0), (1, 0, 1, 0)]
    rows = [RateRow(*c, key=day) for c, day in zip(counts, days, strict=True)]
    assert rates_summary(rows) == (
        "Over these days: miss rate 25.0% (1 of 4 defective parts; 95% upper bound 75.1%); "
        "false-call rate 33.3% (1 of 3 good parts; 95% upper bound 86.5%)."
    )
    # The parts they are of: the rates' denominators are the reviewed parts only, a few of
    # those judged, which the page never said; one part is "part".
    assert rates_summary(rows, (7, 10000)).startswith(
        "Over these days, from 7 reviewed parts of 10000 judged: miss rate 25.0%"
    )
    assert rates_summary([RateRow(1, 1, 0, 0, key=days[0])], (1, 1)) == (
        "Over these days, from 1 reviewed part of 1 judged: miss rate 100.0% (1 of 1 "
        "defective part; 95% upper bound 100.0%); false-call rate: no reviewed good parts."
    )
    # None missed of 180: not "0%" alone, at most 1.7% (1 - 0.05^(1/180) = 0.01650).
    assert rates_summary([RateRow(180, 0, 0, 0, key=days[0])]) == (
        "Over these days: miss rate 0.0% (0 of 180 defective parts; 95% upper bound 1.7%); "
        "false-call rate: no reviewed good parts."
    )


def test_history_page_gives_the_rates_over_the_range() -> None:
    now = utcnow()
    url = get_settings().resolved_database_url
    judged = [("a.png", now, []), ("b.png", now, ["scratch"]), ("c.png", now, [])]
    _judged_parts(url, [*judged, ("not-reviewed.png", now, [])])
    with session_scope(url) as session:
        missed, false_call, good, _ = session.scalars(select(Part).order_by(Part.id))
        session.add_all(
            [
                Review(
                    part=missed, kind=ReviewKind.MISSED_DEFECT, class_name="spot", reviewer="qa"
                ),
                Review(part=false_call, kind=ReviewKind.GOOD_PART, reviewer="qa"),
                Review(part=good, kind=ReviewKind.GOOD_PART, reviewer="qa"),
            ]
        )
    at = _opened("history")
    assert (
        "Over these days, from 3 reviewed parts of 4 judged: miss rate 100.0% (1 of 1 "
        "defective part; 95% upper bound 100.0%); false-call rate 50.0% (1 of 2 good parts; "
        "95% upper bound 97.5%)."
    ) in [c.value for c in at.caption]


def test_history_counts_a_part_a_candidate_judged_too_once_and_gives_the_candidates_own() -> None:
    """Parts production judged, then a candidate judged again (`defects batch --model`): each
    held two current verdicts, and the page counted 2 parts as 4 judged, 2 reviewed."""

    now = utcnow()
    url = get_settings().resolved_database_url
    _judged_parts(url, [("a.png", now, []), ("b.png", now, [])])  # production: both pass
    with session_scope(url) as session:
        # (The candidate fails both.)
        missed, good = _candidate_judges_again(session, now, Verdict.FAIL, 5.0, spot=True)
        session.add_all(
            [
                Review(
                    part=missed, kind=ReviewKind.MISSED_DEFECT, class_name="spot", reviewer="qa"
                ),
                Review(part=good, kind=ReviewKind.GOOD_PART, reviewer="qa"),
            ]
        )
    at = _opened("history")
    assert (
        "Over these days, from 2 reviewed parts of 2 judged: miss rate 100.0% (1 of 1 "
        "defective part; 95% upper bound 100.0%); false-call rate 0.0% (0 of 1 good part; "
        "95% upper bound 95.0%)."
    ) in [c.value for c in at.caption]
    volume = _figures(at)["Parts inspected per day"]["data"]
    assert sum(sum(trace["y"]) for trace in volume) == 2
    at.selectbox(key="history_model").set_value("candidate").run()
    assert (
        "Over these days, from 2 reviewed parts of 2 judged: miss rate 0.0% (0 of 1 "
        "defective part; 95% upper bound 95.0%); false-call rate 100.0% (1 of 1 good part; "
        "95% upper bound 100.0%)."
    ) in [c.value for c in at.caption]


def test_the_download_says_which_of_a_parts_verdicts_the_history_counted() -> None:
    """With no model picked the CSV listed production's and a candidate's verdict of each part,
    nothing saying which one the page's rates counted: they could not be rebuilt from it."""

    now = utcnow()
    url = get_settings().resolved_database_url
    _judged_parts(url, [("a.png", now, []), ("b.png", now, [])])  # production: both pass
    with session_scope(url) as session:
        _candidate_judges_again(session, now, Verdict.FAIL)
    text = filtered_results_csv(url, Filters()).decode()
    assert text.splitlines()[0].endswith(",reviewed,reviewed_defects,deciding")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert sorted((r["part"], r["model"] == "candidate", r["deciding"]) for r in rows) == [
        ("a.png", False, "True"),
        ("a.png", True, "False"),
        ("b.png", False, "True"),
        ("b.png", True, "False"),
    ]


def test_history_latency_is_of_each_parts_deciding_verdict_a_candidates_with_it_picked() -> None:
    """A candidate judging production's parts again put its times in the plant's latency
    chart with no model picked: two parts read as four, the candidate's 50 ms among them."""

    now = utcnow()
    url = get_settings().resolved_database_url
    _judged_parts(url, [("a.png", now, []), ("b.png", now, [])])  # production: 5 and 6 ms
    with session_scope(url) as session:
        _candidate_judges_again(session, now, Verdict.PASS, 50.0)
    at = _opened("history")
    [bars] = _figures(at)["Latency per part"]["data"]
    assert sum(bars["y"]) == 2 and max(bars["customdata"])[1] < 50
    assert any(
        c.value.startswith("The time the model took to judge each part, once,") for c in at.caption
    )
    at.selectbox(key="history_model").set_value("candidate").run()
    [bars] = _figures(at)["Latency per part"]["data"]
    assert sum(bars["y"]) == 2 and min(bars["customdata"])[0] > 49


def test_figures_are_built_from_plain_data() -> None:
    days = [date(2026, 1, 1), date(2026, 1, 2)]
    figure = rates_figure([RateRow(10, 1, 20, 2, key=days[0]), RateRow(10, 0, 20, 1, key=days[1])])
    assert figure.data[0].y == (0.1, 0.0)
    assert len(volume_figure([VolumeRow(days[0], 5, 2, 1)]).data) == 3
    assert pareto_figure(
        [ParetoRow("scratch", 3, 0.75, 0.75), ParetoRow("spot", 1, 0.25, 1.0)]
    ).data[1].y == (0.75, 1.0)
    assert latency_figure(
        [LatencyHistogram([5.0, 7.0, 9.0], [1, 2], LatencySummary(3, 7.0, 7.0, 9.0, 9.0, 9.0))]
    ).layout.shapes
    minutes = minute_volume_figure([MinuteVolume("2026-01-01 08:00", 10, 3, 1)])
    assert [trace.y for trace in minutes.data] == [(6,), (3,), (1,)]  # passed, failed, errors


def test_the_latency_chart_sends_its_bins_not_every_parts_latency() -> None:
    """The browser was sent every part's latency to bin (9.26 MB of JSON, bench/results/history_page_cpu.json, at each render of the
    History page over a month of 500000 parts): now the bins' counts, whatever the parts."""
    edges = [5.0 + 2.0 * i for i in range(51)]
    counts = [400] * 50
    summary = LatencySummary(20_000, 55.0, 55.0, 99.0, 103.0, 105.0)
    figure = latency_figure([LatencyHistogram(edges, counts, summary)])
    [bars] = figure.data
    assert len(bars.x) == 50 and int(sum(bars.y)) == 20_000
    assert bars.customdata[0][0] == 5.0 and bars.customdata[-1][1] == 105.0
    assert [shape.x0 for shape in figure.layout.shapes] == [55.0, 103.0]  # p50, p99
    assert len(figure.to_json()) < 20_000
    assert not latency_figure([LatencyHistogram([], [], LatencySummary(0, *[None] * 5))]).data
    assert not latency_figure([]).data


def test_a_rate_panel_with_nothing_to_count_says_so() -> None:
    """With a class chosen and no reviewed good part, the false-call chart was drawn blank,
    with no word: it read as broken."""
    figure = rates_figure([RateRow(10, 1, 0, 0, key=date(2026, 11, 27))])
    [note] = figure.layout.annotations[2:]  # (after the two panels' titles)
    assert note.text == "no reviewed good parts in this selection: no false-call rate to show"
    assert note.xref == "x2 domain" and note.yref == "y2 domain"
    assert (
        len(rates_figure([RateRow(10, 1, 20, 2, key=date(2026, 11, 27))]).layout.annotations) == 2
    )


def test_history_day_axes_tick_whole_days_also_for_one_day() -> None:
    """One day of reviews drew the rates' axis in fractions of a millisecond ("23:59:59.9995"),
    its legend over the axis title, and the volume's bar at midnight's clock time."""
    day = date(2026, 11, 27)
    rates = rates_figure([RateRow(10, 1, 20, 2, key=day)])
    around = [datetime(2026, 11, 26, 12), datetime(2026, 11, 27, 12)]
    for axis in (rates.layout.xaxis, rates.layout.xaxis2):
        assert list(axis.range) == around and axis.dtick == 86_400_000
        assert axis.tickformat == "%b %-d, %Y"
    assert rates.layout.legend.y > 1  # above the charts, clear of the axis title below
    volume = volume_figure([VolumeRow(day, 5, 2, 1)])
    assert list(volume.layout.xaxis.range) == around and volume.layout.xaxis.dtick == 86_400_000
    assert volume.data[0].width == pytest.approx(0.8 * 86_400_000)  # a bar, not a hairline
    # Sixty days: a tick every six days, still at midnights.
    two_months = [VolumeRow(day - timedelta(days=n), 1, 0, 0) for n in range(60)]
    assert volume_figure(two_months).layout.xaxis.dtick == 6 * 86_400_000


def test_the_rates_and_the_volume_span_the_range_picked_not_the_days_with_parts() -> None:
    """With a month picked and reviews on three days of it, the rates' axis spanned those
    three days (and the volume's the days with parts): the days around them, with nothing
    reviewed, were not on the chart, and the two charts' days did not line up."""
    first, last = date(2026, 3, 1), date(2026, 3, 30)
    reviewed = [date(2026, 3, 10), date(2026, 3, 12), date(2026, 3, 20)]
    figure = rates_figure([RateRow(10, 1, 20, 2, key=d) for d in reviewed], picked=(first, last))
    around = [datetime(2026, 2, 28, 12), datetime(2026, 3, 30, 12)]
    for axis in (figure.layout.xaxis, figure.layout.xaxis2):
        assert list(axis.range) == around
    traces = {trace.name: trace for trace in figure.data}
    miss = traces["miss rate"]
    assert miss.x == tuple(first + timedelta(days=n) for n in range(30))
    assert [d for d, y in zip(miss.x, miss.y, strict=True) if y is not None] == reviewed
    assert list(traces["miss rate p-bar"].x) == around  # p-bar across the whole range
    volume = volume_figure([VolumeRow(d, 5, 2, 1) for d in reviewed], picked=(first, last))
    assert list(volume.layout.xaxis.range) == around
    # Nothing picked: the days of the rows, as before.
    alone = rates_figure([RateRow(10, 1, 20, 2, key=reviewed[0])])
    assert list(alone.layout.xaxis.range) == [datetime(2026, 3, 9, 12), datetime(2026, 3, 10, 12)]


def test_history_rates_span_the_days_picked() -> None:
    """The page's rates chart over the 30 days it opens on, not the three days with reviews."""
    now = utcnow()
    url = get_settings().resolved_database_url
    _judged_parts(url, [(f"{n}.png", now - timedelta(days=n), []) for n in (3, 5, 12)])
    with session_scope(url) as session:
        session.add_all(
            Review(part=part, kind=ReviewKind.GOOD_PART, reviewer="qa")
            for part in session.scalars(select(Part))
        )
    at = _opened("history")
    today = date.today()
    expected = [
        datetime.combine(today - timedelta(days=29), time()) - timedelta(hours=12),
        datetime.combine(today, time()) + timedelta(hours=12),
    ]
    figures = _figures(at)
    for title in ("", "Parts inspected per day"):  # (the rates' title is its panels')
        shown = figures[title]["layout"]["xaxis"]["range"]
        assert [datetime.fromisoformat(edge) for edge in shown] == expected, title
    # The model timeline beside them: from the first day's midnight to the end of today.
    shown = figures["Model version in use"]["layout"]["xaxis"]["range"]
    assert [datetime.fromisoformat(edge) for edge in shown] == [
        datetime.combine(today - timedelta(days=29), time()),
        datetime.combine(today + timedelta(days=1), time()),
    ]


def test_pareto_legend_leaves_the_share_axis_readable() -> None:
    """At the right, the legend lay over the cumulative-share axis: its 100% read "10"."""
    figure = pareto_figure([ParetoRow("scratch", 3, 0.75, 0.75), ParetoRow("spot", 1, 0.25, 1.0)])
    assert figure.layout.legend.orientation == "h" and figure.layout.legend.y > 1


# Names people and cameras choose, each of which Plotly would read as HTML or an entity.
HTML_NAMES = [
    '<a href="javascript:alert(1)">scratch</a>',
    "a<br>b",
    "<b>dent</b>",
    "&lt;pit&gt; & co",
]
_PLOTLY_ENTITIES = {"mu": "\u03bc", "amp": "&", "lt": "<", "gt": ">", "nbsp": "\xa0"}


def _as_plotly_shows(text: str) -> str:
    """What Plotly's labels show of `text` (plotly.js svg_text_utils): its tags are read as
    markup, so none may be left; then its entities are decoded."""
    assert not re.search(r"<[^<>]*>", text), f"read as HTML by Plotly: {text!r}"

    def entity(match: re.Match[str]) -> str:
        code = match.group(1)
        if code.startswith("#x"):
            return chr(int(code[2:], 16))
        if code.startswith("#"):
            return chr(int(code[1:]))
        return _PLOTLY_ENTITIES.get(code, match.group(0))

    return re.sub(r"&(#\d+|#x[\da-fA-F]+|[a-z]+);", entity, text)


def test_chart_labels_show_class_names_as_typed() -> None:
    """A class named `a<br>b` showed on two lines in the Pareto's ticks and hover, and one
    named `<a href=...>scratch</a>` as a link; the Review image's box labels likewise."""
    import numpy as np

    from dashboard.charts import ShownBox, review_figure

    rows = [ParetoRow(name, 4 - i, 0.25, 0.25 * (i + 1)) for i, name in enumerate(HTML_NAMES)]
    figure = pareto_figure(rows, highlight=HTML_NAMES[1])
    for trace in figure.data:
        assert [_as_plotly_shows(x) for x in trace.x] == HTML_NAMES
    assert list(figure.data[0].marker.color).count("#d62728") == 1  # the chosen class in red
    review = review_figure(
        np.zeros((40, 60, 3), dtype=np.uint8),
        [
            ShownBox(f"{i + 1}: {name} 0.800", 5, 5, 20, 10, True)
            for i, name in enumerate(HTML_NAMES)
        ],
    )
    shown = [_as_plotly_shows(a.text) for a in review.layout.annotations]
    assert shown == [f"{i + 1}: {name} 0.800" for i, name in enumerate(HTML_NAMES)]
    usage = [
        ModelUsage(1, name, datetime(2026, 1, 1), datetime(2026, 1, 2), 3) for name in HTML_NAMES
    ]
    timeline = model_timeline_figure(usage)
    for trace, name in zip(timeline.data, HTML_NAMES, strict=True):
        assert [_as_plotly_shows(y) for y in trace.y] == [name, name]
        assert _as_plotly_shows(trace.name) == name and name not in trace.hovertemplate


def test_review_figure_and_drawn_box() -> None:
    import numpy as np

    from dashboard.charts import ShownBox, review_figure, selected_box

    figure = review_figure(
        np.zeros((40, 60, 3), dtype=np.uint8), [ShownBox("1: scratch 0.80", 5, 5, 20, 10, True)]
    )
    assert figure.layout.dragmode == "select" and len(figure.layout.shapes) == 1
    assert (
        len(figure.data[1].x) == 15 * 10
    )  # the invisible 4-pixel grid that makes box selection work
    assert selected_box({"box": [{"x": [30.26, 10.0], "y": [4.0, 20.04]}]}) == (
        10.0,
        4.0,
        30.3,
        20.0,
    )
    assert selected_box({"box": []}) is None and selected_box(None) is None
    # A drag begun in the margin beside the image: clipped to it (a negative corner stopped
    # the page), or nothing where none of it lies on the image.
    below = {"box": [{"x": [-12.3, 30.0], "y": [50.0, 70.0]}]}
    assert selected_box(below, (60, 40)) is None
    assert selected_box({"box": [{"x": [-12.3, 30.0], "y": [5.0, 70.0]}]}, (60, 40)) == (
        0.0,
        5.0,
        30.0,
        40.0,
    )
    assert selected_box({"box": [{"x": [-20.0, -5.0], "y": [5.0, 10.0]}]}, (60, 40)) is None
    # A camera frame: sent scaled to 1024 px with a grid of fixed size, the axes still in its
    # own pixels (a box drawn at 2900 px lands at 2900 px).
    big = review_figure(
        np.zeros((2000, 3000, 3), dtype=np.uint8), [ShownBox("1", 2800, 1900, 2900, 1990, True)]
    )
    image = big.data[0]
    assert image.source.startswith("data:image/png;base64,") and image.z is None
    assert image.dx == pytest.approx(3000 / 1024) and image.dy == pytest.approx(2000 / 683)
    assert len(big.data[1].x) <= 160 * 107 and max(big.data[1].x) > 2900
    assert list(big.layout.xaxis.range) == [0, 3000] and big.layout.shapes[0].x1 == 2900


def test_review_figure_labels_a_box_at_the_top_edge_inside_it() -> None:
    """NEU-DET defects often touch the image's top edge: their labels were drawn above the
    figure, cut off, and a reviewer could not tell box 1 from box 2."""
    import numpy as np

    from dashboard.charts import ShownBox, review_figure

    figure = review_figure(
        np.zeros((200, 200, 3), dtype=np.uint8),
        [
            ShownBox("1: crazing 0.50", 137, 0.2, 199, 78, True),
            ShownBox("2", 10, 120, 50, 190, True),
        ],
    )
    top, lower = figure.layout.annotations
    assert top.yanchor == "top" and top.y == 0.2  # inside its box, on the image
    assert lower.yanchor == "bottom" and lower.y == 120  # above its box, as before


def test_a_missing_model_file_is_a_message(production: str, tmp_path: Path) -> None:
    from db.registry import get_model_version

    with session_scope(production) as session:
        Path(get_model_version(session, "tiny").file_path).unlink()
    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 1, 5)).run()
    assert not at.exception
    assert "the weights of tiny are missing" in at.error[0].value  # (as the commands say it)


def _candidate_judges_again(
    session: Session,
    judged_at: datetime,
    verdict: Verdict,
    latency_ms: float | None = None,
    spot: bool = False,
) -> list[Part]:
    """A candidate version judging every part again 5 minutes after `judged_at` (`defects
    batch --model CANDIDATE`), each a second current verdict (with a counted "spot" where
    `spot`); the parts, oldest first."""
    from db.models import ModelKind

    candidate = ModelVersion(
        name="candidate",
        kind=ModelKind.DETECTOR,
        architecture="defect-yolo-n",
        file_path="x.pt",
        sha256="0" * 64,
    )
    session.add(candidate)
    session.flush()
    parts = list(session.scalars(select(Part).order_by(Part.id)))
    for part in parts:
        again = Inspection(
            part_id=part.id,
            model_version_id=candidate.id,
            verdict=verdict,
            latency_ms=latency_ms,
            inspected_at=judged_at + timedelta(minutes=5),
        )
        if spot:
            again.predictions.append(Prediction(class_name="spot", confidence=0.9))
        session.add(again)
    return parts


def _judged_parts(
    url: str,
    parts: list[tuple[str, datetime, list[str]]],
    line: str = "Line 1",
    station: str = "Station 1",
) -> None:
    """Parts (name, naive-UTC time captured and judged, counted classes: failed with any), as
    a model would have written them: the History page needs none."""
    from db.registry import ensure_station

    migrated(url)
    with session_scope(url) as session:
        where = ensure_station(session, line, station)
        for n, (name, when, classes) in enumerate(parts):
            part = Part(
                content_hash=f"{n:064d}",
                stored_path=f"{n}.png",
                original_name=name,
                size_bytes=1,
                line_id=where.line_id,
                station_id=where.id,
                captured_at=when,
            )
            session.add(part)
            session.flush()
            inspection = Inspection(
                part_id=part.id,
                verdict=Verdict.FAIL if classes else Verdict.PASS,
                latency_ms=5.0 + n,
                inspected_at=when,
            )
            inspection.predictions.extend(Prediction(class_name=c, confidence=0.9) for c in classes)
            session.add(inspection)


def _opened(page: str) -> AppTest:
    """The app on `page` (e.g. "history"), rendered without an exception."""
    at = _app().run()
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, at.exception
    return at


def _figures(at: AppTest) -> dict[str, dict]:  # type: ignore[type-arg]
    """The page's Plotly figures as their JSON, by title."""
    found = {}
    for chart in at.get("plotly_chart"):
        figure = json.loads(chart.proto.spec)
        found[figure["layout"].get("title", {}).get("text", "")] = figure
    return found


def _volume_days(at: AppTest) -> list[str]:
    return _figures(at)["Parts inspected per day"]["data"][0]["x"]


def test_history_counts_todays_parts_on_the_servers_day() -> None:
    """West of UTC in the evening, today's parts were after the range's end (a local midnight
    taken for UTC's); east of it in the morning, on tomorrow's UTC day."""
    now = utcnow()
    # A zone whose date is not UTC's now (POSIX names: Etc/GMT+12 is 12 hours west).
    zone, label = ("Etc/GMT+12", "UTC-12:00") if now.hour < 12 else ("Etc/GMT-14", "UTC+14:00")
    with local_zone(zone):
        _judged_parts(get_settings().resolved_database_url, [("a.png", now, [])])
        at = _opened("history")
        assert not any("No inspections" in i.value for i in at.info)
        volume = _figures(at)["Parts inspected per day"]
        assert volume["data"][0]["x"] == [date.today().isoformat()]
        assert volume["layout"]["xaxis"]["title"]["text"] == f"day captured (local time, {label})"


def test_history_shows_one_date_picked_as_that_day() -> None:
    with local_zone("America/New_York"):
        today = date.today()
        earlier = today - timedelta(days=10)

        def noon(day: date) -> datetime:
            return datetime.combine(day, time(12)).astimezone(UTC).replace(tzinfo=None)

        parts = [("a.png", noon(earlier), []), ("b.png", noon(today), [])]
        _judged_parts(get_settings().resolved_database_url, parts)
        at = _opened("history")
        assert _volume_days(at) == [earlier.isoformat(), today.isoformat()]
        at.date_input(key="history_range").set_value((earlier,)).run()  # was the last 30 days
        assert not at.exception, at.exception
        assert _volume_days(at) == [earlier.isoformat()]


def test_history_opens_on_the_last_30_days_today_included() -> None:
    """The page said "the last 30 days" and opened on today minus 30 days through today: 31
    days, a part of 31 days ago in a month's report."""
    today = date.today()

    def noon(day: date) -> datetime:
        return datetime.combine(day, time(12)).astimezone(UTC).replace(tzinfo=None)

    first, before = today - timedelta(days=29), today - timedelta(days=30)
    parts = [("a.png", noon(before), []), ("b.png", noon(first), []), ("c.png", noon(today), [])]
    _judged_parts(get_settings().resolved_database_url, parts)
    at = _opened("history")
    assert at.date_input(key="history_range").value == (first, today)
    assert _volume_days(at) == [first.isoformat(), today.isoformat()]


def test_every_history_chart_follows_the_defect_class_or_says_it_does_not() -> None:
    now = utcnow()
    parts = [("a.png", now, ["scratch"]), ("b.png", now, ["spot"]), ("c.png", now, [])]
    _judged_parts(get_settings().resolved_database_url, parts)
    at = _opened("history")
    at.selectbox(key="history_class").set_value("scratch").run()
    assert not at.exception, at.exception
    figures = _figures(at)
    volume = figures["Parts inspected per day"]["data"]
    assert [trace["y"] for trace in volume] == [[0], [1], [0]]  # passed, failed, errors
    [latency] = figures["Latency per part"]["data"]  # one part, of 5 ms, in its bin
    assert sum(latency["y"]) == 1
    assert [low <= 5.0 < high for low, high in latency["customdata"]].index(True) == (
        latency["y"].index(1)
    )
    [model] = figures["Model version in use"]["data"]
    assert "1 inspections" in model["hovertemplate"]
    # The Pareto compares the classes: both, scratch in red, as the caption says.
    pareto = figures["Defect Pareto"]["data"][0]
    assert pareto["x"] == ["scratch", "spot"] and pareto["marker"]["color"][0] == "#d62728"
    assert any("Defect class scratch" in c.value and "in red" in c.value for c in at.caption)


def test_download_of_an_empty_range_has_its_header(database_url: str) -> None:
    empty = filtered_results_csv(database_url, Filters(start=datetime(2030, 1, 1)))
    assert empty.decode().splitlines() == [
        "captured_at,inspected_at,line,station,part,content_hash,verdict,defects,latency_ms,"
        "model,superseded_at,error,grid,boxes_left_out,reviewed,reviewed_defects,deciding"
    ]


def test_download_gives_each_parts_reviewed_truth_to_recount_the_rates(
    database_url: str,
) -> None:
    """The download had no review or truth column: the page's miss and false-call counts
    could not be rebuilt from it. Now each row has the part's truth, as the rates decide it,
    and the classes reviewers found (a name a spreadsheet would run, quoted as the others)."""
    now = utcnow()
    parts = [
        ("missed.png", now, []),
        ("caught.png", now, ["scratch"]),
        ("false-call.png", now, ["scratch"]),
        ("good.png", now, []),
        ("waiting.png", now, ["scratch"]),
    ]
    _judged_parts(database_url, parts)
    with session_scope(database_url) as session:
        missed, caught, false_call, good, _ = session.scalars(select(Part).order_by(Part.id))
        session.add_all(
            [
                Review(
                    part=missed, kind=ReviewKind.MISSED_DEFECT, class_name="=spot", reviewer="qa"
                ),
                Review(
                    part=caught,
                    kind=ReviewKind.CONFIRMED_DEFECT,
                    class_name="scratch",
                    reviewer="qa",
                ),
                Review(
                    part=caught, kind=ReviewKind.MISSED_DEFECT, class_name="crack", reviewer="qa"
                ),
                Review(part=false_call, kind=ReviewKind.GOOD_PART, reviewer="qa"),
                Review(part=good, kind=ReviewKind.GOOD_PART, reviewer="qa"),
            ]
        )
    text = filtered_results_csv(database_url, Filters()).decode()
    header = text.splitlines()[0].split(",")
    assert header[:14] == [
        "captured_at", "inspected_at", "line", "station", "part", "content_hash", "verdict",
        "defects", "latency_ms", "model", "superseded_at", "error", "grid", "boxes_left_out",
    ]  # fmt: skip
    rows = {r["part"]: r for r in csv.DictReader(io.StringIO(text))}
    assert {name: (r["reviewed"], r["reviewed_defects"]) for name, r in rows.items()} == {
        "missed.png": ("defective", "'=spot"),
        "caught.png": ("defective", "crack;scratch"),
        "false-call.png": ("good", ""),
        "good.png": ("good", ""),
        "waiting.png": ("not reviewed", ""),
    }
    # The counts the page gives, rebuilt from the download.
    with session_scope(database_url) as session:
        [counts] = rates(session)
    verdicts = [(r["reviewed"], r["verdict"]) for r in rows.values()]
    assert (counts.n_defective, counts.n_missed, counts.n_good, counts.n_false_calls) == (
        verdicts.count(("defective", "pass")) + verdicts.count(("defective", "fail")),
        verdicts.count(("defective", "pass")),
        verdicts.count(("good", "pass")) + verdicts.count(("good", "fail")),
        verdicts.count(("good", "fail")),
    )


def test_download_defuses_formulas_and_gives_local_times_with_their_offset(
    database_url: str,
) -> None:
    winter, summer = datetime(2026, 1, 5, 8), datetime(2026, 7, 5, 8)
    names = ['=HYPERLINK("http://x","y")', "+1.png", "-2.png", "@SUM(A1)", "\tt.png", "\rr.png"]
    parts = [(name, winter, []) for name in names] + [("plain.png", summer, ["scratch"])]
    parts.append(("a\r=1+1.png", winter, []))  # a CR: quoted, or the rest is a row of its own
    _judged_parts(database_url, parts, line="=Line", station="-Cam")
    with local_zone("America/New_York"):
        rows = list(
            csv.DictReader(io.StringIO(filtered_results_csv(database_url, Filters()).decode()))
        )
    by_part = {r["part"]: r for r in rows}
    assert set(by_part) == {"'" + name for name in names} | {"plain.png", "a\r=1+1.png"}
    assert {(r["line"], r["station"]) for r in rows} == {("'=Line", "'-Cam")}
    first = by_part["'" + names[0]]
    assert (first["captured_at"], first["inspected_at"]) == ("2026-01-05T03:00:00-05:00",) * 2
    plain = by_part["plain.png"]
    assert (plain["captured_at"], plain["defects"]) == ("2026-07-05T04:00:00-04:00", "scratch")
    assert plain["superseded_at"] == ""


def test_roll_back_pressed_twice_rolls_back_once(production: str, tmp_path: Path) -> None:
    """A double click (or two users) rolled back two versions: B, then A, went out of
    production, and the demo the users had replaced came back."""
    from db.registry import promote_version

    with session_scope(production) as session:
        tiny = session.scalars(select(ModelVersion)).one()
        for name, metrics in (("A", {"map50": 0.6}), ("B", {"map50": 0.0})):
            session.add(
                ModelVersion(
                    name=name,
                    kind=tiny.kind,
                    architecture=tiny.architecture,
                    file_path=tiny.file_path,
                    sha256=name * 64,
                    classes=tiny.classes,
                    metrics=metrics,
                )
            )
    promote_version(production, "A")
    ana, bob = _app().run(), _app().run()
    for at in (ana, bob):
        at.switch_page("views/models.py").run()
    next(s for s in ana.selectbox if s.label == "Detector version").set_value("B").run()
    next(b for b in ana.button if b.label == "Promote to production").click().run()
    assert not ana.exception, ana.exception
    assert any(plain("B has mAP50 0.000: it finds almost nothing") in w.value for w in ana.warning)
    bob.run()
    ana.run()
    next(b for b in ana.button if b.label == "Roll back B to A").click().run()
    next(b for b in bob.button if b.label == "Roll back B to A").click().run()
    assert not bob.exception, bob.exception
    with session_scope(production) as session:
        from db.models import ModelKind
        from db.registry import production_model

        assert production_model(session, ModelKind.DETECTOR).name == "A"  # type: ignore[union-attr]
    ana.run()
    [button] = [b for b in ana.button if b.label.startswith("Roll back")]
    assert button.label == "Roll back A to tiny" and not button.disabled


def _thresholds(url: str, name: str = "tiny") -> dict:  # type: ignore[type-arg]
    with session_scope(url) as session:
        return dict(
            session.scalars(select(ModelVersion.thresholds).where(ModelVersion.name == name)).one()
        )


# Thresholds stored by someone else while a page is open (`defects calibrate`, another user).
_CALIBRATED_ELSEWHERE = {
    "per_class": dict.fromkeys(CLASSES, 0.5),
    "default": 1.01,
    "calibration": {
        "data": "synth",
        "split": "val",
        "max_miss_rate": 0.01,
        "n_missed": 0,
        "n_defective": 9,
        "miss_rate_upper_95": 0.28,
    },
}


def test_a_threshold_save_after_a_calibration_elsewhere_is_refused_not_lost(
    production: str,
) -> None:
    """Save stored the new thresholds' values (the sliders drawn anew), not the user's edit,
    dropped the calibration record and said "Saved"."""
    from training.calibrate import store_operating_point

    at = _app().run()
    at.switch_page("views/settings.py").run()
    store_operating_point(production, "tiny", _CALIBRATED_ELSEWHERE)
    next(s for s in at.slider if s.label == CLASSES[0]).set_value(0.3)
    next(b for b in at.button if b.label == "Save thresholds").click().run()
    assert not at.exception, at.exception
    assert not at.success
    assert "changed since you opened this page" in at.error[0].value
    assert _thresholds(production) == _CALIBRATED_ELSEWHERE
    assert [s.value for s in at.slider] == [0.5] * len(CLASSES)  # what is stored now
    # The change made again is saved.
    next(s for s in at.slider if s.label == CLASSES[0]).set_value(0.3)
    next(b for b in at.button if b.label == "Save thresholds").click().run()
    assert "Saved" in at.success[0].value
    saved = _thresholds(production)
    assert saved["per_class"][CLASSES[0]] == 0.3 and "calibration" not in saved


def test_a_threshold_save_is_not_written_onto_a_model_promoted_meanwhile(
    production: str,
) -> None:
    from db.registry import promote_version

    with session_scope(production) as session:
        tiny = session.scalars(select(ModelVersion)).one()
        session.add(
            ModelVersion(
                name="other",
                kind=tiny.kind,
                architecture=tiny.architecture,
                file_path=tiny.file_path,
                sha256="o" * 64,
                classes=tiny.classes,
                thresholds=_CALIBRATED_ELSEWHERE,
            )
        )
    at = _app().run()
    at.switch_page("views/settings.py").run()
    tiny_before = _thresholds(production)
    promote_version(production, "other")
    next(s for s in at.slider if s.label == CLASSES[0]).set_value(0.3)
    next(b for b in at.button if b.label == "Save thresholds").click().run()
    assert not at.exception, at.exception
    assert not at.success
    assert "other was promoted to production since you opened this page" in at.error[0].value
    assert _thresholds(production, "other") == _CALIBRATED_ELSEWHERE
    assert _thresholds(production) == tiny_before


def test_a_calibration_preview_is_not_used_over_thresholds_changed_since(
    production: str, tmp_path: Path
) -> None:
    from training.calibrate import store_operating_point

    at = _calibrate_on_settings_page(production, tmp_path, 12, "Class thresholds", "shared")
    store_operating_point(production, "tiny", _CALIBRATED_ELSEWHERE)
    next(b for b in at.button if b.label.startswith("Use these thresholds")).click().run()
    assert not at.exception, at.exception
    assert not at.success
    assert "changed since this calibration was computed" in at.error[0].value
    assert _thresholds(production) == _CALIBRATED_ELSEWHERE
    assert not any(b.label.startswith("Use these thresholds") for b in at.button)
    assert [s.value for s in at.slider] == [0.5] * len(CLASSES)


def _judged_in_run(
    url: str,
    where: tuple[str, str],
    name: str,
    when: datetime,
    first_seen: tuple[str, str] | None = None,
    classes: tuple[str, ...] = (),
) -> None:
    """A part judged at `when` (naive UTC) in an open run at `where` (line, station), as a
    `--watch` batch records it; first seen at `first_seen` (another station), or there."""
    import hashlib

    from db.models import InspectionRun
    from db.registry import ensure_station

    migrated(url)
    with session_scope(url) as session:
        station = ensure_station(session, *where)
        seen = ensure_station(session, *first_seen) if first_seen else station
        run = InspectionRun(line_id=station.line_id, station_id=station.id, source="hot/")
        part = Part(
            content_hash=hashlib.sha256(name.encode()).hexdigest(),
            stored_path=f"{name}.png",
            original_name=name,
            size_bytes=1,
            line_id=seen.line_id,
            station_id=seen.id,
            captured_at=when,
        )
        session.add_all([run, part])
        session.flush()
        inspection = Inspection(
            part_id=part.id,
            run_id=run.id,
            verdict=Verdict.FAIL if classes else Verdict.PASS,
            inspected_at=when,
        )
        inspection.predictions.extend(Prediction(class_name=c, confidence=0.9) for c in classes)
        session.add(inspection)


def _refreshed(at: AppTest) -> AppTest:
    """The page as its timer refreshes it: the fragment run alone, not the whole script (so
    outside app.py's handler). AppTest has no call for it: its rerun request is given the
    fragments' ids, as the browser's timer sends them."""
    import functools

    from streamlit.testing.v1 import local_script_runner

    fragments = list(at._fragment_storage._fragments)
    assert fragments, "the page has its auto-refreshed fragment"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            local_script_runner,
            "RerunData",
            functools.partial(
                local_script_runner.RerunData, fragment_id_queue=fragments, is_auto_rerun=True
            ),
        )
        return at.run()


def test_live_page_refreshed_with_the_database_gone_says_so(tmp_path: Path) -> None:
    """The refresh every 5 s showed a DatabaseError traceback, not the other pages' message."""
    from db.session import get_engine

    url = get_settings().resolved_database_url
    _judged_in_run(url, ("Line 1", "Station 1"), "a", utcnow())
    at = _opened("live")
    assert not at.error
    get_engine(url).dispose()
    database = Path(url.removeprefix("sqlite:///"))
    for gone in database.parent.glob(database.name + "*"):
        gone.unlink()
    database.mkdir()  # a file that cannot be opened any more
    _refreshed(at)
    assert not at.exception, at.exception
    assert "The database cannot be used right now" in at.error[0].value


def test_live_page_sums_up_many_idle_stations_in_one_line() -> None:
    """2000 stations with an open run idle for 2 hours were 2000 banners (and 4000 queries)
    at every refresh."""

    from db.queries import station_activity

    url = get_settings().resolved_database_url
    two_hours_ago = utcnow() - timedelta(hours=2)
    for n in range(30):
        _judged_in_run(url, ("Line 1", f"Cam {n:02d}"), f"p{n}", two_hours_ago)
    at = _opened("live")
    [idle] = at.info
    assert idle.value.startswith("30 station(s) have an open run but no part for over 5 minutes")
    assert plain("Line 1 / Cam 00 (run 1, 120 min)") in idle.value and "and 25 more" in idle.value
    assert len(at.dataframe[0].value) == 30
    with _statements(url) as statements, session_scope(url) as session:
        found = station_activity(session, utcnow() - timedelta(hours=1))
    assert {a.last_inspected_at for a in found} == {two_hours_ago}
    assert len(statements) <= 5, statements  # not two a quiet station


def test_live_page_and_status_call_out_a_camera_writing_empty_captures() -> None:
    """A camera whose capture died writes empty files: the Live page and `defects status`
    counted them among the errors only, and called out blank frames but not these."""
    from typer.testing import CliRunner

    from db.models import InspectionRun
    from inspection.images import EMPTY_ERROR
    from training.cli import app

    url = get_settings().resolved_database_url
    _judged_in_run(url, ("Line 1", "Cam A"), "good.png", utcnow())
    with session_scope(url) as session:
        run = session.scalars(select(InspectionRun)).one()
        part = Part(
            content_hash="0" * 64,
            stored_path="",
            original_name="frame.png",
            size_bytes=0,
            line_id=run.line_id,
            station_id=run.station_id,
        )
        session.add(part)
        session.flush()
        for n in range(3):  # the same empty file, recorded each time it came
            session.add(
                Inspection(
                    part_id=part.id,
                    run_id=run.id,
                    verdict=Verdict.ERROR,
                    error=f"{EMPTY_ERROR}: 0 bytes",
                    superseded_at=None if n == 2 else utcnow(),
                )
            )
    at = _opened("live")
    [empty] = at.warning
    assert empty.value.startswith("1 station(s) sent empty captures"), empty.value
    assert plain("Line 1 / Cam A (3)") in empty.value
    shown = CliRunner().invoke(app, ["status", "--json"])
    [station] = json.loads(shown.output)["stations"]
    assert (station["errors"], station["empty_captures"], station["blank_frames"]) == (3, 3, 0)
    table = CliRunner().invoke(app, ["status"], env={"COLUMNS": "200"})
    assert "3 (3 empty)" in table.output, table.output


def test_live_page_with_a_station_clock_ahead_says_just_now() -> None:
    """A station's clock 30 s ahead of the dashboard's showed its last part "-30 s ago"."""
    url = get_settings().resolved_database_url
    _judged_in_run(url, ("Line 1", "Cam A"), "p1", utcnow() + timedelta(seconds=30))
    at = _opened("live")
    assert not at.exception, at.exception
    [status] = at.dataframe[0].value["status"].tolist()
    assert status.endswith("last verdict just now"), status


def test_live_page_lists_a_part_at_the_station_that_judged_it() -> None:
    """A part first seen at Cam A, judged by Cam B's run: the table counted it at Cam B while
    "Latest parts" listed it at Cam A."""
    url = get_settings().resolved_database_url
    _judged_in_run(url, ("Line 2", "Cam B"), "moved.png", utcnow(), first_seen=("Line 1", "Cam A"))
    at = _opened("live")
    stations = at.dataframe[0].value.set_index("station")
    assert (stations.loc["Cam B", "verdicts"], stations.loc["Cam A", "verdicts"]) == (1, 0)
    latest = at.dataframe[1].value
    assert latest[["line", "station", "part"]].values.tolist() == [["Line 2", "Cam B", "moved.png"]]


def test_live_page_gives_local_times_to_the_second_and_says_so(tmp_path: Path) -> None:
    from PIL import Image

    url = get_settings().resolved_database_url
    judged = utcnow().replace(microsecond=123456) - timedelta(minutes=3)
    _judged_in_run(url, ("Line 1", "Cam A"), "bad.png", judged, classes=(CLASSES[0],))
    image = tmp_path / "bad.png"
    Image.new("RGB", (32, 32)).save(image)
    with session_scope(url) as session:
        session.scalars(select(Part)).one().stored_path = str(image)
    with local_zone("Etc/GMT+5"):  # POSIX names: 5 hours west, no daylight saving time
        at = _opened("live")
        local = judged - timedelta(hours=5)
        zone = "local time, UTC-05:00"
        latest = at.dataframe[1].value
        assert latest[f"judged ({zone})"].tolist() == [f"{local:%Y-%m-%d %H:%M:%S}"]
        assert any(f"times in {zone}" in c.value for c in at.caption)
        assert (
            at.get("image")[0].proto.imgs[0].caption == f"judged {local:%Y-%m-%d %H:%M:%S} ({zone})"
        )
        minutes = _figures(at)[f"Parts per minute ({zone})"]
        assert minutes["data"][0]["x"] == [f"{local:%Y-%m-%d %H:%M}"]


def test_a_job_running_on_another_machine_is_not_written_off(production: str) -> None:
    """A training on another machine sharing the database: its pid, looked up here, named
    nothing, and the Models page wrote the job off as failed while it trained on."""
    from db.models import JobStatus, TrainingJob
    from training.jobs import this_host

    with session_scope(production) as session:
        elsewhere = TrainingJob(
            kind="train-detector", status=JobStatus.RUNNING, pid=4_000_000, host="trainer-9"
        )
        here = TrainingJob(
            kind="train-detector", status=JobStatus.RUNNING, pid=4_000_001, host=this_host()
        )
        session.add_all([elsewhere, here])
    at = _app().run()
    at.switch_page("views/models.py").run()
    assert not at.exception, at.exception
    with session_scope(production) as session:
        statuses = {j.host: j.status for j in session.scalars(select(TrainingJob))}
    assert statuses == {"trainer-9": JobStatus.RUNNING, this_host(): JobStatus.FAILED}
    labels = [p.proto.text for p in at.get("progress")]
    assert any(label.endswith("running on trainer-9") for label in labels), labels


def test_a_save_keeps_a_class_switched_off_and_thresholds_to_the_thousandth(
    production: str,
) -> None:
    """A class a calibration switched off (1.01) showed capped at 1.0 and a save of another
    slider put it back on at 1.0; a calibrated 0.0793 is kept as it is. Then the sliders went
    up to 1.010, a value that did not say "off": they now end at 1.0, and a class switched off
    is a box, "never fails the part", that stores what stations read as off."""
    from training.calibrate import CLASS_OFF, store_operating_point

    off, kept = CLASSES[0], CLASSES[1]
    store_operating_point(
        production,
        "tiny",
        {"default": CLASS_OFF, "per_class": {off: CLASS_OFF, kept: 0.0793}},
    )
    at = _app().run()
    at.switch_page("views/settings.py").run()
    assert {s.proto.max for s in at.slider} == {1.0}
    boxes = {c.key.rsplit("_", 1)[-1]: c for c in at.checkbox if c.key.startswith("off_")}
    assert {c.label for c in boxes.values()} == {"never fails the part"}
    assert [name for name, c in boxes.items() if c.value] == [off]
    others = [s for s in at.slider if s.label not in (off, kept)]
    for slider in others:
        slider.set_value(0.3)
    next(b for b in at.button if b.label == "Save thresholds").click().run()
    assert not at.exception, at.exception
    saved = _thresholds(production)["per_class"]
    assert saved[off] == CLASS_OFF and saved[kept] == pytest.approx(0.0793, abs=1e-9)
    # Switched on again at the slider's value, and another class switched off.
    boxes = {c.key.rsplit("_", 1)[-1]: c for c in at.checkbox if c.key.startswith("off_")}
    boxes[off].uncheck()
    boxes[kept].check()
    next(s for s in at.slider if s.label == off).set_value(0.6)
    next(b for b in at.button if b.label == "Save thresholds").click().run()
    assert not at.exception, at.exception
    saved = _thresholds(production)["per_class"]
    assert saved[off] == pytest.approx(0.6) and saved[kept] == CLASS_OFF
    # A class the point does not list is judged at its default (here off), not at 0.25.
    store_operating_point(production, "tiny", {"default": CLASS_OFF, "per_class": {kept: 0.4}})
    at.run()
    boxes = {c.key.rsplit("_", 1)[-1]: c for c in at.checkbox if c.key.startswith("off_")}
    assert boxes[off].value and not boxes[kept].value


def test_a_mistyped_or_read_only_sqlite_database_is_a_message_naming_it(
    production: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mistyped folder in the URL gave a new empty database ("No production model yet");
    a read-only database failed its first write with "attempt to write a readonly database"."""
    from db.session import get_engine
    from tests.conftest import read_only

    at = _app().run()
    assert not at.exception, at.exception
    get_engine(production).dispose()  # (its pooled connections opened the file writable)
    database = Path(production.removeprefix("sqlite:///"))
    with read_only(database):
        at.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 1, 1)).run()
    assert not at.exception, at.exception
    assert plain(f"the file {database} is read-only for this user") in " ".join(
        e.value for e in at.error
    )

    typo = tmp_path / "typo" / "dir"
    monkeypatch.setenv("DEFECTS_DATABASE_URL", f"sqlite:///{typo / 'defects.db'}")
    get_settings.cache_clear()
    at = _app().run()
    assert not at.exception, at.exception
    assert f"the folder {typo} of the SQLite database" in at.error[0].value
    assert not (tmp_path / "typo").exists()


def test_the_backtest_offers_no_classifier(
    production: str, trained: Trained, trained_classifier: str
) -> None:
    """A classifier candidate was offered for a backtest, and refused once chosen."""

    register_classifier_copy(
        trained.url, trained_classifier, production, metrics={"val_accuracy": 0.75}
    )
    at = _app().switch_page("views/models.py").run()
    assert not at.exception, at.exception
    versions = at.dataframe[0].value
    assert "verifier" in versions["name"].tolist()
    # Its val accuracy over parts and crops is not shown as a test top-1 over parts.
    verifier = versions[versions["name"] == "verifier"].iloc[0]
    assert verifier["val accuracy (parts and crops)"] == "0.750"
    # (Missing figures are "-", as `defects models list` says them: the page said "None".)
    assert (verifier["top-1 (test)"], verifier["val mAP50"], verifier["mAP50 (test)"]) == ("-",) * 3
    offered = [s.options for s in at.selectbox if s.key == "backtest_choice"]
    assert not any("verifier" in options for options in offered)
    assert any("No candidate detectors to backtest" in c.value for c in at.caption)


def test_the_models_page_says_old_folders_no_version_names(production: str) -> None:
    """A registration killed before its commit left a folder in the model store that no
    version names, said nowhere: the page names it once unchanged for over an hour."""
    import os
    import time

    models = get_settings().models_dir
    left = models / "defect-yolo-n-20261127-004820"
    left.mkdir()
    (left / "best.pt").write_bytes(b"weights")
    at = _app().switch_page("views/models.py").run()
    assert not at.exception, at.exception
    assert not any("no model version names" in w.value for w in at.warning)
    hours_ago = time.time() - 2 * 3600
    os.utime(left / "best.pt", (hours_ago, hours_ago))
    os.utime(left, (hours_ago, hours_ago))
    at = _app().switch_page("views/models.py").run()
    said = [w.value for w in at.warning if "no model version names" in w.value]
    assert said and said[0].startswith("1 folder in ") and plain(left.name) in said[0], said


def test_a_backtest_says_which_reviewed_parts_it_could_not_read(
    production: str, trained: Trained, tmp_path: Path
) -> None:
    """A reviewed part whose image is gone from the store was left out of the backtest without
    a word: its row counted one part fewer than the recorded row and the History page."""
    from db.models import ModelKind
    from db.reviews import mark_good
    from training.versions import register_model_version

    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 2, 3)).run()
    with session_scope(production) as session:
        parts = session.scalars(select(Part).order_by(Part.id)).all()
        for part in parts:
            mark_good(session, part.id, "ana")
        Path(parts[0].stored_path).unlink()  # the store cleaned by hand, or another machine's
        register_model_version(
            session,
            trained.weights,
            get_settings().models_dir,
            kind=ModelKind.DETECTOR,
            architecture="defect-yolo-n",
            class_names=CLASSES,
            image_size=64,
            name="retrained",
        )
    at.switch_page("views/models.py").run()
    at.selectbox(key="backtest_choice").set_value("retrained").run()
    next(b for b in at.button if b.label == "Run backtest").click().run()
    assert not at.exception, at.exception
    assert at.dataframe[1].value["false calls"].str.endswith(" of 1").tolist() == [True, False]
    assert "1 of 2 reviewed parts are not in the backtest" in at.warning[0].value


def test_a_backtest_leaves_out_the_parts_the_candidate_learned_from(
    production: str, trained: Trained, tmp_path: Path
) -> None:
    """A candidate retrained on an export of the reviews was scored on its own training
    images beside the production model's recorded verdicts on every reviewed part. Both rows
    now count the parts reviewed since (here one), and the page says how many were left out."""
    from db.models import Dataset
    from db.reviews import mark_good
    from training.backtest import export_reviews

    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 3, 3)).run()
    with session_scope(production) as session:
        for part_id in session.scalars(select(Part.id)):
            mark_good(session, part_id, "ana")
        report = export_reviews(session, "week-1", CLASSES, get_settings().datasets_dir)
        week_1 = session.scalars(select(Dataset).where(Dataset.name == "week-1")).one()
        register_tiny_detector(session, trained.weights, "retrained", dataset=week_1)
    learned = report.split_counts["train"]["images"] + report.split_counts["val"]["images"]
    at.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 1, 4)).run()
    with session_scope(production) as session:
        mark_good(session, max(session.scalars(select(Part.id))), "ana")
    at.switch_page("views/models.py").run()
    at.selectbox(key="backtest_choice").set_value("retrained").run()
    next(b for b in at.button if b.label == "Run backtest").click().run()
    assert not at.exception, at.exception
    table = at.dataframe[1].value
    scored = 4 - learned
    assert table["false calls"].str.endswith(f" of {scored}").tolist() == [True, True]
    assert any(
        f"{learned} reviewed parts are in neither row" in c.value and plain("week-1") in c.value
        for c in at.caption
    )


def _training_refused(at: AppTest, dataset: str) -> str:
    """Start training on `dataset` from the Models page, expected refused at once (nothing
    started): the error said."""
    at.switch_page("views/models.py").run()
    next(s for s in at.selectbox if s.label == "Dataset").set_value(dataset)
    next(n for n in at.number_input if n.label == "Epochs").set_value(1)
    next(b for b in at.button if b.label == "Start training").click().run()
    assert not at.exception, at.exception
    assert not at.success and "training_started" not in at.session_state
    return str(at.error[0].value)


def test_a_dataset_training_would_refuse_is_refused_before_it_is_started(
    production: str, tmp_path: Path
) -> None:
    """The training process refused it after the page's 2-second look, so the page said
    "Training started ... it goes on if you close this page" of a training that had ended."""
    from db.reviews import add_missed_defect
    from training.backtest import export_reviews

    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 1, 3)).run()
    with session_scope(production) as session:
        part_id = session.scalars(select(Part.id)).one()
        add_missed_defect(session, part_id, CLASSES[0], (4, 4, 20, 20), "ana")
        export_reviews(session, "one-part", CLASSES, get_settings().datasets_dir)
    assert "no val images to train on" in _training_refused(at, "one-part")


def test_a_fine_tuning_on_a_dataset_of_other_classes_is_refused_at_once(
    production: str, tmp_path: Path
) -> None:
    """Refused by the training process only, it showed as "ended without a job" on a later
    visit, after "Training started" had been said."""
    from tests.synthetic import write_splits, write_voc
    from training.datasets import import_dataset

    images = write_voc(tmp_path / "src", n=12)
    with session_scope(production) as session:
        import_dataset(
            session,
            "voc",
            tmp_path / "src",
            "reordered",
            get_settings().datasets_dir,
            write_splits(tmp_path / "splits", images),
            list(reversed(CLASSES)),
        )
    refused = _training_refused(_app().run(), "reordered")
    assert plain("fine-tuning keeps the classes in their order and only adds new ones") in refused


def test_a_calibration_with_a_classifier_is_shown_as_it_will_be_stored(
    production: str, trained: Trained, trained_classifier: str, tmp_path: Path
) -> None:
    """The preview listed the part classifier as "__part__" and an off class as an empty cell,
    and did not show the crop threshold auto chose (nor that it chose none) before it was
    used; once stored, "one threshold shared by every class" was said whatever it stored."""
    from training.calibrate import choice_lines

    register_classifier_copy(trained.url, trained_classifier, production)
    import_synthetic(production, tmp_path, n=24)
    at = _app().run()
    at.switch_page("views/settings.py").run()
    next(s for s in at.selectbox if s.label == "Classifier").set_value("verifier")
    next(s for s in at.selectbox if s.label == "Crop verification").set_value("auto")
    next(b for b in at.button if b.label == "Calibrate").click().run()
    assert not at.exception, at.exception
    assert not at.error, at.error[0].value
    preview = at.dataframe[0].value
    assert preview["dimension"].tolist() == [*CLASSES, "part classifier"]
    assert all(t == "off" or 0.0 <= float(t) <= 1.0 for t in preview["threshold"])
    captions = [c.value for c in at.caption]
    assert any(
        c.startswith(("A detection counts only when", "Verification off:", "Crop verification"))
        for c in captions
    ), captions
    next(b for b in at.button if b.label.startswith("Use these thresholds")).click().run()
    assert not at.exception, at.exception
    with session_scope(production) as session:
        stored = session.scalars(
            select(ModelVersion.thresholds).where(ModelVersion.name == "tiny")
        ).one()
    said = [c.value for c in at.caption]
    for line in choice_lines(stored):
        assert line[0].upper() + line[1:] + "." in said
    if all(v >= 1.01 for v in stored["per_class"].values()):  # every class off
        assert not any("shared by every class" in c for c in said)


def test_a_calibration_is_not_stored_over_its_classifier_archived_since(
    production: str, trained: Trained, trained_classifier: str, tmp_path: Path
) -> None:
    """Whether the classifier a calibration names was archived was read when it was computed:
    one archived between the calibration and Use these thresholds was stored as if still a
    candidate, brought back unsaid. It is now checked at the save: nothing is stored, and the
    page says why."""
    from db.models import ModelStage

    register_classifier_copy(trained.url, trained_classifier, production)
    import_synthetic(production, tmp_path, n=24)
    at = _app().run()
    at.switch_page("views/settings.py").run()
    next(s for s in at.selectbox if s.label == "Classifier").set_value("verifier")
    next(b for b in at.button if b.label == "Calibrate").click().run()
    assert not at.exception, at.exception
    assert not at.error, at.error[0].value
    before = _thresholds(production)
    with session_scope(production) as session:  # (another user, `defects models archive`)
        session.execute(
            update(ModelVersion)
            .where(ModelVersion.name == "verifier")
            .values(stage=ModelStage.ARCHIVED, archived_at=utcnow())
        )
    next(b for b in at.button if b.label.startswith("Use these thresholds")).click().run()
    assert not at.exception, at.exception
    assert not at.success
    assert [e.value for e in at.error] == [
        plain(
            "verifier was archived since this calibration was computed: nothing was stored; "
            "calibrate again, with another classifier or none (or with verifier, to bring it "
            "back among the candidates)"
        )
        + "."
    ]
    assert _thresholds(production) == before
    with session_scope(production) as session:
        stage = session.scalars(
            select(ModelVersion.stage).where(ModelVersion.name == "verifier")
        ).one()
    assert stage == ModelStage.ARCHIVED
    assert not any(b.label.startswith("Use these thresholds") for b in at.button)


def test_a_range_across_a_change_of_daylight_saving_time_names_both_offsets() -> None:
    with local_zone("Europe/Berlin"):
        filters = Filters.local_days(date(2026, 10, 20), date(2026, 10, 30))
        single = Filters.local_days(date(2026, 1, 5), date(2026, 1, 6))
    earlier = tuple(m for _, m in filters.offset_changes)
    assert (
        zone_label(filters.utc_offset_minutes, earlier) == "local time, UTC+02:00, then UTC+01:00"
    )
    assert zone_label(single.utc_offset_minutes) == "local time, UTC+01:00"
    assert zone_label(-330) == "local time, UTC-05:30"


def test_a_station_stored_with_a_name_now_refused_still_judges(
    production: str, tmp_path: Path
) -> None:
    """A station whose name was stored before names with tabs or invisible characters were
    refused (a new one is, in one line): refused too, its parts could no longer be judged and
    its watch not start again; the page first stopped in a traceback on it."""
    from db.models import ProductionLine, Station

    [(name, data, kind)] = _png_files(tmp_path, 1, 3)
    with session_scope(production) as session:
        session.add(Station(line=ProductionLine(name="Old line"), name="Cam\t2"))
    at = _app().run()
    at.selectbox(key="inspect_line").set_value("Old line").run()
    at.selectbox(key="inspect_station_Old line").set_value("Cam\t2").run()
    at.file_uploader(key="inspect_files").set_value([(name, data, kind)]).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    with session_scope(production) as session:
        judged = session.scalars(select(Inspection)).one()
        assert session.get(Station, judged.part.station_id).name == "Cam\t2"


def test_review_of_a_part_whose_image_is_gone_says_so_and_decides_nothing(
    production: str, tmp_path: Path
) -> None:
    """A pruned image (or one on another station's disk) showed the raw "[Errno 2]" and left
    every decision on: a reviewer could mark good a part they could not see."""
    at = _two_failed_parts_on_review(production, tmp_path)
    first = at.selectbox(key="review_part").value
    with session_scope(production) as session:
        gone = Path(session.get(Part, first).stored_path)  # type: ignore[union-attr]
    gone.unlink()
    at.run()
    assert not at.exception, at.exception
    warning = " ".join(w.value for w in at.warning)
    assert "not on this machine" in warning and "Errno" not in warning
    decisions = ("Confirm defect", "False call", "Mark part good", "Add missed defect")
    shown = [b for b in at.button if b.label in decisions]
    assert len(shown) == 4 and all(b.disabled and b.help for b in shown)
    # Passed over: the other part, whose image is there, is decided as before.
    with session_scope(production) as session:
        other = next(i for i in session.scalars(select(Part.id)) if i != first)
    at.selectbox(key="review_part").set_value(other).run()
    assert not any("not on this machine" in w.value for w in at.warning)
    next(b for b in at.button if b.label == "Mark part good").click().run()
    assert not at.exception, at.exception
    assert _count(production, Review) == 1


def test_history_offers_a_class_reviewers_found_that_no_model_ever_called() -> None:
    """A class new to the line, which the model misses every time, has no detection: it was
    not offered, and its misses could not be looked at."""
    from db.reviews import add_missed_defect

    url = get_settings().resolved_database_url
    now = utcnow()
    _judged_parts(url, [("a.png", now, []), ("b.png", now, ["scratch"])])
    with session_scope(url) as session:
        passed = session.scalars(select(Part).where(Part.original_name == "a.png")).one()
        add_missed_defect(session, passed.id, "crack", (1.0, 1.0, 9.0, 9.0), "qa")
    at = _opened("history")
    assert "crack" in at.selectbox(key="history_class").options
    at.selectbox(key="history_class").set_value("crack").run()
    assert not at.exception, at.exception
    rates = next(f for f in _figures(at).values() if "miss rate" in json.dumps(f))
    misses = next(trace for trace in rates["data"] if trace["name"] == "miss rate")
    # Part a, missed (the other days of the range picked: nothing reviewed, gaps).
    assert [counts for counts in misses["customdata"] if counts[1]] == [[1, 1]]


def test_the_model_timeline_of_one_short_batch_spans_an_hour_not_milliseconds() -> None:
    """One batch of a few seconds spread the timeline's axis over milliseconds
    ("07:27:28.4365"); a long history keeps its own range."""
    from datetime import timedelta

    start = datetime(2026, 11, 27, 7, 27, 28)
    short = model_timeline_figure([ModelUsage(1, "v1", start, start + timedelta(seconds=2), 40)])
    low, high = (datetime.fromisoformat(str(t)) for t in short.layout.xaxis.range)
    assert high - low == timedelta(hours=1) and low < start < high
    weeks = model_timeline_figure([ModelUsage(1, "v1", start, start + timedelta(days=14), 4)])
    assert weeks.layout.xaxis.range is None


def test_the_model_timeline_spans_the_days_picked_as_the_rates_and_volume_do() -> None:
    """With a month picked, the timeline's axis spanned only the hours a version judged parts
    in, while the rates and volume beside it spanned the month: it spans the days picked, and
    beyond them where a part captured in them was judged again later."""
    first, last = date(2026, 3, 1), date(2026, 3, 30)
    start = datetime(2026, 3, 12, 7, 27, 28)
    usage = [ModelUsage(1, "v1", start, start + timedelta(hours=3), 40)]
    figure = model_timeline_figure(usage, picked=(first, last))
    low, high = (datetime.fromisoformat(str(t)) for t in figure.layout.xaxis.range)
    assert (low, high) == (datetime(2026, 3, 1), datetime(2026, 3, 31))
    later = datetime(2026, 4, 2, 9)
    again = model_timeline_figure(
        usage + [ModelUsage(2, "v2", later, later, 1)], picked=(first, last)
    )
    assert datetime.fromisoformat(str(again.layout.xaxis.range[1])) == later


def test_a_dashboard_says_when_another_release_migrates_the_database_under_it() -> None:
    """A dashboard left running while a station of a newer release migrated the shared
    database ran on with the old schema's code, its pages failing for no reason it gave."""
    from db.session import get_engine

    at = _app().run()
    assert not at.exception, at.exception
    assert not [w for w in at.warning if "schema is now" in w.value]
    url = get_settings().resolved_database_url
    with get_engine(url).begin() as connection:  # a newer release's migration
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_newer'"))
    at.run()
    [said] = [w.value for w in at.warning if "schema is now" in w.value]
    assert said.startswith("The database's schema is now at revision 9999_newer")


def test_a_review_queue_offers_parts_whose_image_is_here_first(
    production: str, tmp_path: Path
) -> None:
    """After a prune, the part the Review page opened on could be one whose image was gone,
    its decisions off: such parts now come after those a reviewer can see, and say so."""
    at = _two_failed_parts_on_review(production, tmp_path)
    first = at.selectbox(key="review_part").value
    with session_scope(production) as session:
        Path(session.get(Part, first).stored_path).unlink()  # type: ignore[union-attr]
    fresh = _app().run()  # (a reviewer opening the page now)
    fresh.switch_page("views/review.py").run()
    assert not fresh.exception, fresh.exception
    picker = fresh.selectbox(key="review_part")
    assert picker.value != first
    assert picker.options[-1].endswith("image not here)") and str(first) in picker.options[-1]


def test_close_up_shows_a_box_at_the_parts_own_resolution() -> None:
    import numpy as np

    from dashboard.drawing import CLOSE_UP_CONTEXT, DrawnBox, close_up

    pixels = np.zeros((3000, 4000, 3), dtype=np.uint8)
    pixels[1000:1006, 2000:2010] = 255  # a defect of 10 x 6 pixels
    shown = close_up(pixels, DrawnBox("1", 2000, 1000, 2010, 1006))
    # The box and CLOSE_UP_CONTEXT pixels around it, grown to 320 px on its shorter side.
    side = 10 + 2 * CLOSE_UP_CONTEXT
    assert shown.size == (round(side * 320 / (6 + 2 * CLOSE_UP_CONTEXT)), 320)
    corner = close_up(pixels, DrawnBox("2", 0, 0, 8, 8))  # cut at the part's edge
    assert corner.size[0] == corner.size[1]
    # A box thousands of pixels across: not the whole frame drawn again at full size.
    assert max(close_up(pixels, DrawnBox("3", 100, 100, 3900, 2900)).size) <= 1024


def test_a_thin_strip_and_its_close_ups_are_drawn_bounded() -> None:
    """A line-scan strip a few pixels high: a close-up of a box wider than a close-up shrank
    to no pixel high (an error on the page), and a strip grown to 320 px on its short side
    was hundreds of thousands of pixels long."""
    import numpy as np

    from dashboard.drawing import DrawnBox, close_up, draw_boxes

    strip = np.zeros((1, 5000, 3), dtype=np.uint8)
    wide = close_up(strip, DrawnBox("1", 100, 0, 3000, 1))
    assert max(wide.size) <= 1024 and min(wide.size) >= 1
    assert max(close_up(strip, DrawnBox("2", 100, 0, 110, 1)).size) <= 1024
    assert draw_boxes(np.zeros((40, 2000, 3), np.uint8), []).size == (2000, 40)
    tall = close_up(np.zeros((30000, 50, 3), np.uint8), DrawnBox("3", 0, 100, 50, 29000))
    assert max(tall.size) <= 1024
    # A box off the image (drawn on another size of it): a close-up, not an empty image.
    off = close_up(np.zeros((200, 300, 3), np.uint8), DrawnBox("4", 310, 210, 320, 220))
    assert min(off.size) >= 1


def test_close_ups_show_the_boxes_that_fail_the_part_first() -> None:
    from dashboard.drawing import DrawnBox, close_up_choice

    below = [
        DrawnBox(f"b{i}", 0, 0, 1, 1, counted=False, confidence=0.5 + i / 100) for i in range(8)
    ]
    failing = DrawnBox("f", 0, 0, 1, 1, confidence=0.3)
    stronger = DrawnBox("g", 0, 0, 1, 1, confidence=0.6)
    chosen = close_up_choice([*below, failing, stronger], 6)
    assert [b.label for b in chosen] == ["g", "f", "b7", "b6", "b5", "b4"]


def test_review_of_a_large_part_shows_each_detection_at_full_resolution(
    production: str, tmp_path: Path
) -> None:
    """A large part is shown shrunk to 1024 px on the Review page: a 20 MP frame's defect of a
    few pixels shrank to a dot a reviewer could neither confirm nor call false."""
    import numpy as np
    from PIL import Image

    big = np.full((600, 2400), 90, dtype=np.uint8)
    big[300:310, 1200:1206] = 250
    big[::7, :] = 60  # (not a blank frame)
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, format="PNG")
    files = [("big.png", buffer.getvalue(), "image/png"), *_png_files(tmp_path, 1, 3)]
    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(files).run()
    with session_scope(production) as session:
        for inspection in session.scalars(select(Inspection)):
            inspection.verdict = Verdict.FAIL
            inspection.predictions.append(
                Prediction(class_name=CLASSES[0], confidence=0.9, x1=1200, y1=300, x2=1206, y2=310)
                if inspection.part.width == 2400
                else Prediction(class_name=CLASSES[0], confidence=0.9, x1=2, y1=2, x2=20, y2=20)
            )
    at.switch_page("views/review.py").run()
    assert not at.exception, at.exception
    shown = {}
    for option in at.selectbox(key="review_part").options:
        at.selectbox(key="review_part").set_value(option).run()
        assert not at.exception, at.exception
        shown[option] = [c for i in at.get("image") for c in i.captions]
    assert sorted(map(len, shown.values())) == [0, 1]  # the small part needs no close-up
    assert "1 at full resolution" in str(shown)


def test_a_large_part_is_drawn_shrunk_to_what_the_page_shows() -> None:
    """A 64 MP part was drawn and sent to the browser whole, tens of megabytes at each rerun."""
    import numpy as np

    from dashboard.drawing import CLASS_COLOURS, SHOWN_LONGEST, DrawnBox, draw_boxes

    pixels = np.zeros((4000, 8000, 3), dtype=np.uint8)
    drawn = draw_boxes(pixels, [DrawnBox("scratch", 4000, 2000, 4400, 2400)])
    assert drawn.size == (SHOWN_LONGEST, SHOWN_LONGEST // 2)
    scale = SHOWN_LONGEST / 8000
    assert drawn.getpixel((round(4200 * scale), round(2400 * scale) - 1)) == CLASS_COLOURS[0]


def test_a_prediction_with_a_corner_missing_does_not_break_the_review_page(
    production: str, tmp_path: Path
) -> None:
    """The page checked a box's first corner only: a row with another corner empty broke it."""
    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 1, 3)).run()
    with session_scope(production) as session:
        inspection = session.scalars(select(Inspection)).one()
        inspection.verdict = Verdict.FAIL
        inspection.predictions.append(
            Prediction(class_name=CLASSES[0], confidence=0.9, x1=2, y1=None, x2=20, y2=20)
        )
    at.switch_page("views/review.py").run()
    assert not at.exception, at.exception
    assert any(
        m.value.startswith("1. ") and f">{plain(CLASSES[0] + ' 0.900')}</span>" in m.value
        for m in at.markdown
    )


def test_the_review_pages_export_cuts_parts_into_the_tiles_asked_for(
    production: str, tmp_path: Path
) -> None:
    """The export said to export again with --tile where stations judged in another grid than
    the production model's; the page had no way to give one."""
    import numpy as np
    import yaml
    from PIL import Image

    from db.reviews import add_missed_defect

    strip = (np.random.default_rng(0).normal(128, 12, (64, 256))).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(strip).save(buffer, format="PNG")
    at = _app().run()
    at.file_uploader(key="inspect_files").set_value([("strip.png", buffer.getvalue(), "image/png")])
    at.run()
    with session_scope(production) as session:
        part_id = session.scalars(select(Part.id)).one()
        add_missed_defect(session, part_id, CLASSES[0], (140, 10, 170, 40), "Ana")
    at.switch_page("views/review.py").run()
    next(t for t in at.text_input if t.label.startswith("Tiles")).input("big")
    next(b for b in at.button if b.label == "Export reviewed parts").click().run()
    assert not at.exception and at.error[0].value.startswith(plain("Tiles big: give SIZE"))
    next(t for t in at.text_input if t.label.startswith("Tiles")).input("64:0")
    next(b for b in at.button if b.label == "Export reviewed parts").click().run()
    assert not at.exception and not at.error, at.error
    data = yaml.safe_load((get_settings().datasets_dir / "reviews" / "data.yaml").read_text())
    assert data["defects_tile"] == {"size": 64, "overlap": 0.0}
    # It said only "Exported 1 part as dataset reviews", where the CLI says the parts were cut
    # into tiles and in which grid: the page now says the same.
    assert "Exported 1 part as dataset reviews, parts cut into 64 px tiles, 0% overlap " in (
        at.success[0].value
    )
    assert "(4 tiles)" in at.success[0].value  # a 256 x 64 strip in 64 px tiles


def test_the_latency_chart_gives_each_grid_its_colour_and_percentiles() -> None:
    """Parts judged in tiles and parts judged whole in one range: each grid's bars in a colour
    of their own, stacked, named with the grid and its p50 and p99; one grid, one series."""
    edges = [0.0, 50.0, 100.0]
    whole = LatencyHistogram(edges, [9, 1], LatencySummary(10, 20.0, 12.0, 60.0, 60.0, 60.0), "off")
    tiled = LatencyHistogram(
        edges, [0, 5], LatencySummary(5, 90.0, 88.0, 99.0, 99.0, 99.0), {"size": 64, "overlap": 0.2}
    )
    figure = latency_figure([whole, tiled])
    assert [trace.name for trace in figure.data] == [
        "whole (--tile off): p50 12 ms, p99 60 ms",
        "64 px tiles, 20% overlap (--tile): p50 88 ms, p99 99 ms",
    ]
    assert figure.data[0].marker.color != figure.data[1].marker.color
    assert [trace.y for trace in figure.data] == [(9, 1), (0, 5)]
    assert figure.layout.barmode == "stack"
    lines = [(shape.x0, shape.line.color) for shape in figure.layout.shapes]
    assert lines == [
        (12.0, figure.data[0].marker.color),
        (60.0, figure.data[0].marker.color),
        (88.0, figure.data[1].marker.color),
        (99.0, figure.data[1].marker.color),
    ]
    [bars] = latency_figure([whole]).data  # one grid: one series, as before
    assert bars.name == "parts" and bars.y == (9, 1)


def test_the_inspect_page_refuses_an_operating_point_whose_classifier_is_not_recorded(
    production: str, tmp_path: Path
) -> None:
    """An operating point naming a classifier the database does not hold: stations refuse to
    judge, and the Inspect page judged the upload with the detector alone, so a part only the
    classifier fails passed there."""
    with session_scope(production) as session:
        version = session.scalars(select(ModelVersion)).one()
        version.thresholds = {
            **version.thresholds,
            "classifier": {"version": "gone-cls", "part": 0.5, "verify": None},
        }
    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 1, 3)).run()
    assert not at.exception, at.exception
    said = " ".join(e.value for e in at.error).replace("\\", "")  # (markdown's escapes)
    assert "names the classifier gone-cls, which is not in the database" in said
    assert _count(production, Inspection) == 0


def test_the_models_page_says_how_a_distilled_student_was_taught(
    production: str, trained: Trained
) -> None:
    """The page showed a distilled student's teacher but not its loss, nor a fine-tuned
    version's base, which `defects models list --json` gives in its notes."""
    from db.models import ModelKind
    from db.registry import get_model_version
    from training.versions import register_model_version

    with session_scope(production) as session:
        register_model_version(
            session,
            trained.weights,
            get_settings().models_dir,
            kind=ModelKind.DETECTOR,
            architecture="defect-yolo-n",
            class_names=CLASSES,
            image_size=64,
            name="student",
            teacher=get_model_version(session, "tiny"),
            notes="fine-tuned from tiny; distilled with cwd",
        )
    at = _app().switch_page("views/models.py").run()
    assert not at.exception, at.exception
    versions = at.dataframe[0].value
    student = versions[versions["name"] == "student"].iloc[0]
    assert student["teacher"] == "tiny"
    assert student["notes"] == "fine-tuned from tiny; distilled with cwd"


def test_a_retraining_from_a_production_version_named_with_digits_starts_from_it(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The training form looked the production version up by its name as an id or a name: a
    production version named "1" was taken for version 1, another model, and the fine-tuning
    was refused for that one's classes (or checked against them, and started from it)."""
    import os

    from db.registry import get_model_version, named_version, promote
    from training import jobs

    url = get_settings().resolved_database_url
    migrated(url)
    import_synthetic(url, tmp_path, n=12)
    with session_scope(url) as session:
        for name, classes in (("other", list(reversed(CLASSES))), ("1", CLASSES)):
            register_tiny_detector(session, trained.weights, name, classes)
        production = named_version(session, "1")
        assert production.id != 1  # ("other" is version 1)
        promote(session, production)
        production_id = production.id
    started: list[tuple[tuple[object, ...], dict[str, object]]] = []

    def start(*args: object, **kwargs: object) -> tuple[int, Path]:
        # (The process itself is not started: what it would be given is the question.)
        started.append((args, kwargs))
        return os.getpid(), tmp_path / "train.log"

    monkeypatch.setattr(jobs, "start_detector_training", start)
    at = _app().switch_page("views/models.py").run()
    next(s for s in at.selectbox if s.label == "Dataset").set_value("synth")
    next(n for n in at.number_input if n.label == "Epochs").set_value(1)
    next(c for c in at.checkbox if c.label.startswith("Distill")).check()
    next(b for b in at.button if b.label == "Start training").click().run()
    assert not at.exception, at.exception
    assert not at.error, at.error[0].value
    [(args, kwargs)] = started
    assert args[3] == str(production_id) and kwargs["teacher"] == str(production_id)
    with session_scope(url) as session:  # (as `train detector --from` reads it)
        assert get_model_version(session, str(args[3])).name == "1"


def test_thresholds_saved_by_hand_at_the_default_are_not_called_never_calibrated(
    production: str,
) -> None:
    """A save on the Settings page with every class left at 0.25 stored the very point a
    version is registered with, and its promotion warned that it was never calibrated, where
    thresholds set by hand are someone's choice. The point saved by hand is now marked."""
    from training.versions import promotion_warnings

    def never(url: str) -> bool:
        return any("never calibrated" in w for w in promotion_warnings(url, "tiny", None))

    assert never(production)  # as registered
    at = _app().run()
    at.switch_page("views/settings.py").run()
    assert {s.value for s in at.slider} == {0.25}
    next(b for b in at.button if b.label == "Save thresholds").click().run()
    assert not at.exception, at.exception
    assert _thresholds(production)["per_class"] == dict.fromkeys(CLASSES, 0.25)
    assert not never(production)


def test_a_retraining_pressed_after_another_promotion_starts_nothing(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The form names the production model it fine-tunes from; a press after another
    promotion (another user, a CLI) started the training from the new production model, one
    the user had not seen named, at its architecture. It now starts nothing and says so."""
    import os

    from db.models import ModelKind
    from db.registry import named_version, promote
    from training import jobs
    from training.versions import register_model_version

    url = get_settings().resolved_database_url
    migrated(url)
    import_synthetic(url, tmp_path, n=12)
    with session_scope(url) as session:
        for name in ("first", "second"):
            register_model_version(
                session,
                trained.weights,
                get_settings().models_dir,
                kind=ModelKind.DETECTOR,
                architecture="defect-yolo-n",
                class_names=CLASSES,
                image_size=64,
                name=name,
            )
        promote(session, named_version(session, "first"))
    started: list[tuple[tuple[object, ...], dict[str, object]]] = []

    def start(*args: object, **kwargs: object) -> tuple[int, Path]:
        started.append((args, kwargs))
        return os.getpid(), tmp_path / "train.log"

    monkeypatch.setattr(jobs, "start_detector_training", start)
    at = _app().switch_page("views/models.py").run()
    assert any(c.label.endswith("(first)") for c in at.checkbox)
    next(s for s in at.selectbox if s.label == "Dataset").set_value("synth")
    next(n for n in at.number_input if n.label == "Epochs").set_value(1)
    with session_scope(url) as session:  # (between the page's render and the press)
        promote(session, named_version(session, "second"))
    next(b for b in at.button if b.label == "Start training").click().run()
    assert not at.exception, at.exception
    assert started == []
    said = [e.value.replace("\\", "") for e in at.error]  # (markdown's escapes)
    assert any("changed since this form was drawn (first then, second now)" in e for e in said)
    assert any(c.label.endswith("(second)") for c in at.checkbox)  # (drawn again for it)
    next(b for b in at.button if b.label == "Start training").click().run()
    assert not at.error, at.error[0].value
    [(args, _)] = started
    with session_scope(url) as session:
        assert args[3] == str(named_version(session, "second").id)


def test_live_page_lists_a_blank_frame_of_each_station_that_sent_the_same_bytes() -> None:
    """Cam A sent a black frame, then Cam B the same bytes: Cam B's record superseded Cam A's,
    and "Latest parts" lost Cam A's blank frame while the station table counted it."""
    from db.models import InspectionRun
    from db.registry import ensure_station

    url = get_settings().resolved_database_url
    migrated(url)
    with session_scope(url) as session:
        cams = [ensure_station(session, "Line 1", name) for name in ("Cam A", "Cam B")]
        runs = [InspectionRun(line_id=c.line_id, station_id=c.id, source="hot/") for c in cams]
        part = Part(
            content_hash="b" * 64,
            stored_path="black.png",
            original_name="black.png",
            size_bytes=1,
            line_id=cams[0].line_id,
            station_id=cams[0].id,
        )
        session.add_all([*runs, part])
        session.flush()
        first = utcnow() - timedelta(seconds=10)
        for run, when, superseded in [(runs[0], first, utcnow()), (runs[1], utcnow(), None)]:
            session.add(
                Inspection(
                    part_id=part.id,
                    run_id=run.id,
                    verdict=Verdict.ERROR,
                    error="blank image: one level",
                    inspected_at=when,
                    superseded_at=superseded,
                )
            )
    at = _opened("live")
    stations = at.dataframe[0].value.set_index("station")
    assert stations["errors"].tolist() == [1, 1]
    latest = at.dataframe[1].value
    assert latest["station"].tolist() == ["Cam B", "Cam A"]


def test_live_page_leaves_the_run_of_a_station_without_one_blank() -> None:
    """A station with no run showed a grey "None" in the run column, where the other empty
    cells are blank."""
    from db.registry import ensure_station

    url = get_settings().resolved_database_url
    _judged_in_run(url, ("Line 1", "Cam A"), "p1", utcnow())
    with session_scope(url) as session:
        ensure_station(session, "Line 1", "Cam B")
    at = _opened("live")
    runs = at.dataframe[0].value.set_index("station")["run"]
    assert runs["Cam B"] == ""
    assert runs["Cam A"] != ""


def test_status_gives_the_year_of_a_station_idle_since_last_year() -> None:
    """`defects status` gave the last part's time as month and day: a station idle for a year
    read as if it had judged a part today."""
    from typer.testing import CliRunner

    from training.cli import app

    url = get_settings().resolved_database_url
    a_year_ago = utcnow().replace(microsecond=0) - timedelta(days=365)
    _judged_in_run(url, ("Line 1", "Cam A"), "p1", a_year_ago)
    shown = CliRunner().invoke(app, ["status"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert f"{a_year_ago:%Y-%m-%d %H:%M:%S}" in shown.output, shown.output


def test_status_calls_a_station_s_counts_verdicts_a_candidate_there_judging_too() -> None:
    """A candidate judging at the same station as production gives each part a second verdict
    there: `defects status` counted both under "parts", one part read as two."""
    from typer.testing import CliRunner

    from db.models import InspectionRun, ModelKind
    from training.cli import app

    url = get_settings().resolved_database_url
    now = utcnow().replace(microsecond=0)
    _judged_in_run(url, ("Line 1", "Cam A"), "p1", now)
    with session_scope(url) as session:
        candidate = ModelVersion(
            name="candidate",
            kind=ModelKind.DETECTOR,
            architecture="defect-yolo-n",
            file_path="x.pt",
            sha256="0" * 64,
        )
        session.add(candidate)
        session.flush()
        part = session.scalars(select(Part)).one()
        run = InspectionRun(
            line_id=part.line_id,
            station_id=part.station_id,
            model_version_id=candidate.id,
            source="hot/",
        )
        session.add(run)
        session.flush()
        session.add(
            Inspection(
                part_id=part.id,
                model_version_id=candidate.id,
                run_id=run.id,
                verdict=Verdict.PASS,
                inspected_at=now,
            )
        )
    [station] = json.loads(CliRunner().invoke(app, ["status", "--json"]).output)["stations"]
    assert station["inspected"] == 2  # the station's verdicts: production's and the candidate's
    shown = CliRunner().invoke(app, ["status"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "┃ verdicts ┃" in shown.output and "parts" not in shown.output, shown.output
    assert "verdicts: each the station gave, a candidate's there too;" in shown.output


@pytest.mark.parametrize("shape", [(40, 60), (2000, 3000), (1500, 1100)])
def test_review_figure_places_pixels_where_boxes_are(shape: tuple[int, int]) -> None:
    """Boxes are in pixel edges (pixel i spans i to i + 1), but the image was placed with
    pixel i centred on i: every box was drawn half a source pixel up and left of its pixels.
    The image now spans 0 to width and 0 to height of the axes, scaled or not."""
    import numpy as np

    from dashboard.charts import SHOWN_SIDE, review_figure

    height, width = shape
    figure = review_figure(np.zeros((height, width, 3), dtype=np.uint8), [])
    image = figure.data[0]
    scale = max(1.0, max(width, height) / SHOWN_SIDE)
    shown_width, shown_height = round(width / scale), round(height / scale)
    assert image.x0 - image.dx / 2 == pytest.approx(0)  # the left edge of pixel 0
    assert image.y0 - image.dy / 2 == pytest.approx(0)  # its top edge
    assert image.x0 + (shown_width - 0.5) * image.dx == pytest.approx(width)
    assert image.y0 + (shown_height - 0.5) * image.dy == pytest.approx(height)


def test_reviewers_names_in_a_detections_decision_are_shown_as_typed_never_as_html(
    production: str, tmp_path: Path
) -> None:
    """The line of a decided detection is Markdown with HTML allowed (for its coloured label),
    and the reviewers' names in what it counts as were put in raw: a name typed as
    `<img src=x onerror=...>` was HTML in every reviewer's page, where the login cookie can
    be read by a script. The names are now shown as typed."""
    from db.reviews import confirm_defect, mark_false_call

    at = _two_failed_parts_on_review(production, tmp_path, (0.9,))
    shown = at.selectbox(key="review_part").value
    ana, bob = "<img src=x onerror=alert(1)>", "**Bob**"
    with session_scope(production) as session:
        inspection = session.scalars(select(Inspection).where(Inspection.part_id == shown)).one()
        first = min(p.id for p in inspection.predictions)
        confirm_defect(session, first, ana)
        mark_false_call(session, first, bob)
    at.run()
    assert not at.exception, at.exception
    said = (
        f"confirmed by {ana}, marked a false call by {bob}: counted as a defect until another "
        "reviewer settles it"
    )
    lines = [m.value for m in at.markdown if "confirmed by" in m.value]
    assert lines and all(line.endswith(f"**{plain(said)}**") for line in lines), lines


def test_a_detection_two_reviewers_disagree_on_says_what_counts_and_one_gives_way(
    production: str, tmp_path: Path
) -> None:
    """Ana confirmed a detection as Bob, on a page drawn before, marked it a false call: the
    database keeps both and counts the part defective, while the page said "false call" (the
    latest word), so Bob believed the box would not be taught."""
    from db.reviews import confirm_defect, mark_false_call

    bob = _two_failed_parts_on_review(production, tmp_path, (0.9, 0.4))
    bob.text_input(key="reviewer").input("Bob").run()
    shown = bob.selectbox(key="review_part").value
    with session_scope(production) as session:
        inspection = session.scalars(select(Inspection).where(Inspection.part_id == shown)).one()
        first = min(p.id for p in inspection.predictions)
        confirm_defect(session, first, "Ana")  # (both clicks on their way at once)
        mark_false_call(session, first, "Bob")
    bob.run()
    assert not bob.exception, bob.exception
    said = (
        "confirmed by Ana, marked a false call by Bob: counted as a defect until another "
        "reviewer settles it"
    )
    assert any(m.value.endswith(f"**{plain(said)}**") for m in bob.markdown)
    next(b for b in bob.button if b.label == "Withdraw my false call").click().run()
    assert not bob.exception, bob.exception
    with session_scope(production) as session:
        left = [(r.reviewer, r.kind.value) for r in session.scalars(select(Review))]
    assert left == [("Ana", "confirmed_defect")]
    assert bob.selectbox(key="review_part").value == shown
    assert any(m.value.endswith("**confirmed defect**") for m in bob.markdown)
    assert not any(b.label.startswith("Withdraw") for b in bob.button)


def test_a_withdrawn_confirmation_on_a_part_marked_good_says_the_part_counts_good_again(
    production: str, tmp_path: Path
) -> None:
    """Ana marked the part good as Bob confirmed its detection and Cy marked it a false call
    (a tie: defective). Bob's withdrawal said only "withdrawn", though the part, counted
    defective on the page a moment before, now counted good."""
    from db.reviews import confirm_defect, mark_false_call, mark_good

    bob = _two_failed_parts_on_review(production, tmp_path)
    bob.text_input(key="reviewer").input("Bob").run()
    shown = bob.selectbox(key="review_part").value
    with session_scope(production) as session:
        inspection = session.scalars(select(Inspection).where(Inspection.part_id == shown)).one()
        mark_good(session, shown, "Ana")  # (the three clicks on their way at once)
        confirm_defect(session, inspection.predictions[0].id, "Bob")
        mark_false_call(session, inspection.predictions[0].id, "Cy")
    bob.selectbox(key="review_part").set_value(shown).run()
    assert any("count the part defective" in w.value for w in bob.warning)
    next(b for b in bob.button if b.label == "Withdraw my confirmed defect").click().run()
    assert not bob.exception, bob.exception
    assert [s.value for s in bob.success] == [
        f"Your confirmed defect on detection 1 of part {shown} withdrawn. Part {shown}, marked "
        "good by Ana, now counts good."
    ]
    with session_scope(production) as session:
        (counted,) = rates(session)
    assert (counted.n_defective, counted.n_good) == (0, 1)


def test_an_undone_confirmation_on_a_part_marked_good_says_the_part_counts_good_again(
    production: str, tmp_path: Path
) -> None:
    """Ana marked the part good; Bob's confirmation made it count defective (said at the
    click), and his undo turned it good again while the page said only "Undone: confirmed
    defect". It says what the part counts as after the undo, as a decision there does."""
    at = _two_failed_parts_on_review(production, tmp_path)
    first = at.selectbox(key="review_part").value
    next(b for b in at.button if b.label == "Mark part good").click().run()
    at.text_input(key="reviewer").input("Bob").run()
    at.selectbox(key="review_part").set_value(first).run()
    next(b for b in at.button if b.label == "Confirm defect").click().run()
    with session_scope(production) as session:
        (counted,) = rates(session)
    assert (counted.n_defective, counted.n_good) == (1, 0)
    next(b for b in at.button if b.label == f"Undo my last review of part {first}").click().run()
    assert not at.exception, at.exception
    assert [s.value for s in at.success] == [
        f"Undone: confirmed defect on part {first}. Part {first}, marked good by Ana, now "
        "counts good."
    ]
    with session_scope(production) as session:
        (counted,) = rates(session)
    assert (counted.n_defective, counted.n_good) == (0, 1)
    # Ana's own mark undone: the part, counted good, is no longer counted at all.
    at.text_input(key="reviewer").input("Ana").run()
    at.session_state["review_last_part"] = first
    at.run()
    next(b for b in at.button if b.label == f"Undo my last review of part {first}").click().run()
    assert not at.exception, at.exception
    assert [s.value for s in at.success] == [
        f"Undone: good part on part {first}. Part {first} is no longer marked good: it is not "
        "counted until its review is finished."
    ]
    with session_scope(production) as session:
        assert rates(session) == []


def test_a_third_reviewer_settles_a_detection_two_reviewers_disagree_on(
    production: str, tmp_path: Path
) -> None:
    """Ana confirmed a detection Bob marked a false call: Cy, a lead, was shown the dispute
    with no button at all (a decided detection's are gone), so it stayed a defect whatever she
    saw, and the part had left the queue. Now it waits there, whoever has not given a word on
    it settles it, and the page says what counts."""
    from db.reviews import confirm_defect, mark_false_call

    cy = _two_failed_parts_on_review(production, tmp_path)
    cy.text_input(key="reviewer").input("Cy").run()
    shown = cy.selectbox(key="review_part").value
    with session_scope(production) as session:
        inspection = session.scalars(select(Inspection).where(Inspection.part_id == shown)).one()
        detection = inspection.predictions[0].id
        confirm_defect(session, detection, "Ana")
        mark_false_call(session, detection, "Bob")
    cy.run()
    assert not cy.exception, cy.exception
    assert [b.label for b in cy.button if b.label.startswith("Settle")] == [
        "Settle: confirm defect",
        "Settle: false call",
    ]
    next(b for b in cy.button if b.label == "Settle: false call").click().run()
    assert not cy.exception, cy.exception
    assert f"Detection 1 of part {shown} settled by your false call." in cy.success[0].value
    cy.selectbox(key="review_part").set_value(shown).run()  # (done: the next part is shown)
    said = "confirmed by Ana, marked a false call by Bob, Cy: counted as a false call (2 to 1)"
    assert any(m.value.endswith(f"**{plain(said)}**") for m in cy.markdown)
    assert not any(b.label.startswith("Settle") for b in cy.button)
    with session_scope(production) as session:
        (truth,) = [t for t in reviewed_parts(session) if t.part_id == shown]
    assert not truth.defective and truth.boxes == []


def test_a_box_drawn_over_a_detection_confirmed_since_says_the_export_teaches_the_detection(
    production: str, tmp_path: Path
) -> None:
    """Ana drew a defect over a detection not yet decided, then confirmed the detection: the
    export teaches the one defect by the detection's box alone, while the page still listed
    her box as a missed defect of its own. It says her box gives way, as the export counts."""
    at = _two_failed_parts_on_review(production, tmp_path)
    shown = at.selectbox(key="review_part").value
    for corner, value in zip(("x1", "y1", "x2", "y2"), (3, 3, 20, 20), strict=True):
        at.number_input(key=f"{corner}_{shown}_0_None").set_value(value)
    next(b for b in at.button if b.label == "Add missed defect").click().run()
    assert [m.value for m in at.markdown if m.value.startswith("- missed")] == [
        f"- missed {CLASSES[0]}, added by Ana"  # (the detection undecided: its own)
    ]
    next(b for b in at.button if b.label == "Confirm defect").click().run()
    at.selectbox(key="review_part").set_value(shown).run()
    assert not at.exception, at.exception
    assert [m.value for m in at.markdown if m.value.startswith("- missed")] == [
        f"- missed {CLASSES[0]}, added by Ana: over a detection confirmed since, which "
        "stands, so the export teaches detection 1's box in its place"
    ]
    with session_scope(production) as session:
        (truth,) = reviewed_parts(session)
        (counted,) = rates(session)
    assert truth.boxes == [(CLASSES[0], 2.0, 2.0, 20.0, 20.0)]
    assert (counted.n_defective, counted.n_good) == (1, 0)


def test_two_confirmed_detections_of_one_defect_say_the_export_teaches_one_box(
    production: str, tmp_path: Path
) -> None:
    """Two detections over one defect (duplicates NMS left, 0.9 and 0.6) on a part Ana marked
    good, and a box Bob drew over them: walked through confirm, undo, mark good, undo, the
    page's words, the rates and the export agree at each step. The export taught the one
    defect as both detections' boxes, while the page showed two confirmed defects; and Bob's
    box, which made the part count defective, was said only "added"."""
    from typer.testing import CliRunner

    from training.cli import app

    at = _two_failed_parts_on_review(production, tmp_path, (0.9, 0.6))
    shown = at.selectbox(key="review_part").value
    with session_scope(production) as session:
        inspection = session.scalars(select(Inspection).where(Inspection.part_id == shown)).one()
        inspection.predictions[1].x1 = 3  # (a box a pixel off the first: one defect still)
    by_ana = f"Part {shown}, marked good by Ana,"
    stands = "defective in the rates and the export: a defect on it stands."
    detection, drawn = (CLASSES[0], 2.0, 2.0, 20.0, 20.0), (CLASSES[0], 3.0, 3.0, 20.0, 20.0)
    gives_way = (
        f"- missed {CLASSES[0]}, added by Bob: over a detection confirmed since, which stands, "
        "so the export teaches detection 1's box in its place"
    )

    def said() -> list[str]:
        return [s.value for s in at.success] + [e.value for e in at.error]

    def page() -> tuple[list[str], list[str], tuple[int, int] | None, list[tuple]]:
        """What the part's page says of its defects, the rates and the export's boxes."""
        at.selectbox(key="review_part").set_value(shown).run()
        assert not at.exception, at.exception
        with session_scope(production) as session:
            counted = rates(session)
            truths = [t for t in reviewed_parts(session) if t.part_id == shown]
        repeats = [c.value for c in at.caption if c.value.startswith("The same defect")]
        missed = [m.value for m in at.markdown if m.value.startswith("- missed")]
        n = (counted[0].n_defective, counted[0].n_good) if counted else None
        return repeats, missed, n, sorted(truths[0].boxes) if truths else []

    def click(label: str) -> None:
        next(b for b in at.button if b.label.startswith(label)).click().run()
        assert not at.exception, at.exception

    click("Mark part good")
    assert page() == ([], [], (0, 1), [])
    at.text_input(key="reviewer").input("Bob").run()
    at.selectbox(key="review_part").set_value(shown).run()
    for corner, value in zip(("x1", "y1", "x2", "y2"), (3, 3, 20, 20), strict=True):
        at.number_input(key=f"{corner}_{shown}_0_None").set_value(value)
    click("Add missed defect")
    # ("added" alone, while the part, counted good a moment before, now counted defective)
    assert said() == [f"Missed {CLASSES[0]} added to part {shown}. {by_ana} now counts {stands}"]
    assert page() == ([], [f"- missed {CLASSES[0]}, added by Bob"], (1, 0), [drawn])
    click("Confirm defect")
    assert said() == [
        f"Your confirmation of detection 1 of part {shown} recorded. {by_ana} still counts {stands}"
    ]
    assert page() == ([], [gives_way], (1, 0), [detection])
    click("Confirm defect")
    assert page() == (
        [
            "The same defect as detection 1, more confident, confirmed too: the export "
            "teaches detection 1's box in this one's place."
        ],
        [gives_way],
        (1, 0),
        [detection],
    )
    exported = CliRunner().invoke(app, ["export-reviews", "--name", "walk"])
    assert exported.exit_code == 0, exported.output
    labels = get_settings().datasets_dir / "walk" / "labels"
    assert [len(f.read_text().splitlines()) for f in labels.rglob("*.txt")] == [1]
    click("Undo my last review")
    assert said() == [f"Undone: confirmed defect on part {shown}. {by_ana} still counts {stands}"]
    assert page() == ([], [gives_way], (1, 0), [detection])
    click("Mark part good")  # (refused: defects stand on it)
    assert said() == [
        plain(
            f"part {shown} has 2 defects that stand: a missed defect ({CLASSES[0]}, by Bob, "
            f"drawn over a confirmed detection); a confirmed defect ({CLASSES[0]}, by Bob): undo "
            "those reviews first if the part is good"
        )
    ]
    assert page() == ([], [gives_way], (1, 0), [detection])
    click("Undo my last review")
    assert said() == [f"Undone: confirmed defect on part {shown}. {by_ana} still counts {stands}"]
    assert page() == ([], [f"- missed {CLASSES[0]}, added by Bob"], (1, 0), [drawn])
    click("Undo my last review")
    assert said() == [f"Undone: missed defect on part {shown}. {by_ana} now counts good."]
    assert page() == ([], [], (0, 1), [])


def test_a_settling_confirmation_is_said_and_its_undo_brings_the_dispute_back(
    production: str, tmp_path: Path
) -> None:
    """Cy settled Ana's and Bob's dispute by a confirmation: the page said "settled by your
    confirm defect" (the button, not her word). Her undo puts the dispute back, to be settled
    again."""
    from db.reviews import confirm_defect, mark_false_call

    cy = _two_failed_parts_on_review(production, tmp_path)
    cy.text_input(key="reviewer").input("Cy").run()
    shown = cy.selectbox(key="review_part").value
    with session_scope(production) as session:
        inspection = session.scalars(select(Inspection).where(Inspection.part_id == shown)).one()
        detection = inspection.predictions[0].id
        confirm_defect(session, detection, "Ana")
        mark_false_call(session, detection, "Bob")
    cy.run()
    next(b for b in cy.button if b.label == "Settle: confirm defect").click().run()
    assert not cy.exception, cy.exception
    assert f"Detection 1 of part {shown} settled by your confirmation." in cy.success[0].value
    next(b for b in cy.button if b.label == f"Undo my last review of part {shown}").click().run()
    assert not cy.exception, cy.exception
    assert cy.selectbox(key="review_part").value == shown
    said = (
        "confirmed by Ana, marked a false call by Bob: counted as a defect until another "
        "reviewer settles it"
    )
    assert any(m.value.endswith(f"**{plain(said)}**") for m in cy.markdown)
    assert [b.label for b in cy.button if b.label.startswith("Settle")] == [
        "Settle: confirm defect",
        "Settle: false call",
    ]


def test_a_defect_missed_on_a_part_another_reviewer_finished_can_still_be_added(
    production: str, tmp_path: Path
) -> None:
    """Ana marked a part good while Bob, on the same part, was adding a defect she missed: his
    Add was dropped and the part had left his list (only Ana's kept it, as just reviewed), so
    the defect could not be added at all, and the export taught the part as good."""
    first = _app().run()
    first.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 3, 7)).run()
    ana, bob = _app().run(), _app().run()
    for at, name in ((ana, "Ana"), (bob, "Bob")):
        at.switch_page("views/review.py").run()
        at.text_input(key="reviewer").input(name).run()
    shown = bob.selectbox(key="review_part").value
    next(b for b in ana.button if b.label == "Mark part good").click().run()

    def add(corners: tuple[int, int, int, int]) -> None:
        for corner, value in zip(("x1", "y1", "x2", "y2"), corners, strict=True):
            bob.number_input(key=f"{corner}_{shown}_0_None").set_value(value)
        next(b for b in bob.button if b.label == "Add missed defect").click().run()
        assert not bob.exception, bob.exception

    add((30, 30, 40, 44))
    assert _count(production, Review) == 1  # (Ana's: Bob's click is not put on another part)
    assert any(f'pick "part {shown} (reviewed elsewhere)"' in i.value for i in bob.info)
    assert bob.selectbox(key="review_part").value != shown
    bob.selectbox(key="review_part").set_value(shown).run()
    assert not bob.exception, bob.exception
    add((30, 30, 40, 44))
    assert f"Missed {CLASSES[0]} added to part {shown}." in bob.success[0].value
    with session_scope(production) as session:
        truth = {t.part_id: t for t in reviewed_parts(session)}
    assert truth[shown].defective and len(truth[shown].boxes) == 1


def test_a_decision_on_a_detection_another_reviewer_decided_meanwhile_is_said_dropped(
    production: str, tmp_path: Path
) -> None:
    """Bob marked a false call on a detection Ana had confirmed since his page was drawn: his
    click was dropped without a word, the line now reading "confirmed defect", and Bob took
    his false call for recorded."""
    first = _app().run()
    first.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 2, 3)).run()
    with session_scope(production) as session:
        for inspection in session.scalars(select(Inspection)):
            inspection.verdict = Verdict.FAIL
            for confidence in (0.9, 0.4):
                inspection.predictions.append(
                    Prediction(
                        class_name=CLASSES[0], confidence=confidence, x1=2, y1=2, x2=20, y2=20
                    )
                )
    ana, bob = _app().run(), _app().run()
    for at, name in ((ana, "Ana"), (bob, "Bob")):
        at.switch_page("views/review.py").run()
        at.text_input(key="reviewer").input(name).run()
    next(b for b in ana.button if b.label == "Confirm defect").click().run()
    next(b for b in bob.button if b.label == "False call").click().run()
    assert not bob.exception, bob.exception
    said = "Your false call on detection 1 was not recorded: Ana decided it meanwhile"
    assert any(w.value.startswith(plain(said)) for w in bob.warning)
    with session_scope(production) as session:
        assert [r.reviewer for r in session.scalars(select(Review))] == ["Ana"]
    # Bob's own decisions are not said dropped.
    next(b for b in bob.button if b.label == "Confirm defect").click().run()
    assert not any("not recorded" in w.value for w in bob.warning)


def test_a_large_parts_box_label_is_readable_at_the_width_the_page_shows_it() -> None:
    """A 4000 px part was drawn at 2048 px with a 10 px font: shown about 1000 px across, its
    label was a red tab 5 px high, the class and confidence unreadable."""
    import numpy as np

    from dashboard.drawing import CLASS_COLOURS, DrawnBox, draw_boxes

    pixels = np.full((3000, 4000, 3), 128, dtype=np.uint8)
    drawn = np.asarray(draw_boxes(pixels, [DrawnBox("inclusion 0.11", 2500, 1800, 3800, 2400)]))
    scale = drawn.shape[1] / 4000
    column = drawn[: round(1800 * scale), round(2500 * scale) + 1]  # (its left margin)
    label_rows = int(
        (column == CLASS_COLOURS[0]).all(axis=1).sum()
    )  # the label's tab above the box
    shown_at = 900 / drawn.shape[1]  # the width the page shows it at on a 1400 px screen
    assert label_rows * shown_at >= 10


def test_two_boxes_from_one_corner_keep_both_labels_readable() -> None:
    """Two detections starting near the same corner had one label drawn over the other
    ("crazing 0.18" hidden under "crazing 0.12"), and a later box's line across a label."""
    import numpy as np

    from dashboard.drawing import CLASS_COLOURS, DrawnBox, draw_boxes

    pixels = np.zeros((320, 320, 3), dtype=np.uint8)
    first = DrawnBox("crazing 0.18", 4, 20, 316, 180)
    alone = np.asarray(draw_boxes(pixels, [first]))
    second = DrawnBox("inclusion 0.12", 8, 26, 316, 90, CLASS_COLOURS[1], counted=False)
    both = np.asarray(draw_boxes(pixels, [first, second]))

    def first_label(drawn: np.ndarray) -> int:  # (its tab, above its box's top at 20)
        return int((drawn[:20] == CLASS_COLOURS[0]).all(axis=2).sum())

    assert first_label(both) == first_label(alone) > 100


def test_each_defect_class_is_drawn_in_its_own_colour_with_its_label_in_it() -> None:
    """Every box was drawn red, whatever its class: on a part with a scratch and an inclusion
    nobody could tell which box was which without reading each label."""
    import numpy as np

    from dashboard.charts import ShownBox, review_figure
    from dashboard.drawing import (
        CLASS_COLOURS,
        class_colour,
        draw_boxes,
        hex_colour,
        prediction_boxes,
        text_colour,
    )

    classes = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
    predictions = [
        Prediction(class_name=c, confidence=0.9, x1=10 + 50 * i, y1=40, x2=40 + 50 * i, y2=90)
        for i, c in enumerate(classes)
    ]
    for p in predictions:
        p.counted = True
    boxes = prediction_boxes(predictions, classes)
    colours = [b.colour for b in boxes]
    assert len(set(colours)) == len(classes)  # told apart
    assert set(colours) <= set(CLASS_COLOURS)  # the fixed, colour-blind-safe palette
    # The same class the same colour on another part, alone or among others, and on Review.
    assert prediction_boxes(predictions[4:5], classes)[0].colour == colours[4]
    assert class_colour("scratches", classes) == colours[5]
    figure = review_figure(
        np.zeros((100, 320, 3), np.uint8),
        [ShownBox(b.label, b.x1, b.y1, b.x2, b.y2, True, colour=b.colour) for b in boxes],
    )
    assert [s.line.color for s in figure.layout.shapes] == [hex_colour(c) for c in colours]
    assert [a.bgcolor for a in figure.layout.annotations] == [hex_colour(c) for c in colours]
    # A class no detector knows (a reviewer's new one) still has one colour of the palette.
    assert class_colour("crack", classes) == class_colour("crack") in CLASS_COLOURS

    apart = [boxes[0], boxes[3]]  # (labels side by side)
    drawn = np.asarray(draw_boxes(np.zeros((320, 320, 3), np.uint8), apart))
    for box in apart:  # each label's tab in its box's colour, above the box
        tab = drawn[:40, round(box.x1) + 1]
        assert (tab == box.colour).all(axis=1).sum() >= 8

    def contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
        def lum(c: tuple[int, int, int]) -> float:
            v = [x / 255 for x in c]
            v = [x / 12.92 if x <= 0.04045 else ((x + 0.055) / 1.055) ** 2.4 for x in v]
            return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]

        light, dark = sorted((lum(a), lum(b)), reverse=True)
        return (light + 0.05) / (dark + 0.05)

    # Its text readable on it (WCAG's 4.5:1): white on yellow or sky blue was not.
    assert all(contrast(c, text_colour(c)) >= 4.5 for c in CLASS_COLOURS)


def test_a_detector_of_many_classes_draws_each_in_a_colour_of_its_own() -> None:
    """Seven colours in all: a detector's 8th class was drawn in the 1st's colour (the 9th
    in the 2nd's), so their boxes could not be told apart. The first seven keep theirs."""
    import numpy as np

    from dashboard.charts import ShownBox, review_figure
    from dashboard.drawing import CLASS_COLOURS, class_colour, hex_colour, text_colour

    classes = [f"class_{n}" for n in range(40)]
    colours = [class_colour(name, classes) for name in classes]
    assert colours[:7] == list(CLASS_COLOURS)
    assert len(set(colours)) == len(classes)
    assert class_colour("class_9", classes[:12]) == colours[9]  # (alike whatever comes after)

    def luminance(colour: tuple[int, int, int]) -> float:
        v = [x / 255 for x in colour]
        v = [x / 12.92 if x <= 0.04045 else ((x + 0.055) / 1.055) ** 2.4 for x in v]
        return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]

    for colour in colours:  # each label's text readable on it (WCAG's 4.5:1)
        light, dark = sorted((luminance(colour), luminance(text_colour(colour))), reverse=True)
        assert (light + 0.05) / (dark + 0.05) >= 4.5, colour
    figure = review_figure(
        np.zeros((100, 320, 3), np.uint8),
        [ShownBox(n, 5, 5, 20, 10, True, colour=colours[int(n)]) for n in ("0", "7", "8")],
    )
    assert len({a.bgcolor for a in figure.layout.annotations}) == 3
    assert [a.font.color for a in figure.layout.annotations] == [
        hex_colour(text_colour(colours[n])) for n in (0, 7, 8)
    ]


def test_with_no_production_model_a_class_keeps_the_colour_of_the_detector_that_judged_it(
    production: str, tmp_path: Path
) -> None:
    """With no detector in production, the Review page coloured a part's detections by its
    own classes sorted: the second class of the detector, alone on a part, was drawn in the
    first's colour, and in another on a part with both."""
    from dashboard.drawing import class_colour, hex_colour
    from db.models import ModelStage

    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 1, 16)).run()
    with session_scope(production) as session:
        inspection = session.scalars(select(Inspection)).one()
        inspection.verdict = Verdict.FAIL
        inspection.predictions.append(
            Prediction(class_name=CLASSES[1], confidence=0.9, x1=2, y1=2, x2=20, y2=20)
        )
        session.execute(update(ModelVersion).values(stage=ModelStage.CANDIDATE))
    at.switch_page("views/review.py").run()
    assert not at.exception, at.exception
    line = next(m for m in at.markdown if m.value.startswith("1. "))
    colour = hex_colour(class_colour(CLASSES[1], CLASSES))
    assert f"background-color: {colour}" in line.value, line.value


def test_live_draws_the_last_failed_part_in_the_colours_of_the_detector_that_judged_it(
    production: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no detector in production, the Live page coloured the last failed part's boxes by
    class name alone: the detector's second class was drawn there in another colour than on
    the Inspect and Review pages."""
    from typing import Any

    import numpy as np

    from dashboard import drawing
    from dashboard.drawing import class_colour
    from db.models import ModelStage

    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 1, 16)).run()
    with session_scope(production) as session:
        inspection = session.scalars(select(Inspection)).one()
        inspection.verdict = Verdict.FAIL
        inspection.predictions.append(
            Prediction(class_name=CLASSES[1], confidence=0.9, x1=2, y1=2, x2=20, y2=20)
        )
        session.execute(update(ModelVersion).values(stage=ModelStage.CANDIDATE))
    drawn: list[np.ndarray] = []  # what the page drew, as it drew it (the page shows it)
    draw_boxes = drawing.draw_boxes

    def kept_drawing(*args: Any, **kwargs: Any) -> Any:
        image = draw_boxes(*args, **kwargs)
        drawn.append(np.asarray(image.convert("RGB"), dtype=int))
        return image

    monkeypatch.setattr(drawing, "draw_boxes", kept_drawing)
    at.switch_page("views/live.py").run()
    assert not at.exception, at.exception
    assert len(at.get("image")) == 1 and len(drawn) == 1

    def drawn_in(colour: tuple[int, int, int]) -> int:
        return int((drawn[0] == colour).all(axis=2).sum())

    judged_by, by_name = class_colour(CLASSES[1], CLASSES), class_colour(CLASSES[1])
    assert judged_by != by_name
    assert drawn_in(judged_by) > 100 and drawn_in(by_name) == 0


def test_the_review_pages_legend_says_how_its_boxes_are_drawn(
    production: str, tmp_path: Path
) -> None:
    """Its legend still read "red counts toward the verdict, amber is below its threshold"
    once each class had its own colour."""
    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 1, 14)).run()
    with session_scope(production) as session:
        inspection = session.scalars(select(Inspection)).one()
        inspection.verdict = Verdict.FAIL
        inspection.predictions.append(
            Prediction(class_name=CLASSES[0], confidence=0.9, x1=2, y1=2, x2=20, y2=20)
        )
    at.switch_page("views/review.py").run()
    assert not at.exception, at.exception
    legend = next(c.value for c in at.caption if c.value.startswith("Boxes:"))
    assert "its own colour" in legend and "dashed is below its threshold" in legend
    assert "amber" not in legend


def test_the_review_pages_list_of_detections_is_in_their_boxes_colours(
    production: str, tmp_path: Path
) -> None:
    """The numbered list of a part's detections read in the page's own colour while each box
    was drawn in its class's: a line was matched to its box by its number alone. Each line's
    class and confidence are on its class's colour, as its box's label is."""
    from dashboard.drawing import class_colour, hex_colour, text_colour

    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(_png_files(tmp_path, 1, 15)).run()
    with session_scope(production) as session:
        inspection = session.scalars(select(Inspection)).one()
        inspection.verdict = Verdict.FAIL
        inspection.predictions.extend(
            Prediction(class_name=name, confidence=0.9, x1=2, y1=2, x2=20, y2=20)
            for name in CLASSES
        )
    at.switch_page("views/review.py").run()
    assert not at.exception, at.exception
    for n, name in enumerate(CLASSES, 1):
        line = next(m for m in at.markdown if m.value.startswith(f"{n}. "))
        colour = class_colour(name, CLASSES)
        assert f"background-color: {hex_colour(colour)}" in line.value
        assert f"color: {hex_colour(text_colour(colour))}" in line.value
        assert f">{plain(name + ' 0.900')}</span>" in line.value and line.proto.allow_html
    assert class_colour(CLASSES[0], CLASSES) != class_colour(CLASSES[1], CLASSES)


def test_a_box_at_the_right_edge_keeps_its_whole_label_on_the_image() -> None:
    """A label starts at its box's left: a narrow box at the part's right edge had its label
    run off the image, "rolled-in_sc", the rest cut off."""
    import numpy as np

    from dashboard.drawing import CLASS_COLOURS, DrawnBox, draw_boxes

    pixels = np.zeros((320, 320, 3), np.uint8)
    label = "rolled-in_scale 0.39"
    alone = np.asarray(draw_boxes(pixels, [DrawnBox(label, 20, 100, 60, 200)]))
    edge = np.asarray(draw_boxes(pixels, [DrawnBox(label, 290, 100, 318, 200)]))

    def tab_width(drawn: np.ndarray) -> int:  # (its top padding row, in the box's colour)
        rows = np.nonzero((drawn[:100] == CLASS_COLOURS[0]).all(axis=2).any(axis=1))[0]
        return int((drawn[rows[0]] == CLASS_COLOURS[0]).all(axis=1).sum())

    assert tab_width(edge) == tab_width(alone) > 100


def test_a_box_below_its_threshold_is_dashed_in_its_class_colour() -> None:
    """Told from a counted box by its dashes, not by a colour of its own (which the class
    colours now are)."""
    import numpy as np

    from dashboard.charts import ShownBox, review_figure
    from dashboard.drawing import CLASS_COLOURS, DrawnBox, draw_boxes

    pixels = np.zeros((320, 320, 3), np.uint8)
    solid = np.asarray(draw_boxes(pixels, [DrawnBox("a", 20, 100, 300, 300)]))
    dashed = np.asarray(draw_boxes(pixels, [DrawnBox("a", 20, 100, 300, 300, counted=False)]))
    bottom_solid = (solid[299, 40:280] == CLASS_COLOURS[0]).all(axis=1).mean()
    bottom_dashed = (dashed[299, 40:280] == CLASS_COLOURS[0]).all(axis=1).mean()
    assert bottom_solid == 1.0 and 0.3 < bottom_dashed < 0.7
    figure = review_figure(
        pixels,
        [
            ShownBox("1", 5, 5, 20, 10, True),
            ShownBox("2", 5, 5, 20, 10, False),
            ShownBox("missed", 5, 5, 20, 10, True, missed=True),
        ],
    )
    assert [s.line.dash for s in figure.layout.shapes] == ["solid", "dash", "dot"]


def test_a_part_far_larger_than_an_untiled_models_input_is_said_to_be_judged_shrunk(
    production: str, tmp_path: Path
) -> None:
    """A 4000x3000 frame judged whole by a 640 px model passed or failed with no word that it
    was shrunk to a sixth of its side, where a defect a few pixels across is not there."""
    import numpy as np
    from PIL import Image

    small = _png_files(tmp_path, 1, 3)
    frame = io.BytesIO()  # (a texture: a flat grey frame is a blank one, never judged)
    texture = np.random.default_rng(0).integers(60, 200, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(texture).save(frame, format="PNG")
    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(small).run()
    assert not at.exception, at.exception
    assert not [w for w in at.warning if "judged whole" in w.value]
    at.file_uploader(key="inspect_files").set_value(
        [*small, ("frame.png", frame.getvalue(), "image/png")]
    ).run()
    assert not at.exception, at.exception
    [warning] = [w.value for w in at.warning if "judged whole" in w.value]
    assert "1 part(s) over 128 px" in warning and "frame.png" in warning
    assert "400x300" in warning and "shrunk to the 64 px" in warning


def test_the_note_under_a_long_upload_counts_the_tables_rows(
    production: str, tmp_path: Path
) -> None:
    """A zip of 61 images and 2 other files: the page drew 60 parts and said "the table lists
    all 61" over a table of 63 rows, its errors not counted."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data, _ in _png_files(tmp_path, 61, 4):
            archive.writestr(name, data)
        archive.writestr("notes.txt", b"shift notes")
        archive.writestr("readme.txt", b"not a part")
    at = _app().run()
    at.file_uploader(key="inspect_files").set_value(
        [("lot.zip", buffer.getvalue(), "application/zip")]
    ).run()
    assert not at.exception, at.exception
    [note] = [c.value for c in at.caption if c.value.startswith("Showing the first")]
    assert (
        note == "Showing the first 60 of 61 parts judged; the table lists all 63, errors included."
    )


def test_settings_shows_each_rate_with_its_bound_and_the_part_classifier_stored(
    production: str, tmp_path: Path
) -> None:
    """The calibration preview gave its counts alone (0 of 9 missed reads as a 0% miss rate);
    the stored point's caption gave no false calls; and a point whose part classifier alone
    fails parts, every class off, was shown as six sliders "never fails the part" with no word
    of the classifier or its threshold, which stations judge with."""
    from training.calibrate import store_operating_point

    at = _calibrate_on_settings_page(production, tmp_path, 12, "Class thresholds", "shared")
    preview = next(m.value for m in at.markdown if m.value.startswith("**Calibrated on"))
    assert "defective parts missed (95% upper bound" in preview, preview
    assert "good parts (95% upper bound" in preview or "of 0 good parts." in preview, preview
    store_operating_point(
        production,
        "tiny",
        {
            "per_class": dict.fromkeys(CLASSES, 1.01),
            "default": 1.01,
            "calibration": {
                **_CALIBRATED_ELSEWHERE["calibration"],
                "n_false_calls": 1,
                "n_good": 4,
                "false_call_rate_upper_95": 0.7514,
            },
            "classifier": {"version": "verifier", "part": 0.6, "verify": None},
        },
    )
    at = _app().run()
    at.switch_page("views/settings.py").run()
    assert not at.exception, at.exception
    said = [c.value for c in at.caption]
    assert any(
        "0 of 9 defective parts missed (95% upper bound 28.0%); 1 false calls of 4 good parts "
        "(95% upper bound 75.1%)" in c
        for c in said
    ), said
    assert (
        "Part classifier verifier: a part also fails where its defect probability reaches "
        "0.6000, whatever the detector finds." in said
    ), said


def test_a_class_switched_on_again_at_the_top_of_its_slider_is_refused(production: str) -> None:
    """Unticking "never fails the part" left the class's slider at 1.000, and a save stored it
    so, the box then unticked (the class shown on) while it failed almost no part: nothing is
    stored until its slider is set lower."""
    from training.calibrate import CLASS_OFF, store_operating_point

    off = CLASSES[0]
    store_operating_point(production, "tiny", {"default": CLASS_OFF, "per_class": {off: CLASS_OFF}})
    before = _thresholds(production)
    at = _app().run()
    at.switch_page("views/settings.py").run()
    next(c for c in at.checkbox if c.key.endswith(f"_{off}")).uncheck()
    next(b for b in at.button if b.label == "Save thresholds").click().run()
    assert not at.exception, at.exception
    assert not at.success
    assert f"{off}: at 1.000 a class fails almost no part" in at.error[0].value
    assert _thresholds(production) == before
    next(s for s in at.slider if s.label == off).set_value(0.4)
    next(b for b in at.button if b.label == "Save thresholds").click().run()
    assert "Saved" in at.success[0].value
    assert _thresholds(production)["per_class"][off] == pytest.approx(0.4)


def test_a_slider_moved_to_one_is_refused_until_set_lower_or_switched_off(production: str) -> None:
    """In a browser a form's sliders rerun the page only with its submit: a class moved to
    1.000 and saved was stored so, its warning shown with the save, the class failing almost no
    part. Nothing is stored until its slider is set lower or its box ticked."""
    from training.calibrate import CLASS_OFF, store_operating_point

    moved, other = CLASSES[0], CLASSES[1]
    store_operating_point(production, "tiny", {"default": 0.25, "per_class": {}})
    before = _thresholds(production)
    at = _app().run()
    at.switch_page("views/settings.py").run()
    next(s for s in at.slider if s.label == moved).set_value(1.0)
    next(s for s in at.slider if s.label == other).set_value(0.3)
    next(b for b in at.button if b.label == "Save thresholds").click().run()
    assert not at.exception, at.exception
    assert not at.success
    assert at.error[0].value.startswith(f"{moved}: at 1.000 a class fails almost no part")
    assert "(nothing was stored)" in at.error[0].value
    assert _thresholds(production) == before
    next(c for c in at.checkbox if c.key.endswith(f"_{moved}")).check()
    next(b for b in at.button if b.label == "Save thresholds").click().run()
    assert "Saved" in at.success[0].value
    assert _thresholds(production)["per_class"] == {moved: CLASS_OFF, other: 0.3}


def test_a_class_stored_at_one_says_it_fails_almost_no_part_and_is_kept(production: str) -> None:
    """A class stored at 1.0 (saved so by an earlier release, switched on again at the top of
    its slider) showed as on, its box unticked, with no word that stations count a detection
    of it only at a confidence of exactly 1.0: it is said, and a save leaves it as stored."""
    from training.calibrate import store_operating_point

    at_top, other = CLASSES[0], CLASSES[1]
    store_operating_point(production, "tiny", {"default": 0.25, "per_class": {at_top: 1.0}})
    at = _app().run()
    at.switch_page("views/settings.py").run()
    assert not at.exception, at.exception
    assert [w.value for w in at.warning if w.value.startswith(f"{at_top}:")] == [
        f"{at_top}: stored at 1.000, where stations fail a part only on a detection of "
        'confidence exactly 1.0, so almost never. Tick "never fails the part" to switch it '
        "off, or set its slider lower to have it fail parts."
    ]
    assert not any(w.value.startswith(f"{other}:") for w in at.warning)
    next(b for b in at.button if b.label == "Save thresholds").click().run()
    assert "Saved" in at.success[0].value
    assert _thresholds(production)["per_class"] == {at_top: 1.0, other: 0.25}


def test_the_warning_of_a_class_at_one_follows_the_sliders_not_what_is_stored(
    production: str,
) -> None:
    """The warning of a class at 1.000 followed what was stored: with a save refused (another
    class switched on again at the top of its slider), a slider moved to 1.0 was not warned
    of, and one moved down from a stored 1.0 was still said to fail almost no part. It
    follows what a save would store."""
    from training.calibrate import CLASS_OFF, store_operating_point

    def refused_save(moved: str, to: float, off: str) -> list[str]:
        """The warnings after a save of `moved` at `to` refused for `off` switched on."""
        at = _app().run()
        at.switch_page("views/settings.py").run()
        next(s for s in at.slider if s.label == moved).set_value(to)
        next(c for c in at.checkbox if c.key.endswith(f"_{off}")).uncheck()
        next(b for b in at.button if b.label == "Save thresholds").click().run()
        assert not at.exception, at.exception
        assert f"{off}: at 1.000 a class fails almost no part" in at.error[0].value
        return [w.value for w in at.warning if w.value.startswith((f"{moved}:", f"{off}:"))]

    moved, off = CLASSES[0], CLASSES[1]
    store_operating_point(production, "tiny", {"default": 0.25, "per_class": {off: CLASS_OFF}})
    assert refused_save(moved, 1.0, off) == [
        f"{moved}: at 1.000, where stations fail a part only on a detection of "
        'confidence exactly 1.0, so almost never. Tick "never fails the part" to switch it '
        "off, or set its slider lower to have it fail parts."
    ]
    store_operating_point(
        production, "tiny", {"default": 0.25, "per_class": {moved: 1.0, off: CLASS_OFF}}
    )
    assert refused_save(moved, 0.5, off) == []


def test_a_threshold_finer_than_the_thousandth_is_shown_and_saved_as_stations_use_it(
    production: str,
) -> None:
    """A calibrated 0.12345 showed as 0.123 while stations judged at 0.12345: the slider
    shows the decimals the stored threshold has, and a save leaves it as stored."""
    from training.calibrate import store_operating_point

    fine, plain_one = CLASSES[0], CLASSES[1]
    store_operating_point(production, "tiny", {"default": 0.25, "per_class": {fine: 0.12345}})
    at = _app().run()
    at.switch_page("views/settings.py").run()
    shown = {s.label: (s.value, s.proto.format) for s in at.slider}
    assert shown == {fine: (0.12345, "%.5f"), plain_one: (0.25, "%.3f")}
    next(b for b in at.button if b.label == "Save thresholds").click().run()
    assert "Saved" in at.success[0].value
    assert _thresholds(production)["per_class"] == {fine: 0.12345, plain_one: 0.25}


def test_a_stored_calibration_on_another_grid_is_a_warning_on_the_settings_page(
    production: str,
) -> None:
    """`defects calibrate` stores its point at once, its grid warning with it: the Settings
    page showed that warning only in the preview of a calibration it computed itself."""
    from training.calibrate import store_operating_point

    grid_warning = "scored on tiles of 320 px, the model judges whole parts: ..."
    store_operating_point(
        production,
        "tiny",
        {
            **_CALIBRATED_ELSEWHERE,
            "calibration": {**_CALIBRATED_ELSEWHERE["calibration"], "grid_warning": grid_warning},
        },
    )
    at = _app().run()
    at.switch_page("views/settings.py").run()
    assert not at.exception, at.exception
    assert any(w.value == plain(grid_warning) for w in at.warning), [w.value for w in at.warning]

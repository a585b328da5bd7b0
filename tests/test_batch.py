"""Batch inspection: sources, bad files, resume after a crash, hot-folder watching, the CLI."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from db.models import Inspection, InspectionRun, ModelVersion, Part, Verdict
from db.session import session_scope
from inspection.batch import WRITE_NOW, BatchInspection, SourceItem, folder_files, iter_source
from inspection.engine import PartResult
from inspection.errors import UserError
from inspection.settings import get_settings
from tests.conftest import (
    Trained,
    register_production_detector,
    register_tiny_detector,
    unlistable,
    within,
)
from tests.synthetic import CLASSES, make_images

ROOT = Path(__file__).parents[1]


@pytest.fixture
def detector(database_url: str, trained: Trained, tmp_path: Path) -> str:
    """The tiny trained detector, registered as the production model of this test's database."""
    register_production_detector(database_url, trained.weights, tmp_path / "models")
    return database_url


def _counts(url: str) -> tuple[int, int, int]:
    with session_scope(url) as session:
        parts = session.scalar(select(func.count(Part.id)))
        inspections = session.scalar(select(func.count(Inspection.id)))
        distinct = session.scalar(select(func.count(func.distinct(Inspection.part_id))))
    return int(parts or 0), int(inspections or 0), int(distinct or 0)


def _count_of(url: str, model) -> int:  # type: ignore[no-untyped-def]
    with session_scope(url) as session:
        return int(session.scalar(select(func.count(model.id))) or 0)


def _job(url: str, tmp_path: Path, **kwargs) -> BatchInspection:  # type: ignore[no-untyped-def]
    return BatchInspection(url, tmp_path / "store", "Line 1", "Cam A", **kwargs)


def test_a_run_whose_model_cannot_load_is_not_left_open(detector: str, tmp_path: Path) -> None:
    """It stood open for ever on the Live page and in `defects status`, with no part."""
    from db.models import InspectionRun, ModelVersion
    from inspection.parallel import ParallelInspection

    make_images(tmp_path / "in", n=1)
    _job(detector, tmp_path).run(iter_source(str(tmp_path / "in")))
    with session_scope(detector) as session:
        Path(session.scalars(select(ModelVersion.file_path)).one()).unlink()
    with pytest.raises(UserError, match="weights of tiny are missing"):
        _job(detector, tmp_path)
    with pytest.raises(UserError, match="weights of tiny are missing"):  # (`--workers 2`)
        ParallelInspection(detector, tmp_path / "store", "Line 1", "Cam A", 2)
    with session_scope(detector) as session:
        runs = session.scalars(select(InspectionRun)).all()
        assert len(runs) == 1 and runs[0].finished_at is not None  # the first, with its part


def test_a_verifying_classifier_whose_weights_are_gone_is_said_as_a_detector_is(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The classifier an operating point names, its weights deleted: `inspect` and `batch`
    said "classifier file not found: PATH", `evaluate` "...whose weights are missing (PATH)",
    the dashboard "model file not found"; a detector's or a classifier version's own weights
    gone, "the weights of NAME are missing (PATH): copy ..." with what to copy where."""
    from db.models import ModelKind
    from db.registry import get_model_version
    from tests.conftest import import_synthetic
    from training.versions import register_model_version

    (tmp_path / "clf.pt").write_bytes(b"a classifier's weights")
    with session_scope(detector) as session:
        classifier = register_model_version(
            session,
            tmp_path / "clf.pt",
            tmp_path / "models",
            kind=ModelKind.CLASSIFIER,
            architecture="mobilenet_v3_small",
            class_names=["good", *CLASSES],
            image_size=64,
            name="clf",
        )
        Path(classifier.file_path).unlink()
        tiny = get_model_version(session, "tiny")
        tiny.thresholds = {**tiny.thresholds, "classifier": {"version": "clf"}}
    said = r"^the weights of clf are missing \(.*clf\.pt\): copy that version's folder"
    with pytest.raises(UserError, match=said):
        _job(detector, tmp_path)

    from dashboard.state import detector_info, inspector_for

    info = detector_info(detector)
    assert info is not None
    with pytest.raises(UserError, match=said):
        inspector_for(info)

    from training.evaluate import evaluate_detector, resolve_model

    import_synthetic(detector, tmp_path, n=4)
    weights, thresholds, _, _ = resolve_model("tiny", detector)  # (`defects evaluate tiny`)
    with pytest.raises(UserError, match=said):
        evaluate_detector(weights, "synth", "val", thresholds=thresholds, url=detector)


def test_weights_found_by_hash_are_hashed_after_the_run_is_opened(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version's weights not at their registered path are taken from this machine's
    models/VERSION/ where their SHA-256 is the version's: that hash (a large file) was taken
    inside the transaction that opened the run, holding SQLite's write lock, so every other
    station's writes waited for it."""
    if not detector.startswith("sqlite"):
        pytest.skip("SQLite's write lock")
    import sqlite3

    import inspection.engine as engine
    from inspection.parallel import ParallelInspection

    with session_scope(detector) as session:
        recorded = Path(session.scalars(select(ModelVersion.file_path)).one())
    here = get_settings().models_dir / recorded.parent.name / recorded.name
    here.parent.mkdir(parents=True)
    recorded.rename(here)  # (registered on another machine; copied here)
    hashed_while_locked: list[bool] = []
    real_hash = engine.sha256_of

    def hashing(path: Path) -> str:
        probe = sqlite3.connect(detector.removeprefix("sqlite:///"), timeout=0)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.rollback()
            hashed_while_locked.append(False)
        except sqlite3.OperationalError:  # "database is locked": a write is open
            hashed_while_locked.append(True)
        finally:
            probe.close()
        return real_hash(path)

    monkeypatch.setattr(engine, "sha256_of", hashing)
    for opening in (
        lambda: _job(detector, tmp_path),
        lambda: ParallelInspection(detector, tmp_path / "store", "Line 2", "Cam B", 2),
    ):
        engine._cached_sha256.cache_clear()  # (hashed once per file and process)
        hashed_while_locked.clear()
        opening()
        assert hashed_while_locked == [False]


def test_folder_batch_stores_every_part_and_its_image(detector: str, tmp_path: Path) -> None:
    make_images(tmp_path / "in", n=10)
    (tmp_path / "in" / "notes.txt").write_text("shift 2")
    summary = _job(detector, tmp_path).run(iter_source(str(tmp_path / "in")))
    assert (summary.inspected, summary.errors, summary.skipped) == (11, 1, 0)
    assert _counts(detector) == (11, 11, 11)
    with session_scope(detector) as session:
        error = session.scalars(select(Inspection).where(Inspection.verdict == Verdict.ERROR)).one()
        assert "not an image file" in (error.error or "")
        for part in session.scalars(select(Part)):
            assert Path(part.stored_path).is_file()  # nothing lost, the bad file included


def test_a_run_is_marked_finished_whether_or_not_it_wrote(detector: str, tmp_path: Path) -> None:
    from db.models import InspectionRun

    images = make_images(tmp_path / "in", n=1)
    part = tmp_path / "in" / images[0].name

    def finished(run_id: int):  # type: ignore[no-untyped-def]
        with session_scope(detector) as session:
            return session.get(InspectionRun, run_id).finished_at  # type: ignore[union-attr]

    first = _job(detector, tmp_path)
    summary = first.run(iter_source(str(part)))  # one part: its write marks the run finished
    assert summary.inspected == 1 and finished(summary.run_id) is not None
    again = _job(detector, tmp_path)
    summary = again.run(iter_source(str(part)))  # nothing to write: marked all the same
    assert summary.skipped == 1 and finished(summary.run_id) is not None


def test_a_chunk_holds_several_batches_where_one_batch_would_fill_it() -> None:
    from inspection.batch import WRITE_CHUNK, chunk_parts

    assert WRITE_CHUNK == 64
    assert chunk_parts(batch_size=4, chunk_batches=4) == 64  # a CPU's batches: 16 a chunk
    assert chunk_parts(batch_size=32, chunk_batches=4) == 64  # two: decoding overlaps already
    assert chunk_parts(batch_size=64, chunk_batches=4) == 256  # a GPU's batch: four
    assert chunk_parts(batch_size=48, chunk_batches=1) == 64  # as it was: one batch a chunk


def test_copies_across_chunks_in_flight_are_judged_once(detector: str, tmp_path: Path) -> None:
    """A chunk is planned while the one before it is still being written: a copy of a part (or a
    second failed read of a file) in a later chunk is still judged only once."""
    from inspection.batch import SourceItem

    images = make_images(tmp_path / "in", n=3)
    datas = [(tmp_path / "in" / image.name).read_bytes() for image in images]
    items = [SourceItem(f"copy{i}-{j}.png", datas[j]) for i in range(4) for j in range(3)]
    items += [SourceItem("lost.png", None, "cannot read the file")] * 2
    job = _job(detector, tmp_path)
    job.chunk_parts = 2
    summary = job.run(items)
    assert (summary.seen, summary.inspected, summary.skipped, summary.errors) == (14, 4, 10, 1)
    assert _counts(detector) == (4, 4, 4)


def test_zip_with_bad_entries_and_glob_sources(detector: str, tmp_path: Path) -> None:
    images = make_images(tmp_path / "in", n=3)
    archive = tmp_path / "parts.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for image in images:
            zf.write(tmp_path / "in" / image.name, image.name)
        zf.writestr("broken.png", b"\x89PNG\r\n\x1a\n" + b"0" * 500)
    data = bytearray(archive.read_bytes())
    # Corrupt the compressed bytes of the first entry: its CRC check fails on reading.
    offset = data.index(images[0].name.encode()) + len(images[0].name) + 40
    data[offset : offset + 20] = b"\x00" * 20
    archive.write_bytes(bytes(data))
    summary = _job(detector, tmp_path).run(iter_source(str(archive)))
    assert summary.inspected == 4 and summary.errors == 2
    with session_scope(detector) as session:
        errors = sorted(
            i.error or ""
            for i in session.scalars(select(Inspection).where(Inspection.error.is_not(None)))
        )
    assert any(e.startswith("bad zip entry") for e in errors)
    assert any(e.startswith("corrupt or truncated image") for e in errors)
    globbed = list(iter_source(str(tmp_path / "in" / "*.png")))
    assert len(globbed) == 3
    with pytest.raises(UserError, match="no files match"):
        list(iter_source(str(tmp_path / "in" / "*.bmp")))


def test_a_broken_link_in_a_folder_is_reported_not_passed_over(tmp_path: Path) -> None:
    make_images(tmp_path / "in", n=1, size=32)
    (tmp_path / "in" / "gone.png").symlink_to(tmp_path / "unmounted" / "frame.png")
    (tmp_path / "in" / ".hidden.png").symlink_to(tmp_path / "unmounted" / "other.png")
    items = {item.name: item for item in iter_source(str(tmp_path / "in"))}
    assert set(items) == {"part_000.png", "gone.png"}  # hidden files stay out, as before
    assert items["part_000.png"].data
    assert items["gone.png"].data is None
    assert items["gone.png"].error == "cannot read the file: a link whose target is missing"


def test_a_loop_of_links_in_a_folder_is_reported_and_the_rest_judged(tmp_path: Path) -> None:
    """A loop of links (a -> b -> a) stopped the listing, so the whole batch, with "too many
    levels of symbolic links"; it is a file that cannot be read, as a dead link is."""
    make_images(tmp_path / "in", n=1, size=32)
    (tmp_path / "in" / "a.png").symlink_to(tmp_path / "in" / "b.png")
    (tmp_path / "in" / "b.png").symlink_to(tmp_path / "in" / "a.png")
    items = {item.name: item for item in iter_source(str(tmp_path / "in"))}
    assert set(items) == {"part_000.png", "a.png", "b.png"}
    assert items["part_000.png"].data
    for name in ("a.png", "b.png"):
        assert items[name].data is None
        assert items[name].error == "cannot read the file: a link that leads to itself"


def test_a_sub_folder_that_cannot_be_read_is_an_error_not_passed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sub-folder the station's user cannot read (a camera writing as another user) was left
    out with one line on stderr: its parts were neither judged nor counted nor in the CSV. It
    is now an error of its own, in a batch and in a watch."""
    from inspection import batch

    make_images(tmp_path / "in", n=1, size=32)
    make_images(tmp_path / "in" / "locked", n=1, size=32)
    locked = tmp_path / "in" / "locked"
    with unlistable(locked, monkeypatch):
        reason = "cannot read the folder: Permission denied (its files were not inspected)"
        items = {item.name: item for item in iter_source(str(tmp_path / "in"))}
        assert set(items) == {"part_000.png", "locked"}
        assert items["part_000.png"].data and items["locked"].data is None
        assert items["locked"].error == reason
        stop = threading.Event()
        looks = batch.hot_folder_batches(tmp_path / "in", stop, 0.01, 0.0)
        watched = {item.name: item.error for item in next(looks)}
        stop.set()
        assert watched == {"part_000.png": None, "locked": reason}


def test_a_folder_lists_its_files_in_path_order_without_hidden_or_linked_folders(
    tmp_path: Path,
) -> None:
    root = tmp_path / "in"
    for name in ("a/x.png", "a-b/x.png", "a/b/c.png", "b.png", ".cache/t.png", "a/.tmp/y.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "far.png").write_bytes(b"x")
    (root / "linked").symlink_to(tmp_path / "elsewhere")  # a link to a folder: not followed
    (root / "gone.png").symlink_to(tmp_path / "unmounted.png")  # kept, to be reported
    os.mkfifo(root / "pipe")  # not a file: left out
    listed = folder_files(root)
    assert [p.relative_to(root).as_posix() for p in listed] == [
        "a/b/c.png",
        "a/x.png",
        "a-b/x.png",
        "b.png",
        "gone.png",
    ]
    assert listed == sorted(listed)  # as Path objects sort (by parts, not by string)
    with pytest.raises(FileNotFoundError):
        folder_files(tmp_path / "missing")


def test_a_named_pipe_is_not_opened_where_a_part_is_read(tmp_path: Path) -> None:
    """Listings leave pipes out, but one named (`defects inspect pipe.png`, a link to it) or
    one that replaced a listed file was read, and the read waited for a writer for ever."""
    from inspection.batch import read_file
    from training.cli import app

    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    (tmp_path / "link.png").symlink_to(pipe)
    reason = "cannot read the file: not a regular file but a named pipe: not read"
    with within(5):
        for name in ("pipe.png", "link.png"):
            item = read_file(tmp_path / name, name)
            assert (item.data, item.error) == (None, reason)
        said = CliRunner().invoke(app, ["inspect", str(pipe)])
    assert said.exit_code == 1 and isinstance(said.exception, UserError)
    assert str(said.exception) == f"{pipe}: not a regular file but a named pipe: not read"


def test_a_named_pipe_given_as_the_batch_source_is_said_for_what_it_is(tmp_path: Path) -> None:
    """`defects batch PIPE` said "source not found", though the pipe is there (`ls` shows it),
    and `--watch PIPE` said it "is a file"; both now say it is a named pipe, before the model
    loads (no run opened)."""
    from training.cli import app

    pipe = tmp_path / "frames"
    os.mkfifo(pipe)
    said = f"{pipe} is not a folder, an image or a zip: a named pipe"
    with within(5):
        with pytest.raises(UserError) as raised:
            next(iter_source(str(pipe)))
        assert str(raised.value) == said
        batch = CliRunner().invoke(app, ["batch", str(pipe), "--line", "L", "--station", "S"])
        watch = ["batch", str(pipe), "--line", "L", "--station", "S", "--watch"]
        watched = CliRunner().invoke(app, watch)
    assert batch.exit_code == 1 and str(batch.exception) == said
    assert str(watched.exception) == f"--watch needs a folder: {pipe} is a named pipe"
    assert "inspecting with" not in batch.output  # (refused before the model loads)


def test_a_named_pipe_in_a_listed_files_place_is_not_opened_to_see_if_it_is_a_zip(
    tmp_path: Path,
) -> None:
    """A pipe that replaced a listed file with no image's suffix (a `.raw` frame, a `.zip`)
    was opened to see whether it was a zip, and the batch or watch waited for ever."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("frame-0001.raw", "lot.zip"):
        os.mkfifo(folder / name)
    listed = [folder / "frame-0001.raw", folder / "lot.zip"]
    with within(5):
        items = list(iter_source(str(folder), listed))
    reason = "cannot read the file: not a regular file but a named pipe: not read"
    assert [(item.name, item.data, item.error) for item in items] == [
        ("frame-0001.raw", None, reason),
        ("lot.zip", None, reason),
    ]


def test_a_listing_again_reads_only_changed_folders_and_all_of_them_now_and_then(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inspection import batch
    from inspection.batch import FolderListing

    shift = tmp_path / "in" / "shift1"
    shift.mkdir(parents=True)
    (shift / "a.png").write_bytes(b"x")
    an_hour_ago = time.time() - 3600
    os.utime(shift, (an_hour_ago, an_hour_ago))  # a quiet folder
    listing = FolderListing(tmp_path / "in")
    assert [parts for parts, _ in listing.files()] == [["shift1", "a.png"]]
    (shift / "b.png").write_bytes(b"x")  # the folder changes: read again
    (tmp_path / "in" / "shift2").mkdir()
    (tmp_path / "in" / "shift2" / "c.png").write_bytes(b"x")
    assert sorted(p for p, _ in listing.files()) == [
        ["shift1", "a.png"],
        ["shift1", "b.png"],
        ["shift2", "c.png"],
    ]
    os.utime(shift, (an_hour_ago, an_hour_ago))
    listing.files()  # (cached with the old time)
    (shift / "d.png").write_bytes(b"x")
    os.utime(shift, (an_hour_ago, an_hour_ago))  # a coarse clock's tick: the time unchanged
    assert ["shift1", "d.png"] not in [p for p, _ in listing.files()]
    monkeypatch.setattr(batch, "FULL_LISTING_S", 0.0)  # the listing of every folder, now and then
    assert ["shift1", "d.png"] in [p for p, _ in listing.files()]
    shutil.rmtree(shift)  # a folder gone is forgotten, not an error
    assert [p for p, _ in listing.files()] == [["shift2", "c.png"]]


def test_a_zip_inside_a_folder_gives_its_entries(tmp_path: Path) -> None:
    from inspection.batch import error_kind

    images = make_images(tmp_path / "loose", n=2, size=32)
    day = tmp_path / "in" / "monday"
    day.mkdir(parents=True)
    with zipfile.ZipFile(day / "shift1.zip", "w") as zf:
        for image in images:
            zf.write(tmp_path / "loose" / image.name, image.name)
    (day / "fake.zip").write_bytes(b"not a zip at all")
    # Cut short in the copy: its table of contents is gone, so are its entries.
    (day / "cut.zip").write_bytes((day / "shift1.zip").read_bytes()[:-40])
    items = {item.name: item for item in iter_source(str(tmp_path / "in"))}
    names = [f"monday/shift1.zip:{image.name}" for image in images]
    assert set(items) == {*names, "monday/fake.zip", "monday/cut.zip"}
    assert all(items[name].data for name in names)
    for damaged in ("monday/fake.zip", "monday/cut.zip"):  # an error of the zip, said so
        assert items[damaged].data is None
        assert (items[damaged].error or "").startswith("cannot open the zip: ")
        assert "none of its entries was read" in (items[damaged].error or "")
        # (One kind for every damaged zip: with its name in it, each was a kind of its own.)
        assert error_kind(items[damaged].error) == "cannot open the zip"
    globbed = {item.name for item in iter_source(str(day / "*.zip"))}
    assert globbed == {f"{day / 'shift1.zip'}:{image.name}" for image in images} | {
        str(day / "fake.zip"),
        str(day / "cut.zip"),
    }
    with pytest.raises(UserError, match="cannot open the zip cut.zip"):  # given alone
        list(iter_source(str(day / "cut.zip")))


def test_a_zips_item_count_from_its_directory_is_what_reading_it_gives(tmp_path: Path) -> None:
    """The Inspect page reads a zip upload's entries as the run takes them, and counts them
    first for its progress bar from the zip's directory alone: the count must be the items."""
    from inspection.batch import iter_zip, zip_item_count

    images = make_images(tmp_path / "loose", n=3, size=32)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for image in images:
            zf.write(tmp_path / "loose" / image.name, f"lot/{image.name}")
        zf.writestr("lot/", "")  # a folder
        zf.writestr("lot/.DS_Store", "x")  # hidden
        zf.writestr("__MACOSX/lot/._a.png", "x")  # a resource fork
        zf.writestr("lot/inner.zip", "x")  # an error item
        zf.writestr("lot/notes.txt", "shift 2")  # an error item
    assert zip_item_count(buffer, "lot.zip") == len(list(iter_zip(buffer, "lot.zip"))) == 5
    with pytest.raises(UserError, match="cannot open the zip cut.zip"):
        zip_item_count(io.BytesIO(buffer.getvalue()[:-40]), "cut.zip")


def test_a_zip_entry_whose_data_runs_into_the_next_is_not_unpacked(tmp_path: Path) -> None:
    """A zip bomb lists thousands of entries over one compressed stream, each unpacking the
    same gigabytes: every entry was read to the size limit. Here the first entry's data holds
    the second whole; the second, on its own, is read."""
    from inspection.batch import OVERLAPPING_ENTRY, iter_zip

    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("b.png", b"second")
    with zipfile.ZipFile(io.BytesIO(inner.getvalue())) as zf:
        second, inner_end = zf.infolist()[0], zf.start_dir
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w") as zf:
        zf.writestr("a.png", inner.getvalue()[:inner_end] + b"first")
        first = zf.getinfo("a.png")
        second.header_offset = first.header_offset + 30 + len(first.filename) + len(first.extra)
        zf.filelist.append(second)  # (listed in the zip's directory, inside the first's data)
    items = {item.name: item for item in iter_zip(bomb, "bomb.zip")}
    assert items["bomb.zip:a.png"].data is None
    assert items["bomb.zip:a.png"].error == OVERLAPPING_ENTRY
    assert items["bomb.zip:b.png"].data == b"second"
    # A zip streamed out (each entry's sizes after its data), as a camera's software writes
    # one to a socket, and one behind a JPEG's bytes: none of their entries is refused.
    streamed = io.BytesIO()
    with zipfile.ZipFile(_Unseekable(streamed), "w", zipfile.ZIP_DEFLATED) as zf:
        for index in range(3):
            with zf.open(f"s{index}.png", "w", force_zip64=index == 1) as entry:
                entry.write(b"x" * 1000 * (index + 1))
    behind = io.BytesIO(b"\xff\xd8 a JPEG's bytes" + streamed.getvalue())
    assert [item.error for item in iter_zip(behind, "lot.zip")] == [None] * 3


def test_a_zip_entry_compressed_far_past_any_cameras_image_is_not_unpacked() -> None:
    """A patterned BMP of 190 MB packs to 190 kB: a 19 MB zip of a hundred was unpacked,
    judged and stored whole, 19 GB of image store. An entry past the floor and the ratio is
    an error read from the zip's directory and its first bytes (no raw image's header); a
    small one of any ratio, and a large one that compresses as a camera's image does, are read."""
    from inspection.batch import MAX_COMPRESSION_RATIO, RATIO_FLOOR_BYTES, error_kind, iter_zip
    from inspection.raw_rasters import RAW_HEADER_READ_BYTES

    patterned = b"\x00\x10\x20\x30" * (RATIO_FLOOR_BYTES // 4 + 1)  # packs to a few kB
    noisy = random.Random(7).randbytes(RATIO_FLOOR_BYTES + 1)  # does not pack at all
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.bmp", patterned)
        zf.writestr("b.bmp", noisy)
        zf.writestr("c.bmp", b"\x00" * 100_000)  # far past the ratio, under the floor
        zf.writestr("d.bmp", patterned)
    packed = zipfile.ZipFile(buffer).getinfo("a.bmp").compress_size
    assert len(patterned) > MAX_COMPRESSION_RATIO * packed  # (the case this is about)
    read: Counter[str] = Counter()
    real_read = zipfile.ZipExtFile.read

    def counting_read(self: zipfile.ZipExtFile, n: int = -1) -> bytes:
        data = real_read(self, n)
        read[self.name] += len(data)
        return data

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(zipfile.ZipExtFile, "read", counting_read)
        items = {item.name: item for item in iter_zip(buffer, "lot.zip")}
    # The refused ones unpacked no further than a header's bytes.
    assert read == {
        "a.bmp": RAW_HEADER_READ_BYTES,
        "b.bmp": len(noisy),
        "c.bmp": 100_000,
        "d.bmp": RAW_HEADER_READ_BYTES,
    }
    for refused in ("lot.zip:a.bmp", "lot.zip:d.bmp"):
        error = items[refused].error or ""
        assert items[refused].data is None
        assert error.startswith(f"zip entry too compressed ({len(patterned) // packed}:1, ")
        assert error.endswith(": not read")
        assert error_kind(error) == "zip entry too compressed"  # (one kind, whatever the ratio)
    assert items["lot.zip:b.bmp"].data == noisy
    assert items["lot.zip:c.bmp"].data == b"\x00" * 100_000


def _blank_raw_frames() -> dict[str, bytes]:
    """Blank frames just past the ratio's floor, as cameras write them uncompressed: each packs
    past 1:800 in a zip. (1401 pixels: a BMP's rows padded to 4 bytes, a PBM's to one.)"""
    from PIL import Image

    def written(image: Image.Image, fmt: str) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        return buffer.getvalue()

    colour, gray = Image.new("RGB", (1401, 1000), (90, 90, 90)), Image.new("L", (2100, 2000))
    return {
        "colour.bmp": written(colour, "BMP"),
        "gray.bmp": written(gray, "BMP"),  # (its palette between header and rows)
        "colour.tif": written(colour, "TIFF"),
        "gray.pgm": written(gray, "PPM"),
        "deep.pgm": written(Image.new("I;16", (1500, 1500), 700), "PPM"),  # 2 bytes a pixel
        "colour.ppm": written(colour, "PPM"),
        "lines.pbm": written(Image.new("1", (6001, 6000), 1), "PPM"),
    }


def test_a_blank_raw_frame_in_a_zip_is_read_not_refused_as_a_zip_bomb() -> None:
    """A camera's uncompressed BMP, TIFF or PGM of a flat scene packs past 1:800: a blank frame
    over 4 MB was refused as a zip bomb ("zip entry too compressed"), never said as the blank
    frame it is. An entry whose header explains its size is read past the ratio; one that
    declares more than its header explains (a bomb's zeros behind it) is refused as before."""
    from inspection.batch import MAX_COMPRESSION_RATIO, iter_zip

    frames = _blank_raw_frames()
    small_bmp = frames["colour.bmp"][:54] + b"\x00" * 54  # a 1401x1000 header...
    small_bmp = small_bmp[:18] + struct.pack("<ii", 6, 6) + small_bmp[26:]  # ...made 6x6
    pgm_header = b"P5\n# camera 2\n2100 2000\n255\n"
    tiff = frames["colour.tif"]
    ifd = struct.unpack_from("<I", tiff, 4)[0]
    width_tag = next(
        at for at in range(ifd + 2, ifd + 200, 12) if struct.unpack_from("<H", tiff, at)[0] == 256
    )
    no_width = tiff[: width_tag + 4] + struct.pack("<I", 0) + tiff[width_tag + 8 :]  # (count 0)
    bombs = {
        "small-header.bmp": small_bmp + b"\x00" * 5_000_000,
        "past-its-header.pgm": pgm_header + b"\x00" * (2100 * 2000 + 1_000_000),
        "no-header.bmp": b"\x00" * 5_000_000 + b"\x01",  # (all zeros: an empty file, below)
        "no-width.tif": no_width,
        "compressed.tif": frames["colour.tif"][:8].replace(b"*", b"+") + b"\x00" * 5_000_000,
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in {**frames, **bombs}.items():
            zf.writestr(name, data)
    for info in zipfile.ZipFile(buffer).infolist():
        assert info.file_size > MAX_COMPRESSION_RATIO * info.compress_size, info.filename
    items = {item.name.split(":")[1]: item for item in iter_zip(buffer, "lot.zip")}
    for name, data in frames.items():
        assert (items[name].error, items[name].data == data) == (None, True), name
    for name in bombs:
        assert items[name].data is None
        assert (items[name].error or "").startswith("zip entry too compressed ("), name


def test_a_blank_uncompressed_tiff_of_its_tags_after_its_pixels_in_a_zip_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """libtiff (OpenCV's writer) puts a TIFF's tags after its pixels: a camera's blank
    uncompressed frame so written, packed past 1:1000, had no header in its first bytes and was
    refused as a zip bomb where Pillow's TIFF of the same frame is read. Unpacked whole to read
    its tags (counted toward the zip's bound), it is read; tags that explain less are refused."""
    import cv2
    import numpy as np

    from inspection import batch
    from inspection.batch import iter_zip

    ok, encoded = cv2.imencode(
        ".tif", np.full((1500, 3000), 40, np.uint8), [cv2.IMWRITE_TIFF_COMPRESSION, 1]
    )
    frame = encoded.tobytes()
    assert ok and struct.unpack_from("<I", frame, 4)[0] > 4_000_000  # (its tags at the end)
    tags_at = struct.unpack_from("<I", frame, 4)[0]
    padded = frame[:4] + struct.pack("<I", tags_at + 1_000_000) + frame[8:tags_at]
    bomb = padded + b"\x28" * 1_000_000 + frame[tags_at:]  # (the same tags, 1 MB more than them)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("frame-0001.tif", frame)
        zf.writestr("bomb.tif", bomb)
        zf.writestr("frame-0002.tif", frame)
    items = list(iter_zip(buffer, "lot.zip"))
    assert (items[0].error, items[0].data == frame) == (None, True)
    assert (items[1].error or "").startswith("zip entry too compressed (")
    assert (items[2].error, items[2].data == frame) == (None, True)

    # Unpacked whole to tell, each counts toward the bound.
    monkeypatch.setattr(batch, "ZIP_UNPACK_FLOOR_BYTES", 10_100_000)
    errors = [item.error or "" for item in iter_zip(buffer, "lot.zip")]
    assert errors[0] == "" and errors[1].startswith("zip entry too compressed (")
    assert errors[2].startswith("zip entry too compressed (")  # (4.5 + 5.5 MB so far)


def test_an_unfilled_capture_buffer_in_a_zip_is_said_an_empty_file_as_it_is_loose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A capture buffer of zeros over 4 MB, loose, is "empty file ... (the camera wrote no
    image)"; in a zip it packs past 1:1000 and was refused as "zip entry too compressed", a zip
    bomb. Unpacked in pieces, none kept, it is said as loose; one whose bytes differ past its
    first ones is refused as before, and what was unpacked to tell counts toward the zip's
    bound."""
    from inspection import batch
    from inspection.batch import iter_zip, read_file
    from inspection.images import ImageDecodeError, decode_image

    zeros = b"\x00" * 5_000_000
    (tmp_path / "loose.bmp").write_bytes(zeros)
    loose = read_file(tmp_path / "loose.bmp", "loose.bmp")
    with pytest.raises(ImageDecodeError) as said_loose:
        decode_image(loose.data or b"")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("frame-0001.bmp", zeros)
        zf.writestr("bomb.bmp", zeros + b"\x01")
        zf.writestr("ff.raw", b"\xff" * 6_000_000)
    items = {item.name: item for item in iter_zip(buffer, "lot.zip")}
    assert items["lot.zip:frame-0001.bmp"].error == str(said_loose.value)
    assert str(said_loose.value) == (
        "empty file: 5000000 bytes, every one 0x00 (the camera wrote no image)"
    )
    assert items["lot.zip:ff.raw"].error == (
        "empty file: 6000000 bytes, every one 0xff (the camera wrote no image)"
    )
    assert (items["lot.zip:bomb.bmp"].error or "").startswith("zip entry too compressed (")

    # Unpacked to tell, they count toward the bound: a zip of many is no way around it.
    monkeypatch.setattr(batch, "ZIP_UNPACK_FLOOR_BYTES", 12_000_000)
    errors = [item.error or "" for item in iter_zip(buffer, "lot.zip")]
    assert errors[0].startswith("empty file: ")
    assert errors[1].startswith("zip entry too compressed (")  # (10 MB unpacked so far)
    assert errors[2].startswith("zip entry too compressed (")  # (6 MB more: not unpacked)


def test_a_blank_raw_frame_in_a_zip_is_said_as_a_blank_frame_by_the_batch(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the operator reads: the blank BMP a blank frame, the bomb beside it refused."""
    from training.cli import app

    monkeypatch.setenv("DEFECTS_DATABASE_URL", detector)
    get_settings.cache_clear()
    frame = _blank_raw_frames()["colour.bmp"]
    with zipfile.ZipFile(tmp_path / "lot.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("frame-0001.bmp", frame)
        zf.writestr("frame-0002.bmp", frame[:54] + b"\x00" * 60_000_000)
    csv_path = tmp_path / "run.csv"
    result = CliRunner().invoke(
        app,
        ["batch", str(tmp_path / "lot.zip"), "--line", "L", "--station", "S"]
        + ["--output", str(csv_path)],
    )
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "errors by kind: blank image 1, zip entry too compressed 1" in said
    rows = {row["part"]: row["error"] for row in csv.DictReader(csv_path.open())}
    assert rows["lot.zip:frame-0001.bmp"] == (
        "blank image (every pixel at gray level 90): check the camera and its lighting"
    )
    bomb = zipfile.ZipFile(tmp_path / "lot.zip").getinfo("frame-0002.bmp")
    assert rows["lot.zip:frame-0002.bmp"] == (
        f"zip entry too compressed ({bomb.file_size // bomb.compress_size}:1, 60 MB from 58 kB; "
        "past 100:1 only an uncompressed image of the size its header gives is read): not read"
    )


def test_a_zip_that_unpacks_far_past_its_own_size_in_all_is_read_only_up_to_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries under the ratio's floor are held to no ratio: 100000 of just under 4 MB, each
    packed past 1:1000, unpacked to 400 GB of image store from a zip of 400 MB. The sizes its
    directory declares are summed as entries come; past the bound (a whole-zip ratio, with a
    floor) the rest are error items, never unpacked, and the ones before are read."""
    from inspection import batch
    from inspection.batch import error_kind, iter_zip

    monkeypatch.setattr(batch, "ZIP_UNPACK_FLOOR_BYTES", 1_000_000)
    patterned = b"\x00\x10\x20\x30" * 75_000  # 300 kB, under the per-entry floor: packs to 1 kB
    archive = tmp_path / "lot.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for index in range(5):
            zf.writestr(f"p{index}.bmp", patterned)
        zf.writestr("tiny.bmp", b"x")  # (after the bound: not read either, however small)
    assert 100 * archive.stat().st_size < 1_000_000  # (the floor is the bound here)
    read: list[str] = []
    real_open = zipfile.ZipFile.open

    def noting_open(self: zipfile.ZipFile, name: Any, *args: Any, **kwargs: Any) -> Any:
        read.append(getattr(name, "filename", name))
        return real_open(self, name, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(zipfile.ZipFile, "open", noting_open)
        items = list(iter_zip(archive, "lot.zip"))
    assert read == ["p0.bmp", "p1.bmp", "p2.bmp"]  # 900 kB; a fourth would pass 1 MB
    assert [item.data for item in items[:3]] == [patterned] * 3
    for item in items[3:]:
        assert item.data is None
        assert (item.error or "").startswith("zip unpacks too far (past 1 MB, the most a zip of ")
        assert (item.error or "").endswith(": not read")
        assert error_kind(item.error) == "zip unpacks too far"
    assert [item.name for item in items[3:]] == [
        "lot.zip:p3.bmp",
        "lot.zip:p4.bmp",
        "lot.zip:tiny.bmp",
    ]

    # A zip of images that do not pack (a camera's JPEGs) may unpack to its size's ratio
    # times over, past the floor: an upload (an open file) as a path.
    noisy = random.Random(3).randbytes(20_000)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("noise.jpg", noisy)
        for index in range(5):
            zf.writestr(f"p{index}.bmp", patterned)
    buffer.seek(0)
    assert [item.error for item in iter_zip(buffer, "upload.zip")] == [None] * 6


def test_sizes_packed_under_a_kilobyte_are_said_in_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bzip2 entry packs a patterned frame to a few hundred bytes: it was said "too
    compressed (..., 5 MB from 0 kB", and a zip that small past its bound "the most a zip of
    0 MB may give"; both now say the bytes."""
    from inspection import batch
    from inspection.batch import RATIO_FLOOR_BYTES, iter_zip

    patterned = b"\x00\x10\x20\x30" * (RATIO_FLOOR_BYTES // 4 + 1)
    packed = tmp_path / "packed.zip"
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_BZIP2) as zf:
        zf.writestr("p.bmp", patterned)
        info = zf.getinfo("p.bmp")
    assert info.compress_size < 1000
    (item,) = iter_zip(packed, "packed.zip")
    assert (item.error or "").startswith(
        f"zip entry too compressed ({info.file_size // info.compress_size}:1, 4 MB from "
        f"{info.compress_size} bytes; "
    )
    monkeypatch.setattr(batch, "ZIP_UNPACK_FLOOR_BYTES", 1_000_000)
    small = tmp_path / "small.zip"
    with zipfile.ZipFile(small, "w", zipfile.ZIP_BZIP2) as zf:
        for index in range(3):
            zf.writestr(f"p{index}.bmp", patterned[:600_000])  # (under the per-entry floor)
    size = small.stat().st_size
    assert size < 1000
    errors = [item.error for item in iter_zip(small, "small.zip")]
    assert errors[0] is None and errors[1] is not None
    assert errors[1].startswith(f"zip unpacks too far (past 1 MB, the most a zip of {size} bytes ")


def test_a_dead_cameras_lot_of_blank_raw_frames_past_the_bound_is_said_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hundreds of a dead camera's blank 5 MB raw frames, each read by its header past the
    ratio, take a zip past what it may unpack in all: the rest were refused as "no camera's
    lot packs so far", a bomb's words. The bound holds (a zip of such headers over zeros is a
    bomb), and what is said is the raw frames and how to judge the rest. (Sizes made small.)"""
    from PIL import Image

    from inspection import batch
    from inspection.batch import error_kind, iter_zip

    monkeypatch.setattr(batch, "RATIO_FLOOR_BYTES", 100_000)
    monkeypatch.setattr(batch, "ZIP_UNPACK_FLOOR_BYTES", 1_000_000)
    written = io.BytesIO()
    Image.new("RGB", (300, 300), (40, 40, 40)).save(written, "BMP")  # 270 kB, packs past 1:100
    frame = written.getvalue()
    archive = tmp_path / "dead-camera.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for index in range(6):
            zf.writestr(f"frame-{index:04d}.bmp", frame)
    items = list(iter_zip(archive, "lot.zip"))
    assert [item.data for item in items[:3]] == [frame] * 3  # 810 kB; a fourth passes 1 MB
    for item in items[3:]:
        assert item.data is None
        error = item.error or ""
        assert error_kind(error) == "zip unpacks too far"
        assert "no camera's lot packs so far" not in error
        assert "3 of the entries before were raw frames packed past 100:1" in error
        assert error.endswith("unzip the lot and inspect its folder to judge the rest): not read")


def _zip_saying_entries(entries: int, zip64: bool = False, real: int = 3) -> bytes:
    """A zip of `real` tiny entries whose end record says it holds `entries`: a zip of
    millions of entries, as far as its end record goes, without writing millions."""
    buffer = io.BytesIO()
    with contextlib.ExitStack() as stack:
        if zip64:  # (Python writes zip64's end records past 65535 entries only)
            stack.enter_context(pytest.MonkeyPatch.context()).setattr(
                zipfile, "ZIP_FILECOUNT_LIMIT", 1
            )
        with zipfile.ZipFile(buffer, "w") as zf:
            for index in range(real):
                zf.writestr(f"e{index}.png", b"x")
    data = bytearray(buffer.getvalue())
    end = len(data) - zipfile.sizeEndCentDir
    assert data[end : end + 4] == zipfile.stringEndArchive
    if zip64:
        record = end - zipfile.sizeEndCentDir64Locator - zipfile.sizeEndCentDir64
        assert data[record : record + 4] == zipfile.stringEndArchive64
        struct.pack_into("<2Q", data, record + 24, entries, entries)  # (its end record: 3)
    else:
        struct.pack_into("<2H", data, end + 8, entries, entries)
    return bytes(data)


def test_a_zip_of_more_entries_than_the_bound_is_refused_before_its_directory_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zip of millions of tiny entries was read into a list of them all, hundreds of MB,
    and gave a database row each. Its count is read from its end record (zip64's where it has
    one), before Python reads the directory: alone it is refused in one line, in a folder it
    is an error row and the folder's other files are read."""
    from inspection import batch
    from inspection.batch import error_kind, iter_zip, zip_item_count

    monkeypatch.setattr(batch, "MAX_ZIP_ENTRIES", 60_000)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "many.zip").write_bytes(_zip_saying_entries(60_001))
    (folder / "many64.zip").write_bytes(_zip_saying_entries(200_000, zip64=True))
    (folder / "part.png").write_bytes(b"not decoded here")
    for name, said in [("many.zip", "60001 entries"), ("many64.zip", "200000 entries")]:
        message = f"too many entries in the zip {name} ({said}, at most 60000: none of its"
        with pytest.raises(UserError, match=re.escape(message)):  # given alone
            list(iter_source(str(folder / name)))
        with pytest.raises(UserError, match=re.escape(message)):
            zip_item_count(folder / name, name)
        with pytest.raises(UserError, match=re.escape(message)):  # as the upload comes
            zip_item_count(io.BytesIO((folder / name).read_bytes()), name)
    # Its disk numbers the end record's signature: Python reads the record all the same.
    masked = bytearray(_zip_saying_entries(60_001))
    masked[-zipfile.sizeEndCentDir + 4 : -zipfile.sizeEndCentDir + 8] = zipfile.stringEndArchive
    with pytest.raises(UserError, match=r"\(60001 entries, at most 60000: "):
        zip_item_count(io.BytesIO(masked), "masked.zip")
    items = {item.name: item for item in iter_source(str(folder))}
    assert set(items) == {"many.zip", "many64.zip", "part.png"}
    assert items["many.zip"].data is None and items["many64.zip"].data is None
    assert error_kind(items["many.zip"].error) == "too many entries in the zip"
    assert items["part.png"].data == b"not decoded here"
    # At the bound it is read; so is a zip behind a JPEG's bytes, and a zip64 of few.
    monkeypatch.setattr(batch, "MAX_ZIP_ENTRIES", 3)
    behind = io.BytesIO(b"\xff\xd8 a JPEG's bytes" + _zip_saying_entries(3))
    assert [item.error for item in iter_zip(behind, "lot.zip")] == [None] * 3
    assert zip_item_count(io.BytesIO(_zip_saying_entries(3, zip64=True)), "z.zip") == 3
    # An end record that says few over a directory of many: its size gives it away.
    monkeypatch.setattr(batch, "MAX_ZIP_ENTRIES", 10)
    liar = _zip_saying_entries(1, real=200)  # (Python reads the directory to its size)
    with pytest.raises(UserError, match=r"\(a directory of 0 MB, room for 2\d\d entries, at"):
        list(iter_zip(io.BytesIO(liar), "liar.zip"))


class _Unseekable(io.RawIOBase):
    """A stream written in one pass: zipfile writes data descriptors to it."""

    def __init__(self, sink: io.BytesIO) -> None:
        self.sink = sink

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        return self.sink.write(data)


def test_a_database_away_mid_run_is_waited_for_and_nothing_is_lost(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PostgreSQL restart or a SQLite file locked too long, stood in for by reads and writes
    that fail a few times: the run waits and goes on; past its patience it stops with the
    error, and the same command resumes with nothing lost or written twice."""
    from db.session import DatabaseError
    from inspection import batch

    monkeypatch.setattr(batch.Event, "wait", lambda self, timeout=None: self.is_set())  # no sleep
    make_images(tmp_path / "in", n=10)
    job = _job(detector, tmp_path)
    job.chunk_parts = 4
    failures = {"read": 2, "write": 3}
    read, write = job._current_points, job._write

    def flaky(kind, action):  # type: ignore[no-untyped-def]
        def call(*args):  # type: ignore[no-untyped-def]
            if failures[kind]:
                failures[kind] -= 1
                raise DatabaseError("database error at sqlite:///x: database is locked")
            return action(*args)

        return call

    monkeypatch.setattr(job, "_current_points", flaky("read", read))
    monkeypatch.setattr(job, "_write", flaky("write", write))
    summary = job.run(iter_source(str(tmp_path / "in")))
    assert failures == {"read": 0, "write": 0}
    assert (summary.inspected, summary.errors) == (10, 0) and _counts(detector) == (10, 10, 10)

    make_images(tmp_path / "more", n=6, seed=1)  # other parts
    stopping = _job(detector, tmp_path)
    stopping.chunk_parts = 4
    stopping.outage_seconds = 2.0
    original = stopping._write
    calls = [0]

    def down_after_first(*args):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] > 1:
            raise DatabaseError("database error at postgresql://db: connection refused")
        return original(*args)

    monkeypatch.setattr(stopping, "_write", down_after_first)
    with pytest.raises(DatabaseError, match="connection refused"):
        stopping.run(iter_source(str(tmp_path / "more")))
    assert calls[0] > 3  # tried again before giving up
    assert _counts(detector)[0] == 14  # the first chunk of 4 written, the rest not
    # The database came back as it gave up: the run is not left open (at work for ever).
    assert _run_finished_at(detector, stopping.run_id) is not None
    resumed = _job(detector, tmp_path).run(iter_source(str(tmp_path / "more")))
    assert (resumed.inspected, resumed.skipped) == (2, 4) and _counts(detector)[0] == 16


def test_ctrl_c_ends_the_wait_for_the_database_at_once() -> None:
    from db.session import DatabaseError
    from inspection.batch import through_outages

    def away() -> None:
        raise DatabaseError("database error at postgresql://db: connection refused")

    giving_up = threading.Event()
    giving_up.set()
    began = time.monotonic()
    with pytest.raises(DatabaseError):
        through_outages(away, limit_s=600.0, giving_up=giving_up)
    assert time.monotonic() - began < 1.0
    with pytest.raises(DatabaseError):  # and no patience at all: stops at the first error
        through_outages(away, limit_s=0.0, giving_up=threading.Event())


@pytest.mark.parametrize("workers", [1, 2])
def test_a_connection_dropped_as_a_station_opens_its_run_is_waited_for(
    detector: str, tmp_path: Path, workers: int
) -> None:
    """A PostgreSQL restart (its backends terminated) as a station opened its run stopped the
    station at once ("error: database error ...: terminating connection due to administrator
    command"), where one a moment later in the run was waited for. The opening is tried again;
    the run is opened once and judges every part (`--workers` too)."""
    if not detector.startswith("postgresql"):
        pytest.skip("terminates a PostgreSQL backend")
    from inspection.parallel import ParallelInspection
    from tests.conftest import backend_terminated_at

    opening = lambda statement: statement.startswith("INSERT INTO inspection_runs")  # noqa: E731
    with backend_terminated_at(detector, opening) as dropped:
        make_images(tmp_path / "in", n=3)
        job: BatchInspection | ParallelInspection = (
            _job(detector, tmp_path)
            if workers == 1
            else ParallelInspection(detector, tmp_path / "store", "Line 1", "Cam A", workers)
        )
    assert dropped
    summary = job.run(iter_source(str(tmp_path / "in")))
    assert (summary.inspected, summary.errors) == (3, 0) and _counts(detector) == (3, 3, 3)
    assert _count_of(detector, InspectionRun) == 1
    assert _run_finished_at(detector, job.run_id) is not None


@contextlib.contextmanager
def _answer_lost_after_commit(url: str, statement: str) -> Iterator[list[int]]:
    """The first transaction that ran a statement starting with `statement` is committed, and
    then its connection dropped (its PostgreSQL backend terminated) before the answer came:
    the station hears a dropped connection. Yields the terminated backends' pids."""
    import psycopg
    from sqlalchemy import event

    from db.session import get_engine

    admin_url = url.replace("postgresql+psycopg://", "postgresql://")
    engine = get_engine(url)
    seen: list[bool] = []
    dropped: list[int] = []
    commit = engine.dialect.do_commit

    def note(connection, cursor, executed, *_args) -> None:  # type: ignore[no-untyped-def]
        if executed.startswith(statement):
            seen.append(True)

    def commit_then_drop(dbapi_connection) -> None:  # type: ignore[no-untyped-def]
        commit(dbapi_connection)
        if seen and not dropped:
            dropped.append(dbapi_connection.driver_connection.info.backend_pid)
            with psycopg.connect(admin_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (dropped[0],))
            dbapi_connection.cursor().execute("SELECT 1")  # (the commit's answer, lost)

    event.listen(engine, "before_cursor_execute", note)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine.dialect, "do_commit", commit_then_drop)
        try:
            yield dropped
        finally:
            event.remove(engine, "before_cursor_execute", note)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_run_committed_as_its_connection_dropped_is_not_opened_twice(
    detector: str, tmp_path: Path, workers: int
) -> None:
    """A PostgreSQL restart just after the run's INSERT was committed, before the station heard
    so: the station's next try opened a second run, and the first, with no part, stayed open
    for good (the station's latest on the Live page and in `defects status`). The next try
    finds the committed run."""
    if not detector.startswith("postgresql"):
        pytest.skip("terminates a PostgreSQL backend")
    from inspection.parallel import ParallelInspection

    make_images(tmp_path / "in", n=3)
    with _answer_lost_after_commit(detector, "INSERT INTO inspection_runs") as dropped:
        job: BatchInspection | ParallelInspection = (
            _job(detector, tmp_path)
            if workers == 1
            else ParallelInspection(detector, tmp_path / "store", "Line 1", "Cam A", workers)
        )
    assert dropped
    summary = job.run(iter_source(str(tmp_path / "in")))
    assert (summary.inspected, summary.errors) == (3, 0) and _counts(detector) == (3, 3, 3)
    assert _count_of(detector, InspectionRun) == 1
    assert _run_finished_at(detector, job.run_id) is not None


def test_a_chunk_committed_as_its_connection_dropped_is_counted_inspected(
    detector: str, tmp_path: Path
) -> None:
    """A PostgreSQL restart just after a chunk's verdicts were committed, before the station
    heard so: the try after it met the chunk's own verdicts, and the run said "0 inspected, 3
    already inspected" of parts it had just judged. They are counted inspected, written once."""
    if not detector.startswith("postgresql"):
        pytest.skip("terminates a PostgreSQL backend")
    make_images(tmp_path / "in", n=3)
    job = _job(detector, tmp_path)
    with _answer_lost_after_commit(detector, "INSERT INTO inspections") as dropped:
        summary = job.run(iter_source(str(tmp_path / "in")))
    assert dropped
    assert (summary.inspected, summary.skipped, summary.errors) == (3, 0, 0)
    assert _counts(detector) == (3, 3, 3)
    assert _run_finished_at(detector, job.run_id) is not None


def test_the_end_of_an_outage_is_said(caplog: pytest.LogCaptureFixture) -> None:
    """A station said it waited for the database, then nothing when it came back: an operator
    could not tell a run going on from one still stuck."""
    from db.session import DatabaseError
    from inspection.batch import _said, through_outages

    _said.clear()  # (a line said in the last second by another test is not said again)
    tries = iter([DatabaseError("database error at postgresql://db: connection refused")])

    def back_at_the_second_try() -> str:
        failure = next(tries, None)
        if failure is not None:
            raise failure
        return "written"

    with caplog.at_level("WARNING", logger="inspection.batch"):
        assert through_outages(back_at_the_second_try, 60.0, threading.Event()) == "written"
    said = [r.getMessage() for r in caplog.records]
    assert any("trying again in 0.5 s" in m for m in said)
    assert said[-1] == "the database answers again: the run goes on"
    caplog.clear()
    with caplog.at_level("WARNING", logger="inspection.batch"):
        through_outages(lambda: None, 60.0, threading.Event())
    assert caplog.records == []  # (no outage: nothing said)


def _is_stored_image(fd: int) -> bool:
    """Whether a descriptor is an image the store is writing (its `.partial` file)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}").endswith(".partial")
    except OSError:  # (a pipe's or a socket's, say)
        return False


def test_a_full_image_store_stops_the_run_with_a_clear_error_and_loses_nothing(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from inspection.errors import StorageError

    make_images(tmp_path / "in", n=10)
    job = _job(detector, tmp_path)
    job.chunk_parts = 4
    write = os.write
    stored = [0]

    def disk_fills_up(fd: int, data: Any) -> int:
        if _is_stored_image(fd):
            stored[0] += 1
            if stored[0] > 5:
                raise OSError(errno.ENOSPC, "No space left on device")
        return write(fd, data)

    monkeypatch.setattr(os, "write", disk_fills_up)
    with pytest.raises(StorageError, match="No space left on device; free space there"):
        job.run(iter_source(str(tmp_path / "in")))
    job.inspector.close(wait=True)  # (parts decoded ahead may still be storing)
    assert not list((tmp_path / "store").rglob("*.partial"))  # no half file left
    written = _counts(detector)[0]
    assert written < 10
    monkeypatch.setattr(os, "write", write)  # space freed
    resumed = _job(detector, tmp_path).run(iter_source(str(tmp_path / "in")))
    assert resumed.inspected == 10 - written and _counts(detector) == (10, 10, 10)
    with session_scope(detector) as session:  # every part's image kept
        stored_paths = session.scalars(select(Part.stored_path)).all()
    assert all(Path(path).is_file() for path in stored_paths)


def test_a_full_image_store_says_once_how_to_resume_where_there_is_a_command(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's error said "run the same command again to resume" itself: a worker's stop
    added "run it again to resume" after it, and the Inspect page, with no command, said it
    too. The batch command says it once; the error alone does not."""
    import errno

    from inspection.errors import StorageError
    from training.cli import app

    monkeypatch.setenv("DEFECTS_DATABASE_URL", detector)
    get_settings.cache_clear()
    make_images(tmp_path / "in", n=3)
    write = os.write

    def full(fd: int, data: Any) -> int:
        if _is_stored_image(fd):
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(fd, data)

    monkeypatch.setattr(os, "write", full)
    result = CliRunner().invoke(
        app, ["batch", str(tmp_path / "in"), "--line", "L", "--station", "S"]
    )
    assert isinstance(result.exception, StorageError), result.output
    said = str(result.exception)
    assert said.endswith(
        "free space there (or set DEFECTS_DATA_DIR); what was written is "
        "kept: run the same command again to resume"
    )
    assert said.count("again") == 1
    with pytest.raises(StorageError) as alone:
        _job(detector, tmp_path).run(iter_source(str(tmp_path / "in")))
    assert "again" not in str(alone.value)


def test_resume_after_a_crash_loses_and_duplicates_nothing(detector: str, tmp_path: Path) -> None:
    make_images(tmp_path / "in", n=10)

    def crashing_source():  # type: ignore[no-untyped-def]
        for i, item in enumerate(iter_source(str(tmp_path / "in"))):
            if i == 6:
                raise KeyboardInterrupt  # the operator pulls the plug mid-chunk
            yield item

    crashing = _job(detector, tmp_path)
    crashing.chunk_parts = 4
    with pytest.raises(KeyboardInterrupt):
        crashing.run(crashing_source())
    assert _counts(detector) == (4, 4, 4)  # the first chunk was committed, the second lost
    summary = _job(detector, tmp_path).run(iter_source(str(tmp_path / "in")))
    assert (summary.inspected, summary.skipped) == (6, 4)
    assert _counts(detector) == (10, 10, 10)
    again = _job(detector, tmp_path).run(iter_source(str(tmp_path / "in")))
    assert (again.inspected, again.skipped) == (0, 10)
    assert again.rejudged == 0


def test_progress_of_a_resumed_run_counts_every_part_judged_now_or_before(
    detector: str, tmp_path: Path
) -> None:
    """A progress bar fed by each verdict alone stopped at the share judged now: resuming a
    run of 10 parts with 6 done, it ended at 4 of 10; run again, at 0 of 10."""
    make_images(tmp_path / "in", n=10)
    items = list(iter_source(str(tmp_path / "in")))
    items.append(SourceItem("lost.png", None, "cannot read the file"))
    first = _job(detector, tmp_path)
    first.chunk_parts = 4
    first.run(items[:6])
    for expected_judged in (5, 0):  # the rest (the unreadable file recorded), then nothing
        judged: list[object] = []
        skipped: list[int] = []
        job = _job(detector, tmp_path)
        job.chunk_parts = 4
        summary = job.run(items, judged.append, on_skipped=skipped.append)
        assert len(judged) == summary.inspected == expected_judged
        assert sum(skipped) == summary.skipped == len(items) - expected_judged
        assert all(n > 0 for n in skipped)  # (only chunks that skipped something tell)


def test_the_summary_says_its_parts_judged_again_are_those_given_a_pass_or_a_fail(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a recalibration, a part judged again to an error (here refused for its size at a
    lower DEFECTS_MAX_MEGAPIXELS) is left out of the count of parts judged again, and its
    earlier verdict is superseded all the same; the summary's sentence read as if it counted
    every part judged again. It now says which it counts, and where the others are."""
    import numpy as np
    from PIL import Image

    from training.cli import app

    make_images(tmp_path / "in", n=2)
    noise = np.random.default_rng(0).integers(0, 255, (1100, 1100), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "in" / "large.png")  # 1.21 MP
    monkeypatch.setenv("DEFECTS_DATABASE_URL", detector)
    get_settings.cache_clear()
    command = ["batch", str(tmp_path / "in"), "--line", "L", "--station", "S", "--tile", "off"]
    first = CliRunner().invoke(app, command)
    assert first.exit_code == 0, first.output
    with session_scope(detector) as session:
        version = session.scalars(select(ModelVersion)).one()
        version.thresholds = {**version.thresholds, "default": 0.99}  # recalibrated
    monkeypatch.setenv("DEFECTS_MAX_MEGAPIXELS", "1")
    get_settings.cache_clear()
    again = CliRunner().invoke(app, command)
    assert again.exit_code == 0, again.output
    said = " ".join(again.output.split())
    assert "3 parts inspected" in said and "1 error" in said
    with session_scope(detector) as session:
        assert (
            session.scalar(select(func.count()).where(Inspection.superseded_at.is_not(None))) == 3
        )
    assert "2 of the parts inspected had been judged by" in said
    assert "to a pass or a fail" in said
    assert "judged again to an error is counted among the errors only" in said


def test_parts_judged_before_a_recalibration_are_judged_again(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.cli import app

    make_images(tmp_path / "in", n=3)
    assert _job(detector, tmp_path).run(iter_source(str(tmp_path / "in"))).inspected == 3
    with session_scope(detector) as session:
        version = session.scalars(select(ModelVersion)).one()
        before = dict(version.thresholds)
        version.thresholds = {**version.thresholds, "default": 0.99}  # recalibrated
        after = dict(version.thresholds)
    (extra,) = make_images(tmp_path / "more", n=1, seed=5)
    shutil.copy(tmp_path / "more" / extra.name, tmp_path / "in" / f"new-{extra.name}")
    again = _job(detector, tmp_path).run(iter_source(str(tmp_path / "in")))
    assert (again.inspected, again.skipped, again.rejudged) == (4, 0, 3)
    with session_scope(detector) as session:
        rows = session.scalars(select(Inspection).order_by(Inspection.id)).all()
        superseded = [i for i in rows if i.superseded_at is not None]
        current = [i for i in rows if i.superseded_at is None]
        # Nothing lost: the first verdicts stay, with the thresholds they were given at.
        assert len(superseded) == 3
        assert all(i.thresholds["default"] != 0.99 for i in superseded)
        assert len(current) == 4 and len({i.part_id for i in current}) == 4
        assert all(i.thresholds["default"] == 0.99 for i in current)
        for inspection in current:
            # Judged at the new point: only a detection at >= 0.99 may count.
            assert all(p.counted == (p.confidence >= 0.99) for p in inspection.predictions)
            counted = any(p.counted for p in inspection.predictions)
            assert inspection.verdict == (Verdict.FAIL if counted else Verdict.PASS)
    # Started again at the same point, it judges nothing twice.
    third = _job(detector, tmp_path).run(iter_source(str(tmp_path / "in")))
    assert (third.inspected, third.skipped, third.rejudged) == (0, 4, 0)

    monkeypatch.setenv("DEFECTS_DATABASE_URL", detector)
    get_settings.cache_clear()
    with session_scope(detector) as session:
        session.scalars(select(ModelVersion)).one().thresholds = before  # back to the first
    result = CliRunner().invoke(
        app, ["batch", str(tmp_path / "in"), "--line", "Line 1", "--station", "Cam A"]
    )
    assert result.exit_code == 0, result.output
    assert "4 of the parts inspected had been judged by" in " ".join(result.output.split())
    with session_scope(detector) as session:
        version = session.scalars(select(ModelVersion)).one()
        version.thresholds = after
    inspected = CliRunner().invoke(app, ["inspect", str(tmp_path / "in" / extra.name)])
    assert inspected.exit_code == 0, inspected.output
    assert "1 part(s) judged earlier at other thresholds" in " ".join(inspected.output.split())
    assert _counts(detector)[1:] == (4 + 3 + 4 + 1, 4)


def test_kill_9_then_resume(detector: str, trained: Trained, tmp_path: Path) -> None:
    if not detector.startswith("sqlite"):
        pytest.skip("one backend is enough for the process test")
    make_images(tmp_path / "in", n=300, size=64)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DEFECTS_DATABASE_URL": detector,
        "DEFECTS_DATA_DIR": str(tmp_path / "data"),
        "DEFECTS_DEVICE": "cpu",
    }
    command = [
        sys.executable,
        "-c",
        "from training.cli import main; main()",
        "batch",
        str(tmp_path / "in"),
        "--line",
        "L",
        "--station",
        "S",
        "--batch-size",
        "4",
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _counts(detector)[1] == 0 and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    parts, inspections, distinct = _counts(detector)
    assert inspections == distinct == parts
    assert 0 < inspections < 300  # it was killed part-way
    finished = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert _counts(detector) == (300, 300, 300)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_a_batch_stopped_part_way_exits_130_with_what_it_judged_written(
    detector: str, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    """README: a batch stopped part-way (Ctrl-C, SIGTERM from a service manager) exits 130,
    so that a script does not take it for done; its run is marked finished and the summary
    counts what was written. Checked on a real `defects batch` process in one worker."""
    if not detector.startswith("sqlite"):
        pytest.skip("one backend is enough for the process test")
    from db.models import InspectionRun

    make_images(tmp_path / "in", n=300, size=64)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DEFECTS_DATABASE_URL": detector,
        "DEFECTS_DATA_DIR": str(tmp_path / "data"),
        "DEFECTS_DEVICE": "cpu",
    }
    command = [sys.executable, "-c", "from training.cli import main; main()", "batch"]
    command += [str(tmp_path / "in"), "--line", "L", "--station", "S", "--batch-size", "4"]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _counts(detector)[1] == 0 and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(stop_signal)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output[-2000:]
    assert "stopped; what was inspected is saved" in output and "Traceback" not in output
    assert "interrupted" not in output  # (said once: "stopped")
    # (A rate of a run cut short, its clock on through the stop, as the workers' summary.)
    assert "throughput" not in output and "latency p50" in output
    written = _counts(detector)[1]
    assert 0 < written < 300  # (stopped part-way)
    assert f"{written} part{'' if written == 1 else 's'} inspected" in " ".join(output.split())
    with session_scope(detector) as session:
        assert session.scalars(select(InspectionRun)).one().finished_at is not None


def test_a_batch_stopped_while_it_loads_its_model_says_so(
    detector: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Stopped before its first part (Ctrl-C or SIGTERM while the model loads, seconds at
    a station's start), `defects batch` exited 130 without a word: typer turned the interrupt
    into a bare exit, and the "interrupted" the command line means to say was never said."""
    from db.models import InspectionRun
    from inspection.engine import Inspector
    from training import cli

    make_images(tmp_path / "in", n=2)
    monkeypatch.setenv("DEFECTS_DATABASE_URL", detector)
    monkeypatch.setenv("DEFECTS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DEFECTS_DEVICE", "cpu")
    get_settings.cache_clear()

    def stopped(self: Inspector) -> None:
        raise KeyboardInterrupt  # (where the signal lands: in the model's warm-up)

    monkeypatch.setattr(Inspector, "warm_up", stopped)
    ended: list[int | str | None] = []
    monkeypatch.setattr(cli, "end_process", ended.append)  # (it ends the process at once)
    monkeypatch.setattr(
        sys, "argv", ["defects", "batch", str(tmp_path / "in"), "--line", "L", "--station", "S"]
    )
    handler = signal.getsignal(signal.SIGTERM)
    try:
        cli.main()
    finally:
        signal.signal(signal.SIGTERM, handler)  # (main installs its own: this is pytest's)
        get_settings.cache_clear()
    assert ended == [130]
    assert capsys.readouterr().err.strip() == "interrupted"
    with session_scope(detector) as session:  # (no part judged: no run left open)
        assert session.scalars(select(InspectionRun)).all() == []


def test_a_watch_stopped_by_sigterm_ends_as_ctrl_c_does(detector: str, tmp_path: Path) -> None:
    """A service manager stops a station with SIGTERM: the watch ended silently with 143, its
    run looking killed; now it stops as Ctrl-C stops it, the run marked finished."""
    if not detector.startswith("sqlite"):
        pytest.skip("one backend is enough for the process test")
    from db.models import InspectionRun

    make_images(tmp_path / "hot", n=2)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DEFECTS_DATABASE_URL": detector,
        "DEFECTS_DATA_DIR": str(tmp_path / "data"),
        "DEFECTS_DEVICE": "cpu",
    }
    command = [sys.executable, "-c", "from training.cli import main; main()", "batch"]
    command += [str(tmp_path / "hot"), "--line", "L", "--station", "S", "--watch"]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _counts(detector)[1] < 2 and process.poll() is None:
        time.sleep(0.05)
    with session_scope(detector) as session:
        assert session.scalars(select(InspectionRun)).one().finished_at is None  # watching
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output[-2000:]
    assert "stopped; what was inspected is saved" in output
    with session_scope(detector) as session:
        assert session.scalars(select(InspectionRun)).one().finished_at is not None


def test_an_interrupt_after_a_chunk_went_to_the_writer_is_counted_as_written(
    detector: str, tmp_path: Path
) -> None:
    """Ctrl-C landing just after a chunk was handed to the writer (here: in the progress
    callback of its first part): the chunk is still written, and the summary counts it, so
    that "N parts inspected" matches the database."""
    make_images(tmp_path / "in", n=5)

    def interrupt(_result: object) -> None:
        raise KeyboardInterrupt

    job = _job(detector, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        job.run(iter_source(str(tmp_path / "in")), interrupt)
    assert job.summary.inspected == _counts(detector)[1] == 5
    # Stopped, the run is finished (it stood open and idle on the Live page), and its time
    # counted (the summary said 0.0 parts/s).
    assert _run_finished_at(detector, job.run_id) is not None
    assert job.summary.seconds > 0


def test_write_now_writes_what_is_held_before_the_source_goes_on(
    detector: str, tmp_path: Path
) -> None:
    """A hot folder's quiet moment (WRITE_NOW in the stream): the parts held for a fuller chunk
    are judged and written then, not when the next frame comes."""
    make_images(tmp_path / "in", n=2)
    first, second = iter_source(str(tmp_path / "in"))
    written_at_quiet: list[int] = []

    def camera() -> Iterator[SourceItem]:
        yield first
        yield WRITE_NOW
        # The writer thread commits the chunk meanwhile: waited for (a fixed half second was
        # too short on loaded cores), never past the next frame, which is held back until then.
        deadline = time.monotonic() + 20
        while _counts(detector)[1] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        written_at_quiet.append(_counts(detector)[1])
        yield second

    summary = _job(detector, tmp_path).run(camera())
    assert written_at_quiet == [1]
    assert summary.inspected == 2 and _counts(detector)[1] == 2


def test_a_summary_keeps_a_bounded_sample_of_latencies(monkeypatch: pytest.MonkeyPatch) -> None:
    import random
    import statistics

    from inspection import batch
    from inspection.batch import BatchSummary

    monkeypatch.setattr(batch, "LATENCIES_KEPT", 100)
    monkeypatch.setattr(batch, "_sampling", random.Random(0))
    summary = BatchSummary(run_id=1, model_name="m")
    for latency in range(100):
        summary.add_latency(float(latency))
    assert list(summary.latencies_ms) == [float(n) for n in range(100)]  # all, up to the cap
    for latency in range(100, 10_000):
        summary.add_latency(float(latency))
    assert len(summary.latencies_ms) == 100 and summary.latencies_seen == 10_000
    assert 3500 < statistics.median(summary.latencies_ms) < 6500  # a sample of all, not the first


def test_a_summary_keeps_a_latency_in_8_bytes() -> None:
    """The latencies are what a long watch keeps per part once its caches have filled (up to
    the cap): a list of float objects held 32 bytes a part, 6.4 MB at the cap."""
    import tracemalloc

    from inspection.batch import BatchSummary

    summary = BatchSummary(run_id=1, model_name="m")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(20_000):
            summary.add_latency(n + 0.5)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(summary.latencies_ms) == 20_000
    assert held < 10 * 20_000, f"{held / 20_000:.1f} bytes a latency"


def test_a_hot_folder_forgets_files_that_are_gone(tmp_path: Path) -> None:
    """A file taken is not taken again while it stays; once gone, it is forgotten (a watch of
    weeks keeps no memory of every file it saw), so the same file put back is taken again (the
    batch then skips it by its content)."""
    from inspection.batch import hot_folder_batches

    folder = tmp_path / "hot"
    folder.mkdir()
    frame = folder / "frame.png"
    frame.write_bytes(b"not really a png")
    stamp = time.time() - 60
    os.utime(frame, (stamp, stamp))
    stop = threading.Event()
    deadline = threading.Timer(20, stop.set)  # a look that never comes ends the test, failed
    deadline.start()
    looks = hot_folder_batches(folder, stop, poll_seconds=0.0, settle_seconds=0.0)
    assert [item.name for item in next(looks)] == ["frame.png"]
    frame.unlink()
    (folder / "other.png").write_bytes(b"another")  # a look happens while frame.png is gone
    assert [item.name for item in next(looks)] == ["other.png"]
    frame.write_bytes(b"not really a png")
    os.utime(frame, (stamp, stamp))  # the same name, size and time as before
    assert [item.name for item in next(looks, None) or []] == ["frame.png"]
    stop.set()
    deadline.cancel()


def test_a_hot_folder_that_keeps_every_frame_is_said_to_be_crowded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A station running for days on a folder nobody empties: every look reads every file and
    the watch holds a record of each, so it slowed and grew with the parts judged without a
    word. Said once the folder is crowded, again at each doubling, and again if it fills up
    again after being emptied; not at every look."""
    from inspection import batch

    monkeypatch.setattr(batch, "CROWDED_FOLDER_FILES", 3)
    folder = tmp_path / "hot"
    folder.mkdir()
    stop = threading.Event()
    deadline = threading.Timer(20, stop.set)
    deadline.start()
    looks = batch.hot_folder_batches(folder, stop, poll_seconds=0.0, settle_seconds=0.0)

    def dropped(*names: str) -> list[str]:
        for name in names:
            (folder / name).write_bytes(name.encode())
        with caplog.at_level("WARNING", logger="inspection.batch"):
            next(looks)
        said = [r.getMessage() for r in caplog.records if "files: each look" in r.getMessage()]
        caplog.clear()
        return said

    assert dropped("1.png", "2.png") == []
    assert [m.split(" holds ")[1][:7] for m in dropped("3.png")] == ["3 files"]
    assert dropped("4.png") == dropped("5.png") == []  # not at every look
    assert len(dropped("6.png")) == 1  # twice as many
    for frame in folder.iterdir():
        frame.unlink()  # emptied by whoever keeps the camera's folder
    assert dropped("a.png") == dropped("b.png") == []
    assert len(dropped("c.png")) == 1
    stop.set()
    deadline.cancel()


def test_a_hot_folder_that_goes_away_is_waited_for(tmp_path: Path) -> None:
    """A camera share unmounted mid-shift: the watch waits and takes the files once it is
    back, instead of stopping the station."""
    from inspection.batch import hot_folder_batches

    folder = tmp_path / "share"
    folder.mkdir()
    (folder / "before.png").write_bytes(b"frame 1")
    stop = threading.Event()
    deadline = threading.Timer(20, stop.set)
    deadline.start()
    looks = hot_folder_batches(folder, stop, poll_seconds=0.05, settle_seconds=0.0)
    assert [item.name for item in next(looks)] == ["before.png"]

    def remount() -> None:
        time.sleep(0.5)
        folder.mkdir()
        (folder / "after.png").write_bytes(b"frame 2")

    shutil.rmtree(folder)
    threading.Thread(target=remount).start()
    assert [item.name for item in next(looks, None) or []] == ["after.png"]
    stop.set()
    deadline.cancel()


def test_watch_picks_up_a_file_added_while_it_runs(detector: str, tmp_path: Path) -> None:
    hot = tmp_path / "hot"
    hot.mkdir()
    job = _job(detector, tmp_path)
    stop = threading.Event()
    seen: list[str] = []
    watcher = threading.Thread(
        target=job.watch,
        args=(hot, stop),
        kwargs={
            "on_result": lambda r: seen.append(r.name),
            "poll_seconds": 0.1,
            "settle_seconds": 0.2,
        },
    )
    watcher.start()
    try:
        time.sleep(0.3)
        make_images(tmp_path / "camera", n=1)
        (tmp_path / "camera" / "part_000.png").rename(hot / "new_part.png")
        deadline = time.monotonic() + 30
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # its write done
        # At work: the run is open while the watch goes on (it was marked finished after
        # each look, so a watch at work looked like one that had stopped).
        assert _run_finished_at(detector, job.run_id) is None
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert seen == ["new_part.png"]
    assert _counts(detector)[0] == 1
    assert _run_finished_at(detector, job.run_id) is not None  # stopped: finished


@contextlib.contextmanager
def _watching(job: BatchInspection, tmp_path: Path) -> Iterator[Callable[[str], None]]:
    """`job` watching tmp_path/hot in a thread; yields `drop(name)`, which moves a frame of
    tmp_path/camera into the folder and waits until the watch has judged it."""
    hot = tmp_path / "hot"
    hot.mkdir()
    seen: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(
        target=job.watch,
        args=(hot, stop),
        kwargs={"on_result": lambda r: seen.append(r.name), "poll_seconds": 0.1},
    )

    def drop(name: str) -> None:
        (tmp_path / "camera" / name).rename(hot / name)
        deadline = time.monotonic() + 30
        while name not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert name in seen, f"{name} was not judged"

    watcher.start()
    try:
        yield drop
    finally:
        stop.set()
        watcher.join(timeout=10)


def test_a_watch_judges_at_a_recalibration_made_while_it_runs(
    detector: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`calibrate` (or the Settings page) while stations watch their hot folders: the watches
    judged on at the thresholds they had started with, without a word, where the README says
    stations use a new calibration from their next part."""
    make_images(tmp_path / "camera", n=2)
    with _watching(_job(detector, tmp_path), tmp_path) as drop:
        drop("part_000.png")
        with session_scope(detector) as session:
            version = session.scalars(select(ModelVersion)).one()
            names = list(version.thresholds["per_class"])
            version.thresholds = {**version.thresholds, "per_class": dict.fromkeys(names, 0.99)}
        drop("part_001.png")
    with session_scope(detector) as session:
        first, second = session.scalars(select(Inspection).order_by(Inspection.id)).all()
        assert set(first.thresholds["per_class"].values()) != {0.99}
        assert set(second.thresholds["per_class"].values()) == {0.99}  # the new point
        # Judged at it, not only stamped with it: only a detection at >= 0.99 counts.
        assert all(p.counted == (p.confidence >= 0.99) for p in second.predictions)
    assert "was recalibrated" in caplog.text


def test_a_watch_says_so_when_another_model_is_promoted_while_it_runs(
    detector: str, trained: Trained, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A promotion made from another machine while stations watched: they judged on with the
    archived model, every verdict of the line under it, and nothing on the station said so."""
    make_images(tmp_path / "camera", n=2)
    with _watching(_job(detector, tmp_path), tmp_path) as drop:
        register_production_detector(detector, trained.weights, tmp_path / "models", "tiny-2")
        drop("part_000.png")
        drop("part_001.png")
    said = [r.getMessage() for r in caplog.records if "production detector" in r.getMessage()]
    assert said == [
        "tiny-2 is now the production detector; this station goes on judging with tiny until "
        "it is started again"
    ]  # once, not at every part


def test_a_watch_says_so_when_another_release_migrates_the_database_under_it(
    detector: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A station of the earlier release watched on while a station of a newer one migrated
    the shared database: nothing said why its writes might fail from then on."""
    from sqlalchemy import text

    from db.session import get_engine

    make_images(tmp_path / "camera", n=2)
    with _watching(_job(detector, tmp_path), tmp_path) as drop:
        drop("part_000.png")
        with get_engine(detector).begin() as connection:  # a newer release's migration
            connection.execute(text("UPDATE alembic_version SET version_num = '9999_newer'"))
        drop("part_001.png")
    said = [r.getMessage() for r in caplog.records if "schema is now" in r.getMessage()]
    assert len(said) == 1  # once, not at every chunk
    assert said[0].startswith("the database's schema is now at revision 9999_newer")
    assert "stop it and start it again on the release that migrated" in said[0]


def _run_finished_at(url: str, run_id: int):  # type: ignore[no-untyped-def]
    from db.models import InspectionRun

    with session_scope(url) as session:
        return session.get_one(InspectionRun, run_id).finished_at


def test_the_same_blank_frame_again_is_recorded_again(detector: str, tmp_path: Path) -> None:
    """A capped camera sends one black frame over and over, byte for byte: skipped as judged
    already, it showed once and then nowhere while the camera stayed dead."""
    from datetime import datetime

    from PIL import Image

    from db.queries import minute_volume, station_activity

    (tmp_path / "in").mkdir()
    Image.new("L", (64, 64)).save(tmp_path / "in" / "frame.png")
    make_images(tmp_path / "in", n=1)
    first = _job(detector, tmp_path).run(iter_source(str(tmp_path / "in")))
    assert (first.errors, first.skipped) == (1, 0)
    time.sleep(0.05)  # (the frame written again after its record, on any clock's tick)
    frame = tmp_path / "in" / "frame.png"
    frame.write_bytes(frame.read_bytes())  # the camera sends it again, under the same name
    again = _job(detector, tmp_path).run(iter_source(str(tmp_path / "in")))
    assert (again.errors, again.skipped, again.rejudged) == (1, 1, 0)  # the real part: skipped
    with session_scope(detector) as session:
        blank = session.scalars(
            select(Inspection).where(Inspection.error.like("blank image%"))
        ).all()
    assert len(blank) == 2 and sum(i.superseded_at is None for i in blank) == 1
    # Within one watch: the frame again in the next look (the chunk before still in flight).
    frame = (tmp_path / "in" / "frame.png").read_bytes()
    watched = _job(detector, tmp_path).run(
        [SourceItem("cam/1.png", frame), WRITE_NOW, SourceItem("cam/2.png", frame)]
    )
    assert (watched.errors, watched.skipped) == (2, 0)
    with session_scope(detector) as session:  # the Live page and `defects status`: every frame
        [station] = station_activity(session, since=datetime(2000, 1, 1))
    assert (station.blank_frames, station.errors) == (4, 4)
    assert station.inspected == 5  # the real part once, the four frames
    with session_scope(detector) as session:  # its parts per minute count them as it does
        minutes = minute_volume(session, since=datetime(2000, 1, 1))
    assert (sum(m.inspected for m in minutes), sum(m.errors for m in minutes)) == (5, 4)


def test_a_blank_frame_left_in_the_source_is_not_recorded_again_by_a_restart(
    detector: str, tmp_path: Path
) -> None:
    """A blank frame left in a hot folder was recorded again each time the same batch or
    watch was started again: the Live page and `defects status` counted a camera fault that
    had not come again (a station's blank frames went 1 -> 2 across a restart). The file an
    earlier run recorded, unchanged, is passed over as any part recorded before (no line in
    the feed); a new file with the same bytes is the camera's fault again, recorded."""
    from datetime import datetime

    from PIL import Image

    from db.queries import station_activity

    source = tmp_path / "in"
    source.mkdir()
    Image.new("L", (64, 64)).save(source / "frame-1.png")
    (source / "empty-1.png").write_bytes(b"")
    make_images(source, n=1)
    fed: list[str] = []
    first = _job(detector, tmp_path).run(iter_source(str(source)), fed.append)
    restarted = _job(detector, tmp_path).run(iter_source(str(source)), fed.append)
    assert (first.errors, first.skipped) == (2, 0)
    assert (restarted.inspected, restarted.errors, restarted.skipped) == (0, 0, 3)
    with session_scope(detector) as session:
        [station] = station_activity(session, since=datetime(2000, 1, 1))
    assert (station.blank_frames, station.empty_captures) == (1, 1)
    time.sleep(0.05)  # (written after the record, on any clock's tick)
    (source / "frame-2.png").write_bytes((source / "frame-1.png").read_bytes())
    (source / "empty-2.png").write_bytes(b"")
    fed.clear()
    third = _job(detector, tmp_path).run(iter_source(str(source)), fed.append)
    assert (third.errors, third.skipped) == (2, 3)
    assert sorted(r.name for r in fed) == ["empty-2.png", "frame-2.png"]
    with session_scope(detector) as session:
        [station] = station_activity(session, since=datetime(2000, 1, 1))
    assert (station.blank_frames, station.empty_captures) == (2, 2)


def test_an_empty_file_again_is_recorded_again_and_fed_to_the_plc(
    detector: str, tmp_path: Path
) -> None:
    """A camera whose capture died writes an empty file for each part, byte for byte the same:
    the second and every later one counted as inspected already, with no error on the Live
    page and no line in the results feed, while parts went by unjudged."""
    from datetime import datetime

    from db.queries import station_activity

    fed: list[str] = []
    first = _job(detector, tmp_path).run([SourceItem("cam/1.png", b"")], fed.append)
    again = _job(detector, tmp_path).run(
        [SourceItem("cam/2.png", b""), WRITE_NOW, SourceItem("cam/3.png", b"")], fed.append
    )
    assert (first.errors, again.errors, again.skipped) == (1, 2, 0)
    assert [r.name for r in fed] == ["cam/1.png", "cam/2.png", "cam/3.png"]
    assert {r.error for r in fed} == {"empty file"}
    with session_scope(detector) as session:
        empty = session.scalars(select(Inspection).where(Inspection.error == "empty file")).all()
        [station] = station_activity(session, since=datetime(2000, 1, 1))
    assert len(empty) == 3 and sum(i.superseded_at is None for i in empty) == 1
    assert (station.inspected, station.errors, station.blank_frames) == (3, 3, 0)


def test_a_zero_filled_frame_again_is_recorded_again_as_an_empty_capture(
    detector: str, tmp_path: Path
) -> None:
    """A camera writing its capture buffer out unfilled (all zero bytes, the frame's size) sent
    the same bytes every time: recorded once as "not an image file", every later one counted
    as inspected already, with no line in the results feed while parts went by unjudged."""
    zeros = bytes(64 * 64)
    fed: list[str] = []
    first = _job(detector, tmp_path).run([SourceItem("cam/1.raw.png", zeros)], fed.append)
    again = _job(detector, tmp_path).run([SourceItem("cam/2.raw.png", zeros)], fed.append)
    assert (first.errors, again.errors, again.skipped) == (1, 1, 0)
    assert [r.error for r in fed] == [
        "empty file: 4096 bytes, every one 0x00 (the camera wrote no image)"
    ] * 2
    assert again.errors_by_reason == {"empty file": 1}


def test_the_summary_counts_errors_by_kind(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A camera sending blank frames stands out from a stray file in the batch summary."""
    from PIL import Image

    from training.cli import app

    monkeypatch.setenv("DEFECTS_DATABASE_URL", detector)
    get_settings.cache_clear()
    make_images(tmp_path / "in", n=2)
    (tmp_path / "in" / "notes.txt").write_text("shift 2")
    for size in ((64, 64), (64, 48)):  # two frames, two contents, both black
        Image.new("L", size).save(tmp_path / "in" / f"black-{size[1]}.png")
    result = CliRunner().invoke(
        app, ["batch", str(tmp_path / "in"), "--line", "L"] + ["--station", "S"]
    )
    assert result.exit_code == 0, result.output
    assert "errors by kind: blank image 2, not an image file 1" in " ".join(result.output.split())


def test_cli_batch_and_inspect(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.cli import app

    monkeypatch.setenv("DEFECTS_DATABASE_URL", detector)
    get_settings.cache_clear()
    images = make_images(tmp_path / "in", n=5)
    runner = CliRunner()
    csv_path = tmp_path / "out" / "run.csv"
    result = runner.invoke(
        app,
        [
            "batch",
            str(tmp_path / "in"),
            "--line",
            "L",
            "--station",
            "S",
            "--export",
            "csv",
            "--output",
            str(csv_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "5 parts inspected" in result.output and "parts/s" in result.output
    assert len(csv_path.read_text().splitlines()) == 6
    first_rows = csv_path.read_text().splitlines()[1:]
    again = runner.invoke(
        app,
        ["batch", str(tmp_path / "in"), "--line", "L", "--station", "S", "--export", "csv"]
        + ["--output", str(csv_path)],
    )
    # Run again (a resumed batch, here with nothing left): its CSV still lists the whole
    # batch, each part at its current verdict (it listed only what the run judged: 0 rows).
    assert again.exit_code == 0, again.output
    assert "wrote 5 rows" in again.output
    assert sorted(csv_path.read_text().splitlines()[1:]) == sorted(first_rows)
    to_folder = runner.invoke(
        app,
        ["batch", str(tmp_path / "in"), "--line", "L", "--station", "S", "--export", "csv"]
        + ["--output", str(tmp_path)],
    )
    assert to_folder.exit_code == 1 and "is a folder" in str(to_folder.exception)
    new = make_images(tmp_path / "more", n=2, seed=3)
    result = runner.invoke(
        app, ["inspect", *(str(tmp_path / "more" / im.name) for im in new), "--json"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert [p["verdict"] in {"pass", "fail"} for p in payload] == [True, True]
    # Marked a one-off run (the station's row passes it over), the batches not.
    with session_scope(get_settings().resolved_database_url) as session:
        runs = session.execute(
            select(InspectionRun.source, InspectionRun.one_off).order_by(InspectionRun.id)
        ).all()
    assert [one_off for _, one_off in runs] == [False] * (len(runs) - 1) + [True]
    again = runner.invoke(
        app, ["inspect", *(str(tmp_path / "more" / im.name) for im in new), "--json"]
    )
    assert json.loads(again.stdout) == payload  # already inspected: the stored verdicts, unchanged
    # Said (on stderr, --json stays parseable): nothing else told the verdicts were not new,
    # nor why the station given counted no part.
    assert again.stderr.strip() == (
        "2 part(s) had already been inspected by tiny: their stored verdicts are shown, "
        "each counted at the station that judged it"
    )
    # A path that names no image: the others are judged and shown, and the status is an error.
    known = str(tmp_path / "more" / new[0].name)
    missing = runner.invoke(app, ["inspect", known, str(tmp_path / "nope.png"), "--json"])
    assert [row["verdict"] for row in json.loads(missing.stdout)] == [
        payload[0]["verdict"],
        "error",
    ]
    assert missing.exit_code == 1 and isinstance(missing.exception, UserError)
    assert str(missing.exception) == f"1 of 2 paths name no image file: {tmp_path / 'nope.png'}"
    # What each station judged lately: the batch's 5 on L/S, the inspected 2 and 1 on default.
    status = runner.invoke(app, ["status", "--json"])
    assert status.exit_code == 0, status.output
    stations = {(s["line"], s["station"]): s for s in json.loads(status.output)["stations"]}
    assert stations[("L", "S")]["inspected"] == 5
    assert stations[("default", "default")]["inspected"] == 2  # the missing path is no part
    assert stations[("L", "S")]["run_open"] is False  # the batch's run is finished
    assert stations[("L", "S")]["model"] == "tiny"  # what it judges with
    table = runner.invoke(app, ["status"]).output
    assert "the last 60 minutes" in table and "tiny" in table

    runs_before = _count_of(detector, InspectionRun)
    folder = runner.invoke(app, ["inspect", str(tmp_path / "more")])
    assert "a folder, not an image: `defects batch FOLDER`" in str(folder.exception)
    assert folder.exit_code == 1
    assert _count_of(detector, InspectionRun) == runs_before  # no run opened for no part
    assert images  # the first batch's images stay untouched


def test_two_writers_of_the_same_part_both_keep_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two stations sharing an image store wrote one `<hash>.partial`: the first rename took
    it away and the second stopped its run with a false 'free space' error."""
    import threading

    from inspection.images import store_image

    write = os.write
    both_writing = threading.Barrier(2, timeout=10)

    def write_together(fd: int, data: Any) -> int:
        written = write(fd, data)
        if _is_stored_image(fd):
            both_writing.wait()  # neither renames before the other has written
        return written

    monkeypatch.setattr(os, "write", write_together)
    errors: list[BaseException] = []

    def store() -> None:
        try:
            store_image(tmp_path, "ab" * 32, "part.png", b"the same bytes")
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    writers = [threading.Thread(target=store) for _ in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert errors == []
    assert (tmp_path / "ab" / f"{'ab' * 32}.png").read_bytes() == b"the same bytes"
    assert not list(tmp_path.rglob("*.partial"))


def test_parts_another_station_judged_meanwhile_are_left_to_its_verdict(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two stations on the same folder (or the same frames): each looked the chunk up, found
    it new and wrote it; the second's write broke on a unique index with a traceback, and its
    run stayed open. The loser now leaves those parts to the winner's verdict and goes on."""
    from db.models import InspectionRun

    make_images(tmp_path / "in", n=6)
    # (Stations opened first: the slower station's look-up happens after both have started.)
    first = BatchInspection(detector, tmp_path / "store", "Line 1", "Cam A")
    second = BatchInspection(detector, tmp_path / "store", "Line 1", "Cam B")
    looked_up = second._current_points

    def looked_up_before_the_first_wrote(hashes: list[str]) -> dict[str, bool]:
        monkeypatch.setattr(second, "_current_points", looked_up)
        first.run(iter_source(str(tmp_path / "in")))  # the other station writes now
        return {}  # as seen a moment before

    monkeypatch.setattr(second, "_current_points", looked_up_before_the_first_wrote)
    summary = second.run(iter_source(str(tmp_path / "in")))
    assert (summary.inspected, summary.skipped) == (0, 6)
    assert _counts(detector) == (6, 6, 6)  # every part once, judged once
    with session_scope(detector) as session:
        runs = session.scalars(select(InspectionRun)).all()
        assert all(run.finished_at is not None for run in runs)


def test_two_stations_starting_a_new_line_at_once_both_run(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each looked the new line up, found none and created it: the second broke on the
    unique name with a traceback. It now finds the line the first created, and runs."""
    from sqlalchemy import false

    import db.registry as registry
    from db.models import InspectionRun, ProductionLine

    same_name = registry._same_name
    calls = []

    def looked_up_before_the_other_created_it(column, *names):  # type: ignore[no-untyped-def]
        calls.append(names[0])
        if len(calls) == 1:
            with session_scope(detector) as other:  # the other station commits the line now
                other.add(ProductionLine(name=names[0]))
            return false()  # as this station's look-up saw it a moment before
        return same_name(column, *names)

    monkeypatch.setattr(registry, "_same_name", looked_up_before_the_other_created_it)
    job = BatchInspection(detector, tmp_path / "store", "New line", "Cam A")
    with session_scope(detector) as session:
        lines = session.scalars(select(ProductionLine.name)).all()
        assert lines.count("New line") == 1
        assert session.get_one(InspectionRun, job.run_id).line.name == "New line"


def test_a_watch_that_gave_up_on_the_database_does_not_wait_a_second_time(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It waited the whole outage limit again to mark its run finished, then stopped."""
    import threading

    from db.session import DatabaseError

    job = _job(detector, tmp_path)
    job.outage_seconds = 60.0
    tries = []

    def database_gone(*args, **kwargs):  # type: ignore[no-untyped-def]
        tries.append(1)
        raise DatabaseError("the database is gone")

    monkeypatch.setattr(job, "run", database_gone)
    monkeypatch.setattr(job, "_finish_run", database_gone)
    started = time.monotonic()
    with pytest.raises(DatabaseError):
        job.watch(tmp_path, threading.Event())
    assert time.monotonic() - started < 5 and len(tries) == 2  # the run, one finishing try


def test_a_cameras_pgm_or_ppm_in_a_folder_is_an_image_even_with_a_zip_behind_it(
    tmp_path: Path,
) -> None:
    """A raw PGM/PPM is a camera's image as a BMP is: one whose bytes a zip follows (a camera
    SDK's trailer) was opened as the zip, its entries judged and the frame itself never, where
    a BMP or JPEG of the same bytes is the image."""
    from PIL import Image

    from inspection.batch import is_zip_archive, iter_source
    from inspection.images import decode_image

    trailer = io.BytesIO()
    with zipfile.ZipFile(trailer, "w") as archive:
        archive.writestr("inside.png", b"not this")
    folder = tmp_path / "in"
    folder.mkdir()
    frames = {}
    for name, mode in (("gray.pgm", "L"), ("colour.ppm", "RGB")):
        frame = io.BytesIO()
        Image.new(mode, (32, 24), 80).save(frame, "PPM")
        frames[name] = frame.getvalue() + trailer.getvalue()
        (folder / name).write_bytes(frames[name])
    assert not is_zip_archive(folder / "gray.pgm")
    items = {item.name: item for item in iter_source(str(folder))}
    assert {name: item.data for name, item in items.items()} == frames
    assert decode_image(frames["colour.ppm"]).width == 32


def test_odd_files_are_judged_or_recorded_one_by_one_and_the_batch_goes_on(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of these stopped the whole batch (and every rerun), judged a part wrongly or
    dropped one: a line-scan strip whose letterboxed height rounded to 0; a file name that is
    not UTF-8; two zip entries of one name; a zip appended to a JPEG (judged as the zip); a
    TIFF of two pages (judged on the first); a float image stored 0 to 1 (taken for blank)."""
    import io

    import numpy as np
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(3)

    def png(width: int, height: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (height, width), dtype=np.uint8)).save(buffer, "PNG")
        return buffer.getvalue()

    (folder / "strip.png").write_bytes(png(20000, 20))
    (folder / os.fsdecode(b"latin\xff1.png")).write_bytes(png(64, 64))
    with (
        zipfile.ZipFile(folder / "twice.zip", "w") as archive,
        pytest.warns(UserWarning, match="Duplicate name"),
    ):
        archive.writestr("same.png", png(64, 64))
        archive.writestr("same.png", png(64, 64))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("inside.png", png(64, 64))
    (folder / "trailer.jpg").write_bytes(png(64, 64) + buffer.getvalue())
    pages = [Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)) for _ in range(2)]
    pages[0].save(folder / "pages.tif", save_all=True, append_images=pages[1:])
    gradient = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (64, 1))
    Image.fromarray(gradient, mode="F").save(folder / "float.tif")

    summary = _job(detector, tmp_path).run(iter_source(str(folder)))
    assert summary.skipped == 0 and summary.inspected == 7
    with session_scope(detector) as session:
        listed = session.execute(
            select(Part.original_name, Inspection.error).join(
                Inspection, Inspection.part_id == Part.id
            )
        ).all()
    rows = dict(listed)
    assert rows["strip.png"] is None
    assert rows["latin\\xff1.png"] is None
    assert [n for n, _ in listed].count("twice.zip:same.png") == 2  # two parts, one name
    assert rows["trailer.jpg"] is None  # the image, not the zip after it
    assert "2 pages or frames" in rows["pages.tif"]
    assert rows["float.tif"] is None  # a gradient, not a blank frame


def test_a_damaged_exif_block_leaves_the_image_as_stored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pillow's transpose raised struct.error on a tag of the wrong type, and the batch
    stopped over a file whose pixels were fine."""
    import io
    import struct

    import numpy as np
    from PIL import Image, ImageOps

    from inspection.images import decode_image

    def damaged(image):  # type: ignore[no-untyped-def]
        raise struct.error("required argument is not an integer")

    monkeypatch.setattr(ImageOps, "exif_transpose", damaged)
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 12), 90, dtype=np.uint8)).save(buffer, "PNG")
    assert decode_image(buffer.getvalue()).source.shape == (8, 12)


def test_a_hot_folder_file_replaced_by_one_of_the_same_size_and_time_is_new(
    tmp_path: Path,
) -> None:
    """A share's coarse clock, or a copy that keeps the time: same size, same modification
    time, another part; it was never judged."""
    from inspection.batch import file_key

    frame = tmp_path / "current.bmp"
    frame.write_bytes(b"A" * 100)
    os.utime(frame, ns=(10**18, 10**18))
    before = file_key(frame)
    replacement = tmp_path / "incoming.bmp"
    replacement.write_bytes(b"B" * 100)
    os.utime(replacement, ns=(10**18, 10**18))
    replacement.replace(frame)
    assert file_key(frame) != before


def test_a_watch_leaves_a_file_written_just_now_to_settle(tmp_path: Path) -> None:
    """A watch read the folder as it found it at once: a file a camera was still writing was
    judged half-written (an error), then again once complete."""
    from inspection.batch import settled_files

    old, fresh = tmp_path / "old.png", tmp_path / "fresh.png"
    old.write_bytes(b"done")
    os.utime(old, (time.time() - 60, time.time() - 60))
    fresh.write_bytes(b"half")
    assert settled_files([old, fresh]) == [old]
    assert settled_files([tmp_path / "gone.png"]) == [tmp_path / "gone.png"]  # read, and said


def test_zip_entry_names_in_utf8_without_the_flag_and_a_zip_inside_a_zip(tmp_path: Path) -> None:
    """Names written in UTF-8 by tools that do not set the zip's UTF-8 flag came out as code
    page 437 ("teil_├ñ.jpg"); a zip inside a zip was "not an image file", its entries unread
    without a word."""
    import io

    from inspection.batch import iter_zip

    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr("a.png", b"x")
    outer = tmp_path / "outer.zip"
    with zipfile.ZipFile(outer, "w") as archive:
        archive.writestr("teil_XX.jpg", b"not really an image")
        archive.writestr("nested.zip", inner.getvalue())
    # The placeholder's bytes become UTF-8 ones, the flag left unset (as such tools write it).
    outer.write_bytes(outer.read_bytes().replace(b"teil_XX.jpg", "teil_ä.jpg".encode()))
    items = {item.name: item for item in iter_zip(outer, "outer.zip")}
    assert items["outer.zip:teil_ä.jpg"].data == b"not really an image"
    assert items["outer.zip:nested.zip"].error == "a zip inside a zip: its entries are not read"


def test_a_large_file_that_is_not_an_image_is_recorded_but_not_kept(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zip of 200 MB blobs filled the image store with bytes no one looks at."""
    import inspection.images as images

    monkeypatch.setattr(images, "KEEP_NON_IMAGE_BYTES", 1000)
    folder = tmp_path / "in"
    make_images(folder, n=1)
    (folder / "small.bin").write_bytes(b"junk" * 10)
    (folder / "large.bin").write_bytes(b"junk" * 1000)
    _job(detector, tmp_path).run(iter_source(str(folder)))
    with session_scope(detector) as session:
        rows = dict(
            session.execute(
                select(Part.original_name, Part.stored_path).where(Part.original_name.like("%.bin"))
            ).all()
        )
        errors = dict(
            session.execute(
                select(Part.original_name, Inspection.error).join(
                    Inspection, Inspection.part_id == Part.id
                )
            ).all()
        )
    assert rows["small.bin"] and Path(rows["small.bin"]).is_file()  # kept with its error
    assert rows["large.bin"] == ""
    assert errors["large.bin"].startswith("not an image file") and "not kept" in errors["large.bin"]


def test_a_large_file_refused_as_an_image_is_recorded_but_not_kept(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file of 250 MB, a PNG header claiming 100000x100000 pixels and padding, was kept whole
    in the image store, one copy per distinct file, where a file that is not an image is cut
    at the keep limit: no page draws it nor review or backtest reads it (an error is never
    reviewed), and judged again at a raised limit it is read from its source. Past the keep
    limit only its refusal is kept; a small one stays with its error, as its evidence."""
    import hashlib
    import zlib as deflate

    import inspection.images as images

    monkeypatch.setattr(images, "KEEP_NON_IMAGE_BYTES", 1000)

    def huge_png(padding: int) -> bytes:
        header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
        chunk = b"IHDR" + header
        ihdr = struct.pack(">I", len(header)) + chunk + struct.pack(">I", deflate.crc32(chunk))
        idat = struct.pack(">I", padding) + b"IDAT" + random.Random(padding).randbytes(padding)
        return b"\x89PNG\r\n\x1a\n" + ihdr + idat

    folder = tmp_path / "in"
    make_images(folder, n=1)
    (folder / "small.png").write_bytes(huge_png(100))
    (folder / "large.png").write_bytes(huge_png(5000))
    _job(detector, tmp_path).run(iter_source(str(folder)))
    with session_scope(detector) as session:
        rows = session.execute(
            select(Part.original_name, Part.stored_path, Inspection.error).join(
                Inspection, Inspection.part_id == Part.id
            )
        ).all()
    kept = {name: stored for name, stored, _ in rows}
    errors = {name: error or "" for name, _, error in rows}
    for name in ("small.png", "large.png"):
        assert errors[name].startswith("image too large: 10000 MP is over the ")
    assert kept["small.png"] and Path(kept["small.png"]).is_file()  # kept with its error
    assert kept["large.png"] == ""
    assert errors["large.png"].endswith("(not kept: 0 MB that could not be judged)")
    large = hashlib.sha256((folder / "large.png").read_bytes()).hexdigest()
    assert not list((tmp_path / "store").rglob(f"{large}*"))


def test_a_large_file_of_one_byte_over_and_over_is_recorded_but_not_kept(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small zip of 200 MB entries each of one byte repeated (a zip bomb) put every entry's
    bytes in the image store: 600 MB from a 600 KB upload."""
    import inspection.images as images

    monkeypatch.setattr(images, "KEEP_NON_IMAGE_BYTES", 1000)
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bomb:
        bomb.writestr("small.png", b"\x01" * 100)
        for value in (2, 3):
            bomb.writestr(f"large{value}.png", bytes([value]) * 5000)
    _job(detector, tmp_path).run(iter_source(str(archive)))
    with session_scope(detector) as session:
        rows = session.execute(
            select(Part.original_name, Part.stored_path, Inspection.error).join(
                Inspection, Inspection.part_id == Part.id
            )
        ).all()
    kept = {name: stored for name, stored, _ in rows}
    errors = {name: error for name, _, error in rows}
    assert kept["bomb.zip:small.png"] and Path(kept["bomb.zip:small.png"]).is_file()
    for value in (2, 3):
        name = f"bomb.zip:large{value}.png"
        assert kept[name] == ""
        assert errors[name].startswith("empty file: 5000 bytes") and "not kept" in errors[name]
    store = tmp_path / "store"
    assert sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) == 100


def test_an_outage_line_is_said_once_by_the_threads_that_wait_through_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from inspection.batch import _say_once

    with caplog.at_level("WARNING", logger="inspection.batch"):
        for _ in range(2):  # the main thread's look-up and the writer thread
            _say_once("database gone; trying again in 0.5 s")
        _say_once("database gone; trying again in 1.0 s")
    assert [r.getMessage() for r in caplog.records] == [
        "database gone; trying again in 0.5 s",
        "database gone; trying again in 1.0 s",
    ]


def test_a_fault_of_the_same_bytes_is_recorded_at_each_station(
    detector: str, tmp_path: Path
) -> None:
    """Two cameras writing empty (or the same garbage) files: the second station's came out as
    "already inspected", 0 errors, its camera fault invisible on its station."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "garbage.png").write_bytes(b"\x00garbage" * 10)
    first = BatchInspection(detector, tmp_path / "store", "L3", "A").run(iter_source(str(folder)))
    assert (first.errors, first.skipped) == (2, 0)
    other = BatchInspection(detector, tmp_path / "store", "L3", "B").run(iter_source(str(folder)))
    assert (other.errors, other.skipped, other.rejudged) == (2, 0, 0)
    again = BatchInspection(detector, tmp_path / "store", "L3", "B").run(iter_source(str(folder)))
    # The same files left in the source, unchanged, have not come again: passed over.
    assert (again.errors, again.skipped) == (0, 2)
    # The garbage is this station's fault, recorded once; an empty file written again, the
    # same bytes at every part of a dead capture, is recorded every time, as a blank frame is.
    time.sleep(0.05)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "garbage.png").write_bytes(b"\x00garbage" * 10)
    rewritten = BatchInspection(detector, tmp_path / "store", "L3", "B").run(
        iter_source(str(folder))
    )
    assert (rewritten.errors, rewritten.skipped) == (1, 1)


def test_a_model_file_is_accepted_where_a_version_name_is(
    detector: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    export_of_trained: Callable[[Path, str], Path],
) -> None:
    """`defects inspect --model best.onnx` (or a .pt): a user who has just exported a model
    passes its file. It judges for the version it is the weights or an export of, at that
    version's thresholds; "no model version 'best.onnx'" was all it said."""
    from training.cli import app
    from training.demo import DEMO_DIR

    weights = Path(_weights(detector))
    exported = export_of_trained(weights, "tiny")
    moved = Path(shutil.copy2(exported, tmp_path / "best.onnx"))  # known by its metadata
    (tmp_path / "copy").mkdir()
    copied = Path(shutil.copy2(weights, tmp_path / "copy" / "best.pt"))  # known by its hash
    make_images(tmp_path / "in", n=3)
    for file, engine in ((moved, "onnxruntime"), (copied, "pytorch")):
        job = _job(detector, tmp_path, model=str(file))
        assert (job.model_name, job.inspector.backend.name) == ("tiny", engine)
        assert job.inspector.backend.model_path == file
        job.run(iter_source(str(tmp_path / "in")))
        job.inspector.close()
    assert _counts(detector) == (3, 3, 3)  # the same version's verdicts: judged once
    # Through the command line, and a file that belongs to no registered version.
    monkeypatch.setenv("DEFECTS_DATABASE_URL", detector)
    get_settings.cache_clear()
    image = str(tmp_path / "in" / "part_000.png")
    result = CliRunner().invoke(app, ["inspect", image, "--model", str(moved), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["verdict"] in {"pass", "fail"}
    foreign = shutil.copy2(DEMO_DIR / "weights.onnx", tmp_path / "other.onnx")
    refused = CliRunner().invoke(app, ["inspect", image, "--model", str(foreign)])
    assert isinstance(refused.exception, UserError)
    assert "not the weights or an export of a registered detector" in str(refused.exception)
    missing = CliRunner().invoke(app, ["inspect", image, "--model", str(tmp_path / "no.pt")])
    assert str(missing.exception) == f"model file not found: {tmp_path / 'no.pt'}"


def test_an_export_of_other_classes_beside_the_weights_is_refused(
    detector: str, tmp_path: Path
) -> None:
    """A stale or foreign .onnx beside a version's weights (which a CPU station runs in their
    place) stored its own class names, another model's verdicts, under the version."""
    from training.demo import DEMO_DIR

    weights = Path(_weights(detector))
    # (As an earlier release exported it: the demo's own records its weights, refused by them.)
    _as_an_earlier_release_exported(
        Path(shutil.copy2(DEMO_DIR / "weights.onnx", weights.with_suffix(".onnx")))
    )
    with pytest.raises(UserError, match=r"has the classes .*crazing.*not those of tiny"):
        _job(detector, tmp_path)
    job = _job(detector, tmp_path, backend="pytorch")  # the weights themselves still judge
    assert job.inspector.class_names == ["scratch", "spot"]
    job.inspector.close()


def test_an_export_of_other_weights_of_the_same_classes_is_refused(
    detector: str, tmp_path: Path, export_of_trained: Callable[[Path, str], Path]
) -> None:
    """A CPU station runs the .onnx beside a version's weights: an export made before a
    fine-tune was written over them, or another version's copied there, knows the same
    classes, and judged every part with the other model under this version, without a word."""
    import torch

    from inspection.engine import Inspector
    from training.export import export_detector

    weights = Path(_weights(detector))
    exported = export_of_trained(weights, "tiny")
    checkpoint = torch.load(weights, map_location="cpu", weights_only=False)
    with torch.no_grad():  # a fine-tune's weights, of the same classes
        next(checkpoint["model"].parameters()).add_(0.01)
    torch.save(checkpoint, tmp_path / "tuned.pt")
    with session_scope(detector) as session:
        tuned = Path(register_tiny_detector(session, tmp_path / "tuned.pt", "tuned").file_path)
    shutil.copy2(exported, tuned.with_suffix(".onnx"))
    refused = r"tuned\.onnx was exported from other weights than .*tuned\.pt \(an export older"
    with pytest.raises(UserError, match=refused):
        _job(detector, tmp_path, model="tuned")
    with pytest.raises(UserError, match=refused):  # (the Inspect page's loaded model)
        Inspector.from_weights(tuned)
    job = _job(detector, tmp_path, model="tuned", backend="pytorch")  # its weights still judge
    job.inspector.close()
    export_detector(tuned, version_name="tuned")  # exported again: it judges
    job = _job(detector, tmp_path, model="tuned")
    assert job.inspector.backend.model_path == tuned.with_suffix(".onnx")
    job.inspector.close()
    job = _job(detector, tmp_path)  # the export of the production weights, where it belongs
    assert job.inspector.backend.model_path == exported
    job.inspector.close()


def _as_an_earlier_release_exported(exported: Path) -> Path:
    """The export without the weights' digest, as releases before it was recorded wrote it."""
    import onnx

    from inspection.engine import EXPORTED_FROM_KEY

    proto = onnx.load(str(exported))
    kept = [p for p in proto.metadata_props if p.key != EXPORTED_FROM_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, str(exported))
    return exported


def test_an_earlier_releases_export_of_another_version_is_refused(
    detector: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    export_of_trained: Callable[[Path, str], Path],
) -> None:
    """An export made before the weights' digest was recorded cannot be checked by it: another
    version's, of the same classes, copied beside a version's weights judged every part with
    that model under this one, without a word. The version it names says so; where it cannot
    (a name taken again after a rename, the same weights registered twice), one line says
    that the export is unchecked and how to refresh it."""
    import torch

    from training.export import export_detector

    weights = Path(_weights(detector))
    stale = _as_an_earlier_release_exported(export_of_trained(weights, "tiny"))
    checkpoint = torch.load(weights, map_location="cpu", weights_only=False)
    with torch.no_grad():  # a fine-tune's weights, of the same classes
        next(checkpoint["model"].parameters()).add_(0.01)
    torch.save(checkpoint, tmp_path / "tuned.pt")
    with session_scope(detector) as session:
        tuned = Path(register_tiny_detector(session, tmp_path / "tuned.pt", "tuned").file_path)
        again = Path(register_tiny_detector(session, weights, "tiny-again").file_path)
    shutil.copy2(stale, tuned.with_suffix(".onnx"))
    shutil.copy2(stale, again.with_suffix(".onnx"))
    refused = r"tuned\.onnx was exported from tiny, not tuned .*`defects export tuned`"
    with pytest.raises(UserError, match=refused):
        _job(detector, tmp_path, model="tuned")
    make_images(tmp_path / "in", n=2)
    with caplog.at_level("WARNING", logger="inspection.batch"):
        job = _job(detector, tmp_path, model="tiny-again")  # the same weights: judged
        job.run(iter_source(str(tmp_path / "in")), finish=False)
        job.run(iter_source(str(tmp_path / "in")))  # (a watch's second look: said once)
        job.inspector.close()
    said = [r.getMessage() for r in caplog.records if "carries no record" in r.getMessage()]
    assert said == [
        f"{again.with_suffix('.onnx')} carries no record of the weights it was exported from "
        "(an export by an earlier release): it judges for tiny-again unchecked; refresh it "
        "with `defects export tiny-again`"
    ]
    # tiny renamed, and its name given to a version registered after the export: no sign.
    with session_scope(detector) as session:
        session.scalars(select(ModelVersion).where(ModelVersion.name == "tiny")).one().name = "old"
        register_tiny_detector(session, tmp_path / "tuned.pt", "tiny")
    job = _job(detector, tmp_path, model="old")
    assert job.inspector.backend.model_path == stale
    job.inspector.close()
    export_detector(tuned, version_name="tuned")  # exported again: it judges, unsaid
    caplog.clear()
    with caplog.at_level("WARNING", logger="inspection.batch"):
        job = _job(detector, tmp_path, model="tuned")
        job.run(iter_source(str(tmp_path / "in")))
        job.inspector.close()
    assert not [r for r in caplog.records if "carries no record" in r.getMessage()]


def test_an_export_of_another_size_in_the_stations_file_is_refused(
    detector: str, tmp_path: Path
) -> None:
    """An export at another --imgsz is named for its size so that the stations' file stays
    the training size's; copied over `NAME.onnx`, a CPU station judged every part at that
    size, its verdicts moved from the weights' at their calibrated thresholds, unsaid."""
    from inspection.engine import Inspector
    from training.export import export_detector

    weights = Path(_weights(detector))
    other_size = export_detector(weights, imgsz=96, version_name="tiny")
    assert other_size.name == f"{weights.stem}.96.onnx"
    shutil.copy2(other_size, weights.with_suffix(".onnx"))
    refused = r"takes parts at 96 px, but .* was trained and calibrated at 64 px"
    with pytest.raises(UserError, match=refused):
        _job(detector, tmp_path)
    with pytest.raises(UserError, match=refused):
        Inspector.from_weights(weights, backend="onnx")
    job = _job(detector, tmp_path, model=str(other_size))  # asked for by name: it judges
    assert job.inspector.backend.image_size == 96
    job.inspector.close()
    job = _job(detector, tmp_path, backend="pytorch")
    assert job.inspector.backend.image_size == 64
    job.inspector.close()


def test_a_loaded_model_handed_over_is_checked_for_its_classes_too(
    detector: str, tmp_path: Path
) -> None:
    """The Inspect page hands its loaded model over: a stale export of other classes beside
    the weights, refused at a station, judged there and stored its verdicts under the version."""
    from db.models import InspectionRun
    from inspection.engine import Inspector
    from training.demo import DEMO_DIR

    weights = Path(_weights(detector))
    # (As an earlier release exported it: the demo's own records its weights, refused by them.)
    _as_an_earlier_release_exported(
        Path(shutil.copy2(DEMO_DIR / "weights.onnx", weights.with_suffix(".onnx")))
    )
    loaded = Inspector.from_weights(weights, backend="onnx")
    try:
        with pytest.raises(UserError, match=r"has the classes .*crazing.*not those of tiny"):
            _job(detector, tmp_path, inspector=loaded)
        assert not loaded._pool._shutdown  # (still its owner's to use and close)
    finally:
        loaded.close()
    with session_scope(detector) as session:
        assert session.scalar(select(func.count(InspectionRun.id))) == 0  # no run left open


def _weights(url: str) -> str:
    with session_scope(url) as session:
        return session.scalars(select(ModelVersion.file_path)).one()


def test_a_damaged_export_beside_the_weights_says_how_to_go_on(
    detector: str, tmp_path: Path
) -> None:
    """A CPU station runs the .onnx beside the weights: a damaged one stopped it with ONNX
    Runtime's protobuf error alone, no way out said."""
    from dashboard.state import detector_info, inspector_for

    weights = Path(_weights(detector))
    weights.with_suffix(".onnx").write_bytes(b"half an export")
    # The version named where it is known: the hint said `defects export VERSION`.
    beside = r"export it again \(`defects export tiny`\), .* \(--backend pytorch\)"
    with pytest.raises(UserError, match=beside):
        _job(detector, tmp_path)
    info = detector_info(detector)
    assert info is not None
    with pytest.raises(UserError, match=beside):  # the Inspect page's model
        inspector_for(info)
    # Passed as --model: protobuf's "Wire format was corrupt" was all it said.
    named = (
        r"cannot read the ONNX model .*export it again \(`defects export tiny`\).*"
        r"--model tiny --backend pytorch"
    )
    with pytest.raises(UserError, match=named):
        _job(detector, tmp_path, model=str(weights.with_suffix(".onnx")))
    elsewhere = shutil.copy2(weights.with_suffix(".onnx"), tmp_path / "found.onnx")
    with pytest.raises(UserError, match=r"--model VERSION --backend pytorch"):  # (whose? unknown)
        _job(detector, tmp_path, model=str(elsewhere))


def test_a_runs_csv_says_its_times_are_utc(detector: str, tmp_path: Path) -> None:
    """The times are stored in UTC and were written without a zone: a station on local time
    read them as its own, hours off."""
    import csv
    from datetime import UTC, datetime, timedelta

    from inspection.batch import export_run_csv

    make_images(tmp_path / "in", n=2)
    job = BatchInspection(detector, tmp_path / "store", "L", "S")
    job.run(iter_source(str(tmp_path / "in")))
    path = tmp_path / "run.csv"
    assert export_run_csv(detector, job.run_id, path) == 2
    for row in csv.DictReader(path.open()):
        written = datetime.fromisoformat(row["inspected_at"])
        assert written.utcoffset() == timedelta(0)
        assert abs(datetime.now(UTC) - written) < timedelta(minutes=10)


def test_a_runs_csv_gives_latency_as_the_results_feed_does(detector: str, tmp_path: Path) -> None:
    """`--export csv` wrote a part's latency to 0.01 ms, the results feed and `inspect --json`
    to 0.1 ms: one part read 12.35 in one and 12.3 in the other."""
    import csv

    from inspection.batch import export_run_csv
    from inspection.results import result_line, shown_latency

    make_images(tmp_path / "in", n=2)
    (tmp_path / "in" / "notes.txt").write_bytes(b"not an image")
    job = BatchInspection(detector, tmp_path / "store", "L", "S")
    lines: dict[str, Any] = {}

    def on_recorded(recorded: list[PartResult], repeats: list[PartResult]) -> None:
        for result in recorded:
            lines[result.name] = result_line(result, "L", "S", job.run_id, len(lines) + 1)

    job.run(iter_source(str(tmp_path / "in")), on_recorded=on_recorded)
    job.inspector.close()
    with session_scope(detector) as session:  # (a figure whose rounding shows)
        part = session.scalars(select(Part).where(Part.original_name == "part_000.png")).one()
        session.execute(
            update(Inspection).where(Inspection.part_id == part.id).values(latency_ms=12.3456)
        )
    lines["part_000.png"]["latency_ms"] = shown_latency(12.3456)
    path = tmp_path / "run.csv"
    assert export_run_csv(detector, job.run_id, path) == 3
    rows = list(csv.DictReader(path.open(newline="")))
    written = {row["part"]: row["latency_ms"] for row in rows}
    assert written["part_000.png"] == "12.3"
    # (An error, never judged, has no confidence: it read 0.0000, as a part judged clean.)
    confidence = {row["part"]: row["max_confidence"] for row in rows}
    assert confidence["notes.txt"] == "" and confidence["part_000.png"] != ""
    assert written == {
        name: "" if line["latency_ms"] is None else json.dumps(line["latency_ms"])
        for name, line in lines.items()
    }


def test_a_runs_csv_a_full_disk_cuts_short_leaves_no_half_file_at_its_name(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--output FILE` on a full disk left the rows written so far at FILE, a half CSV read as
    the whole run's, and said "[Errno 28] No space left on device" without the file. It is now
    written whole or not at all (the file there before stays), and the error names it. (The
    full disk is simulated: the second row's write fails with ENOSPC.)"""
    import csv
    import errno

    from inspection.batch import export_run_csv

    make_images(tmp_path / "in", n=3)
    job = BatchInspection(detector, tmp_path / "store", "L", "S")
    job.run(iter_source(str(tmp_path / "in")))
    path = tmp_path / "out" / "run.csv"
    path.parent.mkdir()
    path.write_text("an earlier export\n")
    writer = csv.writer

    def filling(handle, *args, **kwargs):  # type: ignore[no-untyped-def]
        real, rows = writer(handle, *args, **kwargs), [0]

        class Filling:
            def writerow(self, row: list[object]) -> None:
                rows[0] += 1
                if rows[0] > 2:
                    handle.flush()
                    raise OSError(errno.ENOSPC, "No space left on device")
                real.writerow(row)

        return Filling()

    monkeypatch.setattr(csv, "writer", filling)
    with pytest.raises(UserError, match=r"cannot write the CSV .*run\.csv: No space left"):
        export_run_csv(detector, job.run_id, path)
    assert path.read_text() == "an earlier export\n"
    assert [p.name for p in path.parent.iterdir()] == ["run.csv"]  # (no half file beside it)
    monkeypatch.setattr(csv, "writer", writer)  # (space freed)
    assert export_run_csv(detector, job.run_id, path) == 3
    assert len(list(csv.DictReader(path.open(newline="")))) == 3


def test_a_runs_csv_whose_sync_fails_says_to_check_the_disk_not_to_free_space(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk failing the CSV's sync (EIO) was told "free space there", which would not help;
    it now says to check the disk, and the file there before stays."""
    import errno

    from inspection.batch import export_run_csv

    make_images(tmp_path / "in", n=2)
    job = BatchInspection(detector, tmp_path / "store", "L", "S")
    job.run(iter_source(str(tmp_path / "in")))
    path = tmp_path / "out" / "run.csv"
    path.parent.mkdir()
    path.write_text("an earlier export\n")

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(UserError) as raised:
        export_run_csv(detector, job.run_id, path)
    said = str(raised.value)
    assert "run.csv: Input/output error" in said and "check its disk, or give --output" in said
    assert "free space" not in said
    assert path.read_text() == "an earlier export\n"
    assert [p.name for p in path.parent.iterdir()] == ["run.csv"]


def test_a_runs_csv_is_on_disk_under_its_name_once_written(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--export csv` renamed its file into place unsynced: after a power cut the CSV could be
    empty or missing under its name, though the command had said it was written. Its bytes are
    synced before the rename, its folder's entry after."""
    from inspection.batch import export_run_csv

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("no /proc here")
    make_images(tmp_path / "in", n=2)
    job = BatchInspection(detector, tmp_path / "store", "L", "S")
    job.run(iter_source(str(tmp_path / "in")))
    path = tmp_path / "out" / "run.csv"
    path.parent.mkdir()
    synced: list[tuple[str, bool]] = []  # each path synced, and whether the CSV had its name
    fsync = os.fsync

    def spying_fsync(fd: int) -> None:
        fsync(fd)
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), path.exists()))

    monkeypatch.setattr(os, "fsync", spying_fsync)
    assert export_run_csv(detector, job.run_id, path) == 2
    (file_synced, named_then), folder = synced[0], synced[1]
    assert Path(file_synced).name.startswith(".run.csv.") and file_synced.endswith(".partial")
    assert not named_then
    assert folder == (str(path.parent.resolve()), True)


def test_a_runs_csv_runs_no_formula_in_a_spreadsheet(detector: str, tmp_path: Path) -> None:
    """A camera's or an upload's file name went into the CSV as it was: a QA engineer opening
    it in Excel ran `=HYPERLINK(...)`. Such a cell now starts with a single quote, the name
    otherwise intact; a plain name is left alone."""
    import csv

    from inspection.batch import export_run_csv

    names = ['=HYPERLINK("x","y").png', "+1.png", "-2.png", "@SUM(A1).png", "ok.png"]
    for made, name in zip(make_images(tmp_path / "in", n=5), names, strict=True):
        (tmp_path / "in" / made.name).rename(tmp_path / "in" / name)
    # (A non-image file named as a formula: its row is an error, still defused.)
    (tmp_path / "in" / "=cmd|' calc'!A0.png").write_bytes(b"not an image")
    job = BatchInspection(detector, tmp_path / "store", "L", "S")
    job.run(iter_source(str(tmp_path / "in")))
    path = tmp_path / "run.csv"
    assert export_run_csv(detector, job.run_id, path) == 6
    parts = {row["part"] for row in csv.DictReader(path.open(newline=""))}
    assert parts == {"'" + n for n in [*names[:4], "=cmd|' calc'!A0.png"]} | {"ok.png"}


def test_a_parts_line_is_one_line_in_a_log(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Off a terminal rich wrapped at 80 columns: a camera's long file name split a part's
    line in two, in a log and for a script reading the output line by line."""
    from training.cli import app

    monkeypatch.setenv("DEFECTS_DATABASE_URL", detector)
    get_settings.cache_clear()
    image = tmp_path / "in" / make_images(tmp_path / "in", n=1)[0].name
    long_name = tmp_path / "in" / f"station-7-camera-2_{'2026-11-27T05-16-00.123456' * 3}.png"
    (tmp_path / "in" / image.name).rename(long_name)
    result = CliRunner().invoke(app, ["inspect", str(long_name)])
    assert result.exit_code == 0, result.output
    [line] = result.output.splitlines()
    assert line.startswith(f"{long_name}: ")


def test_names_print_as_they_are_not_as_rich_markup_or_emoji(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command line read names as rich markup: a file "[red]7.png" printed as "7.png",
    ":thumbs_up:" as an emoji, and a line named "[/]L1" stopped `defects status` with rich's
    MarkupError. Every name now prints as it was given."""
    from training.cli import app

    monkeypatch.setenv("DEFECTS_DATABASE_URL", detector)
    get_settings.cache_clear()
    made = make_images(tmp_path / "in", n=2)
    names = [tmp_path / "in" / "[red]7.png", tmp_path / "in" / ":thumbs_up: [b]x[-].png"]
    for image, name in zip(made, names, strict=True):
        (tmp_path / "in" / image.name).rename(name)
    line, station = "[/]L1", "[bold]:cat:"
    runner = CliRunner()
    result = runner.invoke(app, ["inspect", *map(str, names), "--line", line, "--station", station])
    assert result.exit_code == 0, result.output
    assert [row.split(": ")[0] for row in result.output.splitlines()] == [
        f"{tmp_path / 'in'}/[red]7.png",
        f"{tmp_path / 'in'}/:thumbs_up",  # (the name's own ": " ends the split)
    ]
    assert f"{names[1]}: " in result.output
    status = runner.invoke(app, ["status"])
    assert status.exit_code == 0, status.output
    assert line in status.output and station in status.output


def test_inspect_help_says_where_it_records_parts_given_no_line_or_station() -> None:
    """`defects inspect IMAGE` recorded the part at line "default", station "default" with no
    word of it but "[default: default]", beside any line of that name and in its rates."""
    from training.cli import app

    boxed = CliRunner().invoke(app, ["inspect", "--help"]).output
    help_text = " ".join(boxed.replace("\u2502", " ").split())  # (rich's box drawn around it)
    assert "without it, the line 'default', which a line of your own by that name" in help_text


def test_verdicts_are_stamped_by_the_databases_clock_not_the_stations(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A station whose clock ran 10 minutes behind (no NTP, or an NTP correction to come)
    stamped its parts so: the Live page and `defects status` left them out of the last
    minutes and called the station idle while it judged. The database's clock stamps them."""
    from datetime import UTC, datetime, timedelta

    import db.models
    import inspection.batch
    from db.models import InspectionRun
    from db.queries import station_activity

    def behind() -> datetime:
        return datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=10)

    # Every clock this station's Python reads for a stored time.
    monkeypatch.setattr(db.models, "utcnow", behind)
    monkeypatch.setattr(inspection.batch, "utcnow", behind, raising=False)
    make_images(tmp_path / "in", n=2)
    summary = _job(detector, tmp_path).run(iter_source(str(tmp_path / "in")))
    assert summary.inspected == 2
    with session_scope(detector) as session:
        now = datetime.now(UTC).replace(tzinfo=None)  # (the database's clock, here)
        stamps = [
            *session.scalars(select(Inspection.inspected_at)),
            *session.scalars(select(Part.captured_at)),
            *session.scalars(select(InspectionRun.started_at)),
            *session.scalars(select(InspectionRun.finished_at)),
        ]
        assert all(abs(now - stamp) < timedelta(minutes=1) for stamp in stamps), stamps
        [cam] = station_activity(session, now - timedelta(minutes=5))
        assert cam.inspected == 2
        assert cam.last_inspected_at is not None
        assert now - cam.last_inspected_at < timedelta(minutes=1)


def test_cli_inspect_prints_a_name_with_a_newline_on_one_line(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file named "a\\nb.png" split its part's line in two (the second half read as another
    part); the human output shows it escaped, `--json` the real name."""
    from training.cli import app

    monkeypatch.setenv("DEFECTS_DATABASE_URL", detector)
    get_settings.cache_clear()
    made = make_images(tmp_path / "in", n=2)
    odd = tmp_path / "in" / "bad\nname.png"
    (tmp_path / "in" / made[0].name).rename(odd)
    plain_name = str(tmp_path / "in" / made[1].name)
    runner = CliRunner()
    result = runner.invoke(app, ["inspect", str(odd), plain_name])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(repr(str(odd)) + ": ")
    assert lines[1].startswith(plain_name + ": ")  # an ordinary name as it is
    as_json = runner.invoke(app, ["inspect", str(odd), "--json"])
    assert json.loads(as_json.stdout)[0]["part"] == str(odd)
    missing = runner.invoke(app, ["inspect", plain_name, str(tmp_path / "no\npe.png")])
    assert missing.exit_code == 1
    assert repr(str(tmp_path / "no\npe.png")) in str(missing.exception)


def test_weights_found_by_their_hash_are_hashed_once_while_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a machine whose weights are found by hash (registered elsewhere), every page rerun
    and every run's start read and hashed the whole file again."""
    import hashlib
    import os

    from inspection import batch, engine

    models = get_settings().models_dir / "v1"
    models.mkdir(parents=True)
    weights = models / "weights.pt"
    weights.write_bytes(b"the version's bytes")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    elsewhere = r"C:\plant\data\models\v1\weights.pt"  # (registered on a Windows machine)
    hashed: list[Path] = []
    real = engine.sha256_of

    def counting(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(engine, "sha256_of", counting)
    engine._cached_sha256.cache_clear()
    for _ in range(3):
        assert batch.found_weights(elsewhere, digest) == weights
    # The check of the export beside them (`check_export_source`) takes the same digest.
    assert engine.cached_sha256(weights) == digest
    assert len(hashed) == 1
    weights.write_bytes(b"other bytes, same name")
    os.utime(weights, ns=(1, 1))
    assert batch.found_weights(elsewhere, digest) == Path(elsewhere)  # not the version's bytes
    assert len(hashed) == 2
    # Other weights of the same size copied over them with their time kept (`cp -p`): the
    # version's bytes no more, though size and modification time are as before.
    weights.write_bytes(b"the version's bytes")
    kept = weights.stat()
    assert batch.found_weights(elsewhere, digest) == weights
    weights.write_bytes(b"THE VERSION'S BYTES")
    os.utime(weights, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    assert batch.found_weights(elsewhere, digest) == Path(elsewhere)


def test_a_ctrl_c_while_a_write_is_awaited_leaves_it_for_the_next_wait() -> None:
    """Ctrl-C landing while a chunk's write was awaited forgot the write: the run's last wait
    returned at once, and the stop was told with a summary lacking the chunk, which the writer
    thread committed a moment later (the database held 128 parts, the summary said 64)."""
    from concurrent.futures import Future
    from types import SimpleNamespace

    class InterruptedOnce(Future):  # type: ignore[type-arg]
        waits = 0

        def result(self, timeout: float | None = None) -> bool:
            self.waits += 1
            if self.waits == 1:
                raise KeyboardInterrupt
            return True

    pending = InterruptedOnce()
    run = SimpleNamespace(_pending_write=pending)
    with pytest.raises(KeyboardInterrupt):
        BatchInspection._wait_for_write(run)  # type: ignore[arg-type]
    assert BatchInspection._wait_for_write(run) is True  # type: ignore[arg-type]
    assert pending.waits == 2 and run._pending_write is None
    # A write that failed is its error once, not again at every wait after it.
    failed: Future[bool] = Future()
    failed.set_exception(RuntimeError("disk full"))
    run._pending_write = failed
    with pytest.raises(RuntimeError):
        BatchInspection._wait_for_write(run)  # type: ignore[arg-type]
    assert BatchInspection._wait_for_write(run) is False


def test_a_runs_csv_gives_the_grid_and_the_boxes_left_out_as_the_history_csv_does(
    detector: str, tmp_path: Path
) -> None:
    """`--export csv` had no grid column nor `boxes_left_out`, which the History page's CSV and
    the results feed give: a tiled line's run could not tell a part judged in tiles from one
    judged whole, nor one that fired all over from one that kept every box. Both now come
    after the earlier columns, which stay where they were, as in the History page's CSV."""
    import csv

    from dashboard.downloads import filtered_results_csv
    from db.queries import Filters
    from inspection.batch import export_run_csv
    from inspection.tiling import TileSpec

    make_images(tmp_path / "in", n=2)
    (tmp_path / "in" / "notes.txt").write_bytes(b"not an image")
    job = BatchInspection(detector, tmp_path / "store", "L", "S", tile=TileSpec.parse("32:0"))
    job.run(iter_source(str(tmp_path / "in")))
    job.inspector.close()
    with session_scope(detector) as session:  # (a part whose model fired all over it)
        part = session.scalars(select(Part).where(Part.original_name == "part_000.png")).one()
        session.execute(
            update(Inspection).where(Inspection.part_id == part.id).values(boxes_left_out=7)
        )
    path = tmp_path / "run.csv"
    assert export_run_csv(detector, job.run_id, path) == 3
    with path.open(newline="") as handle:
        header = next(csv.reader(handle))
    assert header == [
        "part",
        "content_hash",
        "verdict",
        "defects",
        "max_confidence",
        "latency_ms",
        "error",
        "inspected_at",
        "defect_probability",
        "grid",
        "boxes_left_out",
    ]
    rows = {row["part"]: row for row in csv.DictReader(path.open(newline=""))}
    assert rows["part_000.png"]["boxes_left_out"] == "7"
    assert rows["part_001.png"]["boxes_left_out"] == "0"
    assert rows["part_000.png"]["grid"] == "32 px tiles, 0% overlap (--tile)"
    assert rows["notes.txt"]["grid"] == rows["notes.txt"]["boxes_left_out"] == ""  # an error
    history = csv.DictReader(io.StringIO(filtered_results_csv(detector, Filters()).decode()))
    assert {row["part"]: (row["grid"], row["boxes_left_out"]) for row in history} == {
        name: (row["grid"], row["boxes_left_out"]) for name, row in rows.items()
    }


def test_a_candidate_judging_the_production_models_parts_is_not_counted_as_more_parts(
    detector: str, tmp_path: Path
) -> None:
    """`defects batch --model CANDIDATE` over the parts production judged gives each part a
    second current verdict (one per model version); the History page's figures, which say
    parts, counted each such part twice: its volume, its rates' reviewed of judged."""
    from db.models import Review, ReviewKind
    from db.queries import Filters, daily_volume, defect_pareto, rates, reviewed_of_judged

    make_images(tmp_path / "in", n=3)
    assert _job(detector, tmp_path).run(iter_source(str(tmp_path / "in"))).inspected == 3
    with session_scope(detector) as session:
        weights = Path(session.scalars(select(ModelVersion.file_path)).one())
        candidate = register_tiny_detector(session, weights, "candidate")
        candidate.thresholds = {**candidate.thresholds, "default": 1.0}  # every part passes
        session.flush()
        candidate_id = candidate.id
    judged = _job(detector, tmp_path, model="candidate").run(iter_source(str(tmp_path / "in")))
    assert judged.inspected == 3
    with session_scope(detector) as session:
        current = session.scalars(select(Inspection).where(Inspection.is_current())).all()
        assert len(current) == 6 and len({i.part_id for i in current}) == 3  # two a part
        production_id = session.scalars(
            select(ModelVersion.id).where(ModelVersion.name == "tiny")
        ).one()
        production = {i.part_id: i for i in current if i.model_version_id == production_id}
        first, second = sorted(production)[:2]
        session.add(Review(part_id=first, kind=ReviewKind.GOOD_PART, reviewer="qa"))
        session.add(
            Review(
                part_id=second, kind=ReviewKind.MISSED_DEFECT, class_name="scratch", reviewer="qa"
            )
        )
    failed = sum(i.verdict == Verdict.FAIL for i in production.values())
    with session_scope(detector) as session:
        [volume] = daily_volume(session)
        assert (volume.inspected, volume.failed) == (3, failed)  # production's verdicts
        assert reviewed_of_judged(session) == (2, 3)
        [row] = rates(session)
        # Each reviewed part once, at production's verdict (the candidate passes them all).
        assert (row.n_defective, row.n_good) == (1, 1)
        assert row.n_missed == int(production[second].verdict == Verdict.PASS)
        assert row.n_false_calls == int(production[first].verdict == Verdict.FAIL)
        assert sum(r.failed_parts for r in defect_pareto(session)) >= failed
        # The candidate's own figures, asked for by its version.
        by_model = {r.key: r for r in rates(session, group_by="model_version")}
        assert (by_model[candidate_id].n_missed, by_model[candidate_id].n_false_calls) == (1, 0)
        [own] = rates(session, Filters(model_version_id=candidate_id))
        assert (own.n_defective, own.n_missed, own.n_good, own.n_false_calls) == (1, 1, 1, 0)


def test_an_upload_cut_short_by_the_page_leaves_its_run_finished(
    detector: str, tmp_path: Path
) -> None:
    """A reload of the Inspect page mid-upload stops its script with Streamlit's own exception,
    raised from the progress bar's callback: the run was left open, and the Live page and
    `defects status` showed the station's upload at work, then open and idle."""
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    make_images(tmp_path / "in", n=6)
    job = _job(detector, tmp_path)
    job.chunk_parts = 2

    def page_gone(_result: object) -> None:
        raise StopException()

    with pytest.raises(StopException):
        job.run(iter_source(str(tmp_path / "in")), page_gone)
    assert _run_finished_at(detector, job.run_id) is not None
    resumed = _job(detector, tmp_path).run(iter_source(str(tmp_path / "in")))
    assert resumed.inspected + resumed.skipped == 6


def test_inspect_hashes_each_image_once(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`defects inspect` looked each part's stored verdict up by hashing its bytes again,
    after the run had hashed them to judge and store the part."""
    import hashlib

    from typer.testing import CliRunner

    from training.cli import app

    monkeypatch.setenv("DEFECTS_DATABASE_URL", detector)
    get_settings.cache_clear()
    images = make_images(tmp_path / "in", n=2, seed=5)
    paths = [tmp_path / "in" / image.name for image in images]
    contents = {path.read_bytes() for path in paths}
    hashed: list[bytes] = []
    real_sha256 = hashlib.sha256

    def counting_sha256(data: bytes = b"", **kwargs):  # type: ignore[no-untyped-def]
        if bytes(data) in contents:
            hashed.append(bytes(data))
        return real_sha256(data, **kwargs)

    monkeypatch.setattr(hashlib, "sha256", counting_sha256)
    result = CliRunner().invoke(app, ["inspect", *map(str, paths), "--json"])
    assert result.exit_code == 0, result.output
    assert sorted(hashed) == sorted(contents)


def _spying_on_syncs(
    monkeypatch: pytest.MonkeyPatch, fail_on: Callable[[str], bool] = lambda path: False
) -> list[tuple[str, Any]]:
    """Each os.fsync (the path synced) and each chunk's write (the images its rows name), in
    the order they happen; the real fsync runs, or EIO where `fail_on` the path."""
    import errno

    events: list[tuple[str, Any]] = []
    fsync, write = os.fsync, BatchInspection._write

    def spying_fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if fail_on(path):
            raise OSError(errno.EIO, "Input/output error")
        fsync(fd)
        events.append(("fsync", path))

    def spying_write(self: BatchInspection, results: list[PartResult], *args: Any) -> bool:
        events.append(("write", [str(r.stored_path) for r in results if r.stored_path]))
        return write(self, results, *args)

    monkeypatch.setattr(os, "fsync", spying_fsync)
    monkeypatch.setattr(BatchInspection, "_write", spying_write)
    return events


def _synced_before_written(events: list[tuple[str, Any]], store: Path) -> None:
    """Every image a write names had its bytes synced, then its folder, before that write, and
    the store's own folder once its first sub-folder was made."""
    for at, (kind, stored) in enumerate(events):
        if kind != "write":
            continue
        synced = [path for kind, path in events[:at] if kind == "fsync"]
        for image in stored:
            image_path = Path(image)
            file_synced = next(
                i
                for i, path in enumerate(synced)
                if path.startswith(f"{image_path.resolve()}.") and path.endswith(".partial")
            )
            folder_synced = synced.index(str(image_path.parent.resolve()), file_synced)
            assert folder_synced > file_synced
        assert str(store.resolve()) in synced


def test_each_image_and_its_folder_are_synced_before_the_row_naming_it_is_committed(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power cut after the commit left rows naming images that had reached the page cache
    only: empty or missing once the station was back. Folders are synced once a chunk."""
    make_images(tmp_path / "in", n=10)
    events = _spying_on_syncs(monkeypatch)
    job = _job(detector, tmp_path)
    job.chunk_parts = 4
    assert job.run(iter_source(str(tmp_path / "in"))).inspected == 10
    writes = [stored for kind, stored in events if kind == "write"]
    assert sum(len(stored) for stored in writes) == 10 and len(writes) >= 3
    _synced_before_written(events, tmp_path / "store")


def test_a_batchs_images_share_one_sync_of_each_folder(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each image's bytes are synced, its folder's entries once for the batch's files (a sync
    of the folder a file halved the store's rate, bench/store_fsync.py)."""
    from inspection.engine import Inspector, PartInput

    synced: list[str] = []
    fsync = os.fsync

    def spying_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", spying_fsync)
    store = tmp_path / "store"
    make_images(tmp_path / "in", n=6)
    hashes = [f"ab{i:062x}" for i in range(5)] + [f"cd{0:062x}"]  # five in one folder
    parts = [
        PartInput(path.name, path.read_bytes(), digest)
        for path, digest in zip(sorted((tmp_path / "in").iterdir()), hashes, strict=True)
    ]
    inspector = Inspector.from_weights(trained.weights, None, "pytorch", batch_size=6)
    assert len(list(inspector.inspect(parts, store_into=store))) == 6
    files = [i for i, path in enumerate(synced) if path.endswith(".partial")]
    assert len(files) == 6
    for i in files:  # (then its folder, the store's, and the store's parent's, deepest first;
        # other threads' files may be synced between them)
        after_folder = synced[synced.index(str(Path(synced[i]).parent), i) :]
        assert str(tmp_path) in after_folder[after_folder.index(str(store)) + 1 :]
    assert synced[-2:] == [str(store), str(tmp_path)]
    assert synced.count(str(store / "ab")) < 5  # (five files, their folder synced per batch)
    synced.clear()
    list(inspector.inspect(parts[:2], store_into=store))  # (judged again: kept, not written)
    assert synced == [str(store / "ab"), str(store), str(tmp_path)]


def test_a_stored_image_is_synced_through_the_descriptor_that_wrote_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each stored image was written, closed, then opened again only to be synced. It is
    written and synced through one descriptor, before the file takes its name."""
    import fcntl

    from inspection.images import store_image

    synced: list[tuple[str, int]] = []
    fsync = os.fsync

    def spying_fsync(fd: int) -> None:
        access = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), access))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", spying_fsync)
    data = random.Random(5).randbytes(3_000_000)
    stored = store_image(tmp_path / "store", "ab" * 32, "part.png", data, sync_folder=False)
    assert stored.read_bytes() == data
    [(path, access)] = synced
    assert path.startswith(f"{stored}.") and path.endswith(".partial")  # (not yet its name)
    assert access == os.O_WRONLY  # (the descriptor written, not one opened to sync)


@pytest.mark.parametrize("failing", ["image", "folder"])
def test_a_failing_sync_stops_the_run_with_a_clear_error_and_records_nothing_unsynced(
    failing: str, detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk failing its syncs (EIO) must stop the run before a row names an image that may
    not be on it, in one line saying to look at the disk, not a traceback."""
    from inspection.errors import StorageError

    make_images(tmp_path / "in", n=10)
    syncs, disk_replaced = [0], [False]

    def fifth_of_its_kind(path: str) -> bool:
        if disk_replaced[0] or path.endswith(".partial") != (failing == "image"):
            return False
        syncs[0] += 1
        return syncs[0] >= 5

    events = _spying_on_syncs(monkeypatch, fifth_of_its_kind)
    job = _job(detector, tmp_path)
    job.chunk_parts = 4
    with pytest.raises(
        StorageError, match=r"Input/output error; check its disk \(or set DEFECTS_DATA_DIR\)$"
    ):
        job.run(iter_source(str(tmp_path / "in")))
    job.inspector.close(wait=True)
    written = _counts(detector)[0]
    assert written < 10
    _synced_before_written(events, tmp_path / "store")
    assert not list((tmp_path / "store").rglob("*.partial"))  # no half file left
    with session_scope(detector) as session:  # (what was recorded names whole images)
        assert all(Path(p).stat().st_size for p in session.scalars(select(Part.stored_path)))
    disk_replaced[0] = True
    resumed = _job(detector, tmp_path).run(iter_source(str(tmp_path / "in")))
    assert resumed.inspected == 10 - written and _counts(detector) == (10, 10, 10)


def test_an_image_a_power_cut_left_empty_is_written_again_when_its_part_comes_back(
    tmp_path: Path,
) -> None:
    """A file stored unsynced before a power cut came back empty: judged again, its part was
    only touched, and its new verdict named the empty file."""
    from inspection.images import store_image

    emptied = tmp_path / "ab" / f"{'ab' * 32}.png"
    emptied.parent.mkdir()
    emptied.touch()
    assert store_image(tmp_path, "ab" * 32, "part.png", b"the part's bytes") == emptied
    assert emptied.read_bytes() == b"the part's bytes"
    assert not list(tmp_path.rglob("*.partial"))


def test_an_image_store_not_writable_says_to_make_it_writable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image store this user cannot write (EACCES) was told to "check its disk", where the
    disk is fine: it says to make the store writable."""
    import errno

    from inspection.errors import StorageError
    from inspection.images import store_image

    def refused(self: Path, target: Path) -> Path:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "replace", refused)
    with pytest.raises(StorageError) as raised:
        store_image(tmp_path / "store", "ab" * 32, "part.png", b"an image")
    said = str(raised.value)
    assert "Permission denied; make it writable for this user (or set DEFECTS_DATA_DIR)" in said
    assert not list((tmp_path / "store").rglob("*.partial"))


def test_a_stop_landing_as_a_chunks_write_is_handed_over_counts_that_chunk(
    detector: str, tmp_path: Path
) -> None:
    """Ctrl-C landing just after a chunk's write was handed to the writer thread, before its
    future was kept: the stop was told with a summary short of that chunk, which the writer
    committed a moment later (a stopped `--workers` run said "64 parts inspected" over 128
    written). The summary now counts every write handed over."""
    make_images(tmp_path / "in", n=150, size=64)
    job = BatchInspection(detector, tmp_path / "store", "L", "S")
    hand_over = job._writer.submit
    handed: list[object] = []

    def interrupted_once_handed_over(write, *args):  # type: ignore[no-untyped-def]
        def slow_write(*write_args):  # type: ignore[no-untyped-def]
            time.sleep(0.5)  # (still writing when the stop is told)
            return write(*write_args)

        future = hand_over(slow_write, *args)
        handed.append(future)
        if len(handed) == 2:
            raise KeyboardInterrupt  # as a Ctrl-C lands before the future is kept
        return future

    job._writer.submit = interrupted_once_handed_over  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        job.run(iter_source(str(tmp_path / "in")))
    told = job.summary.inspected
    job._writer.submit = hand_over  # type: ignore[method-assign]
    job._writer.shutdown(wait=True)
    assert told == _counts(detector)[1] > job.chunk_parts


def test_missing_weights_offer_the_demo_only_for_the_demo(tmp_path: Path) -> None:
    """Every missing-weights message ended "the demo: `defects models install-demo`", for a
    version the user trained too, which the demo cannot restore."""
    import json

    from inspection.batch import weights_there

    shipped = Path(__file__).resolve().parents[1] / "models" / "neu-det-demo" / "model.json"
    demo = json.loads(shipped.read_text())["name"]
    for name, offered in ((demo, True), ("neu-det-demo-v1", True), ("line3-v5", False)):
        with pytest.raises(UserError) as said:
            weights_there(name, tmp_path / "models" / name / "weights.pt")
        assert str(said.value).startswith(f"the weights of {name} are missing"), name
        assert ("`defects models install-demo`" in str(said.value)) == offered, said.value
        assert ("train it again" in str(said.value)) != offered, said.value

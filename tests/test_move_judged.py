"""`defects batch SOURCE --move-judged DIR`: each file leaves the source once its part is
recorded (image stored, verdict committed), never before; paths kept, names never overwritten,
a failed move leaves the file and its verdict."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
import time
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from db.models import Inspection, Part
from db.session import DatabaseError, session_scope
from inspection import judged
from inspection.batch import BatchInspection, iter_source
from inspection.judged import JudgedMover, Move, stamp_of
from inspection.parallel import ParallelInspection
from inspection.settings import get_settings
from tests.conftest import Trained, register_production_detector
from tests.synthetic import make_images


@pytest.fixture
def detector(database_url: str, trained: Trained, tmp_path: Path) -> str:
    """The tiny trained detector, registered as the production model of this test's database."""
    register_production_detector(database_url, trained.weights, tmp_path / "models")
    return database_url


def _hot(tmp_path: Path) -> Path:
    """A hot folder: 3 frames of camera A in a sub-folder, 1 of B at the top, a file that is
    not an image."""
    hot = tmp_path / "hot"
    make_images(hot / "cam-a", n=3)
    make_images(hot, n=1, seed=5)
    (hot / "notes.txt").write_bytes(b"shift 2 started")
    return hot


def _job(url: str, tmp_path: Path, mover: JudgedMover | None = None) -> BatchInspection:
    return BatchInspection(url, tmp_path / "store", "Line 1", "Cam A", mover=mover)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _inspections(url: str) -> int:
    with session_scope(url) as session:
        return int(session.scalar(select(func.count(Inspection.id))) or 0)


class _Checking(JudgedMover):
    """A mover that checks, as each file is about to leave, that its part is recorded: its
    verdict committed (read through a connection of its own) and its image in the store."""

    def __init__(self, source: Path, destination: Path, url: str) -> None:
        super().__init__(source, destination)
        self.url = url
        self.checked: list[str] = []

    def move(self, move: Move) -> bool | None:
        digest = hashlib.sha256(Path(move.path).read_bytes()).hexdigest()
        with session_scope(self.url) as session:
            stored = session.execute(
                select(Part.stored_path, Inspection.error)
                .join(Inspection, Inspection.part_id == Part.id)
                .where(Part.content_hash == digest)
            ).first()
        assert stored is not None, f"{move.path} is moved before its verdict is committed"
        assert Path(stored.stored_path).is_file(), f"{move.path}: its image is not in the store"
        assert move.error == (stored.error is not None)
        self.checked.append(os.path.relpath(move.path, self.source))
        return super().move(move)


def test_files_leave_the_folder_once_recorded_at_their_paths_errors_apart(
    detector: str, tmp_path: Path
) -> None:
    hot, out = _hot(tmp_path), tmp_path / "judged"
    out.mkdir()
    mover = _Checking(hot, out, detector)
    job = _job(detector, tmp_path, mover)
    job.chunk_parts = 2  # (several chunks: each moved after its own write)
    summary = job.run(iter_source(str(hot)))
    assert summary.inspected == 5 and summary.errors == 1
    assert (summary.moved, summary.moved_errors, summary.not_moved) == (5, 1, 0)
    assert len(mover.checked) == 5
    assert _files(hot) == []  # emptied; the camera's sub-folder stays for its next frames
    assert (hot / "cam-a").is_dir()
    assert _files(out) == [
        "cam-a/part_000.png",
        "cam-a/part_001.png",
        "cam-a/part_002.png",
        "errors/notes.txt",
        "part_000.png",
    ]
    job.inspector.close()


def test_nothing_is_moved_when_the_write_fails_and_a_resumed_run_moves_what_is_recorded(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash before the commit leaves every file; a crash after it, before the moves (here:
    a first run without the option), leaves them for the next run, which finds them recorded,
    judges none again and moves them."""
    hot, out = _hot(tmp_path), tmp_path / "judged"
    out.mkdir()
    failing = _job(detector, tmp_path, JudgedMover(hot, out))
    failing.outage_seconds = 0

    def database_away(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise DatabaseError("the database went away")

    monkeypatch.setattr(failing, "_write", database_away)
    with pytest.raises(DatabaseError):
        failing.run(iter_source(str(hot)))
    failing.inspector.close()
    assert len(_files(hot)) == 5 and _files(out) == [] and _inspections(detector) == 0
    recorded = _job(detector, tmp_path)  # committed, then the station stops before moving
    recorded.run(iter_source(str(hot)))
    recorded.inspector.close()
    assert len(_files(hot)) == 5 and _inspections(detector) == 5
    resumed = _job(detector, tmp_path, JudgedMover(hot, out))
    summary = resumed.run(iter_source(str(hot)))
    resumed.inspector.close()
    assert (summary.inspected, summary.skipped) == (0, 5)
    assert (summary.moved, summary.moved_errors) == (5, 1)
    assert _files(hot) == [] and "errors/notes.txt" in _files(out)
    assert _inspections(detector) == 5  # none judged twice


def test_a_failed_move_keeps_the_file_and_its_verdict_and_is_said_once_per_file(
    detector: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hot, out = _hot(tmp_path), tmp_path / "judged"
    out.mkdir()
    replace = os.replace

    def full(source, target):  # type: ignore[no-untyped-def]
        if str(target).startswith(str(out)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return replace(source, target)

    monkeypatch.setattr(os, "replace", full)
    job = _job(detector, tmp_path, JudgedMover(hot, out))
    with caplog.at_level(logging.WARNING):
        summary = job.run(iter_source(str(hot)))
    job.inspector.close()
    assert (summary.inspected, summary.moved, summary.not_moved) == (5, 0, 5)
    assert len(_files(hot)) == 5 and _inspections(detector) == 5
    assert _files(out) == []  # no placeholder left behind
    said = [r.getMessage() for r in caplog.records if "could not move" in r.getMessage()]
    assert len(said) == 5 and all("No space left on device" in line for line in said)


def test_a_watch_moves_each_frame_and_one_it_cannot_move_is_not_judged_twice(
    detector: str, tmp_path: Path
) -> None:
    """DIR gone mid-watch (a share unmounted): the frame stays in the hot folder with its
    verdict, and the watch, which looks every 0.1 s, does not judge it again."""
    hot, out, camera = tmp_path / "hot", tmp_path / "judged", tmp_path / "camera"
    (hot / "cam-a").mkdir(parents=True)
    out.mkdir()
    make_images(camera, n=2)
    job = _job(detector, tmp_path, JudgedMover(hot, out))
    stop = threading.Event()
    watcher = threading.Thread(
        target=job.watch, args=(hot, stop), kwargs={"poll_seconds": 0.1, "settle_seconds": 0.2}
    )

    def until(condition, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + 30
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert condition(), what

    watcher.start()
    try:
        (camera / "part_000.png").rename(hot / "cam-a" / "part_000.png")
        until(lambda: (out / "cam-a" / "part_000.png").is_file(), "the first frame was not moved")
        assert _files(hot) == []
        out.rename(tmp_path / "unmounted")
        (camera / "part_001.png").rename(hot / "cam-a" / "part_001.png")
        until(lambda: job.summary.not_moved == 1, "the failed move was not counted")
        time.sleep(1.0)  # ten looks more
        assert _inspections(detector) == 2
        assert _files(hot) == ["cam-a/part_001.png"]
        assert not out.exists()  # (DIR is not made anew where it went away)
    finally:
        stop.set()
        watcher.join(timeout=30)
    job.inspector.close()
    assert job.summary.moved == 1 and job.summary.inspected == 2


def test_workers_move_the_files_of_the_parts_each_wrote(detector: str, tmp_path: Path) -> None:
    """`defects batch SOURCE --workers 2 --move-judged DIR`: each worker moves its own."""
    source, out = tmp_path / "in", tmp_path / "judged"
    make_images(source / "cam-a", n=4, size=64)
    (source / "notes.txt").write_bytes(b"shift 2 started")
    out.mkdir()
    job = ParallelInspection(
        detector, tmp_path / "store", "L", "S", workers=2, move_judged=(source, out)
    )
    summary = job.run(iter_source(str(source)))
    assert (summary.inspected, summary.moved, summary.moved_errors) == (5, 5, 1)
    assert _files(source) == []
    assert _files(out) == [*(f"cam-a/part_{i:03d}.png" for i in range(4)), "errors/notes.txt"]
    assert _inspections(detector) == 5


def test_a_name_taken_in_dir_gets_a_suffix_and_overwrites_nothing(tmp_path: Path) -> None:
    hot, out = tmp_path / "hot", tmp_path / "judged"
    (hot / "cam-a").mkdir(parents=True)
    (out / "cam-a").mkdir(parents=True)
    (out / "cam-a" / "f.png").write_bytes(b"judged yesterday")
    (out / "cam-a" / "f-1.png").write_bytes(b"judged the day before")
    mover = JudgedMover(hot, out)
    for today in (b"judged today", b"judged again today"):
        (hot / "cam-a" / "f.png").write_bytes(today)
        assert mover.move(Move(str(hot / "cam-a" / "f.png"), None, error=False)) is True
    assert (out / "cam-a" / "f.png").read_bytes() == b"judged yesterday"
    assert (out / "cam-a" / "f-1.png").read_bytes() == b"judged the day before"
    assert (out / "cam-a" / "f-2.png").read_bytes() == b"judged today"
    assert (out / "cam-a" / "f-3.png").read_bytes() == b"judged again today"
    assert _files(hot) == []


def test_a_move_to_another_file_system_copies_flushes_then_removes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hot, out = tmp_path / "hot", tmp_path / "judged"
    hot.mkdir()
    out.mkdir()
    (hot / "f.png").write_bytes(b"a frame")
    replace = os.replace
    synced: list[int] = []
    fsync = os.fsync

    def across(source, target):  # type: ignore[no-untyped-def]
        if str(source).startswith(str(hot)):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return replace(source, target)

    def counting(fd: int) -> None:
        synced.append(fd)
        fsync(fd)

    monkeypatch.setattr(os, "replace", across)
    monkeypatch.setattr(os, "fsync", counting)
    assert JudgedMover(hot, out).move(Move(str(hot / "f.png"), None, error=True)) is True
    assert (out / "errors" / "f.png").read_bytes() == b"a frame"
    assert not (hot / "f.png").exists() and len(synced) == 2  # the file, then its folder
    assert [p.name for p in (out / "errors").iterdir()] == ["f.png"]  # no partial left


def test_a_file_written_again_after_it_was_read_stays_for_the_watch(tmp_path: Path) -> None:
    """The camera wrote the next part under the same name before the move: that one was never
    judged, and is not moved in the judged one's place."""
    hot, out = tmp_path / "hot", tmp_path / "judged"
    hot.mkdir()
    out.mkdir()
    frame = hot / "f.png"
    frame.write_bytes(b"the part judged")
    read_as = stamp_of(frame.stat())
    frame.unlink()
    frame.write_bytes(b"the next part, same name")
    assert JudgedMover(hot, out).move(Move(str(frame), read_as, error=False)) is None
    assert frame.read_bytes() == b"the next part, same name" and _files(out) == []


def test_failed_moves_past_a_few_a_minute_are_counted_not_said_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    hot, out = tmp_path / "hot", tmp_path / "judged"
    hot.mkdir()
    out.mkdir()
    monkeypatch.setattr(judged, "WARNINGS_PER_MINUTE", 2)
    mover = JudgedMover(hot, out)
    out.rmdir()  # DIR gone
    with caplog.at_level(logging.WARNING):
        for i in range(5):
            (hot / f"f{i}.png").write_bytes(b"x")
            assert mover.move(Move(str(hot / f"f{i}.png"), None, error=False)) is False
        mover.flush_warnings()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and "3 more files could not be moved" in lines[2]
    assert len(list(hot.iterdir())) == 5


def test_dir_inside_the_folder_a_file_or_a_zip_source_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.cli import app

    monkeypatch.setenv("DEFECTS_DATABASE_URL", f"sqlite:///{tmp_path / 'never.db'}")
    get_settings.cache_clear()
    hot = tmp_path / "hot"
    make_images(hot, n=1)
    (tmp_path / "a-file").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "parts.zip", "w") as archive:
        archive.write(hot / "part_000.png", "part_000.png")
    runner = CliRunner()
    cases = {
        (hot, hot / "judged"): "is inside the folder inspected",
        (hot, hot): "is inside the folder inspected",
        (hot, tmp_path / "a-file"): "is a file, not a folder",
        (tmp_path / "parts.zip", tmp_path / "judged"): "needs a folder to inspect",
    }
    for (source, destination), why in cases.items():
        result = runner.invoke(
            app,
            ["batch", str(source), "--line", "L", "--station", "S"]
            + ["--move-judged", str(destination)],
        )
        assert result.exit_code == 1 and why in str(result.exception), result.output
    assert not (hot / "judged").exists() and not (tmp_path / "never.db").exists()
    assert _files(hot) == ["part_000.png"]


def test_workers_move_the_files_of_a_folder_given_through_a_link(
    trained: Trained, tmp_path: Path
) -> None:
    """`defects batch LINK/hot --workers 2 --move-judged DIR`, the folder reached through a
    link (a data disk mounted behind one): the workers were told the folder's real path while
    the files were listed under the link, took every file for one outside it and moved none,
    without a word."""
    from tests.conftest import migrated
    from training.cli import app

    url = get_settings().resolved_database_url
    migrated(url)
    register_production_detector(url, trained.weights, tmp_path / "models")
    make_images(tmp_path / "disk" / "hot", n=2, size=64)
    (tmp_path / "link").symlink_to(tmp_path / "disk")
    hot, out = tmp_path / "link" / "hot", tmp_path / "judged"
    result = CliRunner().invoke(
        app,
        ["batch", str(hot), "--line", "L", "--station", "S", "--workers", "2"]
        + ["--move-judged", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert _files(tmp_path / "disk" / "hot") == []
    assert _files(out) == ["part_000.png", "part_001.png"]
    assert "2 files moved" in result.output


def test_on_sqlite_the_verdicts_of_moved_files_are_committed_durably(
    database_url: str, detector: str, tmp_path: Path
) -> None:
    """SQLite's WAL at synchronous NORMAL makes a commit durable only at the next checkpoint:
    a power cut could roll back the verdicts of files already moved out of the hot folder,
    and those parts were never judged. With --move-judged each write's commit is synced."""
    from sqlalchemy import event

    from db.session import get_engine

    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite's synchronous setting")
    levels: list[int] = []

    def level_at_insert(connection, cursor, statement, *args: object) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("INSERT INTO INSPECTIONS"):
            levels.append(connection.exec_driver_sql("PRAGMA synchronous").scalar())

    engine = get_engine(detector)
    hot = _hot(tmp_path)
    event.listen(engine, "before_cursor_execute", level_at_insert)
    try:
        (tmp_path / "judged").mkdir()
        moved = _job(detector, tmp_path, JudgedMover(hot, tmp_path / "judged"))
        moved.run(iter_source(str(hot)))
        assert levels and set(levels) == {2}, levels  # FULL at every write that moves files
        engine.dispose()  # (a fresh connection: the setting is the connection's)
        levels.clear()
        make_images(tmp_path / "kept", n=2, seed=9)
        _job(detector, tmp_path).run(iter_source(str(tmp_path / "kept")))
        assert levels and set(levels) == {1}, levels  # NORMAL without moves: not slowed
    finally:
        event.remove(engine, "before_cursor_execute", level_at_insert)
    assert moved.summary.moved == 5

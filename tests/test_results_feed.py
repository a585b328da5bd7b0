"""`defects batch --results FILE`: each part's verdict as a line of JSON as it is known, for a
reject gate or an MES to follow."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, func, select, text
from typer.testing import CliRunner

from db.models import Inspection, Part, Prediction, PredictionSource, Verdict
from db.session import session_scope
from inspection.batch import BatchInspection, file_key, iter_source
from inspection.engine import PartResult
from inspection.errors import UserError
from inspection.results import ResultsFeed
from inspection.settings import get_settings
from tests.conftest import Trained, register_production_detector, within
from tests.synthetic import make_images
from training.cli import app


@pytest.fixture
def station(database_url: str, trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    register_production_detector(database_url, trained.weights, tmp_path / "models")
    monkeypatch.setenv("DEFECTS_DATABASE_URL", database_url)
    get_settings.cache_clear()
    return database_url


def _batch(source: Path, *options: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(
        app, ["batch", str(source), "--line", "Line 1", "--station", "Cam A", *options]
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_each_part_judged_is_a_line_of_json_as_recorded(
    station: str, tmp_path: Path, workers: str
) -> None:
    make_images(tmp_path / "in", n=4)
    (tmp_path / "in" / "notes.txt").write_text("not a part")
    feed = tmp_path / "feed.jsonl"
    result = _batch(tmp_path / "in", "--results", str(feed), "--workers", workers)
    assert result.exit_code == 0, result.output
    lines = [json.loads(text) for text in feed.read_text().splitlines()]
    assert sorted(line["part"] for line in lines) == sorted(
        p.name for p in (tmp_path / "in").iterdir()
    )
    # Numbered 1, 2, 3... in the order written, one count for the run over its workers: a
    # reader can tell that none is missing.
    assert [line["seq"] for line in lines] == list(range(1, len(lines) + 1))
    with session_scope(station) as session:
        recorded = {
            part.content_hash: (part.original_name, verdict.value)
            for part, verdict in session.execute(
                select(Part, Inspection.verdict).join(Inspection, Inspection.part_id == Part.id)
            )
        }
    judged = [line for line in lines if line["verdict"] != "error"]
    assert {line["sha256"]: (line["part"], line["verdict"]) for line in judged} == {
        digest: row for digest, row in recorded.items() if row[0] != "notes.txt"
    }
    [stray] = [line for line in lines if line["verdict"] == "error"]
    assert stray["part"] == "notes.txt" and stray["error"]
    for line in judged:
        assert (line["line"], line["station"]) == ("Line 1", "Cam A")
        assert line["judged_at"].endswith("Z") and line["latency_ms"] is not None
        assert line["failed_classes"] == sorted({d["class"] for d in line["defects"]})
        assert line["failed_by_part_classifier"] == (
            line["verdict"] == "fail" and not line["defects"]
        )

    # Run again: nothing is judged, nothing is written twice; a new part is appended.
    make_images(tmp_path / "in", n=5)  # (the same four, and one more)
    again = _batch(tmp_path / "in", "--results", str(feed), "--workers", workers)
    assert again.exit_code == 0, again.output
    [appended] = [json.loads(text) for text in feed.read_text().splitlines()[len(lines) :]]
    assert appended["part"] == "part_004.png"
    # (A new run: its own number, its lines counted from 1 again.)
    assert appended["run"] != lines[0]["run"] and appended["seq"] == 1


def test_inspect_json_gives_a_parts_latency_as_the_feed_does(station: str, tmp_path: Path) -> None:
    """`defects inspect --json` printed the stored latency unrounded (26.234567...) where the
    feed's line for the same part said 26.2: both give it to 0.1 ms now, the same figure."""
    make_images(tmp_path / "in", n=3)
    feed = tmp_path / "feed.jsonl"
    assert _batch(tmp_path / "in", "--results", str(feed)).exit_code == 0
    lines = {line["part"]: line for line in map(json.loads, feed.read_text().splitlines())}
    files = sorted((tmp_path / "in").iterdir())
    shown = CliRunner().invoke(app, ["inspect", "--json", *map(str, files)])
    assert shown.exit_code == 0, shown.output
    rows = json.loads(shown.stdout)
    assert [row["part"] for row in rows] == [str(f) for f in files]
    for row in rows:
        assert row["latency_ms"] == lines[Path(row["part"]).name]["latency_ms"] is not None
        assert row["latency_ms"] == round(row["latency_ms"], 1)


def test_a_results_feed_that_cannot_be_written_stops_the_run_in_one_line(
    station: str, tmp_path: Path
) -> None:
    make_images(tmp_path / "in", n=2)
    folder = _batch(tmp_path / "in", "--results", str(tmp_path))
    assert folder.exit_code == 1 and "is a folder" in str(folder.exception)
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    full = _batch(tmp_path / "in", "--results", "/dev/full")
    assert full.exit_code == 1
    assert "cannot write the results feed /dev/full" in str(full.exception)
    assert "recorded in the database" in str(full.exception)


def test_a_results_feed_that_fails_stops_a_run_over_workers_too(
    station: str, tmp_path: Path
) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    make_images(tmp_path / "in", n=4)
    full = _batch(tmp_path / "in", "--results", "/dev/full", "--workers", "2")
    assert full.exit_code == 1
    assert "cannot write the results feed /dev/full" in str(full.exception)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_chunks_lines_are_on_disk_before_the_next_chunk_is_told(
    station: str, tmp_path: Path, workers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a power cut a verdict the database kept had lost its line for good: a run started
    again gives no line for a part an earlier run judged. Each chunk's lines are synced once
    written, and a new feed's name with them."""
    make_images(tmp_path / "in", n=150, size=64)  # (more than one chunk of 64, in each worker)
    feed = tmp_path / "out" / "feed.jsonl"
    feed.parent.mkdir()
    synced: list[int | str] = []  # lines in the feed at each of its syncs; "folder" for its folder
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if target == str(feed):
            synced.append(len(feed.read_text().splitlines()))
        elif target == str(feed.parent):
            synced.append("folder")
        real_fsync(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("no /proc here")
    monkeypatch.setattr(os, "fsync", fsync)
    result = _batch(tmp_path / "in", "--results", str(feed), "--workers", workers)
    assert result.exit_code == 0, result.output
    assert synced[0] == "folder"
    counts = synced[1:]
    assert counts == sorted(counts) and counts[-1] == 150
    assert len(counts) >= 2  # (one a chunk, not one at the end)


def test_a_feed_on_a_device_has_nothing_to_sync(tmp_path: Path) -> None:
    feed = ResultsFeed(Path(os.devnull))
    feed.write(_part(1), "L", "S", 1)
    feed.sync()
    feed.close()


def _part(i: int) -> PartResult:
    return PartResult(name=f"p{i:04d}.png", content_hash=f"{i:064x}", size_bytes=1, verdict="pass")


def _pipe_with_a_reader(folder: Path, pipe_bytes: int | None = None) -> tuple[Path, int]:
    """A named pipe and its reader's end, opened (non-blocking, so that a writer's open returns)
    and reading nothing until the test reads it; `pipe_bytes` shrinks the pipe, so that a few
    lines fill it."""
    pipe = folder / "feed"
    os.mkfifo(pipe)
    reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)
    if pipe_bytes is not None:
        fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, pipe_bytes)
    return pipe, reader


def _read_lines(reader: int, deadline_s: float, until: int | None = None) -> list[dict]:  # type: ignore[type-arg]
    """What a reader holding `reader` (non-blocking) gets until the writer closes (or, waiting
    for a writer to open it again, until `until` lines came): every line must be whole JSON."""
    data = b""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            chunk = os.read(reader, 1 << 16)
        except BlockingIOError:
            chunk = None
        if chunk == b"" and until is None:
            break  # (no writer: all of it is read)
        if chunk:
            data += chunk
            if until is not None and data.count(b"\n") >= until:
                break
        else:
            time.sleep(0.02)
    assert data.endswith(b"\n") or not data
    return [json.loads(line) for line in data.decode().splitlines()]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_reader_that_stops_reading_never_holds_up_the_station(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A reader of the named pipe still connected but no longer reading (hung) filled the
    pipe's buffer and the station blocked in its write: judging stopped for a reader's sake.
    Writes never wait now: lines are held for the reader up to a bound, then the oldest are
    dropped, said in a warning, and the feed goes on when the reader reads again."""
    import inspection.results as results

    monkeypatch.setattr(results, "HELD_BYTES", 4000, raising=False)
    pipe = tmp_path / "feed"
    os.mkfifo(pipe)
    got: list[dict] = []  # type: ignore[type-arg]
    stopped, go_on = threading.Event(), threading.Event()

    def reader() -> None:
        with pipe.open("rb") as stream:  # (waits for the writer, as a PLC bridge does)
            for _ in range(3):
                got.append(json.loads(stream.readline()))
            stopped.set()
            go_on.wait(timeout=30)  # hung: connected, reading nothing
            got.extend(json.loads(line) for line in stream)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        with within(20):
            feed = ResultsFeed(pipe)
            for i in range(3):
                feed.write(_part(i), "Line 1", "Cam A", 1)
            assert stopped.wait(timeout=10)
            began = time.monotonic()
            for i in range(3, 1003):  # (far more than the pipe's 64 KiB and the bound)
                feed.write(_part(i), "Line 1", "Cam A", 1)
            assert time.monotonic() - began < 5  # (each write returned at once)
            assert feed.dropped > 0
            go_on.set()
            time.sleep(0.5)
            for i in range(1003, 1006):  # the reader reads again: the feed goes on
                feed.write(_part(i), "Line 1", "Cam A", 1)
            feed.close()
    finally:
        go_on.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    parts = [int(line["part"][1:5]) for line in got]
    assert parts[:3] == [0, 1, 2] and parts[-3:] == [1003, 1004, 1005]
    assert parts == sorted(parts) and len(set(parts)) == len(parts)  # in order, none twice
    assert len(parts) + feed.dropped == 1006  # each line read or counted as dropped
    # The lines dropped are the gaps in the numbers the reader got.
    numbers = [line["seq"] for line in got]
    assert numbers == [i + 1 for i in parts]
    assert len(set(range(1, 1007)) - set(numbers)) == feed.dropped
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "dropped" in said and "recorded in the database" in said and "History" in said


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_whose_reader_left_is_fed_again_when_a_reader_comes_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A reader of the named pipe that closes it (a PLC bridge restarted) stopped the run: the
    line stopped judging for it. The station goes on, says so, holds the lines, and the reader
    that opens the pipe again gets them."""
    pipe, reader = _pipe_with_a_reader(tmp_path)  # (so that opening to write returns)
    with within(20):
        feed = ResultsFeed(pipe)
        feed.write(_part(0), "Line 1", "Cam A", 1)
        assert [line["part"] for line in _read_lines(reader, 5, until=1)] == ["p0000.png"]
        os.close(reader)
        feed.write(_part(1), "Line 1", "Cam A", 1)  # (no error: judging goes on)
        feed.write(_part(2), "Line 1", "Cam A", 1)
        time.sleep(0.5)
        reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)
        try:
            feed.write(_part(3), "Line 1", "Cam A", 1)
            back = _read_lines(reader, 5, until=3)
            feed.close()
        finally:
            os.close(reader)
    assert [line["part"] for line in back] == ["p0001.png", "p0002.png", "p0003.png"]
    assert feed.dropped == 0
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "closed the pipe" in said and "judging goes on" in said and "free space" not in said
    assert "has a reader again" in said


@pytest.mark.skipif(not hasattr(fcntl, "F_SETPIPE_SZ"), reason="pipe sizes are Linux's")
def test_a_batch_feeding_a_hung_reader_judges_every_part(
    station: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same through `defects batch`: the run blocked in the results feed's write (and,
    that write being in the database's writer thread, Ctrl-C could not stop it). Every part is
    judged and recorded; the lines the reader never took are counted, and where their verdicts
    are is said."""
    import inspection.results as results

    monkeypatch.setattr(results, "HELD_BYTES", 1000, raising=False)
    monkeypatch.setattr(results, "CLOSE_GRACE_S", 0.2, raising=False)
    make_images(tmp_path / "in", n=24)
    pipe, reader = _pipe_with_a_reader(tmp_path, pipe_bytes=4096)  # connected, reading nothing
    # A station still waiting on its hung reader after a minute fails the test, not hangs it:
    # the reader then leaves, which ends a write blocked on it (a signal would not: the write
    # is in the database's writer thread, which the run waits for).
    waited = threading.Event()
    timer = threading.Timer(60, lambda: (waited.set(), os.close(reader)))
    timer.start()
    try:
        result = _batch(tmp_path / "in", "--results", str(pipe))
    finally:
        timer.cancel()
        timer.join()
    assert not waited.is_set(), "the run waited on the reader that stopped reading"
    try:
        lines = _read_lines(reader, 5)
    finally:
        os.close(reader)
    assert result.exit_code == 0, result.output
    with session_scope(station) as session:
        assert session.scalar(select(func.count(Inspection.id))) == 24
    output = " ".join(result.output.split())
    [dropped] = re.findall(r"warning: (\d+) lines of the results feed", output)
    assert 0 < len(lines) < 24 and len(lines) + int(dropped) == 24
    assert "recorded in the database" in output and "--export csv" in output


@pytest.mark.skipif(not hasattr(fcntl, "F_SETPIPE_SZ"), reason="pipe sizes are Linux's")
def test_lines_left_at_the_runs_end_are_not_said_to_be_past_the_bound(
    station: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that stopped reading near the run's end, far under the bound held for it, was
    told its lines went because it "fell behind past the lines held for it": the operator
    looked for a reader 16 MiB behind. The warning now says they were still held at the run's
    end, and why they were not waited for longer."""
    import inspection.results as results

    monkeypatch.setattr(results, "CLOSE_GRACE_S", 0.2, raising=False)
    make_images(tmp_path / "in", n=24)
    pipe, reader = _pipe_with_a_reader(tmp_path, pipe_bytes=4096)  # connected, reading nothing
    try:
        result = _batch(tmp_path / "in", "--results", str(pipe))
        lines = _read_lines(reader, 5)
    finally:
        os.close(reader)
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    [dropped] = re.findall(r"warning: (\d+) lines of the results feed", output)
    assert 0 < len(lines) < 24 and len(lines) + int(dropped) == 24
    assert f"{dropped} still held for it at the run's end" in output
    assert "took none of them for 0.2 s" in output
    assert "past the" not in output and "fell behind" not in output


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_lines_dropped_past_the_bound_and_left_at_the_end_are_said_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader gone for good: the lines past the bound were dropped while the run went on,
    the rest held until its end, when no reader had the pipe open; each count said with its
    cause."""
    import inspection.results as results

    monkeypatch.setattr(results, "HELD_BYTES", 4000, raising=False)
    monkeypatch.setattr(results, "CLOSE_GRACE_S", 0.1, raising=False)
    pipe, reader = _pipe_with_a_reader(tmp_path)
    with within(20):
        feed = ResultsFeed(pipe)
        feed.write(_part(0), "Line 1", "Cam A", 1)
        assert [line["part"] for line in _read_lines(reader, 5, until=1)] == ["p0000.png"]
        os.close(reader)  # (gone: the next write finds no reader)
        for i in range(1, 201):
            feed.write(_part(i), "Line 1", "Cam A", 1)
        feed.close()
    why = feed.why_not_sent()
    behind, at_end = (int(n) for n in re.findall(r"(\d+) (?:dropped|still held)", why))
    assert behind > 0 and at_end > 0 and behind + at_end == feed.dropped == 200
    assert "MiB held for it" in why
    assert "no reader had the pipe open for 0.1 s" in why


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_run_feeding_a_named_pipe_says_it_waits_for_its_reader(
    station: str, tmp_path: Path
) -> None:
    """Opening a named pipe to write waits for a reader: the run sat silent at its start."""
    make_images(tmp_path / "in", n=2)
    pipe, reader = _pipe_with_a_reader(tmp_path)  # (the PLC bridge, there already)
    try:
        result = _batch(tmp_path / "in", "--results", str(pipe))
        lines = os.read(reader, 1 << 16).decode().splitlines()
    finally:
        os.close(reader)
    assert result.exit_code == 0, result.output
    assert f"waiting for a reader of the named pipe {pipe}" in " ".join(result.output.split())
    assert len(lines) == 2


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_line_is_written_only_once_its_verdict_is_committed(
    station: str, tmp_path: Path, workers: str
) -> None:
    """A database that refuses a chunk's write (here a trigger; a dead server, a full disk
    alike) stopped the run with a line for each verdict it never kept, and the next run, judging
    those parts again, wrote each a second line: a reject gate acted on verdicts that were not
    on record. A line now comes after its commit, never before."""
    if not station.startswith("sqlite"):
        pytest.skip("the refusing trigger is SQLite's")
    make_images(tmp_path / "in", n=4)
    feed = tmp_path / "feed.jsonl"
    with session_scope(station) as session:
        session.execute(
            text(
                "CREATE TRIGGER refuse BEFORE INSERT ON inspections "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        )
    refused = _batch(tmp_path / "in", "--results", str(feed), "--workers", workers)
    assert refused.exit_code != 0
    with session_scope(station) as session:
        assert session.scalar(select(func.count(Inspection.id))) == 0
        session.execute(text("DROP TRIGGER refuse"))
    assert not feed.exists() or feed.read_text() == ""  # no line for a verdict not kept

    again = _batch(tmp_path / "in", "--results", str(feed), "--workers", workers)
    assert again.exit_code == 0, again.output
    lines = [json.loads(line) for line in feed.read_text().splitlines()]
    with session_scope(station) as session:
        recorded = set(session.scalars(select(Part.content_hash)))
    assert sorted(line["sha256"] for line in lines) == sorted(recorded)  # one line each
    assert len(recorded) == 4 and not any(line["repeat"] for line in lines)


def test_a_watched_file_that_repeats_an_earlier_parts_bytes_gets_its_line(
    station: str, tmp_path: Path
) -> None:
    """A frame a watch takes whose bytes an earlier part had was skipped as judged already, with
    no line: the line controller waiting on it waited for ever. It gets the verdict on record,
    marked as a repeat; a watch started again over parts it recorded writes them no second line."""
    hot = tmp_path / "hot"
    make_images(hot, n=1)
    judged = _batch(hot, "--results", str(tmp_path / "earlier.jsonl"))
    assert judged.exit_code == 0, judged.output
    job = BatchInspection(station, tmp_path / "store", "Line 1", "Cam A")
    told: list[tuple[str, str, str, bool]] = []

    def on_recorded(recorded: list[PartResult], repeats: list[PartResult]) -> None:
        told.extend((r.name, r.content_hash, r.verdict, False) for r in recorded)
        told.extend((r.name, r.content_hash, r.verdict, True) for r in repeats)

    stop = threading.Event()
    watcher = threading.Thread(
        target=job.watch,
        args=(hot, stop),
        kwargs={
            "poll_seconds": 0.1,
            "settle_seconds": 0.2,
            "first": iter_source(str(hot)),
            "known": {file_key(hot / "part_000.png")},  # (read as the watch began)
            "on_recorded": on_recorded,
        },
    )
    watcher.start()
    try:
        time.sleep(0.5)
        (hot / "again.png").write_bytes((hot / "part_000.png").read_bytes())
        deadline = time.monotonic() + 30
        while not told and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        watcher.join(timeout=30)
    [earlier] = [json.loads(line) for line in (tmp_path / "earlier.jsonl").read_text().splitlines()]
    assert told == [("again.png", earlier["sha256"], earlier["verdict"], True)]
    job.inspector.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_each_file_of_a_batch_gets_one_line_copies_as_repeats(
    station: str, tmp_path: Path, workers: str
) -> None:
    """Two files of one batch with the same bytes: the copy got no line."""
    make_images(tmp_path / "in", n=2)
    (tmp_path / "in" / "copy.png").write_bytes((tmp_path / "in" / "part_001.png").read_bytes())
    feed = tmp_path / "feed.jsonl"
    result = _batch(tmp_path / "in", "--results", str(feed), "--workers", workers)
    assert result.exit_code == 0, result.output
    lines = {line["part"]: line for line in map(json.loads, feed.read_text().splitlines())}
    assert sorted(lines) == ["copy.png", "part_000.png", "part_001.png"]
    # (The first read is judged, the other given its verdict.)
    original, copy = lines["copy.png"], lines["part_001.png"]
    assert copy["repeat"] and not original["repeat"] and not lines["part_000.png"]["repeat"]
    # (A repeat is numbered with the rest.)
    assert sorted(line["seq"] for line in lines.values()) == [1, 2, 3]
    same = ("sha256", "verdict", "defects", "failed_classes", "run")
    assert [copy[k] for k in same] == [original[k] for k in same]


def test_a_repeat_of_a_part_recorded_with_defects_gets_its_line_with_them(
    station: str, tmp_path: Path
) -> None:
    """A run writing the feed, over a file whose part was recorded with a detection (a batch
    started again, a copy of a failed part, a frame a watch takes again), stopped with a
    traceback: the recorded detections were read as bare numbers. Such a file's line carries
    the detections on record; a run started again over its source writes it none."""
    make_images(tmp_path / "in", n=2)
    assert _batch(tmp_path / "in", "--results", str(tmp_path / "first.jsonl")).exit_code == 0
    with session_scope(station) as session:  # (the tiny test model finds nothing: a box on record)
        inspection = session.scalars(
            select(Inspection)
            .join(Part, Inspection.part_id == Part.id)
            .where(Part.original_name == "part_000.png")
        ).one()
        inspection.verdict = Verdict.FAIL
        session.add(
            Prediction(
                inspection_id=inspection.id,
                source=PredictionSource.DETECTOR,
                class_name="scratch",
                confidence=0.9,
                x1=1.0,
                y1=2.0,
                x2=30.0,
                y2=40.0,
                counted=True,
            )
        )
    again = _batch(tmp_path / "in", "--results", str(tmp_path / "again.jsonl"))
    assert again.exit_code == 0, again.exception
    assert (tmp_path / "again.jsonl").read_text() == ""  # (the earlier run wrote their lines)

    moved = _batch(
        tmp_path / "in", "--results", str(tmp_path / "moved.jsonl"), "--move-judged",
        str(tmp_path / "judged"),
    )  # fmt: skip
    assert moved.exit_code == 0, moved.exception
    lines = {
        line["part"]: line
        for line in map(json.loads, (tmp_path / "moved.jsonl").read_text().splitlines())
    }
    failed = lines["part_000.png"]
    assert failed["repeat"] and failed["verdict"] == "fail"
    assert failed["failed_classes"] == ["scratch"]
    assert failed["defects"] == [{"class": "scratch", "confidence": 0.9, "box": [1, 2, 30, 40]}]
    assert lines["part_001.png"]["defects"] == []


def test_a_run_started_again_reads_no_detections_of_the_parts_it_skips(
    station: str, tmp_path: Path
) -> None:
    """A run started again over its source, with a feed, read every skipped part's record and
    detections back (a second look-up of each chunk), only to write none of them a line."""
    make_images(tmp_path / "in", n=3)
    assert _batch(tmp_path / "in").exit_code == 0
    job = BatchInspection(station, tmp_path / "store", "Line 1", "Cam A")
    told: list[PartResult] = []
    statements: list[str] = []

    def on_recorded(recorded: list[PartResult], repeats: list[PartResult]) -> None:
        told.extend(recorded + repeats)

    def seen(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", seen)
    try:
        summary = job.run(iter_source(str(tmp_path / "in")), on_recorded=on_recorded)
    finally:
        event.remove(Engine, "before_cursor_execute", seen)
        job.inspector.close()
    assert summary.skipped == 3 and told == []
    assert not [s for s in statements if "FROM predictions" in s]


def test_a_run_told_no_repeats_works_none_out(station: str, tmp_path: Path) -> None:
    """A worker of a run without a feed tells its results alone: it looked up the records of
    every chunk's repeats (a copy, a part judged before) for lines nobody would write. Told no
    repeats, it runs no such query; told them, the copy's line is the original's verdict."""
    make_images(tmp_path / "in", n=3)
    assert _batch(tmp_path / "in").exit_code == 0  # (judged before: skipped parts below)
    statements: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    def judged(folder: Path, seed: int, repeats: bool) -> tuple[list[PartResult], ...]:
        """Two new parts, a copy of the first and two parts the earlier run recorded."""
        make_images(folder, n=2, seed=seed)
        (folder / "part_002.png").write_bytes((folder / "part_000.png").read_bytes())  # (read last)
        for name in ("part_000.png", "part_001.png"):
            (folder / f"old-{name}").write_bytes((tmp_path / "in" / name).read_bytes())
        recorded: list[PartResult] = []
        told: list[PartResult] = []
        statements.clear()
        job = BatchInspection(station, tmp_path / "store", "Line 1", "Cam A")
        event.listen(Engine, "before_cursor_execute", seen)
        try:
            summary = job.run(
                iter_source(str(folder)),
                on_recorded=lambda done, again: (recorded.extend(done), told.extend(again)),
                repeats=repeats,
            )
        finally:
            event.remove(Engine, "before_cursor_execute", seen)
            job.inspector.close()
        assert (summary.inspected, summary.skipped) == (2, 3)
        return recorded, told

    # (The look-up of the repeats' records: the one statement that reads the parts' sizes.)
    def looked_up() -> list[str]:
        return [s for s in statements if "parts.size_bytes" in s]

    recorded, told = judged(tmp_path / "new", 7, repeats=False)
    assert len(recorded) == 2 and told == [] and looked_up() == []
    recorded, told = judged(tmp_path / "newer", 9, repeats=True)
    assert len(looked_up()) == 1  # (one query for the chunk's repeats)
    original = {r.name: r for r in recorded}["part_000.png"]
    assert [(r.name, r.content_hash, r.verdict) for r in told] == [
        ("part_002.png", original.content_hash, original.verdict)
    ]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_at_the_runs_end_a_reader_that_keeps_taking_lines_is_served_ten_graces_at_most(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the run's end the lines still held go to a reader while it takes them, but a reader
    that takes a few bytes now and then would hold the station's exit for as long as it
    pleased: past ten graces in all, what is left is counted as not sent."""
    import inspection.results as results

    monkeypatch.setattr(results, "CLOSE_GRACE_S", 0.1, raising=False)
    pipe, reader = _pipe_with_a_reader(tmp_path)
    done = threading.Event()
    data = bytearray()

    def trickle() -> None:  # (a page at a time, about 80 KB a second: seconds for what is held)
        while not done.is_set():
            with contextlib.suppress(BlockingIOError):
                data.extend(os.read(reader, 4096))
            time.sleep(0.05)

    thread = threading.Thread(target=trickle, daemon=True)
    try:
        with within(20):
            feed = ResultsFeed(pipe)
            for i in range(2000):  # (far more than the pipe holds)
                feed.write(_part(i), "Line 1", "Cam A", 1)
            thread.start()
            began = time.monotonic()
            feed.close()
            closed_after = time.monotonic() - began
    finally:
        done.set()
        thread.join(timeout=10)
        os.close(reader)
    assert 0.9 < closed_after < 5  # (ten graces of 0.1 s, not the reader's pace)
    lines = bytes(data).splitlines()
    assert 0 < feed.dropped < 2000
    assert all(json.loads(line) for line in lines[:-1])  # (whole lines, in order)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_run_refused_before_it_begins_closes_its_named_pipe(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feed is opened before the model loads (a bad FILE is said at once); a run refused
    after that (no production model, a database refused) left the pipe open, its reader waiting
    on a run that never began."""
    monkeypatch.setenv("DEFECTS_DATABASE_URL", database_url)
    get_settings.cache_clear()
    make_images(tmp_path / "in", n=1)
    pipe, reader = _pipe_with_a_reader(tmp_path)  # (so that opening to write returns)
    try:
        result = _batch(tmp_path / "in", "--results", str(pipe))  # (no model registered)
        assert result.exit_code != 0 and isinstance(result.exception, UserError)
        assert os.read(reader, 1024) == b""  # the writer's end is closed: no run to wait on
    finally:
        os.close(reader)


def test_a_line_a_full_disk_cut_short_is_ended_before_the_next_runs_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk let half a line into the feed and the run stopped; the same command started
    again appended its first line to that half: one broken line where a whole verdict was. The
    half line is now ended first, so every line the next run writes is whole. (The full disk is
    simulated: a write that takes part of a line, then ENOSPC.)"""
    import errno

    path = tmp_path / "feed.jsonl"
    feed = ResultsFeed(path)
    feed.write(_part(1), "L", "S", 1)
    feed.close()
    with path.open("ab") as handle:  # (what a full disk left of a line, on an earlier release)
        handle.write(b'{"part": "p0002.png", "sha')
    again = ResultsFeed(path)
    again.write(_part(3), "L", "S", 2)
    assert json.loads(path.read_text().splitlines()[-1])["part"] == "p0003.png"
    write, room = os.write, [20]

    def filling(fd: int, data: bytes) -> int:
        if not room[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        taken = write(fd, bytes(data[: room[0]]))  # (what the disk had room for)
        room[0] -= taken
        return taken

    monkeypatch.setattr(os, "write", filling)
    with pytest.raises(UserError, match="cannot write the results feed"):
        again.write(_part(4), "L", "S", 2)
    again.close()
    monkeypatch.setattr(os, "write", write)  # (space freed)
    last = ResultsFeed(path)
    last.write(_part(5), "L", "S", 3)
    last.close()
    lines = path.read_text().splitlines()
    assert [line[:20] for line in lines] == [f'{{"part": "p000{i}.png"' for i in range(1, 6)]
    whole = [json.loads(lines[i]) for i in (0, 2, 4)]  # (1 and 3: the halves, ended)
    assert [(line["part"], line["run"], line["seq"]) for line in whole] == [
        ("p0001.png", 1, 1),
        ("p0003.png", 2, 1),
        ("p0005.png", 3, 1),
    ]


@pytest.mark.parametrize(
    ("code", "fix"),
    [
        (errno.EIO, "check its disk"),
        (errno.EACCES, "make it writable for this user"),
        (
            errno.EROFS,
            "the file system is mounted read-only: remount it read-write or use another place",
        ),
    ],
)
def test_a_feed_whose_write_fails_not_for_space_says_what_would_help(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, fix: str
) -> None:
    """A feed's write failing on a failing disk (EIO) or a permission (EACCES) was told "free
    space there", which would not help; it says what would."""
    feed = ResultsFeed(tmp_path / "feed.jsonl")

    def failing(fd: int, data: bytes) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "write", failing)
    with pytest.raises(UserError) as raised:
        feed.write(_part(1), "L", "S", 1)
    feed.close()
    said = str(raised.value)
    assert f"{os.strerror(code)}; the verdicts so far" in said and f": {fix} and run" in said
    assert "free space" not in said


def test_parts_another_station_recorded_after_this_run_began_get_repeat_lines(
    station: str, tmp_path: Path
) -> None:
    """Two stations batching the same parts at once: the parts the other one recorded after
    this run began but before it looked them up got no line at all (6 of 70 went unsaid), while
    those it recorded a moment later got their repeat line. A run started again over its source
    still gets none for the parts recorded before it began."""
    make_images(tmp_path / "in", n=3)
    names = sorted(p.name for p in (tmp_path / "in").iterdir())

    def told_by(job: BatchInspection) -> list[PartResult]:
        told: list[PartResult] = []
        try:
            job.run(
                iter_source(str(tmp_path / "in")), on_recorded=lambda _, again: told.extend(again)
            )
        finally:
            job.inspector.close()
        return told

    here = BatchInspection(station, tmp_path / "store", "Line 1", "Cam A")  # its run begins
    assert len(told_by(BatchInspection(station, tmp_path / "store", "Line 1", "Cam B"))) == 0
    assert sorted(r.name for r in told_by(here)) == names
    assert told_by(BatchInspection(station, tmp_path / "store", "Line 1", "Cam A")) == []

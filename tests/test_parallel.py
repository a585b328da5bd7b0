"""One run spread over worker processes: the same rows as one process, resume, a dead worker."""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.models import Inspection, InspectionRun, Part, Prediction
from db.session import session_scope
from inspection.batch import WRITE_NOW, BatchInspection, SourceItem, iter_source
from inspection.errors import UserError
from inspection.parallel import (
    QUEUE_PER_WORKER,
    ParallelInspection,
    WorkerJob,
    shard_of,
    share_cores,
    take_share,
)
from inspection.settings import usable_cores
from tests.conftest import Trained, register_production_detector
from tests.synthetic import make_images

ROOT = Path(__file__).parents[1]


@pytest.fixture
def any_detector(database_url: str, trained: Trained, tmp_path: Path) -> str:
    """The tiny detector in production, on each database backend: workers write side by side."""
    register_production_detector(database_url, trained.weights, tmp_path / "models")
    return database_url


@pytest.fixture
def detector(any_detector: str) -> str:
    if not any_detector.startswith("sqlite"):
        pytest.skip("worker processes are slow to start: one backend is enough")
    return any_detector


def _source(tmp_path: Path, n: int) -> list[SourceItem]:
    """n parts, a copy of the first under another name, a non-image, an unreadable file."""
    make_images(tmp_path / "in", n=n, size=64)
    items = list(iter_source(str(tmp_path / "in")))
    first = items[0]
    assert first.data is not None
    return [
        *items,
        SourceItem("copy-of-first.png", first.data),
        SourceItem("notes.txt", b"shift 2"),
        SourceItem("gone.png", None, "cannot read the file"),
    ]


def _rows(url: str, run_id: int | None = None) -> dict[str, tuple[str, int]]:
    """Each judged part's verdict and number of detections, by content hash."""
    with session_scope(url) as session:
        query = (
            select(Part.content_hash, Inspection.verdict, func.count(Prediction.id))
            .join(Inspection, Inspection.part_id == Part.id)
            .outerjoin(Prediction, Prediction.inspection_id == Inspection.id)
            .group_by(Part.content_hash, Inspection.verdict)
        )
        if run_id is not None:
            query = query.where(Inspection.run_id == run_id)
        return {digest: (verdict.value, count) for digest, verdict, count in session.execute(query)}


def test_workers_started_before_a_run_that_never_comes_are_stopped(
    detector: str, tmp_path: Path
) -> None:
    """`defects batch` starts the workers, then lists the folder: a listing that fails (or
    Ctrl-C) leaves no worker behind and no run open."""
    job = ParallelInspection(detector, tmp_path / "store", "Line 1", "Cam A", workers=2)
    job.start()
    assert all(process.is_alive() for process in job.processes)
    job.close()
    assert [process.exitcode for process in job.processes] == [0, 0]
    with session_scope(detector) as session:
        run = session.get_one(InspectionRun, job.run_id)
        assert run.finished_at is not None
        assert session.scalar(select(func.count(Inspection.id))) == 0
    with pytest.raises(RuntimeError, match="runs once"):
        job.run([])


def test_a_worker_that_cannot_be_started_leaves_no_worker_and_no_run(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second worker's start refused (too many processes, out of memory): the first,
    started, is stopped, the run that never began removed, and the reason is one line (it was
    the OS's error, and `close` then joined a process never started: "can only join a started
    process")."""
    job = ParallelInspection(detector, tmp_path / "store", "L", "S", workers=2)
    spawn = type(multiprocessing.get_context("spawn").Process())
    real_start = spawn.start
    starts = [0]

    def refused(self: multiprocessing.process.BaseProcess) -> None:
        starts[0] += 1
        if starts[0] == 2:
            raise OSError(11, "Resource temporarily unavailable")
        real_start(self)

    monkeypatch.setattr(spawn, "start", refused)
    try:
        with pytest.raises(UserError, match="could not start worker process 2 of 2") as raised:
            job.start()
        left = multiprocessing.active_children()
    finally:
        for process in multiprocessing.active_children():  # (else pytest's exit waits on them)
            process.kill()
            process.join()
    assert "\n" not in str(raised.value) and "Resource temporarily unavailable" in str(raised.value)
    assert job.processes == [] and left == []
    job.close()  # (the CLI's, however the start ended)
    with session_scope(detector) as session:
        assert session.scalar(select(func.count(InspectionRun.id))) == 0


def test_queues_or_pipes_that_cannot_be_made_leave_no_run_and_no_open_file(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second worker's pipe refused as the OS refuses it past the open-file limit: before
    any worker starts, the reason is one line, the run that never began is removed (it stood
    open, with no part, as the station's latest), and the queue and pipe already made are
    closed."""
    job = ParallelInspection(detector, tmp_path / "store", "L", "S", workers=2)
    context = multiprocessing.get_context("spawn")
    real_pipe = context.Pipe
    pipes = [0]

    def refused(duplex: bool = True) -> tuple[object, object]:
        pipes[0] += 1
        if pipes[0] == 2:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_pipe(duplex)

    monkeypatch.setattr(context, "Pipe", refused)
    open_before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(UserError, match="could not make the queues and pipes") as raised:
        job.start()
    assert "\n" not in str(raised.value) and "Too many open files" in str(raised.value)
    assert pipes[0] == 2 and job.processes == [] and multiprocessing.active_children() == []
    assert len(os.listdir("/proc/self/fd")) <= open_before
    job.close()  # (the CLI's, however the start ended)
    with session_scope(detector) as session:
        assert session.scalar(select(func.count(InspectionRun.id))) == 0


def test_workers_write_what_one_process_writes_into_one_run(
    any_detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    detector = any_detector
    # The main script of the process that deals (here a stand-in that must not run again in
    # the workers, as a script without a __main__ guard or a Streamlit app would).
    script = tmp_path / "main_script.py"
    script.write_text("raise SystemExit('the main script ran again in a worker')\n")
    main = types.ModuleType("__main__")
    main.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", main)
    items = _source(tmp_path, 12)
    job = ParallelInspection(detector, tmp_path / "store", "Line 1", "Cam A", workers=2)
    seen: list[str] = []
    summary = job.run(items, lambda result: seen.append(result.name))
    # 12 parts + the non-image + the unreadable file judged; the copy skipped, in its shard.
    assert (summary.seen, summary.inspected, summary.skipped, summary.errors) == (15, 14, 1, 2)
    assert summary.errors_by_reason == {"not an image file": 1, "cannot read the file": 1}
    # Latencies of the 12 parts judged: an error's time is not a verdict's (the non-image's
    # was counted), as one process counts them below.
    assert len(seen) == 14 and len(summary.latencies_ms) == 12
    assert {job.processes[0].exitcode, job.processes[1].exitcode} == {0}
    assert len(job.ready_after_s) == 2 and all(s > 0 for s in job.ready_after_s)
    parallel_rows = _rows(detector, job.run_id)
    with session_scope(detector) as session:
        run = session.get_one(InspectionRun, job.run_id)
        assert run.finished_at is not None
        assert session.scalar(select(func.count(InspectionRun.id))) == 1
        assert session.scalar(select(func.count(Inspection.id))) == 14
    # The same parts in one process, as another model version's run: the same verdicts.
    register_production_detector(detector, Path(_weights(detector)), tmp_path / "m2", "tiny-2")
    single = BatchInspection(detector, tmp_path / "store", "Line 1", "Cam A", model="tiny-2")
    assert len(single.run(items).latencies_ms) == 12
    single.inspector.close()
    assert _rows(detector, single.run_id) == parallel_rows
    # Started again: everything is judged already.
    again = ParallelInspection(detector, tmp_path / "store", "Line 1", "Cam A", workers=2)
    told: list[int] = []  # (a progress bar's count of parts judged before)
    repeat = again.run(items, on_skipped=told.append)
    assert (repeat.inspected, repeat.skipped) == (0, 15)
    assert sum(told) == 15


def test_workers_of_a_run_without_a_feed_work_out_no_repeats(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy in the batch is a repeat, which only the results feed writes: without it
    (`on_recorded` not given), workers looked up its record anyway and sent it to the dealer,
    which dropped it. (With a feed, the copy's line: test_results_feed.py, --workers 2.)"""
    make_images(tmp_path / "in", n=4, size=64)
    (tmp_path / "in" / "part_004.png").write_bytes((tmp_path / "in" / "part_000.png").read_bytes())
    heard: list[str] = []  # each kind of message the dealer takes from a worker
    real_recv = multiprocessing.connection.Connection.recv

    def recv(self: multiprocessing.connection.Connection) -> object:
        message = real_recv(self)
        heard.append(message[0])
        return message

    monkeypatch.setattr(multiprocessing.connection.Connection, "recv", recv)
    job = ParallelInspection(detector, tmp_path / "store", "L", "S", workers=2)
    summary = job.run(iter_source(str(tmp_path / "in")))
    assert (summary.inspected, summary.skipped) == (4, 1)
    assert "results" in heard and "repeats" not in heard


def _weights(url: str) -> str:
    from db.models import ModelVersion

    with session_scope(url) as session:
        return session.scalars(select(ModelVersion.file_path)).first()  # type: ignore[return-value]


def test_a_dead_worker_stops_the_run_and_a_second_run_finishes_it(
    detector: str, tmp_path: Path
) -> None:
    """A worker killed mid-run (as by the OOM killer) stops the run; a second run finishes it.
    The source holds back its second half until the kill, so that the worker killed still has
    parts to come: killed at the first result alone, a worker on a loaded machine had at times
    judged its whole share and exited, and the kill stopped nothing."""
    items = _source(tmp_path, 300)
    half = len(items) // 2
    job = ParallelInspection(detector, tmp_path / "store", "L", "S", workers=2)
    killed: list[int] = []
    kill_done = threading.Event()

    def source() -> Iterator[SourceItem]:
        """The first half, written as a quiet source's is, then the rest once a worker is killed
        (no worker is dealt its end before then)."""
        yield from items[:half]
        yield WRITE_NOW
        kill_done.wait(timeout=120)
        yield from items[half:]

    def kill_a_worker(_result: object) -> None:
        if not killed:  # the first result in: one worker is killed as by the OOM killer
            worker = job.processes[0]
            assert worker.pid is not None and worker.is_alive()
            os.kill(worker.pid, signal.SIGKILL)
            killed.append(worker.pid)
            kill_done.set()

    with pytest.raises(UserError, match="a worker process died"):
        job.run(source(), kill_a_worker)
    assert killed
    with session_scope(detector) as session:
        parts = session.scalar(select(func.count(Part.id)))
        inspections = session.scalar(select(func.count(Inspection.id)))
        distinct = session.scalar(select(func.count(func.distinct(Inspection.part_id))))
    assert parts == inspections == distinct  # whole chunks, nothing half-written
    summary = ParallelInspection(detector, tmp_path / "store", "L", "S", workers=2).run(items)
    assert summary.inspected + summary.skipped == 303
    assert 0 < summary.skipped < 303  # the first run had written part of them
    assert len(_rows(detector)) == 302  # every distinct part judged once in all


def test_a_worker_that_cannot_start_stops_the_run_with_its_reason(
    detector: str, tmp_path: Path
) -> None:
    make_images(tmp_path / "in", n=3, size=64)
    job = ParallelInspection(detector, tmp_path / "store", "L", "S", workers=2, backend="onnx")
    with pytest.raises(UserError, match=r"the run stopped: no .*\.onnx .*defects export") as raised:
        job.run(iter_source(str(tmp_path / "in")))
    # (It said "run it again to resume", which stopped the same way until the export was made.)
    assert "resume" not in str(raised.value)
    # (Its run, with no part, stayed the station's latest in `defects status`, as one
    # process's does not.)
    with session_scope(detector) as session:
        assert session.scalar(select(func.count(InspectionRun.id))) == 0


def test_a_run_stopped_before_its_workers_were_ready_leaves_no_run(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the workers loaded the model left a run with no part, the station's
    latest in `defects status` and on the Live page; one process removes it."""
    make_images(tmp_path / "in", n=3, size=64)
    job = ParallelInspection(detector, tmp_path / "store", "L", "S", workers=2)
    listen = ParallelInspection._listen
    calls = [0]

    def interrupted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == 1:  # (Ctrl-C as the run begins; then the workers are heard stop)
            raise KeyboardInterrupt
        return listen(self, *args, **kwargs)

    monkeypatch.setattr(ParallelInspection, "_listen", interrupted)
    with pytest.raises(KeyboardInterrupt):
        job.run(iter_source(str(tmp_path / "in")))
    with session_scope(detector) as session:
        assert session.scalar(select(func.count(InspectionRun.id))) == 0


def test_workers_judge_with_the_model_file_named(
    detector: str, tmp_path: Path, export_of_trained: Callable[[Path, str], Path]
) -> None:
    """`defects batch --workers 2 --model best.onnx`: each worker runs that file, for the
    version it is an export of."""
    exported = export_of_trained(Path(_weights(detector)), "tiny")
    moved = exported.rename(tmp_path / "best.onnx")  # the version's folder has none now
    make_images(tmp_path / "in", n=4, size=64)
    # (ONNX Runtime asked for: a worker that ran the version's weights stops the run, as
    # there is no .onnx beside them.)
    job = ParallelInspection(
        detector, tmp_path / "store", "L", "S", workers=2, backend="onnx", model=str(moved)
    )
    summary = job.run(iter_source(str(tmp_path / "in")))
    assert (job.model_name, summary.inspected) == ("tiny", 4)
    assert len(_rows(detector, job.run_id)) == 4


def _threads_in_a_worker(job: WorkerJob, onnx_path: Path) -> tuple[int, int, int]:
    """In a fresh process, as a worker starts: its share taken, the ONNX session it opens
    (intra-op and inter-op threads, read back from the session) and PyTorch's threads."""
    import torch

    from inspection.backends.onnx_backend import OnnxBackend

    take_share(job)
    options = OnnxBackend(onnx_path).session.get_session_options()
    return options.intra_op_num_threads, options.inter_op_num_threads, torch.get_num_threads()


def test_each_workers_network_runs_on_its_share_of_the_cores(
    detector: str, tmp_path: Path, export_of_trained: Callable[[Path, str], Path]
) -> None:
    """More workers than cores are not pinned: each one's ONNX session took every core, N x
    cores threads on the cores. Each now runs on its share, a lone process on every core."""
    from inspection.backends.onnx_backend import OnnxBackend

    exported = export_of_trained(Path(_weights(detector)), "tiny")
    cores = len(usable_cores())
    lone = OnnxBackend(exported).session.get_session_options()
    assert lone.intra_op_num_threads == cores  # one process: not limited
    spawn = multiprocessing.get_context("spawn")
    for workers in dict.fromkeys((2 * cores, 2)):  # not pinned (more workers than cores), pinned
        job = ParallelInspection(detector, tmp_path / "store", "L", "S", workers, backend="onnx")
        for worker in job._jobs[:2]:
            share = len(worker.cores) if worker.cores else max(1, cores // workers)
            with ProcessPoolExecutor(1, mp_context=spawn) as process:
                threads = process.submit(_threads_in_a_worker, worker, exported).result()
            assert threads == (share, 1, share), (workers, worker.cores)
        job.close()


def test_cores_are_shared_out_and_copies_meet_in_one_shard() -> None:
    slices = share_cores(list(range(16)), 3)
    assert [len(s or ()) for s in slices] == [6, 5, 5]
    assert sorted(c for s in slices for c in s or ()) == list(range(16))
    assert share_cores([0, 1], 4) == [None] * 4  # fewer cores than workers: no pinning
    part = SourceItem("a.png", b"same bytes")
    assert shard_of(part, 7) == shard_of(SourceItem("copy/b.png", b"same bytes"), 7)
    # Hashed once, by the dealer: the hash travels to the worker with the item.
    assert part.content_hash == hashlib.sha256(b"same bytes").hexdigest()


def test_watch_with_workers_judges_the_folder_then_each_new_file_as_it_comes(
    detector: str, tmp_path: Path
) -> None:
    """`defects batch HOT --watch --workers 2`: the files there at the start, then each file a
    camera drops, written while the folder is quiet (not held for a fuller chunk); Ctrl-C ends
    the watch with every worker gone."""
    psutil = pytest.importorskip("psutil")
    command, env = _two_worker_batch(detector, tmp_path, parts=6)
    process = subprocess.Popen(
        [*command, "--watch"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and _count_inspections(detector) < count:
            assert process.poll() is None, process.stdout.read()[-2000:]  # type: ignore[union-attr]
            time.sleep(0.1)
        assert _count_inspections(detector) == count

    wait_for(6)
    make_images(tmp_path / "camera", n=2, size=64, seed=7)
    for i, frame in enumerate(sorted((tmp_path / "camera").iterdir())):
        frame.rename(tmp_path / "in" / f"new_{i}.png")  # as a camera drops its frames
        wait_for(7 + i)  # each on its own: a lone frame is not held back
    workers = psutil.Process(process.pid).children(recursive=True)
    assert len(workers) >= 2
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    _, still_running = psutil.wait_procs(workers, timeout=30)
    assert not still_running
    summary = " ".join(output.split())
    assert "watching" in summary and "stopped; what was inspected is saved" in summary
    # The folder's first files were not dealt again by the watch (none counted as judged already).
    assert "8 parts inspected" in summary and "0 already inspected" in summary
    assert len(_rows(detector)) == 8


def test_kill_9_of_the_dealer_leaves_no_worker_behind_and_resumes(
    detector: str, tmp_path: Path
) -> None:
    """`defects batch --workers 2` killed with kill -9: its workers write what they hold and
    stop by themselves (none left running, holding a GPU); the same command then finishes."""
    psutil = pytest.importorskip("psutil")
    command, env = _two_worker_batch(detector, tmp_path, parts=300)
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _count_inspections(detector) == 0:
        assert process.poll() is None, process.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        time.sleep(0.05)
    workers = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGKILL)
    process.wait()
    _, still_running = psutil.wait_procs(workers, timeout=120)
    assert not still_running
    with session_scope(detector) as session:
        parts = session.scalar(select(func.count(Part.id)))
        distinct = session.scalar(select(func.count(func.distinct(Inspection.part_id))))
    assert 0 < parts == distinct == _count_inspections(detector)
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert len(_rows(detector)) == 300
    assert "2 of 2 workers ready after" in " ".join(finished.stdout.split())


def test_a_long_run_reports_its_rate_once_every_worker_was_ready_and_who_waited(
    detector: str, tmp_path: Path
) -> None:
    """The lines that tell a slow line from a slow start (100 parts a worker at least)."""
    command, env = _two_worker_batch(detector, tmp_path, parts=200)
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    # The run's queues are let go with it: none reported leaked as the command ends.
    assert "leaked semaphore" not in finished.stderr
    said = " ".join(finished.stdout.split())
    # (Of the parts judged once both were ready: the first may have judged some alone.)
    assert re.search(r"[\d.]+ parts/s once every worker was ready \((\d+) parts\)", said)
    # Who held it back, in one of its forms: 200 parts fit in the workers' queues, so they are
    # mostly all dealt before the last worker is ready, but on a loaded machine the dealer
    # may still be reading when it is (the assertion of the first form alone failed so).
    assert re.search(
        r"the workers waited for parts \d+% of their time[;,] .*(is|are) the limit"
        r"|neither is clearly the limit",
        said,
    ), said
    assert "s judging, " in said and "s for the workers to exit" in said  # where the time went


def test_who_waited_names_the_side_that_held_the_run_back(detector: str, tmp_path: Path) -> None:
    job = ParallelInspection(detector, tmp_path / "store", "Line 1", "Cam A", workers=2)
    assert job.who_waited() is None  # before a run
    job.worker_waits, job.dealer_wait = [(0.1, 10.0), (0.3, 10.0)], (9.0, 10.0)
    assert job.who_waited() == (
        "the workers waited for parts 2% of their time, the dealer for room in their queues "
        "90% of its: the workers are the limit"
    )
    job.worker_waits, job.dealer_wait = [(6.0, 10.0), (4.0, 10.0)], (0.5, 10.0)
    assert job.who_waited().endswith("is the limit") and "50%" in job.who_waited()  # type: ignore[union-attr]
    assert "the dealer (one process" in job.who_waited()  # type: ignore[operator]
    job.dealer_wait = (4.0, 10.0)
    assert job.who_waited().endswith("neither is clearly the limit")  # type: ignore[union-attr]
    # Every part dealt before the last worker was ready: the dealer never waited.
    job.worker_waits, job.dealer_wait = [(0.0, 3.0), (0.1, 3.0)], (0.0, 0.0)
    assert job.who_waited() == (
        "the workers waited for parts 2% of their time; the dealer had dealt every part before "
        "the last worker was ready: the workers are the limit"
    )


def _count_inspections(url: str) -> int:
    with session_scope(url) as session:
        return int(session.scalar(select(func.count(Inspection.id))) or 0)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_every_worker_and_the_summary_counts_what_was_written(
    detector: str, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    """Ctrl-C in a terminal, or SIGTERM from a service manager stopping the station (systemd
    sends it to every process of the service): the workers write what they judged and the
    summary counts it. SIGTERM killed the workers: "0 parts inspected" over hundreds written."""
    psutil = pytest.importorskip("psutil")
    command, env = _two_worker_batch(detector, tmp_path, parts=300)
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal's foreground job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _count_inspections(detector) == 0:
        assert process.poll() is None
        time.sleep(0.05)
    workers = psutil.Process(process.pid).children(recursive=True)
    os.killpg(process.pid, stop_signal)  # Ctrl-C reaches the whole foreground group
    output, _ = process.communicate(timeout=120)
    _, still_running = psutil.wait_procs(workers, timeout=30)
    assert not still_running
    assert "stopped; what was inspected is saved" in output
    # Not done: a script that ran the batch read exit 0 as every file judged.
    assert process.returncode == 130, output[-2000:]
    assert "parts/s once every worker was ready" not in output
    assert "leaked semaphore" not in output  # (the queues' semaphores were left to the tracker)
    written = _count_inspections(detector)
    said = f"{written} part{'' if written == 1 else 's'} inspected"
    assert said in " ".join(output.split())
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert len(_rows(detector)) == 300
    assert "2 of 2 workers ready after" in " ".join(finished.stdout.split())


def test_a_stop_the_workers_did_not_hear_leaves_the_parts_still_dealt_to_them(
    detector: str, tmp_path: Path
) -> None:
    """Ctrl-C that reaches the dealer alone (a worker still loading its model ignores it, a
    SIGTERM sent to the command's process only): the workers stop after the chunk they hold,
    instead of judging every part queued for them first (up to 256 each)."""
    make_images(tmp_path / "in", n=600, size=64)
    items = list(iter_source(str(tmp_path / "in")))
    job = ParallelInspection(detector, tmp_path / "store", "L", "S", workers=2)

    heard: list[object] = []

    def interrupted(result: object) -> None:
        heard.append(result)
        if len(heard) == 1:
            raise KeyboardInterrupt  # in the dealer's main thread, as its own Ctrl-C

    with pytest.raises(KeyboardInterrupt):
        job.run(items, interrupted)
    written = _count_inspections(detector)
    assert job.summary.inspected == written
    assert [process.exitcode for process in job.processes] == [0, 0]
    # The dealer had filled both queues before the first result came: judging them all
    # wrote at least as many.
    assert 0 < written < 2 * QUEUE_PER_WORKER


@pytest.mark.usefixtures("ctrl_c_raises")
def test_a_ctrl_c_landing_in_a_workers_message_waits_for_its_end(
    detector: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C raised where it landed, inside the reading of a worker's message, left the rest of
    that message in its pipe, which could not be read after it: the worker's last word, the parts
    it had written, was missing from the summary ("64 parts inspected" over 128 written). It is
    now acted on between two messages."""
    import inspection.parallel as parallel

    make_images(tmp_path / "in", n=400, size=64)
    items = list(iter_source(str(tmp_path / "in")))
    job = ParallelInspection(detector, tmp_path / "store", "L", "S", workers=2)
    read = parallel._take_in
    taken: list[str] = []
    cut_short: list[str] = []

    def landing_in_a_message(channel: object) -> tuple[str, object]:
        if taken.count("results") == 1 and not cut_short:
            cut_short.append("")  # (once)
            try:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, as this message is read
                time.sleep(0.05)  # (Python acts on a signal at its next instruction)
            except KeyboardInterrupt:
                cut_short[0] = "raised inside the reading"
                raise
        message = read(channel)  # type: ignore[arg-type]
        taken.append(message[0])
        return message

    monkeypatch.setattr(parallel, "_take_in", landing_in_a_message)
    with pytest.raises(KeyboardInterrupt):
        job.run(items)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # (given back)
    assert cut_short == [""]
    assert job.summary.inspected == _count_inspections(detector) > 0
    assert [process.exitcode for process in job.processes] == [0, 0]


def test_a_ctrl_c_landing_in_a_workers_word_to_the_dealer_waits_for_its_end() -> None:
    """A worker's Ctrl-C raised inside the writing of a message cut it in two: the dealer could
    not read that pipe after it. It is now raised once the message is written whole."""
    from inspection.parallel import _ToDealer

    receiving, sending = multiprocessing.Pipe(duplex=False)
    to_dealer = _ToDealer(sending)
    big = b"x" * (4 << 20)  # (more than a pipe holds: the write waits for the reader)
    got: list[object] = []

    def dealer() -> None:
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)  # as the worker writes
        time.sleep(0.2)
        got.append(receiving.recv())

    listening = threading.Thread(target=dealer)
    previous = signal.signal(signal.SIGINT, to_dealer.stop_heard)
    try:
        listening.start()
        with pytest.raises(KeyboardInterrupt):
            to_dealer.tell("results", big)
    finally:
        signal.signal(signal.SIGINT, previous)
        listening.join(timeout=10)
    assert got == [("results", big)]
    assert not to_dealer.gone.is_set()


def _two_worker_batch(url: str, tmp_path: Path, parts: int) -> tuple[list[str], dict[str, str]]:
    """`defects batch --workers 2` over `parts` new images, as a user runs it: its command line
    and environment."""
    make_images(tmp_path / "in", n=parts, size=64)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DEFECTS_DATABASE_URL": url,
        "DEFECTS_DATA_DIR": str(tmp_path / "data"),
        "DEFECTS_DEVICE": "cpu",
    }
    command = [sys.executable, "-c", "from training.cli import main; main()", "batch"]
    command += [str(tmp_path / "in"), "--line", "L", "--station", "S", "--workers", "2"]
    return command, env


def test_news_every_worker_hears_is_said_once(
    detector: str, trained: Trained, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`defects batch --watch --workers 2`: a recalibration or a promotion was said by each
    worker, twice on the station's console, where the README says a watch says it once."""
    import multiprocessing
    import threading

    from db.models import ModelVersion
    from inspection.parallel import _Heard, _news_to_dealer

    first = BatchInspection(detector, tmp_path / "store", "L", "S")
    second = BatchInspection(detector, tmp_path / "store", "", "", run_id=first.run_id)
    listening = {}
    for shard, share in enumerate((first, second)):
        heard, told = multiprocessing.Pipe(duplex=False)
        _news_to_dealer(share, lambda kind, payload, told=told: told.send((kind, payload)))
        listening[heard] = shard
    dealer = ParallelInspection.__new__(ParallelInspection)  # its listening only
    dealer._said = set()

    def news(threshold: float | None) -> list[str]:
        """Set the point (or promote another model), let both workers hear it: said."""
        if threshold is None:
            register_production_detector(detector, trained.weights, tmp_path / "m", "tiny-2")
        else:
            with session_scope(detector) as session:
                version = session.scalars(
                    select(ModelVersion).where(ModelVersion.name == "tiny")
                ).one()
                per_class = dict.fromkeys(version.thresholds["per_class"], threshold)
                version.thresholds = {**version.thresholds, "per_class": per_class}
        caplog.clear()
        for share in (first, second):
            share._follow_stored_point()
        deadline = time.monotonic() + 0.5
        dealer._listen(dict(listening), threading.Event(), None, _Heard(), deadline=deadline)
        return [r.getMessage() for r in caplog.records]

    try:
        assert news(0.9) == [
            "tiny was recalibrated: the next parts are judged at its new operating point"
        ]
        assert news(None) == [
            "tiny-2 is now the production detector; this station goes on judging with tiny until "
            "it is started again"
        ]
        assert len(news(0.8)) == 1
        assert len(news(0.9)) == 1  # back to a point left before: news again
    finally:
        first.inspector.close()
        second.inspector.close()

"""One inspection run spread over several processes, each a whole pipeline on its share of parts.

A single process is held back by Python's interpreter lock long before a GPU is: decoding,
NMS, verdicts and database rows of every part take turns on it (bench/results/inference_gpu.json:
the engine with the network replayed, not computed, made 658 parts/s on 16 cores;
inference_cpu_workers_ceiling.json: 660 parts/s in one process and 896 in two workers on 2
cores). Here this process only reads the source and deals the parts out; each worker process loads the model and
runs `BatchInspection` on its share, writing its own transactions into the one run.

Parts are dealt by content hash, so copies of a part always reach the same worker, whose own
bookkeeping judges them once; resuming after a crash is what it is for one process (each worker
commits whole chunks). Ctrl-C stops every worker after the chunk it is writing; a worker whose
dealer dies (kill -9) finishes the parts it holds and stops. A hot folder (`watch`) is one long
run: when the folder goes quiet the dealer passes WRITE_NOW on, and each worker writes the
frames it holds instead of waiting for a fuller chunk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path

from sqlalchemy import update

from db.models import InspectionRun, database_utcnow
from db.session import (
    DatabaseError,
    connection_dropped,
    connection_scope,
    retrying_races,
    session_scope,
)
from inspection.batch import (
    WRITE_NOW,
    BatchInspection,
    BatchSummary,
    FileKey,
    OnRecorded,
    SourceItem,
    content_key,
    discard_empty_run,
    found_weights,
    hot_folder_batches,
    model_file,
    open_run,
    through_outages,
    weights_there,
)
from inspection.engine import BackendChoice, PartResult, TileChoice
from inspection.errors import UserError
from inspection.judged import JudgedMover
from inspection.runtime import end_process
from inspection.settings import get_settings, share_network_threads, usable_cores

logger = logging.getLogger(__name__)

QUEUE_PER_WORKER = 256  # parts dealt ahead to each worker: a few batches, bounded memory
# Parts per message to a worker. One message per part costs the dealer more than reading and
# hashing the part (a pipe write and a feeder-thread hand-over each): on 16 cores the dealer,
# one process for every worker, became the limit of a run skipping parts it had judged.
DEAL_BATCH = 16
DEAL_WAIT_S = 0.1  # a part is held back for a fuller message at most this long


@dataclass(frozen=True)
class WorkerJob:
    """What a worker needs to open its share of the run (plain values: it crosses processes)."""

    url: str
    images_dir: Path
    run_id: int  # the run's line, station and model version are the worker's
    backend: BackendChoice
    device: str | None
    batch_size: int | None
    cores: tuple[int, ...] | None  # the cores this worker keeps to; None: no pinning
    threads: int = 1  # the threads its network runs on: its cores, or its share of them
    model: str | None = None  # a model file (--model FILE) that judges for the run's version
    launched_at: float = 0.0  # time.time() as the dealer started it (a clock both processes read)
    # --move-judged: (the source folder, DIR); each worker moves the files of the parts it
    # wrote, once written.
    move_judged: tuple[str, str] | None = None
    tile: TileChoice = "model"  # --tile: the grid large parts are judged in
    # Whether the worker works out and tells the repeats of its chunks: only the results feed
    # writes them, and each chunk with parts judged before costs a query of their records.
    repeats: bool = False


def share_cores(cores: list[int], workers: int) -> list[tuple[int, ...] | None]:
    """Each worker its own slice of the cores, so that their decoding threads (and on a CPU
    their network) do not fight over the same ones; with fewer cores than workers, no pinning."""
    if workers > len(cores) or not hasattr(os, "sched_setaffinity"):
        return [None] * workers
    size, extra = divmod(len(cores), workers)
    slices: list[tuple[int, ...] | None] = []
    start = 0
    for i in range(workers):
        end = start + size + (i < extra)
        slices.append(tuple(cores[start:end]))
        start = end
    return slices


def threads_each(cores: list[int], workers: int) -> int:
    """The threads each worker's network runs on where the workers are not pinned (more
    workers than cores): the cores divided among them, one at least."""
    return max(1, len(cores) // workers)


def take_share(job: WorkerJob) -> None:
    """A worker keeps to its cores, and its network (PyTorch's and ONNX Runtime's threads) to
    their number: unpinned, each of N workers ran on every core, N x cores threads."""
    if job.cores is not None:
        os.sched_setaffinity(0, job.cores)
    import torch

    torch.set_num_threads(job.threads)
    share_network_threads(job.threads)


def shard_of(item: SourceItem, workers: int) -> int:
    """The worker a part goes to: by its content, so copies meet in one worker (which then
    finds the hash on the item instead of hashing the bytes again)."""
    return int(content_key(item)[:12], 16) % workers


@contextlib.contextmanager
def _main_script_left_out() -> Iterator[None]:
    """While workers start: spawn would run the parent's main script again in each, to find
    objects pickled from it; a worker needs none, and a script without a `__main__` guard (or a
    Streamlit app, which takes the place of `__main__`) would run its whole top level there."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def _reason(exc: Exception) -> str:
    return str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _ToDealer:
    """A worker's words to its dealer, one whole message at a time on the pipe (the writer
    thread tells of each chunk it committed while the main thread tells the rest)."""

    def __init__(self, channel: Connection) -> None:
        self.channel = channel
        self.gone = threading.Event()  # (killed: the rows still matter, the messages do not)
        self._telling = threading.Lock()
        self._sending = threading.Event()  # the main thread is writing a message
        self._stop_held = threading.Event()

    def stop_heard(self, signum: int, frame: object) -> None:
        """Ctrl-C (or SIGTERM), raised at once unless the main thread is writing a message to
        the dealer: then once it is written. Cut in two, the message left the pipe unreadable
        after it, and the worker's last word (the parts it wrote) never reached the summary."""
        if self._sending.is_set():
            self._stop_held.set()
            return
        raise KeyboardInterrupt

    def tell(self, kind: str, payload: object) -> None:
        if self.gone.is_set():
            return
        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            self._sending.set()
        try:
            with self._telling:
                self.channel.send((kind, payload))
        except OSError:  # BrokenPipeError and kin
            self.gone.set()
        finally:
            if in_main:
                self._sending.clear()
        if in_main and self._stop_held.is_set():
            self._stop_held.clear()
            raise KeyboardInterrupt


# How often the dealer, waiting for its workers' words, looks whether a Ctrl-C was heard.
HEARING_S = 0.2


def _take_in(channel: Connection) -> tuple[str, object]:
    """One worker's message, whole."""
    return channel.recv()


@contextlib.contextmanager
def _stop_signals_held_off() -> Iterator[None]:
    """While workers start: each inherits SIGINT and SIGTERM ignored, through its interpreter's
    start and imports (a Ctrl-C there printed each worker's traceback), until `_worker` takes
    them as Ctrl-C. (Signal handlers can be changed from the main thread only.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {number: signal.signal(number, signal.SIG_IGN) for number in _STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in held.items():
            signal.signal(number, handler)


class _StopsBetweenMessages:
    """While the dealer listens to its workers: Ctrl-C (or SIGTERM taken as Ctrl-C) is heard at
    once and acted on between two messages. Raised where it landed, in the middle of reading a
    worker's message, it left the rest of that message in the pipe, the pipe unreadable after
    it, and that worker's last word (the parts it had written) missing from the summary. A
    second one while the first is acted on leaves at once. (Signal handlers can be changed from
    the main thread only: elsewhere, as before, it is raised where it lands.)"""

    def __init__(self) -> None:
        self.heard = threading.Event()
        self._replaced: dict[int, object] = {}

    def __enter__(self) -> _StopsBetweenMessages:
        if threading.current_thread() is threading.main_thread():
            for number in _STOP_SIGNALS:
                handler = signal.getsignal(number)
                if callable(handler):  # (ignored, or the system's default: left so)
                    self._replaced[number] = signal.signal(number, self._hear)
        return self

    def __exit__(self, *_: object) -> None:
        for number, handler in self._replaced.items():
            signal.signal(number, handler)  # type: ignore[arg-type]
        self._replaced.clear()

    def _hear(self, signum: int, frame: object) -> None:
        if self.heard.is_set():
            raise KeyboardInterrupt
        self.heard.set()


def _news_to_dealer(share: BatchInspection, tell: Callable[[str, object], None]) -> None:
    """A worker's news (a recalibration taken up, another model promoted) goes to the dealer,
    which says it once: every worker hears it, and `--workers 2` said each twice."""
    share.say = lambda key, message: tell("said", (key, message))


def _worker(
    job: WorkerJob, parts: multiprocessing.Queue, channel: Connection, stopping: ProcessEvent
) -> None:
    """A worker's whole life: open its share, inspect what it is dealt, report, stop.
    `stopping`, set by the dealer as the run stops, leaves the parts still dealt to it."""
    to_dealer = _ToDealer(channel)
    tell, dealer_gone = to_dealer.tell, to_dealer.gone
    # A service manager stops a station with SIGTERM to all its processes (systemd's
    # default): taken as Ctrl-C, so that the worker writes what it judged and says what it
    # wrote. Killed by it, the worker's parts were missing from the summary ("0 parts
    # inspected" over hundreds written).
    signal.signal(signal.SIGINT, to_dealer.stop_heard)
    signal.signal(signal.SIGTERM, to_dealer.stop_heard)
    # Here the interpreter has started and imported the product (torch, ultralytics...).
    imported_s = time.time() - job.launched_at
    try:
        take_share(job)
        share = BatchInspection(
            job.url,
            job.images_dir,
            line="",  # those of the run
            station="",
            backend=job.backend,
            device=job.device,
            batch_size=job.batch_size,
            run_id=job.run_id,
            model=job.model,
            mover=JudgedMover(Path(job.move_judged[0]), Path(job.move_judged[1]))
            if job.move_judged
            else None,
            tile=job.tile,
        )
    except KeyboardInterrupt:  # stopped while loading the model: nothing judged
        tell("stopped", BatchSummary(job.run_id, ""))
        return
    except Exception as exc:  # noqa: BLE001 - reported to the dealer, which stops the run
        tell("failed", _reason(exc))
        return
    _news_to_dealer(share, tell)
    if (tiling := share.inspector.tiling_note()) is not None:  # (the dealer has no model)
        share.say("tiling", tiling)
    tell("ready", (imported_s, time.time() - job.launched_at))

    # The dealer's messages are taken off the pipe by a thread of their own: a dealer killed
    # half-way through writing one (a message larger than the pipe holds) would leave a reader
    # waiting for the rest forever, and this worker's own parts unwritten.
    inbox: queue.Queue[list[SourceItem | None] | None] = queue.Queue(maxsize=2)

    def take_in() -> None:
        while (message := parts.get()) is not None:
            inbox.put(message)
        inbox.put(None)

    threading.Thread(target=take_in, name="inbox", daemon=True).start()

    # From the first part dealt to the last: seconds spent waiting for the dealer. A worker
    # that waits much is fed too slowly (the dealer is the limit), one that never waits is the
    # limit itself: told to the dealer with the summary, for the run's report.
    waiting = {"first_part": 0.0, "waited": 0.0}

    def dealt() -> Iterator[SourceItem]:
        """The dealt parts; WRITE_NOW where the source went quiet (None in a message, since
        the marker is known by identity, which pickling does not keep)."""
        while True:
            if stopping.is_set():
                return
            asked = time.perf_counter()
            try:
                dealt_items = inbox.get(timeout=1.0)
            except queue.Empty:
                if waiting["first_part"]:
                    waiting["waited"] += time.perf_counter() - asked
                dealer = multiprocessing.parent_process()
                if dealer_gone.is_set() or dealer is None or not dealer.is_alive():
                    return  # the dealer is gone: write what was judged, stop
                continue
            if waiting["first_part"]:
                waiting["waited"] += time.perf_counter() - asked
            else:
                waiting["first_part"] = time.perf_counter()
            if dealt_items is None:
                return
            for entry in dealt_items:
                if stopping.is_set():  # (the chunk it holds is judged and written)
                    return
                yield WRITE_NOW if entry is None else entry

    def on_recorded(results: list[PartResult], repeats: list[PartResult]) -> None:
        """A chunk's verdicts, told once committed (never one the database does not hold),
        in one message: a batch's chunk at once, a watch's frame as soon as it is written."""
        if results:
            tell("results", results)
        if repeats:
            tell("repeats", repeats)

    try:
        # (Parts judged before are told at once, a count a chunk: the dealer's progress.)
        summary = share.run(
            dealt(),
            on_skipped=lambda n: tell("skipped", n),
            on_recorded=on_recorded,
            repeats=job.repeats,
        )
    except KeyboardInterrupt:  # (what was committed was told by the writer thread)
        tell("stopped", share.summary)
        share.inspector.close()
        return
    except Exception as exc:  # noqa: BLE001 - reported to the dealer, which stops the run
        tell("failed", _reason(exc))
        share.inspector.close()
        return
    # Everything is written: said before the model is let go, so that the run's clock stops
    # with the work, not with the processes' exit.
    if waiting["first_part"]:
        tell("waited", (waiting["waited"], time.perf_counter() - waiting["first_part"]))
    tell("done", summary)
    share.inspector.close(wait=True)
    channel.close()
    end_process(0)  # everything is written and said: no teardown (a GPU context's too)


@dataclass
class _Heard:
    """What the workers have said so far, beyond their results and the run's `moments`."""

    stopped: bool = False
    failure: str | None = None


class ParallelInspection:
    """An inspection run on a line and station whose parts are judged by `workers` processes.

    The same results as `BatchInspection` (the same rows, one run), for sources large enough
    that one process is the limit; `run` takes a source once."""

    def __init__(
        self,
        url: str,
        images_dir: Path,
        line: str,
        station: str,
        workers: int,
        model: str | None = None,
        operator: str = "",
        source: str = "",
        backend: BackendChoice = "auto",
        device: str | None = None,
        batch_size: int | None = None,
        move_judged: tuple[Path, Path] | None = None,
        tile: TileChoice = "model",
    ) -> None:
        """`move_judged`: (the source folder, DIR) of `--move-judged`; `tile`: `--tile`."""
        if workers < 2:
            raise UserError("a parallel run needs at least 2 worker processes")
        self._said: set[str] = set()  # the news the workers told, said once

        opening = str(uuid.uuid4())  # (one for every try: a committed try's run is found)

        def opened() -> tuple[str, str]:
            with session_scope(url) as session:  # (again where a new line was raced for)
                run, version = open_run(
                    session, line, station, model, operator, source, opening=opening
                )
                self.run_id, self.model_name = run.id, version.name
                return version.file_path, version.sha256

        # (A connection dropped as the run opens is waited for, as a single process's is.)
        registered = through_outages(
            lambda: retrying_races(opened),
            get_settings().db_outage_seconds,
            threading.Event(),
            connection_dropped,
        )
        try:
            # (Found after the run's transaction: a file found by hash is hashed, which held
            # SQLite's write lock of the new run.)
            weights_there(self.model_name, model_file(model) or found_weights(*registered))
        except (UserError, OSError):
            # (The run was left open with no part, the station's latest on the Live page and
            # in `defects status` for good, as one process's run is not.)
            discard_empty_run(url, self.run_id)
            raise
        self.url = url
        self.workers = workers
        usable = usable_cores()
        cores = share_cores(usable, workers)
        named_file = model_file(model)
        self._jobs = [
            WorkerJob(
                url,
                images_dir,
                self.run_id,
                backend,
                device,
                batch_size,
                cores[i],
                len(cores[i]) if cores[i] else threads_each(usable, workers),
                str(named_file.resolve()) if named_file else None,
                move_judged=(str(move_judged[0]), str(move_judged[1])) if move_judged else None,
                tile=tile,
            )
            for i in range(workers)
        ]
        self.summary = BatchSummary(self.run_id, self.model_name)
        self.processes: list[multiprocessing.process.BaseProcess] = []  # once started
        self._parts: list[multiprocessing.Queue] = []  # to each worker, from the dealer
        self._channels: list[tuple[Connection, Connection]] = []  # from each worker
        # Set as the run stops (Ctrl-C, a failed worker): every worker leaves the parts still
        # queued for it, judged when the same command resumes. A worker that missed the
        # Ctrl-C (still loading its model, or the dealer alone was stopped) judged its whole
        # queue first, up to QUEUE_PER_WORKER parts, for a minute on a slow CPU.
        self._stopping: ProcessEvent | None = None
        self._ran = False
        self._on_recorded: OnRecorded | None = None  # (the run's: the results feed)
        self._repeats = False  # (whether the workers were started to tell repeats)
        # Seconds from the workers' start to each one's model loaded: the price of a fresh
        # interpreter per worker, paid once per run, shown so that it is not mistaken for a slow line.
        self.ready_after_s: list[float] = []
        # Of each worker: (seconds to its interpreter started and the product imported, to its
        # model loaded), as the worker measured them: where a slow start goes.
        self.start_phases_s: list[tuple[float, float]] = []
        # Results that came once every worker was ready, and the seconds from then to the last:
        # the rate of a long run, which a short one's start-up hides.
        self.after_all_ready: tuple[int, float] = (0, 0.0)
        # Who holds the run back. Of each worker that finished: (seconds it waited for parts,
        # seconds from its first part to its last written: in a short run, mostly the others'
        # start); of the dealer: seconds it waited for room in a worker's queue, and from every
        # worker ready to its last part dealt.
        self.worker_waits: list[tuple[float, float]] = []
        # time.perf_counter() when the workers were started ("launched"), the first and the
        # last was ready, the last had written everything ("last_done") and all had exited:
        # where the wall time of a run goes, beyond its throughput.
        self.moments: dict[str, float] = {}
        self.dealer_wait: tuple[float, float] | None = None  # (None: dealing broke off)

    def start(self, repeats: bool = False) -> None:
        """Start the worker processes, which then import and load the model (seconds each):
        a caller with work of its own before `run` (listing a large folder) does it meanwhile,
        and calls `close` however it ends. `run` starts them if this has not. `repeats`: the
        run's `on_recorded` is to hear repeats (a results feed); without, the workers do not
        work them out."""
        if self.processes:
            return
        self._repeats = repeats
        # Workers start as fresh interpreters: CUDA cannot be used in a forked child, and a
        # fork server would hand them the environment (DEFECTS_* settings) of its own start.
        context = multiprocessing.get_context("spawn")
        try:
            # (One at a time, so that those made before a refusal are closed with the run.)
            for _ in range(self.workers):
                self._parts.append(context.Queue(maxsize=QUEUE_PER_WORKER // DEAL_BATCH))
                # A channel back from each worker: one killed while sending spoils only its own.
                self._channels.append(context.Pipe(duplex=False))
            self._stopping = context.Event()
        except Exception as exc:
            # (Too many open files, no semaphores left: the OS's error, before any worker.)
            self._abandon_start([])
            raise UserError(
                f"could not make the queues and pipes of {self.workers} worker processes "
                f"({_reason(exc)}); nothing was inspected: run it again with fewer --workers, "
                "or without"
            ) from exc
        # Not daemons: a worker may decode in processes of its own (DEFECTS_PREPARE_PROCESSES);
        # `run` (or `close`) joins them, or stops them, however it ends.
        launched_at = time.time()
        self.moments = {"launched": time.perf_counter()}
        self.processes = [
            context.Process(
                target=_worker,
                args=(
                    dataclasses.replace(job, launched_at=launched_at, repeats=repeats),
                    self._parts[i],
                    self._channels[i][1],
                    self._stopping,
                ),
            )
            for i, job in enumerate(self._jobs)
        ]
        started: list[multiprocessing.process.BaseProcess] = []
        try:
            with _main_script_left_out(), _stop_signals_held_off():
                for process, (_, sending) in zip(self.processes, self._channels, strict=True):
                    process.start()
                    started.append(process)
                    sending.close()  # the worker's end only: its exit then reads as end of input
        except BaseException as exc:
            self._abandon_start(started)
            if not isinstance(exc, Exception):
                raise
            raise UserError(
                f"could not start worker process {len(started) + 1} of {self.workers} "
                f"({_reason(exc)}); nothing was inspected: run it again with fewer --workers, "
                "or without"
            ) from exc

    def _abandon_start(self, started: list[multiprocessing.process.BaseProcess]) -> None:
        """A start refused part-way (too many processes or open files, out of memory, a job
        that cannot be pickled): the workers already started, if any, are killed, since none
        was dealt a part or wrote a row (`close` joined the one never started: "can only join
        a started process"), the queues and pipes made so far closed, and the run that never
        began removed, as one whose model would not load is."""
        if self._stopping is not None:
            self._stopping.set()
        for process in started:
            process.kill()
        for process in started:
            process.join(timeout=30)
        for target in self._parts:
            target.cancel_join_thread()
        for pair in self._channels:
            for end in pair:
                end.close()
        self._release_queues()
        self.processes = []
        self._ran = True  # (nothing left to close)
        with contextlib.suppress(DatabaseError):
            discard_empty_run(self.url, self.run_id)

    def close(self) -> None:
        """Stop workers that `start` started and no `run` took over (the caller failed, or was
        interrupted, before it): each is told there is nothing to do, then waited for."""
        if not self.processes or self._ran:
            return
        for target in self._parts:
            with contextlib.suppress(queue.Full, ValueError, OSError):
                target.put(None, timeout=1.0)
            target.cancel_join_thread()
        self._join_workers()
        self._release_queues()
        self._ran = True  # (nothing left to close)
        self._mark_finished()  # a run that judged nothing, ended

    def _join_workers(self) -> None:
        for process in self.processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)

    def _release_queues(self) -> None:
        """Let the queues go: their feeder threads end now, not at a teardown that a command
        skips (end_process), so that their semaphores are released with the queues instead of
        reported as leaked when the command ends."""
        for target in self._parts:
            target.close()
        self._parts, self._channels = [], []

    def _mark_finished(self) -> None:
        def mark() -> None:
            with connection_scope(self.url) as connection:
                connection.execute(
                    update(InspectionRun)
                    .where(InspectionRun.id == self.run_id)
                    .values(finished_at=database_utcnow(connection))
                )

        # (As the workers' writes do, through a database that is away for a while.)
        through_outages(mark, get_settings().db_outage_seconds, threading.Event())

    def run(
        self,
        items: Iterable[SourceItem],
        on_result: Callable[[PartResult], None] | None = None,
        stop: threading.Event | None = None,
        on_skipped: Callable[[int], None] | None = None,
        on_recorded: OnRecorded | None = None,
    ) -> BatchSummary:
        """Deal `items` out to the workers and gather their results; returns once every worker
        has written its last chunk. A worker that fails stops the run with its reason. `stop`,
        set when the run stops, is also the one a hot folder's `items` wait on. `on_skipped`
        hears how many parts a worker found judged already, as `BatchInspection.run`'s does;
        `on_result` and `on_recorded` hear of each chunk a worker has committed."""
        self._on_recorded = on_recorded
        if self._ran:
            raise RuntimeError("a ParallelInspection runs once")
        if self.processes and on_recorded is not None and not self._repeats:
            # (Its repeats would be missing without a word: a feed's lines lost.)
            raise RuntimeError("workers started without repeats: start(repeats=True)")
        self.start(repeats=on_recorded is not None)
        self._ran = True
        parts, channels = self._parts, self._channels
        started = self.moments["launched"]
        # The dealing starts here: the throughput's clock runs from then or the first worker
        # ready, whichever is later.
        self.moments["dealing"] = time.perf_counter()
        stop = stop or threading.Event()
        dealing_error: list[BaseException] = []

        # Seconds the dealer waited for room in a queue once every worker was ready (before,
        # it waits for their start).
        blocked = [0.0]
        heard = _Heard()

        def send(shard: int, message: list[SourceItem | None] | None) -> bool:
            """Into the shard's queue unless the run is stopping; False when it is."""
            if stop.is_set():  # (a queue with room took parts dealt after Ctrl-C)
                return False
            with contextlib.suppress(queue.Full):
                parts[shard].put_nowait(message)
                return True
            asked = time.perf_counter()
            counted = "all_ready" in self.moments
            try:
                while not stop.is_set():
                    try:
                        parts[shard].put(message, timeout=0.5)
                        return True
                    except queue.Full:
                        continue
                return False
            finally:
                if counted:
                    blocked[0] += time.perf_counter() - asked

        def deal() -> None:
            held: list[list[SourceItem | None]] = [[] for _ in range(self.workers)]
            held_since = [0.0] * self.workers
            dealt_since_quiet = [False] * self.workers  # (to whom WRITE_NOW is passed on)
            try:
                for item in items:
                    if item is WRITE_NOW:  # the source is quiet: nothing waits for a fuller message
                        for i in range(self.workers):
                            if dealt_since_quiet[i] or held[i]:
                                message, held[i], dealt_since_quiet[i] = [*held[i], None], [], False
                                if not send(i, message):
                                    return
                        continue
                    shard = shard_of(item, self.workers)
                    if not held[shard]:
                        held_since[shard] = time.monotonic()
                    held[shard].append(item)
                    now = time.monotonic()
                    for i, message in enumerate(held):
                        if message and (
                            len(message) >= DEAL_BATCH or now - held_since[i] > DEAL_WAIT_S
                        ):
                            held[i], dealt_since_quiet[i] = [], True
                            if not send(i, message):
                                return
                for i, message in enumerate(held):
                    if message and not send(i, message):
                        return
                if "all_ready" in self.moments:
                    self.dealer_wait = (blocked[0], time.perf_counter() - self.moments["all_ready"])
                else:  # every part was dealt before the last worker was ready: never waited
                    self.dealer_wait = (0.0, 0.0)
            except BaseException as exc:  # noqa: BLE001 - a bad source: raised in run()
                dealing_error.append(exc)
            finally:
                for target in parts:  # each worker stops once it has what it was dealt
                    # (full: a stopped or dead worker, which is not waited for)
                    with contextlib.suppress(queue.Full):
                        target.put(None, timeout=5.0)

        dealer = threading.Thread(target=deal, name="dealer", daemon=True)
        listening = {receiving: i for i, (receiving, _) in enumerate(channels)}
        stopped_loading = False  # Ctrl-C before every worker was ready: a run that never began
        with _StopsBetweenMessages() as stops:
            try:
                dealer.start()
                self._listen(listening, stop, on_result, heard, on_skipped=on_skipped, stops=stops)
            except KeyboardInterrupt:
                # The workers got the same Ctrl-C, or are told here: each writes what it holds
                # and says so, heard here for the summary; a second Ctrl-C leaves at once.
                stopped_loading = "all_ready" not in self.moments
                self._stop_workers(stop)
                heard.stopped = True
                self._listen(listening, stop, on_result, heard, time.monotonic() + 30, on_skipped)
                raise
            finally:
                stop.set()
                dealer.join(timeout=10)
                for (
                    target
                ) in parts:  # parts dealt to a stopped worker are left, not flushed at exit
                    target.cancel_join_thread()
                self._join_workers()
                self.moments["exited"] = time.perf_counter()
                self._release_queues()
                # What a worker said after the listening above gave up (a slow machine's last
                # chunk after Ctrl-C): its pipe holds it until the end, read now, so the summary
                # counts every part written. (Every worker has exited: each pipe ends at once.)
                self._listen(listening, stop, on_result, heard, time.monotonic() + 10, on_skipped)
                # Until the last worker's everything-written, not its exit (a GPU's context and
                # the interpreter take a while to go); until now where the run broke off.
                # (The throughput's clock runs from the first worker ready.)
                ended = self.moments.get("last_done") if heard.failure is None else None
                ended = None if heard.stopped else ended
                began = max(self.moments.get("first_ready", started), self.moments["dealing"])
                self.summary.seconds += (ended or time.perf_counter()) - began
                self._mark_finished()
                # A run that could not start, as one process's whose model would not load, is
                # removed where no part was written (`discard_empty_run` counts them again, once
                # every worker has exited): it stood open on the Live page and in `defects status`.
                # So is one stopped (Ctrl-C) while its workers loaded; a watch stopped after hours
                # of an empty folder keeps its run. (A database gone away keeps it too, and the
                # run's own reason is what is said.)
                never_began = heard.failure is not None or dealing_error or stopped_loading
                if never_began and not self.summary.inspected:
                    with contextlib.suppress(DatabaseError):
                        discard_empty_run(self.url, self.run_id)
        if heard.stopped or stops.heard.is_set():  # (a Ctrl-C heard as the run ended, too)
            raise KeyboardInterrupt
        if heard.failure is not None:
            if not self.summary.inspected and "all_ready" not in self.moments:
                # A worker that could not start (its model refused, say): nothing was written,
                # and the same command again stops the same way until what it says is done.
                raise UserError(f"the run stopped: {heard.failure}")
            raise UserError(
                f"the run stopped: {heard.failure}; what was written is kept, run it again to resume"
            )
        if dealing_error:
            raise dealing_error[0]
        return self.summary

    def watch(
        self,
        folder: Path,
        stop: threading.Event,
        on_result: Callable[[PartResult], None] | None = None,
        first: Iterable[SourceItem] = (),
        known: set[FileKey] | None = None,
        poll_seconds: float = 1.0,
        settle_seconds: float = 0.5,
        on_recorded: OnRecorded | None = None,
    ) -> BatchSummary:
        """`first` (the folder as it was), then the files that appear in `folder` until `stop`
        is set (or Ctrl-C), in one run over the workers, whose model is loaded once."""

        def items() -> Iterator[SourceItem]:
            yield from first
            yield WRITE_NOW
            for ready in hot_folder_batches(folder, stop, poll_seconds, settle_seconds, known):
                yield from ready
                yield WRITE_NOW

        if not folder.is_dir():  # (said before any worker starts)
            raise UserError(f"hot folder not found: {folder}")
        return self.run(items(), on_result, stop, on_recorded=on_recorded)

    def who_waited(self) -> str | None:
        """Whether the dealer or the workers held the run back, from what each waited for;
        None before a run with a finished worker."""
        spans = [(waited, span) for waited, span in self.worker_waits if span > 0]
        if not spans or self.dealer_wait is None:
            return None
        workers = sum(w for w, _ in spans) / sum(s for _, s in spans)
        dealer_waited, dealer_span = self.dealer_wait
        if dealer_span <= 0:
            return (
                f"the workers waited for parts {workers:.0%} of their time; the dealer had dealt "
                "every part before the last worker was ready: the workers are the limit"
            )
        dealer = dealer_waited / dealer_span
        if workers > 0.2 and dealer < 0.2:
            verdict = (
                "the dealer (one process reading, hashing and dealing every part) is the limit"
            )
        elif dealer > 0.5 and workers < 0.2:
            verdict = "the workers are the limit"
        else:
            verdict = "neither is clearly the limit"
        return (
            f"the workers waited for parts {workers:.0%} of their time, the dealer for room in "
            f"their queues {dealer:.0%} of its: {verdict}"
        )

    def _listen(
        self,
        listening: dict[Connection, int],
        stop: threading.Event,
        on_result: Callable[[PartResult], None] | None,
        heard: _Heard,
        deadline: float | None = None,
        on_skipped: Callable[[int], None] | None = None,
        stops: _StopsBetweenMessages | None = None,
    ) -> None:
        """Take in what the workers say until each has gone (or the deadline passes). With
        `stops`, a Ctrl-C it heard is raised here, between two messages."""
        while listening:
            if stops is not None and stops.heard.is_set():
                raise KeyboardInterrupt
            timeout = HEARING_S if deadline is None else min(HEARING_S, deadline - time.monotonic())
            if timeout <= 0:
                return
            for channel in wait(list(listening), timeout):
                try:
                    kind, payload = _take_in(channel)  # type: ignore[arg-type]
                except EOFError:  # the worker is gone: after its last word, or killed
                    worker = self.processes[listening.pop(channel)]  # type: ignore[call-overload]
                    worker.join(timeout=30)
                    if worker.exitcode != 0 and heard.failure is None:
                        heard.failure = f"a worker process died (exit code {worker.exitcode})"
                        self._stop_workers(stop)  # the others write what they hold and stop
                    continue
                if kind == "ready":
                    # As the worker timed it: its word may wait in the pipe until the dealing
                    # starts (the folder listed meanwhile).
                    ready_after = payload[1]
                    ready_at = self.moments["launched"] + ready_after
                    self.ready_after_s.append(round(ready_after, 2))
                    self.start_phases_s.append(payload)
                    # The clock starts with the first model (words may come out of order).
                    first = self.moments.get("first_ready", ready_at)
                    self.moments["first_ready"] = min(first, ready_at)
                    if len(self.ready_after_s) == self.workers:
                        self.moments["all_ready"] = max(ready_at, self.moments["dealing"])
                elif kind == "repeats":
                    if self._on_recorded:
                        self._on_recorded([], payload)
                elif kind == "results":
                    if "all_ready" in self.moments and payload:
                        parts = self.after_all_ready[0] + len(payload)
                        since = time.perf_counter() - self.moments["all_ready"]
                        self.after_all_ready = (parts, since)
                    for result in payload:
                        # (An error's time is not a verdict's, as in one process: a file
                        # that is not an image pulled the run's percentiles its way.)
                        if result.latency_ms is not None and result.verdict != "error":
                            self.summary.add_latency(result.latency_ms)
                        if on_result:
                            on_result(result)
                    if self._on_recorded:
                        self._on_recorded(payload, [])
                elif kind == "skipped":
                    if on_skipped:
                        on_skipped(payload)
                elif kind == "waited":
                    self.worker_waits.append(payload)
                elif kind == "said":
                    key, message = payload
                    if key not in self._said:
                        self._said.add(key)
                        logger.warning("%s", message)
                elif kind in ("done", "stopped"):
                    heard.stopped |= kind == "stopped"
                    self.moments["last_done"] = time.perf_counter()
                    self._merge(payload)
                else:  # failed
                    heard.failure = heard.failure or payload
                    self._stop_workers(stop)

    def _stop_workers(self, stop: threading.Event) -> None:
        """The dealer stops dealing, and the workers taking what was dealt."""
        stop.set()
        if self._stopping is not None:
            self._stopping.set()

    def _merge(self, share: BatchSummary) -> None:
        self.summary.seen += share.seen
        self.summary.inspected += share.inspected
        self.summary.skipped += share.skipped
        self.summary.rejudged += share.rejudged
        self.summary.errors += share.errors
        self.summary.failed += share.failed
        self.summary.moved += share.moved
        self.summary.moved_errors += share.moved_errors
        self.summary.not_moved += share.not_moved
        self.summary.failed_by_class.update(share.failed_by_class)
        self.summary.errors_by_reason.update(share.errors_by_reason)

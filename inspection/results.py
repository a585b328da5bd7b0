"""Each part's verdict as a line of JSON once it is recorded (`defects batch --results FILE`):
what a line's reject gate, PLC bridge or MES reads, one part at a time, without querying the
database. The database stays the record; this is the feed.

One object per line, appended and flushed as each chunk of parts is committed to the database,
never before: a line always stands for a verdict the database holds (written before, a crash or
a database gone between the two left a line for a verdict never kept, and the part, judged
again, a second line). A reader following the file (`tail -F`, a named pipe) sees it at once.

Every file a run reads gets one line, except a part an earlier run recorded that was in the
source as the run began (a batch or a watch started again: its line was written by the run that
judged it). A file whose part was recorded before it (a copy, a frame a watch takes whose bytes
an earlier one had, a part another station recorded a moment before, a file `--move-judged`
moves after a stop) gets the verdict on record, with `"repeat": true`: the line controller
waiting on that file hears of it.

FILE a named pipe: the run waits at its start for a reader. Its writes never wait after that
(the pipe is written non-blocking, by a thread of its own): a reader that stops reading or leaves
must not stop the line from judging. Lines the pipe cannot take are held for the reader, up to
`HELD_BYTES`, then the oldest held are dropped, said in a warning (their verdicts are in the
database); a reader that closes the pipe is said, and the lines go on, the held ones first, to
the next reader that opens it. A regular file is written as it comes: a full disk stops the run.

Each line is numbered (`seq`: 1, 2, 3... within its run, in the order written, repeats
included), so that a reader sees a gap where lines were dropped for it; lines lost in a crash are
the run's last and leave no gap, and a run started again is a new run, numbered from 1.

`judged_at` is this station's clock when the line is written: the clock its line controller
shares, by which it matches a line to the part in front of the camera. The database stamps its
record by its own clock (`database_utcnow`), which may differ.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import select
import stat
import threading
import time
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from inspection.engine import PartResult
from inspection.errors import UserError
from inspection.images import sync_folder, write_fix

logger = logging.getLogger(__name__)

# Lines held in memory for a named pipe's reader that is behind (beyond the pipe's own buffer)
# or gone: enough for a reader that pauses to catch up, bounded for one that never comes back.
HELD_BYTES = 16 * 1024 * 1024
# At the run's end, how long the lines still held wait for the reader to take more of them.
CLOSE_GRACE_S = 3.0
# How often the sender looks at a full pipe again, or for a reader come back.
_POLL_S = 0.2
# A warning of dropped lines at most this often (the first at once), with the count since.
_DROPS_SAID_EVERY_S = 60.0


class _Found(Protocol):
    """A detection as the engine gives it or as the database keeps it (a Prediction)."""

    class_name: str
    confidence: float
    x1: float | None
    y1: float | None
    x2: float | None
    y2: float | None
    counted: bool


def counted_defects(found: Iterable[_Found]) -> list[dict[str, Any]]:
    """The detections that fail a part, as `defects inspect --json` and the results feed
    write them alike."""
    return [
        {
            "class": d.class_name,
            "confidence": round(d.confidence, 4),
            "box": [round(v, 1) for v in (d.x1, d.y1, d.x2, d.y2) if v is not None],
        }
        for d in found
        if d.counted
    ]


def shown_latency(latency_ms: float | None) -> float | None:
    """A part's latency to 0.1 ms, as `defects inspect --json` and the results feed write it
    alike: a finer figure is noise, and the same part must read the same in both."""
    return None if latency_ms is None else round(latency_ms, 1)


def result_line(
    result: PartResult, line: str, station: str, run_id: int, seq: int, repeat: bool = False
) -> dict[str, Any]:
    """A part's verdict as the feed writes it: the fields of `defects inspect --json`, with
    where and when it was judged, its place among the run's lines (`seq`), and whether it
    repeats a verdict recorded before."""
    failed = result.failed_classes
    return {
        "part": result.name,
        "sha256": result.content_hash,
        "verdict": result.verdict,
        "failed_classes": failed,
        # (A fail with no detection counted: the part classifier alone failed it.)
        "failed_by_part_classifier": result.verdict == "fail" and not failed,
        "defect_probability": result.defect_probability,
        "defects": counted_defects(result.detections),
        "latency_ms": shown_latency(result.latency_ms),
        "error": result.error,
        "line": line,
        "station": station,
        "run": run_id,
        # (1, 2, 3... within the run, in the order written: a reader sees a gap where lines
        # were dropped or lost.)
        "seq": seq,
        "repeat": repeat,
        "judged_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        # (Last: a part a model fired all over keeps its most confident counted boxes; how
        # many more there were, 0 for none, null for an error.)
        "boxes_left_out": result.boxes_left_out,
    }


class _PipeSender:
    """The lines for a named pipe, held in order and sent by a thread of their own through the
    pipe opened non-blocking: the station's write only queues a line, so a reader that hangs
    or leaves never holds up judging. A line is sent whole or not at all (one begun is
    finished, never dropped): a reader never gets a broken line."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd
        self.limit = HELD_BYTES
        self._grace_s = CLOSE_GRACE_S
        self._lines: deque[bytes] = deque()
        self._size = 0
        self._head_sent = 0  # bytes of the first held line already in the pipe
        self._busy = False  # the thread is writing the first held line
        self._closing_since: float | None = None
        self._progress_at = time.monotonic()
        self._ready = threading.Condition()
        self.dropped = 0  # every line the reader never got
        self.dropped_behind = 0  # of them, dropped past the bound while the run went on
        self.end_reason = ""  # why the lines held at the run's end were not waited for longer
        self._unsaid = 0
        self._said_at: float | None = None
        self._gone = False  # (the reader left, said once until one takes a line again)
        self._thread = threading.Thread(target=self._run, name="results-feed", daemon=True)
        self._thread.start()

    def put(self, data: bytes) -> None:
        """Hold `data` (one line) to be sent; past the bound, drop the oldest held."""
        unsaid = 0
        with self._ready:
            self._lines.append(data)
            self._size += len(data)
            while self._size > self.limit:
                first = 1 if self._head_sent or self._busy else 0  # (a line begun is finished)
                if first >= len(self._lines):
                    break
                self._size -= len(self._lines[first])
                del self._lines[first]
                self.dropped += 1
                self.dropped_behind += 1
                self._unsaid += 1
            now = time.monotonic()
            if self._unsaid and (
                self._said_at is None or now - self._said_at >= _DROPS_SAID_EVERY_S
            ):
                unsaid, self._unsaid, self._said_at = self._unsaid, 0, now
            self._ready.notify()
        if unsaid:
            logger.warning(
                "the results feed %s is not being read (its reader is behind, or gone): %d "
                "line%s dropped, the oldest held first; judging goes on, and their verdicts are "
                "recorded in the database (the History page; the same command with --export "
                "csv)",
                self.path,
                unsaid,
                "" if unsaid == 1 else "s",
            )

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._lines and self._closing_since is None:
                    self._ready.wait()
                if not self._lines or self._given_up():
                    return
                data = self._lines[0][self._head_sent :]
                self._busy = True
            sent = 0
            try:
                sent = self._send(data)
            finally:
                with self._ready:
                    self._busy = False
                    if sent:
                        self._progress_at = time.monotonic()
                        if self._gone:  # (said once it takes a line again)
                            self._gone = False
                            logger.warning(
                                "the results feed %s has a reader again: the lines held for it "
                                "follow",
                                self.path,
                            )
                        self._head_sent += sent
                        if self._head_sent == len(self._lines[0]):
                            self._size -= len(self._lines.popleft())
                            self._head_sent = 0

    def _given_up(self) -> bool:
        """At the run's end, the reader took nothing for the grace (or the lines held have
        waited ten graces): what is left is dropped, not waited for."""
        if self._closing_since is None:
            return False
        now = time.monotonic()
        if now - self._closing_since > 10 * self._grace_s:
            self.end_reason = f"its reader was still taking them after {10 * self._grace_s:g} s"
        elif now - max(self._progress_at, self._closing_since) > self._grace_s:
            self.end_reason = (
                f"no reader had the pipe open for {self._grace_s:g} s"
                if self._fd is None
                else f"its reader took none of them for {self._grace_s:g} s"
            )
        else:
            return False
        return True

    def _send(self, data: bytes) -> int:
        """As much of `data` as the pipe takes now (0: full, or no reader), waiting at most a
        poll for it to take some."""
        if self._fd is None and not self._reopen():
            time.sleep(_POLL_S)
            return 0
        fd = self._fd
        assert fd is not None
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if not poller.poll(_POLL_S * 1000):
            return 0  # (full: the reader is behind)
        try:
            return os.write(fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            # The reader closed the pipe (EPIPE), or it failed. Closed here too, so that the
            # pipe's unread bytes go with it and the next reader begins at a whole line.
            with self._ready:
                self._close_fd()
                self._head_sent = 0
            if self._gone:
                return 0
            self._gone = True
            reason = (
                "its reader closed the pipe"
                if exc.errno == errno.EPIPE
                else f"it cannot be written ({exc.strerror or exc})"
            )
            logger.warning(
                "the results feed %s: %s; judging goes on, every verdict recorded in the "
                "database; its lines are held for a reader that opens the pipe again, the "
                "oldest dropped past the bound",
                self.path,
                reason,
            )
            return 0

    def _reopen(self) -> bool:
        """The pipe opened again, where a reader has it open (without one, no wait: ENXIO)."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_APPEND)
        except OSError:
            return False
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):  # (it was replaced: not written into)
            os.close(fd)
            return False
        with self._ready:
            self._fd = fd
        return True

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Let the lines held go to the reader while it takes them (up to the grace), then
        drop what is left: the run ends whether or not its reader reads."""
        with self._ready:
            self._closing_since = time.monotonic()
            self._ready.notify()
        self._thread.join()
        with self._ready:
            self.dropped += len(self._lines)  # (the run's end says the total)
            self._lines.clear()
            self._close_fd()  # (what the pipe holds stays for the reader, then its end)


class ResultsFeed:
    """The JSON Lines file a batch appends each verdict to."""

    def __init__(self, path: Path) -> None:
        if path.is_dir():
            raise UserError(f"--results {path} is a folder: give the file's name")
        self.path = path
        self._pipe: _PipeSender | None = None
        self._fd: int | None = None  # (a regular file's)
        # The last line's sequence number: numbered and written under one lock, so that the
        # numbers follow the order the lines go out in, whichever thread writes.
        self._seq = 0
        self._writing = threading.Lock()
        if path.is_fifo():
            try:
                # Waits for a reader to open it (the run says so); written non-blocking after.
                fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            except OSError as exc:
                raise UserError(f"--results {path}: cannot open it: {exc.strerror or exc}") from exc
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.set_blocking(fd, False)
                self._pipe = _PipeSender(path, fd)
                return
            os.close(fd)  # (no longer a pipe: written as a file)
        created = not path.exists()
        try:
            # Written straight to the file, each line as it comes: no buffer holds part of a
            # line that a full disk cut short, to be written after it at the close.
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            if created:  # (its name on disk with its first lines, not lost with them)
                sync_folder(path.absolute().parent)
        except OSError as exc:
            raise UserError(f"--results {path}: cannot open it: {exc.strerror or exc}") from exc
        if _ends_mid_line(path):
            # A line an earlier run began and could not finish (its disk full): ended here, so
            # that this run's first line is not glued to it, and each line after it is whole.
            self._append(b"\n")

    @property
    def dropped(self) -> int:
        """Lines a named pipe's reader never got (behind past the bound, or gone), their
        verdicts in the database; all of them once the feed is closed."""
        return self._pipe.dropped if self._pipe is not None else 0

    def why_not_sent(self) -> str:
        """Why the lines counted in `dropped` were not sent, once the feed is closed: dropped
        past the bound while the run went on, or still held at its end and not waited for
        longer. Said apart: a reader that stopped at the run's end was told it had fallen behind
        past the bound, and the two call for different remedies (a reader that keeps up, a
        reader that reads to the end)."""
        pipe = self._pipe
        if pipe is None or not pipe.dropped:
            return ""
        reasons = []
        if pipe.dropped_behind:
            reasons.append(
                f"{pipe.dropped_behind} dropped while its reader was behind (or gone) past the "
                f"{pipe.limit / 2**20:g} MiB held for it"
            )
        at_end = pipe.dropped - pipe.dropped_behind
        if at_end:
            reasons.append(
                f"{at_end} still held for it at the run's end, not waited for longer: "
                f"{pipe.end_reason}"
            )
        return "; ".join(reasons)

    def write(
        self, result: PartResult, line: str, station: str, run_id: int, repeat: bool = False
    ) -> None:
        """One line, numbered after the last: a line dropped for a pipe's reader, or lost in a
        crash, leaves a gap in the numbers a reader can see."""
        with self._writing:
            self._seq += 1
            text = json.dumps(
                result_line(result, line, station, run_id, self._seq, repeat), ensure_ascii=False
            )
            if self._pipe is not None:
                self._pipe.put((text + "\n").encode())  # (never waits, never fails)
                return
            self._append((text + "\n").encode())

    def _append(self, data: bytes) -> None:
        """`data` at the file's end, all of it (a write may take only part), or the run stops
        in one line."""
        assert self._fd is not None
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            raise UserError(
                f"cannot write the results feed {self.path}: {exc.strerror or exc}; the "
                f"verdicts so far are recorded in the database: {write_fix(exc)} and run the "
                "same command again to resume"
            ) from exc

    def sync(self) -> None:
        """The lines written so far to disk, once a chunk's are all written: after a power cut
        a verdict that its database kept had lost its line for good, since a run started again
        gives no line for a part an earlier run judged. (A pipe's lines are its reader's; a
        device, such as /dev/null, has nothing to sync.)"""
        if self._fd is None:
            return
        try:
            os.fsync(self._fd)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOTSUP):
                return
            raise UserError(
                f"cannot write the results feed {self.path} to its disk: {exc.strerror or exc}; "
                "the verdicts so far are recorded in the database: check its disk and run the "
                "same command again to resume"
            ) from exc

    def close(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
            return
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _ends_mid_line(path: Path) -> bool:
    """Whether a regular file's last line lacks its newline: cut short where the disk filled."""
    try:
        with path.open("rb") as handle:
            if handle.seek(0, os.SEEK_END) == 0:
                return False
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) != b"\n"
    except OSError:  # (unreadable: written as it is)
        return False

"""Judged files moved out of a hot folder (`defects batch SOURCE --move-judged DIR`).

A hot folder whose judged frames stay in it is listed again at every look, and the watch keeps
a record of every file left there: the station's CPU time per part grows with the frames piled
up (bench/results/station_soak_cpu.json). Here each file leaves the folder once its part is
durably recorded (its image in the store and its verdict committed), never before, so that a
crash between the two leaves the file where it was, to be found recorded and moved by the next
run. A file that could not be judged goes to DIR/errors/, kept as the evidence of its error.

Each file keeps its path under the source folder (a camera's sub-folder stays one under DIR); a
name already taken in DIR gets a suffix (`frame-1.png`), never overwriting. A move that fails
(permission, DIR full or gone) leaves the file and its verdict as they are, with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from inspection.errors import UserError

logger = logging.getLogger(__name__)

ERRORS_FOLDER = "errors"  # under DIR: the files recorded as errors (not an image, blank frame)
# Warnings of files that could not be moved said one by one, at most this many a minute: a DIR
# gone or full fails every file of a busy line, thousands an hour. The rest are counted.
WARNINGS_PER_MINUTE = 10
COPY_BLOCK = 1 << 20

# A file as it was read: size, modification and change times, inode. A file written again under
# the same name after it was read is another part: it is not moved in the judged one's place.
Stamp = tuple[int, int, int, int]


def stamp_of(info: os.stat_result) -> Stamp:
    return (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)


def judged_folder(source: Path, destination: Path) -> Path:
    """DIR of `--move-judged`, checked (and made where missing) before any part is judged: a
    DIR inside the source would be read by the watch as new parts, its own output."""
    if not source.is_dir():
        raise UserError(
            f"--move-judged needs a folder to inspect: {source} is not one (the files of a "
            "glob and the entries of a zip are not moved)"
        )
    if destination.exists() and not destination.is_dir():
        raise UserError(f"--move-judged {destination} is a file, not a folder")
    where, inside = destination.resolve(), source.resolve()
    if where == inside or inside in where.parents:
        raise UserError(
            f"--move-judged {destination} is inside the folder inspected ({source}): its files "
            "would be read again as new parts; give a folder outside it"
        )
    if not destination.exists():
        try:
            destination.mkdir()
        except OSError as exc:
            raise UserError(
                f"--move-judged {destination}: cannot make the folder: {exc.strerror or exc}"
            ) from exc
    if not os.access(destination, os.W_OK | os.X_OK):
        raise UserError(f"--move-judged {destination}: this user cannot write into it")
    return destination


@dataclass(frozen=True)
class Move:
    """One file of a chunk to move once the chunk is written: where it is, as it was read,
    and whether its part was recorded as an error."""

    path: str
    stamp: Stamp | None
    error: bool


class JudgedMover:
    """Moves recorded files from `source` to `destination` (see the module's docstring). One
    per process; used by one thread at a time (a batch's writer thread)."""

    def __init__(self, source: Path, destination: Path) -> None:
        self.source = os.path.abspath(source)
        self.destination = Path(os.path.abspath(destination))
        self._window_start = time.monotonic()
        self._said_in_window = 0
        self._unsaid = 0
        self._last_unsaid = ""

    def move(self, move: Move) -> bool | None:
        """True: moved; False: it could not be (said, rate-limited); None: nothing to move (a
        folder listed as unreadable, a file gone, or written again since it was read)."""
        relative = os.path.relpath(move.path, self.source)
        if relative.startswith(os.pardir):
            return None  # (not under the source folder: never given one)
        try:
            info = os.lstat(move.path)
            if stat.S_ISDIR(info.st_mode):
                return None
            written_again = move.stamp is not None and stamp_of(info) != move.stamp
            if written_again and not stat.S_ISLNK(info.st_mode):
                return None  # another part under the same name: the watch judges it next
            base = self.destination / ERRORS_FOLDER if move.error else self.destination
            if not self.destination.is_dir():  # (gone, or a share unmounted: not made anew)
                raise FileNotFoundError(errno.ENOENT, "the folder is gone", str(self.destination))
            target = base / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            self._place(move.path, info, target)
        except FileNotFoundError as exc:
            if not os.path.lexists(move.path):
                return None  # taken away by someone else meanwhile: nothing lost
            self._warn(move.path, exc)
            return False
        except OSError as exc:
            self._warn(move.path, exc)
            return False
        return True

    def _place(self, path: str, info: os.stat_result, target: Path) -> None:
        """`path` to `target`, or to `target` with a suffix where that name is taken. The name
        is taken first with an exclusive create, so that two processes moving into one DIR
        never overwrite each other; the file then replaces that empty placeholder."""
        stem, suffix = os.path.splitext(target.name)
        for n in range(100_000):
            candidate = target if n == 0 else target.with_name(f"{stem}-{n}{suffix}")
            try:
                os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(errno.EEXIST, "no free name left", str(target))
        try:
            os.replace(path, candidate)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                with contextlib.suppress(OSError):
                    os.unlink(candidate)  # (the placeholder: the file is where it was)
                raise
        try:
            self._copy_across(path, info, candidate)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(candidate)  # (the source is still where it was)
            raise
        try:
            os.unlink(path)  # (only once the copy is on disk under its name)
        except FileNotFoundError:
            pass  # (taken away meanwhile: the copy is kept)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(candidate)  # (the file stays where it was: not kept twice)
            raise

    @staticmethod
    def _copy_across(path: str, info: os.stat_result, candidate: Path) -> None:
        """Another file system: copied beside the target under a hidden name, flushed to disk
        and renamed over the placeholder; the caller then removes the source."""
        partial = candidate.with_name(f".{candidate.name}.{uuid.uuid4().hex[:12]}.partial")
        try:
            if stat.S_ISLNK(info.st_mode):
                os.symlink(os.readlink(path), partial)
            else:
                with open(path, "rb") as reading, open(partial, "xb") as writing:
                    while block := reading.read(COPY_BLOCK):
                        writing.write(block)
                    writing.flush()
                    os.fsync(writing.fileno())
                os.utime(partial, ns=(info.st_atime_ns, info.st_mtime_ns))
            os.replace(partial, candidate)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
        folder = os.open(candidate.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # (the new name on disk before the source goes)
        finally:
            os.close(folder)

    def _warn(self, path: str, exc: OSError) -> None:
        reason = exc.strerror or str(exc)
        now = time.monotonic()
        if now - self._window_start >= 60:
            self.flush_warnings()
            self._window_start, self._said_in_window = now, 0
        if self._said_in_window < WARNINGS_PER_MINUTE:
            self._said_in_window += 1
            logger.warning(
                "could not move %s to %s: %s; it stays where it is, its verdict kept",
                path,
                self.destination,
                reason,
            )
        else:
            self._unsaid += 1
            self._last_unsaid = f"{path}: {reason}"

    def flush_warnings(self) -> None:
        """Say how many warnings were held back (at the next minute, and at the run's end)."""
        if self._unsaid:
            logger.warning(
                "%d more files could not be moved to %s (the last: %s); they stay where they "
                "are, their verdicts kept",
                self._unsaid,
                self.destination,
                self._last_unsaid,
            )
            self._unsaid = 0

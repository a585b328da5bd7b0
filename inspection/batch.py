"""Batch inspection of a production line's images: a folder, a glob, a zip, or a hot folder.

Every part is identified by the SHA-256 of its bytes. Its image is stored once under the data
directory by that hash, and results are written in bulk transactions of one batch each. Started
again after a crash, a batch skips the parts this model version already judged at its current
operating point: none is lost (the image file is synced to disk before its row is committed) and
none is inspected twice. A part judged before the version's thresholds were recalibrated is judged
again; its earlier verdict stays in the database, marked superseded.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import glob
import hashlib
import json
import logging
import math
import os
import random
import re
import stat
import struct
import time
import uuid
import zipfile
import zlib
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from threading import Event, Lock
from typing import IO, Any, BinaryIO, NamedTuple, TypeVar

from sqlalchemy import Connection, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.migrate import head_revision, schema_revision
from db.models import (
    Inspection,
    InspectionRun,
    ModelKind,
    ModelStage,
    ModelVersion,
    Part,
    Prediction,
    PredictionSource,
    Verdict,
    database_utcnow,
)
from db.queries import PART_CLASSIFIER_ALONE, RunRow, part_results, run_rows, source_rows
from db.registry import ensure_station, get_model_version, named_version, production_model
from db.session import (
    DatabaseError,
    WalCheckpointer,
    connection_dropped,
    connection_scope,
    retrying_races,
    session_scope,
)
from inspection.backends.base import Backend
from inspection.engine import (
    EXPORTED_FROM_KEY,
    BackendChoice,
    Inspector,
    PartInput,
    PartResult,
    TileChoice,
    cached_sha256,
    check_export_grid,
    check_export_source,
    sha256_of,
)
from inspection.errors import UnloadableExport, UserError
from inspection.images import (
    BLANK_ERROR,
    EMPTY_ERROR,
    INSPECTED_SUFFIXES,
    REFUSED_OVER_KEY,
    empty_capture_error,
    file_kind,
    is_repeated_fault,
    not_a_file_reason,
    refused_at_another_limit,
    replace_synced,
    write_advice,
)
from inspection.judged import JudgedMover, Move, Stamp, stamp_of
from inspection.raw_rasters import RAW_HEADER_READ_BYTES, explained_size, header_lies_further
from inspection.results import shown_latency
from inspection.settings import get_settings, same_place_under
from inspection.tiling import TileSpec, TileSpecError, judged_tiles, station_grid
from inspection.verdict import Detection, Thresholds

logger = logging.getLogger(__name__)
T = TypeVar("T")

# A zip entry larger than this is refused rather than read into memory (zip bombs, stray videos).
MAX_FILE_BYTES = 256 * 1024 * 1024
# A zip entry that unpacks to more than this many times its packed size is refused unread, once
# past the floor. A camera's JPEG or PNG barely packs (about 1:1), and a real sensor's raw BMP
# or TIFF rarely past 1:10, its noise defeating deflate: 100:1 is ten times past any of them,
# where a patterned 190 MB BMP packs to 1:1000 and a zip of them filled gigabytes of image store.
# An entry under the floor is harmless whatever its ratio (a blank thumbnail packs to 1:1000).
# A raw frame of a flat scene (a blank frame) packs as far: one whose header (BMP, TIFF, PGM/PPM)
# explains its size is read past the ratio (`_raw_frame_explains`; a TIFF of its tags after its
# pixels unpacked whole to tell, `header_lies_further`), and one of a single byte
# repeated (a capture buffer of zeros) is said an empty file as it is loose (`_one_byte_fill`):
# all three decided in one place, `_past_the_ratio`.
MAX_COMPRESSION_RATIO = 100
RATIO_FLOOR_BYTES = 4 * 1024 * 1024
# A zip of more entries than this is refused before Python reads its directory: each entry is an
# object in memory and a database row, and a zip of millions of tiny ones held hundreds of MB
# before the first was judged. A shift's lot from one camera is thousands of images; 100000 is
# more than a day at one a second, and a folder or several zips take more.
MAX_ZIP_ENTRIES = 100_000
# What one zip may unpack in all, by the sizes its directory declares for the entries read (an
# entry unpacks no further than its declared size): this many times the zip's own size, or the
# floor where that is more. Entries under RATIO_FLOOR_BYTES are not held to any ratio, and
# 100000 of just under 4 MB, each packed past 1:1000, unpacked to 400 GB of image store from a
# zip of 400 MB. A lot's ratio is its images' average: a camera's JPEG or PNG about 1:1, a raw
# sensor BMP rarely past 1:10, a binarized PCB board's BMP about 1:50 (DeepPCB's, thresholded);
# 100:1 is twice the last. The floor lets a lot of small, nearly blank BMPs (1:500 each) pass:
# 10000 parts of 200 kB, a shift's lot at a small station, unpack to 2 GB.
MAX_ZIP_UNPACK_RATIO = 100
ZIP_UNPACK_FLOOR_BYTES = 2_000_000_000
# Bytes of the zip's directory allowed an entry (46 of its own, its name, extra fields and
# comment: about 100 for a camera's file): a directory that says it holds few entries may list
# millions all the same, Python reading it to its declared size whatever the count says.
DIRECTORY_BYTES_PER_ENTRY = 512
# A chunk is written once it holds this many bytes, however few parts: memory stays bounded.
CHUNK_BYTES = 512 * 1024 * 1024
WRITE_CHUNK = 64
# Tries of a chunk's write that other stations writing the same parts keep refusing.
WRITE_RACE_ATTEMPTS = 3
# Latencies a run's summary keeps (8 bytes each: 1.6 MB), beyond which it keeps a sample.
LATENCIES_KEPT = 200_000
_sampling = random.Random()


@dataclass
class SourceItem:
    """One file of a source; `data` is None when it could not be read, with the reason."""

    name: str
    data: bytes | None
    error: str | None = None
    content_hash: str | None = None  # once hashed (`content_key`), travels with the item
    # The file it was read from (a file of a folder, not a zip's entry) and that file as it was
    # then: where `--move-judged` takes it from once its part is recorded.
    path: str | None = None
    stamp: Stamp | None = None
    # Taken by a watch after it began: a part the line waits on, so it gets a feed line even
    # where its bytes were judged before (the verdict on record, as a repeat).
    watched: bool = False

    def __post_init__(self) -> None:
        # A file name that is not UTF-8 (a Latin-1 camera or share: b"bad\xffname.jpg") comes
        # from the file system with a surrogate in it, which no database or CSV can store: the
        # batch stopped on it, every time. Kept readable, its odd bytes written out (\xff).
        try:
            raw = self.name.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # (a surrogate that no file system decoding made)
            raw = self.name.encode("utf-8", "surrogatepass")
        self.name = raw.decode("utf-8", "backslashreplace")


# In a stream of source items: the source has gone quiet (a hot folder between camera frames),
# so what is held for a fuller chunk is judged and written now. Known by identity.
WRITE_NOW = SourceItem("", None, "the source is quiet: write what is held")

# Hears each chunk once it is committed: the parts it recorded, then the files of the chunk
# whose part was recorded before and which still get a line (`Repeat`), with the verdict on
# record. What the results feed writes, so that a line never stands for a verdict the database
# does not hold.
OnRecorded = Callable[[list[PartResult], list[PartResult]], None]


@dataclass(frozen=True)
class Repeat:
    """A file of a chunk whose part was recorded before it; `wanted`: it gets its line
    whatever run recorded the part (a watch's new file, a copy in the chunk or the write before
    it, a file `--move-judged` moves), otherwise only where this run recorded it."""

    name: str
    content_hash: str
    wanted: bool


def _nothing() -> None:
    """A write that writes nothing: where the writer thread's queue ends (`_drain_writes`)."""


def chunk_parts(batch_size: int, chunk_batches: int) -> int:
    """Parts per transaction: WRITE_CHUNK, unless that is less than two of the engine's
    batches, the fewest in which decoding one overlaps inferring another."""
    if 2 * batch_size <= WRITE_CHUNK:
        return WRITE_CHUNK
    return max(WRITE_CHUNK, chunk_batches * batch_size)


_said: dict[str, float] = {}
_said_lock = Lock()


def _say_once(message: str, within_s: float = 1.0) -> None:
    """A warning not said already in the last second: the main thread's look-ups and the
    writer thread wait through the same outage, and every retry line came twice."""
    now = time.monotonic()
    with _said_lock:
        if now - _said.get(message, -math.inf) < within_s:
            return
        _said[message] = now
        if len(_said) > 100:  # (a long outage says many lines; none is needed for long)
            for old in [m for m, t in _said.items() if now - t >= within_s]:
                del _said[old]
    logger.warning("%s", message)


def through_outages(
    action: Callable[[], T],
    limit_s: float,
    giving_up: Event,
    waited_for: Callable[[DatabaseError], bool] = lambda exc: True,
) -> T:
    """`action` (one transaction), again while the database is away, for up to `limit_s`
    seconds: the run pauses with its results held instead of stopping, and nothing is written
    twice (a failed transaction was rolled back). `giving_up` (Ctrl-C) ends the wait at once;
    an error `waited_for` does not take is raised at once."""
    waited, delay = 0.0, 0.5
    while True:
        try:
            result = action()
            if waited:
                # (The station said it waited, then nothing: an operator watching its console
                # could not tell a run going on from one still stuck.)
                _say_once("the database answers again: the run goes on")
            return result
        except DatabaseError as exc:
            if waited >= limit_s or giving_up.is_set() or not waited_for(exc):
                raise
            _say_once(f"{exc}; trying again in {delay:.1f} s (the run waits, its results held)")
            giving_up.wait(delay)
            waited += delay
            delay = min(delay * 2, 5.0)  # (back soon after the database is)


def content_key(item: SourceItem) -> str:
    """What a source item is known by: the SHA-256 of its bytes (computed once, kept on the
    item, so a parallel run's dealer hashes for the worker too), or its name when unread."""
    if item.data is None:
        return unreadable_key(item.name)
    if item.content_hash is None:
        item.content_hash = hashlib.sha256(item.data).hexdigest()
    return item.content_hash


def too_large_error(size: int) -> str:
    """The error of a file over MAX_FILE_BYTES, left unread: a batch's and an upload's."""
    return f"file too large ({size / 1e6:.0f} MB)"


def read_file(path: Path, display: str) -> SourceItem:
    """A file of a folder as a part, or the reason it cannot be one. One stat in the common
    case: the checks for a dead link and for a folder listed because it could not be read
    (`FolderListing`) are made where that stat fails or names a folder."""
    where = str(path)
    try:
        info = path.stat()
    except OSError as exc:
        if path.is_symlink():
            looped = exc.errno == errno.ELOOP
            why = "a link that leads to itself" if looped else "a link whose target is missing"
            return SourceItem(display, None, f"cannot read the file: {why}", path=where)
        reason = f"cannot read the file: {exc.strerror or exc}"
        return SourceItem(display, None, reason, path=where)
    if stat.S_ISDIR(info.st_mode):
        try:
            with os.scandir(path):
                reason = "it could not be listed"
        except OSError as exc:
            reason = exc.strerror or str(exc)
        return SourceItem(
            display, None, f"cannot read the folder: {reason} (its files were not inspected)"
        )
    # (Listings pass such entries over; one that became a pipe after it was listed, or a link
    # to a device given by name, is not opened: the read would wait for ever. Nor moved.)
    special = not_a_file_reason(info.st_mode)
    if special is not None:
        return SourceItem(display, None, f"cannot read the file: {special}")
    stamp = stamp_of(info)
    if info.st_size > MAX_FILE_BYTES:
        return SourceItem(display, None, too_large_error(info.st_size), path=where, stamp=stamp)
    try:
        return SourceItem(display, path.read_bytes(), path=where, stamp=stamp)
    except OSError as exc:
        reason = f"cannot read the file: {exc.strerror or exc}"
        return SourceItem(display, None, reason, path=where, stamp=stamp)


# A sub-folder whose modification time is this recent is listed again at every look, however
# it compares with the last one: a file added within the same tick of a coarse clock (a
# network share's) would not change it. And every folder is listed again this often anyway.
RECENT_FOLDER_S = 3.0
FULL_LISTING_S = 30.0


class FolderListing:
    """The files under a folder, every link that leads to no file (a camera share gone, a loop
    of links) and every sub-folder that cannot be read, reported rather than passed over in
    silence; hidden files and folders (a leading dot) stay out, links to folders are not
    followed.

    Walked with os.scandir rather than Path.rglob: a directory entry knows whether it is a
    file without a stat call, hidden folders are never entered, and paths stay strings
    (100000 files: bench/results/listing_cpu.json). Listed again (`files`), a sub-folder whose
    modification time has not changed since is not read again: a hot folder that fills up
    over a shift is looked at every second (bench/results/hot_folder_cpu.json).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        # Of each folder read: its modification time, its files (parts, path), its sub-folders.
        self._read: dict[str, tuple[int, list[tuple[list[str], str]], list[str]]] = {}
        self._full_at = float("-inf")

    def files(self) -> list[tuple[list[str], str]]:
        """(path parts under the folder, path) of each file, in no particular order."""
        now = time.time()
        full = now - self._full_at >= FULL_LISTING_S
        if full:
            self._full_at = now
        found: list[tuple[list[str], str]] = []
        seen: dict[str, tuple[int, list[tuple[list[str], str]], list[str]]] = {}
        pending: list[tuple[str, list[str]]] = [(str(self.folder), [])]  # a folder, its parts
        while pending:
            directory, parts = pending.pop()
            try:
                modified = os.stat(directory).st_mtime_ns
                known = self._read.get(directory)
                if (
                    full
                    or known is None
                    or known[0] != modified
                    or (now - modified / 1e9 < RECENT_FOLDER_S)
                ):
                    known = (modified, *self._read_folder(directory, parts))
            except (FileNotFoundError, NotADirectoryError):
                if not parts:
                    raise
                continue  # a sub-folder that vanished while listing: the rest counts
            except OSError:
                if not parts:
                    raise
                # A sub-folder that cannot be read (a camera writing as another user): listed
                # as a file that cannot be read, so that it shows as an error in the summary,
                # the CSV and the history. Its files were passed over with one line on stderr.
                found.append((parts, directory))
                continue
            seen[directory] = known
            found.extend(known[1])
            pending.extend((sub, [*parts, os.path.basename(sub)]) for sub in known[2])
        self._read = seen  # (folders gone are forgotten)
        return found

    @staticmethod
    def _read_folder(
        directory: str, parts: list[str]
    ) -> tuple[list[tuple[list[str], str]], list[str]]:
        files: list[tuple[list[str], str]] = []
        folders: list[str] = []
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
                elif _is_file_or_dead_link(entry):
                    files.append(([*parts, entry.name], entry.path))
        return files, folders


def _is_file_or_dead_link(entry: os.DirEntry[str]) -> bool:
    """A file, or a link that leads to no file (its target missing, or a loop of links): one
    is a part to judge, the other a camera fault to report. A loop of links made `is_file`
    raise, and the listing, so the whole batch, stopped on it."""
    try:
        if entry.is_file():
            return True
    except OSError:  # (a loop of links: "too many levels of symbolic links")
        return True
    return entry.is_symlink() and not os.path.exists(entry.path)


def folder_files(folder: Path) -> list[Path]:
    """Every file under `folder` (as `FolderListing` finds them), sorted as Path objects sort."""
    return [Path(path) for _, path in sorted(FolderListing(folder).files())]


def is_zip_archive(path: Path) -> bool:
    """A file with an image's suffix is an image even where a zip follows its data: it was
    judged as the zip's entries, the image itself never. Only a regular file is opened to
    tell: a named pipe that took a listed file's place (a `.raw` frame's, a `.zip`'s) was
    opened here, and the open waited for a writer for ever; `read_file` says what it is."""
    suffix = path.suffix.lower()
    if suffix in INSPECTED_SUFFIXES:
        return False
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return False
    except OSError:  # (a dead link: a zip's is "cannot open the zip", as before)
        return suffix == ".zip"
    return suffix == ".zip" or zipfile.is_zipfile(path)


def file_items(path: Path, display: str) -> Iterator[SourceItem]:
    """A file of a folder, glob or hot folder as parts: itself, or each entry of a zip archive
    (as the dashboard takes a zip among uploaded files)."""
    if is_zip_archive(path) and not path.is_dir():
        # (A damaged zip, one cut short in the copy say, is an error of the zip, not "not an
        # image file": its entries were never read, which the message must tell.)
        try:
            yield from iter_zip(path, display)
        except UnreadZipError as exc:  # (raised on opening it, before any entry)
            yield SourceItem(display, None, exc.item_error)
        return
    yield read_file(path, display)


def not_a_source_error(path: Path) -> str | None:
    """Why a path that is there is no batch source (a named pipe, a device, a socket), or None
    for a folder, a file or a path that is not there. Such a source was said "source not
    found", though `ls` shows it."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        return None
    return f"{path} is not a folder, an image or a zip: {file_kind(mode)}"


def iter_source(source: str, listed: list[Path] | None = None) -> Iterator[SourceItem]:
    """Files of a folder (recursively), of a glob pattern, or entries of a zip archive; a zip
    inside a folder or among the glob's files gives its entries. `listed`: the folder's
    `folder_files`, where the caller has them already (a large folder is slow to list)."""
    path = Path(source)
    if path.is_dir():
        for file in folder_files(path) if listed is None else listed:
            yield from file_items(file, str(file.relative_to(path)))
    elif path.is_file() and is_zip_archive(path):
        yield from iter_zip(path, path.name)  # (a damaged zip given alone stops the command)
    elif path.is_file():
        yield read_file(path, path.name)
    elif any(ch in source for ch in "*?["):
        matches = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
        if not matches:
            raise UserError(f"no files match {source}")
        for file in matches:
            yield from file_items(file, str(file))
    else:
        raise UserError(not_a_source_error(path) or f"source not found: {source}")


def _entry_name(info: zipfile.ZipInfo) -> str:
    """An entry's name as its maker wrote it. Without the zip's UTF-8 flag Python reads names
    as code page 437, but many tools write UTF-8 without setting it: "teil_ä.jpg" came out as
    "teil_├ñ.jpg" in the history and the CSV. Bytes that read as UTF-8 are taken as UTF-8."""
    if info.flag_bits & 0x800:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return info.filename


def _read_at_most(entry: BinaryIO, limit: int, piece: int = 4 * 1024 * 1024) -> bytes:
    """Up to `limit` bytes in pieces: one read of `limit` has zlib unpack that much at once."""
    pieces, total = [], 0
    while total < limit:
        data = entry.read(min(piece, limit - total))
        if not data:
            break
        pieces.append(data)
        total += len(data)
    return b"".join(pieces)


class UnreadZipError(UserError):
    """A zip refused on opening it, before any entry: none of its entries was read. Given
    alone, it stops the command; in a folder or among uploads, it is one error item."""

    def __init__(self, message: str, item_error: str) -> None:
        super().__init__(message)
        # The error of the zip's item, which is known by the zip's name already. With the
        # name in it, every damaged zip of a folder was an error kind of its own in the
        # summary's and the Inspect page's count by kind.
        self.item_error = item_error


class DamagedZipError(UnreadZipError):
    """A zip that cannot be opened."""

    def __init__(self, label: str, exc: Exception) -> None:
        self.reason = f"{exc} (damaged or cut short? none of its entries was read)"
        super().__init__(
            f"cannot open the zip {label}: {self.reason}", f"cannot open the zip: {self.reason}"
        )


class TooManyZipEntriesError(UnreadZipError):
    """A zip whose directory lists more entries than `MAX_ZIP_ENTRIES`."""

    def __init__(self, label: str, said: str) -> None:
        reason = f"{said}, at most {MAX_ZIP_ENTRIES}: none of its entries was read; split it"
        super().__init__(
            f"too many entries in the zip {label} ({reason})",
            f"too many entries in the zip ({reason})",
        )


def _directory_size(archive_file: BinaryIO) -> tuple[int, int] | None:
    """(entries, bytes) of the zip's directory as its end record says, zip64's where it has
    one, nothing parsed; None where there is no end record (`zipfile.ZipFile` says why). The
    record is found as `zipfile` finds it: the last one in the file's last 64 kB and 22 bytes."""
    archive_file.seek(0, os.SEEK_END)
    size = archive_file.tell()
    tail_start = max(0, size - zipfile.sizeEndCentDir - 0xFFFF)
    archive_file.seek(tail_start)
    tail = archive_file.read()
    # (Only where a whole record fits: its signature among the last record's own bytes, its
    # directory's offset say, would have the check skipped.)
    at = tail.rfind(zipfile.stringEndArchive, 0, len(tail) - zipfile.sizeEndCentDir + 4)
    if at < 0:
        return None
    end = struct.unpack(zipfile.structEndArchive, tail[at : at + zipfile.sizeEndCentDir])
    entries, directory_bytes = end[4], end[5]
    # The zip64 locator and record lie just before it (a zip of over 65535 entries).
    locator_at = tail_start + at - zipfile.sizeEndCentDir64Locator
    record_at = locator_at - zipfile.sizeEndCentDir64
    if record_at >= 0:
        archive_file.seek(record_at)
        record = archive_file.read(zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator)
        locator = record[zipfile.sizeEndCentDir64 :]
        if (
            locator[:4] == zipfile.stringEndArchive64Locator
            and record[:4] == zipfile.stringEndArchive64
        ):
            end64 = struct.unpack(zipfile.structEndArchive64, record[: zipfile.sizeEndCentDir64])
            entries, directory_bytes = end64[7], end64[8]
    return entries, directory_bytes


def _refuse_too_many_entries(archive_file: BinaryIO, label: str) -> None:
    """Before `zipfile.ZipFile` reads the directory into a list of every entry: a zip of
    millions of tiny entries held hundreds of MB, and gave a database row each."""
    position = archive_file.tell()
    try:
        said = _directory_size(archive_file)
    finally:
        archive_file.seek(position)
    if said is None:
        return
    entries, directory_bytes = said
    if entries > MAX_ZIP_ENTRIES:
        raise TooManyZipEntriesError(label, f"{entries} entries")
    if directory_bytes > MAX_ZIP_ENTRIES * DIRECTORY_BYTES_PER_ENTRY:
        raise TooManyZipEntriesError(
            label,
            f"a directory of {directory_bytes / 1e6:.0f} MB, room for "
            f"{directory_bytes // zipfile.sizeCentralDir} entries",
        )


def _open_zip(archive_file: Path | BinaryIO, label: str) -> zipfile.ZipFile:
    try:
        if isinstance(archive_file, Path):
            with archive_file.open("rb") as file:
                _refuse_too_many_entries(file, label)
        else:
            _refuse_too_many_entries(archive_file, label)
        return zipfile.ZipFile(archive_file)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DamagedZipError(label, exc) from exc


def _is_left_out(info: zipfile.ZipInfo) -> bool:
    """A folder, a hidden file or a macOS resource fork: no part, no item."""
    return info.is_dir() or Path(info.filename).name.startswith(".") or "__MACOSX" in info.filename


def zip_item_count(archive_file: Path | BinaryIO, label: str) -> int:
    """How many items `iter_zip` gives, from the zip's directory alone (nothing unpacked): a
    progress bar's total before the entries are read one at a time."""
    with _open_zip(archive_file, label) as archive:
        return sum(not _is_left_out(info) for info in archive.infolist())


OVERLAPPING_ENTRY = "bad zip entry: its data runs into the entry after it (a zip bomb): not read"


def _overlapping_entries(archive: zipfile.ZipFile) -> set[int]:
    """The ids of the entries whose data runs past the next entry's header. A zip bomb lists
    thousands of entries over one compressed stream, each unpacking the same gigabytes: a
    10 MB zip had every entry read to the size limit, hours of unpacking. (Python before 3.12
    reads them without a word.)"""
    infos = sorted(archive.infolist(), key=lambda info: info.header_offset)
    starts = [info.header_offset for info in infos[1:]] + [archive.start_dir]
    overlapping = set()
    for info, next_start in zip(infos, starts, strict=True):
        try:
            encoded = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
        except UnicodeEncodeError:
            encoded = info.orig_filename.encode("utf-8", "surrogateescape")
        # (The local header's own extra field, unknown here, only moves its data further.)
        data_end = info.header_offset + zipfile.sizeFileHeader + len(encoded) + info.compress_size
        if data_end > next_start:
            overlapping.add(id(info))
    return overlapping


def _too_compressed(info: zipfile.ZipInfo) -> bool:
    """From the zip's directory, before anything is unpacked: reading stops at the size it
    declares, so an entry cannot unpack past it."""
    return (
        info.file_size > RATIO_FLOOR_BYTES
        and info.file_size > MAX_COMPRESSION_RATIO * info.compress_size
    )


def _entry_head(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """The entry's first bytes, where a raw image's header is; none where they cannot be read
    (the entry is then refused as too compressed, unread as before)."""
    try:
        with archive.open(info) as entry:
            return entry.read(RAW_HEADER_READ_BYTES)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError):
        return b""


def _whole_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes | None:
    """The entry's bytes, no more than the size its directory declares (at most
    MAX_FILE_BYTES, checked before), or None where they cannot be unpacked."""
    try:
        with archive.open(info) as entry:
            return _read_at_most(entry, info.file_size)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError):
        return None


def _raw_frame_explains(head: bytes, info: zipfile.ZipInfo) -> bool:
    """Whether the entry begins with the header of an uncompressed image (BMP, TIFF, PGM/PPM)
    that explains the size it declares: a blank raw frame packs past any ratio, and was
    refused as a zip bomb where the product calls it out as a blank frame. Only its first
    bytes are unpacked; a bomb's zeros behind a small image's header are more than it
    explains."""
    explained = explained_size(head)
    return explained is not None and info.file_size <= explained


def _one_byte_fill(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[int | None, int]:
    """The byte every one of the entry's bytes is (or None), and how many were unpacked to
    tell, which the caller counts toward the zip's bound. A capture buffer written out
    unfilled (all zeros) packs past any ratio, and was refused as "zip entry too compressed"
    where the same file loose is said an empty file, a camera's fault. Unpacked in pieces,
    none kept, stopped at the first piece of another byte: a bomb's pattern after its first
    bytes is not read on, nor past the size the zip's directory declares."""
    size = 0
    try:
        with archive.open(info) as entry:
            head = entry.read(RAW_HEADER_READ_BYTES)
            fill, size = head[:1], len(head)
            if not head or head.count(fill) != len(head):
                return None, size
            while data := entry.read(4 * 1024 * 1024):
                size += len(data)
                if data.count(fill) != len(data):
                    return None, size
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError):
        return None, size
    return (fill[0] if size == info.file_size else None), size


def shown_size(size: int) -> str:
    """A size in the unit it reads in: bytes below 1 kB, kB below 1 MB, else MB. Rounded to
    kB alone, an entry packed to 300 bytes was said packed "from 0 kB"."""
    if size < 1000:
        return f"{size} bytes"
    if size < 1_000_000:
        return f"{size / 1e3:.0f} kB"
    return f"{size / 1e6:.0f} MB"


def _too_compressed_error(info: zipfile.ZipInfo) -> str:
    # (The ratio inside the parentheses: `error_kind` cuts at the first colon, so that
    # "compressed 1000:1" would make a kind of each ratio.)
    ratio = info.file_size // max(info.compress_size, 1)
    return (
        f"zip entry too compressed ({ratio}:1, {info.file_size / 1e6:.0f} MB from "
        f"{shown_size(info.compress_size)}; past {MAX_COMPRESSION_RATIO}:1 only an uncompressed "
        "image of the size its header gives is read): not read"
    )


class _PastTheRatio(NamedTuple):
    """What an entry packed past the ratio comes to (`_past_the_ratio`)."""

    item: SourceItem
    unpacked: int  # bytes unpacked to tell, which count toward the zip's bound
    raw_frame: bool = False  # a raw frame read past the ratio (`_unpacks_too_far_error`)


def _past_the_ratio(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, room: int
) -> _PastTheRatio | None:
    """An entry packed past MAX_COMPRESSION_RATIO (`_too_compressed`), `room` the bytes the
    zip's bound has left. None where its first bytes are the header of a raw frame that
    explains its size: it is read then as any entry (and is a raw frame). Else, by what its
    first bytes are:

    - a TIFF's whose tags come after its pixels: unpacked whole (where the bound has room for
      it) to read them, a raw frame where they explain its size, refused where not;
    - one byte repeated: unpacked in pieces (where the bound has room), said an empty file, as
      it is loose, where every byte is that one, refused where not;
    - anything else: refused as too compressed, unread past its first bytes (counted as none).
    """
    head = _entry_head(archive, info)
    if _raw_frame_explains(head, info):
        return None
    refused = SourceItem(name, None, _too_compressed_error(info))
    fits = info.file_size <= room  # (read to its end, maybe)
    if fits and header_lies_further(head, info.file_size):
        whole = _whole_entry(archive, info)
        if whole is not None and _raw_frame_explains(whole, info):
            return _PastTheRatio(SourceItem(name, whole), info.file_size, raw_frame=True)
        return _PastTheRatio(refused, info.file_size)
    if fits and head and head.count(head[:1]) == len(head):
        fill, read = _one_byte_fill(archive, info)
        if fill is None:
            return _PastTheRatio(refused, read)
        return _PastTheRatio(
            SourceItem(name, None, empty_capture_error(info.file_size, fill)), read
        )
    return _PastTheRatio(refused, 0)


def _zip_bytes(archive_file: Path | BinaryIO) -> int:
    """The zip's own size, a file's or an upload's."""
    if isinstance(archive_file, Path):
        return archive_file.stat().st_size
    position = archive_file.tell()
    try:
        return archive_file.seek(0, os.SEEK_END)
    finally:
        archive_file.seek(position)


def zip_unpack_limit(zip_bytes: int) -> int:
    """The most a zip of `zip_bytes` may unpack in all (`MAX_ZIP_UNPACK_RATIO`)."""
    return max(ZIP_UNPACK_FLOOR_BYTES, MAX_ZIP_UNPACK_RATIO * zip_bytes)


def _unpacks_too_far_error(limit: int, zip_bytes: int, raw_frames: int = 0) -> str:
    """`raw_frames`: how many entries read before were raw frames packed past the ratio, read
    by their header (`_raw_frame_explains`). A lot of a dead camera's blank frames packs that
    far, and "no camera's lot packs so far" told its operator the zip was a bomb: what is said
    then is the frames, and that the rest are judged from the lot unzipped (a folder has no
    such bound). The bound itself stays: a crafted zip of such headers over zeros is one."""
    # (The particulars inside the parentheses, as in `_too_compressed_error`: one error kind.)
    bound = (
        f"past {limit / 1e6:.0f} MB, the most a zip of {shown_size(zip_bytes)} may give: "
        f"{MAX_ZIP_UNPACK_RATIO} times its size, at least {ZIP_UNPACK_FLOOR_BYTES / 1e9:.0f} GB"
    )
    if raw_frames:
        return (
            f"zip unpacks too far ({bound}; {raw_frames} of the entries before were raw frames "
            f"packed past {MAX_COMPRESSION_RATIO}:1, as blank frames pack, a camera's fault to "
            "look at; unzip the lot and inspect its folder to judge the rest): not read"
        )
    return f"zip unpacks too far ({bound}; no camera's lot packs so far): not read"


def iter_zip(archive_file: Path | BinaryIO, label: str) -> Iterator[SourceItem]:
    """Entries of a zip (a path or an open file, such as an upload) as source items. Once the
    entries read declare more in all than `zip_unpack_limit`, the rest are error items, unread
    (the ones before are judged)."""
    archive = _open_zip(archive_file, label)
    with archive:
        zip_bytes = _zip_bytes(archive_file)
        limit, unpacked = zip_unpack_limit(zip_bytes), 0
        raw_frames, too_far = 0, ""  # (read past the ratio by their header; the rest's error)
        overlapping = _overlapping_entries(archive)
        for info in archive.infolist():
            name = f"{label}:{_entry_name(info)}"
            if _is_left_out(info):
                continue
            if info.flag_bits & 0x1:
                yield SourceItem(name, None, "encrypted zip entry")
            elif id(info) in overlapping:
                yield SourceItem(name, None, OVERLAPPING_ENTRY)
            elif info.filename.lower().endswith(".zip"):  # (was "not an image file")
                yield SourceItem(name, None, "a zip inside a zip: its entries are not read")
            elif info.file_size > MAX_FILE_BYTES:
                yield SourceItem(name, None, f"zip entry too large ({info.file_size / 1e6:.0f} MB)")
            elif (raw_frame := _too_compressed(info)) and (
                past := _past_the_ratio(archive, info, name, limit - unpacked)
            ) is not None:
                unpacked += past.unpacked
                raw_frames += past.raw_frame
                yield past.item
            elif unpacked + info.file_size > limit:
                unpacked = limit + 1  # (no later entry is read, however small)
                too_far = too_far or _unpacks_too_far_error(limit, zip_bytes, raw_frames)
                yield SourceItem(name, None, too_far)
            else:
                unpacked += info.file_size
                raw_frames += raw_frame
                try:
                    # Read no further than the limit: an entry whose header declares less than
                    # it holds (a zip bomb) was unpacked whole first, gigabytes in memory.
                    with archive.open(info) as entry:
                        data = _read_at_most(entry, MAX_FILE_BYTES + 1)
                    if len(data) > MAX_FILE_BYTES:
                        yield SourceItem(
                            name, None, f"zip entry too large (over {MAX_FILE_BYTES / 1e6:.0f} MB)"
                        )
                        continue
                    yield SourceItem(name, data)
                except (
                    zipfile.BadZipFile,
                    zlib.error,
                    OSError,
                    EOFError,
                    NotImplementedError,
                ) as exc:
                    yield SourceItem(name, None, f"bad zip entry: {exc}")


def error_kind(error: str | None) -> str:
    """An error's kind without its particulars ("blank image", "not an image file"), so that a
    camera that sends blank frames stands out in a summary from a few corrupt files."""
    return (error or "unknown error").split(":")[0].split(" (")[0].strip()


def unreadable_key(name: str) -> str:
    return hashlib.sha256(f"unreadable:{name}".encode()).hexdigest()


@dataclass
class BatchSummary:
    run_id: int
    model_name: str
    seen: int = 0
    inspected: int = 0
    skipped: int = 0
    # Among the inspected, judged again to a pass or a fail: their stored verdicts were of an
    # older operating point. (Not one judged again to an error: a blank frame or an unreadable
    # file sent again supersedes its earlier record too, and is no verdict judged anew.)
    rejudged: int = 0
    errors: int = 0
    failed: int = 0
    # Failed parts per counted defect class; PART_CLASSIFIER_ALONE: failed with no counted defect.
    failed_by_class: Counter[str] = field(default_factory=Counter)
    errors_by_reason: Counter[str] = field(default_factory=Counter)  # "blank image": 12, ...
    seconds: float = 0.0
    # Every part's latency up to LATENCIES_KEPT, then a uniform sample of that many. Packed
    # doubles: a list held a float object and a pointer a part (32 bytes), the one thing a
    # watch kept per part once its caches had filled, 6.4 MB by the cap.
    latencies_ms: array[float] = field(default_factory=lambda: array("d"))
    latencies_seen: int = 0
    # With --move-judged: files moved out of the source (those recorded as errors among them,
    # into DIR/errors), and those that could not be (left where they were, verdicts kept).
    moved: int = 0
    moved_errors: int = 0
    not_moved: int = 0

    @property
    def parts_per_second(self) -> float:
        return self.inspected / self.seconds if self.seconds else 0.0

    def add_latency(self, latency_ms: float) -> None:
        """Kept by reservoir sampling past LATENCIES_KEPT: the percentiles stay unbiased and
        a watch that runs for weeks keeps a bounded memory."""
        self.latencies_seen += 1
        if len(self.latencies_ms) < LATENCIES_KEPT:
            self.latencies_ms.append(latency_ms)
            return
        slot = _sampling.randrange(self.latencies_seen)
        if slot < LATENCIES_KEPT:
            self.latencies_ms[slot] = latency_ms


MODEL_FILE_SUFFIXES = (".pt", ".onnx")


def model_file(model: str | None) -> Path | None:
    """The file a `--model` reference names (`runs/best.onnx`, `weights.pt`), or None where it
    names a model version."""
    if model is None or Path(model).suffix.lower() not in MODEL_FILE_SUFFIXES:
        return None
    return Path(model)


def detector_of_file(session: Session, path: Path, named: str | None = None) -> ModelVersion | None:
    """The registered detector a model file belongs to: the version its ONNX metadata names
    (`named`), else the one it is the file of (by hash), else the one whose weights it was
    exported beside (`defects export` writes `<weights stem>[.size][.fp16|.int8].onnx`)."""
    detectors = select(ModelVersion).where(ModelVersion.kind == ModelKind.DETECTOR)
    if named:
        found = session.scalars(detectors.where(ModelVersion.name == named)).first()
        if found is not None:
            return found
    by_hash = detectors.where(ModelVersion.sha256 == sha256_of(path))
    found = session.scalars(by_hash.order_by(ModelVersion.id)).first()
    if found is not None or path.suffix.lower() != ".onnx":
        return found
    parts = path.name.split(".")
    folder = path.resolve().parent
    beside = [str(folder / (".".join(parts[:n]) + ".pt")) for n in range(1, len(parts))]
    in_folder = detectors.where(ModelVersion.file_path.in_(beside))
    return session.scalars(in_folder.order_by(ModelVersion.id)).first()


def _refuse_classifier_file(
    session: Session, path: Path, architecture: str, named: str | None
) -> None:
    """`--model` given a classifier's weights or export: it was said to be no registered
    model's file, as if unknown, where `--model` given its name says what it is."""
    if path.suffix.lower() == ".onnx":
        if not architecture.startswith("defect-cls-"):
            return
        what = f"an export of classifier {named}" if named else "a classifier's export"
    else:
        found = session.scalars(
            select(ModelVersion.name).where(
                ModelVersion.kind == ModelKind.CLASSIFIER, ModelVersion.sha256 == sha256_of(path)
            )
        ).first()
        if found is None:
            return
        what = f"the weights of classifier {found}"
    raise UserError(
        f"{path} is {what}, not a detector: a classifier judges beside the detector whose "
        "operating point names it (`defects calibrate DETECTOR --classifier VERSION`); pass "
        "a detector to --model"
    )


def _detector_of_model_file(session: Session, path: Path) -> ModelVersion:
    """`--model FILE`: the version whose weights or export it is. Every verdict is stored
    against a model version and judged at its operating point, which a file alone does not
    hold (an unregistered .pt has no thresholds; an export's are those of its export day)."""
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    named, architecture = None, ""
    if path.suffix.lower() == ".onnx":
        import onnx

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # onnx raises protobuf's own errors for a damaged file
            # (protobuf's words alone, "Wire format was corrupt", said no way on; the version
            # it was exported beside named where known, not the placeholder VERSION.)
            beside = detector_of_file(session, path)
            version = beside.name if beside is not None else "VERSION"
            raise UserError(
                f"cannot read the ONNX model {path}: {exc}. A damaged or partly written export: "
                f"export it again (`defects export {version}`), or judge with the version's "
                f"weights (--model {version} --backend pytorch)"
            ) from exc
        metadata = {p.key: p.value for p in proto.metadata_props}
        named = metadata.get("defects.model_version")
        architecture = metadata.get("defects.architecture", "")
    version = detector_of_file(session, path, named)
    if version is None:
        _refuse_classifier_file(session, path, architecture, named)
        raise UserError(
            f"{path} is not the weights or an export of a registered detector: verdicts are "
            "stored against a model version and judged at its calibrated thresholds. Pass a "
            "version's name (`defects models list`), or export one (`defects export VERSION`)"
        )
    return version


def check_unrecorded_export(
    session: Session, backend: Backend, version_name: str, weights_sha256: str
) -> str | None:
    """An ONNX export made before `defects export` recorded its weights' digest cannot be
    checked by it (`check_export_source`), and a stale or foreign one of the same classes
    judged for this version without a word. Refused where its `defects.model_version` names
    another registered detector, of other weights, registered before the export was made: a
    version of the same weights (a demo registered again) is no sign, nor one registered after
    it (a name taken again after a rename). Otherwise the line to say once: nothing tells."""
    metadata = getattr(backend, "metadata", {})
    if backend.model_path.suffix != ".onnx" or EXPORTED_FROM_KEY in metadata:
        return None
    named = metadata.get("defects.model_version") or ""
    other = session.scalars(
        select(ModelVersion).where(
            ModelVersion.kind == ModelKind.DETECTOR,
            ModelVersion.name == named,
            ModelVersion.name != version_name,
            ModelVersion.sha256 != weights_sha256,
        )
    ).first()
    exported_at = _export_date(metadata)
    if other is not None and exported_at is not None and other.created_at <= exported_at:
        raise UserError(
            f"{backend.model_path} was exported from {other.name}, not {version_name} (its "
            f"metadata says): another version's export, or one older than these weights; "
            f"export it again (`defects export {version_name}`) or pass --backend pytorch"
        )
    return (
        f"{backend.model_path} carries no record of the weights it was exported from (an "
        f"export by an earlier release): it judges for {version_name} unchecked; refresh it "
        f"with `defects export {version_name}`"
    )


def _export_date(metadata: dict[str, str]) -> datetime | None:
    """When an export was made, naive UTC as `created_at` is (ultralytics' `date`), or None."""
    try:
        made = datetime.fromisoformat(metadata["date"])
    except (KeyError, ValueError):
        return None
    return made.astimezone(UTC).replace(tzinfo=None) if made.tzinfo else made


def resolve_detector(session: Session, model: str | None) -> ModelVersion:
    """The detector `model` names: a version's id or name, a file of one (its weights or an
    export), or None for the production detector."""
    if (path := model_file(model)) is not None:
        return _detector_of_model_file(session, path)
    if model is None:
        version = production_model(session, ModelKind.DETECTOR)
        if version is None:
            raise UserError(
                "no production detector: train one (`defects train detector`) and promote it "
                "(`defects models promote NAME`), or pass --model; to try the product first, "
                "`defects models install-demo` installs the steel-strip demo model"
            )
        return version
    version = get_model_version(session, model)
    if version.kind != ModelKind.DETECTOR:
        raise UserError(f"{version.name} is a {version.kind.value}, not a detector")
    return version


def open_run(
    session: Session,
    line: str,
    station: str,
    model: str | None,
    operator: str,
    source: str,
    one_off: bool = False,
    opening: str | None = None,
) -> tuple[InspectionRun, ModelVersion]:
    """A new inspection run on a line's station, by the detector `model` (None: production);
    `one_off` for an upload or `defects inspect`, which the floor's pages pass over.
    `opening`: a token (a UUID) the caller makes once and passes to each try: the run a try
    committed, though its connection dropped before the station heard so, is the run the next
    try returns (a second one was opened, and the first stayed open for good)."""
    if opening is not None:
        committed = session.scalars(
            select(InspectionRun).where(InspectionRun.opening == opening)
        ).one_or_none()
        if committed is not None:
            return committed, session.get_one(ModelVersion, committed.model_version_id)
    version = resolve_detector(session, model)
    station_row = ensure_station(session, line, station)
    run = InspectionRun(
        line_id=station_row.line_id,
        station_id=station_row.id,
        operator=operator,
        source=source,
        one_off=one_off,
        opening=opening,
        model_version_id=version.id,
        started_at=database_utcnow(session),  # (as its verdicts and its end are stamped)
    )
    session.add(run)
    session.flush()
    return run, version


# The shipped demo detector's versions are named so (models/neu-det-demo/model.json's "name").
DEMO_NAME = re.compile(r"neu-det-demo-v\d+")


def found_weights(file_path: str, sha256: str) -> Path:
    """A version's weights on this machine: the path it was registered at, else the same
    `models/VERSION/FILE` under this machine's data folder where that file holds the version's
    exact bytes (same SHA-256). Stations sharing one database keep their own data folders at
    their own paths; a registered path is the registering machine's."""
    recorded = Path(file_path)
    if recorded.is_file():
        return recorded
    here = same_place_under(file_path, get_settings().models_dir, depth=2)
    if here == recorded or not here.is_file():
        return recorded
    # (Hashed once per file as it is, `cached_sha256`: the pages look a version's weights up
    # at every rerun, and a run at its start, in each worker.)
    return here if cached_sha256(here) == sha256 else recorded


def weights_there(name: str, weights: Path) -> Path:
    """A model version's weights file, refused in one line where it is gone (deleted, a data
    folder moved, registered on another machine); every command that opens one says it so."""
    if not weights.is_file():
        # (`install-demo` puts back the shipped demo alone: it was offered for a version the
        # user trained, whose file it cannot restore.)
        restore = (
            "or put the shipped demo back: `defects models install-demo`"
            if DEMO_NAME.fullmatch(name)
            else "with no copy left, train it again (a version is found by its exact bytes)"
        )
        raise UserError(
            f"the weights of {name} are missing ({weights}): copy that version's folder into "
            f"this data folder's models/ (models/{weights.parent.name}/{weights.name}) or mount "
            f"the data folder at that path; {restore}"
        )
    return weights


def discard_empty_run(url: str, run_id: int) -> None:
    """A run that could not start (its model would not load) and judged nothing: removed, so
    that it does not stand open for ever on the Live page and in `defects status`. A run that
    holds parts is never removed."""
    with connection_scope(url) as connection:
        if connection.scalar(select(Inspection.id).where(Inspection.run_id == run_id).limit(1)):
            return
        connection.execute(delete(InspectionRun).where(InspectionRun.id == run_id))


class BatchInspection:
    """One inspection run on a line and station, fed from any number of sources."""

    def __init__(
        self,
        url: str,
        images_dir: Path,
        line: str,
        station: str,
        model: str | None = None,
        operator: str = "",
        source: str = "",
        backend: BackendChoice = "auto",
        device: str | None = None,
        batch_size: int | None = None,
        inspector: Inspector | None = None,
        run_id: int | None = None,
        mover: JudgedMover | None = None,
        tile: TileChoice = "model",
        one_off: bool = False,
    ) -> None:
        """With `run_id`, this job writes into a run opened elsewhere (one worker's share of a
        run spread over several processes), on that run's line, station and model version, and
        leaves marking it finished to whoever opened it. A `model` that names a file (a
        version's weights or export) is the file that judges, for its version. With `mover`,
        each source file is moved out once its chunk is written (`--move-judged`). `tile`: the
        grid large parts are judged in (`--tile`; by default the model's own). `one_off`: a run
        of a few parts (an upload, `defects inspect`), not what the station is running."""
        self.url = url
        self.mover = mover
        self.images_dir = images_dir
        self.owns_run = run_id is None
        # A station given no model judges with the production one: told when another is
        # promoted while it runs (a watch runs for weeks).
        self.follows_production = model is None
        self._production_said: int | None = None
        self._point_said: str | None = None
        self._schema_said = head_revision()  # the revision this code reads and writes
        # Where a station's news (a recalibration taken up, another model promoted) is said:
        # its key names the news, so that a run over several workers, each of which hears
        # it, says it once (`inspection.parallel` hands these to the dealer).
        self.say: Callable[[str, str], None] = lambda key, message: logger.warning("%s", message)
        self._news_told: Counter[str] = Counter()

        opening = str(uuid.uuid4())  # (one for every try: a committed try's run is found)

        def opened() -> tuple[tuple[str, str], dict[str, Any], tuple[str, str] | None, str]:
            """The run opened (or taken over) and its models looked up, in one transaction:
            tried again where two stations created the same new line at once. Their weights
            are found after it: a version's file found by hash is hashed (a large file, the
            first time in a process), and that held SQLite's write lock of the new run, every
            other station's writes waiting behind it."""
            with session_scope(url) as session:
                if run_id is None:
                    run, version = open_run(
                        session, line, station, model, operator, source, one_off, opening
                    )
                else:
                    run = session.get_one(InspectionRun, run_id)
                    version = session.get_one(ModelVersion, run.model_version_id)
                self.run_id, self.line_id, self.station_id = run.id, run.line_id, run.station_id
                self.run_started_at = run.started_at  # (by the database's clock, as verdicts)
                self.model_id, self.model_name = version.id, version.name
                self.model_classes = list(version.classes or [])
                registered = (version.file_path, version.sha256)
                thresholds = dict(version.thresholds or {})
                # A calibrated operating point names the classifier it was calibrated with.
                classifier_name = (thresholds.get("classifier") or {}).get("version")
                classifier_file, self.classifier_id = None, None
                if classifier_name:
                    classifier = named_version(session, classifier_name)
                    classifier_file, self.classifier_id = (
                        (classifier.file_path, classifier.sha256),
                        classifier.id,
                    )
                    classifier_name = classifier.name
                    run.classifier_version_id = classifier.id
            return registered, thresholds, classifier_file, classifier_name

        # A connection dropped as the run opens (a PostgreSQL restart) is waited for, as one
        # mid-run is; a database this station cannot write still stops it at once.
        self.outage_seconds = get_settings().db_outage_seconds
        self._giving_up = Event()  # set by Ctrl-C: no more waiting for the database
        registered, thresholds, classifier_file, classifier_name = through_outages(
            lambda: retrying_races(opened),
            self.outage_seconds,
            self._giving_up,
            connection_dropped,
        )
        try:
            weights = model_file(model) or found_weights(*registered)
            classifier_weights = found_weights(*classifier_file) if classifier_file else None
            weights_there(self.model_name, weights)
            if classifier_weights is not None:  # (was "classifier file not found: PATH")
                weights_there(classifier_name, classifier_weights)
            if inspector is None:
                try:
                    inspector = Inspector.from_weights(
                        weights,
                        thresholds,
                        backend,
                        device,
                        batch_size,
                        classifier_weights,
                        tile=tile,
                    )
                except UnloadableExport as exc:  # (the hint said VERSION: this one's name)
                    raise exc.naming(self.model_name) from exc
                self._check_classes(inspector)
                try:
                    if model_file(model) is not None:  # (an export named as --model: its grid)
                        check_export_grid(inspector.backend, found_weights(*registered))
                        check_export_source(inspector.backend, registered[1], self.model_name)
                    self._export_note = self._unrecorded_export(inspector, registered[1])
                except UserError:
                    inspector.close()
                    raise
                inspector.warm_up()  # before the first part, not in its latency
            else:
                # (One handed over, the Inspect page's loaded model, was never checked: a stale
                # export beside the weights stored its verdicts under this version there.)
                self._check_classes(inspector, close=False)
                self._export_note = self._unrecorded_export(inspector, registered[1])
        except BaseException:
            if self.owns_run:  # no part was judged: no run to show as open on the Live page
                discard_empty_run(url, self.run_id)
            raise
        self.inspector = inspector
        self.summary = BatchSummary(self.run_id, self.model_name)
        # As stored in an inspection's JSON column, to compare with earlier inspections.
        self._operating_point = json.loads(
            json.dumps(self._as_judged(self.inspector.thresholds.to_dict()))
        )
        self._production_said = self.model_id
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-writer")
        self._pending_write: Future[bool] | None = None
        self.checkpointer = WalCheckpointer(url)
        self._in_flight: set[str] = set()
        self._in_flight_errors: set[str] = set()  # of those, the parts recorded as errors
        self.chunk_parts = chunk_parts(self.inspector.batch_size, get_settings().chunk_batches)
        # (The summary's skipped parts are counted by this thread and by the writer's, after a
        # race with another station: `+=` on an attribute is no single step, and one was lost.)
        self._skipping = Lock()
        self._on_recorded: OnRecorded | None = None  # (the run's, for its chunks' writes)
        # Whether `_on_recorded` is told the repeats of each chunk (see `run`).
        self._repeats_told = False

    def _check_classes(self, inspector: Inspector, close: bool = True) -> None:
        """The model that judges must name the version's classes: a stale or foreign .onnx
        (beside the weights, or passed as --model) stored its own class names, or another
        model's verdicts, under this version. `close`: the inspector is this job's own (one
        handed over stays its owner's)."""
        if self.model_classes and inspector.class_names != self.model_classes:
            if close:
                inspector.close()
            raise UserError(
                f"{inspector.backend.model_path} has the classes {inspector.class_names}, not "
                f"those of {self.model_name} {self.model_classes}: a stale or foreign export; "
                f"export it again (`defects export {self.model_name}`) or pass --backend pytorch"
            )

    def _unrecorded_export(self, inspector: Inspector, weights_sha256: str) -> str | None:
        """`check_unrecorded_export` for the model that judges: refused, or the line said once
        at the run's start (kept until then: a parallel run's workers say it through the
        dealer, which hears each worker's and says it once)."""
        with session_scope(self.url) as session:
            return check_unrecorded_export(
                session, inspector.backend, self.model_name, weights_sha256
            )

    def _wait_for_write(self) -> bool:
        """Let the write in flight finish; its error, if any, is raised here. True when it
        also marked the run finished."""
        pending = self._pending_write
        if pending is None:
            return False
        try:
            marked_finished = pending.result()
        except BaseException:
            # Ctrl-C during the wait leaves the write in flight, for the wait that follows (the
            # run's `finally`): forgotten here, the stop was told with a summary that lacked
            # the chunk, which the writer committed a moment later.
            if pending.done():
                self._pending_write = None
            raise
        self._pending_write = None
        return marked_finished

    def _drain_writes(self) -> None:
        """Every write submitted so far done, its parts counted in the summary, whether or not
        its future was kept: a Ctrl-C landing between a chunk's submit and the keeping of its
        future lost the future, the stop was told with a summary short of that chunk, and the
        writer committed it a moment later ("64 parts inspected" over 128 written). The one
        writer thread takes the writes in order: a no-op submitted after them ends after them."""
        with contextlib.suppress(RuntimeError):  # (the writer shut down: nothing in flight)
            self._writer.submit(_nothing).result()

    def _follow_stored_point(self) -> None:
        """Take up the operating point stored for this model version now: a recalibration
        (`defects calibrate`, the Settings page) made while a watch ran was never used by it,
        which went on judging, for weeks, at the thresholds it had started with. A point that
        names a classifier this station has not loaded, or another model promoted, cannot be
        taken up without loading it: said once, and the station judges on as it was."""
        with connection_scope(self.url) as connection:
            stored = connection.scalar(
                select(ModelVersion.thresholds).where(ModelVersion.id == self.model_id)
            )
            production = (
                connection.execute(
                    select(ModelVersion.id, ModelVersion.name)
                    .where(
                        ModelVersion.kind == ModelKind.DETECTOR,
                        ModelVersion.stage == ModelStage.PRODUCTION,
                    )
                    .order_by(ModelVersion.promoted_at.desc())
                    .limit(1)
                ).first()
                if self.follows_production
                else None
            )
            revision = schema_revision(connection)
        if revision is not None and revision != self._schema_said:
            # (A station runs for weeks: another one started with a newer release migrated the
            # database under it, and nothing said why its writes might then fail.)
            self._tell(
                f"schema {revision}",
                f"the database's schema is now at revision {revision}, not {self._schema_said} "
                "that this station's release reads and writes: a station or dashboard of another "
                "release migrated it. This station goes on with the code it started with; stop "
                "it and start it again on the release that migrated the database (it resumes)",
            )
            self._schema_said = revision
        if production is not None and production.id != self._production_said:
            self._production_said = production.id
            if production.id != self.model_id:
                self._tell(
                    f"production {production.id}",
                    f"{production.name} is now the production detector; this station goes on "
                    f"judging with {self.model_name} until it is started again",
                )
        point = Thresholds.from_dict(stored, self.inspector.class_names)
        as_stored = json.loads(json.dumps(self._as_judged(point.to_dict())))
        if as_stored == self._operating_point:
            return
        loaded = self.inspector.thresholds.classifier
        if point.classifier != loaded:
            said = json.dumps(as_stored, sort_keys=True)
            if said != self._point_said:
                self._point_said = said
                # (A point without a classifier was said as "now uses the classifier none,
                # which this station has not loaded", when the station judges on with one.)
                change = (
                    f"now uses the classifier {point.classifier}, which this station has not loaded"
                    if point.classifier is not None
                    else f"names no classifier, and this station judges with {loaded}"
                )
                self._tell(
                    f"classifier {said}",
                    f"the operating point of {self.model_name} {change}: it judges on at its "
                    "earlier point until it is started again",
                )
            return
        self.inspector.thresholds = point
        self._operating_point = as_stored
        self._tell(
            f"point {json.dumps(as_stored, sort_keys=True)}",
            f"{self.model_name} was recalibrated: the next parts are judged at its new "
            "operating point",
        )

    def _as_judged(self, point: dict[str, Any]) -> dict[str, Any]:
        """The operating point a verdict is stored with and compared by, with the grid where
        this station judges in another than the model's own (`--tile`): a part judged whole is
        then judged again in tiles, and the other way round, as at new thresholds. At the
        model's own grid the point is as it always was."""
        tile = self.inspector.tile
        if tile == self.inspector.backend.tile:
            return point
        return {**point, "tile": tile.to_json() if tile is not None else "off"}

    def _judged_alike(self, stored: Any, width: int | None, height: int | None) -> bool:
        """Whether a part's stored verdict is the one this station gives now: at its operating
        point, or at the same thresholds in another grid that cuts the part into the very
        tiles this station's grid does, or judges it whole as this one does (a part stamped in
        another grid was judged again for nothing, its verdict superseded by the same one).
        The pixel limit a refusal for size records beside its point (`REFUSED_OVER_KEY`) is
        no part of the point: `refused_at_another_limit` reads it."""
        if isinstance(stored, dict) and REFUSED_OVER_KEY in stored:
            stored = {k: v for k, v in stored.items() if k != REFUSED_OVER_KEY}
        if stored == self._operating_point:
            return True
        if not isinstance(stored, dict) or width is None or height is None:
            return False

        def thresholds_of(point: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in point.items() if k != "tile"}

        if thresholds_of(stored) != thresholds_of(self._operating_point):
            return False
        recorded = stored.get("tile")
        try:
            then: TileSpec | None = (
                self.inspector.backend.tile
                if recorded is None
                else None
                if recorded == "off"
                else TileSpec.from_json(recorded)
            )
        except TileSpecError:
            return False
        return judged_tiles(width, height, then) == judged_tiles(width, height, self.inspector.tile)

    def _tell(self, news: str, message: str) -> None:
        """Say a piece of news through `say`, keyed by the news and how many times this job
        has told it (a point left and taken up again is news again)."""
        self._news_told[news] += 1
        self.say(f"{news} #{self._news_told[news]}", message)

    def _current_points(self, hashes: list[str]) -> dict[str, bool]:
        """Parts this model version has a current verdict for, and whether it was given at the
        operating point in force now (False: judged before a recalibration, a camera fault
        recorded every time, `is_repeated_fault`, or an image refused for its size at another
        pixel limit, `refused_at_another_limit`)."""
        return self._current_records(hashes)[0]

    def _current_records(self, hashes: list[str]) -> tuple[dict[str, bool], set[str]]:
        """`_current_points`, and those of the parts whose current record is an error (where
        `--move-judged` puts a file recorded before).

        A blank frame (or an empty file) is recorded every time it comes: a camera with its
        lens capped sends the same black frame over and over, byte for byte, and skipped as
        judged already it showed on the Live page once and then nowhere while the camera stayed
        dead."""
        with connection_scope(self.url) as connection:
            rows = connection.execute(
                select(
                    Part.content_hash,
                    Inspection.thresholds,
                    Inspection.error,
                    func.coalesce(InspectionRun.station_id, Part.station_id),
                    Part.width,
                    Part.height,
                )
                .join(Inspection, Inspection.part_id == Part.id)
                .outerjoin(InspectionRun, InspectionRun.id == Inspection.run_id)
                .where(
                    Part.content_hash.in_(hashes),
                    Inspection.model_version_id == self.model_id,
                    Inspection.is_current(),
                )
            ).all()
        points = {
            digest: self._judged_alike(stored, width, height)
            and not is_repeated_fault(error)
            # (Refused for its size at another limit: judged at the one in force now.)
            and not refused_at_another_limit(stored, error)
            # An error is this station's fault to record: the same bytes (an empty file, a
            # camera's garbage) recorded at another station left this one's camera fault
            # counted as "already inspected", invisible on its station.
            and (error is None or station_id == self.station_id)
            for digest, stored, error, station_id, width, height in rows
        }
        return points, {digest for digest, _, error, *_ in rows if error is not None}

    def _faults_left_in_source(self, candidates: list[tuple[SourceItem, str]]) -> set[int]:
        """The files (by `id`) among `candidates` (items and their parts' keys) that an earlier
        run at this station recorded as a camera fault (a blank frame, an empty capture) and
        that are still in the source as this run began, unchanged since that record: passed
        over as any part recorded before is. A batch or watch started again over a hot folder
        recorded each blank frame left in it again, and the Live page counted a camera fault
        that had not come again.

        A file is taken as the one recorded where it was last written before this station's
        latest record of its bytes (its time on the database's clock, against which the file's
        is set by this station's offset from it, measured here). A file taken by a watch after
        it began, a file written since (a new frame, or the same name written again), and an
        item with no file (a zip's entry, an upload) are recorded again, each time."""
        candidates = [(i, d) for i, d in candidates if not i.watched and i.stamp is not None]
        if not candidates:
            return set()
        fault = or_(
            Inspection.error.like(f"{BLANK_ERROR}%"), Inspection.error.like(f"{EMPTY_ERROR}%")
        )
        with connection_scope(self.url) as connection:
            offset = database_utcnow(connection) - datetime.now(UTC).replace(tzinfo=None)
            recorded = dict(
                connection.execute(
                    select(Part.content_hash, func.max(Inspection.inspected_at))
                    .join(Inspection, Inspection.part_id == Part.id)
                    .join(InspectionRun, InspectionRun.id == Inspection.run_id)
                    .where(
                        Part.content_hash.in_({d for _, d in candidates}),
                        Inspection.model_version_id == self.model_id,
                        InspectionRun.station_id == self.station_id,
                        InspectionRun.id != self.run_id,
                        fault,
                    )
                    .group_by(Part.content_hash)
                ).all()
            )
        left = set()
        for item, digest in candidates:
            assert item.stamp is not None  # (filtered above)
            written = datetime.fromtimestamp(item.stamp[1] / 1e9, UTC).replace(tzinfo=None)
            if digest in recorded and written + offset <= recorded[digest]:
                left.add(id(item))
        return left

    def run(
        self,
        items: Iterable[SourceItem],
        on_result: Callable[[PartResult], None] | None = None,
        finish: bool = True,
        on_skipped: Callable[[int], None] | None = None,
        on_recorded: OnRecorded | None = None,
        repeats: bool = True,
    ) -> BatchSummary:
        """Inspect what is new among `items`, writing one transaction per chunk, and mark the
        run finished at the end unless `finish` is False (a watch, whose run goes on).

        `on_result` hears of each part judged now, `on_skipped` of how many in a chunk were
        judged already: together they count every item, so a progress bar of a resumed run
        reaches its end (with `on_result` alone it stopped at the share judged now).
        `on_recorded` hears of each chunk once it is committed, in the writer thread (the
        results feed): a part judged now but not recorded (a crash, a database gone) is never
        told there. With `repeats` False it is told no repeats (always an empty list), and they
        are not worked out: a worker of a run without a feed, which tells its results alone.

        A chunk's write (image files, then one commit) runs in a writer thread while the next
        chunk is inspected; at most one write is in flight, and `run` returns once it is done.
        """
        if self._export_note is not None:  # (once: a watch runs `run` again and again)
            self.say("unrecorded export", self._export_note)
            self._export_note = None
        whole = finish  # (a run of its own, not one look of a watch)
        finish = finish and self.owns_run
        self._on_recorded = on_recorded
        self._repeats_told = on_recorded is not None and repeats
        started = time.perf_counter()
        chunk: list[SourceItem] = []
        chunk_bytes = 0
        marked_finished = False
        try:
            for item in items:
                if item is WRITE_NOW:
                    if chunk:
                        self._process(chunk, on_result, on_skipped=on_skipped)
                        chunk, chunk_bytes = [], 0
                    continue
                chunk.append(item)
                chunk_bytes += len(item.data or b"")
                # (Bytes too: 64 entries of a zip at 200 MB each held 13 GB at once.)
                if len(chunk) >= self.chunk_parts or chunk_bytes >= CHUNK_BYTES:
                    self._process(chunk, on_result, on_skipped=on_skipped)
                    chunk, chunk_bytes = [], 0
            if chunk:
                # The last write also marks the run finished: a part handed over on its own
                # (a hot folder's single file) costs one transaction, not two.
                self._process(chunk, on_result, finishing=finish, on_skipped=on_skipped)
            marked_finished = self._wait_for_write()  # (its error is one of the run's)
        except DatabaseError:
            # The outage outlasted its limit: one try to mark the run finished (the database
            # may be back already), no second wait. Left open, the run showed at work for ever.
            self._giving_up.set()  # (a write in flight stops waiting too)
            if finish:
                with contextlib.suppress(DatabaseError):
                    self._wait_for_write()
                with contextlib.suppress(DatabaseError):
                    self._finish_run()
            raise
        except BaseException:
            # Stopped (Ctrl-C, SIGTERM, a full image store, or the Inspect page's upload cut
            # short by a reload, a new upload or another station chosen: Streamlit stops the
            # page with an exception of its own from the progress bar): what was judged is
            # written and the run marked finished, as it is no longer at work (left open, the
            # Live page showed it open and idle until the next run); the same command resumes
            # in a new one.
            self._giving_up.set()
            if finish:
                self._wait_for_write()
                try:
                    self._finish_run()
                except DatabaseError as exc:  # (the stop is what is reported)
                    logger.warning("could not mark run %s finished: %s", self.run_id, exc)
            raise
        finally:
            self.summary.seconds += time.perf_counter() - started
            marked_finished = self._wait_for_write() or marked_finished
            self._drain_writes()
            if whole and self.mover is not None:
                self.mover.flush_warnings()
        if finish and not marked_finished:
            self._through_outages(self._finish_run)
        return self.summary

    def _through_outages(self, action: Callable[[], T]) -> T:
        return through_outages(action, self.outage_seconds, self._giving_up)

    def _finish_run(self) -> None:
        with connection_scope(self.url) as connection:
            self._mark_finished(connection)

    def _mark_finished(self, connection: Connection) -> None:
        connection.execute(
            update(InspectionRun)
            .where(InspectionRun.id == self.run_id)
            .values(finished_at=database_utcnow(connection))
        )

    def _process(
        self,
        chunk: list[SourceItem],
        on_result: Callable[[PartResult], None] | None,
        finishing: bool = False,
        on_skipped: Callable[[int], None] | None = None,
    ) -> None:
        self.summary.seen += len(chunk)
        skipped = 0  # (of this chunk: the writer thread adds a race's skips to the summary)
        unreadable = [i for i in chunk if i.data is None]
        readable_items = [i for i in chunk if i.data is not None]
        readable = [PartInput(i.name, i.data, content_key(i)) for i in readable_items]
        # (By content, not by name: two entries of one zip may share a name, and the second,
        # another part, was skipped as the first.)
        hashes = [p.content_hash for p in readable]
        # A file that could not be read has no content; it is known by its name instead.
        unreadable_hashes = {i.name: unreadable_key(i.name) for i in unreadable}

        recorded_errors: set[str] = set()

        def look_up() -> dict[str, bool]:
            self._follow_stored_point()
            looked_up = [*hashes, *unreadable_hashes.values()]
            if self.mover is None:
                return self._current_points(looked_up)
            points, errors = self._current_records(looked_up)
            recorded_errors.clear()
            recorded_errors.update(errors)
            return points

        current = self._through_outages(look_up)
        done = {digest for digest, same_point in current.items() if same_point}
        done |= self._in_flight  # written by the previous chunk, perhaps not committed yet
        keys = [
            *zip(readable_items, hashes, strict=True),
            *((i, unreadable_hashes[i.name]) for i in unreadable),
        ]
        faults_left = self._through_outages(
            lambda: self._faults_left_in_source(
                [(i, d) for i, d in keys if d in current and not current[d]]
            )
        )
        todo: list[PartInput] = []
        queued: set[str] = set()
        repeats: list[Repeat] = []

        def met_before(item: SourceItem, digest: str) -> bool:
            """Whether the part is recorded at this point or queued earlier in this chunk, then
            skipped (its repeat kept for the feed); else queued. Readable parts and unreadable
            files alike: one rule, so that neither is judged twice."""
            nonlocal skipped
            if digest in done or digest in queued or id(item) in faults_left:
                self._count_skipped(1)
                skipped += 1
                if self._repeats_told:
                    repeats.append(self._repeat(item, digest, queued))
                return True
            queued.add(digest)
            return False

        for item, part in zip(readable_items, readable, strict=True):
            if not met_before(item, part.content_hash):
                todo.append(part)
        # Parts are stored as they are prepared, by the workers that decode them.
        results = list(self.inspector.inspect(todo, store_into=self.images_dir))
        for item in unreadable:
            # Kept as a record of the failure, with no image; skipped like any other once recorded.
            digest = unreadable_hashes[item.name]
            if not met_before(item, digest):
                results.append(PartResult(item.name, digest, 0, "error", error=item.error))
        self._wait_for_write()
        moves = self._moves(chunk, results, recorded_errors)
        # (A blank frame or an empty file is not "judged" for the next chunk either: the same
        # bytes sent again a moment later are the fault again, recorded again.)
        self._in_flight = queued - {r.content_hash for r in results if is_repeated_fault(r.error)}
        self._in_flight_errors = {r.content_hash for r in results if r.verdict == "error"}
        # Parts with a current verdict at another operating point: judged again, superseding it.
        rejudged = {r.content_hash for r in results if r.content_hash in current}
        # (The point these parts were judged at: the next chunk may take up a new one before
        # this write runs.)
        point = self._as_judged(self.inspector.thresholds.to_dict())
        self._pending_write = self._writer.submit(
            self._write_and_count,
            results,
            rejudged,
            finishing,
            point,
            moves,
            repeats,
        )
        for result in results:
            if on_result:
                on_result(result)
        if on_skipped and skipped:
            on_skipped(skipped)

    def _repeat(self, item: SourceItem, digest: str, queued: set[str]) -> Repeat:
        """A file of the chunk whose part is recorded (or about to be), for its feed line.
        Called before `_in_flight` takes up this chunk: in it, the write before this one."""
        wanted = (
            item.watched
            or digest in queued
            or digest in self._in_flight
            or (self.mover is not None and item.path is not None)
        )
        return Repeat(item.name, digest, wanted)

    def _recorded_verdicts(self, repeats: list[Repeat]) -> list[PartResult]:
        """The verdicts on record (this model version's current ones) of the repeats that get
        a line, each under its own file's name: what the feed writes for a file whose part was
        judged before. A part recorded by an earlier run and not `wanted` gets none (a batch or
        watch started again over its source: written by the run that judged it), unless it was
        recorded after this run began (another station judging the same parts at once)."""
        if not repeats:
            return []
        hashes = sorted({r.content_hash for r in repeats})
        wanted = sorted({r.content_hash for r in repeats if r.wanted})
        told = []
        with session_scope(self.url) as session:
            # Only the records that can give a line: a run started again over its source finds
            # every part recorded by an earlier run, and loading each one's detections to drop
            # them doubled the look-up of every chunk it skipped.
            records = part_results(
                session,
                hashes,
                self.model_id,
                or_(
                    Part.content_hash.in_(wanted),
                    Inspection.run_id == self.run_id,
                    Inspection.inspected_at >= self.run_started_at,
                ),
            )
            for repeat in repeats:
                record = records.get(repeat.content_hash)
                if record is None:  # (superseded since by a run at another model: not this one's)
                    continue
                if (
                    not repeat.wanted
                    and record.run_id != self.run_id
                    and record.inspected_at < self.run_started_at
                ):
                    continue
                found = sorted(
                    (p for p in record.predictions if p.source == PredictionSource.DETECTOR),
                    key=lambda p: p.id,
                )
                told.append(
                    PartResult(
                        repeat.name,
                        repeat.content_hash,
                        record.part.size_bytes,
                        record.verdict.value,  # type: ignore[arg-type]
                        detections=[
                            Detection(
                                p.class_name,
                                p.confidence,
                                p.x1,
                                p.y1,
                                p.x2,
                                p.y2,
                                p.counted,
                                p.verification_score,
                            )
                            for p in found
                        ],
                        width=record.part.width,
                        height=record.part.height,
                        latency_ms=record.latency_ms,
                        error=record.error,
                        defect_probability=record.defect_probability,
                        boxes_left_out=record.boxes_left_out,
                    )
                )
        return told

    def _moves(
        self, chunk: list[SourceItem], results: list[PartResult], recorded_errors: set[str]
    ) -> list[Move]:
        """The chunk's files to move once its write is committed (`--move-judged`): every file
        read from the source folder, judged now or recorded before (this run's earlier chunk,
        or an earlier run: a resumed watch, a copy), each with whether its record is an error."""
        if self.mover is None:
            return []
        verdicts = {r.content_hash: r.verdict for r in results}
        moves = []
        for item in chunk:
            if item.path is None:
                continue
            digest = content_key(item)
            if digest in verdicts:
                error = verdicts[digest] == "error"
            else:  # recorded before this chunk: in the database, or in the write before it
                error = (
                    item.data is None
                    or digest in recorded_errors
                    or digest in self._in_flight_errors
                )
            moves.append(Move(item.path, item.stamp, error))
        return moves

    def _move_judged(self, moves: list[Move]) -> None:
        """Each file of a written chunk out of the source: its part is recorded (image in the
        store, verdict committed), so a crash from here on loses nothing. A file that cannot
        be moved stays, with a warning; the run goes on."""
        if self.mover is None:
            return
        for move in moves:
            moved = self.mover.move(move)
            if moved:
                self.summary.moved += 1
                self.summary.moved_errors += move.error
            elif moved is False:
                self.summary.not_moved += 1

    def _write_and_count(
        self,
        results: list[PartResult],
        rejudged: set[str],
        finishing: bool,
        point: dict[str, Any],
        moves: list[Move],
        repeats: list[Repeat],
    ) -> bool:
        """The chunk's write, then its counts in the summary, then `on_recorded` told (the
        results feed: after the commit, so that a line never stands for a verdict the database
        does not hold), then its files moved out where asked: in the writer thread, which
        Ctrl-C does not interrupt, so the summary never lacks (nor adds) a part the database
        holds, wherever the interrupt lands in the main thread."""
        for attempt in range(1, WRITE_RACE_ATTEMPTS + 1):
            try:
                marked_finished = self._through_outages(
                    lambda chunk=results, again=rejudged: self._write(
                        chunk, again, finishing, point
                    )
                )
                break
            except IntegrityError:
                if self._through_outages(lambda chunk=results: self._written_already(chunk)):
                    # (Committed, its answer lost with a dropped connection: the try after it
                    # met its own verdicts, and the chunk was counted "already inspected".)
                    marked_finished = finishing
                    break
                # Another station wrote some of these parts (the same folder, the same frame)
                # between the chunk's look-up and this write, which was rolled back.
                if attempt == WRITE_RACE_ATTEMPTS:
                    raise
                kept, rejudged = self._after_a_race(results)
                # (A file whose part the other station recorded gets that verdict as its line.)
                kept_hashes = {r.content_hash for r in kept}
                if self._repeats_told:
                    repeats = repeats + [
                        Repeat(r.name, r.content_hash, wanted=True)
                        for r in results
                        if r.content_hash not in kept_hashes
                    ]
                results = kept
        for result in results:
            self.summary.inspected += 1
            # (A blank frame come again, or an error recorded at this station after another's,
            # is not a part judged again at new thresholds.)
            self.summary.rejudged += result.content_hash in rejudged and result.verdict != "error"
            # (An error's time is not a verdict's: a file that is not an image would pull the
            # latencies a station is judged by toward whatever its batch took.)
            if result.latency_ms is not None and result.verdict != "error":
                self.summary.add_latency(result.latency_ms)
            if result.verdict == "error":
                self.summary.errors += 1
                self.summary.errors_by_reason[error_kind(result.error)] += 1
            elif result.verdict == "fail":
                self.summary.failed += 1
                # (A part the part classifier failed with no counted defect was in no class:
                # the summary's classes left those failures unexplained.)
                self.summary.failed_by_class.update(
                    result.failed_classes or [PART_CLASSIFIER_ALONE]
                )
        if self._on_recorded is not None:
            told = self._through_outages(lambda: self._recorded_verdicts(repeats))
            self._on_recorded(results, told)
        self._move_judged(moves)
        return marked_finished

    def _written_already(self, results: list[PartResult]) -> bool:
        """Whether this chunk's write was committed though the connection dropped before the
        station heard so (a PostgreSQL restart at the commit): each of its parts' current
        verdict by this model is this run's, all stamped by one transaction."""
        with connection_scope(self.url) as connection:
            stamps = connection.scalars(
                select(Inspection.inspected_at)
                .join(Part, Part.id == Inspection.part_id)
                .where(
                    Part.content_hash.in_([r.content_hash for r in results]),
                    Inspection.model_version_id == self.model_id,
                    Inspection.run_id == self.run_id,
                    Inspection.is_current(),
                )
            ).all()
        return len(stamps) == len(results) and len(set(stamps)) == 1

    def _after_a_race(self, results: list[PartResult]) -> tuple[list[PartResult], set[str]]:
        """A chunk's results against what the database holds now: a part another station has
        judged meanwhile at this operating point is left to that verdict (counted as already
        inspected, as the look-up would have said a moment later); one judged at another point,
        or a blank frame or empty file, supersedes it as usual."""
        current = self._through_outages(
            lambda: self._current_points([r.content_hash for r in results])
        )
        kept = [r for r in results if not current.get(r.content_hash) or is_repeated_fault(r.error)]
        self._count_skipped(len(results) - len(kept))
        return kept, {r.content_hash for r in kept if r.content_hash in current}

    def _count_skipped(self, parts: int) -> None:
        with self._skipping:
            self.summary.skipped += parts

    def _write(
        self,
        results: list[PartResult],
        rejudged: set[str],
        finishing: bool,
        point: dict[str, Any],
    ) -> bool:
        """Parts, inspections and predictions in one transaction, as bulk INSERTs (row-by-row
        ORM objects cost a fifth of a CPU core at line rate), with the run marked finished when
        `finishing`; returns whether it was. The image files are already in the store: the
        engine wrote them as it prepared the parts."""
        if not results:
            return False  # (an INSERT given no rows would insert one row of defaults)
        with connection_scope(self.url) as connection:
            if self.mover is not None and connection.dialect.name == "sqlite":
                # The files leave the source once this commits: SQLite's WAL at synchronous
                # NORMAL (the stations' setting) makes a commit durable only at the next
                # checkpoint, so a power cut could roll the verdicts back while the files'
                # moves stood, and the parts were never judged again. FULL syncs each
                # commit's log (set before the transaction begins: SQLite refuses it inside).
                connection.exec_driver_sql("PRAGMA synchronous=FULL")
            # The database's clock, not this station's: see database_utcnow.
            now = database_utcnow(connection)
            # (Result objects have .keys(), so dict() would take them for mappings.)
            part_ids: dict[str, int] = {
                digest: part_id
                for digest, part_id in connection.execute(
                    select(Part.content_hash, Part.id).where(
                        Part.content_hash.in_([r.content_hash for r in results])
                    )
                )
            }
            new_parts = {
                r.content_hash: {
                    "content_hash": r.content_hash,
                    "stored_path": str(r.stored_path or ""),  # none for an unreadable file
                    "original_name": r.name,
                    "size_bytes": r.size_bytes,
                    "width": r.width,
                    "height": r.height,
                    "captured_at": now,
                    "line_id": self.line_id,
                    "station_id": self.station_id,
                    "external_part_id": None,
                    "created_at": now,
                    # (The verdict that creates the part is its first: the history's figures
                    # count the part at this version's verdict, a candidate's after it not.)
                    "first_model_version_id": self.model_id,
                }
                for r in results
                if r.content_hash not in part_ids
            }
            if new_parts:
                inserted = connection.execute(
                    insert(Part).returning(Part.content_hash, Part.id), list(new_parts.values())
                )
                part_ids.update({digest: part_id for digest, part_id in inserted})
            if rejudged:
                # The earlier verdict is kept, superseded by the one written below.
                connection.execute(
                    update(Inspection)
                    .where(
                        Inspection.part_id.in_([part_ids[digest] for digest in rejudged]),
                        Inspection.model_version_id == self.model_id,
                        Inspection.is_current(),
                    )
                    .values(superseded_at=now)
                )
            inspection_rows = [
                {
                    "part_id": part_ids[r.content_hash],
                    "run_id": self.run_id,
                    "model_version_id": self.model_id,
                    "classifier_version_id": self.classifier_id,
                    "defect_probability": r.defect_probability,
                    "verdict": Verdict(r.verdict),
                    # (The point these parts were judged at; a refusal for size with the limit
                    # it was refused at.)
                    "thresholds": point
                    if r.refused_over is None
                    else {**point, REFUSED_OVER_KEY: r.refused_over},
                    "latency_ms": r.latency_ms,
                    "error": r.error,
                    "boxes_left_out": r.boxes_left_out,
                    "inspected_at": now,
                }
                for r in results
            ]
            inspection_ids = {
                part_id: inspection_id
                for part_id, inspection_id in connection.execute(
                    insert(Inspection).returning(Inspection.part_id, Inspection.id), inspection_rows
                )
            }
            prediction_rows = [
                {
                    "inspection_id": inspection_ids[part_ids[r.content_hash]],
                    "source": PredictionSource.DETECTOR,
                    "class_name": d.class_name,
                    "confidence": d.confidence,
                    "x1": d.x1,
                    "y1": d.y1,
                    "x2": d.x2,
                    "y2": d.y2,
                    "counted": d.counted,
                    "verification_score": d.verification,
                }
                for r in results
                for d in r.detections
            ]
            if prediction_rows:
                connection.execute(insert(Prediction), prediction_rows)
            if finishing:
                self._mark_finished(connection)
        self.checkpointer.committed()
        return finishing

    def watch(
        self,
        folder: Path,
        stop: Event,
        on_result: Callable[[PartResult], None] | None = None,
        poll_seconds: float = 1.0,
        settle_seconds: float = 0.5,
        known: set[FileKey] | None = None,
        first: Iterable[SourceItem] = (),
        on_recorded: OnRecorded | None = None,
    ) -> BatchSummary:
        """`first` (the folder as it was), then the files that appear in `folder` until `stop`
        is set (`known`: files already read, by `file_key`, which are left alone unless they
        change). `on_recorded`: as `run`'s.

        The run stays open while the watch goes on (the Live page and `defects status` show
        it at work) and is marked finished when it stops, by `stop` or Ctrl-C: a watch killed
        outright leaves it open, which tells the two apart."""
        database_gone = False
        try:
            self.run(first, on_result, finish=False, on_recorded=on_recorded)
            for ready in hot_folder_batches(folder, stop, poll_seconds, settle_seconds, known):
                self.run(ready, on_result, finish=False, on_recorded=on_recorded)
        except DatabaseError:
            database_gone = True
            raise
        finally:
            if self.mover is not None:
                self.mover.flush_warnings()
            if self.owns_run and database_gone:
                # The outage has outlasted its limit already: one try, not a second wait.
                with contextlib.suppress(DatabaseError):
                    self._finish_run()
            elif self.owns_run:
                self._through_outages(self._finish_run)
        return self.summary


# A file as a hot folder knows it: path, size, modification and change times, inode.
FileKey = tuple[str, int, int, int, int]


def file_key(file: Path | str) -> FileKey | None:
    """A file written again is a new one. None: gone. (The change time and the inode tell a
    file copied over another of the same size apart where the modification time cannot: a
    share's or a FAT disk's coarse clock, or a copy that keeps the time.)"""
    try:
        stat = os.stat(file)
    except OSError:
        return None
    return (str(file), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


def settled_files(files: list[Path], settle_seconds: float = 2.0) -> list[Path]:
    """The files last written at least `settle_seconds` ago. A watch reads the folder as it
    finds it at once; a file a camera was still writing then was judged half-written (an
    error), then again once complete. The others are left to the watch, which waits for
    their size to settle."""
    now = time.time()
    settled = []
    for path in files:
        try:
            if now - path.stat().st_mtime >= settle_seconds:
                settled.append(path)
        except OSError:  # (gone, or unreadable: read, and recorded as such)
            settled.append(path)
    return settled


# A hot folder that keeps every frame it is sent: each look reads every file in it again and
# the watch holds a record of each, so a look's time and the station's memory grow with the
# parts judged until the files are moved away. Said at this many files, then at each doubling.
CROWDED_FOLDER_FILES = 100_000


def hot_folder_batches(
    folder: Path,
    stop: Event,
    poll_seconds: float = 1.0,
    settle_seconds: float = 0.5,
    known: set[FileKey] | None = None,
) -> Iterator[list[SourceItem]]:
    """The files that appear in `folder`, one list per look, until `stop` is set.

    A file is taken once its size has not changed for `settle_seconds`, so a camera still
    writing it is not read half-way. Every file is looked at each time (a file written again
    under its old name is a new part); only the sub-folders that changed are listed again. A
    folder that cannot be read any more (a share unmounted) is waited for, not given up on.
    """
    if not folder.is_dir():
        raise UserError(f"hot folder not found: {folder}")
    handled: set[FileKey] = set(known or ())
    sizes: dict[str, tuple[int, float]] = {}
    listing = FolderListing(folder)
    away = False
    crowded_at = CROWDED_FOLDER_FILES  # (the count at which a crowded folder is said next)
    while not stop.is_set():
        ready: list[tuple[list[str], str]] = []
        now = time.monotonic()
        present: set[FileKey] = set()
        try:
            listed = listing.files()
        except OSError as exc:
            # A camera share unmounted, a folder moved away: waited for, as the line runs on.
            if not away:
                logger.warning("the hot folder %s cannot be read (%s): waiting for it", folder, exc)
            away = True
            stop.wait(poll_seconds)
            continue
        if away:
            logger.warning("the hot folder %s is back", folder)
            away = False
        for parts, path in listed:
            key = file_key(path)
            if key is None:
                continue
            present.add(key)
            if key in handled:
                continue
            previous = sizes.get(path)
            if previous is None or previous[0] != key[1]:
                sizes[path] = (key[1], now)
                continue
            if now - previous[1] >= settle_seconds:
                handled.add(key)
                sizes.pop(path, None)
                ready.append((parts, path))
        # Only files still there are remembered: a watch that runs for weeks over a folder that
        # is emptied as it goes keeps no memory of every file it ever saw.
        handled &= present
        if len(present) >= crowded_at:
            logger.warning(
                "the hot folder %s holds %d files: each look reads them all again and the watch "
                "keeps a record of each, so looks slow down and memory grows as parts are "
                "judged; move judged files out of it as they are recorded (--move-judged DIR)",
                folder,
                len(present),
            )
            while crowded_at <= len(present):
                crowded_at *= 2
        elif len(present) < CROWDED_FOLDER_FILES:  # (emptied: said again if it fills again)
            crowded_at = CROWDED_FOLDER_FILES
        if sizes:  # (files still being written: a few)
            there = {key[0] for key in present}
            sizes = {path: size for path, size in sizes.items() if path in there}
        if ready:
            items = [
                item
                for parts, path in sorted(ready)
                for item in file_items(Path(path), os.sep.join(parts))
            ]
            for item in items:
                item.watched = True
            yield items
        stop.wait(poll_seconds)


# A cell a spreadsheet takes for a formula begins so (OWASP, "CSV Injection"; ASVS adds NUL).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\0")


def spreadsheet_text(value: str) -> str:
    """`value` as a CSV cell a spreadsheet shows and never runs: behind a single quote where it
    would start a formula, as OWASP advises. Part names are a camera's or an upload's, class,
    line and station names people's words: a QA engineer opening the CSV in Excel ran a file
    named `=HYPERLINK(...)`. The quote is the only change, so the name stays readable."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def export_run_csv(
    url: str, run_id: int, path: Path, named_keys: list[tuple[str, str]] | None = None
) -> int:
    """A run's parts, verdicts and defects as CSV; returns the number of rows. With
    `named_keys` (each file the command read: its name and `content_key`), the current
    verdict of each of those files, judged by this run or before it; without, the parts the
    run judged."""
    # Written under another name and renamed once whole: a full disk cut a CSV short, and the
    # half file at the name read as the whole run's. Synced, so that a power cut after the
    # command said so does not leave it empty or missing. (A device or a pipe, `/dev/stdout`,
    # is written as it is.)
    special = path.exists() and not path.is_file()
    target = path if special else path.resolve()
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with (target if special else partial).open("w", newline="") as handle:
            written = _write_run_csv(url, run_id, handle, named_keys)
        if not special:
            replace_synced(partial, target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise UserError(
            f"cannot write the CSV {path}: {exc.strerror or exc}; the verdicts are recorded in "
            f"the database (the History page's CSV holds them): {write_advice(exc)}give "
            "--output another place and run the same command again"
        ) from exc
    return written


def _write_run_csv(
    url: str, run_id: int, handle: IO[str], named_keys: list[tuple[str, str]] | None
) -> int:
    """The rows of `export_run_csv` into `handle`; returns how many."""
    written = 0
    with session_scope(url) as session:
        writer = csv.writer(handle)
        writer.writerow([f.name for f in fields(RunRow)])
        rows = (
            run_rows(session, run_id)
            if named_keys is None
            else source_rows(session, run_id, named_keys)
        )
        for row in rows:
            writer.writerow(
                [
                    spreadsheet_text(row.part),
                    row.content_hash,
                    row.verdict,
                    spreadsheet_text(row.defects),
                    # (An error was never judged: 0.0000 there read as a part judged clean.)
                    "" if row.verdict == "error" else f"{row.max_confidence:.4f}",
                    # (To 0.1 ms, as the results feed and `inspect --json` give it: one part's
                    # latency read 12.35 here and 12.3 there.)
                    "" if row.latency_ms is None else shown_latency(row.latency_ms),
                    spreadsheet_text(row.error),
                    # Stored in UTC: said so, as `defects status --json` does (a station
                    # on local time read it as its own).
                    row.inspected_at.isoformat(timespec="seconds") + "Z",
                    f"{row.defect_probability:.4f}" if row.defect_probability is not None else "",
                    # (Judged in tiles or whole, in words, and the counted boxes not kept: as
                    # the History page's CSV gives them; empty for an error.)
                    "" if row.verdict == "error" else station_grid(row.grid),
                    "" if row.boxes_left_out is None else row.boxes_left_out,
                ]
            )
            written += 1
    return written


def noting_keys(
    items: Iterable[SourceItem], named_keys: list[tuple[str, str]]
) -> Iterator[SourceItem]:
    """`items`, each one's name and content key noted as it passes (for the batch's CSV). The
    key is kept on the item, so neither the dealer nor a worker hashes it a second time."""
    for item in items:
        if item is not WRITE_NOW:
            named_keys.append((item.name, content_key(item)))
        yield item

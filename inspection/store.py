"""Pruning the image store: a station at 5 frames a second fills a disk within weeks, while the
history, the rates and the reviews need only the database.

The store names each file by its content (`inspection.images.store_image`), one file a part.
A prune deletes the files of parts last judged before a cut-off, keeping by default those of
failed parts (the evidence a reviewer opens) and of reviewed parts (what a plant retrains on),
and leaves every verdict, detection and review in the database. It deletes only files inside
this machine's store, whatever path a part recorded.

A prune runs every night over a store whose older parts earlier prunes have dealt with. It
notes its cut-off in the store (`LAST_PRUNE_FILE`), and the next looks only at the parts last
judged since: a station's years hold many millions of parts, and reading them all again every
night to find their images gone took ever longer (bench/prune_nightly.py). The note is kept beside the images it speaks
of (each machine prunes its own store, and a backup of the store carries it), and is used only
by a prune keeping at least what the noted one kept, on the same database.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from db.models import database_utcnow
from db.queries import kept_old_parts, prunable_images
from db.session import session_scope, without_passwords
from inspection.errors import UserError
from inspection.images import replace_synced, sync_folder
from inspection.settings import same_place_under

# A `.partial` file is an image being written (store_image renames it within moments); one an
# hour old was left by a station killed mid-write. An image written or touched (store_image,
# for a part judged again) within the hour may be a part's whose verdict is not committed yet.
PARTIAL_AGE_S = 3600

# In the store's root, where no image is (images are in folders named by their first bytes).
LAST_PRUNE_FILE = ".last-prune.json"


@dataclass
class PruneReport:
    deleted: int = 0  # image files deleted (or, in a dry run, that would be)
    freed_bytes: int = 0
    already_gone: int = 0  # parts whose image was not in this store any more
    elsewhere: int = 0  # parts whose image is outside this machine's store: not touched
    kept_failed: int = 0  # old parts whose images were kept: failed
    kept_reviewed: int = 0  # ... and reviewed, not failed
    partials: int = 0  # half-written files of killed stations, deleted
    in_use: int = 0  # images stored or touched within the hour (a part being judged): kept
    # The cut-off of the last prune, where only the parts last judged since were looked at.
    since: datetime | None = None
    # Why this prune's cut-off could not be noted (the store read-only or full), or "".
    not_noted: str = ""


@dataclass(frozen=True)
class _LastPrune:
    """What a finished prune looked at: every part last judged before `before`, keeping the
    images of failed and of reviewed parts as told, in `database`'s parts."""

    before: datetime
    keep_failed: bool
    keep_reviewed: bool
    database: str

    def covers(self, keep_failed: bool, keep_reviewed: bool, database: str) -> bool:
        """A prune deleting what this one kept (failed or reviewed parts' images) looks at the old
        parts again, as does one on another database."""
        return (
            database == self.database
            and (keep_failed or not self.keep_failed)
            and (keep_reviewed or not self.keep_reviewed)
        )


def _read_last_prune(images_dir: Path) -> _LastPrune | None:
    """The note of the last finished prune, or None where there is none (or it is unreadable:
    then every old part is looked at, as by a first prune)."""
    try:
        noted = json.loads((images_dir / LAST_PRUNE_FILE).read_text(encoding="utf-8"))
        return _LastPrune(
            datetime.fromisoformat(noted["before"]),
            bool(noted["keep_failed"]),
            bool(noted["keep_reviewed"]),
            str(noted["database"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_last_prune(images_dir: Path, last: _LastPrune, emptied: set[Path]) -> None:
    """Written whole under another name and renamed, so a prune killed while writing it leaves
    the note before it. That name is this prune's own: two prunes of one store (a timer's and
    one run by hand) ending together shared one, and the second to rename it found it gone.

    The folders the prune deleted from (`emptied`) are synced first, and the note then synced
    in place: after a power cut a note that stood while an image it covers came back made no
    later prune look at that part again, its image kept for ever."""
    for folder in sorted(emptied):
        sync_folder(folder)
    images_dir.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f"{LAST_PRUNE_FILE}.", suffix=".writing", dir=images_dir)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as partial:
            json.dump(
                {
                    "before": last.before.isoformat(),
                    "keep_failed": last.keep_failed,
                    "keep_reviewed": last.keep_reviewed,
                    "database": last.database,
                },
                partial,
            )
        replace_synced(Path(name), images_dir / LAST_PRUNE_FILE)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def _database_named(url: str) -> str:
    """The database as the note names it: the SHA-256 of its URL without a password (in the
    user part or the query), so that the same database under a new password is the same, and
    the note, copied with backups of the store, names no user, host or password."""
    bare = without_passwords(url).render_as_string(hide_password=False)
    return hashlib.sha256(bare.encode()).hexdigest()


def prune_images(
    url: str,
    images_dir: Path,
    older_than_days: float,
    keep_failed: bool = True,
    keep_reviewed: bool = True,
    dry_run: bool = False,
    on_progress: Callable[[int], None] | None = None,
    look_at_all: bool = False,
) -> PruneReport:
    """Delete the stored images of parts last judged more than `older_than_days` ago (by the
    database's clock, which stamps the verdicts): of those last judged since the last finished
    prune's cut-off, or of all of them with `look_at_all` (or where no prune noted one)."""
    report = PruneReport()
    emptied: set[Path] = set()  # the folders images were deleted from
    store = images_dir.resolve()
    in_use_after = time.time() - PARTIAL_AGE_S
    database = _database_named(url)
    last = None if look_at_all else _read_last_prune(images_dir)
    if last is not None and not last.covers(keep_failed, keep_reviewed, database):
        last = None
    report.since = last.before if last is not None else None
    with session_scope(url) as session:
        before = database_utcnow(session) - timedelta(days=older_than_days)
        if keep_failed or keep_reviewed:
            failed, reviewed = kept_old_parts(session, before, keep_failed, report.since)
            report.kept_failed = failed if keep_failed else 0
            report.kept_reviewed = reviewed if keep_reviewed else 0
        for seen, (_, stored_path) in enumerate(
            prunable_images(session, before, keep_failed, keep_reviewed, report.since), start=1
        ):
            path = _image_in_store(stored_path, images_dir, store)
            if path is None:
                report.elsewhere += 1  # (another station's disk, or a path this store never had)
            else:
                try:
                    info = path.stat()
                    # (A station judging this part again now touched it: its verdict, not
                    # committed yet, is not among those read above.)
                    in_use = info.st_mtime >= in_use_after
                    if not dry_run and not in_use:
                        path.unlink()
                        emptied.add(path.parent)
                except FileNotFoundError:
                    report.already_gone += 1
                except OSError as exc:
                    raise _stopped(path, exc, report) from exc
                else:
                    if in_use:
                        report.in_use += 1
                    else:
                        report.deleted += 1
                        report.freed_bytes += info.st_size
            if on_progress and seen % 1000 == 0:
                on_progress(seen)
    try:
        report.partials = _prune_partials(images_dir, dry_run)
    except OSError as exc:
        raise _stopped(Path(exc.filename or images_dir), exc, report) from exc
    # (An image kept as in use belongs to a part being judged again, whose new verdict brings
    # it back into a later window; but if that judging never commits, only the parts this
    # prune looked at again next time find it, so the cut-off does not move.)
    if not dry_run and not report.in_use:
        # (A longer --older-than than the last prune's looked at nothing the last did not.)
        noted = max(before, last.before) if last is not None else before
        try:
            _write_last_prune(
                images_dir, _LastPrune(noted, keep_failed, keep_reviewed, database), emptied
            )
        except OSError as exc:
            # (The images are deleted: the prune did its work. Without the note the next one
            # looks at these parts again, and finds their images gone. Its half is removed by
            # `_write_last_prune`.)
            report.not_noted = exc.strerror or str(exc)
    return report


def _image_in_store(stored_path: str, images_dir: Path, store: Path) -> Path | None:
    """Where this store keeps a part's image: the file of its name here (the store names each
    file by its content), else its recorded path where that is inside this store (the file may
    be gone); None where it is recorded outside and this store has no copy.

    The copy here comes first, even where the recorded path outside still holds a file (the
    old data folder kept after copying it to another disk, another station's store mounted on
    this machine): such a copy was counted as elsewhere and kept, and once the cut-off passed
    its part, never looked at again."""
    here = same_place_under(stored_path, images_dir, depth=2)
    if here.is_file() and here.resolve().is_relative_to(store):
        return here
    recorded = Path(stored_path)
    return recorded if recorded.resolve().is_relative_to(store) else None


def _stopped(path: Path, exc: OSError, report: PruneReport) -> UserError:
    """A file the prune cannot delete (a read-only store, another user's file) stops it, saying
    what it had deleted by then: a bare OSError lost that count, and the cut-off goes unnoted,
    so that the next prune looks at these parts again."""
    done = (
        f"{report.deleted} image(s), {report.freed_bytes / 1e6:.1f} MB, deleted before it"
        if report.deleted
        else "no image deleted"
    )
    return UserError(
        f"the prune stopped: cannot delete {path}: {exc.strerror or exc}; {done}; every "
        "verdict stays, and the next prune looks at these parts again"
    )


def _prune_partials(images_dir: Path, dry_run: bool) -> int:
    """Half-written files older than an hour: left by a station killed mid-write."""
    cutoff, found = time.time() - PARTIAL_AGE_S, 0
    if not images_dir.is_dir():
        return 0
    for folder in os.scandir(images_dir):
        if not folder.is_dir(follow_symlinks=False):
            continue
        for entry in os.scandir(folder.path):
            if entry.name.endswith(".partial") and entry.stat().st_mtime < cutoff:
                found += 1
                if not dry_run:
                    Path(entry.path).unlink(missing_ok=True)
    return found

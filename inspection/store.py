"""Pruning the image store: a station at 5 frames a second fills a disk within weeks, while the
history, the rates and the reviews need only the database.

The store names each file by its content (`inspection.images.store_image`), one file a part.
A prune deletes the files of parts last judged before a cut-off, keeping by default those of
failed parts (the evidence a reviewer opens) and of reviewed parts (what a plant retrains on),
and leaves every verdict, detection and review in the database. It deletes only files inside
this machine's store, whatever path a part recorded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from db.models import database_utcnow
from db.queries import kept_old_parts, prunable_images
from db.session import session_scope
from inspection.images import located_image

# A `.partial` file is an image being written (store_image renames it within moments); one an
# hour old was left by a station killed mid-write. An image written or touched (store_image,
# for a part judged again) within the hour may be a part's whose verdict is not committed yet.
PARTIAL_AGE_S = 3600


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


def prune_images(
    url: str,
    images_dir: Path,
    older_than_days: float,
    keep_failed: bool = True,
    keep_reviewed: bool = True,
    dry_run: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> PruneReport:
    """Delete the stored images of parts last judged more than `older_than_days` ago (by the
    database's clock, which stamps the verdicts)."""
    report = PruneReport()
    store = images_dir.resolve()
    in_use_after = time.time() - PARTIAL_AGE_S
    with session_scope(url) as session:
        before = database_utcnow(session) - timedelta(days=older_than_days)
        if keep_failed or keep_reviewed:
            failed, reviewed = kept_old_parts(session, before, keep_failed)
            report.kept_failed = failed if keep_failed else 0
            report.kept_reviewed = reviewed if keep_reviewed else 0
        for seen, (_, stored_path) in enumerate(
            prunable_images(session, before, keep_failed, keep_reviewed), start=1
        ):
            path = located_image(stored_path, images_dir)
            if not path.resolve().is_relative_to(store):
                report.elsewhere += 1  # (another station's disk, or a path this store never had)
            else:
                try:
                    info = path.stat()
                    # (A station judging this part again now touched it: its verdict, not
                    # committed yet, is not among those read above.)
                    in_use = info.st_mtime >= in_use_after
                    if not dry_run and not in_use:
                        path.unlink()
                except FileNotFoundError:
                    report.already_gone += 1
                else:
                    if in_use:
                        report.in_use += 1
                    else:
                        report.deleted += 1
                        report.freed_bytes += info.st_size
            if on_progress and seen % 1000 == 0:
                on_progress(seen)
    report.partials = _prune_partials(images_dir, dry_run)
    return report


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

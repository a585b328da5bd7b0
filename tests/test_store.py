"""Pruning the image store: old parts' images go, failed and reviewed ones stay, the database
keeps every verdict."""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from db.models import Inspection, Part, Verdict, database_utcnow
from db.reviews import mark_good
from db.session import session_scope
from inspection.batch import BatchInspection, iter_source
from inspection.errors import UserError
from inspection.images import store_image
from inspection.settings import get_settings
from inspection.store import LAST_PRUNE_FILE, _database_named, prune_images
from tests.conftest import Trained, migrated, register_production_detector
from tests.synthetic import make_images
from training.cli import app


def _five_parts(url: str, trained: Trained, tmp_path: Path, store: Path) -> dict[str, Path]:
    """Five judged parts by role: four judged 40 days ago (one plain, one failed, one
    reviewed, one whose image is recorded outside the store) and one judged today."""
    register_production_detector(url, trained.weights, tmp_path / "models")
    make_images(tmp_path / "in", n=5)
    BatchInspection(url, store, "L", "S").run(iter_source(str(tmp_path / "in")))
    roles = ("plain", "failed", "reviewed", "elsewhere", "recent")
    outside = tmp_path / "elsewhere.png"
    with session_scope(url) as session:
        parts = session.scalars(select(Part).order_by(Part.id)).all()
        by_role = dict(zip(roles, parts, strict=True))
        long_ago = database_utcnow(session) - timedelta(days=40)
        old_ids = [by_role[r].id for r in roles[:4]]
        session.execute(update(Part).where(Part.id.in_(old_ids)).values(captured_at=long_ago))
        session.execute(
            update(Inspection).where(Inspection.part_id.in_(old_ids)).values(inspected_at=long_ago)
        )
        session.execute(
            update(Inspection)
            .where(Inspection.part_id == by_role["failed"].id)
            .values(verdict=Verdict.FAIL)
        )
        session.execute(
            update(Inspection)
            .where(Inspection.part_id != by_role["failed"].id)
            .values(verdict=Verdict.PASS)
        )
        mark_good(session, by_role["reviewed"].id, "ana")
        outside.write_bytes(Path(by_role["elsewhere"].stored_path).read_bytes())
        by_role["elsewhere"].stored_path = str(outside)
        images = {role: Path(part.stored_path) for role, part in by_role.items()}
    then = time.time() - 40 * 86400  # (their files written when they were judged)
    for role in roles[:4]:
        os.utime(images[role], (then, then))
    return images


def test_a_prune_deletes_old_images_and_keeps_failed_reviewed_and_recent_ones(
    database_url: str, trained: Trained, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    images = _five_parts(database_url, trained, tmp_path, store)
    killed = store / "ab" / f"{'ab' * 32}.png.0123456789ab.partial"  # a station killed mid-write
    killed.parent.mkdir(exist_ok=True)
    killed.write_bytes(b"half")
    os.utime(killed, (time.time() - 7200, time.time() - 7200))
    writing = store / "ab" / f"{'ab' * 32}.png.ba9876543210.partial"  # being written now
    writing.write_bytes(b"half")

    dry = prune_images(database_url, store, 30, dry_run=True)
    assert (dry.deleted, dry.kept_failed, dry.kept_reviewed, dry.elsewhere) == (1, 1, 1, 1)
    assert dry.freed_bytes == images["plain"].stat().st_size and dry.partials == 1
    assert all(path.is_file() for path in images.values()) and killed.is_file()

    report = prune_images(database_url, store, 30)
    assert (report.deleted, report.partials, report.already_gone) == (1, 1, 0)
    assert not images["plain"].exists() and not killed.exists() and writing.exists()
    assert all(images[r].is_file() for r in ("failed", "reviewed", "recent", "elsewhere"))
    with session_scope(database_url) as session:  # the history is whole
        assert session.scalar(select(func.count(Inspection.id))) == 5

    again = prune_images(database_url, store, 30, keep_failed=False, keep_reviewed=False)
    assert again.deleted == 2 and again.already_gone == 1 and again.elsewhere == 1
    assert not images["failed"].exists() and not images["reviewed"].exists()
    assert images["recent"].is_file() and images["elsewhere"].is_file()


def test_prune_images_from_the_command_line(trained: Trained, tmp_path: Path) -> None:
    settings = get_settings()
    url = settings.resolved_database_url
    migrated(url)
    images = _five_parts(url, trained, tmp_path, settings.images_dir)
    runner = CliRunner()
    dry = runner.invoke(app, ["prune-images", "--older-than", "30", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    said = " ".join(dry.output.split())
    assert "would delete 1 image(s)" in said
    assert "kept the images of 1 failed and 1 reviewed part(s) that old" in said
    assert "1 image(s) are recorded outside this machine's store" in said and "not touched" in said
    assert images["plain"].is_file()
    done = runner.invoke(app, ["prune-images", "--older-than", "30"])
    assert done.exit_code == 0 and "deleted 1 image(s)" in done.output
    assert not images["plain"].exists()
    refused = runner.invoke(app, ["prune-images", "--older-than", "0"])
    assert refused.exit_code != 0
    _judged_days_ago(url, images["failed"], 20)  # (judged again since the cut-off)
    one = runner.invoke(app, ["prune-images", "--older-than", "1", "--dry-run"])
    assert "judged over 1 day ago" in " ".join(one.output.split())  # (not "1 days")
    # (Counted among the parts looked at, not among all that old.)
    assert "kept the images of 1 failed part(s) of those" in " ".join(one.output.split())
    assert "judged over 30 days ago" in " ".join(dry.output.split())
    since = "looked only at the parts last judged since the last prune's cut-off"
    assert since in " ".join(one.output.split()) and since not in said
    again = runner.invoke(app, ["prune-images", "--older-than", "1", "--dry-run", "--all"])
    assert again.exit_code == 0 and since not in " ".join(again.output.split())


def test_an_age_no_calendar_holds_is_refused_in_one_line(tmp_path: Path) -> None:
    """`--older-than inf` (or 1e12) passed the option's check and failed in the date
    arithmetic with a traceback; `nan` is refused as well."""
    migrated(get_settings().resolved_database_url)
    runner = CliRunner()
    for days in ("inf", "1e12", "nan"):
        result = runner.invoke(app, ["prune-images", "--older-than", days])
        assert result.exit_code == 2, (days, result.output, result.exception)
        assert "--older-than" in result.output


def test_an_image_a_station_stores_again_while_a_prune_runs_is_kept(
    database_url: str, trained: Trained, tmp_path: Path
) -> None:
    """A station judging an old part again (another model version, a recalibration) finds
    its image in the store and keeps it; its verdict, committed a moment later, is not yet
    seen by a prune running meanwhile, which deleted the image of a part judged just now."""
    store = tmp_path / "store"
    plain = _five_parts(database_url, trained, tmp_path, store)["plain"]
    store_image(store, plain.name.split(".")[0], "again.png", plain.read_bytes())
    report = prune_images(database_url, store, 30)  # (before the station's commit)
    assert plain.is_file() and (report.deleted, report.in_use) == (0, 1)
    # (Were the judging never committed, only a prune looking at the part again finds it.)
    assert not (store / LAST_PRUNE_FILE).exists()


def test_a_prune_that_takes_failed_parts_counts_the_reviewed_failures_it_keeps(
    database_url: str, trained: Trained, tmp_path: Path
) -> None:
    """--no-keep-failed: a failed part that was reviewed is kept as reviewed, and was left out
    of the count of reviewed parts kept (counted there only when not failed)."""
    store = tmp_path / "store"
    images = _five_parts(database_url, trained, tmp_path, store)
    with session_scope(database_url) as session:
        failed = session.scalars(select(Part).where(Part.stored_path == str(images["failed"])))
        mark_good(session, failed.one().id, "ana")
    report = prune_images(database_url, store, 30, keep_failed=False, dry_run=True)
    assert (report.deleted, report.kept_failed, report.kept_reviewed) == (1, 0, 2)


def _judged_days_ago(url: str, image: Path, judged: float, captured: float | None = None) -> None:
    """Moves the part of a stored image back in time, its file with it."""
    with session_scope(url) as session:
        part = session.scalars(select(Part).where(Part.stored_path == str(image))).one()
        now = database_utcnow(session)
        part.captured_at = now - timedelta(days=judged if captured is None else captured)
        session.execute(
            update(Inspection)
            .where(Inspection.part_id == part.id)
            .values(inspected_at=now - timedelta(days=judged))
        )
    then = time.time() - judged * 86400
    if image.exists():
        os.utime(image, (then, then))


def test_a_nightly_prune_looks_only_at_parts_last_judged_since_the_last_ones_cut_off(
    database_url: str, trained: Trained, tmp_path: Path
) -> None:
    """A prune read every old part again, night after night, to find most images gone: a
    station's years are many millions of parts. It now looks at those last judged since the
    last finished prune's cut-off; `look_at_all` at every one."""
    store = tmp_path / "store"
    images = _five_parts(database_url, trained, tmp_path, store)
    first = prune_images(database_url, store, 30)
    assert first.since is None and first.deleted == 1 and (store / LAST_PRUNE_FILE).is_file()
    images["plain"].write_bytes(b"back from a backup")  # (a part the first prune saw)
    _judged_days_ago(database_url, images["plain"], 40)
    _judged_days_ago(database_url, images["recent"], 20, captured=50)  # (judged again since)
    _judged_days_ago(database_url, images["elsewhere"], 20)  # (new since)

    second = prune_images(database_url, store, 10)
    assert second.since is not None
    with session_scope(database_url) as session:
        cut_off = database_utcnow(session) - timedelta(days=30)
    assert abs(second.since - cut_off) < timedelta(minutes=5)
    assert (second.deleted, second.elsewhere, second.already_gone) == (1, 1, 0)
    assert (second.kept_failed, second.kept_reviewed) == (0, 0)  # (seen by the first)
    assert not images["recent"].exists() and images["plain"].is_file()

    everything = prune_images(database_url, store, 10, look_at_all=True)
    assert everything.since is None and not images["plain"].exists()
    assert (everything.deleted, everything.already_gone, everything.elsewhere) == (1, 1, 1)
    assert (everything.kept_failed, everything.kept_reviewed) == (1, 1)


def test_the_last_prunes_cut_off_serves_only_a_prune_deleting_no_more_on_the_same_database(
    database_url: str, trained: Trained, tmp_path: Path
) -> None:
    """A prune that deletes failed or reviewed parts' images, one on another database, and
    one after a dry run or an unreadable note look at every old part again."""
    store = tmp_path / "store"
    images = _five_parts(database_url, trained, tmp_path, store)
    assert prune_images(database_url, store, 30, dry_run=True).deleted == 1
    assert not (store / LAST_PRUNE_FILE).exists()  # (a dry run notes nothing)
    prune_images(database_url, store, 30, keep_reviewed=False)  # (the reviewed part's goes)
    assert not images["reviewed"].exists()
    assert prune_images(database_url, store, 30, dry_run=True).since is not None
    failed = prune_images(database_url, store, 30, keep_failed=False, dry_run=True)
    assert failed.since is None and failed.deleted == 1  # (the failed part's image)

    other = f"sqlite:///{tmp_path / 'other.db'}"
    migrated(other)
    assert prune_images(other, store, 30, dry_run=True).since is None
    (store / LAST_PRUNE_FILE).write_text("{half a no", encoding="utf-8")
    unreadable = prune_images(database_url, store, 30)
    assert unreadable.since is None and (unreadable.already_gone, unreadable.kept_failed) == (1, 1)
    assert prune_images(database_url, store, 30, dry_run=True).since is not None


def test_a_prune_deletes_its_own_stores_copy_of_an_image_recorded_in_a_store_still_there(
    database_url: str, trained: Trained, tmp_path: Path
) -> None:
    """A data folder copied to another disk with the old one kept (or another station's store
    mounted on this machine): the parts recorded at the old store's paths, which still held
    their files, were counted as elsewhere and their copies here kept, and the cut-off then
    passed them for good. The copy in this store goes; the file outside is not touched."""
    old = tmp_path / "store"
    images = _five_parts(database_url, trained, tmp_path, old)
    new = tmp_path / "new-disk" / "images"
    shutil.copytree(old, new)
    copy = new / images["plain"].parent.name / images["plain"].name

    report = prune_images(database_url, new, 30)
    assert (report.deleted, report.elsewhere, report.already_gone) == (1, 1, 0)
    assert not copy.exists() and images["plain"].is_file()  # (the old folder is left as it was)
    assert (new / images["failed"].parent.name / images["failed"].name).is_file()
    again = prune_images(database_url, new, 30, look_at_all=True)
    assert (again.deleted, again.elsewhere, again.already_gone) == (0, 2, 0)


def test_two_prunes_ending_together_each_note_their_cut_off(
    database_url: str, trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two prunes of one store (a nightly timer's and one run by hand) wrote their notes
    through the same half-written file: the one that renamed it second found it gone, and its
    prune, its images deleted, ended in a traceback."""
    from inspection import store as store_module

    store = tmp_path / "store"
    _five_parts(database_url, trained, tmp_path, store)
    real_replace = os.replace
    others: list[int | None] = []

    def replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        if Path(target).name == LAST_PRUNE_FILE and not others:
            others.append(None)
            others[0] = prune_images(database_url, store, 30).deleted  # (ends meanwhile)
        real_replace(source, target)

    monkeypatch.setattr(store_module.os, "replace", replace)
    assert prune_images(database_url, store, 30).deleted == 1
    assert others == [0]  # (the other found the image gone already)
    assert prune_images(database_url, store, 30, dry_run=True).since is not None
    assert [p.name for p in store.iterdir() if p.is_file()] == [LAST_PRUNE_FILE]


def test_a_prunes_note_reaches_the_disk_after_its_deletions(
    database_url: str, trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cut-off note was renamed into place unsynced, and the deletions before it too: after
    a power cut the note could stand while an image it covers came back, and no later prune
    looked at that part again (its image kept for ever). The deleted images' folder is synced,
    then the note's bytes, then, once renamed, its name."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("no /proc here")
    store = tmp_path / "store"
    images = _five_parts(database_url, trained, tmp_path, store)
    note = store / LAST_PRUNE_FILE
    synced: list[tuple[str, bool]] = []  # each path synced, and whether the note had its name
    fsync = os.fsync

    def spying_fsync(fd: int) -> None:
        fsync(fd)
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), note.exists()))

    monkeypatch.setattr(os, "fsync", spying_fsync)
    assert prune_images(database_url, store, 30).deleted == 1
    folder, (written, named_then), (store_synced, named) = synced
    assert folder == (str(images["plain"].parent.resolve()), False)
    assert Path(written).name.startswith(f"{LAST_PRUNE_FILE}.") and not named_then
    assert (store_synced, named) == (str(store.resolve()), True)


def test_a_prune_that_cannot_note_its_cut_off_still_says_what_it_deleted(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cut-off note is written after the images are deleted: a full store failed its write
    and the prune ended in "error: [Errno 28] No space left on device", exit 1, the deletions
    unsaid and a half note left. It now says what it deleted and that the cut-off is not noted,
    and leaves no half note. (The full store is simulated: the note's write raises ENOSPC.)"""
    settings = get_settings()
    url = settings.resolved_database_url
    migrated(url)
    images = _five_parts(url, trained, tmp_path, settings.images_dir)
    from inspection import store as store_module

    def full(noted: object, handle: Any) -> None:
        handle.write("{")  # (what the disk had room for)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module.json, "dump", full)
    done = CliRunner().invoke(app, ["prune-images", "--older-than", "30"])
    said = " ".join(done.output.split())
    assert done.exit_code == 0, (said, done.exception)
    assert "deleted 1 image(s)" in said and not images["plain"].exists()
    assert "could not note this prune's cut-off" in said and "No space left on device" in said
    assert not any(p.name.startswith(LAST_PRUNE_FILE) for p in settings.images_dir.iterdir())


def test_a_prune_of_a_store_it_cannot_delete_from_stops_in_one_line_saying_so(
    database_url: str, trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only store (remounted so, another user's files on a shared one) stopped the prune
    with the system's bare error: how many images it had deleted by then went unsaid. (Simulated:
    each delete raises EROFS.)"""
    store = tmp_path / "store"
    images = _five_parts(database_url, trained, tmp_path, store)
    unlink = Path.unlink

    def read_only(self: Path, missing_ok: bool = False) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(UserError) as stopped:
        prune_images(database_url, store, 30)
    said = str(stopped.value)
    assert f"cannot delete {images['plain']}: Read-only file system" in said
    assert "no image deleted" in said and "the next prune looks at these parts again" in said
    assert images["plain"].is_file() and not (store / LAST_PRUNE_FILE).exists()
    monkeypatch.setattr(Path, "unlink", unlink)
    assert prune_images(database_url, store, 30).deleted == 1  # (writable again)


def test_the_prune_note_names_its_database_by_a_hash_holding_no_password(
    database_url: str, trained: Trained, tmp_path: Path
) -> None:
    """The note, kept in the store and copied with its backups, held the database's URL: its
    user and host, and a password given in the URL's query whole. It now holds a hash of the
    URL without its password: a new password is the same database, another database is not."""
    named = _database_named("postgresql+psycopg://qa:s3cret@db.plant/defects?password=s3cret")
    assert "s3cret" not in named and "plant" not in named and "qa" not in named
    assert named == _database_named("postgresql+psycopg://qa:other@db.plant/defects")
    assert named == _database_named("postgresql+psycopg://qa@db.plant/defects")
    assert named != _database_named("postgresql+psycopg://qa:s3cret@db.plant/other")

    store = tmp_path / "store"
    _five_parts(database_url, trained, tmp_path, store)
    prune_images(database_url, store, 30)
    note = (store / LAST_PRUNE_FILE).read_text(encoding="utf-8")
    assert make_url(database_url).database not in note
    assert json.loads(note)["database"] == _database_named(database_url)
    assert prune_images(database_url, store, 30, dry_run=True).since is not None

from __future__ import annotations

from pathlib import Path

import pytest

from db.models import ModelKind, ModelStage, ModelVersion
from db.registry import (
    NotFoundError,
    ensure_station,
    get_model_version,
    production_model,
    promote,
    rollback,
)
from inspection.errors import UserError


def _register_tiny_classifier(session, weights: Path, models: Path, name: str) -> ModelVersion:  # type: ignore[no-untyped-def]
    """`weights` registered as a two-class classifier `name` into `models`: the registrations
    these tests stop, fail or drop the commit of."""
    from training.versions import register_model_version

    return register_model_version(
        session,
        weights,
        models,
        name=name,
        kind=ModelKind.CLASSIFIER,
        architecture="defect-cls-x",
        class_names=["good", "scratch"],
        image_size=64,
    )


def _version(session, name: str) -> ModelVersion:  # type: ignore[no-untyped-def]
    version = ModelVersion(
        name=name, kind=ModelKind.DETECTOR, architecture="a", file_path="f", sha256="0" * 64
    )
    session.add(version)
    session.flush()
    return version


def test_promote_archives_the_previous_and_rollback_restores_it(session) -> None:  # type: ignore[no-untyped-def]
    first, second = _version(session, "first"), _version(session, "second")
    assert promote(session, first) is None
    assert promote(session, second) == first
    assert first.stage is ModelStage.ARCHIVED
    assert production_model(session, ModelKind.DETECTOR) == second
    assert rollback(session, ModelKind.DETECTOR) == first
    assert first.stage is ModelStage.PRODUCTION and second.stage is ModelStage.CANDIDATE
    assert production_model(session, ModelKind.CLASSIFIER) is None
    with pytest.raises(NotFoundError):
        rollback(session, ModelKind.CLASSIFIER)


def test_model_lookup_by_id_or_name(session) -> None:  # type: ignore[no-untyped-def]
    version = _version(session, "demo")
    assert get_model_version(session, "demo") == version
    assert get_model_version(session, str(version.id)) == version
    with pytest.raises(NotFoundError, match="no model version 'nope'"):
        get_model_version(session, "nope")


def test_ensure_station_creates_once(session) -> None:  # type: ignore[no-untyped-def]
    station = ensure_station(session, "Line 1", "Cam A")
    assert ensure_station(session, " Line 1 ", "Cam A").id == station.id
    assert ensure_station(session, "Line 1", "Cam B").line_id == station.line_id
    with pytest.raises(ValueError):
        ensure_station(session, "", "x")
    # Typed in another case at a station: the same line and station, not new ones.
    assert ensure_station(session, "line 1", "cam a").id == station.id
    # Letters SQLite's lower() does not fold: the exact name is still found.
    umlaut = ensure_station(session, "Ölwerk", "Prüfung")
    assert ensure_station(session, "Ölwerk", "Prüfung").id == umlaut.id
    with pytest.raises(ValueError, match="at most 128 characters"):
        ensure_station(session, "Line 1", "x" * 129)


@pytest.mark.parametrize(
    "name", ["L1\nfail", "L1\tx", "L1\u200b", "\ufeffL1", "L\u202e1", "L\u2066x\u2069"]
)
def test_a_line_or_station_name_with_unseen_characters_is_refused(session, name: str) -> None:  # type: ignore[no-untyped-def]
    """A line break or tab split a station's line in `defects status`; a zero-width space or
    a bidirectional override made a second line that reads as the first."""
    ensure_station(session, "L1", "S1")
    with pytest.raises(ValueError, match="invisible characters"):
        ensure_station(session, name, "S1")
    with pytest.raises(ValueError, match="invisible characters"):
        ensure_station(session, "L1", name.replace("L", "S"))


def test_a_station_stored_before_names_were_checked_still_names_it(session) -> None:  # type: ignore[no-untyped-def]
    """Checked before the look-up, a station stored with a tab in its name was refused at
    every run: its watch could not start again."""
    from db.models import ProductionLine, Station

    stored = Station(line=ProductionLine(name="Old\tline"), name="Cam\t2")
    session.add(stored)
    session.flush()
    assert ensure_station(session, "Old\tline", "Cam\t2").id == stored.id
    with pytest.raises(ValueError, match="invisible characters"):
        ensure_station(session, "Old\tline", "Cam\t3")  # (a new one is refused)


def test_a_name_typed_decomposed_is_the_same_line(session) -> None:  # type: ignore[no-untyped-def]
    """ "Línea 1" typed on a Mac (decomposed, NFD) made a second line beside the composed one."""
    import unicodedata

    composed = ensure_station(session, unicodedata.normalize("NFC", "Línea 1"), "Cámara")
    decomposed = ensure_station(
        session, unicodedata.normalize("NFD", "Línea 1"), unicodedata.normalize("NFD", "Cámara")
    )
    assert decomposed.id == composed.id
    # Right-to-left names, emoji and marks people do type are names like any other.
    assert ensure_station(session, "خط ۱", "👩\u200d🔧 S").name == "👩\u200d🔧 S"


def test_two_promotions_at_once_leave_one_production_model(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promotions that raced each read the old production model, archived it and left their
    own in production: two production detectors. The second now loses to a unique index and
    tries again, replacing the first."""
    import db.registry as registry
    from db.session import session_scope

    with session_scope(database_url) as session:
        promote(session, _version(session, "old"))
        _version(session, "mine")
    with session_scope(database_url) as session:  # another station's promotion wins
        promote(session, _version(session, "theirs"))
    reads = []
    real_production_model = registry.production_model

    def read_before_theirs(session, kind):  # type: ignore[no-untyped-def]
        reads.append(kind)  # the first read saw no production model yet (as a race reads it)
        return None if len(reads) == 1 else real_production_model(session, kind)

    monkeypatch.setattr(registry, "production_model", read_before_theirs)
    promoted = registry.promote_version(database_url, "mine")
    assert len(reads) == 2 and promoted.replaced == "theirs"
    with session_scope(database_url) as session:
        stages = {v.name: v.stage for v in session.query(ModelVersion)}
    assert stages == {
        "old": ModelStage.ARCHIVED,
        "theirs": ModelStage.ARCHIVED,
        "mine": ModelStage.PRODUCTION,
    }


def test_a_database_with_two_production_models_keeps_the_last_promoted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    from db.migrate import head_revision, upgrade
    from db.session import get_engine, session_factory

    url = f"sqlite:///{tmp_path / 'raced.db'}"
    upgrade(url, "0005")
    with get_engine(url).begin() as connection:
        for version_id, promoted_at in ((1, "2026-01-01"), (2, "2026-01-03"), (3, "2026-01-02")):
            connection.execute(
                text(
                    "INSERT INTO model_versions (id, name, kind, architecture, file_path, sha256, "
                    "classes, image_size, metrics, thresholds, stage, notes, created_at, "
                    "promoted_at) VALUES (:id, :name, 'detector', 'a', 'f', :sha, '[]', 640, "
                    "'{}', '{}', 'production', '', '2026-01-01', :promoted)"
                ),
                {
                    "id": version_id,
                    "name": f"v{version_id}",
                    "sha": str(version_id) * 64,
                    "promoted": promoted_at,
                },
            )
    assert upgrade(url) == head_revision()
    with session_factory(url)() as session:
        assert production_model(session, ModelKind.DETECTOR).name == "v2"
        stages = {v.name: v.stage for v in session.query(ModelVersion)}
    assert stages == {
        "v1": ModelStage.ARCHIVED,
        "v2": ModelStage.PRODUCTION,
        "v3": ModelStage.ARCHIVED,
    }


def test_two_registrations_in_the_same_second_keep_their_own_weights(
    session, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Both took the same name from the same look-up and copied into one folder: the version
    with one training's metrics served the other's weights. The folder is now claimed as the
    name is chosen: another process's claim, not yet in the database, moves this one on."""
    from training.versions import _claim_version_folder

    models = tmp_path / "models"
    assert _claim_version_folder(session, models, "race")[0] == "race"  # the other process
    name, folder = _claim_version_folder(session, models, "race")  # its row not committed yet
    assert name == "race-2" and folder == models / "race-2" and folder.is_dir()
    _version(session, "race-3")  # a name taken in the database is skipped as well
    assert _claim_version_folder(session, models, "race")[0] == "race-4"


def test_a_roll_back_of_a_model_no_longer_in_production_is_refused(database_url: str) -> None:
    """Two clicks (or two users) each rolled back one version: two versions down."""
    from db.registry import roll_back
    from db.session import session_scope

    with session_scope(database_url) as session:
        promote(session, _version(session, "A"))
        promote(session, _version(session, "B"))
    assert roll_back(database_url, ModelKind.DETECTOR, replacing="B") == "A"
    with pytest.raises(ValueError, match="A is the production detector now, not B"):
        roll_back(database_url, ModelKind.DETECTOR, replacing="B")
    with session_scope(database_url) as session:
        stages = {v.name: v.stage for v in session.query(ModelVersion)}
    assert stages["A"] == ModelStage.PRODUCTION


def test_a_rollback_puts_back_the_version_replaced_last_whatever_the_machines_clocks(
    session, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Promotions were stamped by the clock of the machine that made them, and a rollback puts
    back the version archived last: after a promotion from a machine 10 minutes ahead, a later
    one from another machine rolled back to the version before both."""
    from datetime import UTC, datetime, timedelta

    import db.registry

    first, second, third = (_version(session, n) for n in ("first", "second", "third"))
    promote(session, first)

    def ahead() -> datetime:
        return datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=10)

    with monkeypatch.context() as machine_a:
        machine_a.setattr(db.registry, "utcnow", ahead, raising=False)
        promote(session, second)  # first archived, by machine A
    promote(session, third)  # second archived, by machine B: the latest replaced
    assert rollback(session, ModelKind.DETECTOR) == second


@pytest.mark.parametrize("stopped", ["while hashing the copy", "before the commit"])
@pytest.mark.usefixtures("ctrl_c_raises")
def test_a_registration_stopped_after_its_copy_leaves_no_folder(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stopped: str
) -> None:
    """Stopped (Ctrl-C) after the weights were copied into the model store and before the
    version was committed, a registration left its folder there, weights no version names,
    and the next one took NAME-2. (The Ctrl-C is a real SIGINT to this process.)"""
    import os
    import signal

    import training.versions as versions
    from db.session import session_scope
    from training.versions import register_model_version

    weights, models = tmp_path / "best.pt", tmp_path / "models"
    weights.write_bytes(b"the weights")
    register = {
        "kind": ModelKind.CLASSIFIER,
        "architecture": "defect-cls-x",
        "class_names": ["good", "scratch"],
        "image_size": 64,
    }
    hash_file = versions.sha256_of

    def hashed_then_stopped(path: Path) -> str:
        digest = hash_file(path)
        assert path.is_file()  # (copied: the folder is there to be left behind)
        os.kill(os.getpid(), signal.SIGINT)
        return digest

    if stopped == "while hashing the copy":
        monkeypatch.setattr(versions, "sha256_of", hashed_then_stopped)
    with pytest.raises(KeyboardInterrupt), session_scope(database_url) as session:
        register_model_version(session, weights, models, name="stopped", **register)
        os.kill(os.getpid(), signal.SIGINT)
    assert list(models.iterdir()) == []
    monkeypatch.setattr(versions, "sha256_of", hash_file)
    with session_scope(database_url) as session:  # committed, it stays
        register_model_version(session, weights, models, name="stopped", **register)
    assert [p.name for p in models.iterdir()] == ["stopped"]
    with session_scope(database_url) as session:
        assert get_model_version(session, "stopped").file_path == str(
            (models / "stopped" / "best.pt").resolve()
        )


def test_a_registration_whose_copy_fails_its_sync_says_to_check_the_disk(
    session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A disk failing the weights' sync (EIO) as a version was registered was told "free space
    there", which would not help; it now says to check the disk, and nothing is left behind."""
    import errno
    import os

    weights, models = tmp_path / "best.pt", tmp_path / "models"
    weights.write_bytes(b"the weights")

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(UserError) as raised:
        _register_tiny_classifier(session, weights, models, "eio")
    said = str(raised.value)
    assert "Input/output error; no model version is registered: check its disk and" in said
    assert "free space" not in said
    assert list(models.iterdir()) == []


def test_a_registration_into_a_folder_not_writable_says_to_make_it_writable(
    session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A model store this user cannot write (EACCES) was told "check its disk", where the
    disk is fine: it says to make the folder writable."""
    import errno
    import shutil

    weights, models = tmp_path / "best.pt", tmp_path / "models"
    weights.write_bytes(b"the weights")

    def refused(src: Path, dst: Path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(shutil, "copy2", refused)
    with pytest.raises(UserError) as raised:
        _register_tiny_classifier(session, weights, models, "eacces")
    said = str(raised.value)
    assert "no model version is registered: make it writable for this user and" in said
    assert list(models.iterdir()) == []


@pytest.mark.parametrize("committed", [True, False])
def test_a_registration_whose_commit_fails_stands_where_the_database_names_its_version(
    database_url: str, tmp_path: Path, committed: bool
) -> None:
    """A training whose registration's COMMIT failed (a connection dropped during it: the
    server may have committed) ended on "database error" alone, its version perhaps there.
    Where the database, read again, names the version the commit was made: it stands, nothing
    is raised (the job was else recorded failed under its registered version); where it names
    none, the plain error."""
    from sqlalchemy import select

    from db.session import DatabaseError, session_scope
    from tests.conftest import registration_commit_dropped
    from training.versions import registration_scope

    weights, models = tmp_path / "best.pt", tmp_path / "models"
    weights.write_bytes(b"the weights")
    raised: list[str] = []
    with registration_commit_dropped(database_url, committed):
        try:
            with registration_scope(database_url) as session:
                _register_tiny_classifier(session, weights, models, "dropped")
        except DatabaseError as exc:
            raised.append(str(exc))
    if committed:
        assert raised == []
    else:
        [said] = raised
        assert said.startswith("database error at ") and "server closed the connection" in said
        assert "may have been registered" not in said
    with session_scope(database_url) as session:
        names = list(session.scalars(select(ModelVersion.name)))
    assert names == (["dropped"] if committed else [])


def test_whether_a_version_names_weights_is_unknown_where_the_database_cannot_say(
    database_url: str, tmp_path: Path
) -> None:
    """Named, not named and "cannot say" (the database unreachable) are three answers: the
    last was True, and a registration was then told the same as one the database confirmed."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from db.session import session_scope
    from training.versions import _named_by_a_version

    weights = tmp_path / "best.pt"
    weights.write_bytes(b"the weights")
    with session_scope(database_url) as session:
        version = _register_tiny_classifier(session, weights, tmp_path / "models", "named")
        file_path = version.file_path
    with session_scope(database_url) as session:
        assert _named_by_a_version(session, file_path) is True
        assert _named_by_a_version(session, str(tmp_path / "other.pt")) is False
    # (A database that cannot be opened: SQLite's file in a folder that is not there.)
    unreachable = create_engine(f"sqlite:///{tmp_path / 'no-such-folder' / 'defects.db'}")
    with Session(unreachable) as session:
        assert _named_by_a_version(session, file_path) is None


def test_a_registration_whose_commit_is_said_to_fail_after_it_happened_keeps_its_weights(
    database_url: str, tmp_path: Path
) -> None:
    """A connection dropped during COMMIT raises although the server may have committed: the
    registration took the error for a rollback and removed the weights' folder, and the
    database named a version whose weights were gone. The commit here is made on the driver's
    connection, then the error a dropped connection raises."""
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    from db.session import get_engine, session_scope

    weights, models = tmp_path / "best.pt", tmp_path / "models"
    weights.write_bytes(b"the weights")
    engine = get_engine(database_url)

    def committed_then_dropped(connection) -> None:  # type: ignore[no-untyped-def]
        connection.connection.dbapi_connection.commit()
        raise OperationalError("COMMIT", {}, Exception("server closed the connection"))

    event.listen(engine, "commit", committed_then_dropped)
    try:
        dropped = pytest.raises(Exception, match="server closed the connection")
        with dropped, session_scope(database_url) as session:
            _register_tiny_classifier(session, weights, models, "committed")
    finally:
        event.remove(engine, "commit", committed_then_dropped)
    with session_scope(database_url) as session:
        version = get_model_version(session, "committed")
    assert Path(version.file_path).read_bytes() == b"the weights"

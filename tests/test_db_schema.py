from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, event, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.migrate import current_revision, head_revision, upgrade
from db.models import (
    Base,
    Inspection,
    InspectionRun,
    ModelKind,
    ModelStage,
    ModelVersion,
    Part,
    Prediction,
    ProductionLine,
    Station,
    Verdict,
    utcnow,
)
from db.session import (
    DatabaseError,
    WalCheckpointer,
    connection_scope,
    get_engine,
    session_factory,
    session_scope,
)


def test_migrations_match_the_models(database_url: str) -> None:
    assert current_revision(database_url) == head_revision()
    with get_engine(database_url).connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_upgrade_is_idempotent(database_url: str) -> None:
    assert upgrade(database_url) == head_revision()


def _line_and_station(session) -> tuple[ProductionLine, Station]:  # type: ignore[no-untyped-def]
    line = ProductionLine(name="L1")
    station = Station(line=line, name="S1")
    session.add_all([line, station])
    session.flush()
    return line, station


def test_part_hash_is_unique_and_predictions_cascade(session) -> None:  # type: ignore[no-untyped-def]
    line, station = _line_and_station(session)
    part = Part(
        content_hash="a" * 64,
        stored_path="images/aa/aaaa.png",
        size_bytes=10,
        line_id=line.id,
        station_id=station.id,
    )
    model = ModelVersion(
        name="m1",
        kind=ModelKind.DETECTOR,
        architecture="defect-yolo-n",
        file_path="m.pt",
        sha256="0" * 64,
    )
    session.add_all([part, model])
    session.flush()
    inspection = Inspection(part_id=part.id, model_version_id=model.id, verdict=Verdict.FAIL)
    inspection.predictions.append(Prediction(class_name="scratch", confidence=0.9))
    session.add(inspection)
    session.commit()
    assert model.stage is ModelStage.CANDIDATE
    stored = session.scalars(select(Inspection)).one()
    assert stored.verdict is Verdict.FAIL and stored.predictions[0].class_name == "scratch"

    session.add(
        Part(
            content_hash="a" * 64,
            stored_path="x",
            size_bytes=1,
            line_id=line.id,
            station_id=station.id,
        )
    )
    with pytest.raises(IntegrityError):
        session.commit()
    session.rollback()

    # A part has one current verdict per model version...
    session.add(Inspection(part_id=part.id, model_version_id=model.id, verdict=Verdict.PASS))
    with pytest.raises(IntegrityError):
        session.commit()
    session.rollback()
    # ...and keeps the earlier ones, superseded, when judged again at a new operating point.
    session.get(Inspection, stored.id).superseded_at = utcnow()
    session.add(Inspection(part_id=part.id, model_version_id=model.id, verdict=Verdict.PASS))
    session.commit()
    assert len(session.scalars(select(Inspection)).all()) == 2

    session.delete(session.get(Inspection, stored.id))
    session.commit()
    assert session.scalars(select(Prediction)).all() == []


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'wal.db'}"
    upgrade(url)
    with get_engine(url).connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() >= 5000


def test_the_write_ahead_log_is_checkpointed_in_the_background(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'checkpointed.db'}"
    upgrade(url)

    def commit_lines(checkpointer: WalCheckpointer, prefix: str, wait: bool) -> None:
        for i in range(10):
            with connection_scope(url) as connection:
                connection.execute(ProductionLine.__table__.insert(), {"name": f"{prefix}{i}"})
            checkpointer.committed()
            if wait:
                checkpointer.wait()

    sparse = WalCheckpointer(url, interval_s=3600)
    commit_lines(sparse, "a", wait=True)
    assert sparse.checkpoints == 1  # the first commit starts one; the rest fall in the interval
    every = WalCheckpointer(url, interval_s=0)
    commit_lines(every, "b", wait=True)
    assert every.checkpoints == 10
    assert not WalCheckpointer("postgresql+psycopg://u@h/db").enabled  # SQLite only


def test_two_sqlite_writers_both_succeed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'writers.db'}"
    upgrade(url)
    errors: list[BaseException] = []

    def write(prefix: str) -> None:
        try:
            for i in range(30):
                with session_scope(url) as session:
                    session.add(ProductionLine(name=f"{prefix}-{i}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(p,)) for p in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with session_factory(url)() as session:
        assert len(session.scalars(select(ProductionLine)).all()) == 60


def test_unreachable_database_gives_a_clear_error() -> None:
    url = "postgresql+psycopg://nobody:secret@127.0.0.1:1/none?connect_timeout=2"
    with pytest.raises(DatabaseError) as excinfo:
        upgrade(url)
    message = str(excinfo.value)
    assert "cannot reach the database" in message
    assert "secret" not in message


def test_invalid_database_url_gives_a_clear_error() -> None:
    with pytest.raises(DatabaseError, match="invalid database URL"):
        upgrade("not a url")


def test_every_migration_downgrades_and_upgrades_again(database_url: str) -> None:
    from alembic import command

    from db.migrate import alembic_config

    command.downgrade(alembic_config(database_url), "base")
    assert current_revision(database_url) is None
    assert upgrade(database_url) == head_revision()
    with get_engine(database_url).connect() as connection:
        context = MigrationContext.configure(connection)
        assert compare_metadata(context, Base.metadata) == []


def test_a_downgrade_unlinks_the_reviews_of_the_superseded_verdicts_it_drops(
    database_url: str,
) -> None:
    """Going below 0002 drops superseded verdicts and their detections: on SQLite, migrated with
    foreign keys off, a review of such a detection went on naming a detection that was gone."""
    from alembic import command

    from db.migrate import alembic_config
    from db.models import Review, ReviewKind

    with session_scope(database_url) as session:
        _line, station = _line_and_station(session)
        part = Part(
            content_hash="b" * 64,
            stored_path="images/bb/bbbb.png",
            size_bytes=10,
            line_id=station.line_id,
            station_id=station.id,
        )
        earlier = Inspection(part=part, verdict=Verdict.FAIL, thresholds={}, superseded_at=utcnow())
        earlier.predictions.append(Prediction(class_name="scratch", confidence=0.4, counted=True))
        current = Inspection(part=part, verdict=Verdict.PASS, thresholds={})
        session.add_all([earlier, current])
        session.flush()
        session.add(
            Review(
                part_id=part.id,
                prediction_id=earlier.predictions[0].id,
                kind=ReviewKind.FALSE_CALL,
                reviewer="qa",
            )
        )
    command.downgrade(alembic_config(database_url), "0001")
    with get_engine(database_url).connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM predictions")).scalar() == 0
        assert connection.execute(text("SELECT prediction_id FROM reviews")).all() == [(None,)]
        if connection.dialect.name == "sqlite":
            assert connection.exec_driver_sql("PRAGMA foreign_key_check").all() == []
    assert upgrade(database_url) == head_revision()


def _older_revisions() -> list[str]:
    from alembic.script import ScriptDirectory

    from db.migrate import alembic_config

    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return [s.revision for s in scripts.walk_revisions() if s.revision != head_revision()]


def _insert_a_verdict(connection: Connection) -> None:
    """One part of line L1, station S1, failed with one detection, in any revision's schema."""
    connection.execute(text("INSERT INTO production_lines VALUES (1, 'L1', '', '2026-01-01')"))
    connection.execute(text("INSERT INTO stations VALUES (1, 1, 'S1', '', '2026-01-01')"))
    connection.execute(
        text(
            "INSERT INTO parts (id, content_hash, stored_path, original_name, size_bytes, "
            "captured_at, line_id, station_id, created_at) "
            "VALUES (1, 'h', 'p.png', 'p.png', 1, '2026-01-01', 1, 1, '2026-01-01')"
        )
    )
    connection.execute(
        text(
            "INSERT INTO inspections (id, part_id, verdict, thresholds, inspected_at) "
            "VALUES (1, 1, 'fail', '{}', '2026-01-01')"
        )
    )
    connection.execute(
        text(
            "INSERT INTO predictions (id, inspection_id, source, class_name, confidence, "
            "counted) VALUES (1, 1, 'detector', 'scratch', 0.9, 1)"
        )
    )


@pytest.mark.parametrize("revision", _older_revisions())
def test_upgrade_keeps_the_verdicts_of_an_older_schema(tmp_path: Path, revision: str) -> None:
    """A plant's database at each earlier revision, upgraded to this one, keeps every verdict,
    detection and review."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, revision)
    with get_engine(url).begin() as connection:
        _insert_a_verdict(connection)
        connection.execute(
            text(
                "INSERT INTO reviews (id, part_id, prediction_id, kind, reviewer, note, "
                "created_at) VALUES (1, 1, 1, 'confirmed_defect', 'qa', '', '2026-01-02')"
            )
        )
    assert upgrade(url) == head_revision()
    with session_factory(url)() as session:
        (kept,) = session.scalars(select(Inspection)).all()
        assert kept.verdict is Verdict.FAIL and kept.superseded_at is None
        # Rebuilding `inspections` on SQLite with foreign keys on deleted its predictions and
        # unlinked their reviews: every command on an old database lost every detection.
        assert [p.class_name for p in kept.predictions] == ["scratch"]
        from db.models import Review

        assert session.scalars(select(Review.prediction_id)).all() == [1]
    with get_engine(url).connect() as connection:  # and the pool's connections enforce again
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_the_login_sessions_migration_goes_up_and_down_and_keeps_the_accounts(
    tmp_path: Path,
) -> None:
    from alembic import command
    from sqlalchemy import inspect as schema

    from db.accounts import add_user, authenticate, keep_login, kept_login, token_hash
    from db.migrate import alembic_config
    from db.models import Role

    url = f"sqlite:///{tmp_path / 'logins.db'}"
    upgrade(url, "0009")
    assert "login_sessions" not in schema(get_engine(url)).get_table_names()
    with session_scope(url) as session:
        add_user(session, "ana", Role.REVIEWER, "long-enough")
    assert upgrade(url) == head_revision()
    with session_scope(url) as session:
        kept = keep_login(session, authenticate(session, "ana", "long-enough"))
    with session_scope(url) as session:
        login = kept_login(session, token_hash(kept.token))
        assert login is not None and login.name == "ana"
    command.downgrade(alembic_config(url), "0009")
    get_engine(url).dispose()
    assert "login_sessions" not in schema(get_engine(url)).get_table_names()
    upgrade(url)
    with session_scope(url) as session:  # the account is kept; its kept login is not
        assert authenticate(session, "ana", "long-enough").ok
        assert kept_login(session, token_hash(kept.token)) is None


def test_the_boxes_left_out_migration_goes_up_and_down_and_keeps_the_verdicts(
    tmp_path: Path,
) -> None:
    """0011 adds how many counted boxes a tiled part left out: null for the verdicts before
    it; taken out again by a downgrade, every verdict and detection kept."""
    from alembic import command
    from sqlalchemy import inspect as schema

    from db.migrate import alembic_config

    url = f"sqlite:///{tmp_path / 'left-out.db'}"
    upgrade(url, "0010")
    with get_engine(url).begin() as connection:
        _insert_a_verdict(connection)
    assert upgrade(url) == head_revision()
    with session_scope(url) as session:
        (earlier,) = session.scalars(select(Inspection)).all()
        assert earlier.boxes_left_out is None
        earlier.boxes_left_out = 2000
    with session_scope(url) as session:
        assert session.scalars(select(Inspection.boxes_left_out)).all() == [2000]
    command.downgrade(alembic_config(url), "0010")
    get_engine(url).dispose()
    columns = {c["name"] for c in schema(get_engine(url)).get_columns("inspections")}
    assert "boxes_left_out" not in columns
    with get_engine(url).connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM predictions")).scalar() == 1
    get_engine(url).dispose()
    assert upgrade(url) == head_revision()


def test_a_database_a_newer_release_migrated_is_refused_untouched(tmp_path: Path) -> None:
    """A station on an older release, pointed at a database another station upgraded: Alembic
    stopped every command and the app with a traceback ("Can't locate revision")."""
    url = f"sqlite:///{tmp_path / 'newer.db'}"
    upgrade(url)
    with session_scope(url) as session:
        session.add(ProductionLine(name="L1"))
    with get_engine(url).begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    with pytest.raises(DatabaseError, match=r"revision f00d, newer than this release knows"):
        upgrade(url)
    assert current_revision(url) == "f00d"
    with session_scope(url) as session:
        assert session.scalars(select(ProductionLine.name)).all() == ["L1"]


def test_a_migration_stopped_part_way_leaves_the_database_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite wrote each CREATE, DROP and ALTER of a migration at once, outside its transaction:
    an upgrade stopped part-way (a power cut) left a rebuilt table at the old revision, and
    every later start failed ("duplicate column name", "table _alembic_tmp_... exists")."""
    from alembic.operations import Operations

    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0001")
    with get_engine(url).begin() as connection:
        connection.execute(text("INSERT INTO production_lines VALUES (1, 'L1', '', '2026-01-01')"))
    stop = RuntimeError("stopped part-way")

    def stopped(*args: object, **kwargs: object) -> None:
        raise stop  # 0002's index, after its rebuild of `inspections`

    with monkeypatch.context() as patched:
        patched.setattr(Operations, "create_index", stopped)
        with pytest.raises(RuntimeError, match="stopped part-way"):
            upgrade(url)
    assert current_revision(url) == "0001"
    with get_engine(url).connect() as connection:
        tables = connection.exec_driver_sql("SELECT name FROM sqlite_master").scalars().all()
        assert not [t for t in tables if t.startswith("_alembic_tmp")]
        columns = [c[1] for c in connection.exec_driver_sql("PRAGMA table_info(inspections)")]
        assert "superseded_at" not in columns
    assert upgrade(url) == head_revision()
    with session_scope(url) as session:
        assert session.scalars(select(ProductionLine.name)).all() == ["L1"]


def _left_by_an_earlier_release(path: Path, copy_rows: list[int], copy: str = "inspections") -> str:
    """A SQLite database at 0001 holding one verdict (id 1), and the copy of `copy` that an
    earlier release's 0002 rebuilt in batch mode (`_alembic_tmp_...`, the new column added),
    left with these rows when that upgrade, not yet one transaction, was stopped part-way."""
    import sqlite3

    url = f"sqlite:///{path}"
    upgrade(url, "0001")
    connection = sqlite3.connect(path)  # (foreign keys off, as that upgrade had them)
    row = (
        "(id, part_id, verdict, thresholds, inspected_at) VALUES (?, 1, 'pass', '{}', '2026-01-01')"
    )
    connection.execute(f"INSERT INTO inspections {row}", (1,))
    [ddl] = connection.execute("SELECT sql FROM sqlite_master WHERE name = ?", (copy,)).fetchone()
    connection.execute(
        ddl.replace(f"CREATE TABLE {copy} (", f"CREATE TABLE _alembic_tmp_{copy} (", 1).replace(
            "PRIMARY KEY (id)", "superseded_at DATETIME, PRIMARY KEY (id)", 1
        )
    )
    for row_id in copy_rows:
        connection.execute(f"INSERT INTO _alembic_tmp_{copy} {row}", (row_id,))
    connection.commit()
    connection.close()
    return url


def _tables(url: str) -> list[str]:
    with get_engine(url).connect() as connection:
        return list(connection.exec_driver_sql("SELECT name FROM sqlite_master").scalars())


def test_a_copy_an_earlier_release_left_mid_upgrade_is_dropped_where_provably_safe(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An earlier release's upgrade, stopped part-way, left `_alembic_tmp_inspections`, and
    every later upgrade failed on it ("table ... already exists") without a word of what to
    do. At the revision before that rebuild, with its table intact and every row of the copy
    still in it, the copy is dropped and that is said; otherwise the upgrade stops in one line
    saying what is there and what to do, touching nothing."""
    from db.session import DatabaseError

    url = _left_by_an_earlier_release(tmp_path / "safe.db", copy_rows=[1])
    with caplog.at_level("WARNING", logger="db.migrate"):
        assert upgrade(url) == head_revision()
    assert "dropped _alembic_tmp_inspections" in caplog.text
    assert "_alembic_tmp_inspections" not in _tables(url)
    with get_engine(url).connect() as connection:
        assert connection.exec_driver_sql("SELECT id FROM inspections").scalars().all() == [1]

    for name, url in (
        # A row of the copy that the table lacks: dropping the copy would lose it.
        ("lost.db", _left_by_an_earlier_release(tmp_path / "lost.db", copy_rows=[1, 2])),
        # A copy of a table no upgrade of this release rebuilds.
        ("other.db", _left_by_an_earlier_release(tmp_path / "other.db", [], copy="parts")),
    ):
        copy = "_alembic_tmp_parts" if name == "other.db" else "_alembic_tmp_inspections"
        with pytest.raises(DatabaseError) as refused:
            upgrade(url)
        [line] = str(refused.value).splitlines()
        assert f"holds {copy}, a copy of the table" in line and "restore the database" in line
        assert current_revision(url) == "0001" and copy in _tables(url)  # touched nothing


def test_a_damaged_or_unplaceable_sqlite_file_is_a_database_error(tmp_path: Path) -> None:
    """Not a driver's traceback: the app and the CLI say the database cannot be used."""
    from db.session import DatabaseError, session_scope

    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"not a database" * 1000)
    with (
        pytest.raises(DatabaseError, match="file is not a database"),
        session_scope(f"sqlite:///{damaged}") as session,
    ):
        session.execute(text("select 1 from parts"))
    (tmp_path / "a-file").write_text("")
    with pytest.raises(DatabaseError, match="is a file, not a folder"):
        upgrade(f"sqlite:///{tmp_path / 'a-file' / 'defects.db'}")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_stations_started_together_on_a_new_database_all_start(
    backend: str, tmp_path: Path
) -> None:
    """Each migrated on start: on PostgreSQL all but one stopped with a traceback
    (alembic_version created twice), on SQLite with "table already exists"."""
    import subprocess
    import sys

    from tests.conftest import POSTGRES_URL, _reset_postgres

    if backend == "postgresql":
        if POSTGRES_URL is None:
            pytest.skip("no PostgreSQL (DEFECTS_TEST_POSTGRES_URL)")
        _reset_postgres(POSTGRES_URL)
        url = POSTGRES_URL
    else:
        url = f"sqlite:///{tmp_path / 'new.db'}"
    root = Path(__file__).resolve().parents[1]
    script = f"from db.migrate import upgrade; print(upgrade({url!r}))"
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(3)
    ]
    outcomes = [(p.wait(timeout=120), *p.communicate()) for p in starts]
    assert [code for code, _, _ in outcomes] == [0, 0, 0], outcomes
    assert {out.decode().strip() for _, out, _ in outcomes} == {head_revision()}


def _locked_error(tmp_path: Path) -> Exception:
    """SQLite's own "database is locked" (SQLITE_BUSY), as SQLAlchemy raises it."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    holder = sqlite3.connect(tmp_path / "held.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        sqlite3.connect(tmp_path / "held.db", timeout=0).execute("SELECT 1 FROM sqlite_master")
    except sqlite3.OperationalError as exc:
        return OperationalError("SELECT 1", {}, exc)
    finally:
        holder.execute("ROLLBACK")
    raise AssertionError("not locked")


def test_a_database_locked_at_once_on_start_is_migrated_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite says "database is locked" without waiting its busy timeout where waiting cannot
    help (a stale read snapshot, a WAL file recovered): one of three stations started together
    on a new database stopped with it."""
    import db.migrate as migrate

    locked = _locked_error(tmp_path)
    real = migrate.command.upgrade
    tries: list[str] = []

    def locked_once(config: object, revision: str) -> None:
        tries.append(revision)
        if len(tries) == 1:
            raise locked
        real(config, revision)  # type: ignore[arg-type]

    monkeypatch.setattr(migrate.command, "upgrade", locked_once)
    url = f"sqlite:///{tmp_path / 'new.db'}"
    assert upgrade(url) == head_revision() == current_revision(url)
    assert tries == ["head", "head"]


def test_a_database_locked_past_its_busy_timeout_is_an_error_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock another process holds past the busy timeout is said, not waited for again."""
    import db.migrate as migrate

    locked = _locked_error(tmp_path)
    tries: list[str] = []

    def locked_for_long(config: object, revision: str) -> None:
        tries.append(revision)
        raise locked

    monkeypatch.setattr(migrate.command, "upgrade", locked_for_long)
    monkeypatch.setattr(migrate, "SQLITE_BUSY_TIMEOUT_MS", 0)  # (each try "waited it out")
    with pytest.raises(DatabaseError, match="database is locked"):
        upgrade(f"sqlite:///{tmp_path / 'new.db'}")
    assert tries == ["head"]


def test_a_postgresql_connection_gives_up_instead_of_hanging() -> None:
    """libpq waits for ever by default: a cut network hung every station without a word."""
    from sqlalchemy.engine import make_url

    from db.session import LIBPQ_TIMEOUTS, _postgres_connect_args

    args = _postgres_connect_args(make_url("postgresql+psycopg://u@db/x"))
    assert {key: args[key] for key in LIBPQ_TIMEOUTS} == LIBPQ_TIMEOUTS
    assert _postgres_connect_args(
        make_url("postgresql+psycopg://u@db/x?connect_timeout=3")
    ).keys() == (LIBPQ_TIMEOUTS.keys() - {"connect_timeout"}) | {"options"}
    assert _postgres_connect_args(make_url("postgresql+pg8000://u@db/x")) == {}


def test_postgresql_connections_turn_jit_off_unless_the_url_sets_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """JIT compiling cost the pages' queries more than it saved on a year of history; a URL's
    (or PGOPTIONS') own jit, and its other options, are kept."""
    from sqlalchemy.engine import make_url

    from db.session import _postgres_connect_args

    def options(url: str) -> str | None:
        return _postgres_connect_args(make_url(url)).get("options")  # type: ignore[return-value]

    monkeypatch.delenv("PGOPTIONS", raising=False)
    assert options("postgresql+psycopg://u@db/x") == "-c jit=off"
    assert options("postgresql+psycopg2://u@db/x") == "-c jit=off"
    assert (
        options("postgresql+psycopg://u@db/x?options=-c%20statement_timeout%3D5000")
        == "-c statement_timeout=5000 -c jit=off"
    )
    for asks in (
        "-c%20jit%3Don",
        "-cjit%3Don",
        "--jit%3Don",
        "-c%20work_mem%3D64MB%20-c%20JIT%3Don",
    ):
        assert options(f"postgresql+psycopg://u@db/x?options={asks}") is None, asks
    # (Given twice, the URL's options reached the driver as a tuple where one set jit, and the
    # server refused the connection; they are joined, as where neither sets it.)
    twice = "options=-c%20work_mem%3D8MB&options=-c%20jit%3Don"
    for driver in ("psycopg", "psycopg2"):
        assert options(f"postgresql+{driver}://u@db/x?{twice}") == "-c work_mem=8MB -c jit=on"
    assert (
        options("postgresql+psycopg://u@db/x?options=-c%20work_mem%3D8MB&options=-c%20geqo%3Doff")
        == "-c work_mem=8MB -c geqo=off -c jit=off"
    )
    monkeypatch.setenv("PGOPTIONS", "-c work_mem=64MB")
    assert options("postgresql+psycopg://u@db/x") == "-c work_mem=64MB -c jit=off"
    monkeypatch.setenv("PGOPTIONS", "-c jit=on")
    assert options("postgresql+psycopg://u@db/x") is None
    assert options("postgresql+psycopg://u@db/x?options=-c%20geqo%3Doff") == (
        "-c geqo=off -c jit=off"  # (the URL's options replace PGOPTIONS)
    )


def test_a_product_postgresql_connection_reads_jit_off_and_on_where_the_url_asks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`SHOW jit` on a product connection, as the pages' queries run on it."""
    from sqlalchemy.engine import make_url

    from tests.conftest import POSTGRES_URL

    if POSTGRES_URL is None:
        pytest.skip("no PostgreSQL (DEFECTS_TEST_POSTGRES_URL)")
    monkeypatch.delenv("PGOPTIONS", raising=False)
    asking = make_url(POSTGRES_URL).update_query_dict({"options": "-c jit=on"})
    twice = make_url(POSTGRES_URL).update_query_dict({"options": ["-c work_mem=8MB", "-c jit=on"]})
    urls = [u.render_as_string(hide_password=False) for u in (asking, twice)]
    for url, jit in ((POSTGRES_URL, "off"), (urls[0], "on"), (urls[1], "on")):
        with session_scope(url) as session:
            assert session.execute(text("SHOW jit")).scalar_one() == jit, url
    with session_scope(urls[1]) as session:  # (the other option kept beside it)
        assert session.execute(text("SHOW work_mem")).scalar_one() == "8MB"
    for url in urls:
        get_engine(url).dispose()


def test_a_sqlite_file_deleted_while_in_use_stops_the_next_transaction(tmp_path: Path) -> None:
    """Pooled connections wrote on into the deleted file: a batch reported every part kept
    and exited 0, and nothing was."""
    url = f"sqlite:///{tmp_path / 'gone.db'}"
    upgrade(url)
    with session_scope(url) as session:
        session.add(ProductionLine(name="L1"))
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"gone.db{suffix}").unlink(missing_ok=True)
    with pytest.raises(DatabaseError, match="is gone"), session_scope(url) as session:
        session.add(ProductionLine(name="L2"))


def test_a_sqlite_url_whose_folder_is_missing_is_an_error_that_makes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mistyped folder in DEFECTS_DATABASE_URL was made, with a new empty database in it:
    the user saw "no model versions yet" instead of the mistake."""
    from inspection.settings import get_settings

    typo = tmp_path / "typo" / "dir"
    with pytest.raises(DatabaseError) as raised:
        upgrade(f"sqlite:///{typo / 'defects.db'}")
    assert str(raised.value) == (
        f"the folder {typo} of the SQLite database {typo / 'defects.db'} does not exist: "
        f"correct the database URL, or create the folder (mkdir -p {typo}) for a new "
        "database there"
    )
    assert not (tmp_path / "typo").exists()
    # The product's own data folder is made on a first start.
    monkeypatch.setenv("DEFECTS_DATA_DIR", str(tmp_path / "new" / "data"))
    get_settings.cache_clear()
    assert upgrade(get_settings().resolved_database_url) == head_revision()
    assert (tmp_path / "new" / "data" / "defects.db").is_file()


@pytest.mark.parametrize("journal", ["wal", "delete"])
@pytest.mark.parametrize("blocked", ["file", "folder"])
def test_a_read_only_sqlite_database_says_what_is_read_only(
    tmp_path: Path, blocked: str, journal: str
) -> None:
    """SQLite's "attempt to write a readonly database" or "unable to open database file" named
    neither the file nor its folder."""
    from tests.conftest import read_only

    folder = tmp_path / "db"
    folder.mkdir()
    path = folder / "defects.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    with session_scope(url) as session:
        session.add(ProductionLine(name="L1"))
    get_engine(url).dispose()  # (pooled connections opened it writable)
    get_engine.cache_clear()
    if journal == "delete":  # as a copy of the database would be
        import sqlite3

        with sqlite3.connect(path) as connection:
            connection.execute("PRAGMA journal_mode=DELETE")
        connection.close()
    with read_only(path if blocked == "file" else folder), pytest.raises(DatabaseError) as raised:
        upgrade(url)
        with session_scope(url) as session:
            session.add(ProductionLine(name="L2"))
    get_engine.cache_clear()
    message = str(raised.value)
    assert message.startswith(f"the SQLite database {path} cannot be written: ")
    assert (f"the file {path} is" if blocked == "file" else f"its folder {folder} is") in message


def test_a_database_in_memory_is_migrated_where_it_lives() -> None:
    """The migrations' own SQLite connection (one transaction for the whole upgrade) opened a
    fresh, empty database in memory: the one the engine holds stayed unmigrated."""
    from sqlalchemy import inspect

    from db.migrate import upgrade
    from db.session import get_engine

    url = "sqlite://"
    upgrade(url)
    assert "inspections" in inspect(get_engine(url)).get_table_names()


def test_the_one_off_runs_migration_marks_the_earlier_uploads_and_inspect_runs(
    tmp_path: Path,
) -> None:
    """0012 marks one-off runs as such, where they were told by their source alone (a batch
    of a folder named `cli` was taken for one): the runs recorded before it with an upload's
    or `defects inspect`'s source are one-offs, as they were read before; a downgrade takes
    the mark out again, every run kept."""
    from alembic import command
    from sqlalchemy import inspect as schema

    from db.migrate import alembic_config

    url = f"sqlite:///{tmp_path / 'one-off.db'}"
    upgrade(url, "0011")
    sources = ["dashboard upload", "cli", "hot/", "/data/cli"]
    with get_engine(url).begin() as connection:
        _insert_a_verdict(connection)
        for n, source in enumerate(sources, start=1):
            connection.execute(
                text(
                    "INSERT INTO inspection_runs (id, line_id, station_id, operator, source, "
                    "started_at) VALUES (:id, 1, 1, '', :source, '2026-01-01')"
                ),
                {"id": n, "source": source},
            )
    assert upgrade(url) == head_revision()
    with session_scope(url) as session:
        marked = session.execute(select(InspectionRun.source, InspectionRun.one_off)).all()
    assert dict(marked) == {
        "dashboard upload": True,
        "cli": True,
        "hot/": False,
        "/data/cli": False,
    }
    command.downgrade(alembic_config(url), "0011")
    get_engine(url).dispose()
    columns = {c["name"] for c in schema(get_engine(url)).get_columns("inspection_runs")}
    assert "one_off" not in columns
    with get_engine(url).connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM inspection_runs")).scalar() == 4
    get_engine(url).dispose()
    assert upgrade(url) == head_revision()


def test_the_first_judge_migration_fills_in_each_parts_earliest_verdicts_model(
    database_url: str,
) -> None:
    """0013 stores on each part the model version of its earliest verdict (by time, then id),
    which the history's figures count it at: filled in for the parts judged before it, in SQL
    on each backend (a part judged by production, then by a candidate whose verdict was
    written first; two verdicts at one time; a first verdict of no model version; a part not
    judged); a downgrade takes it out again, every part and verdict kept."""
    from alembic import command
    from sqlalchemy import inspect as schema

    from db.migrate import alembic_config

    command.downgrade(alembic_config(database_url), "0012")
    with get_engine(database_url).begin() as connection:
        connection.execute(text("INSERT INTO production_lines VALUES (1, 'L1', '', '2026-01-01')"))
        connection.execute(text("INSERT INTO stations VALUES (1, 1, 'S1', '', '2026-01-01')"))
        connection.execute(
            text(
                "INSERT INTO model_versions (id, name, kind, architecture, file_path, sha256, "
                "image_size, classes, metrics, thresholds, stage, notes, created_at) VALUES "
                "(:id, :name, 'detector', 'a', 'x.pt', '0', 640, '[]', '{}', '{}', "
                "'candidate', '', '2026-01-01')"
            ),
            [{"id": 1, "name": "production"}, {"id": 2, "name": "candidate"}],
        )
        connection.execute(
            text(
                "INSERT INTO parts (id, content_hash, stored_path, original_name, size_bytes, "
                "captured_at, line_id, station_id, created_at) VALUES "
                "(:id, :hash, 'p.png', 'p.png', 1, '2026-01-01', 1, 1, '2026-01-01')"
            ),
            [{"id": n, "hash": f"h{n}"} for n in (1, 2, 3, 4)],
        )
        connection.execute(
            text(
                "INSERT INTO inspections (id, part_id, model_version_id, verdict, thresholds, "
                "inspected_at) VALUES (:id, :part, :model, 'pass', '{}', :at)"
            ),
            [
                # Part 1: its first verdict by no model version.
                {"id": 1, "part": 1, "model": None, "at": "2026-01-01"},
                # Part 2: the candidate's verdict written first, of a later time.
                {"id": 2, "part": 2, "model": 2, "at": "2026-01-03"},
                {"id": 3, "part": 2, "model": 1, "at": "2026-01-02"},
                # Part 3: two verdicts at one time, the earlier id first.
                {"id": 4, "part": 3, "model": 2, "at": "2026-01-02"},
                {"id": 5, "part": 3, "model": 1, "at": "2026-01-02"},
                {"id": 6, "part": 1, "model": 2, "at": "2026-01-05"},
            ],
        )
    assert upgrade(database_url) == head_revision()
    with session_scope(database_url) as session:
        firsts = dict(session.execute(select(Part.id, Part.first_model_version_id)).all())
        assert firsts == {1: None, 2: 1, 3: 2, 4: None}
        assert session.scalar(select(func.count()).select_from(Inspection)) == 6
    command.downgrade(alembic_config(database_url), "0012")
    get_engine(database_url).dispose()
    columns = {c["name"] for c in schema(get_engine(database_url)).get_columns("parts")}
    assert "first_model_version_id" not in columns
    with get_engine(database_url).connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM inspections")).scalar() == 6
    get_engine(database_url).dispose()
    assert upgrade(database_url) == head_revision()


def test_a_verdict_written_through_the_orm_keeps_its_parts_first_judge(session) -> None:  # type: ignore[no-untyped-def]
    """The batch writer stores a part's first judge with the part; a verdict added through the
    ORM (a script, a test's history) keeps it what the part's earliest verdict says, written
    in any order."""
    _line, station = _line_and_station(session)
    production, candidate = (
        ModelVersion(
            name=name, kind=ModelKind.DETECTOR, architecture="a", file_path="x.pt", sha256="0"
        )
        for name in ("production", "candidate")
    )
    part = Part(
        content_hash="c" * 64,
        stored_path="c.png",
        size_bytes=1,
        line_id=station.line_id,
        station_id=station.id,
    )
    session.add_all([production, candidate, part])
    session.flush()
    at = utcnow()
    session.add(
        Inspection(
            part_id=part.id, model_version_id=candidate.id, verdict=Verdict.PASS, inspected_at=at
        )
    )
    session.flush()
    session.add(
        Inspection(
            part_id=part.id,
            model_version_id=production.id,
            verdict=Verdict.FAIL,
            inspected_at=at - timedelta(minutes=1),
        )
    )
    session.flush()
    assert session.scalar(select(Part.first_model_version_id)) == production.id


def test_the_one_word_per_reviewer_migration_merges_repeats_and_keeps_every_reviewers_word(
    database_url: str,
) -> None:
    """0014 makes the database keep one word per reviewer on a detection, and one "good" per
    reviewer of a part. Repeats written before it are merged: the same word twice is one;
    a reviewer who said both keeps the confirmation (as the rates and the export counted the
    detection) and its note says the false call; two reviewers who disagree both stand. A
    downgrade takes the indexes out, every review kept."""
    from alembic import command

    from db.migrate import alembic_config
    from db.models import Review, ReviewKind

    command.downgrade(alembic_config(database_url), "0013")
    with get_engine(database_url).begin() as connection:
        connection.execute(text("INSERT INTO production_lines VALUES (1, 'L1', '', '2026-01-01')"))
        connection.execute(text("INSERT INTO stations VALUES (1, 1, 'S1', '', '2026-01-01')"))
        connection.execute(
            text(
                "INSERT INTO parts (id, content_hash, stored_path, original_name, size_bytes, "
                "captured_at, line_id, station_id, created_at) VALUES "
                "(:id, :hash, 'p.png', 'p.png', 1, '2026-01-01', 1, 1, '2026-01-01')"
            ),
            [{"id": n, "hash": f"h{n}"} for n in (1, 2)],
        )
        connection.execute(
            text(
                "INSERT INTO inspections (id, part_id, verdict, thresholds, inspected_at) "
                "VALUES (1, 1, 'fail', '{}', '2026-01-01')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO predictions (id, inspection_id, source, class_name, confidence, "
                "counted) VALUES (:id, 1, 'detector', 'scratch', 0.9, true)"
            ),
            [{"id": n} for n in (1, 2, 3)],
        )
        connection.execute(
            text(
                "INSERT INTO reviews (id, part_id, prediction_id, kind, reviewer, note, "
                "created_at) VALUES (:id, :part, :prediction, :kind, :who, :note, :at)"
            ),
            [
                {"id": n, "part": part, "prediction": prediction, "kind": kind, "who": who}
                | {"note": note, "at": f"2026-01-02 10:00:{n:02d}"}
                for n, part, prediction, kind, who, note in [
                    (1, 1, 1, "confirmed_defect", "ana", ""),  # a double click
                    (2, 1, 1, "confirmed_defect", "ana", ""),
                    (3, 1, 2, "false_call", "bob", ""),  # two tabs, two words
                    (4, 1, 2, "confirmed_defect", "bob", ""),
                    (5, 1, 2, "false_call", "cy", ""),  # another reviewer's: a dispute
                    (6, 1, 3, "false_call", "ana", "the rest of verdict 1"),
                    (7, 1, 3, "false_call", "ana", "the rest of verdict 1"),
                    (8, 2, None, "good_part", "ana", ""),
                    (9, 2, None, "good_part", "ana", ""),
                    (10, 2, None, "good_part", "bob", ""),
                ]
            ],
        )
    assert upgrade(database_url) == head_revision()
    with session_scope(database_url) as session:
        kept = {
            r.id: (r.prediction_id, r.reviewer, r.kind, r.note)
            for r in session.scalars(select(Review))
        }
    assert kept == {
        1: (1, "ana", ReviewKind.CONFIRMED_DEFECT, ""),
        4: (
            2,
            "bob",
            ReviewKind.CONFIRMED_DEFECT,
            "also marked a false call by bob at 2026-01-02 10:00:03",
        ),
        5: (2, "cy", ReviewKind.FALSE_CALL, ""),
        6: (3, "ana", ReviewKind.FALSE_CALL, "the rest of verdict 1"),
        8: (None, "ana", ReviewKind.GOOD_PART, ""),
        10: (None, "bob", ReviewKind.GOOD_PART, ""),
    }
    insert = text(
        "INSERT INTO reviews (id, part_id, prediction_id, kind, reviewer, note, created_at) "
        "VALUES (:id, :part, :prediction, :kind, :who, '', '2026-01-03')"
    )
    for repeat in (
        {"id": 11, "part": 1, "prediction": 1, "kind": "false_call", "who": "ana"},
        {"id": 11, "part": 2, "prediction": None, "kind": "good_part", "who": "bob"},
    ):
        with pytest.raises(IntegrityError), get_engine(database_url).begin() as connection:
            connection.execute(insert, repeat)
    with get_engine(database_url).begin() as connection:  # (others are not one word)
        for n, kind, who in ((11, "good_part", "cy"), (12, "missed_defect", "bob")):
            connection.execute(
                insert, {"id": n, "part": 2, "prediction": None, "kind": kind, "who": who}
            )
    command.downgrade(alembic_config(database_url), "0013")
    get_engine(database_url).dispose()
    with get_engine(database_url).connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM reviews")).scalar() == 8
    get_engine(database_url).dispose()
    assert upgrade(database_url) == head_revision()


@pytest.mark.parametrize("hook", ["before_commit", "after_commit"])
def test_an_error_in_the_commit_is_the_error_raised(tmp_path: Path, hook: str) -> None:
    """A COMMIT that failed was hidden behind the rollback's own refusal ("in 'committed'
    state"), which said nothing of what went wrong. The first error is raised now, and where
    a rollback is possible (before the COMMIT went through) nothing is written."""
    url = f"sqlite:///{tmp_path / 'commit.db'}"
    upgrade(url)

    def refuse(session: Session) -> None:
        raise RuntimeError(f"refused in {hook}")

    with pytest.raises(RuntimeError, match=f"refused in {hook}"), session_scope(url) as session:
        event.listen(session, hook, refuse)
        session.add(ProductionLine(name="L1"))
    with session_scope(url) as session:
        written = session.scalars(select(ProductionLine.name)).all()
    assert written == (["L1"] if hook == "after_commit" else [])

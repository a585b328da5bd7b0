"""Shared fixtures: a migrated database per test (SQLite always, PostgreSQL when CI gives one)."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# The CLI's console takes its width from COLUMNS when it is made, at import: a width exported
# by the shell running the tests would then win over the width a test gives its CLI runner,
# and a table wrapped at 80 columns fail a test reading one of its cells.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)
# libgomp's threads spin on their core while they wait for the others of a parallel region
# (torch's convolutions): on the shared 2-core machine the tests run on, a peer preempted by
# another process kept the rest spinning, two to three times the CPU time of each training and
# inspection step. Waiting asleep computes the same; set here, before torch starts OpenMP, it
# reaches every process a test starts too.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from sqlalchemy import func, select, text  # noqa: E402
from sqlalchemy.orm import Session

import inspection  # noqa: F401 - prepares torchvision and ultralytics before any test imports them
from db.migrate import upgrade
from db.registry import get_model_version
from db.session import get_engine, session_factory, session_scope
from inspection.settings import get_settings
from tests.synthetic import CLASSES, write_splits, write_voc
from training.datasets import import_dataset

POSTGRES_URL = os.environ.get("DEFECTS_TEST_POSTGRES_URL")
DATABASE_BACKENDS = ["sqlite"] + (["postgresql"] if POSTGRES_URL else [])


@contextmanager
def registration_commit_dropped(url: str, committed: bool = True) -> Iterator[None]:
    """The commit of the transaction that records a model version fails as a connection
    dropped during COMMIT fails: the error raised after the commit was made on the driver's
    connection (`committed`), or before it was (the server never got it)."""
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    engine = get_engine(url)
    recording: list[object] = []

    def noted(connection, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("INSERT INTO MODEL_VERSIONS"):
            recording.append(connection)

    def dropped(connection) -> None:  # type: ignore[no-untyped-def]
        if connection in recording:
            recording.clear()
            if committed:
                connection.connection.dbapi_connection.commit()
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))

    event.listen(engine, "before_cursor_execute", noted)
    event.listen(engine, "commit", dropped)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", noted)
        event.remove(engine, "commit", dropped)


@contextmanager
def backend_terminated_at(url: str, statement_holds: Callable[[str], bool]) -> Iterator[list[int]]:
    """The PostgreSQL backend of the first statement `statement_holds` is terminated as it is
    sent (a server restart at that moment, as stations meet one); yields the terminated pids."""
    import psycopg
    from sqlalchemy import event

    admin_url = url.replace("postgresql+psycopg://", "postgresql://")
    dropped: list[int] = []

    def terminate(connection, cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        if statement_holds(statement) and not dropped:
            dropped.append(cursor.connection.info.backend_pid)
            with psycopg.connect(admin_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (dropped[0],))

    engine = get_engine(url)
    event.listen(engine, "before_cursor_execute", terminate)
    try:
        yield dropped
    finally:
        event.remove(engine, "before_cursor_execute", terminate)


def assert_training_stood_through_a_dropped_commit(url: str, train: Callable[[], int]) -> None:
    """`train` (a detector's or a classifier's training, registering its version) run with
    its registration's COMMIT dropped after it was made (`registration_commit_dropped`): the
    training and its job succeed, naming the version, its weights in place."""
    from sqlalchemy import select

    from db.models import JobStatus, TrainingJob

    with registration_commit_dropped(url):
        version_id = train()
    with session_scope(url) as session:
        job = session.scalars(select(TrainingJob).order_by(TrainingJob.id.desc())).first()
        assert job is not None and job.status == JobStatus.SUCCEEDED and job.error is None
        assert job.result_model_version_id == version_id
        assert Path(job.result_model_version.file_path).is_file()


@pytest.fixture
def ctrl_c_raises() -> Iterator[None]:
    """SIGINT raising KeyboardInterrupt, as a terminal's foreground job gets it, for a test that
    sends one to this process: a suite started as a shell's background job (a CI script run
    with `&`) inherits SIGINT ignored, and the Ctrl-C it tests never came."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test gets its own data directory and SQLite database."""
    monkeypatch.setenv("DEFECTS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("DEFECTS_DATABASE_URL", raising=False)
    monkeypatch.setenv("DEFECTS_DEVICE", "cpu")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session", autouse=True)
def _streamlit_components_scanned_once() -> Iterator[None]:
    """Each new AppTest scans every installed distribution's metadata for Streamlit
    components (half a second here, and the page tests make hundreds of AppTests). The
    packages installed do not change while the tests run, so the scan's result is kept."""
    from streamlit.components.v2 import manifest_scanner

    found = manifest_scanner.scan_component_manifests()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            manifest_scanner, "scan_component_manifests", lambda max_workers=None: list(found)
        )
        yield


@contextmanager
def read_only(*paths: Path) -> Iterator[None]:
    """Files or folders this process really cannot write: their write bits off, or for root,
    who writes past those, the immutable attribute (`chattr +i`); skips where neither holds."""
    undo: list[tuple[Path, int | None]] = []  # (path, mode to put back; None: chattr -i)
    try:
        for path in paths:
            if os.geteuid() != 0:
                mode = path.stat().st_mode
                path.chmod(mode & ~0o222)
                undo.append((path, mode))
            elif subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0:
                undo.append((path, None))
        if any(os.access(path, os.W_OK) for path in paths):
            pytest.skip("cannot make a file read-only here (root without chattr)")
        yield
    finally:
        for path, mode in reversed(undo):
            if mode is None:
                subprocess.run(["chattr", "-i", str(path)], check=True)
            else:
                path.chmod(mode)


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """Fails the test, rather than hanging it, where the code inside waits longer than
    `seconds` (a read of a named pipe that no one writes): the alarm's exception ends the
    blocked system call (PEP 475)."""

    def expired(signum: int, frame: object) -> None:
        # (pytest's Failed, a BaseException: the code under test, which turns an OSError
        # into its own error, cannot take it for one and wait on.)
        pytest.fail(f"still waiting after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def unlistable(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`folder` as a user who may not list it meets it: its mode 0, and for root, who lists it
    all the same, os.scandir refusing it."""
    folder.chmod(0)
    scandir = os.scandir

    def refusing(path):  # type: ignore[no-untyped-def]
        if os.geteuid() == 0 and Path(path) == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    try:
        yield
    finally:
        folder.chmod(0o755)


def _reset_postgres(url: str) -> None:
    with get_engine(url).begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))


@functools.cache
def _migrated_template() -> Path:
    """A SQLite database migrated from empty to head once per run, on first need. A test's
    own database is a copy of it: migrating from empty takes a quarter of a second (over a
    second on a busy machine), and hundreds of tests each start from an empty database. (The
    migrations from empty, and from each revision, are tested in test_db_schema.)"""
    folder = Path(tempfile.mkdtemp(prefix="defects-migrated-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "head.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def migrated_sqlite() -> Path:
    """The run's SQLite database migrated to head, to copy (see _migrated_template)."""
    return _migrated_template()


def migrated(url: str) -> str:
    """What `upgrade(url)` makes of a database not made yet, for a test's set-up: a new SQLite
    file is a copy of the run's migrated template; an existing file, or another backend, is
    upgraded. Its URL."""
    path = Path(url.removeprefix("sqlite:///"))
    if not url.startswith("sqlite:///") or path.exists():
        upgrade(url)
        return url
    return copy_of_migrated(_migrated_template(), path)


def copy_of_migrated(template: Path, path: Path) -> str:
    """A new SQLite database at `path` holding `template`'s schema; its URL. Copied through
    SQLite's backup, which reads what the template's write-ahead log still holds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    source, copy = sqlite3.connect(template), sqlite3.connect(path)
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()
    return f"sqlite:///{path}"


@pytest.fixture
def settings_database(migrated_sqlite: Path) -> str:
    """The migrated SQLite database in this test's data folder, which the app and the CLI
    open where no DEFECTS_DATABASE_URL is set; its URL."""
    url = get_settings().resolved_database_url
    return copy_of_migrated(migrated_sqlite, Path(url.removeprefix("sqlite:///")))


@pytest.fixture(params=DATABASE_BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path, migrated_sqlite: Path) -> str:
    """An empty, migrated database of each backend."""
    if request.param == "postgresql":
        assert POSTGRES_URL is not None
        _reset_postgres(POSTGRES_URL)
        upgrade(POSTGRES_URL)
        return POSTGRES_URL
    return copy_of_migrated(migrated_sqlite, tmp_path / "test.db")


@pytest.fixture
def session(database_url: str):  # type: ignore[no-untyped-def]
    with session_factory(database_url)() as session:
        yield session


def import_synthetic(url: str, base: Path, n: int) -> None:
    """A synthetic VOC dataset of n images with its split files, imported as "synth"."""
    images = write_voc(base / "src", n=n)
    with session_scope(url) as session:
        import_dataset(
            session,
            "voc",
            base / "src",
            "synth",
            get_settings().datasets_dir,
            write_splits(base / "splits", images),
            CLASSES,
        )


NEW_CLASSES = [*CLASSES, "crack"]  # a detector of CLASSES meets a new defect type


def import_with_new_class(url: str, base: Path, name: str = "with-crack") -> None:
    """A synthetic VOC dataset of NEW_CLASSES (18 images), imported as `name`."""
    images = write_voc(base / "src-new", n=18, classes=NEW_CLASSES)
    with session_scope(url) as session:
        import_dataset(
            session,
            "voc",
            base / "src-new",
            name,
            get_settings().datasets_dir,
            write_splits(base / "splits-new", images),
            NEW_CLASSES,
        )


@dataclass
class Trained:
    url: str
    data_dir: Path
    version_name: str
    weights: Path


@contextmanager
def tiny_detector(
    base: Path, import_data: Callable[[str, Path], object], data: str, **request: object
) -> Iterator[Trained]:
    """A tiny detector trained one epoch in a data folder of its own under `base`, on the
    dataset `import_data(url, base)` imports as `data`: what the tests that need a real model
    share (trained once per session or module)."""
    from training.train_detector import TrainRequest, train_detector

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEFECTS_DATA_DIR", str(base / "data"))
        get_settings.cache_clear()
        url = get_settings().resolved_database_url
        migrated(url)
        import_data(url, base)
        version_id = train_detector(
            TrainRequest(data=data, architecture="defect-yolo-n", epochs=1, **request),  # type: ignore[arg-type]
            url=url,
        )
        with session_scope(url) as session:
            version = get_model_version(session, version_id)
            result = Trained(url, base / "data", version.name, Path(version.file_path))
        yield result
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    """One tiny detector trained for one epoch, shared by the tests that need a real model."""
    with tiny_detector(
        tmp_path_factory.mktemp("detector"),
        lambda url, base: import_synthetic(url, base, n=24),
        "synth",
        imgsz=64,
        batch=4,
    ) as result:
        yield result


@pytest.fixture(scope="session")
def export_of_trained(
    trained: Trained, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[Path, str], Path]:
    """`export_detector(weights, version_name=name)` for `weights` a copy of the session's tiny
    detector, where the export is only a test's set-up: each name's export is made once (an
    ONNX conversion, seconds each) and copied where it would have been written, put in place
    as the export puts it (a new file, renamed). Its metadata names the weights by their hash,
    true of every copy; its `date` is made the copy's, as a new export's is (stations weigh an
    export's date against the registration of the version it names)."""
    from datetime import datetime

    import onnx

    from training.export import export_detector, onnx_target

    folder = tmp_path_factory.mktemp("exports")
    made: dict[str, Path] = {}

    def exported(weights: Path, version_name: str) -> Path:
        if weights.read_bytes() != trained.weights.read_bytes():
            raise ValueError(f"{weights} is not a copy of the tiny detector's weights")
        if version_name not in made:
            (folder / version_name).mkdir()
            copy = Path(shutil.copy2(trained.weights, folder / version_name / "best.pt"))
            made[version_name] = export_detector(copy, version_name=version_name)
        target = onnx_target(weights, 0, 0, half=False)  # `<stem>.onnx`: the stations' file
        proto = onnx.load(str(made[version_name]))
        [date] = [p for p in proto.metadata_props if p.key == "date"]
        date.value = datetime.now().astimezone().isoformat()  # (ultralytics' format)
        written = target.with_name(f".{target.name}.copying")
        onnx.save(proto, str(written))
        os.replace(written, target)
        return target

    return exported


@pytest.fixture(scope="session")
def trained_classifier(trained: Trained) -> Iterator[str]:
    """A tiny classifier trained for two epochs on the same synthetic dataset; its version name."""
    from training.train_classifier import ClassifierTrainRequest, train_classifier

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEFECTS_DATA_DIR", str(trained.data_dir))
        get_settings.cache_clear()
        request = ClassifierTrainRequest(
            data="synth", backbone="mobilenet_v3_small", epochs=2, imgsz=64, batch=8, device="cpu"
        )
        version_id = train_classifier(request, url=trained.url)
        with session_scope(trained.url) as session:
            name = get_model_version(session, version_id).name
        yield name
    get_settings.cache_clear()


def register_classifier_copy(
    source_url: str,
    classifier: str,
    url: str,
    name: str = "verifier",
    metrics: dict[str, float] | None = None,
) -> None:
    """The tiny trained classifier `classifier` of `source_url`, registered in `url` as `name`."""
    from db.models import ModelKind
    from db.registry import get_model_version
    from inspection.classifier import GOOD
    from tests.synthetic import CLASSES
    from training.versions import register_model_version

    with session_scope(source_url) as session:
        weights = Path(get_model_version(session, classifier).file_path)
    with session_scope(url) as session:
        register_model_version(
            session,
            weights,
            get_settings().models_dir,
            kind=ModelKind.CLASSIFIER,
            architecture="defect-cls-mobilenet_v3_small",
            class_names=[GOOD, *CLASSES],
            image_size=64,
            name=name,
            metrics=metrics,
        )


def register_tiny_detector(
    session: Session,
    weights: Path,
    name: str,
    class_names: list[str] | None = None,
    dataset: Any = None,
) -> Any:
    """The tiny trained detector's weights registered again as version `name` (its own copy
    in the models folder), of `class_names` (the synthetic ones by default)."""
    from db.models import ModelKind
    from training.versions import register_model_version

    return register_model_version(
        session,
        weights,
        get_settings().models_dir,
        kind=ModelKind.DETECTOR,
        architecture="defect-yolo-n",
        class_names=list(CLASSES) if class_names is None else class_names,
        image_size=64,
        dataset=dataset,
        name=name,
    )


def register_detector_copy(trained: Trained, name: str) -> tuple[Path, int]:
    """The tiny trained detector registered again as `name` in its database (its own copy of
    the weights, to damage), with how many training jobs that database holds."""
    from db.models import TrainingJob

    with session_scope(trained.url) as session:
        copy = Path(register_tiny_detector(session, trained.weights, name).file_path)
        jobs = session.scalar(select(func.count(TrainingJob.id))) or 0
    return copy, jobs


def register_production_detector(
    url: str, weights: Path, models_dir: Path, name: str = "tiny"
) -> None:
    """The tiny trained detector, registered in `url` and made the production detector."""
    from db.models import ModelKind
    from db.registry import promote
    from training.versions import register_model_version

    with session_scope(url) as session:
        version = register_model_version(
            session,
            weights,
            models_dir,
            kind=ModelKind.DETECTOR,
            architecture="defect-yolo-n",
            class_names=CLASSES,
            image_size=64,
            name=name,
        )
        promote(session, version)

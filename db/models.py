"""The domain schema: lines, parts, inspections, reviews, model versions, training and data.

Times are stored as naive UTC, identically on SQLite and PostgreSQL: a part's, a verdict's and a
run's by the database's clock (`database_utcnow()`), the rest by this machine's (`utcnow()`).
Images are never stored here: a part holds the content hash and the path of its file.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    event,
    false,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Mapper,
    Session,
    aliased,
    mapped_column,
    relationship,
)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def database_utcnow(bind: Connection | Session) -> datetime:
    """The database's clock now, naive UTC: the one clock every station writing to a shared
    database and every page reading it agree on. A station whose own clock ran minutes
    behind stamped its verdicts so: the Live page called it idle while it judged, left its
    parts out of the last minutes, and the history put them on another day near midnight.
    (SQLite's is the clock of the machine that writes, as before.)"""
    dialect = bind.get_bind().dialect.name if isinstance(bind, Session) else bind.dialect.name
    if dialect == "postgresql":
        found = bind.scalar(text("SELECT timezone('UTC', now())"))
    elif dialect == "sqlite":
        found = bind.scalar(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')"))
    else:
        return utcnow()
    if isinstance(found, str):
        found = datetime.fromisoformat(found)
    return found.replace(tzinfo=None)  # type: ignore[no-any-return]


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime()}


def _enum(cls: type[enum.Enum]) -> Enum:
    # Stored as plain strings (no native PG enum type) so new values need no type migration.
    return Enum(cls, native_enum=False, length=32, values_callable=lambda e: [m.value for m in e])


class Verdict(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"


class ModelKind(enum.StrEnum):
    DETECTOR = "detector"
    CLASSIFIER = "classifier"


class ModelStage(enum.StrEnum):
    CANDIDATE = "candidate"
    PRODUCTION = "production"
    ARCHIVED = "archived"


class ReviewKind(enum.StrEnum):
    CONFIRMED_DEFECT = "confirmed_defect"
    FALSE_CALL = "false_call"
    MISSED_DEFECT = "missed_defect"
    GOOD_PART = "good_part"


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class PredictionSource(enum.StrEnum):
    DETECTOR = "detector"
    CLASSIFIER = "classifier"


class Role(enum.StrEnum):
    """What a dashboard account may do: reviewers inspect, follow and review; engineers also
    change models and settings."""

    REVIEWER = "reviewer"
    ENGINEER = "engineer"


class ProductionLine(Base):
    __tablename__ = "production_lines"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    stations: Mapped[list[Station]] = relationship(back_populates="line", order_by="Station.name")


class Station(Base):
    __tablename__ = "stations"
    __table_args__ = (UniqueConstraint("line_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    line_id: Mapped[int] = mapped_column(ForeignKey("production_lines.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    line: Mapped[ProductionLine] = relationship(back_populates="stations")


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    source: Mapped[str] = mapped_column(
        Text, doc="Where it came from: a path, a format, a review export."
    )
    source_format: Mapped[str] = mapped_column(String(16))
    root_path: Mapped[str] = mapped_column(Text, doc="Folder of the YOLO-layout copy.")
    classes: Mapped[list[Any]] = mapped_column(default=list)
    split_counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


_ONE_PRODUCTION = "stage = 'production'"


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        Index("ix_model_versions_kind_stage", "kind", "stage"),
        # One production model of a kind, also when two promotions race.
        Index(
            "uq_model_versions_one_production",
            "kind",
            unique=True,
            sqlite_where=text(_ONE_PRODUCTION),
            postgresql_where=text(_ONE_PRODUCTION),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[ModelKind] = mapped_column(_enum(ModelKind))
    architecture: Mapped[str] = mapped_column(String(128))
    file_path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    image_size: Mapped[int] = mapped_column(Integer, default=640)
    classes: Mapped[list[Any]] = mapped_column(default=list)
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    teacher_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    thresholds: Mapped[dict[str, Any]] = mapped_column(
        default=dict, doc="Operating point: per-class confidence thresholds and related settings."
    )
    stage: Mapped[ModelStage] = mapped_column(_enum(ModelStage), default=ModelStage.CANDIDATE)
    notes: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column()
    archived_at: Mapped[datetime | None] = mapped_column()

    dataset: Mapped[Dataset | None] = relationship()
    teacher: Mapped[ModelVersion | None] = relationship(remote_side=[id])


class TrainingJob(Base):
    __tablename__ = "training_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(
        String(32), doc="train-detector, train-classifier, distill-..."
    )
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus), default=JobStatus.QUEUED)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    log: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text)
    pid: Mapped[int | None] = mapped_column(Integer)
    # The machine `pid` is of: stations sharing PostgreSQL train on one machine and look at
    # the job from another, where that pid names nothing (or another process).
    host: Mapped[str | None] = mapped_column(String(255))
    # "BOOT_ID:TICKS" (Linux): the boot the process runs in and its start in clock ticks since
    # then, which no step of the wall clock moves; the job's start time, compared with the
    # process's, called a running job dead after the clock was set forward a few seconds.
    process_start: Mapped[str | None] = mapped_column(String(64))
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"))
    result_model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()

    result_model_version: Mapped[ModelVersion | None] = relationship()


# The sources one-off runs are shown with (an upload on the Inspect page, `defects inspect`);
# such a run is told apart by `InspectionRun.one_off`, not by these words, which a batch of a
# folder of the same name records too.
UPLOAD_SOURCE = "dashboard upload"
INSPECT_COMMAND_SOURCE = "cli"


class InspectionRun(Base):
    """One batch from a line and station: who started it, when, with which models."""

    __tablename__ = "inspection_runs"
    __table_args__ = (Index("uq_inspection_runs_opening", "opening", unique=True),)

    id: Mapped[int] = mapped_column(primary_key=True)
    line_id: Mapped[int] = mapped_column(ForeignKey("production_lines.id"))
    station_id: Mapped[int] = mapped_column(ForeignKey("stations.id"))
    operator: Mapped[str] = mapped_column(String(128), default="")
    source: Mapped[str] = mapped_column(Text, default="", doc="Folder, zip, upload or hot folder.")
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    classifier_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
    one_off: Mapped[bool] = mapped_column(
        default=False,
        server_default=false(),
        doc="Opened and finished around a few parts (an upload, `defects inspect`): not what "
        "the station is running, which the floor's pages show. By its source, a batch of a "
        "folder named `cli` was taken for one.",
    )
    opening: Mapped[str | None] = mapped_column(
        String(36),
        doc="The token (a UUID) the station made for opening this run: where the database "
        "committed the run but the connection dropped before the station heard it, the "
        "station's next try finds this run instead of opening a second, which stayed open.",
    )

    line: Mapped[ProductionLine] = relationship()
    station: Mapped[Station] = relationship()
    model_version: Mapped[ModelVersion | None] = relationship(foreign_keys=[model_version_id])


class Part(Base):
    """One inspected image, identified by the SHA-256 of its bytes."""

    __tablename__ = "parts"
    __table_args__ = (
        Index("ix_parts_line_station", "line_id", "station_id"),
        # The history's days and date ranges (a part judged again keeps its day).
        Index("ix_parts_captured_at", "captured_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    stored_path: Mapped[str] = mapped_column(Text)
    original_name: Mapped[str] = mapped_column(Text, default="")
    size_bytes: Mapped[int] = mapped_column(Integer)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    captured_at: Mapped[datetime] = mapped_column(default=utcnow)
    line_id: Mapped[int] = mapped_column(ForeignKey("production_lines.id"))
    station_id: Mapped[int] = mapped_column(ForeignKey("stations.id"))
    external_part_id: Mapped[str | None] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The model version of the part's first verdict (the one on the line when it was captured;
    # a candidate, a model promoted since, judges it after): the history's figures count the
    # part once, at that version's current verdict. Written with the part, by the verdict that
    # creates it, so that the figures compare two columns instead of looking each part's
    # first verdict up (`first_judge_of`).
    first_model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))

    inspections: Mapped[list[Inspection]] = relationship(back_populates="part")
    reviews: Mapped[list[Review]] = relationship(back_populates="part")


# A verdict not replaced by a later one of the same model version (see Inspection).
_CURRENT = "superseded_at IS NULL"


class Inspection(Base):
    """A part's verdict by one model version: pass/fail with its predictions, or the error.

    A part has one current verdict per model version. Judged again at another operating point
    (the version's thresholds were recalibrated), the earlier verdict is kept, marked
    superseded, and the history's figures count the current one only.
    """

    __tablename__ = "inspections"
    __table_args__ = (
        # Partial unique index (SQLite and PostgreSQL both have them): superseded verdicts
        # stay beside the current one.
        Index(
            "uq_inspection_part_model_current",
            "part_id",
            "model_version_id",
            unique=True,
            sqlite_where=text(_CURRENT),
            postgresql_where=text(_CURRENT),
        ),
        Index("ix_inspections_inspected_at", "inspected_at"),
        # A station's last verdict: the latest of each of its runs, one index seek a run.
        Index("ix_inspections_run_inspected_at", "run_id", "inspected_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    part_id: Mapped[int] = mapped_column(ForeignKey("parts.id", ondelete="CASCADE"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("inspection_runs.id"))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    classifier_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    verdict: Mapped[Verdict] = mapped_column(_enum(Verdict))
    defect_probability: Mapped[float | None] = mapped_column(
        Float, doc="Part classifier's probability that the part is defective."
    )
    thresholds: Mapped[dict[str, Any]] = mapped_column(default=dict)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    boxes_left_out: Mapped[int | None] = mapped_column(
        Integer,
        doc="Counted boxes of the part not kept, past the most a part keeps (0: none). None: an "
        "error, or a verdict recorded before the count was kept, whole or in tiles.",
    )
    inspected_at: Mapped[datetime] = mapped_column(default=utcnow)
    superseded_at: Mapped[datetime | None] = mapped_column(
        doc="When the part was judged again by this model version at another operating point."
    )

    part: Mapped[Part] = relationship(back_populates="inspections")
    run: Mapped[InspectionRun | None] = relationship()

    @classmethod
    def is_current(cls) -> ColumnElement[bool]:
        """The condition every reader of verdicts applies: not superseded by a later verdict of
        the same model version (the rows the partial unique index keeps one of per part)."""
        return cls.superseded_at.is_(None)

    predictions: Mapped[list[Prediction]] = relationship(
        back_populates="inspection", cascade="all, delete-orphan"
    )


def first_judge_of(part_id: ColumnElement[int]) -> ColumnElement[int | None]:
    """The model version of the part's earliest verdict (by time, then id): what
    `Part.first_model_version_id` holds, as migration 0013 filled it in."""
    first = aliased(Inspection)
    return (
        select(first.model_version_id)
        .where(first.part_id == part_id)
        .order_by(first.inspected_at, first.id)
        .limit(1)
        .scalar_subquery()
    )


@event.listens_for(Inspection, "after_insert")
def _keep_the_parts_first_judge(
    _mapper: Mapper[Inspection], connection: Connection, verdict: Inspection
) -> None:
    """A verdict written through the ORM (a script, a test) keeps its part's
    `first_model_version_id` what its earliest verdict says, as the batch writer does by
    writing it with the part (its bulk INSERTs fire no ORM events, and pay nothing here)."""
    connection.execute(
        update(Part)
        .where(Part.id == verdict.part_id)
        .values(first_model_version_id=first_judge_of(Part.id))
    )


class Prediction(Base):
    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(primary_key=True)
    inspection_id: Mapped[int] = mapped_column(
        ForeignKey("inspections.id", ondelete="CASCADE"), index=True
    )
    source: Mapped[PredictionSource] = mapped_column(
        _enum(PredictionSource), default=PredictionSource.DETECTOR
    )
    class_name: Mapped[str] = mapped_column(String(128))
    confidence: Mapped[float] = mapped_column(Float)
    x1: Mapped[float | None] = mapped_column(Float)
    y1: Mapped[float | None] = mapped_column(Float)
    x2: Mapped[float | None] = mapped_column(Float)
    y2: Mapped[float | None] = mapped_column(Float)
    counted: Mapped[bool] = mapped_column(
        default=True,
        doc="Whether it passed its threshold (and verification) and so fails the part.",
    )
    verification_score: Mapped[float | None] = mapped_column(Float)

    inspection: Mapped[Inspection] = relationship(back_populates="predictions")


# The unique indexes of a reviewer's one word (`Review`).
ONE_WORD_PER_DETECTION = "uq_reviews_prediction_reviewer"
ONE_GOOD_PART_PER_REVIEWER = "uq_reviews_good_part_reviewer"


class Review(Base):
    """A person's truth about a part, or about one prediction of it.

    One word per reviewer: on a detection (two reviewers' words both stand, a dispute the
    Review page shows), and of a part marked good. Two tabs, or a double click, whose writes
    crossed once recorded a reviewer twice, and an undo took back only one of the two."""

    __tablename__ = "reviews"
    __table_args__ = (
        Index(ONE_WORD_PER_DETECTION, "prediction_id", "reviewer", unique=True),
        Index(
            ONE_GOOD_PART_PER_REVIEWER,
            "part_id",
            "reviewer",
            unique=True,
            sqlite_where=text("kind = 'good_part'"),
            postgresql_where=text("kind = 'good_part'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    part_id: Mapped[int] = mapped_column(ForeignKey("parts.id", ondelete="CASCADE"), index=True)
    prediction_id: Mapped[int | None] = mapped_column(
        ForeignKey("predictions.id", ondelete="SET NULL"), index=True
    )
    kind: Mapped[ReviewKind] = mapped_column(_enum(ReviewKind))
    class_name: Mapped[str | None] = mapped_column(String(128))
    x1: Mapped[float | None] = mapped_column(Float)
    y1: Mapped[float | None] = mapped_column(Float)
    x2: Mapped[float | None] = mapped_column(Float)
    y2: Mapped[float | None] = mapped_column(Float)
    reviewer: Mapped[str] = mapped_column(String(128))
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    part: Mapped[Part] = relationship(back_populates="reviews")


class User(Base):
    """A named dashboard account. Never deleted: reviews name it (`Review.reviewer`), so a
    person who leaves is disabled and their reviews stay traceable to them."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[Role] = mapped_column(_enum(Role))
    # "scrypt$N$r$p$SALT$HASH" (base64): the parameters travel with each hash, so stronger
    # ones later leave the hashes made before them checkable.
    password_hash: Mapped[str] = mapped_column(String(255))
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column()
    disabled_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When the account's logins were last ended: its password set, or the account disabled. A
    # login holds only while it is the date it logged in at (`db.accounts.kept_login`).
    password_changed_at: Mapped[datetime] = mapped_column(default=utcnow)


class LoginSession(Base):
    """A dashboard login kept across reloads of the browser that made it. The browser holds a
    random token in a cookie; this row holds only its SHA-256, so a copy of the database (a
    backup, a read-only role) logs no one in. A login ends at `expires_at`, at a logout
    (`ended_at`), when its account is disabled or given a new password (`ended_at`, and
    `password_changed_at` no longer the account's)."""

    __tablename__ = "login_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The account's `password_changed_at` at the login: the login holds only while it is still
    # that, even where a release that knew no login sessions set the password.
    password_changed_at: Mapped[datetime] = mapped_column()
    created_at: Mapped[datetime] = mapped_column()
    expires_at: Mapped[datetime] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column()

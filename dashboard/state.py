"""Process-wide resources of the app, cached across reruns and sessions, and small helpers the
pages share."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import streamlit as st
from sqlalchemy import select

import inspection  # noqa: F401 - prepares torch/torchvision/ultralytics
from db.migrate import schema_revision, upgrade
from db.models import ModelKind, ModelVersion, ProductionLine, Station
from db.registry import production_model
from db.session import DatabaseError, connection_scope, redact, session_scope
from inspection.batch import found_weights, weights_there
from inspection.engine import Inspector
from inspection.errors import UnloadableExport, UserError
from inspection.settings import SettingsError, get_settings

UPLOAD_LIMIT_MB = 500


@dataclass(frozen=True)
class DatabaseState:
    url: str
    revision: str | None
    error: str | None


@st.cache_resource(show_spinner="Preparing the database...")
def _migrated(url: str) -> str:
    return upgrade(url)


def database_ready() -> DatabaseState:
    """Migrate once per process and URL; a dead database or a bad setting is a message (and
    retried next run)."""
    try:
        url = get_settings().resolved_database_url
    except SettingsError as exc:
        return DatabaseState("", None, f"The settings cannot be used: {exc}")
    try:
        return DatabaseState(url, _migrated(url), None)
    except DatabaseError as exc:
        return DatabaseState(url, None, f"The database at {redact(url)} cannot be used: {exc}")


def schema_moved_on(state: DatabaseState) -> str | None:
    """What to say where the database's schema is no longer the one this dashboard migrated it
    to: a station or dashboard of another release migrated it since this one started, and
    this process, which runs the code it started with, would read and write a schema it does
    not know (a page failing for no reason it could give)."""
    try:
        with connection_scope(state.url) as connection:
            revision = schema_revision(connection)
    except DatabaseError:
        return None  # (said by the page that meets it)
    if revision is None or revision == state.revision:
        return None
    return (
        f"The database's schema is now at revision {revision}, not {state.revision} that this "
        "dashboard's release reads and writes: another release migrated it since this dashboard "
        "started. Restart the dashboard on the release that migrated the database (`git pull`, "
        "then `make run`)."
    )


@dataclass(frozen=True)
class DetectorInfo:
    id: int
    name: str
    file_path: str
    sha256: str
    classes: list[str]
    thresholds: dict
    classifier_path: str | None
    classifier_name: str | None = None

    @property
    def operating_point(self) -> str:
        """The thresholds as one comparable key: a new one reloads the model and re-judges."""
        return json.dumps(self.thresholds, sort_keys=True)


def detector_info(url: str, version: ModelVersion | None = None) -> DetectorInfo | None:
    """The production detector (or `version`) with what is needed to load it."""
    with session_scope(url) as session:
        version = (
            session.merge(version) if version else production_model(session, ModelKind.DETECTOR)
        )
        if version is None:
            return None
        classifier_name = (version.thresholds.get("classifier") or {}).get("version")
        classifier_path = None
        if classifier_name:
            classifier = session.scalars(
                select(ModelVersion).where(ModelVersion.name == classifier_name)
            ).first()
            classifier_path = (
                str(found_weights(classifier.file_path, classifier.sha256)) if classifier else None
            )
        return DetectorInfo(
            version.id,
            version.name,
            str(found_weights(version.file_path, version.sha256)),
            version.sha256,
            list(version.classes),
            dict(version.thresholds),
            classifier_path,
            classifier_name,
        )


@st.cache_resource(show_spinner="Loading the model...", max_entries=4)
def _inspector(
    file_path: str, sha256: str, thresholds_json: str, classifier_path: str | None
) -> Inspector:
    # Keyed by the file's hash and the operating point, so a new threshold or model reloads.
    inspector = Inspector.from_weights(
        Path(file_path),
        json.loads(thresholds_json),
        classifier_weights=Path(classifier_path) if classifier_path else None,
    )
    inspector.warm_up()  # under the loading spinner, not in the first upload's time
    return inspector


def inspector_for(info: DetectorInfo) -> Inspector:
    """The model that judges uploads; a version's weights gone are said as the command line
    says them (the page said "model file not found" or "classifier file not found")."""
    weights_there(info.name, Path(info.file_path))
    if info.classifier_name and not info.classifier_path:
        # (Loaded without it, the page judged with the detector alone, where every station
        # refuses: a part that only the classifier fails passed here.)
        raise UserError(
            f"the operating point of {info.name} names the classifier {info.classifier_name}, "
            f"which is not in the database: calibrate {info.name} again (`defects calibrate`, "
            "with another --classifier or none)"
        )
    if info.classifier_path and info.classifier_name:
        weights_there(info.classifier_name, Path(info.classifier_path))
    try:
        return _inspector(
            info.file_path,
            info.sha256,
            info.operating_point,
            info.classifier_path,
        )
    except UnloadableExport as exc:  # (the hint said `defects export VERSION`)
        raise exc.naming(info.name) from exc


def lines_and_stations(url: str) -> dict[str, list[str]]:
    with session_scope(url) as session:
        result: dict[str, list[str]] = {}
        for line in session.scalars(select(ProductionLine).order_by(ProductionLine.name)):
            result[line.name] = []
        for station, line_name in session.execute(
            select(Station, ProductionLine.name).join(ProductionLine).order_by(Station.name)
        ):
            result[line_name].append(station.name)
        return result


def no_model_message() -> None:
    st.info(
        "No production model yet. `make run` installs the demo model when it ships with the "
        "product; otherwise import labeled defects (`defects import voc DIR --name NAME`), train "
        "(`defects train detector --data NAME`) and promote the result on the Models page."
    )


FlashLevel = Literal["success", "info", "warning", "error"]


def flash(message: str, level: FlashLevel = "success") -> None:
    """A message for the next run of the page: an action that changes the database reruns the
    page to show the change, and a message shown before `st.rerun` is gone with that run."""
    st.session_state.setdefault("_flashes", []).append((level, message))


def show_flashes() -> None:
    """The messages `flash` left for this run, once."""
    for level, message in st.session_state.pop("_flashes", []):
        getattr(st, level)(message)


def database_message(exc: Exception) -> str:
    """What any page says when the database fails under it (one wording for every page)."""
    return (
        f"The database cannot be used right now: {exc}. Nothing was changed; try again, or "
        "ask whoever runs the database."
    )


def zone_label(utc_offset_minutes: int | None = None, earlier: tuple[int, ...] = ()) -> str:
    """'local time, UTC-05:00': what the pages' times are (stored times are naive UTC); by
    default today's offset, so a time from before a change of daylight saving time is still
    its own local time, an hour off the label. With the `earlier` offsets of a range that
    spans such a change, each: 'local time, UTC+02:00, then UTC+01:00'."""
    if utc_offset_minutes is None:
        offset = datetime.now().astimezone().utcoffset() or timedelta(0)
        utc_offset_minutes = round(offset.total_seconds() / 60)

    def utc(minutes: int) -> str:
        sign = "+" if minutes >= 0 else "-"
        hours, rest = divmod(abs(minutes), 60)
        return f"UTC{sign}{hours:02d}:{rest:02d}"

    return "local time, " + ", then ".join(utc(m) for m in (*earlier, utc_offset_minutes))


def local_time(moment: datetime) -> datetime:
    """A stored naive-UTC time as the server's local time (naive: Plotly draws no zones)."""
    return moment.replace(tzinfo=UTC).astimezone().replace(tzinfo=None)

from __future__ import annotations

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

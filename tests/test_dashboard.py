from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).parents[1] / "dashboard" / "app.py")


def test_overview_says_how_to_get_a_model_when_there_is_none() -> None:
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert any("No model yet" in info.value for info in at.info)


def test_dead_database_is_a_message_not_a_crash(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from inspection.settings import get_settings

    monkeypatch.setenv("DEFECTS_DATABASE_URL", "postgresql+psycopg://u:pw@127.0.0.1:1/x")
    get_settings.cache_clear()
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert "cannot be used" in at.error[0].value

"""The dashboard's accounts through Streamlit's AppTest: open without accounts, a login with."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit import config
from streamlit.testing.v1 import AppTest

from db.accounts import LOCK_SECONDS, MAX_FAILED_LOGINS, add_user, disable_user
from db.migrate import upgrade
from db.models import Role
from db.session import session_scope
from inspection.settings import get_settings

APP = str(Path(__file__).parents[1] / "dashboard" / "app.py")


@pytest.fixture
def url() -> str:
    url = get_settings().resolved_database_url
    upgrade(url)
    return url


def _account(url: str, name: str, role: Role, password: str = "right-pass") -> None:
    with session_scope(url) as session:
        add_user(session, name, role, password)


def _titles(at: AppTest) -> list[str]:
    return [t.value for t in at.title]


def _log_in(at: AppTest, name: str, password: str) -> AppTest:
    at.text_input(key="login_name").input(name)
    at.text_input(key="login_password").input(password)
    [button] = [b for b in at.button if b.label == "Log in"]
    return button.click().run()


@pytest.fixture
def server_address() -> Iterator[None]:
    """Puts back the address the server listens on, which a test sets."""
    before = config.get_option("server.address")
    yield
    config.set_option("server.address", before)


def test_without_accounts_the_pages_open_as_before(url: str, server_address: None) -> None:
    config.set_option("server.address", "localhost")
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, at.exception
    assert _titles(at) == ["Inspect parts"]
    assert not [t for t in at.text_input if t.key == "login_password"]
    assert not [b for b in at.button if b.label == "Log out"]
    at.switch_page("views/settings.py").run()
    assert _titles(at) == ["Settings"]
    assert not any("no accounts" in w.value for w in at.warning)  # (only this machine reaches it)


def test_a_dashboard_served_beyond_localhost_without_accounts_says_so(
    url: str, server_address: None
) -> None:
    config.set_option("server.address", "0.0.0.0")
    at = AppTest.from_file(APP, default_timeout=120).switch_page("views/settings.py").run()
    assert not at.exception, at.exception
    [warning] = [w.value for w in at.warning if "no accounts" in w.value]
    assert "0.0.0.0" in warning and "anyone who reaches it" in warning
    assert "defects users add NAME --role engineer" in warning
    _account(url, "eng", Role.ENGINEER)
    _log_in(at.run(), "eng", "right-pass")
    at.switch_page("views/settings.py").run()
    assert _titles(at) == ["Settings"]
    assert not any("no accounts" in w.value for w in at.warning)


def test_with_an_account_the_login_form_comes_first_and_no_page(url: str) -> None:
    _account(url, "ana", Role.REVIEWER)
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, at.exception
    assert _titles(at) == ["Log in"]
    assert {t.key for t in at.text_input} == {"login_name", "login_password"}
    assert not at.file_uploader and not at.slider and not at.dataframe
    for page in ("inspect", "review", "models", "settings"):  # not even registered
        with pytest.raises(ValueError, match=r"Known pages: \['Log in'\]"):
            at.switch_page(f"views/{page}.py")
    _log_in(at, "ana", "right-pass")
    assert not at.exception, at.exception
    assert _titles(at) == ["Inspect parts"]
    assert at.session_state["account"] == "ana"
    assert any(c.value == "Logged in as ana (reviewer)" for c in at.sidebar.caption)
    [logout] = [b for b in at.button if b.label == "Log out"]
    logout.click().run()
    assert _titles(at) == ["Log in"]


def test_a_wrong_password_or_name_is_refused_in_the_same_words(url: str) -> None:
    from db import accounts

    accounts._unknown_failures.clear()  # (kept per process: another test's tries)
    _account(url, "ana", Role.ENGINEER)
    at = AppTest.from_file(APP, default_timeout=120).run()
    for name, password in (("ana", "wrong-pass"), ("nobody", "right-pass"), ("", "")):
        _log_in(at, name, password)
        assert [e.value for e in at.error] == ["wrong name or password"]
        assert _titles(at) == ["Log in"] and "account" not in at.session_state
    with session_scope(url) as session:
        disable_user(session, "ana")
    _log_in(at, "ana", "right-pass")
    assert "disabled" in at.error[0].value and _titles(at) == ["Log in"]


def test_five_wrong_tries_make_the_name_wait(url: str) -> None:
    _account(url, "ana", Role.ENGINEER)
    at = AppTest.from_file(APP, default_timeout=120).run()
    for _ in range(MAX_FAILED_LOGINS - 1):
        _log_in(at, "ana", "wrong-pass")
        assert [e.value for e in at.error] == ["wrong name or password"]
    _log_in(at, "ana", "wrong-pass")
    [said] = [e.value for e in at.error]
    assert f"wait {LOCK_SECONDS} s" in said and "ana" in said
    _log_in(at, "ana", "right-pass")  # the right password waits too
    assert "wait" in at.error[0].value and _titles(at) == ["Log in"]
    assert "account" not in at.session_state


def test_a_session_of_an_account_disabled_since_is_logged_out(url: str) -> None:
    _account(url, "ana", Role.ENGINEER)
    at = _log_in(AppTest.from_file(APP, default_timeout=120).run(), "ana", "right-pass")
    assert _titles(at) == ["Inspect parts"]
    with session_scope(url) as session:
        disable_user(session, "ana")
    at.run()
    assert _titles(at) == ["Log in"]

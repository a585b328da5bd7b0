"""The dashboard's accounts through Streamlit's AppTest: open without accounts, a login with."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select
from streamlit import config
from streamlit.testing.v1 import AppTest

from db.accounts import LOCK_SECONDS, MAX_FAILED_LOGINS, add_user, disable_user
from db.models import InspectionRun, Review, Role
from db.session import session_scope
from inspection.settings import get_settings
from tests.conftest import Trained, register_production_detector
from tests.synthetic import make_images

APP = str(Path(__file__).parents[1] / "dashboard" / "app.py")


@pytest.fixture
def url(settings_database: str) -> str:
    return settings_database


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


@pytest.fixture
def server_certificate() -> Iterator[None]:
    """Puts back the certificate Streamlit serves HTTPS with, which a test sets."""
    before = config.get_option("server.sslCertFile")
    yield
    config.set_option("server.sslCertFile", before)


def test_accounts_on_a_dashboard_served_beyond_localhost_over_plain_http_are_warned_of(
    url: str, server_address: None, server_certificate: None
) -> None:
    """With accounts, the page was silent about the dashboard listening beyond this machine:
    over plain HTTP, every password typed at its login form crosses the network in clear."""
    config.set_option("server.address", "0.0.0.0")
    config.set_option("server.sslCertFile", None)
    _account(url, "eng", Role.ENGINEER)
    at = _log_in(AppTest.from_file(APP, default_timeout=120).run(), "eng", "right-pass")
    at.switch_page("views/settings.py").run()
    assert not at.exception, at.exception
    [warning] = [w.value for w in at.warning if "plain HTTP" in w.value]
    assert "0.0.0.0" in warning and "passwords" in warning
    assert "Serving the dashboard on a shared network" in warning
    config.set_option("server.sslCertFile", "/etc/ssl/defects.pem")  # (Streamlit serves HTTPS)
    at.run()
    assert _titles(at) == ["Settings"]
    assert not any("plain HTTP" in w.value for w in at.warning)
    config.set_option("server.address", "localhost")
    config.set_option("server.sslCertFile", None)
    at.run()
    assert _titles(at) == ["Settings"]
    assert not any("plain HTTP" in w.value for w in at.warning)


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
    _log_in(at, "ana", "right-pass")  # (a disabled account's right password is not confirmed)
    assert [e.value for e in at.error] == ["wrong name or password"]
    assert _titles(at) == ["Log in"] and "account" not in at.session_state


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


def test_a_session_of_an_account_whose_password_was_set_since_is_logged_out(url: str) -> None:
    """Its password set again (someone else learnt it): a login made with the old one ends."""
    from db.accounts import set_password

    _account(url, "ana", Role.ENGINEER)
    at = _log_in(AppTest.from_file(APP, default_timeout=120).run(), "ana", "right-pass")
    assert _titles(at) == ["Inspect parts"]
    with session_scope(url) as session:
        set_password(session, "ana", "new-password")
    at.run()
    assert _titles(at) == ["Log in"] and "account" not in at.session_state
    _log_in(at, "ana", "new-password")
    assert _titles(at) == ["Inspect parts"]


def test_a_live_page_left_open_shows_the_login_at_its_next_refresh_once_disabled(
    url: str,
) -> None:
    """The Live page refreshes itself, without app.py's check of the login: a disabled
    account's open tab went on showing the plant's parts."""
    from db.models import utcnow
    from tests.test_dashboard import _judged_in_run, _refreshed

    _account(url, "ana", Role.REVIEWER)
    _judged_in_run(url, ("Line 1", "Station 1"), "a", utcnow())
    at = _log_in(AppTest.from_file(APP, default_timeout=120).run(), "ana", "right-pass")
    at.switch_page("views/live.py").run()
    assert not at.exception, at.exception
    assert _titles(at) == ["Live"] and at.dataframe
    with session_scope(url) as session:
        disable_user(session, "ana")
    _refreshed(at)
    assert not at.exception, at.exception
    assert _titles(at) == ["Log in"] and not at.dataframe


@pytest.fixture
def production(url: str, trained: Trained) -> str:
    """This test's database with the tiny detector in production, and a station."""
    from db.registry import ensure_station

    register_production_detector(url, trained.weights, get_settings().models_dir)
    with session_scope(url) as session:
        ensure_station(session, "Line 1", "Station 1")
    return url


def test_a_reviewer_sees_no_models_or_settings_and_reviews_under_the_account(
    production: str, tmp_path: Path
) -> None:
    _account(production, "ana", Role.REVIEWER)
    at = _log_in(AppTest.from_file(APP, default_timeout=120).run(), "ana", "right-pass")
    images = make_images(tmp_path / "up", n=2, seed=3)
    files = [(i.name, (tmp_path / "up" / i.name).read_bytes(), "image/png") for i in images]
    at.file_uploader(key="inspect_files").set_value(files).run()
    assert not at.exception, at.exception
    with session_scope(production) as session:  # the upload's run names who made it
        assert session.scalars(select(InspectionRun.operator)).all() == ["ana"]
    for page in ("models", "settings"):  # not registered for a reviewer
        with pytest.raises(ValueError, match="Known pages") as refused:
            at.switch_page(f"views/{page}.py")
        known = str(refused.value).split("Known pages: ")[1]
        assert re.findall(r"views/(\w+)\.py", known) == ["inspect", "live", "review", "history"]
    at.switch_page("views/review.py").run()
    assert not at.exception, at.exception
    assert not [t for t in at.text_input if t.key == "reviewer"]  # no name to type
    assert any(c.value == "Reviewing as ana: every review records who made it." for c in at.caption)
    next(b for b in at.button if b.label == "Mark part good").click().run()
    assert not at.exception, at.exception
    with session_scope(production) as session:
        assert session.scalars(select(Review.reviewer)).all() == ["ana"]
    # Undone as the account too.
    next(b for b in at.button if b.label.startswith("Undo my last review")).click().run()
    with session_scope(production) as session:
        assert session.scalars(select(Review.reviewer)).all() == []


def test_a_reviewers_upload_goes_to_a_station_that_exists_and_makes_none(
    production: str, tmp_path: Path
) -> None:
    """Lines and stations are an engineer's to make: a name typed on the Inspect page made a
    new line and station for a reviewer too."""
    from db.models import Station

    _account(production, "ana", Role.REVIEWER)
    _account(production, "eng", Role.ENGINEER)
    images = make_images(tmp_path / "up", n=1, seed=4)
    files = [(i.name, (tmp_path / "up" / i.name).read_bytes(), "image/png") for i in images]
    with session_scope(production) as session:
        before = session.scalars(select(Station.name)).all()
    at = _log_in(AppTest.from_file(APP, default_timeout=120).run(), "ana", "right-pass")
    lines = at.selectbox(key="inspect_line")
    assert not lines.proto.accept_new_options and lines.options
    station = at.selectbox(key=f"inspect_station_{lines.value}")
    assert not station.proto.accept_new_options and station.options
    at.file_uploader(key="inspect_files").set_value(files).run()
    assert not at.exception, at.exception
    with session_scope(production) as session:
        assert session.scalars(select(Station.name)).all() == before
        assert session.scalars(select(InspectionRun.operator)).all() == ["ana"]
    # An engineer still may type a new one.
    at = _log_in(AppTest.from_file(APP, default_timeout=120).run(), "eng", "right-pass")
    assert at.selectbox(key="inspect_line").proto.accept_new_options


def test_an_engineer_sees_models_and_settings(production: str) -> None:
    _account(production, "eng", Role.ENGINEER)
    at = _log_in(AppTest.from_file(APP, default_timeout=120).run(), "eng", "right-pass")
    at.switch_page("views/models.py").run()
    assert not at.exception, at.exception
    assert _titles(at) == ["Models"] and at.dataframe
    at.switch_page("views/settings.py").run()
    assert _titles(at) == ["Settings"] and at.slider


@pytest.mark.parametrize("page", ["models", "settings"])
def test_the_models_and_settings_pages_refuse_a_reviewer_in_their_own_code(
    production: str, page: str
) -> None:
    """Hidden from a reviewer's navigation, and refused by the page itself if reached. (The
    session is logged in as the dashboard logs one in, by its kept login: the name alone in
    the session logs no one in, so it tested nobody logged in twice.)"""
    from db.accounts import authenticate, keep_login, token_hash

    _account(production, "ana", Role.REVIEWER)
    with session_scope(production) as session:
        token = keep_login(session, authenticate(session, "ana", "right-pass")).token
    view = str(Path(APP).parent / "views" / f"{page}.py")
    for hashed, told in ((token_hash(token), "ana is a reviewer"), (None, "log in")):
        at = AppTest.from_file(view, default_timeout=120)
        if hashed:
            at.session_state["account_token"] = hashed
        at.run()
        assert not at.exception, at.exception
        assert "is for engineers" in at.error[0].value and told in at.error[0].value
        assert not at.button and not at.slider and not at.dataframe


def test_the_review_pages_export_is_for_engineers_only(url: str) -> None:
    """Building datasets is an engineer's work: a reviewer was offered the export of reviews
    into a training dataset on the Review page."""
    _account(url, "ana", Role.REVIEWER)
    _account(url, "eng", Role.ENGINEER)
    at = _log_in(AppTest.from_file(APP, default_timeout=120).run(), "ana", "right-pass")
    at.switch_page("views/review.py").run()
    assert not at.exception, at.exception
    assert not [b for b in at.button if b.label == "Export reviewed parts"]
    assert not [t for t in at.text_input if t.label == "New dataset name"]
    assert any("ana is a reviewer" in c.value for c in at.caption)
    at = _log_in(AppTest.from_file(APP, default_timeout=120).run(), "eng", "right-pass")
    at.switch_page("views/review.py").run()
    assert not at.exception, at.exception
    [export] = [b for b in at.button if b.label == "Export reviewed parts"]
    export.click().run()  # (offered and run: here it needs a production model)
    assert any("No production model" in e.value for e in at.error)


def _kept_cookie(at: AppTest) -> str:
    """The login token the page's script gives the browser to keep, read from that script."""
    [script] = [h.proto.body for h in at.sidebar.get("html")]
    found = re.search(
        r'"defects_login_8501=([^;"]*); Path=/; Expires=[^;"]+; SameSite=Strict"', script
    )
    assert found, script
    return found.group(1)


def _reloaded(monkeypatch: pytest.MonkeyPatch, cookies: dict[str, str]) -> AppTest:
    """A new session of a browser sending `cookies`, as a reload of the page begins one. (AppTest
    has no browser: its session's client, whose handshake's cookies `st.context.cookies` reads,
    is given these.)"""
    from streamlit.runtime import context

    monkeypatch.setattr(
        context, "_get_client_context", lambda: SimpleNamespace(cookies=cookies, headers={})
    )
    return AppTest.from_file(APP, default_timeout=120).run()


def test_a_login_is_kept_across_a_reload_of_its_browser(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload (F5, a floor PC's tab reopened) logged the user out: the login lived only in
    the session, and a reload begins a new one."""
    import hashlib

    from db.models import LoginSession

    _account(url, "ana", Role.REVIEWER)
    at = _log_in(AppTest.from_file(APP, default_timeout=120).run(), "ana", "right-pass")
    token = _kept_cookie(at)
    assert len(token) >= 43 and "right-pass" not in token
    with session_scope(url) as session:  # only its hash is kept
        [kept] = session.scalars(select(LoginSession.token_hash)).all()
    assert kept == hashlib.sha256(token.encode()).hexdigest() != token
    again = _reloaded(monkeypatch, {"defects_login_8501": token})
    assert not again.exception, again.exception
    assert _titles(again) == ["Inspect parts"]
    assert any(c.value == "Logged in as ana (reviewer)" for c in again.sidebar.caption)
    assert not [t for t in again.text_input if t.key == "login_password"]
    # A token of no login, or sent to another dashboard's port, logs no one in.
    for cookies in ({"defects_login_8501": token[:-1] + "x"}, {"defects_login_8502": token}):
        assert _titles(_reloaded(monkeypatch, cookies)) == ["Log in"]


def test_a_logout_ends_the_kept_login_in_every_tab_of_its_browser(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def drops_the_cookie(at: AppTest) -> bool:
        return any(
            '"defects_login_8501=; Path=/; Max-Age=0; SameSite=Strict"' in h.proto.body
            for h in at.get("html")
        )

    _account(url, "ana", Role.ENGINEER)
    first = _log_in(AppTest.from_file(APP, default_timeout=120).run(), "ana", "right-pass")
    cookies = {"defects_login_8501": _kept_cookie(first)}
    tab, other_tab = _reloaded(monkeypatch, cookies), _reloaded(monkeypatch, cookies)
    assert _titles(tab) == _titles(other_tab) == ["Inspect parts"]
    [logout] = [b for b in tab.button if b.label == "Log out"]
    logout.click().run()
    assert _titles(tab) == ["Log in"] and drops_the_cookie(tab)
    for open_tab in (other_tab, first):  # at their next action
        assert _titles(open_tab.run()) == ["Log in"]
    again = _reloaded(monkeypatch, cookies)  # the browser still sent the cookie: refused
    assert _titles(again) == ["Log in"]
    assert drops_the_cookie(again)  # (and the login page drops it from the browser)
    # A session that set the cookie itself (no reload since) drops it at its logout too.
    monkeypatch.undo()
    fresh = _log_in(AppTest.from_file(APP, default_timeout=120).run(), "ana", "right-pass")
    assert not drops_the_cookie(fresh)
    [logout] = [b for b in fresh.button if b.label == "Log out"]
    assert drops_the_cookie(logout.click().run())


@pytest.mark.parametrize("ended_by", ["disable", "new password", "expiry"])
def test_a_kept_login_ends_with_its_account_disabled_its_password_set_or_its_expiry(
    url: str, monkeypatch: pytest.MonkeyPatch, ended_by: str
) -> None:
    from datetime import timedelta

    from db.accounts import LOGIN_HOURS, enable_user, set_password
    from db.models import LoginSession, database_utcnow

    _account(url, "ana", Role.ENGINEER)
    token = _kept_cookie(
        _log_in(AppTest.from_file(APP, default_timeout=120).run(), "ana", "right-pass")
    )
    cookies = {"defects_login_8501": token}
    open_tab = _reloaded(monkeypatch, cookies)
    with session_scope(url) as session:
        [kept] = session.scalars(select(LoginSession)).all()
        now = database_utcnow(session)
        assert (
            timedelta(hours=LOGIN_HOURS - 1) < kept.expires_at - now <= timedelta(hours=LOGIN_HOURS)
        )
        if ended_by == "disable":
            disable_user(session, "ana")
            session.flush()
            enable_user(session, "ana")  # (enabled again: the login stays ended)
        elif ended_by == "new password":
            set_password(session, "ana", "new-password")
        else:
            kept.expires_at = now - timedelta(seconds=1)
    assert _titles(_reloaded(monkeypatch, cookies)) == ["Log in"]
    open_tab.run()
    assert _titles(open_tab) == ["Log in"] and "account" not in open_tab.session_state
    if ended_by != "expiry":  # (ended in its row, not only by the account's changed date)
        with session_scope(url) as session:
            assert session.scalars(select(LoginSession.ended_at)).one() is not None


def _browser_cookie_after(html: str, cookie: str) -> str | None:
    """The login cookie a real browser holds after running the page's `html` with `cookie` as
    the cookie's value before (None: it dropped it)."""
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    origin = "http://dashboard.test"
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=str(chromium), args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        context = browser.new_context()
        context.add_cookies([{"name": "defects_login_8501", "value": cookie, "url": origin}])
        page = context.new_page()
        page.route(
            f"{origin}/**",
            lambda route: route.fulfill(body=f"<html><body>{html}</body></html>", status=200),
        )
        page.goto(f"{origin}/")
        held = {c["name"]: c["value"] for c in context.cookies()}
        browser.close()
    return held.get("defects_login_8501")


def test_a_tab_left_on_an_ended_login_leaves_the_cookie_of_a_login_made_since(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tabs of one browser: ana logged out in one and eng logged in there; the other tab,
    still on ana's login, came to the login page at its next action and deleted the browser's
    cookie whatever it held, eng's by then, so eng's next reload asked for the login again."""
    _account(url, "ana", Role.REVIEWER)
    _account(url, "eng", Role.ENGINEER)
    ana = _kept_cookie(
        _log_in(AppTest.from_file(APP, default_timeout=120).run(), "ana", "right-pass")
    )
    cookies = {"defects_login_8501": ana}
    tab, other_tab = _reloaded(monkeypatch, cookies), _reloaded(monkeypatch, cookies)
    [logout] = [b for b in tab.button if b.label == "Log out"]
    eng = _kept_cookie(_log_in(logout.click().run(), "eng", "right-pass"))
    assert _titles(other_tab.run()) == ["Log in"]  # (ana's login ended)
    [script] = [h.proto.body for h in other_tab.get("html")]
    assert _browser_cookie_after(script, eng) == eng  # eng's login kept
    assert _browser_cookie_after(script, ana) is None  # ana's, ended, dropped


def test_a_forged_cookie_is_written_into_the_login_pages_script_only_as_a_string(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The login page names the token it drops in its script; a browser's cookie is anyone's
    to forge, so no value of it may end the script or add another."""
    _account(url, "ana", Role.REVIEWER)
    forged = "x</script><script>alert(1)</script>\"');\u2028"
    at = _reloaded(monkeypatch, {"defects_login_8501": forged})
    assert _titles(at) == ["Log in"]
    [script] = [h.proto.body for h in at.get("html")]
    assert script.startswith("<script>") and script.count("</script>") == 1
    assert script.endswith("</script>") and "alert(1)</" not in script
    assert json.dumps(forged).replace("<", "\\u003c") in script

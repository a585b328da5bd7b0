"""Who uses the dashboard: the login form, the account of this browser session, its role.

While no account exists the dashboard is open, as it always was (one person on their own
machine sees an inspection at once). Once `defects users add` made one, everyone logs in,
and a served dashboard is no longer open to whoever reaches it.

A login is kept across reloads of the browser that made it: Streamlit starts a new session at
each reload, so the login is a random token the browser keeps in a cookie (set by a script of
this page: a Streamlit script answers over a websocket, with no HTTP response to set a cookie
in), and the database keeps only its hash, with its expiry; a logout, a disabled account or a
new password ends it there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

import streamlit as st

from dashboard.text import plain
from db.accounts import (
    TOKEN_BYTES,
    accounts_exist,
    authenticate,
    end_login,
    keep_login,
    kept_login,
    token_hash,
)
from db.models import Role
from db.session import session_scope

ACCOUNT = "account"  # session_state: the name of the account logged in here
ACCOUNT_TOKEN = "account_token"  # session_state: the hash of this session's login token
COOKIE_TO_SET = "account_cookie"  # session_state: (token, expiry) for the browser to keep
FORGET_COOKIE = "account_logged_out"  # session_state: a token ended, to drop from the browser
COOKIE = "defects_login"
MAX_TOKEN_LENGTH = 4 * TOKEN_BYTES  # (a token is base64 of TOKEN_BYTES; longer is no token)
LOCAL_ADDRESSES = {"localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class Access:
    """What this session may do: `accounts` says whether logins are on at all."""

    accounts: bool
    name: str | None = None
    role: Role | None = None

    @property
    def logged_in(self) -> bool:
        return self.name is not None

    @property
    def engineer(self) -> bool:
        """May change models and settings: everyone without accounts, engineers with them."""
        return not self.accounts or self.role is Role.ENGINEER


def cookie_name() -> str:
    """The login cookie's name, with the server's port in it: cookies are per host, not per
    port, so two dashboards of one host (each its own database) would overwrite each other's."""
    return f"{COOKIE}_{st.get_option('server.port')}"


def cookie_path() -> str:
    """The path the cookie is sent for: the dashboard's own (`server.baseUrlPath` behind a
    proxy), so another application of the same host is not sent it."""
    base = str(st.get_option("server.baseUrlPath") or "").strip("/")
    return f"/{base}" if base else "/"


def browser_token() -> str | None:
    """The login token the browser sent when this session began (a reload begins a new one);
    None where it sent none, or a value no token can be."""
    value = st.context.cookies.get(cookie_name())
    if not isinstance(value, str) or not value or len(value) > MAX_TOKEN_LENGTH:
        return None
    return value


def current_access(url: str) -> Access:
    """This session's access, read from the database at each run: an account disabled, its
    password set again, its role changed or its login ended (a logout in another tab of the
    browser, the login's expiry) counts from the next action of a session logged in before.
    A session with no login yet takes the one its browser kept (a reload)."""
    with session_scope(url) as session:
        if not accounts_exist(session):
            return Access(accounts=False)
        hashed = st.session_state.get(ACCOUNT_TOKEN)
        if not isinstance(hashed, str):
            token = browser_token()
            hashed = token_hash(token) if token else None
        login = kept_login(session, hashed) if hashed else None
    if login is None or login.role is None:
        kept_here = st.session_state.get(COOKIE_TO_SET)
        for key in (ACCOUNT, ACCOUNT_TOKEN, COOKIE_TO_SET):
            st.session_state.pop(key, None)
        if isinstance(kept_here, tuple):  # (ended: the login page drops it from the browser)
            st.session_state[FORGET_COOKIE] = kept_here[0]
        return Access(accounts=True)
    st.session_state[ACCOUNT] = login.name
    st.session_state[ACCOUNT_TOKEN] = hashed
    return Access(accounts=True, name=login.name, role=login.role)


def login_page(url: str) -> None:
    """Name and password; a wrong one is told as that alone, so it says not which names
    exist, nor which are disabled (refused in those words, with their right password too);
    a name given 5 wrong passwords in a row waits 30 s, and is told so."""
    st.title("Log in")
    st.caption("This dashboard has named accounts: reviews are recorded under yours.")
    forget_browser_login()
    with st.form("login", clear_on_submit=True):
        name = st.text_input("Name", key="login_name")
        password = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Log in")
    if not submitted:
        return
    with session_scope(url) as session:
        login = authenticate(session, name, password)
        kept = keep_login(session, login) if login.ok else None
    if kept is not None:
        st.session_state[ACCOUNT] = login.name
        st.session_state[ACCOUNT_TOKEN] = token_hash(kept.token)
        st.session_state[COOKIE_TO_SET] = (kept.token, kept.expires_at)
        st.rerun()
    elif login.wait_seconds:
        st.error(
            f"Too many wrong tries for the name {plain(name.strip())}: wait "
            f"{login.wait_seconds} s before trying it again."
        )
    else:
        st.error("wrong name or password")


def account_sidebar(url: str, access: Access) -> None:
    """Who is logged in, and the way out."""
    if not access.logged_in or access.role is None:
        return
    st.sidebar.caption(f"Logged in as {plain(access.name)} ({access.role.value})")
    if st.sidebar.button("Log out", key="logout"):
        hashed = st.session_state.get(ACCOUNT_TOKEN)
        if isinstance(hashed, str):
            # Ended in the database, not only here: the browser's cookie, its other tabs and
            # any copy of the token are refused from now on.
            with session_scope(url) as session:
                end_login(session, hashed)
        # All of it: the next person at this screen inherits no part picked, no review to
        # undo, no half-filled form of the one before.
        kept = st.session_state.get(COOKIE_TO_SET)
        st.session_state.clear()
        if isinstance(kept, tuple):
            st.session_state[FORGET_COOKIE] = kept[0]
        st.rerun()
    kept = st.session_state.get(COOKIE_TO_SET)
    if isinstance(kept, tuple) and token_hash(kept[0]) == st.session_state.get(ACCOUNT_TOKEN):
        # Given on every run of the session that logged in (the same script, so the browser
        # runs it once): a run cut short by another must not leave the browser without it.
        st.sidebar.html(_cookie_script(kept[0], kept[1]), unsafe_allow_javascript=True)


def forget_browser_login() -> None:
    """On the login form: the cookie of a login ended here (a logout, an expiry, a disabled
    account), sent when this session began or set by it, is dropped from the browser too.
    Only while the browser still holds that login's token: another tab of the browser may
    have logged in since, and its cookie is that login's, not this one's to drop."""
    ended = [
        token
        for token in (browser_token(), st.session_state.get(FORGET_COOKIE))
        if isinstance(token, str) and token
    ]
    if ended:
        st.html(_forget_script(ended), unsafe_allow_javascript=True)


def _cookie_script(token: str, expires_at: datetime | None) -> str:
    """A script setting the login cookie (None: deleting it). Not sent with other sites'
    requests (SameSite=Strict), sent only over TLS where the page came over TLS, and never in
    a URL. (A script cannot make it HttpOnly, which only a server's response can.)"""
    when = (
        f"Expires={format_datetime(expires_at.replace(tzinfo=UTC), usegmt=True)}"
        if expires_at is not None
        else "Max-Age=0"
    )
    cookie = f"{cookie_name()}={token}; Path={cookie_path()}; {when}; SameSite=Strict"
    literal = json.dumps(cookie).replace("<", "\\u003c")  # (no "</script>" can end it early)
    return (
        f"<script>document.cookie = {literal} + "
        '(window.location.protocol === "https:" ? "; Secure" : "");</script>'
    )


def _forget_script(ended: list[str]) -> str:
    """A script deleting the login cookie where it still holds one of the `ended` tokens, and
    leaving it where it holds another (a login made since, in another tab)."""
    deletion = _cookie_script("", None).removeprefix("<script>").removesuffix("</script>")
    known = json.dumps(ended).replace("<", "\\u003c")
    name = json.dumps(cookie_name())
    return (
        f"<script>if (document.cookie.split('; ').some((c) => {known}.some("
        f"(t) => c === {name} + '=' + t))) {{ {deletion} }}</script>"
    )


def engineers_only(url: str, page: str) -> Access:
    """Stops a page that changes models or settings for anyone but an engineer. The page is
    not in a reviewer's navigation either; this refuses it in the page's own code, so that
    no way of reaching it (a stale link, a session whose role changed) runs its actions."""
    access = current_access(url)
    if not access.engineer:
        st.error(
            f"The {page} page is for engineers"
            + (f": {plain(access.name)} is a reviewer." if access.logged_in else ": log in.")
        )
        st.stop()
    return access


def listens_beyond_localhost() -> bool:
    """Whether this server can be reached from other machines: its address is not this
    machine's loopback (Streamlit with no address listens on every interface)."""
    address = st.get_option("server.address")
    return not address or str(address).strip("[]") not in LOCAL_ADDRESSES


def serves_tls() -> bool:
    """Whether Streamlit itself serves the page over HTTPS (given a certificate): otherwise a
    page reached from another machine, passwords typed in it included, crosses it in clear."""
    return bool(st.get_option("server.sslCertFile"))

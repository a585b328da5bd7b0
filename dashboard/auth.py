"""Who uses the dashboard: the login form, the account of this browser session, its role.

While no account exists the dashboard is open, as it always was (one person on their own
machine sees an inspection at once). Once `defects users add` made one, everyone logs in,
and a served dashboard is no longer open to whoever reaches it.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from dashboard.text import plain
from db.accounts import account_role, accounts_exist, authenticate
from db.models import Role
from db.session import session_scope

ACCOUNT = "account"  # session_state: the name of the account logged in here
ACCOUNT_SINCE = "account_since"  # session_state: when that account's password was set
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


def current_access(url: str) -> Access:
    """This session's access, read from the database at each run: an account disabled, its
    password set again or its role changed counts from the next action of a session logged
    in before."""
    with session_scope(url) as session:
        if not accounts_exist(session):
            return Access(accounts=False)
        name = st.session_state.get(ACCOUNT)
        since = st.session_state.get(ACCOUNT_SINCE)
        role = account_role(session, name, since) if isinstance(name, str) else None
    if role is None:
        st.session_state.pop(ACCOUNT, None)
        st.session_state.pop(ACCOUNT_SINCE, None)
        return Access(accounts=True)
    return Access(accounts=True, name=name, role=role)


def login_page(url: str) -> None:
    """Name and password; a wrong one is told as that alone, so it says not which names
    exist; a name given 5 wrong passwords in a row waits 30 s, and is told so."""
    st.title("Log in")
    st.caption("This dashboard has named accounts: reviews are recorded under yours.")
    with st.form("login", clear_on_submit=True):
        name = st.text_input("Name", key="login_name")
        password = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Log in")
    if not submitted:
        return
    with session_scope(url) as session:
        login = authenticate(session, name, password)
    if login.ok:
        st.session_state[ACCOUNT] = login.name
        st.session_state[ACCOUNT_SINCE] = login.since
        st.rerun()
    elif login.wait_seconds:
        st.error(
            f"Too many wrong tries for the name {plain(name.strip())}: wait "
            f"{login.wait_seconds} s before trying it again."
        )
    elif login.disabled:
        st.error("This account is disabled: ask an engineer (`defects users enable NAME`).")
    else:
        st.error("wrong name or password")


def account_sidebar(access: Access) -> None:
    """Who is logged in, and the way out."""
    if not access.logged_in or access.role is None:
        return
    st.sidebar.caption(f"Logged in as {plain(access.name)} ({access.role.value})")
    if st.sidebar.button("Log out", key="logout"):
        # All of it: the next person at this screen inherits no part picked, no review to
        # undo, no half-filled form of the one before.
        st.session_state.clear()
        st.rerun()


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

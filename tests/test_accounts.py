"""Dashboard accounts: password hashes, the `defects users` commands, the migration, logins."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect as schema
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from db.accounts import (
    LOCK_SECONDS,
    MAX_FAILED_LOGINS,
    AccountError,
    Login,
    accounts_exist,
    add_user,
    authenticate,
    hash_password,
    verify_password,
)
from db.migrate import upgrade
from db.models import Role, User
from db.session import get_engine, session_scope
from inspection.settings import get_settings
from training.cli import app

runner = CliRunner()


def test_a_password_hash_round_trips_and_holds_no_password() -> None:
    stored = hash_password("correct horse")
    assert "correct horse" not in stored
    scheme, n, r, p, salt, digest = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert verify_password("correct horse", stored)
    assert not verify_password("correct hors", stored)
    assert not verify_password("correct horse", "scrypt$16384$8$1$bad$")  # damaged: no match
    assert hash_password("correct horse") != stored  # salted: never the same twice


def test_the_hash_is_checked_with_the_parameters_stored_beside_it() -> None:
    """A hash made with other parameters (an earlier or later cost) still checks."""
    import base64
    import hashlib

    salt = b"0123456789abcdef"
    digest = hashlib.scrypt(b"s3cret-pass", salt=salt, n=2**10, r=4, p=2, dklen=24)
    stored = (
        f"scrypt$1024$4$2${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    )
    assert verify_password("s3cret-pass", stored)
    assert not verify_password("s3cret-pasS", stored)


def _users(*args: str, password: str | None = None) -> tuple[int, str, BaseException | None]:
    result = runner.invoke(
        app, ["users", *args], input=None if password is None else password + "\n"
    )
    return result.exit_code, result.output, result.exception


def _stored(name: str) -> User:
    with session_scope(get_settings().resolved_database_url) as session:
        user = session.scalars(select(User).where(User.name == name)).one()
        session.expunge(user)
        return user


def test_accounts_with_no_engineer_who_can_log_in_are_said_to_lock_models_and_settings() -> None:
    """A first account added as a reviewer, as a new engineer trying the login may do, turned
    the login on with nobody let into the Models and Settings pages, and nothing said so;
    disabling the last engineer did the same."""
    locked = "no engineer account can log in"
    code, output, _ = _users(
        "add", "qa1", "--role", "reviewer", "--password-stdin", password="p" * 8
    )
    assert code == 0 and locked in " ".join(output.split())
    code, output, _ = _users(
        "add", "Ana", "--role", "engineer", "--password-stdin", password="p" * 8
    )
    assert code == 0 and locked not in " ".join(output.split())
    code, output, _ = _users(
        "add", "qa2", "--role", "reviewer", "--password-stdin", password="p" * 8
    )
    assert code == 0 and locked not in " ".join(output.split())
    code, output, _ = _users("disable", "ana")
    assert code == 0 and locked in " ".join(output.split())
    code, output, _ = _users("enable", "ana")
    assert code == 0 and locked not in " ".join(output.split())


def test_users_add_list_disable_set_password_on_the_command_line() -> None:
    code, output, _ = _users("list")
    assert code == 0 and "no accounts" in output
    code, output, _ = _users(
        "add", "Ana Silva", "--role", "reviewer", "--password-stdin", password="first-pass"
    )
    assert code == 0, output
    assert "Ana Silva added (reviewer)" in output and "asks everyone to log in" in output
    ana = _stored("Ana Silva")
    assert ana.role is Role.REVIEWER and "first-pass" not in ana.password_hash
    assert verify_password("first-pass", ana.password_hash)

    # Typed at the prompt, twice.
    code, output, _ = _users("add", "bo", "--role", "engineer", password="eng-pass1\neng-pass1")
    assert code == 0, output
    assert _stored("bo").role is Role.ENGINEER

    # A name taken in another case, a short password, an unknown account: refused, said why.
    code, _, error = _users(
        "add", "ana silva", "--role", "engineer", "--password-stdin", password="other-pass"
    )
    assert code != 0 and isinstance(error, AccountError) and "exists already" in str(error)
    code, _, error = _users("add", "cy", "--role", "engineer", "--password-stdin", password="short")
    assert code != 0 and "at least 8 characters" in str(error)
    code, _, error = _users("set-password", "nobody", "--password-stdin", password="whatever1")
    assert code != 0 and "no account 'nobody'" in str(error)

    code, output, _ = _users(
        "set-password", "Ana Silva", "--password-stdin", password="second-pass"
    )
    assert code == 0, output
    assert verify_password("second-pass", _stored("Ana Silva").password_hash)
    assert not verify_password("first-pass", _stored("Ana Silva").password_hash)

    code, output, _ = _users("disable", "Ana Silva")
    assert code == 0 and "disabled" in output
    assert _stored("Ana Silva").disabled_at is not None
    code, output, _ = _users("list")
    assert code == 0
    rows = {line.split("│")[1].strip(): line for line in output.splitlines() if "│" in line}
    assert "reviewer" in rows["Ana Silva"] and "disabled" in rows["Ana Silva"]
    assert "engineer" in rows["bo"] and "active" in rows["bo"]
    code, output, _ = _users("enable", "Ana Silva")
    assert code == 0 and _stored("Ana Silva").disabled_at is None


def test_a_bad_account_command_is_one_line_and_no_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from training.cli import main; main()",
            "users",
            "add",
            "x",
            "--role",
            "engineer",
            "--password-stdin",
        ],
        input="short\n",
        capture_output=True,
        text=True,
        env={"DEFECTS_DATA_DIR": str(tmp_path / "d"), "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).parents[1],
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "error: a password needs at least 8 characters"


def test_the_users_migration_goes_up_and_down(tmp_path: Path) -> None:
    from alembic import command

    from db.migrate import alembic_config

    url = f"sqlite:///{tmp_path / 'users.db'}"
    upgrade(url, "0007")
    assert "users" not in schema(get_engine(url)).get_table_names()
    upgrade(url)
    assert "users" in schema(get_engine(url)).get_table_names()
    with session_scope(url) as session:
        add_user(session, "ana", Role.REVIEWER, "long-enough")
    command.downgrade(alembic_config(url), "0007")
    get_engine(url).dispose()
    assert "users" not in schema(get_engine(url)).get_table_names()
    upgrade(url)
    with session_scope(url) as session:
        assert not accounts_exist(session)  # (the table is new again, empty)


def test_a_login_is_checked_and_five_wrong_tries_make_the_name_wait(database_url: str) -> None:
    with session_scope(database_url) as session:
        assert not accounts_exist(session)
        add_user(session, "ana", Role.REVIEWER, "right-pass")
        assert accounts_exist(session)
    with session_scope(database_url) as session:
        login = authenticate(session, " ana ", "right-pass")
        assert login.ok and login.name == "ana" and login.role is Role.REVIEWER
    for _ in range(MAX_FAILED_LOGINS - 1):
        with session_scope(database_url) as session:
            refused = authenticate(session, "ana", "wrong-pass")
            assert not refused.ok and refused.wait_seconds == 0
    with session_scope(database_url) as session:
        assert authenticate(session, "ana", "wrong-pass").wait_seconds == LOCK_SECONDS
    with session_scope(database_url) as session:  # the right password waits too
        waiting = authenticate(session, "ana", "right-pass")
        assert not waiting.ok and 0 < waiting.wait_seconds <= LOCK_SECONDS
    with session_scope(database_url) as session:  # once the wait is over, it logs in
        user = session.scalars(select(User)).one()
        assert user.locked_until is not None
        user.locked_until -= timedelta(seconds=LOCK_SECONDS + 1)
    with session_scope(database_url) as session:
        assert authenticate(session, "ana", "right-pass").ok


def test_a_name_with_no_account_is_answered_as_a_wrong_password(database_url: str) -> None:
    from db import accounts

    accounts._unknown_failures.clear()  # (kept per process: another test's tries)
    with session_scope(database_url) as session:
        add_user(session, "ana", Role.ENGINEER, "right-pass")
    answers = []
    for _ in range(MAX_FAILED_LOGINS):
        with session_scope(database_url) as session:
            answers.append(authenticate(session, "nobody-here", "right-pass"))
    assert [a.ok for a in answers] == [False] * MAX_FAILED_LOGINS
    assert [a.wait_seconds for a in answers] == [0] * (MAX_FAILED_LOGINS - 1) + [LOCK_SECONDS]


@pytest.mark.parametrize("name", ["ana", "nobody-here"])
def test_tries_sent_side_by_side_get_no_more_password_checks_than_one_after_another(
    database_url: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tries of one name sent at once (a browser tab each) were all checked, each reading the
    count of wrong tries before any of them wrote it: as many guesses as tabs, not 5."""
    import threading
    import time

    from db import accounts

    accounts._unknown_failures.clear()  # (kept per process: another test's tries)
    with session_scope(database_url) as session:
        add_user(session, "ana", Role.ENGINEER, "right-pass")
    checked: list[str] = []
    real_check = accounts.verify_password

    def slow_check(password: str, stored: str) -> bool:
        checked.append(password)
        time.sleep(0.3)  # (a check takes long enough for the other tries to arrive)
        return real_check(password, stored)

    monkeypatch.setattr(accounts, "verify_password", slow_check)
    tries = 3 * MAX_FAILED_LOGINS
    start = threading.Barrier(tries)
    answers: list[accounts.Login] = []

    def attempt(i: int) -> None:
        start.wait()
        with session_scope(database_url) as session:
            answers.append(authenticate(session, name, f"guess-{i}"))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(tries)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == tries and not any(a.ok for a in answers)
    assert len(checked) == MAX_FAILED_LOGINS
    assert sum(a.wait_seconds > 0 for a in answers) >= tries - MAX_FAILED_LOGINS + 1
    with session_scope(database_url) as session:  # and the name waits now
        assert 0 < authenticate(session, name, "right-pass").wait_seconds <= LOCK_SECONDS


def test_a_huge_name_with_no_account_is_not_kept_whole(database_url: str) -> None:
    """Wrong tries of unknown names are kept in memory: a name of a megabyte was kept whole."""
    from db import accounts

    accounts._unknown_failures.clear()
    with session_scope(database_url) as session:
        add_user(session, "ana", Role.ENGINEER, "right-pass")
    with session_scope(database_url) as session:
        assert not authenticate(session, "x" * 1_000_000, "wrong-pass").ok
    assert [len(key) for key in accounts._unknown_failures] == [accounts.MAX_NAME_LENGTH + 1]


def _role_of(session: Session, token: str) -> Role | None:
    """The role a kept login (the browser's token) stands for now, as the dashboard reads it."""
    from db.accounts import kept_login, token_hash

    login = kept_login(session, token_hash(token))
    return None if login is None else login.role


def test_a_disabled_account_cannot_log_in(database_url: str) -> None:
    from db.accounts import disable_user, keep_login

    with session_scope(database_url) as session:
        add_user(session, "ana", Role.ENGINEER, "right-pass")
    with session_scope(database_url) as session:
        token = keep_login(session, authenticate(session, "ana", "right-pass")).token
        assert _role_of(session, token) is Role.ENGINEER
        disable_user(session, "ana")
        assert _role_of(session, token) is None
        login = authenticate(session, "ana", "right-pass")
        assert not login.ok


def test_a_disabled_account_is_answered_and_counted_as_a_wrong_password(
    database_url: str,
) -> None:
    """Told "disabled", or its count of wrong tries reset, a disabled account confirmed its
    right password to whoever tried it: the answers given the right password and a wrong one
    must be one and the same, waits included."""
    from db.accounts import disable_user

    with session_scope(database_url) as session:
        add_user(session, "ana", Role.ENGINEER, "right-pass")
        add_user(session, "bo", Role.ENGINEER, "right-pass")
        disable_user(session, "ana")
        disable_user(session, "bo")
    answers: dict[str, list[Login]] = {"ana": [], "bo": []}
    for name, password in (("ana", "right-pass"), ("bo", "wrong-pass")):
        for _ in range(MAX_FAILED_LOGINS):
            with session_scope(database_url) as session:
                answers[name].append(authenticate(session, name, password))
    assert answers["ana"] == answers["bo"]
    assert [a.wait_seconds for a in answers["ana"]] == [0] * (MAX_FAILED_LOGINS - 1) + [
        LOCK_SECONDS
    ]


def test_a_login_ends_with_a_disable_even_if_enabled_again_before_its_next_action(
    database_url: str,
) -> None:
    """An account disabled and enabled again between two actions of its session (disabled for
    a person who left, then enabled for the one taking over the name) kept the session."""
    from db.accounts import disable_user, enable_user, keep_login

    with session_scope(database_url) as session:
        add_user(session, "ana", Role.ENGINEER, "right-pass")
    with session_scope(database_url) as session:
        token = keep_login(session, authenticate(session, "ana", "right-pass")).token
    with session_scope(database_url) as session:
        disable_user(session, "ana")
    with session_scope(database_url) as session:
        enable_user(session, "ana")
    with session_scope(database_url) as session:
        assert _role_of(session, token) is None
        fresh = keep_login(session, authenticate(session, "ana", "right-pass")).token
    with session_scope(database_url) as session:
        assert _role_of(session, fresh) is Role.ENGINEER


def test_a_login_ends_when_its_password_is_set_again(database_url: str) -> None:
    """A password set again because someone else learnt it ends that person's login too."""
    from db.accounts import keep_login, set_password

    with session_scope(database_url) as session:
        add_user(session, "ana", Role.ENGINEER, "right-pass")
    with session_scope(database_url) as session:
        token = keep_login(session, authenticate(session, "ana", "right-pass")).token
    with session_scope(database_url) as session:
        assert _role_of(session, token) is Role.ENGINEER
        assert _role_of(session, "not-a-token") is None
        set_password(session, "ana", "new-password")
    with session_scope(database_url) as session:
        assert _role_of(session, token) is None
        fresh = keep_login(session, authenticate(session, "ana", "new-password")).token
    with session_scope(database_url) as session:
        assert _role_of(session, fresh) is Role.ENGINEER


@pytest.mark.parametrize("name", ["", "   ", "a\nb", "x" * 129])
def test_an_unusable_account_name_is_refused(database_url: str, name: str) -> None:
    with session_scope(database_url) as session, pytest.raises(AccountError):
        add_user(session, name, Role.REVIEWER, "long-enough")


def test_an_account_is_found_by_its_name_in_any_case(database_url: str) -> None:
    """Names are unique regardless of case (`users add` refuses "QA1" beside "qa1"), yet
    `users enable QA1`, `disable` and `set-password` said there was no account QA1, and a login
    as "QA1" was a wrong name."""
    from db.accounts import disable_user, enable_user

    with session_scope(database_url) as session:
        add_user(session, "qa1", Role.REVIEWER, "right-pass")
    with session_scope(database_url) as session:
        assert disable_user(session, "QA1").name == "qa1"
        assert enable_user(session, " Qa1 ").name == "qa1"
        login = authenticate(session, "QA1", "right-pass")
        assert login.ok and login.name == "qa1"  # (reviews go under the stored name)

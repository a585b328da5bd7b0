"""Dashboard accounts: named people with a role, their passwords kept as salted hashes only.

Offline by design (no identity provider): the hashes are the standard library's scrypt, with
the parameters stored beside each hash, compared in constant time. An account is never
deleted, only disabled, since reviews name it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, delete, func, or_, select, update
from sqlalchemy.orm import Session

from db.models import LoginSession, Role, User, database_utcnow

# scrypt's cost: 16 MiB and a few tens of milliseconds a check, far past what guessing can
# afford on a stolen database, well inside a login's wait.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
MIN_PASSWORD_LENGTH = 8
MAX_NAME_LENGTH = 128  # (a review's reviewer column)

MAX_FAILED_LOGINS = 5
LOCK_SECONDS = 30

# A login kept across reloads of its browser lasts a shift at most: a floor PC left logged in
# overnight asks again in the morning.
LOGIN_HOURS = 12
TOKEN_BYTES = 32


class AccountError(ValueError):
    """An account cannot be made or changed as asked; the message says why."""


def hash_password(password: str) -> str:
    """A new salted hash of `password`, its parameters written beside it."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, HASH_BYTES)
    return "$".join(
        ["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)]
    )


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` is the one `stored` was made from (with the parameters stored)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest, validate=True)
        found = _scrypt(
            password, base64.b64decode(salt, validate=True), int(n), int(r), int(p), len(expected)
        )
    except ValueError:  # (a damaged value matches no password)
        return False
    return hmac.compare_digest(found, expected)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, dklen=length, maxmem=256 * n * r * p
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# Checked against for a name with no account, so that a wrong name takes as long as a wrong
# password and does not tell which names exist.
_DUMMY_HASH = hash_password(secrets.token_hex(16))


def check_name(name: str) -> str:
    """The account name as stored: stripped; refused empty, too long or with control
    characters (it is shown on every review the person makes)."""
    name = name.strip()
    if not name:
        raise AccountError("an account needs a name")
    if len(name) > MAX_NAME_LENGTH:
        raise AccountError(f"an account name has at most {MAX_NAME_LENGTH} characters")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise AccountError("an account name may not hold control characters")
    return name


def check_password(password: str) -> str:
    """A password good enough to store: refused shorter than MIN_PASSWORD_LENGTH."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    return password


def accounts_exist(session: Session) -> bool:
    """Whether any account was ever made (disabled ones count): from then on the dashboard
    asks everyone to log in."""
    return session.scalar(select(User.id).limit(1)) is not None


def engineer_can_log_in(session: Session) -> bool:
    """Whether an enabled engineer account exists: with accounts and none, the dashboard's
    Models and Settings pages and its export of reviews are open to nobody."""
    enabled_engineer = (User.role == Role.ENGINEER) & User.disabled_at.is_(None)
    return session.scalar(select(User.id).where(enabled_engineer).limit(1)) is not None


def find_user(session: Session, name: str) -> User | None:
    """An account by its name, in any case: names are unique regardless of case (`add_user`),
    so "QA1" is the account qa1, as a login or `defects users enable QA1` means it."""
    name = name.strip()
    exact = session.scalars(select(User).where(User.name == name)).first()
    if exact is not None:
        return exact
    return session.scalars(select(User).where(func.lower(User.name) == name.lower())).first()


def get_user(session: Session, name: str) -> User:
    user = find_user(session, name)
    if user is None:
        raise AccountError(f"no account {name.strip()!r} (see `defects users list`)")
    return user


def add_user(session: Session, name: str, role: Role, password: str) -> User:
    """A new account; a name taken already, in any case ("Ana" beside "ana"), is refused:
    two people whose reviews read alike could not be told apart."""
    name = check_name(name)
    check_password(password)
    taken = session.scalars(select(User.name).where(func.lower(User.name) == name.lower())).first()
    if taken is not None:
        raise AccountError(f"the account {taken!r} exists already")
    user = User(name=name, role=role, password_hash=hash_password(password), failed_logins=0)
    session.add(user)
    session.flush()
    return user


def set_password(session: Session, name: str, password: str) -> User:
    """A new password for an account; its count of wrong tries and any wait start afresh."""
    user = get_user(session, name)
    user.password_hash = hash_password(check_password(password))
    user.password_changed_at = database_utcnow(session)
    user.failed_logins = 0
    user.locked_until = None
    _end_logins(session, user, user.password_changed_at)
    return user


def disable_user(session: Session, name: str) -> User:
    """The account can no longer log in; its reviews keep its name."""
    user = get_user(session, name)
    if user.disabled_at is None:
        user.disabled_at = database_utcnow(session)
        # Its sessions end here, not only while it stays disabled: enabled again before a
        # session's next action, the session went on.
        user.password_changed_at = user.disabled_at
        _end_logins(session, user, user.disabled_at)
    return user


def enable_user(session: Session, name: str) -> User:
    user = get_user(session, name)
    user.disabled_at = None
    user.failed_logins = 0
    user.locked_until = None
    return user


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.name)))


@dataclass(frozen=True)
class Login:
    """What a login attempt came to: the account (name and role) or why not. `since` is when
    the account's password was set: the login holds only while it is still that password."""

    name: str | None = None
    role: Role | None = None
    since: datetime | None = None
    wait_seconds: int = 0  # > 0: this name is locked for that long

    @property
    def ok(self) -> bool:
        return self.name is not None


# Wrong tries of names that have no account, kept in this process as an account's are kept in
# its row: the answer to a wrong name is the answer to a wrong password, waits included.
_unknown_lock = threading.Lock()
_unknown_failures: dict[str, tuple[int, datetime | None]] = {}


def authenticate(session: Session, name: str, password: str) -> Login:
    """Checks a name and password. After MAX_FAILED_LOGINS wrong tries in a row for a name,
    that name waits LOCK_SECONDS (by the database's clock, which every dashboard sharing the
    database agrees on) before its password is checked again.

    A try is counted, and committed, before its password is checked: tries sent side by side
    (a browser tab each) all read the count before any of them wrote it, and each was checked,
    as many guesses at once as tabs were open. Now at most MAX_FAILED_LOGINS of them are."""
    now = database_utcnow(session)
    name = name.strip()
    user = find_user(session, name) if name else None
    if user is None:
        # (Cut to what no account name exceeds: a name of megabytes, each try another one,
        # was kept whole, up to 10000 of them, in this process's memory.)
        return _unknown_attempt(name.lower()[: MAX_NAME_LENGTH + 1], password, now)
    # The try that makes MAX_FAILED_LOGINS starts the wait as it is counted, not once its
    # password is found wrong: the tries beside it wait from then on, and a wait is never
    # left unstarted by a try that did not end.
    locks = User.failed_logins + 1 >= MAX_FAILED_LOGINS
    counted = session.execute(
        update(User)
        .where(User.id == user.id, or_(User.locked_until.is_(None), User.locked_until <= now))
        .values(
            failed_logins=case((locks, 0), else_=User.failed_logins + 1),
            locked_until=case((locks, now + timedelta(seconds=LOCK_SECONDS)), else_=None),
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    session.commit()  # (seen by every other try from now on)
    session.refresh(user)
    # A disabled account is answered, and counted, as a wrong password, even given the right
    # one (its password still checked, taking as long): told "disabled", or its count reset,
    # the right password was confirmed to whoever tried it. `defects users list` says it.
    right = verify_password(password, user.password_hash) if counted else False
    if not right or user.disabled_at is not None:
        if user.locked_until is not None and user.locked_until > now:
            return Login(wait_seconds=_seconds_left(user.locked_until, now))
        return Login()
    user.failed_logins = 0
    user.locked_until = None
    return Login(name=user.name, role=user.role, since=user.password_changed_at)


def _unknown_attempt(key: str, password: str, now: datetime) -> Login:
    """A try of a name with no account, counted and answered as `authenticate` counts and
    answers one of an account."""
    with _unknown_lock:
        failures, locked_until = _unknown_failures.get(key, (0, None))
        if locked_until is not None and locked_until > now:
            return Login(wait_seconds=_seconds_left(locked_until, now))
        if len(_unknown_failures) > 10_000:  # (names typed at random cannot fill the memory)
            _unknown_failures.clear()
        failures += 1
        locks = failures >= MAX_FAILED_LOGINS
        _unknown_failures[key] = (
            (0, now + timedelta(seconds=LOCK_SECONDS)) if locks else (failures, None)
        )
    verify_password(password, _DUMMY_HASH)
    with _unknown_lock:
        locked_until = _unknown_failures.get(key, (0, None))[1]
    if locked_until is not None and locked_until > now:
        return Login(wait_seconds=_seconds_left(locked_until, now))
    return Login()


def _seconds_left(until: datetime, now: datetime) -> int:
    return max(1, int((until - now).total_seconds() + 0.999))


def token_hash(token: str) -> str:
    """What the database keeps of a login's token: its SHA-256 (the token is random, so no salt
    or slow hash is needed), so that a copy of the database holds no login to use."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class KeptLogin:
    """A login kept for the browser that made it: `token` is the browser's to hold (in a
    cookie) and is stored nowhere here; it is refused from `expires_at` (naive UTC)."""

    token: str
    expires_at: datetime


def keep_login(session: Session, login: Login) -> KeptLogin:
    """A new kept login for an account that `authenticate` just let in. Kept logins that no
    browser can use any more (expired or ended) are dropped on the way."""
    if login.name is None or login.since is None:
        raise AccountError("only a login that succeeded is kept")
    user = get_user(session, login.name)
    now = database_utcnow(session)
    session.execute(
        delete(LoginSession).where(
            or_(LoginSession.expires_at <= now, LoginSession.ended_at.is_not(None))
        )
    )
    token = secrets.token_urlsafe(TOKEN_BYTES)
    expires_at = now + timedelta(hours=LOGIN_HOURS)
    session.add(
        LoginSession(
            user_id=user.id,
            token_hash=token_hash(token),
            password_changed_at=login.since,
            created_at=now,
            expires_at=expires_at,
        )
    )
    session.flush()
    return KeptLogin(token=token, expires_at=expires_at)


def kept_login(session: Session, hashed: str) -> Login | None:
    """The account a kept login (by its token's hash) stands for now; None once it expired or
    ended (a logout), its account was disabled or given a new password since, or for a hash
    of no login."""
    found = session.execute(
        select(LoginSession, User)
        .join(User, User.id == LoginSession.user_id)
        .where(LoginSession.token_hash == hashed)
    ).first()
    if found is None:
        return None
    kept, user = found
    if (
        kept.ended_at is not None
        or kept.expires_at <= database_utcnow(session)
        or user.disabled_at is not None
        or user.password_changed_at != kept.password_changed_at
    ):
        return None
    return Login(name=user.name, role=user.role, since=user.password_changed_at)


def end_login(session: Session, hashed: str) -> None:
    """A logout: the kept login is refused from now on, in every tab of its browser and to
    anyone holding a copy of its token."""
    session.execute(
        update(LoginSession)
        .where(LoginSession.token_hash == hashed, LoginSession.ended_at.is_(None))
        .values(ended_at=database_utcnow(session))
        .execution_options(synchronize_session=False)
    )


def _end_logins(session: Session, user: User, now: datetime) -> None:
    """Every kept login of the account ends: it was disabled, or its password set again."""
    session.execute(
        update(LoginSession)
        .where(LoginSession.user_id == user.id, LoginSession.ended_at.is_(None))
        .values(ended_at=now)
        .execution_options(synchronize_session=False)
    )

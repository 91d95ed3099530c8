"""Console sessions: an API key exchanged for a signed, expiring cookie, and CSRF tokens.

The cookie is `<payload>.<tag>`: the payload is base64url JSON (`sid`, a random session id;
`kid`, the id of the API key that signed in, or null before sign-in and in open mode;
`role` and `name` of that key; `exp`, Unix seconds), and the tag is HMAC-SHA256 of the
payload under a server secret. The secret is 32 random bytes generated into the data
directory (`console-session-key`, mode 0600) on first use, like the seal signing key: each
worker writes a complete file of its own and hard-links it to the final name, which never
replaces an existing file, so every worker of one data directory uses the same secret.
Deleting the file (and restarting) signs every session out.

The cookie never holds the key itself. What keeps a session honest after sign-in is the key
*id*: the key's record is re-read at most every KEY_CACHE_SECONDS (the API's own revocation
delay), and a revoked key, or one whose role or name changed, ends every session it opened.

A CSRF token is HMAC-SHA256 of `csrf:<sid>` under the same secret: bound to one session,
never stored, and checked on every form the console accepts.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from api.service.access import KEY_CACHE_SECONDS, Principal, Role
from api.service.keystore import find_key

COOKIE_NAME = "ll_console"
COOKIE_PATH = "/console"
SESSION_SECONDS = 8 * 3600
"""A signed-in session ends after this long (sign in again with the key)."""
SECRET_FILE_NAME = "console-session-key"  # noqa: S105 (a file name, not a secret)
SECRET_BYTES = 32


def load_or_create_secret(path: Path) -> bytes:
    """The session secret at `path`, generated there (mode 0600) when absent."""
    with contextlib.suppress(FileNotFoundError):
        return _read_secret(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(secrets.token_hex(SECRET_BYTES) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another worker won: use its secret
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    secret = bytes.fromhex(path.read_text(encoding="ascii").strip())
    if len(secret) < SECRET_BYTES:
        raise ValueError(f"{path}: the console session secret is shorter than 32 bytes")
    return secret


@dataclass(frozen=True, slots=True)
class Session:
    sid: str
    kid: str | None  # None: not signed in (open mode, or only the sign-in form)
    role: str | None
    name: str | None
    expires: int

    @property
    def signed_in(self) -> bool:
        return self.kid is not None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionCodec:
    """Signs and checks session cookies and CSRF tokens with one secret."""

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self._clock = clock

    def new(
        self, kid: str | None = None, principal: Principal | None = None, seconds: int = 0
    ) -> Session:
        lifetime = seconds or SESSION_SECONDS
        return Session(
            sid=secrets.token_hex(16),
            kid=kid,
            role=principal.role.value if principal and principal.role else None,
            name=principal.name if principal else None,
            expires=int(self._clock()) + lifetime,
        )

    def _tag(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def encode(self, session: Session) -> str:
        body = {
            "sid": session.sid,
            "kid": session.kid,
            "role": session.role,
            "name": session.name,
            "exp": session.expires,
        }
        payload = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
        return f"{payload}.{self._tag(payload)}"

    def decode(self, cookie: str | None) -> Session | None:
        """The session in a cookie; None when absent, forged, malformed or expired."""
        if not cookie or cookie.count(".") != 1:
            return None
        payload, tag = cookie.split(".")
        if not hmac.compare_digest(tag, self._tag(payload)):
            return None
        try:
            body = json.loads(_unb64(payload))
            session = Session(
                sid=str(body["sid"]),
                kid=body["kid"],
                role=body["role"],
                name=body["name"],
                expires=int(body["exp"]),
            )
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        if session.expires <= self._clock():
            return None
        return session

    def csrf_token(self, session: Session) -> str:
        return self._tag(f"csrf:{session.sid}")

    def csrf_matches(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), self.csrf_token(session))


@dataclass(frozen=True, slots=True)
class _Checked:
    principal: Principal | None
    expires: float


class SessionKeys:
    """Whether the key behind a session still stands: re-read at most every `ttl` seconds."""

    MAX_CACHED = 1024

    def __init__(
        self, ttl: float = KEY_CACHE_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        self._checked: dict[str, _Checked] = {}

    async def principal(
        self, pool: Callable[[], asyncpg.Pool], session: Session
    ) -> Principal | None:
        """The session's principal; None when its key is gone, revoked or changed."""
        assert session.kid is not None
        now = self._clock()
        cached = self._checked.get(session.kid)
        if cached is None or cached.expires <= now:
            async with pool().acquire() as connection:
                stored = await find_key(connection, session.kid)
            principal = None
            if stored is not None and stored.record.revoked_at is None:
                principal = Principal(name=stored.record.name, role=Role(stored.record.role))
            if len(self._checked) >= self.MAX_CACHED:
                self._checked = {k: v for k, v in self._checked.items() if v.expires > now}
            cached = _Checked(principal, now + self.ttl)
            self._checked[session.kid] = cached
        principal = cached.principal
        if principal is None or principal.role is None:
            return None
        if (principal.role.value, principal.name) != (session.role, session.name):
            return None
        return principal

    def forget(self, key_id: str) -> None:
        self._checked.pop(key_id, None)

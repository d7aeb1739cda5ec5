"""STOMP login/passcode pairs issued by `POST /chat-ws/connect`.

A passcode is self-verifying: the user's identity and an expiry, signed with HMAC-SHA256
under a server-held key. It needs no table, survives a restart (so stompjs's automatic
reconnect keeps working), and is usable again until it expires. `/chat-ws/disconnect`
revokes every passcode the user was issued before that moment, and an admin's
`revokeTokens` every credential of the user (`chatd.auth.Revocations`, the one list).
A session opened with a passcode ends when the passcode expires.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from chatd.auth import Identity, Revocations
from chatd.model import User

LOGIN_PREFIX = "chatd-user-"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def stomp_key_path(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + ".stomp-key")


class StompLogins:
    def __init__(
        self,
        key: bytes,
        ttl: float,
        clock: Callable[[], float] = time.time,
        revocations: Revocations | None = None,
    ) -> None:
        self._key = key
        self.ttl = ttl
        self._clock = clock
        # Kept in the store too (see Store.revoke_logins): passcodes outlive restarts, so
        # a logout must as well.
        self.revocations = revocations if revocations is not None else Revocations()

    def issue(self, user: User) -> tuple[str, str]:
        now = self._clock()
        payload = orjson.dumps(
            {
                "u": user.id,
                "n": user.username,
                "p": user.profile_image,
                "e": user.email,
                "t": user.user_type,
                "a": user.is_admin,
                "iat": now,
                "exp": now + self.ttl,
            }
        )
        body = _b64(payload)
        sig = _b64(hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest())
        return f"{LOGIN_PREFIX}{user.id}", f"{body}.{sig}"

    def check(self, login: str, passcode: str) -> Identity | None:
        body, dot, sig = passcode.partition(".")
        if not dot or not login.startswith(LOGIN_PREFIX):
            return None
        want = _b64(hmac.new(self._key, body.encode("ascii", "replace"), hashlib.sha256).digest())
        if not hmac.compare_digest(want, sig):
            return None
        try:
            claims = orjson.loads(_unb64(body))
        except (ValueError, orjson.JSONDecodeError):
            return None
        uid = claims.get("u")
        if not isinstance(uid, int) or login != f"{LOGIN_PREFIX}{uid}":
            return None
        now = self._clock()
        exp = claims.get("exp", 0)
        iat = claims.get("iat", 0)
        if now >= exp or self.revocations.login_revoked(uid, iat):
            return None
        user = User(
            id=uid,
            username=claims.get("n") or f"user{uid}",
            profile_image=claims.get("p"),
            email=claims.get("e"),
            user_type=claims.get("t"),
            is_admin=bool(claims.get("a")),
        )
        # chatd's own clock signed both times: no leeway for another's skew.
        return Identity(user, iat, exp)

    def revoke(self, user_id: int) -> float:
        """Refuse every passcode issued to the user until now; returns that moment."""
        at = self._clock()
        self.revocations.revoke_logins(user_id, at)
        return at

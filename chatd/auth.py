"""JWT verification and the user identity taken from its claims."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt

from chatd.config import AuthConfig
from chatd.jwks import JwksKeys
from chatd.model import ClientError, User
from chatd.validation import MAX_ID, id_of_digits

if TYPE_CHECKING:
    # pyjwt's TypedDict of decode options (pyjwt >= 2.10); typing only, so an older
    # pyjwt still imports this module.
    from jwt.types import Options


class AuthError(ClientError):
    """A token was refused. `reason` (also the `code`) is a short label for metrics and logs."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message, 401)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a credential names, when it was issued, and until when it counts (Unix seconds:
    a JWT's `exp` plus the leeway, an issued STOMP login's expiry). A session opened with
    it ends at `valid_until`."""

    user: User
    issued_at: float | None  # a JWT's `iat`, which a token may lack
    valid_until: float


class Revocations:
    """Per user, the moment before which their credentials no longer count. Two kinds:
    the STOMP logins chatd issued (`POST /chat-ws/disconnect` revokes the caller's own),
    and every credential of the user (an admin's `revokeTokens`: JWTs, JWT passcodes,
    issued logins, and through them the tickets). The store keeps both (the revocations
    table), so a revocation survives restarts as the credentials do."""

    def __init__(self, rows: Mapping[int, tuple[float | None, float | None]] | None = None) -> None:
        self._logins: dict[int, float] = {}
        self._tokens: dict[int, float] = {}
        for user_id, (logins, tokens) in (rows or {}).items():
            if logins is not None:
                self._logins[user_id] = logins
            if tokens is not None:
                self._tokens[user_id] = tokens

    def revoke_logins(self, user_id: int, at: float) -> None:
        self._logins[user_id] = max(at, self._logins.get(user_id, at))

    def logins_revoked_at(self, user_id: int) -> float | None:
        return self._logins.get(user_id)

    def revoke_tokens(self, user_id: int, at: float) -> None:
        self._tokens[user_id] = max(at, self._tokens.get(user_id, at))

    def token_revoked(self, user_id: int, issued_at: float | None) -> bool:
        """A JWT's: issued before its user's revocation, or with no `iat` to tell when."""
        before = self._tokens.get(user_id)
        return before is not None and (issued_at is None or issued_at < before)

    def login_revoked(self, user_id: int, issued_at: float) -> bool:
        before = max(self._logins.get(user_id, 0.0), self._tokens.get(user_id, 0.0))
        return issued_at < before


def load_or_create_secret(path: Path) -> str:
    """The HS256 secret kept beside the database: created once, mode 0600."""
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(value + "\n")
    return value


def secret_path_for(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + ".jwt-secret")


class Authenticator:
    def __init__(
        self,
        cfg: AuthConfig,
        secret: str | None,
        revocations: Revocations | None = None,
        jwks: JwksKeys | None = None,
    ) -> None:
        self.cfg = cfg
        self.algorithms = list(cfg.algorithms)
        # The server's one list, shared with the STOMP logins (ServerState hands it over,
        # to a reloaded Authenticator as well).
        self.revocations = revocations if revocations is not None else Revocations()
        # The identity provider's keys, when [auth] jwks_url names them: the server's one
        # holder, fetched by its own task (an empty one verifies nothing, which is all a
        # command-line tool that only mints needs).
        self._jwks = jwks if jwks is not None else JwksKeys(cfg.jwks_url)
        self._key: Any = None
        self._signing_key: str | None = None
        if cfg.jwks_url:
            pass  # the key is the provider's, by the token's kid
        elif cfg.jwt_public_key_file:
            self._key = Path(cfg.jwt_public_key_file).read_text(encoding="ascii")
        else:
            if not secret:
                raise ValueError("an HS* algorithm needs a secret")
            self._key = secret
            self._signing_key = secret

    def verify(self, token: str | None) -> User:
        return self.identify(token).user

    def identify(self, token: str | None) -> Identity:
        """The token's user, `iat` and last valid moment; AuthError if it is refused."""
        if not token:
            raise AuthError("missing", "missing token")
        # pyjwt >= 2.10 refuses a non-string `sub`; issuers that put the numeric user id
        # there are common, and user_from_claims checks the id itself.
        options: Options = {"require": ["exp"], "verify_sub": False}
        kwargs: dict[str, Any] = {}
        if self.cfg.audience:
            kwargs["audience"] = self.cfg.audience
        else:
            options["verify_aud"] = False
        if self.cfg.issuer:
            kwargs["issuer"] = self.cfg.issuer
        key: Any = self._key if not self.cfg.jwks_url else self._provider_key(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                leeway=self.cfg.leeway_seconds,
                options=options,
                **kwargs,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("expired", "token expired") from None
        except jwt.InvalidSignatureError:
            raise AuthError("bad_signature", "token signature is invalid") from None
        except jwt.InvalidAlgorithmError:
            raise AuthError("bad_algorithm", "token algorithm is not allowed") from None
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
            raise AuthError("bad_claims", "token issuer or audience is wrong") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError("bad_claims", f"token lacks the {exc.claim} claim") from None
        except jwt.PyJWTError:
            raise AuthError("malformed", "token is malformed") from None
        user = self.user_from_claims(claims)
        # pyjwt has read both as integers (exp is required, iat checked when present).
        try:
            exp = float(int(claims["exp"]))
            issued_at = None if claims.get("iat") is None else float(int(claims["iat"]))
        except (TypeError, ValueError, OverflowError):
            raise AuthError("malformed", "token is malformed") from None
        if self.revocations.token_revoked(user.id, issued_at):
            raise AuthError("revoked", "token revoked")
        return Identity(user, issued_at, exp + self.cfg.leeway_seconds)

    def _provider_key(self, token: str) -> Any:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise AuthError("malformed", "token is malformed") from None
        key = self._jwks.key_for(kid if isinstance(kid, str) else None)
        if key is None:
            raise AuthError(
                "unknown_key", "token is signed with a key the identity provider does not publish"
            )
        return key

    def user_from_claims(self, claims: dict[str, Any]) -> User:
        raw_id: Any = None
        for name in self.cfg.user_id_claims:
            if claims.get(name) is not None:
                raw_id = claims[name]
                break
        if isinstance(raw_id, str):
            raw_id = id_of_digits(raw_id)
        if not isinstance(raw_id, int) or isinstance(raw_id, bool) or not 0 < raw_id <= MAX_ID:
            raise AuthError("bad_claims", "token has no positive integer user id")
        username = claims.get(self.cfg.username_claim)
        if not isinstance(username, str) or not username:
            username = f"user{raw_id}"

        def opt(name: str) -> str | None:
            v = claims.get(name)
            return v if isinstance(v, str) else None

        admin_val = claims.get(self.cfg.admin_claim)
        is_admin = admin_val == self.cfg.admin_value or (
            isinstance(admin_val, list) and self.cfg.admin_value in admin_val
        )
        return User(
            id=raw_id,
            username=username,
            profile_image=opt(self.cfg.profile_image_claim),
            email=opt(self.cfg.email_claim),
            user_type=opt(self.cfg.user_type_claim),
            is_admin=is_admin,
        )

    def mint(
        self,
        user_id: int,
        username: str,
        *,
        profile_image: str | None = None,
        email: str | None = None,
        user_type: str | None = None,
        admin: bool = False,
        ttl: float = 3600,
    ) -> str:
        if self._signing_key is None:
            raise ValueError(
                "tokens can only be minted with an HS* secret, not with public keys"
                " ([auth] jwt_public_key_file or jwks_url)"
            )
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": str(user_id),
            self.cfg.username_claim: username,
            "iat": now,
            "exp": now + int(ttl),
        }
        for name, value in (
            (self.cfg.profile_image_claim, profile_image),
            (self.cfg.email_claim, email),
            (self.cfg.user_type_claim, user_type),
        ):
            if value is not None:
                claims[name] = value
        if admin:
            claims[self.cfg.admin_claim] = self.cfg.admin_value
        if self.cfg.issuer:
            claims["iss"] = self.cfg.issuer
        if self.cfg.audience:
            claims["aud"] = self.cfg.audience
        return jwt.encode(claims, self._signing_key, algorithm=self.algorithms[0])


def origin_allowed(origin: str | None, allowed: list[str], host: str | None = None) -> bool:
    """No Origin header (native apps, servers) passes: the ticket or token authenticates.
    Nor does a page of the server's own origin (its `Host`, given for a WebSocket
    handshake): the web client chatd serves at / works with `allowed_origins` empty.
    Browsers write both headers, so a page elsewhere cannot pass for it; a page under a
    domain rebound to this server's address gets nothing by it either, since chatd's
    credentials are tokens the page must send itself, never cookies."""
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if host and origin.partition("://")[2].lower() == host.strip().lower():
        return True
    return "*" in allowed or origin in (a.rstrip("/") for a in allowed)

"""JWT verification and the identity taken from its claims."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from chatd.auth import (
    Authenticator,
    AuthError,
    load_or_create_secret,
    origin_allowed,
    secret_path_for,
)
from chatd.config import AuthConfig
from chatd.model import User

SECRET = "k" * 64
OTHER_SECRET = "o" * 64


def hs(**overrides: Any) -> Authenticator:
    return Authenticator(AuthConfig(jwt_secret=SECRET, **overrides), SECRET)


def claims(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": "42", "username": "john", "exp": int(time.time()) + 600}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], key: Any = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(payload, key, algorithm=alg)


def refused(auth: Authenticator, token: str | None) -> AuthError:
    with pytest.raises(AuthError) as info:
        auth.verify(token)
    return info.value


# --- HS256 -------------------------------------------------------------------------------


def test_hs256_token_accepted_with_every_identity_claim() -> None:
    token = sign(
        claims(
            profileImage="https://img.example/j.png",
            email="j@example.com",
            userType="member",
        )
    )
    assert hs().verify(token) == User(
        id=42,
        username="john",
        profile_image="https://img.example/j.png",
        email="j@example.com",
        user_type="member",
        is_admin=False,
    )


def test_missing_or_garbage_token() -> None:
    assert refused(hs(), None).reason == "missing"
    assert refused(hs(), "").reason == "missing"
    assert refused(hs(), "not.a.jwt").reason == "malformed"
    assert refused(hs(), "abc").reason == "malformed"


def test_expired_token_refused() -> None:
    token = sign(claims(exp=int(time.time()) - 3600))
    err = refused(hs(), token)
    assert err.reason == "expired"
    assert err.message == "token expired"


def test_leeway_tolerates_small_clock_skew() -> None:
    token = sign(claims(exp=int(time.time()) - 10))
    assert hs(leeway_seconds=30).verify(token).id == 42
    assert refused(hs(leeway_seconds=0), token).reason == "expired"
    early = sign(claims(nbf=int(time.time()) + 10))
    assert hs(leeway_seconds=30).verify(early).id == 42
    assert refused(hs(leeway_seconds=0), early).reason == "malformed"


def test_exp_is_required() -> None:
    err = refused(hs(), sign(claims(exp=None)))
    assert err.reason == "bad_claims"
    assert "exp" in err.message


def test_wrong_secret_refused() -> None:
    assert refused(hs(), sign(claims(), key=OTHER_SECRET)).reason == "bad_signature"


def test_alg_none_refused() -> None:
    unsigned = jwt.encode(claims(), None, algorithm="none")
    assert refused(hs(), unsigned).reason == "bad_algorithm"
    # Even with a genuine HS256 signature glued on.
    _, body, signature = sign(claims()).split(".")
    none_head = unsigned.split(".")[0]
    assert refused(hs(), f"{none_head}.{body}.{signature}").reason == "bad_algorithm"


def test_algorithm_outside_the_allow_list_refused() -> None:
    token = sign(claims(), alg="HS512")
    assert refused(hs(), token).reason == "bad_algorithm"
    assert hs(algorithms=["HS256", "HS512"]).verify(token).id == 42


# --- iss / aud ---------------------------------------------------------------------------


def test_issuer_and_audience_checked_when_configured() -> None:
    auth = hs(issuer="https://login.example", audience="chatd")
    good = sign(claims(iss="https://login.example", aud="chatd"))
    assert auth.verify(good).id == 42
    assert auth.verify(sign(claims(iss="https://login.example", aud=["x", "chatd"]))).id == 42
    for bad in (
        claims(iss="https://evil.example", aud="chatd"),
        claims(iss="https://login.example", aud="other"),
        claims(aud="chatd"),
        claims(iss="https://login.example"),
    ):
        assert refused(auth, sign(bad)).reason == "bad_claims"


def test_issuer_and_audience_ignored_when_not_configured() -> None:
    assert hs().verify(sign(claims(iss="anyone", aud="anything"))).id == 42


# --- identity claims --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "user_id"),
    [
        ({"sub": "42"}, 42),
        ({"sub": 42}, 42),
        ({"sub": None, "userId": 7}, 7),
        ({"sub": None, "userId": "7"}, 7),
        ({"sub": "42", "userId": 7}, 42),
    ],
)
def test_user_id_from_sub_or_user_id(extra: dict[str, Any], user_id: int) -> None:
    assert hs().verify(sign(claims(**extra))).id == user_id


@pytest.mark.parametrize(
    "extra",
    [{"sub": s} for s in ["abc", "0", "-1", "1.5", " 1", "²", "9" * 30, str(2**63)]]
    + [{"sub": None, "userId": v} for v in [True, 0, -5, 1.5, [1], {"id": 1}, 2**63]],
)
def test_user_id_must_be_a_positive_integer(extra: dict[str, Any]) -> None:
    err = refused(hs(), sign(claims(**extra)))
    assert err.reason == "bad_claims"
    assert "user id" in err.message


def test_no_user_id_claim_at_all() -> None:
    assert refused(hs(), sign(claims(sub=None))).reason == "bad_claims"


def test_claim_names_are_configurable() -> None:
    auth = hs(
        user_id_claims=["uid"],
        username_claim="name",
        profile_image_claim="avatar",
        email_claim="mail",
        user_type_claim="kind",
    )
    token = sign(
        {
            "uid": 5,
            "sub": "99",
            "name": "eve",
            "avatar": "a.png",
            "mail": "e@x",
            "kind": "bot",
            "exp": int(time.time()) + 60,
        }
    )
    assert auth.verify(token) == User(5, "eve", "a.png", "e@x", "bot", False)


def test_username_falls_back_and_non_strings_are_dropped() -> None:
    user = hs().verify(sign(claims(username=None, profileImage=5, email=["x"])))
    assert user.username == "user42"
    assert user.profile_image is None and user.email is None


@pytest.mark.parametrize(
    ("role", "admin"),
    [("admin", True), (["user", "admin"], True), ("user", False), ("ADMIN", False), (None, False)],
)
def test_admin_claim(role: Any, admin: bool) -> None:
    assert hs().verify(sign(claims(role=role))).is_admin is admin


def test_admin_claim_is_configurable() -> None:
    auth = hs(admin_claim="groups", admin_value="chat-admins")
    assert auth.verify(sign(claims(groups=["chat-admins"]))).is_admin
    assert not auth.verify(sign(claims(role="admin"))).is_admin


def test_mint_round_trip() -> None:
    auth = hs(issuer="iss", audience="aud")
    token = auth.mint(3, "ann", profile_image="p", email="e", user_type="t", admin=True, ttl=60)
    assert auth.verify(token) == User(3, "ann", "p", "e", "t", True)
    assert jwt.decode(token, options={"verify_signature": False})["exp"] - time.time() <= 60
    assert not auth.verify(auth.mint(3, "ann")).is_admin


# --- RS256 / ES256 with a PEM public key file ------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_by_hand(payload: dict[str, Any], key: bytes) -> str:
    signing_input = (
        b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + b64url(json.dumps(payload).encode())
    )
    mac = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(mac)


def write_public_key(tmp_path: Path, private: Any) -> Path:
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "public.pem"
    path.write_bytes(pem)
    return path


def test_rs256_with_a_pem_public_key(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = write_public_key(tmp_path, private)
    auth = Authenticator(AuthConfig(algorithms=["RS256"], jwt_public_key_file=str(path)), None)
    assert auth.verify(sign(claims(), key=private, alg="RS256")).id == 42
    # Signed by someone else's key.
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert refused(auth, sign(claims(), key=stranger, alg="RS256")).reason == "bad_signature"
    # The classic confusion: an HS256 token "signed" with the public key as its secret
    # (made by hand: pyjwt itself refuses to use a PEM key as an HMAC secret).
    assert refused(auth, hs256_by_hand(claims(), path.read_bytes())).reason == "bad_algorithm"
    assert refused(auth, sign(claims(), key=SECRET, alg="HS256")).reason == "bad_algorithm"
    assert refused(auth, jwt.encode(claims(), None, algorithm="none")).reason == "bad_algorithm"
    with pytest.raises(ValueError):
        auth.mint(1, "x")


def test_es256_with_a_pem_public_key(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    path = write_public_key(tmp_path, private)
    auth = Authenticator(AuthConfig(algorithms=["ES256"], jwt_public_key_file=str(path)), None)
    assert auth.verify(sign(claims(), key=private, alg="ES256")).id == 42
    assert refused(auth, sign(claims(exp=1), key=private, alg="ES256")).reason == "expired"


def test_hs_needs_a_secret() -> None:
    with pytest.raises(ValueError):
        Authenticator(AuthConfig(), None)


# --- origins and the generated secret ------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "allowed", "ok"),
    [
        (None, [], True),
        ("http://a.example", [], False),
        ("http://a.example", ["http://a.example"], True),
        ("http://a.example/", ["http://a.example"], True),
        ("http://a.example", ["http://a.example/"], True),
        ("http://a.example:8080", ["http://a.example"], False),
        ("https://a.example", ["http://a.example"], False),
        ("null", ["http://a.example"], False),
        ("http://evil.example", ["*"], True),
    ],
)
def test_origin_allowed(origin: str | None, allowed: list[str], ok: bool) -> None:
    assert origin_allowed(origin, allowed) is ok


@pytest.mark.parametrize(
    ("origin", "host", "ok"),
    [
        ("http://localhost:5700", "localhost:5700", True),  # the web client chatd serves
        ("https://chat.example.org", "chat.example.org", True),  # behind a TLS proxy
        ("http://LOCALHOST:5700/", "localhost:5700", True),
        ("http://localhost:5700", "localhost:15674", False),  # another port: another origin
        ("http://evil.example", "chat.example.org", False),
        ("http://chat.example.org.evil.example", "chat.example.org", False),
        ("http://localhost:5700", "", False),
        ("null", "localhost:5700", False),
    ],
)
def test_a_page_of_the_servers_own_origin_is_allowed(origin: str, host: str, ok: bool) -> None:
    assert origin_allowed(origin, [], host or None) is ok


def test_generated_secret_is_private_and_stable(tmp_path: Path) -> None:
    path = secret_path_for(tmp_path / "sub" / "chatd.db")
    assert path == tmp_path / "sub" / "chatd.db.jwt-secret"
    first = load_or_create_secret(path)
    assert len(first) >= 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_secret(path) == first
    other = load_or_create_secret(tmp_path / "other.jwt-secret")
    assert other != first

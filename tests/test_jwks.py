"""`[auth] jwks_url`: tokens from an identity provider that publishes its RS256 keys as a
JWKS. The holder's timing (refetch floor, retries, reconfiguration) runs on trio's fake
clock; the rest against a real server and a real JWKS endpoint on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
import trio
import trio.lowlevel
import trio.testing
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from chatd import config as config_mod
from chatd.jwks import MIN_REFETCH_SECONDS, RETRY_SECONDS, JwksKeys

from .conftest import StartServer

# --- keys and tokens -------------------------------------------------------------------------


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    public = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    return {**public, "kid": kid, "use": "sig", "alg": "RS256"}


def token(key: Any, kid: str | None, user_id: int = 1, alg: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": str(user_id), "username": f"user{user_id}", "iat": now, "exp": now + 600,
            **claims}
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(body, key, algorithm=alg, headers=headers)


class Provider:
    """A JWKS endpoint on loopback whose key set the test changes."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.status = 200
        self.requests = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                provider.requests += 1
                body = json.dumps({"keys": provider.keys}).encode()
                self.send_response(provider.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/certs"


@contextmanager
def provider() -> Iterator[Provider]:
    p = Provider()
    thread = threading.Thread(target=p.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield p
    finally:
        p.httpd.shutdown()
        p.httpd.server_close()
        thread.join(10)


def jwks_config(url: str) -> dict[str, Any]:
    return {"jwks_url": url, "algorithms": ["RS256"], "jwt_secret": ""}


async def rooms_status(server: Any, tok: str) -> tuple[int, str]:
    async with server.client() as http:
        resp = await http.get("/chat/rooms", headers={"Authorization": f"Bearer {tok}"})
    if resp.status_code == 200:
        return 200, ""
    assert resp.json()["error"] == "unauthorized", resp.text
    return resp.status_code, _REASONS[resp.json()["message"]]


# What the 401's message says, as the reason chatd counts it by.
_REASONS = {
    "token is signed with a key the identity provider does not publish": "unknown_key",
    "token signature is invalid": "bad_signature",
    "token algorithm is not allowed": "bad_algorithm",
}


# --- against a real server -------------------------------------------------------------------


async def test_provider_tokens_rotation_and_refusals(start_server: StartServer) -> None:
    a, b, stranger = new_key(), new_key(), new_key()
    with provider() as idp, trio.fail_after(30):
        idp.keys = [jwk(a, "a")]
        server = await start_server(auth=jwks_config(idp.url))
        keys = server.running.jwks
        await keys.wait_changed(0)
        assert await rooms_status(server, token(a, "a")) == (200, "")

        # The provider rotates a new key in: the first token naming it is refused and
        # makes chatd fetch at once (the start-up fetch is past the floor by then).
        idp.keys = [jwk(a, "a"), jwk(b, "b")]
        keys._last_attempt -= MIN_REFETCH_SECONDS  # as if the start were that long ago
        generation = keys.generation
        assert await rooms_status(server, token(b, "b")) == (401, "unknown_key")
        await keys.wait_changed(generation)
        assert await rooms_status(server, token(b, "b")) == (200, "")
        # A ticket, and through it /chat, with the provider's token.
        async with server.client() as http:
            resp = await http.post("/chat/ticket", headers={"accessToken": token(b, "b")})
        assert resp.status_code == 200, resp.text

        # Refused: a kid nobody publishes, another key under a known kid, no kid at all,
        # and an HS256 token (algorithm confusion: only the configured RS256 counts).
        assert await rooms_status(server, token(a, "nobody")) == (401, "unknown_key")
        assert await rooms_status(server, token(stranger, "a")) == (401, "bad_signature")
        assert await rooms_status(server, token(a, None)) == (401, "unknown_key")
        confused = token("an HMAC secret of thirty-two bytes", "a", alg="HS256")
        assert await rooms_status(server, confused) == (401, "bad_algorithm")
        # The server carries on.
        assert await rooms_status(server, token(a, "a")) == (200, "")


async def test_a_provider_down_at_start_does_not_stop_chatd(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    a = new_key()
    with provider() as idp, trio.fail_after(30):
        idp.status = 503
        server = await start_server(auth=jwks_config(idp.url))
        keys = server.running.jwks
        await keys.wait_fetches(0)
        async with server.client() as http:
            assert (await http.get("/healthz")).status_code == 200
        # The provider is back; chatd has no key yet, and the next attempt (at once, for
        # a token naming a kid, once the floor since the failed one has passed) finds it.
        idp.status, idp.keys = 200, [jwk(a, "a")]
        keys._last_attempt -= MIN_REFETCH_SECONDS  # as if the failure were that long ago
        assert await rooms_status(server, token(a, "a")) == (401, "unknown_key")
        await keys.wait_changed(0)
        assert await rooms_status(server, token(a, "a")) == (200, "")
    assert any("cannot fetch the token keys" in r.getMessage() for r in caplog.records)


def test_config_checks() -> None:
    def load(**auth: Any) -> config_mod.Config:
        return config_mod.from_mapping({"auth": auth})

    assert load(jwks_url="https://idp/certs", algorithms=["RS256"]).auth.jwks_url
    for auth, says in [
        ({"jwks_url": "https://idp/certs"}, "a JWKS holds public keys"),
        ({"jwks_url": "ftp://idp/certs", "algorithms": ["RS256"]}, "expected an https:// URL"),
        ({"jwks_url": "https://idp/certs", "algorithms": ["RS256"],
          "jwt_public_key_file": "/k.pem"}, "not both"),
        ({"jwks_url": "https://idp/certs", "algorithms": ["RS256"],
          "jwks_refresh_seconds": 0}, "jwks_refresh_seconds"),
    ]:
        with pytest.raises(config_mod.ConfigError, match=says):
            load(**auth)


# --- the holder's timing, on the fake clock (no thread: see FakeFetch) -----------------------


class FakeFetch:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.keys: list[jwt.PyJWK] = []
        self.fail = False

    async def __call__(self, url: str) -> list[jwt.PyJWK]:
        # In the loop, not a thread: the fake clock jumps only when every task waits on
        # it, which a worker thread's run would make a race.
        await trio.lowlevel.checkpoint()
        self.calls.append(url)
        if self.fail:
            raise jwt.PyJWKClientConnectionError("connection refused")
        return list(self.keys)


def pyjwk(kid: str) -> jwt.PyJWK:
    return jwt.PyJWK(jwk(KEY, kid))


KEY = new_key()


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_unknown_kids_refetch_at_most_once_per_floor(clock: trio.testing.MockClock) -> None:
    fetch = FakeFetch()
    fetch.keys = [pyjwk("a")]
    keys = JwksKeys("https://idp/certs", 300.0, fetch=fetch, clock=trio.current_time)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keys.run)
        await keys.wait_changed(0)
        assert keys.key_for("a") is not None and len(fetch.calls) == 1
        # A flood of made-up kids right after the fetch: one more fetch, at the floor.
        start = trio.current_time()
        for n in range(1000):
            assert keys.key_for(f"made-up-{n}") is None
        await keys.wait_changed(1)
        assert len(fetch.calls) == 2
        assert trio.current_time() - start == pytest.approx(MIN_REFETCH_SECONDS)
        for n in range(1000):
            keys.key_for(f"again-{n}")
        await keys.wait_changed(2)
        assert len(fetch.calls) == 3
        # Without asking: every refresh_seconds.
        await keys.wait_changed(3)
        assert trio.current_time() - start == pytest.approx(2 * MIN_REFETCH_SECONDS + 300.0)
        nursery.cancel_scope.cancel()


async def test_a_failed_fetch_keeps_the_keys_and_retries(clock: trio.testing.MockClock) -> None:
    fetch = FakeFetch()
    fetch.keys = [pyjwk("a")]
    keys = JwksKeys("https://idp/certs", 300.0, fetch=fetch, clock=trio.current_time)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keys.run)
        await keys.wait_changed(0)
        fetch.fail = True
        await trio.sleep(300.0 + 1)  # the periodic fetch fails
        assert len(fetch.calls) == 2 and keys.key_for("a") is not None
        fetch.fail = False
        fetch.keys = [pyjwk("b")]
        started = trio.current_time()
        await keys.wait_changed(1)
        assert trio.current_time() - started <= RETRY_SECONDS
        assert keys.key_for("b") is not None and keys.key_for("a") is None
        # A new URL drops the old provider's keys at once and fetches from the new one.
        keys.configure("https://other/certs", 300.0)
        assert keys.key_for("b") is None
        await keys.wait_changed(2)
        assert fetch.calls[-1] == "https://other/certs"
        nursery.cancel_scope.cancel()

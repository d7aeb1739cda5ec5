"""Public keys published by an identity provider as a JWKS (`[auth] jwks_url`): Keycloak,
Auth0 and the like sign RS256/ES256 tokens and rotate their keys there.

Tokens are checked on the event loop, many per second, so the keys are held here in
memory and looked up by the token's `kid` without any I/O. The set is fetched with
PyJWT's `PyJWKClient` in a worker thread: at start, every `[auth] jwks_refresh_seconds`,
and at once when a token names a `kid` not held (a key the provider has just rotated
in). That token is refused (401 `unknown_key`): clients retry, and the retry finds the
key. A flood of made-up `kid`s cannot turn into a flood of fetches: a fetch asked for by
an unknown `kid` happens at most once per MIN_REFETCH_SECONDS. A failed fetch keeps the
keys held so far (a provider's outage does not lock everyone out at once) and is tried
again after RETRY_SECONDS.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import jwt
import trio

log = logging.getLogger("chatd.auth")

MIN_REFETCH_SECONDS = 10.0
RETRY_SECONDS = 30.0
FETCH_TIMEOUT_SECONDS = 10.0

Fetch = Callable[[str], Awaitable[Sequence[jwt.PyJWK]]]


def fetch_signing_keys(url: str) -> list[jwt.PyJWK]:
    """Blocking: the set's signing keys (`use` "sig" or none, and a `kid`)."""
    client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=FETCH_TIMEOUT_SECONDS)
    return client.get_signing_keys(refresh=True)


async def fetch_in_a_thread(url: str) -> list[jwt.PyJWK]:
    """`fetch_signing_keys` off the event loop; abandoned (not awaited) when cancelled."""
    return await trio.to_thread.run_sync(fetch_signing_keys, url, abandon_on_cancel=True)


class JwksKeys:
    def __init__(
        self,
        url: str = "",
        refresh_seconds: float = 300.0,
        *,
        fetch: Fetch = fetch_in_a_thread,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.url = url
        self.refresh_seconds = refresh_seconds
        self._fetch = fetch
        self._clock = clock
        self._keys: dict[str, Any] = {}
        self._wake = trio.Event()
        self._last_attempt = -math.inf
        self.fetches = 0  # attempts ended, successful or not
        self.generation = 0  # bumped by every fetch that replaced the keys
        self._changed = trio.Event()

    def configure(self, url: str, refresh_seconds: float) -> None:
        """At start and on reload: a new URL drops the old provider's keys at once."""
        self.refresh_seconds = refresh_seconds
        if url != self.url:
            self.url = url
            self._keys = {}
            self._last_attempt = -math.inf
            self._wake.set()

    def key_for(self, kid: str | None) -> Any | None:
        """The verification key for `kid`, or None (and a fetch is asked for)."""
        key = self._keys.get(kid) if kid is not None else None
        if key is None:
            self._wake.set()  # `run` keeps the floor between fetches
        return key

    async def wait_changed(self, generation: int) -> None:
        """Until the keys were replaced after `generation` (for tests)."""
        while self.generation <= generation:
            await self._changed.wait()

    async def wait_fetches(self, fetches: int) -> None:
        """Until more than `fetches` attempts have ended, failed or not (for tests)."""
        while self.fetches <= fetches:
            await self._changed.wait()

    def _ended(self) -> None:
        self.fetches += 1
        self._changed.set()
        self._changed = trio.Event()

    async def run(self) -> None:
        """For the server's life: fetch when due or asked, one fetch at a time."""
        while True:
            if self.url:
                ok = await self._fetch_once()
                delay = self.refresh_seconds if ok else min(RETRY_SECONDS, self.refresh_seconds)
            else:
                delay = math.inf
            with trio.move_on_after(delay):
                await self._wake.wait()
            self._wake = trio.Event()
            # Asked again at once (a made-up kid right after a fetch): not before the floor.
            wait = self._last_attempt + MIN_REFETCH_SECONDS - self._clock()
            if wait > 0:
                await trio.sleep(wait)

    async def _fetch_once(self) -> bool:
        url = self.url
        self._last_attempt = self._clock()
        try:
            keys = await self._fetch(url)
        except (jwt.PyJWKClientError, jwt.PyJWTError, OSError, ValueError) as exc:
            self._ended()
            log.warning(
                "cannot fetch the token keys from %s (%s); keeping the %d held, retrying"
                " in %g s: check [auth] jwks_url and the identity provider",
                url, exc, len(self._keys), min(RETRY_SECONDS, self.refresh_seconds),
            )
            return False
        if url == self.url:  # else reconfigured meanwhile: the new URL's fetch follows
            new = {k.key_id: k.key for k in keys if k.key_id}
            if set(new) != set(self._keys):
                log.info("token keys from %s: %s", url, ", ".join(sorted(new)) or "none")
            self._keys = new
            self.generation += 1
        self._ended()
        return True

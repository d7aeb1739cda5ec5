"""The reverse-proxy examples an operator copies (docs/proxy/nginx.conf, docs/proxy/Caddyfile),
run for real: nginx or Caddy terminates TLS in front of a real chatd, and clients talk to
chatd only through it, over TLS: the HTTP API, /chat, STOMP on /ws, and chatd counting each
connection against the client address the proxy forwards.

The shipped files are rendered with only their ports, server name, certificate and (for
Caddy) admin endpoint replaced, each replacement checked to have matched, so a test here
runs what the operator copies. Each proxy runs as a private instance: its own config,
logs, pid and temporary files in tmp_path, on free loopback ports. Outside CI a missing
nginx or caddy skips its tests; CI (scripts/test) installs both, and there a missing one
fails.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from chatd.net.connections import ADDRESS_FULL

from .conftest import Server, StartServer
from .stomp_client import StompClient, _Ws, room_dest

DOCS = Path(__file__).resolve().parent.parent / "docs" / "proxy"
# What the examples name, as chatd.toml would: the public site, and chatd's listeners.
SITE = "chat.example.com"
ORIGIN = f"https://{SITE}"
PUBLIC_STOMP_URL = f"wss://{SITE}/ws"
HTTP_UPSTREAM = "127.0.0.1:5700"
STOMP_UPSTREAM = "127.0.0.1:15674"
# Loopback addresses the clients connect from. The proxies run on 127.0.0.1, the one
# address chatd trusts here, so a client on another one is a client chatd must count
# by the address the proxy forwards.
CLIENT_A = "127.0.0.2"
CLIENT_B = "127.0.0.3"
MAX_BODY = 65536  # [http] max_body_bytes, as shipped
START_SECONDS = 30  # for a proxy to start serving on a busy machine
WAIT = 10  # any one exchange through a proxy


def _find(binary: str) -> str:
    """The proxy's binary; missing, a skip outside CI and a failure on CI."""
    found = shutil.which(binary, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{binary} is not installed (scripts/test installs it on CI)")
        pytest.skip(f"{binary} is not installed (apt-get install {binary})")
    return found


# --- a certificate for 127.0.0.1 -----------------------------------------------------------


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client's TLS context trusting this certificate alone (verification on)."""
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    """A self-signed certificate for 127.0.0.1 and localhost."""
    where = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    paths = Cert(where / "cert.pem", where / "key.pem")
    paths.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


# --- rendering the shipped files -----------------------------------------------------------


def render(name: str, replacements: list[tuple[str, str]]) -> str:
    """docs/proxy/NAME with each (old, new) replaced, in order; an `old` that is not in
    the file fails the test, so the shipped file cannot drift from what is tested."""
    text = (DOCS / name).read_text(encoding="utf-8")
    for old, new in replacements:
        assert old in text, f"docs/proxy/{name} no longer contains {old!r}"
        text = text.replace(old, new)
    return text


@dataclass(frozen=True)
class Ports:
    https: int
    http: int


def free_ports() -> Ports:
    """Two loopback ports free a moment ago. A proxy cannot report a port it chose, so it
    is given these; one taken meanwhile by someone else makes the start retry."""
    socks = [socket.socket() for _ in range(2)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return Ports(socks[0].getsockname()[1], socks[1].getsockname()[1])
    finally:
        for s in socks:
            s.close()


def nginx_files(dir: Path, ports: Ports, server: Server, cert: Cert) -> list[str]:
    """The site file rendered, and a main config around it as Debian's nginx.conf would
    hold it (its http block includes conf.d/*.conf), with every path in `dir`."""
    site = render(
        "nginx.conf",
        [
            ("listen 443 ssl;", f"listen 127.0.0.1:{ports.https} ssl;"),
            ("listen 80;", f"listen 127.0.0.1:{ports.http};"),
            (f"/etc/letsencrypt/live/{SITE}/fullchain.pem", str(cert.cert)),
            (f"/etc/letsencrypt/live/{SITE}/privkey.pem", str(cert.key)),
            (SITE, "127.0.0.1"),
            (HTTP_UPSTREAM, f"127.0.0.1:{server.running.http_port}"),
            (STOMP_UPSTREAM, f"127.0.0.1:{server.running.stomp_ws_port}"),
        ],
    )
    (dir / "chatd.conf").write_text(site, encoding="utf-8")
    temp = "\n".join(
        f"    {kind}_temp_path {dir / kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    # One process (no master and workers): runs as whoever runs the test, and killing it
    # leaves nothing behind.
    (dir / "nginx.conf").write_text(
        f"""daemon off;
master_process off;
pid {dir / "nginx.pid"};
error_log {dir / "error.log"} info;
events {{ worker_connections 256; }}
http {{
    access_log {dir / "access.log"};
{temp}
    uwsgi_temp_path {dir / "uwsgi"};
    scgi_temp_path {dir / "scgi"};
    include {dir / "chatd.conf"};
}}
""",
        encoding="utf-8",
    )
    binary = _find("nginx")
    return [binary, "-p", f"{dir}/", "-c", str(dir / "nginx.conf"), "-e", str(dir / "error.log")]


def caddy_files(dir: Path, ports: Ports, server: Server, cert: Cert) -> list[str]:
    caddyfile = render(
        "Caddyfile",
        [
            ("http_port 80", f"http_port {ports.http}"),
            ("https_port 443", f"https_port {ports.https}"),
            # No admin endpoint: its default port is one for the whole machine.
            ("admin localhost:2019", "admin off"),
            (
                f"# tls /etc/ssl/certs/{SITE}.pem /etc/ssl/private/{SITE}.key",
                f"tls {cert.cert} {cert.key}",
            ),
            (f"{SITE} {{", "127.0.0.1 {"),
            (HTTP_UPSTREAM, f"127.0.0.1:{server.running.http_port}"),
            (STOMP_UPSTREAM, f"127.0.0.1:{server.running.stomp_ws_port}"),
        ],
    )
    (dir / "Caddyfile").write_text(caddyfile, encoding="utf-8")
    binary = _find("caddy")
    return [binary, "run", "--config", str(dir / "Caddyfile"), "--adapter", "caddyfile"]


ProxyFiles = Callable[[Path, Ports, Server, Cert], list[str]]
PROXIES: dict[str, ProxyFiles] = {"nginx": nginx_files, "caddy": caddy_files}


@pytest.fixture(params=list(PROXIES))
def kind(request: pytest.FixtureRequest) -> str:
    """Each proxy in turn; looked for here, before trio runs, so that a skip says why."""
    _find(request.param)
    return str(request.param)


# --- running a proxy -----------------------------------------------------------------------


@dataclass
class Proxy:
    kind: str
    ports: Ports
    cert: Cert
    dir: Path

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.ports.https}"

    def log(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.dir.glob("*.log"))
        )

    def client(self) -> httpx.AsyncClient:
        context = self.cert.client_context()
        return httpx.AsyncClient(base_url=self.base, verify=context, timeout=WAIT)


class PortTaken(Exception):
    pass


async def _wait_serving(proxy: Proxy, proc: trio.Process) -> None:
    """Until the proxy answers GET /healthz from chatd over TLS with our certificate (so
    it is our proxy, and chatd behind it): polled, a failed attempt retried shortly."""
    async with proxy.client() as http:
        while True:
            if proc.poll() is not None:
                log = proxy.log()
                if "address already in use" in log.lower():
                    raise PortTaken(log)
                raise AssertionError(f"{proxy.kind} exited with {proc.returncode}:\n{log}")
            try:
                resp = await http.get("/healthz")
            except (httpx.TransportError, ssl.SSLError):
                await trio.sleep(0.05)  # not serving yet: poll again
                continue
            assert resp.status_code == 200, (resp.status_code, resp.text, proxy.log())
            return


@asynccontextmanager
async def run_proxy(kind: str, server: Server, cert: Cert, tmp_path: Path) -> AsyncIterator[Proxy]:
    """The example config of `kind` running in front of `server`; stopped on the way out."""
    for attempt in range(5):
        dir = tmp_path / f"{kind}-{attempt}"
        dir.mkdir()
        ports = free_ports()
        argv = PROXIES[kind](dir, ports, server, cert)
        env = {
            **os.environ,
            "HOME": str(dir),
            "XDG_DATA_HOME": str(dir / "data"),
            "XDG_CONFIG_HOME": str(dir / "config"),
        }
        proxy = Proxy(kind, ports, cert, dir)
        with open(dir / "stdout.log", "wb") as out, open(dir / "stderr.log", "wb") as err:
            proc = await trio.lowlevel.open_process(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=dir
            )
        try:
            try:
                with trio.fail_after(START_SECONDS):
                    await _wait_serving(proxy, proc)
            except PortTaken:
                continue
            yield proxy
            return
        finally:
            with trio.CancelScope(shield=True):
                if proc.returncode is None:
                    proc.terminate()
                    with trio.move_on_after(5):
                        await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    raise AssertionError(f"{kind}: its ports were taken by someone else five times")


# --- clients, through the proxy ------------------------------------------------------------


async def tls_connect(proxy: Proxy, source: str = "127.0.0.1") -> trio.SSLStream[trio.SocketStream]:
    """A TLS connection to the proxy from the loopback address `source`."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        await sock.bind((source, 0))
        await sock.connect(("127.0.0.1", proxy.ports.https))
    except BaseException:
        sock.close()
        raise
    stream = trio.SSLStream(
        trio.SocketStream(sock),
        proxy.cert.client_context(),
        server_hostname="127.0.0.1",
        https_compatible=True,
    )
    await stream.do_handshake()
    return stream


@asynccontextmanager
async def open_wss(
    proxy: Proxy,
    resource: str,
    *,
    source: str = "127.0.0.1",
    headers: list[tuple[str, str]] | None = None,
    subprotocols: list[str] | None = None,
) -> AsyncIterator[WebSocketConnection]:
    """A WebSocket over TLS through the proxy, from the loopback address `source`."""
    stream = await tls_connect(proxy, source)
    async with trio.open_nursery() as nursery:
        ws = await wrap_client_stream(
            nursery,
            stream,
            "127.0.0.1",
            resource,
            subprotocols=subprotocols,
            extra_headers=[(k.encode(), v.encode()) for k, v in headers or ()],
        )
        try:
            yield ws
        finally:
            with trio.move_on_after(2, shield=True):
                await ws.aclose()
            nursery.cancel_scope.cancel()


async def raw_get(proxy: Proxy, path: str, source: str) -> tuple[int, bytes]:
    """GET `path` through the proxy from `source`; the status and the body."""
    stream = await tls_connect(proxy, source)
    async with stream:
        await stream.send_all(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while len(data) < 1 << 20:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
    assert status, data[:500]
    return int(status[1]), body


async def get_json(ws: WebSocketConnection) -> dict[str, Any]:
    msg = orjson.loads(await ws.get_message())
    assert isinstance(msg, dict), msg
    return msg


async def expect_close(ws: WebSocketConnection) -> tuple[int | None, str | None]:
    try:
        data = await ws.get_message()
    except ConnectionClosed as exc:
        assert exc.reason is not None
        return exc.reason.code, exc.reason.reason
    raise AssertionError(f"expected a close, got {data!r}")


def chatd_config(**server: Any) -> dict[str, dict[str, Any]]:
    """chatd.toml as the examples' header comments say, beside the proxy (listeners on
    port 0 here)."""
    return {
        "http": {"trusted_proxies": ["127.0.0.1"]},
        "stomp": {"public_url": PUBLIC_STOMP_URL},
        "auth": {"allowed_origins": [ORIGIN]},
        "server": server,
    }


# --- the tests -----------------------------------------------------------------------------


async def test_chat_and_stomp_through_the_proxy(
    kind: str, start_server: StartServer, cert: Cert, tmp_path: Path
) -> None:
    """Through the proxy, over TLS: an admin creates a room; Alice buys a ticket and opens
    /chat (as a browser on the site, with its Origin); Bob gets his STOMP login from
    /chat-ws/connect and subscribes over wss /ws. Alice's message reaches Bob's STOMP
    subscription, Bob's /chat-ws/send-message reaches Alice's /chat and his own
    subscription."""
    server = await start_server(**chatd_config())
    async with run_proxy(kind, server, cert, tmp_path) as proxy, proxy.client() as http:
        with trio.fail_after(WAIT * 3):
            resp = await http.post(
                "/admin/rooms",
                json={"name": "general", "members": [1, 2]},
                headers={"Authorization": f"Bearer {server.admin_token()}"},
            )
            assert resp.status_code == 201, resp.text
            room = resp.json()["id"]

            resp = await http.post("/chat/ticket", headers={"accessToken": server.token(1)})
            assert resp.status_code == 200, resp.text
            ticket = resp.json()["ticket"]

            resp = await http.post(
                "/chat-ws/connect", headers={"Authorization": f"Bearer {server.token(2)}"}
            )
            assert resp.status_code == 200, resp.text
            info = resp.json()["connectionInfo"]
            assert info["stompUrl"] == PUBLIC_STOMP_URL

            async with (
                open_wss(proxy, f"/chat?ticket={ticket}", headers=[("Origin", ORIGIN)]) as alice,
                open_wss(
                    proxy, "/ws", headers=[("Origin", ORIGIN)], subprotocols=["v12.stomp"]
                ) as bob_ws,
            ):
                assert bob_ws.subprotocol == "v12.stomp"
                bob = StompClient(_Ws(bob_ws, binary=False), "wss")
                await bob.connect(info["username"], info["password"])
                await bob.subscribe(room_dest(room))

                await alice.send_message(
                    orjson.dumps({"roomId": room, "content": f"hello through {kind}"}).decode()
                )
                echo = await get_json(alice)
                assert echo["content"] == f"hello through {kind}", echo
                _, event = await _next_new_message(bob)
                assert event["message"]["content"] == f"hello through {kind}"
                assert event["message"]["id"] == echo["id"]

                resp = await http.post(
                    "/chat-ws/send-message",
                    json={"roomId": room, "message": {"message_type": "text", "content": "hi"}},
                    headers={"Authorization": f"Bearer {server.token(2)}"},
                )
                assert resp.status_code == 200, resp.text
                got = await get_json(alice)
                assert (got["content"], got["user"]["id"]) == ("hi", 2), got
                _, event = await _next_new_message(bob)
                assert event["message"]["content"] == "hi"


async def _next_new_message(c: StompClient) -> tuple[Any, dict[str, Any]]:
    while True:
        frame, body = await c.expect_message()
        if body.get("type") == "new_message":
            return frame, body
        assert body.get("type") == "user_status_changed", body


async def test_chatd_counts_the_address_the_proxy_forwards(
    kind: str, start_server: StartServer, cert: Cert, tmp_path: Path
) -> None:
    """With one connection allowed per address and the proxy trusted, chatd counts each
    proxied connection against the client's own address: a second one from that client
    (/chat, /ws or plain HTTP) is refused, with an X-Forwarded-For of its own making no
    difference, while another client is let in."""
    server = await start_server(**chatd_config(max_connections_per_address=1))
    connections = server.state.connections
    async with run_proxy(kind, server, cert, tmp_path) as proxy, proxy.client() as http:
        with trio.fail_after(WAIT * 3):
            tickets = []
            for user in (1, 1, 2):  # from 127.0.0.1, the proxy's address: not counted
                resp = await http.post("/chat/ticket", headers={"accessToken": server.token(user)})
                assert resp.status_code == 200, resp.text
                tickets.append(resp.json()["ticket"])

            async with open_wss(proxy, f"/chat?ticket={tickets[0]}", source=CLIENT_A) as first:
                assert connections.count_of(CLIENT_A) == 1

                spoofed = [("X-Forwarded-For", "198.51.100.7")]
                async with open_wss(
                    proxy, f"/chat?ticket={tickets[1]}", source=CLIENT_A, headers=spoofed
                ) as second:
                    assert await expect_close(second) == (1013, ADDRESS_FULL)
                async with open_wss(
                    proxy, "/ws", source=CLIENT_A, subprotocols=["v12.stomp"]
                ) as stomp:
                    assert await expect_close(stomp) == (1013, ADDRESS_FULL)
                status, body = await raw_get(proxy, "/healthz", CLIENT_A)
                assert status == 503, body
                assert orjson.loads(body)["error"] == "too_many_connections"

                # Another client, and the first client's connection, carry on.
                async with open_wss(proxy, f"/chat?ticket={tickets[2]}", source=CLIENT_B) as other:
                    assert connections.count_of(CLIENT_B) == 1
                    await other.send_message('{"roomId": 1, "content": "x"}')
                    assert (await get_json(other))["code"] == "unknown_room"
                await first.send_message('{"roomId": 1, "content": "x"}')
                assert (await get_json(first))["code"] == "unknown_room"


async def test_bodies_up_to_max_body_bytes_pass_and_http_redirects(
    kind: str, start_server: StartServer, cert: Cert, tmp_path: Path
) -> None:
    """The proxy lets a body of [http] max_body_bytes through to chatd (which answers it)
    and refuses a larger one with 413; plain http:// is sent to https://."""
    server = await start_server(**chatd_config())
    async with run_proxy(kind, server, cert, tmp_path) as proxy, proxy.client() as http:
        with trio.fail_after(WAIT * 3):
            headers = {
                "Authorization": f"Bearer {server.token(1)}",
                "Content-Type": "application/json",
            }
            padded = b'{"roomId": 999, "pad": "' + b"x" * MAX_BODY
            fits = padded[: MAX_BODY - 2] + b'"}'
            assert len(fits) == MAX_BODY
            resp = await http.post("/chat-ws/send-message", content=fits, headers=headers)
            # chatd's own answer, from reading the whole body: it carries no message.
            assert resp.status_code == 400, resp.text
            assert resp.json()["error"] == "bad_message"

            resp = await http.post("/chat-ws/send-message", content=fits + b" ", headers=headers)
            assert resp.status_code == 413, resp.text

            async with httpx.AsyncClient(timeout=WAIT) as plain:
                resp = await plain.get(f"http://127.0.0.1:{proxy.ports.http}/healthz")
            assert resp.status_code in (301, 308), resp.text
            location = resp.headers["location"]
            assert location.startswith("https://127.0.0.1") and location.endswith("/healthz")


def _nginx_timeouts(location: str) -> dict[str, str]:
    text = (DOCS / "nginx.conf").read_text(encoding="utf-8")
    block = re.search(r"location " + re.escape(location) + r" \{(.*?)\}", text, re.S)
    assert block, f"docs/proxy/nginx.conf has no location {location}"
    return dict(re.findall(r"^\s*(proxy_\w+_timeout)\s+(\S+);", block[1], re.M))


@pytest.mark.parametrize("location", ["= /chat", "= /ws"])
def test_nginx_waits_longer_than_the_heartbeats(location: str) -> None:
    """nginx cuts a proxied connection after proxy_read_timeout with nothing from chatd
    (60 s unless set). Waiting that long cannot be tested in a test, so this checks the
    shipped setting: at least ten minutes each way on the WebSocket locations, well past
    /chat's 30 s pings and any STOMP heart-beat a client asks for."""
    timeouts = _nginx_timeouts(location)
    seconds = {"s": 1, "m": 60, "h": 3600}
    for name in ("proxy_read_timeout", "proxy_send_timeout"):
        value = re.fullmatch(r"(\d+)([smh]?)", timeouts.get(name, ""))
        assert value, (name, timeouts)
        assert int(value[1]) * seconds[value[2] or "s"] >= 600, (name, timeouts)

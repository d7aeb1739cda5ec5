"""Smoke test of the one-file build: scripts/build-pyz writes chatd.pyz, and a fresh
virtual environment with none of chatd's dependencies runs it: start, mint a token, get
a ticket, exchange a message, stop. Slow (it builds), so it runs on CI (CI=true) or
when CHATD_PYZ_TEST=1."""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from .chatd_proc import child_env, run_chatd, write_config

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    not (os.environ.get("CHATD_PYZ_TEST") == "1" or os.environ.get("CI") == "true"),
    reason="slow: builds dist/chatd.pyz; set CHATD_PYZ_TEST=1 (CI always runs it)",
)


async def _run(*argv: str | Path, env: dict[str, str] | None = None) -> str:
    res = await trio.run_process(
        [str(a) for a in argv], capture_stdout=True, capture_stderr=True, check=False, env=env
    )
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    return res.stdout.decode()


async def test_pyz_runs_in_a_bare_venv(tmp_path: Path) -> None:
    pyz = tmp_path / "chatd.pyz"
    venv = tmp_path / "bare"
    python = venv / "bin" / "python"
    # shiv unpacks here on first run; a fresh root proves nothing comes from a cache.
    env = child_env({"SHIV_ROOT": str(tmp_path / "shiv")})
    config = write_config(tmp_path / "chatd.toml", tmp_path)

    with trio.fail_after(600):
        await _run(ROOT / "scripts" / "build-pyz", pyz)
    assert pyz.stat().st_size > 0

    with trio.fail_after(120):
        await _run(sys.executable, "-m", "venv", "--without-pip", venv)
        bare = await trio.run_process(
            [str(python), "-c", "import trio"], capture_stderr=True, check=False
        )
        assert bare.returncode != 0, "the bare venv must not see chatd's dependencies"

        # The archive holds the wheel's metadata, so it knows its own version.
        version = await _run(python, pyz, "--version", env=env)
        assert version == f"chatd {importlib.metadata.version('chatd')}\n"

        token = (
            await _run(python, pyz, "token", "--user-id", "1", "--username", "alice",
                       "--config", config, env=env)
        ).strip()
        admin = (
            await _run(python, pyz, "token", "--user-id", "9000", "--username", "root",
                       "--admin", "--config", config, env=env)
        ).strip()
        assert token.count(".") == 2

        # The host's site-packages stay out of the archive's way: a `cryptography` found
        # there, which pyjwt would import whenever it can, is never imported.
        host = tmp_path / "host" / "site-packages"
        (host / "cryptography").mkdir(parents=True)
        marker = tmp_path / "host-package-imported"
        (host / "cryptography" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
        host_env = {**env, "PYTHONPATH": str(host)}
        argv = ["token", "--user-id", "2", "--username", "bo", "--config", str(config)]
        await _run(python, pyz, *argv, env=host_env)
        assert not marker.exists()

        argv = [str(python), str(pyz), "serve", "--config", str(config)]
        async with run_chatd(argv, env) as chatd:
            async with httpx.AsyncClient(base_url=chatd.base, timeout=10) as http:
                room = await http.post(
                    "/admin/rooms",
                    json={"name": "pyz", "members": [1]},
                    headers={"Authorization": f"Bearer {admin}"},
                )
                assert room.status_code == 201, room.text
                # The web client's files are package data: they ship inside the zipapp.
                page = await http.get("/")
                assert page.status_code == 200 and "/web/app.js" in page.text
                assert (await http.get("/web/vendor/stomp.umd.min.js")).status_code == 200
                ticket = await http.post("/chat/ticket", headers={"accessToken": token})
                assert ticket.status_code == 200, ticket.text
                url = f"ws://127.0.0.1:{chatd.http_port}/chat?ticket={ticket.json()['ticket']}"
                async with open_websocket_url(url) as ws:
                    msg = {"roomId": room.json()["id"], "content": "from a single file"}
                    await ws.send_message(json.dumps(msg))
                    got = json.loads(await ws.get_message())
                    assert got["content"] == "from a single file"
                    assert got["user"]["username"] == "alice"
                metrics = await http.get(f"http://127.0.0.1:{chatd.metrics_port}/metrics")
                assert "chatd_messages_stored_total 1.0" in metrics.text
            chatd.send_signal(signal.SIGTERM)
            assert await chatd.wait_exit() == 0

"""The README's five-minute walk-through, STOMP part: its Node block, run as it is (only
the server's address and Alice's token come from the environment, as the README says)
against a real server, must print the message it posted."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from .test_stompjs import NODE_DIR, _installed_ok, _npm_ci

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = "<!-- walkthrough-stomp:"


def walkthrough_block() -> str:
    text = README.read_text()
    start = text.index(MARKER)
    m = re.compile(r"```js\n(.*?)```", re.S).search(text, start)
    assert m, "the README's walk-through lost its STOMP block"
    return m.group(1)


async def test_the_readme_stomp_walkthrough_runs(start_server: Any) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH")
    if not _installed_ok():
        await _npm_ci()
    server = await start_server()
    room = await server.state.service.create_room("General", False, [1, 2])
    # Beside tests/node/node_modules, where `import '@stomp/stompjs'` resolves.
    script = NODE_DIR / f".walkthrough-{uuid.uuid4().hex}.mjs"
    script.write_text(walkthrough_block())
    env = {**os.environ, "CHATD": server.base, "ALICE": server.token(1, "alice"),
           "NO_COLOR": "1"}
    try:
        with trio.fail_after(60):
            proc = await trio.run_process(
                [node, str(script)], cwd=NODE_DIR, env=env, capture_stdout=True,
                capture_stderr=True, check=False,
            )
    finally:
        script.unlink()
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, out + proc.stderr.decode(errors="replace")
    assert out.splitlines()[-1] == (
        f"/exchange/chat.direct/room.{room.id} new_message hello over STOMP"
    ), out

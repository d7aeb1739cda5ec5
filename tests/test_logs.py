"""Log lines never carry JWTs, tickets or passcodes."""

from __future__ import annotations

import json
import logging
import sys
import uuid

import jwt
import pytest

from chatd.ops.logs import JsonFormatter, PlainFormatter, redact, setup

TOKEN = jwt.encode({"sub": "1", "exp": 2_000_000_000}, "x" * 64, algorithm="HS256")
TICKET = str(uuid.uuid4())


@pytest.mark.parametrize(
    ("text", "secret", "mask"),
    [
        (f"accessToken: {TOKEN}", TOKEN, "<jwt>"),
        (f"Authorization: Bearer {TOKEN} trailing", TOKEN, "<jwt>"),
        (f"GET /chat?ticket={TICKET}&since=4 HTTP/1.1", TICKET, "ticket=<ticket>"),
        ("GET /chat?TICKET=abc-def&since=4", "abc-def", "TICKET=<ticket>"),
        (f"redeemed {TICKET} for user 3", TICKET, "<uuid>"),
        ("CONNECT\nlogin:u\npasscode:hunter2\n\n", "hunter2", "passcode:<passcode>"),
        ('{"login": "u", "passcode": "hunter2"}', "hunter2", '"passcode": "<passcode>"'),
        ("passcode=hunter2, next", "hunter2", "passcode=<passcode>"),
    ],
)
def test_redact(text: str, secret: str, mask: str) -> None:
    out = redact(text)
    assert secret not in out
    assert mask in out


def test_redact_leaves_ordinary_text_alone() -> None:
    text = "user 3 posted message 17 to room 2 (since=4, 1011 server error)"
    assert redact(text) == text


def record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError(f"bad token {TOKEN}")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("chatd.test", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_plain_formatter_redacts_message_args_and_traceback() -> None:
    line = PlainFormatter().format(record("ticket=%s token %s", TICKET, TOKEN, exc=True))
    assert TICKET not in line and TOKEN not in line
    assert "\n" not in line  # one line per event, tracebacks folded
    assert "WARNING chatd.test: ticket=<ticket> token <jwt>" in line
    assert "ValueError: bad token <jwt>" in line


def test_json_formatter_redacts_and_stays_json() -> None:
    line = JsonFormatter().format(record("passcode:%s ticket=%s", "hunter2", TICKET, exc=True))
    out = json.loads(line)
    assert out["level"] == "warning"
    assert out["logger"] == "chatd.test"
    assert out["msg"] == "passcode:<passcode> ticket=<ticket>"
    assert TOKEN not in out["exc"] and "<jwt>" in out["exc"]
    assert out["ts"].endswith("Z")


def test_setup_installs_one_handler(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        setup("warning", "json")
        setup("info", "plain")
        ours = [h for h in root.handlers if getattr(h, "_chatd", False)]
        assert len(ours) == 1
        assert root.level == logging.INFO
        logging.getLogger("chatd.test").info("ticket=%s", TICKET)
        assert "ticket=<ticket>" in capsys.readouterr().err
    finally:
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
        root.setLevel(level)

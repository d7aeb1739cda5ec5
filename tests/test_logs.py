"""Log lines never carry JWTs, tickets or passcodes; refusals are logged, rate-limited."""

from __future__ import annotations

import json
import logging
import sys
import uuid

import jwt
import pytest

from chatd.ops.logs import JsonFormatter, PlainFormatter, RefusalLog, redact, setup

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


# --- refusals ----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.refused"]


def test_refusals_are_info_lines_naming_what_why_and_who(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "test.refused")
    log = RefusalLog(logging.getLogger("test.refused"), clock=FakeClock())
    log.refused("/chat", "origin 'https://evil.example' not allowed", "192.0.2.7")
    log.refused("STOMP login", "bad login or passcode", "")
    log.refused("CORS preflight", "origin " + "x" * 500, "2001:db8::1")
    log.refused("/ws", "origin 'a\nb' not allowed", "192.0.2.8")
    lines = refusal_lines(caplog)
    assert lines[:2] == [
        "refused /chat from 192.0.2.7: origin 'https://evil.example' not allowed",
        "refused STOMP login from a local socket: bad login or passcode",
    ]
    assert lines[2] == "refused CORS preflight from 2001:db8::1: origin " + "x" * 193 + "…"
    assert lines[3] == "refused /ws from 192.0.2.8: \"origin 'a\\nb' not allowed\""
    assert {r.levelno for r in caplog.records} == {logging.INFO}


def test_refusals_are_rate_limited_by_a_token_bucket(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "test.refused")
    clock = FakeClock()
    log = RefusalLog(logging.getLogger("test.refused"), rate=2.0, burst=5, clock=clock)
    # A flood: the burst goes out, the rest is counted.
    logged = [log.refused("/chat", f"ticket unknown #{i}", "192.0.2.7") for i in range(1000)]
    assert logged == [True] * 5 + [False] * 995
    assert len(refusal_lines(caplog)) == 5
    # Half a second later the bucket holds one: one line, naming what was left out.
    clock.now += 0.5
    assert log.refused("/chat", "ticket unknown", "192.0.2.7")
    assert not log.refused("/chat", "ticket unknown", "192.0.2.7")
    assert refusal_lines(caplog)[-1] == (
        "refused /chat from 192.0.2.7: ticket unknown (995 more refusals not logged before"
        " this one)"
    )
    # However long the quiet, a new flood gets no more than the burst.
    clock.now += 3600
    assert sum(log.refused("/ws", "origin", "192.0.2.9") for _ in range(100)) == 5
    # A steady trickle at the rate is logged whole.
    clock.now += 3600
    for _ in range(50):
        clock.now += 0.5
        assert log.refused("/ws", "origin", "192.0.2.9")

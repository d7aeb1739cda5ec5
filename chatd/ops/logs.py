"""Logging to stderr, one line per event, plain or JSON. Secrets are masked on the way out."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

# Defence in depth: code never logs these on purpose, but a library or a traceback might.
_SECRETS = [
    (re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), "<jwt>"),
    (re.compile(r"(?i)(ticket=)[^&\s\"']+"), r"\1<ticket>"),
    (re.compile(r"(?i)(passcode[\"':= ]+)[^\s\"',}]+"), r"\1<passcode>"),
    (
        re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\b"),
        "<uuid>",
    ),
]


def redact(text: str) -> str:
    for pattern, repl in _SECRETS:
        text = pattern.sub(repl, text)
    return text


class PlainFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record)).replace("\n", " | ")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(out, ensure_ascii=False))


def setup(level: str, fmt: str) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_chatd", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._chatd = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())

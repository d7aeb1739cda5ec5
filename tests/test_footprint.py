"""What the default install loads: HS* tokens work without `cryptography`, and the server
module pulls in no heavy package it does not use (idle RSS, BENCHMARKS.md). quart-trio, and
with it Flask, Werkzeug, Jinja2 and click, is loaded: the HTTP API runs on it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Run in a fresh interpreter where importing cryptography fails, as it does when chatd is
# installed without the `asymmetric` extra.
_PROBE = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "cryptography":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Block())

    import chatd.server
    from chatd.auth import Authenticator
    from chatd.config import AuthConfig

    auth = Authenticator(AuthConfig(), "s" * 32)
    token = auth.mint(7, "ana", ttl=60)
    assert auth.verify(token).id == 7
    heavy = {"cryptography", "prometheus_client", "psycopg"}
    print(sorted({m.split(".")[0] for m in sys.modules} & heavy))
    """
)


def test_hs_tokens_need_no_cryptography_and_nothing_heavy_is_loaded() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"

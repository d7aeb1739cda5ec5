"""shiv preamble of dist/chatd.pyz: run after shiv has put the archive's site-packages on
sys.path, before chatd starts.

The archive carries every dependency, so nothing from the host's site-packages is needed,
and something found there can cost: pyjwt loads `cryptography` (about 10 MB of OpenSSL
bindings) whenever it can import it, and Debian's python3-cryptography puts it in
/usr/lib/python3/dist-packages. Only the standard library and the archive stay on the path.
"""

import sys

_own = str(site_packages)  # noqa: F821 - given by shiv's bootstrap
_host = ("site-packages", "dist-packages")
sys.path[:] = [p for p in sys.path if p == _own or not p.endswith(_host)]
